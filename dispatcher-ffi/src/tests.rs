//! Boundary checks that need no C compiler; the behaviour tests are in tests/c.

use std::ffi::CStr;
use std::ptr;

use super::*;

unsafe extern "C" fn ok_dispatch(_: *mut c_void, _: *const bd_batch) -> c_int {
    0
}

#[test]
fn header_version_matches_the_crate() {
    let header = include_str!("../../include/background_dispatcher.h");
    let define = format!("#define BD_VERSION \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        header.contains(&define),
        "regenerate the header: it lacks {define}"
    );
    let mut parts = env!("CARGO_PKG_VERSION").split('.');
    for name in ["MAJOR", "MINOR", "PATCH"] {
        let line = format!("#define BD_VERSION_{name} {}", parts.next().unwrap());
        assert!(header.contains(&line), "the header lacks {line}");
    }
    // SAFETY: `bd_version` returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(bd_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

fn status_text(status: u32) -> String {
    // SAFETY: `bd_status_str` returns a static NUL-terminated string for any value.
    let text = unsafe { CStr::from_ptr(bd_status_str(status)) };
    text.to_str().unwrap().to_owned()
}

#[test]
fn every_status_has_a_distinct_static_text() {
    let texts: Vec<String> = (0..=9).map(status_text).collect();
    let mut unique = texts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), texts.len());
    for unknown in [10, 1000, u32::MAX] {
        assert_eq!(status_text(unknown), "unknown status");
    }
    assert_eq!(bd_status::Panic as u32, 9, "statuses are append-only");
}

#[test]
fn bad_arguments_change_nothing() {
    let mut out: *mut bd_dispatcher = ptr::null_mut();
    assert_eq!(bd_options_init(ptr::null_mut()), bd_status::NullArg);
    assert_eq!(
        bd_new(None, ptr::null_mut(), 10, ptr::null(), &mut out),
        bd_status::NullArg
    );
    assert_eq!(
        bd_new(
            Some(ok_dispatch),
            ptr::null_mut(),
            10,
            ptr::null(),
            ptr::null_mut()
        ),
        bd_status::NullArg
    );
    assert_eq!(
        bd_new(Some(ok_dispatch), ptr::null_mut(), 0, ptr::null(), &mut out),
        bd_status::InvalidOptions
    );
    let mut options = default_options();
    options.overflow = 3;
    assert_eq!(
        bd_new(Some(ok_dispatch), ptr::null_mut(), 10, &options, &mut out),
        bd_status::InvalidOptions
    );
    options = default_options();
    options.version = 0;
    assert_eq!(
        bd_new(Some(ok_dispatch), ptr::null_mut(), 10, &options, &mut out),
        bd_status::InvalidOptions
    );
    assert!(out.is_null(), "*out is written only on success");

    assert_eq!(bd_enqueue(ptr::null(), ptr::null(), 0), bd_status::NullArg);
    assert_eq!(bd_flush(ptr::null(), 0), bd_status::NullArg);
    assert_eq!(bd_shutdown(ptr::null(), 0), bd_status::NullArg);
    assert_eq!(
        bd_stats_get(ptr::null(), ptr::null_mut()),
        bd_status::NullArg
    );
    bd_free(ptr::null_mut());

    assert_eq!(
        bd_new(
            Some(ok_dispatch),
            ptr::null_mut(),
            10,
            ptr::null(),
            &mut out
        ),
        bd_status::Ok
    );
    assert_eq!(bd_enqueue(out, ptr::null(), 1), bd_status::NullArg);
    assert_eq!(
        bd_enqueue(out, ptr::null(), 0),
        bd_status::Ok,
        "(NULL, 0) is an empty entry"
    );
    assert_eq!(bd_stats_get(out, ptr::null_mut()), bd_status::NullArg);
    let mut stats = bd_stats::default();
    assert_eq!(bd_flush(out, BD_NO_TIMEOUT), bd_status::Ok);
    assert_eq!(bd_stats_get(out, &mut stats), bd_status::Ok);
    assert_eq!(
        (stats.enqueued, stats.dispatched, stats.rejected),
        (1, 1, 0)
    );
    bd_free(out);
}

#[test]
fn oversized_len_is_refused_before_data_is_read() {
    // A `len` no entry can have is refused on its size alone: `data` (one byte here) is never
    // read, and no slice of that length is formed (which would be undefined behaviour, and a
    // non-unwinding panic under debug assertions).
    let mut d: *mut bd_dispatcher = ptr::null_mut();
    assert_eq!(
        bd_new(Some(ok_dispatch), ptr::null_mut(), 10, ptr::null(), &mut d),
        bd_status::Ok
    );
    let byte = 7u8;
    for len in [u32::MAX as usize + 1, isize::MAX as usize + 1, usize::MAX] {
        assert_eq!(bd_enqueue(d, &byte, len), bd_status::TooLarge, "len {len}");
    }
    assert_eq!(bd_enqueue(d, ptr::null(), usize::MAX), bd_status::NullArg);
    let mut stats = bd_stats::default();
    assert_eq!(bd_stats_get(d, &mut stats), bd_status::Ok);
    assert_eq!(
        (stats.enqueued, stats.rejected),
        (0, 3),
        "refusals are counted"
    );
    bd_free(d);
}
