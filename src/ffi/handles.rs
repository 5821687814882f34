//! Live engine handles. An `sdxl_engine*` is an `Arc<Engine>` turned into a raw pointer; every call first checks the
//! pointer against this registry, so a freed or foreign pointer gives `SDXL_STATUS_INVALID_HANDLE` instead of a
//! crash, and a call in flight keeps its engine alive even if another thread frees the handle meanwhile.

use std::collections::HashSet;
use std::sync::Arc;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::boundary::fail;
use super::status::sdxl_status;
use crate::engine::Engine;

/// An engine, opaque to C. Create with `sdxl_engine_create`, free with `sdxl_engine_free`.
#[allow(non_camel_case_types)]
pub struct sdxl_engine {
    _private: [u8; 0],
}

static LIVE: Lazy<Mutex<HashSet<usize>>> = Lazy::new(|| Mutex::new(HashSet::new()));

/// Register a new engine and return its handle.
pub fn register(engine: Engine) -> *mut sdxl_engine {
    let ptr = Arc::into_raw(Arc::new(engine)) as *mut sdxl_engine;
    LIVE.lock().insert(ptr as usize);
    ptr
}

/// A new strong reference to the engine behind `handle`, or INVALID_HANDLE / NULL_ARGUMENT.
pub fn clone(handle: *const sdxl_engine) -> Result<Arc<Engine>, sdxl_status> {
    if handle.is_null() {
        return Err(fail(sdxl_status::NullArgument, "`engine` is NULL"));
    }
    let live = LIVE.lock();
    if !live.contains(&(handle as usize)) {
        return Err(fail(
            sdxl_status::InvalidHandle,
            "`engine` is not a live engine (already freed, or not created by sdxl_engine_create)",
        ));
    }
    let ptr = handle as *const Engine;
    // SAFETY: the pointer is registered, so it came from Arc::into_raw and its strong count is still ≥ 1 (we hold the
    // registry lock, so no concurrent free can drop it before we add our own count).
    unsafe {
        Arc::increment_strong_count(ptr);
        Ok(Arc::from_raw(ptr))
    }
}

/// Unregister `handle` and drop the registry's reference. Returns false if it was not live.
pub fn release(handle: *const sdxl_engine) -> bool {
    if !LIVE.lock().remove(&(handle as usize)) {
        return false;
    }
    // SAFETY: it was registered, so this is the reference `register` leaked; calls in flight hold their own.
    drop(unsafe { Arc::from_raw(handle as *const Engine) });
    true
}
