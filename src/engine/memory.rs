//! Real memory readings on Linux: this process's resident set and the system's total and available memory
//! (`/proc`). `None` where a reading is not available — never a made-up number.

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

/// Tracks the largest RSS seen during one request (sampled at stage boundaries and every step).
#[derive(Debug, Default)]
pub struct PeakTracker {
    peak: std::sync::atomic::AtomicU64,
}

impl PeakTracker {
    /// Take a sample now.
    pub fn sample(&self) {
        if let Some(rss) = process_rss() {
            self.peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
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
}
