#!/bin/sh
# tests/install/run.sh: `make test-install`. Proves that an installed background-dispatcher is
# usable the ways C and C++ users consume libraries, from the installed files only:
#
#  1. `make install PREFIX=<tmp>/prefix`: the files and symlinks are where they should be, and
#     the shared library's soname is $SONAME.
#  2. A C program built with `pkg-config --cflags --libs background-dispatcher` (the pinned
#     pkgconf from .venv, PKG_CONFIG_PATH into the prefix): runs, delivers everything, records
#     $SONAME as DT_NEEDED, and runs with the prefix's library (not target/release).
#  3. A CMake project using find_package(BackgroundDispatcher): a C program on the shared
#     target, one on the static target, a C++ one on background_dispatcher.hpp; the version
#     file accepts 0.1 and refuses 0.2 and 1.0.
#  4. `make install DESTDIR=<tmp>/stage PREFIX=/opt/bd`: everything lands under the stage,
#     no staging path leaks into the installed text files, and the staged tree is relocatable
#     (find_package and `pkg-config --define-prefix` both work from it).
#  5. `make uninstall` leaves the prefix empty.
#
# Called by the Makefile with MAKE, CMAKE, PKG_CONFIG, CC, SONAME, REALNAME and VERSION set.
# Every command has a timeout; the temporary directory is removed on exit.
set -eu

: "${MAKE:=make}" "${CMAKE:=cmake}" "${PKG_CONFIG:=pkg-config}" "${CC:=cc}"
: "${SONAME:?}" "${REALNAME:?}" "${VERSION:?}"

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tests/install"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bd-install-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
start=$(date +%s)
unset LD_LIBRARY_PATH # the programs must find the library through what the build recorded

fail() {
    echo "test-install: FAIL: $*" >&2
    exit 1
}
t() { timeout 300 "$@"; } # builds
run() { timeout 60 "$@"; } # the consumers themselves take milliseconds

needed() { # the DT_NEEDED entries of $1, if readelf is there
    if command -v readelf > /dev/null 2>&1; then
        readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(libbackground_dispatcher[^]]*\)\].*/\1/p'
    else
        echo "$SONAME" # cannot check without binutils; the run itself still proves it loads
    fi
}

# --- 1. install --------------------------------------------------------------------------
prefix="$tmp/prefix"
t "$MAKE" -s -C "$root" install PREFIX="$prefix" NO_BUILD=1 > /dev/null
lib="$prefix/lib"
for f in "$lib/$REALNAME" "$lib/libbackground_dispatcher.a" "$prefix/include/background_dispatcher.h" \
    "$prefix/include/background_dispatcher.hpp" "$lib/pkgconfig/background-dispatcher.pc" \
    "$lib/cmake/BackgroundDispatcher/BackgroundDispatcherConfig.cmake" \
    "$lib/cmake/BackgroundDispatcher/BackgroundDispatcherConfigVersion.cmake"; do
    [ -f "$f" ] && [ ! -L "$f" ] || fail "$f missing (or a symlink)"
done
[ "$(readlink "$lib/$SONAME")" = "$REALNAME" ] || fail "$lib/$SONAME does not link to $REALNAME"
[ "$(readlink "$lib/libbackground_dispatcher.so")" = "$SONAME" ] || fail "dev symlink does not link to $SONAME"
if command -v readelf > /dev/null 2>&1; then
    soname=$(readelf -d "$lib/$REALNAME" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
    [ "$soname" = "$SONAME" ] || fail "installed library has soname '$soname', expected $SONAME"
fi
echo "install: $(find "$prefix" -type f | wc -l) files and 2 symlinks under PREFIX=$prefix;" \
    "$REALNAME, soname $SONAME"

# --- 2. pkg-config consumer ----------------------------------------------------------------
export PKG_CONFIG_PATH="$lib/pkgconfig"
[ "$("$PKG_CONFIG" --modversion background-dispatcher)" = "$VERSION" ] || fail "pkg-config --modversion"
flags=$("$PKG_CONFIG" --cflags --libs background-dispatcher)
pc_libdir=$("$PKG_CONFIG" --variable=libdir background-dispatcher)
t "$CC" -std=c11 -Wall -Wextra -Wpedantic -Werror "$here/consumer.c" -o "$tmp/consumer_pc" \
    $flags -Wl,-rpath,"$pc_libdir"
[ "$(needed "$tmp/consumer_pc")" = "$SONAME" ] || fail "consumer_pc needs '$(needed "$tmp/consumer_pc")'"
out=$(run "$tmp/consumer_pc" pkg-config) || fail "consumer_pc exited with $?"
echo "$out"
case "$out" in *"library $lib/$REALNAME"*) ;; *) fail "consumer_pc did not run with $lib/$REALNAME" ;; esac
echo "pkg-config: '$flags' (Libs.private: $("$PKG_CONFIG" --static --libs-only-l background-dispatcher))," \
    "DT_NEEDED $SONAME"

# --- 3. CMake consumer ---------------------------------------------------------------------
build="$tmp/cmake-build"
t "$CMAKE" -S "$here" -B "$build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
    > "$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log"; fail "cmake configure"; }
grep 'BackgroundDispatcher ' "$tmp/cmake.log" | sed 's/^-- /cmake: /'
t "$CMAKE" --build "$build" -j 2 > "$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "cmake build"; }
[ "$(needed "$build/consumer_c")" = "$SONAME" ] || fail "consumer_c needs '$(needed "$build/consumer_c")'"
if command -v readelf > /dev/null 2>&1; then
    [ -z "$(needed "$build/consumer_c_static")" ] || fail "consumer_c_static needs the shared library"
