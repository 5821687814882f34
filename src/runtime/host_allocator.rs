//! Host memory for the graphs that run without ONNX Runtime's arena (on the CPU, with the engine option
//! `cpu_memory_arena` set to `unet_only`: the text encoders and the VAE; `none`: every graph).
//!
//! Without an arena, ONNX Runtime gets every activation from `malloc`, and glibc serves large blocks with a fresh
//! `mmap` each time: the kernel then faults in and zeroes every 4 KiB page, on every decode (the 512² VAE decode
//! of the bench model spends up to a quarter of its time there). An arena avoids the faults by keeping freed
//! memory until the call ends, which raises the peak RSS the arena-less graphs are there to keep low. This
//! allocator keeps the no-arena behaviour (a block is returned to the system when freed) but maps large blocks on
//! 2 MiB boundaries with `madvise(MADV_HUGEPAGE)`, so they fault in as transparent huge pages: 512 times fewer
//! faults for the same memory. Where the kernel has transparent huge pages off, the advice is ignored and nothing changes.
//!
//! ONNX Runtime gets it as an environment allocator ([`register`]); sessions opt in with `session.use_env_allocators`.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use ort::sys::{OrtAllocator, OrtAllocatorType, OrtMemType, OrtMemoryInfo};
use ort::AsPointer;

/// Transparent huge page size on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;
/// Blocks from this size on are mapped; smaller ones come from `posix_memalign`.
const MAP_FROM: usize = 4 << 20;
/// The alignment ONNX Runtime's kernels expect.
const ALIGN: usize = 64;

/// Start → length of every mapped block. Kept apart from the blocks so that a block's last huge page holds only its
/// own bytes; consulted only for pointers on a huge-page boundary (where every mapped block starts).
static MAPPED: Mutex<Option<HashMap<usize, usize>>> = Mutex::new(None);

#[repr(C)]
struct HostAllocator {
    /// First field: ONNX Runtime calls back with a pointer to it.
    ort: OrtAllocator,
    info: *const OrtMemoryInfo,
}

static REGISTERED: AtomicBool = AtomicBool::new(false);
static BLOCKS: AtomicU64 = AtomicU64::new(0);

/// How many blocks ONNX Runtime (or anything else) has taken from this allocator in this process.
pub fn blocks_allocated() -> u64 {
    BLOCKS.load(Ordering::Relaxed)
}

/// Whether [`register`] succeeded, so that sessions may opt in.
pub fn registered() -> bool {
    REGISTERED.load(Ordering::Acquire)
}

/// Register the allocator as `env`'s CPU allocator (once per process; ONNX Runtime keeps one environment).
pub fn register(env: &ort::environment::Environment) -> Result<(), String> {
    if registered() {
        return Ok(());
    }
    let api = ort::api();
    let mut info: *mut OrtMemoryInfo = std::ptr::null_mut();
    // SAFETY: plain ONNX Runtime C API calls with valid out-pointers. The memory info and the allocator are leaked:
    // ONNX Runtime keeps pointers to them for as long as the environment (the process) lives.
    unsafe {
        let status =
            (api.CreateCpuMemoryInfo)(OrtAllocatorType::OrtDeviceAllocator, OrtMemType::OrtMemTypeDefault, &mut info);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err("cannot describe host memory".into());
        }
        let mut ort_allocator = OrtAllocator::default();
        ort_allocator.Alloc = Some(alloc);
        ort_allocator.Free = Some(free);
        ort_allocator.Info = Some(memory_info);
        ort_allocator.Reserve = Some(reserve);
        let allocator = Box::leak(Box::new(HostAllocator { ort: ort_allocator, info }));
        let status = (api.RegisterAllocator)(env.ptr().cast_mut(), &mut allocator.ort);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err("ONNX Runtime refused the host allocator".into());
        }
    }
    REGISTERED.store(true, Ordering::Release);
    Ok(())
}

unsafe extern "system" fn alloc(_this: *mut OrtAllocator, size: usize) -> *mut c_void {
    allocate(size)
}

unsafe extern "system" fn reserve(_this: *const OrtAllocator, size: usize) -> *mut c_void {
    allocate(size)
}

