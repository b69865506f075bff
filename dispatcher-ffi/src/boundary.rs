//! The one rule of the C boundary: no panic crosses it, and no NULL is dereferenced.
//!
//! Since Rust 1.81 a panic that reaches an `extern "C"` function aborts the process, whatever
//! the caller does, so every export runs its body inside [`ffi_boundary!`], which turns a
//! panic into the export's fallback value (`BD_STATUS_PANIC`, or nothing for `bd_free`).

/// Runs `$body`, returning `$fallback` if it panics.
macro_rules! ffi_boundary {
    ($fallback:expr, $body:block) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(value) => value,
            Err(_) => $fallback,
        }
    };
}

/// `&*$ptr`, or returns `BD_STATUS_NULL_ARG` from the enclosing closure if it is NULL.
macro_rules! try_ref {
    ($ptr:expr) => {
        // SAFETY: the C caller promises a non-NULL pointer is valid (see the header).
        match unsafe { $ptr.as_ref() } {
            Some(value) => value,
            None => return $crate::bd_status::NullArg,
        }
    };
}

/// `&mut *$ptr`, or returns `BD_STATUS_NULL_ARG` from the enclosing closure if it is NULL.
macro_rules! try_mut {
    ($ptr:expr) => {
        // SAFETY: the C caller promises a non-NULL pointer is valid and unaliased.
        match unsafe { $ptr.as_mut() } {
            Some(value) => value,
            None => return $crate::bd_status::NullArg,
        }
    };
}

pub(crate) use {ffi_boundary, try_mut, try_ref};