fi
out=$(run "$build/consumer_c" cmake-shared) || fail "consumer_c exited with $?"
echo "$out"
case "$out" in *"library $lib/$REALNAME"*) ;; *) fail "consumer_c did not run with $lib/$REALNAME" ;; esac
out=$(run "$build/consumer_c_static" cmake-static) || fail "consumer_c_static exited with $?"
echo "$out"
case "$out" in *"library (static)"*) ;; *) fail "consumer_c_static mapped a shared library" ;; esac
run "$build/consumer_cpp" || fail "consumer_cpp exited with $?"

# --- 4. DESTDIR staging --------------------------------------------------------------------
stage="$tmp/stage"
t "$MAKE" -s -C "$root" install DESTDIR="$stage" PREFIX=/opt/bd NO_BUILD=1 > /dev/null
[ -f "$stage/opt/bd/lib/$REALNAME" ] || fail "DESTDIR install did not put $REALNAME under $stage/opt/bd/lib"
[ -z "$(find "$stage" -mindepth 1 -maxdepth 1 ! -name opt)" ] || fail "DESTDIR install wrote outside $stage/opt"
! grep -rl "$stage" "$stage" > /dev/null || fail "the staging path leaked into $(grep -rl "$stage" "$stage")"
grep -qx 'prefix=/opt/bd' "$stage/opt/bd/lib/pkgconfig/background-dispatcher.pc" || fail ".pc prefix is not /opt/bd"
staged_flags=$(PKG_CONFIG_PATH="$stage/opt/bd/lib/pkgconfig" "$PKG_CONFIG" --define-prefix --cflags --libs background-dispatcher)
case "$staged_flags" in *"-L$stage/opt/bd/lib"*) ;; *) fail "pkg-config --define-prefix gave '$staged_flags'" ;; esac
t "$CC" -std=c11 -Wall -Wextra -Werror "$here/consumer.c" -o "$tmp/consumer_staged" $staged_flags \
    -Wl,-rpath,"$stage/opt/bd/lib"
out=$(run "$tmp/consumer_staged" staged-pkg-config) || fail "consumer_staged exited with $?"
echo "$out"
t "$CMAKE" -S "$here" -B "$tmp/cmake-staged" -DCMAKE_PREFIX_PATH="$stage/opt/bd" > "$tmp/cmake2.log" 2>&1 ||
    { cat "$tmp/cmake2.log"; fail "cmake configure against the staged tree"; }
t "$CMAKE" --build "$tmp/cmake-staged" -j 2 --target consumer_c > "$tmp/build2.log" 2>&1 ||
    { cat "$tmp/build2.log"; fail "cmake build against the staged tree"; }
out=$(run "$tmp/cmake-staged/consumer_c" staged-cmake) || fail "staged consumer_c exited with $?"
echo "$out"
case "$out" in *"library $stage/opt/bd/lib/$REALNAME"*) ;; *) fail "staged consumer_c used another library" ;; esac
echo "DESTDIR: $(find "$stage" -type f | wc -l) files under $stage/opt/bd, .pc says prefix=/opt/bd," \
    "no staging path in any file; relocatable for find_package and pkg-config --define-prefix"

# --- 4b. custom directories: a multiarch LIBDIR and the CMake package under share/ ----------
custom="$tmp/custom"
t "$MAKE" -s -C "$root" install PREFIX="$custom" LIBDIR="$custom/lib/x86_64-linux-gnu" \
    CMAKEDIR="$custom/share/cmake/BackgroundDispatcher" NO_BUILD=1 > /dev/null
t "$CMAKE" -S "$here" -B "$tmp/cmake-custom" -DCMAKE_PREFIX_PATH="$custom" > "$tmp/cmake3.log" 2>&1 ||
    { cat "$tmp/cmake3.log"; fail "cmake configure against custom LIBDIR/CMAKEDIR"; }
t "$CMAKE" --build "$tmp/cmake-custom" -j 2 --target consumer_c > "$tmp/build3.log" 2>&1 ||
    { cat "$tmp/build3.log"; fail "cmake build against custom LIBDIR/CMAKEDIR"; }
out=$(run "$tmp/cmake-custom/consumer_c" custom-dirs) || fail "custom-dirs consumer_c exited with $?"
case "$out" in *"library $custom/lib/x86_64-linux-gnu/$REALNAME"*) ;; *) fail "custom-dirs consumer_c used another library" ;; esac
echo "custom directories: find_package found LIBDIR=lib/x86_64-linux-gnu through share/cmake"
# Without the static library (packaged apart), the package is still found, shared target only.
rm "$custom/lib/x86_64-linux-gnu/libbackground_dispatcher.a"
mkdir -p "$tmp/no-static"
cat > "$tmp/no-static/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(no_static C)
find_package(BackgroundDispatcher 0.1 REQUIRED)
if(NOT TARGET BackgroundDispatcher::background_dispatcher OR TARGET BackgroundDispatcher::background_dispatcher_static)
  message(FATAL_ERROR "expected the shared target only")
endif()
CMAKE
t "$CMAKE" -S "$tmp/no-static" -B "$tmp/no-static/build" -DCMAKE_PREFIX_PATH="$custom" > "$tmp/cmake4.log" 2>&1 ||
    { cat "$tmp/cmake4.log"; fail "find_package without the static library"; }
echo "without libbackground_dispatcher.a: found, with the shared target only"

# --- 5. uninstall --------------------------------------------------------------------------
t "$MAKE" -s -C "$root" uninstall PREFIX="$prefix" > /dev/null
left=$(find "$prefix" ! -type d | wc -l)
[ "$left" -eq 0 ] || fail "make uninstall left $left files: $(find "$prefix" ! -type d)"
echo "uninstall: 0 files left under PREFIX"

echo "PASS test-install: 6 consumers built and run from installed trees in $(($(date +%s) - start)) s"