unsafe extern "system" fn free(_this: *mut OrtAllocator, p: *mut c_void) {
    release(p)
}

unsafe extern "system" fn memory_info(this: *const OrtAllocator) -> *const OrtMemoryInfo {
    // SAFETY: `this` is the first field of a leaked `HostAllocator`.
    unsafe { (*this.cast::<HostAllocator>()).info }
}

/// `size` bytes, 64-byte aligned; null when the system has no memory left.
fn allocate(size: usize) -> *mut c_void {
    // SAFETY: libc calls with checked arguments.
    let block = unsafe {
        if size >= MAP_FROM {
            let (start, len) = map_huge(size);
            if !start.is_null() {
                MAPPED.lock().get_or_insert_with(HashMap::new).insert(start as usize, len);
            }
            start
        } else {
            aligned_malloc(size.max(1))
        }
    };
    if !block.is_null() {
        BLOCKS.fetch_add(1, Ordering::Relaxed);
    }
    block.cast()
}

/// Give a block from [`allocate`] back to the system.
unsafe fn release(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    let mapped = if (p as usize).is_multiple_of(HUGE_PAGE) {
        MAPPED.lock().as_mut().and_then(|m| m.remove(&(p as usize)))
    } else {
        None
    };
    // SAFETY: `p` came from `allocate`: a mapping of `len` bytes when recorded, else from posix_memalign.
    unsafe {
        match mapped {
            Some(len) => {
                libc::munmap(p, len);
            }
            None => libc::free(p),
        }
    }
}

unsafe fn aligned_malloc(total: usize) -> *mut u8 {
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; the alignment is a power of two multiple of the pointer size.
    match unsafe { libc::posix_memalign(&mut p, ALIGN, total) } {
        0 => p.cast(),
        _ => std::ptr::null_mut(),
    }
}

/// An anonymous mapping of at least `total` bytes (a whole number of huge pages) starting on a huge-page
/// boundary, advised to use huge pages.
/// Returns (start, length), or null.
unsafe fn map_huge(total: usize) -> (*mut u8, usize) {
    let Some(len) = total.checked_next_multiple_of(HUGE_PAGE) else { return (std::ptr::null_mut(), 0) };
    let Some(span) = len.checked_add(HUGE_PAGE) else { return (std::ptr::null_mut(), 0) }; // room to align
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: an anonymous private mapping; the head and tail trimmed off lie inside it.
    unsafe {
        let raw = libc::mmap(std::ptr::null_mut(), span, prot, flags, -1, 0);
        if raw == libc::MAP_FAILED {
            return (std::ptr::null_mut(), 0);
        }
        let raw = raw.cast::<u8>();
        let head = raw.align_offset(HUGE_PAGE);
        if head > 0 {
            libc::munmap(raw.cast(), head);
        }
        let start = raw.add(head);
        let tail = span - head - len;
        if tail > 0 {
            libc::munmap(start.add(len).cast(), tail);
        }
        libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE);
        (start, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_blocks_are_aligned_writable_and_given_back() {
        for size in [0, 1, 63, 4096, MAP_FROM - 1, MAP_FROM, MAP_FROM + 1, 3 * HUGE_PAGE + 17] {
            let p = allocate(size).cast::<u8>();
            assert!(!p.is_null(), "{size} bytes");
            assert_eq!(p as usize % 64, 0, "{size} bytes: 64-byte aligned");
            // SAFETY: `size` bytes were just allocated at `p`.
            unsafe {
                std::ptr::write_bytes(p, 0xA5, size);
                if size > 0 {
                    assert_eq!(*p.add(size - 1), 0xA5);
                }
                if size >= MAP_FROM {
                    assert_eq!(p as usize % HUGE_PAGE, 0, "mappings start on a huge-page boundary");
                }
                release(p.cast());
            }
        }
        // SAFETY: freeing null is a no-op, as with free(3).
        unsafe { release(std::ptr::null_mut()) };
    }

    #[test]
    fn impossible_sizes_give_null_instead_of_a_crash() {
        assert!(allocate(usize::MAX).is_null());
        assert!(allocate(usize::MAX - HUGE_PAGE).is_null());
    }
}
