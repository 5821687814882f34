//! Memory sdxlrt hands to the caller: JSON strings and raw RGB8 image batches, each with its own free function.

use std::collections::HashSet;
use std::ffi::{c_char, CString};

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::boundary::ffi_boundary;
use crate::image::RgbImage;

/// Move a Rust string to the caller as a NUL-terminated UTF-8 string freed by [`sdxl_string_free`].
pub fn string_to_c(text: String) -> *mut c_char {
    CString::new(text.replace('\0', "\\u0000")).unwrap_or_default().into_raw()
}

/// Free a string returned by sdxlrt (e.g. the response of `sdxl_generate`). NULL is a no-op.
///
/// Pass only strings sdxlrt returned, each exactly once.
#[no_mangle]
pub extern "C" fn sdxl_string_free(s: *mut c_char) {
    ffi_boundary! {
        if !s.is_null() {
            // SAFETY: per the contract, `s` came from CString::into_raw in `string_to_c` and is freed once.
            drop(unsafe { CString::from_raw(s) });
        }
    }
}

/// One image as tightly described raw pixels: RGB, 8 bits per channel, rows top to bottom.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct sdxl_image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes from one row to the next (≥ 3 × width).
    pub stride: u32,
    /// Channels per pixel (always 3: R, G, B).
    pub channels: u32,
    /// The seed that produced this image.
    pub seed: u64,
    /// `stride × height` bytes, owned by the batch.
    pub data: *const u8,
}

/// The images of one request. Owned by sdxlrt; free with [`sdxl_image_batch_free`], which frees all pixel data.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct sdxl_image_batch {
    /// Number of images.
    pub count: usize,
    /// `count` images.
    pub images: *const sdxl_image,
}

/// The allocation behind an `sdxl_image_batch*` (the public struct is its first field).
#[repr(C)]
struct BatchStorage {
    public: sdxl_image_batch,
    images: Vec<sdxl_image>,
    pixels: Vec<Vec<u8>>,
}

static LIVE_BATCHES: Lazy<Mutex<HashSet<usize>>> = Lazy::new(|| Mutex::new(HashSet::new()));

/// Move decoded images to the caller as an `sdxl_image_batch*`.
pub fn batch_to_c(images: Vec<RgbImage>) -> *mut sdxl_image_batch {
    let pixels: Vec<Vec<u8>> = images.iter().map(|img| img.data.clone()).collect();
    let views = images
        .iter()
        .zip(&pixels)
        .map(|(img, data)| sdxl_image {
            width: img.width,
            height: img.height,
            stride: img.width * 3,
            channels: 3,
            seed: img.seed,
            data: data.as_ptr(),
        })
        .collect::<Vec<_>>();
    let mut storage = Box::new(BatchStorage {
        public: sdxl_image_batch { count: 0, images: std::ptr::null() },
        images: views,
        pixels,
    });
    storage.public = sdxl_image_batch { count: storage.images.len(), images: storage.images.as_ptr() };
    let ptr = Box::into_raw(storage) as *mut sdxl_image_batch;
    LIVE_BATCHES.lock().insert(ptr as usize);
    ptr
}

/// Free an image batch returned by `sdxl_generate_images`. NULL, or a pointer already freed, is a no-op.
#[no_mangle]
pub extern "C" fn sdxl_image_batch_free(batch: *mut sdxl_image_batch) {
    ffi_boundary! {
        if !batch.is_null() && LIVE_BATCHES.lock().remove(&(batch as usize)) {
            // SAFETY: registered pointers come from Box::into_raw of a BatchStorage whose first field is the batch.
            drop(unsafe { Box::from_raw(batch as *mut BatchStorage) });
        }
    }
}
