//! Gives the C library (`libbackground_dispatcher.so`) its ELF soname.
//!
//! Without one, the linker records the path-less file name `libbackground_dispatcher.so` in
//! every program that links it: the development symlink, which distributions ship only in the
//! `-dev` package, and which says nothing about ABI compatibility. With a soname, programs
//! record `libbackground_dispatcher.so.<abi>` and the loader finds exactly the ABI they were
//! built against. `make install` installs the file as `.so.X.Y.Z` with the two symlinks.
//!
//! The ABI part follows semver as Cargo reads it, where the leftmost non-zero component is the
//! one that breaks compatibility:
//! - 1.y.z and later: `.so.1` (a minor release only adds, so `.so.1` may be replaced by any 1.y);
//! - 0.y.z: `.so.0.y`, not `.so.0`: under semver 0.2 may break 0.1, and a `.so.0` soname
//!   would let the loader hand a program built against 0.1 a 0.2 library and fail (or worse,
//!   misbehave) at run time instead of refusing to start. (libgit2 does the same with minor
//!   numbers for the same reason.)
//!
//! The Makefile (`SONAME`), tests/c/CMakeLists.txt and benchmarks/run.py derive the same name
//! from the version to put the soname symlink next to the freshly built library.
//! Only the cdylib gets the flag: the staticlib and rlib have no soname.

use std::env;

fn main() {
    let version = env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    let soname = format!("libbackground_dispatcher.so.{}", abi_version(&version));
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // ELF platforms only: macOS has install names (-install_name), Windows has neither.
    if target_os != "macos" && target_os != "ios" && target_os != "windows" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// "0.1.0" -> "0.1", "1.4.2" -> "1". (The project never ships 0.0.z, so that case, where
/// Cargo would call every patch breaking, is not special-cased.)
fn abi_version(version: &str) -> String {
    // Pre-release and build metadata ("1.0.0-rc.1+abc") do not take part.
    let core = version.split(['-', '+']).next().unwrap_or(version);
    let parts: Vec<&str> = core.split('.').collect();
    match parts.as_slice() {
        ["0", minor, _] => format!("0.{minor}"),
        [major, _, _] => (*major).to_string(),
        _ => panic!("CARGO_PKG_VERSION {version:?} is not MAJOR.MINOR.PATCH"),
    }
}
