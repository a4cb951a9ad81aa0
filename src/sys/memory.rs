//! How much memory the machine has, for sizes that only make sense below it (a RAM LUN).

/// The machine's physical memory in bytes (`MemTotal` of `/proc/meminfo`); `None` where that
/// file is missing or unreadable, and callers then skip their check.
pub(crate) fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_total(&text)
}

/// `MemTotal` in bytes from `/proc/meminfo` text (`MemTotal:  24576000 kB`).
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib.checked_mul(1024)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total_in_kib() {
        let text = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total(text), Some(24_576_000 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: many kB\n"), None);
        assert_eq!(mem_total("MemTotal: 12 pages\n"), None);
        assert!(physical_memory().is_some_and(|m| m > 1 << 20));
    }
}
