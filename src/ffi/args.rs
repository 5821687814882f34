//! Checked conversions of raw ABI arguments: NUL-terminated UTF-8 strings and out-pointers.

use std::ffi::{c_char, CStr};

use super::boundary::fail;
use super::status::sdxl_status;

/// Borrow a NUL-terminated UTF-8 string argument, or fail with NULL_ARGUMENT / INVALID_UTF8 naming `what`.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that lives for `'a`.
pub unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, sdxl_status> {
    if ptr.is_null() {
        return Err(fail(sdxl_status::NullArgument, &format!("`{what}` is NULL")));
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|e| fail(sdxl_status::InvalidUtf8, &format!("`{what}` is not valid UTF-8: {e}")))
}

/// Like [`str_arg`], but a NULL pointer gives `None`.
///
/// # Safety
/// As [`str_arg`].
pub unsafe fn opt_str_arg<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, sdxl_status> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { str_arg(ptr, what) }.map(Some)
    }
}

/// Check an out-pointer argument is non-NULL.
pub fn out_arg<T>(ptr: *mut T, what: &str) -> Result<*mut T, sdxl_status> {
    if ptr.is_null() {
        Err(fail(sdxl_status::NullArgument, &format!("`{what}` is NULL")))
    } else {
        Ok(ptr)
    }
}

/// Unwrap a `Result<T, sdxl_status>` inside an ABI body, returning the status on error.
macro_rules! try_arg {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return status,
        }
    };
}
pub(crate) use try_arg;
