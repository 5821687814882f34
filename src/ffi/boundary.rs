//! The panic boundary and the thread-local last error.
//!
//! Every `extern "C"` body runs inside `ffi_boundary!`: a panic is caught, its message is stored as this thread's
//! last error, and the function returns its type's [`PanicOrDefault`] value (`SDXL_STATUS_PANIC`, NULL, …). No panic
//! ever unwinds into the host.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use super::status::sdxl_status;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Store `message` as this thread's last error (interior NULs are replaced).
pub fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = text);
}

/// Clear this thread's last error.
pub fn clear_last_error() {
    LAST_ERROR.with(|slot| *slot.borrow_mut() = CString::default());
}

/// The text of the last error on the calling thread, or an empty string when the last call succeeded.
///
/// The pointer is owned by sdxlrt and stays valid until the next sdxlrt call on the same thread; copy it before
/// calling again. Never free it.
#[no_mangle]
pub extern "C" fn sdxl_last_error() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

/// The value an ABI function returns when its body panicked.
pub trait PanicOrDefault {
    /// The fallback value.
    fn value() -> Self;
}

impl PanicOrDefault for sdxl_status {
    fn value() -> Self {
        sdxl_status::Panic
    }
}

impl<T> PanicOrDefault for *const T {
    fn value() -> Self {
        std::ptr::null()
    }
}

impl<T> PanicOrDefault for *mut T {
    fn value() -> Self {
        std::ptr::null_mut()
    }
}

impl PanicOrDefault for () {
    fn value() -> Self {}
}

/// Turn a caught panic payload into a readable message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Run an ABI body, catching panics. The body may `return` early with its own value.
macro_rules! ffi_boundary {
    ( $($body:tt)* ) => {{
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| { $($body)* })) {
            Ok(ret) => ret,
            Err(payload) => {
                $crate::ffi::boundary::set_last_error(&format!(
                    "sdxlrt panicked (this is a bug; the engine is still usable): {}",
                    $crate::ffi::boundary::panic_message(&*payload)
                ));
                $crate::ffi::boundary::PanicOrDefault::value()
            }
        }
    }};
}
pub(crate) use ffi_boundary;

/// Record `status` with `message` as the last error and return the status.
pub fn fail(status: sdxl_status, message: &str) -> sdxl_status {
    set_last_error(message);
    status
}
