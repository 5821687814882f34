//! Real memory readings on Linux: this process's resident set and the system's total and available memory
//! (`/proc`), and a GPU's memory through NVML (`libnvidia-ml.so.1`, loaded at run time if the driver has it).
//! `None` where a reading is not available — never a made-up number.

use once_cell::sync::Lazy;

use crate::runtime::Device;

/// Resident set size of this process in bytes (`/proc/self/statm`).
pub fn process_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Peak resident set size of this process since it started, in bytes (`VmHWM`).
pub fn process_peak_rss() -> Option<u64> {
    meminfo_field("/proc/self/status", "VmHWM:")
}

/// `(total, available)` system memory in bytes (`/proc/meminfo` MemTotal, MemAvailable).
pub fn system_memory() -> Option<(u64, u64)> {
    Some((meminfo_field("/proc/meminfo", "MemTotal:")?, meminfo_field("/proc/meminfo", "MemAvailable:")?))
}

/// Fraction of system memory in use (0..1), from [`system_memory`].
pub fn system_memory_use() -> Option<f64> {
    let (total, available) = system_memory()?;
    (total > 0).then(|| 1.0 - available as f64 / total as f64)
}

fn meminfo_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// `(total, used)` memory of GPU `index` in bytes, as NVML reports it for the whole device (every process). NVML
/// numbers GPUs in PCI order, as CUDA does unless `CUDA_VISIBLE_DEVICES` or `CUDA_DEVICE_ORDER` reorder them.
pub fn gpu_memory(index: u32) -> Option<(u64, u64)> {
    let nvml = NVML.as_ref()?;
    let mut device: *mut libc::c_void = std::ptr::null_mut();
    let mut memory = NvmlMemory { total: 0, free: 0, used: 0 };
    // SAFETY: the functions were resolved from NVML with these C signatures (nvml.h: nvmlDeviceGetHandleByIndex_v2,
    // nvmlDeviceGetMemoryInfo with nvmlMemory_t {total, free, used}); the out-pointers are valid for the call.
    unsafe {
        if (nvml.handle_by_index)(index, &mut device) != 0 || (nvml.memory_info)(device, &mut memory) != 0 {
            return None;
        }
    }
    Some((memory.total, memory.used))
}

/// The memory a request's device uses now: this process's RSS on CPU, the GPU's used memory on CUDA.
pub fn device_memory_used(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => process_rss(),
        Device::Cuda(id) => gpu_memory(u32::try_from(id).ok()?).map(|(_, used)| used),
    }
}

#[repr(C)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

type HandleByIndex = unsafe extern "C" fn(u32, *mut *mut libc::c_void) -> i32;
type MemoryInfo = unsafe extern "C" fn(*mut libc::c_void, *mut NvmlMemory) -> i32;

struct Nvml {
    handle_by_index: HandleByIndex,
    memory_info: MemoryInfo,
}

/// NVML, initialized once; `None` without an NVIDIA driver. The library stays loaded for the process's life.
static NVML: Lazy<Option<Nvml>> = Lazy::new(|| {
    // SAFETY: dlopen/dlsym with NUL-terminated names; every symbol is checked for null before it is transmuted to
    // the signature nvml.h declares for it.
    unsafe {
        let lib = libc::dlopen(c"libnvidia-ml.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if lib.is_null() {
            return None;
        }
        let init = libc::dlsym(lib, c"nvmlInit_v2".as_ptr());
        let handle_by_index = libc::dlsym(lib, c"nvmlDeviceGetHandleByIndex_v2".as_ptr());
        let memory_info = libc::dlsym(lib, c"nvmlDeviceGetMemoryInfo".as_ptr());
        if init.is_null() || handle_by_index.is_null() || memory_info.is_null() {
            return None;
        }
        let init = std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn() -> i32>(init);
        if init() != 0 {
            return None;
        }
        Some(Nvml {
            handle_by_index: std::mem::transmute::<*mut libc::c_void, HandleByIndex>(handle_by_index),
            memory_info: std::mem::transmute::<*mut libc::c_void, MemoryInfo>(memory_info),
        })
    }
});

/// Tracks the largest memory reading of the request's device (RSS on CPU, GPU memory on CUDA) during one request,
/// sampled at stage boundaries and every step.
#[derive(Debug)]
pub struct PeakTracker {
    device: Device,
    peak: std::sync::atomic::AtomicU64,
}

impl PeakTracker {
    /// A tracker for `device` with no samples yet.
    pub fn new(device: Device) -> Self {
        PeakTracker { device, peak: Default::default() }
    }

    /// Take a sample now.
    pub fn sample(&self) {
        if let Some(used) = device_memory_used(self.device) {
            self.peak.fetch_max(used, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The largest sample, or `None` if no reading was available.
    pub fn peak(&self) -> Option<u64> {
        let p = self.peak.load(std::sync::atomic::Ordering::Relaxed);
        (p > 0).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_real_on_linux() {
        let rss = process_rss().expect("statm readable");
        assert!(rss > 1 << 20, "a test process uses more than 1 MiB: {rss}");
        let (total, available) = system_memory().expect("meminfo readable");
        assert!(total >= available && available > 0);
        let peak = process_peak_rss().expect("VmHWM readable");
        assert!(peak >= rss / 2);
    }

    #[test]
    fn gpu_readings_are_absent_without_a_driver_and_consistent_with_one() {
        // This machine may or may not have an NVIDIA driver: either no reading, or a plausible one.
        match gpu_memory(0) {
            None => assert_eq!(device_memory_used(Device::Cuda(0)), None),
            Some((total, used)) => assert!(total > 0 && used <= total),
        }
        assert_eq!(gpu_memory(u32::MAX), None, "no such GPU");
        let tracker = PeakTracker::new(Device::Cpu);
        tracker.sample();
        assert!(tracker.peak().unwrap() > 1 << 20);
    }
}
