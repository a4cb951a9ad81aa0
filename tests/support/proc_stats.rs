//! What `/proc` tells about a process: resident memory now and at its peak, CPU time, bytes
//! read, open sockets and the file-descriptor limit. The hostile-initiator tests assert bounds
//! on these instead of on elapsed time.

#![allow(dead_code)]

use std::time::{Duration, Instant};

fn read(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{file}: {e}"))
}

/// The `kB` field `field` of a `/proc/PID/status` text, in KiB.
fn kib_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    kib_field(&read(pid, "status"), field)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident set size now, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Peak resident set size since the process started, in KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// User plus system CPU time the process has used, in milliseconds (clock-tick resolution).
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = read(pid, "stat");
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("stat has a comm field") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the comm.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1000 / hz
}

/// Bytes the process has read through read(2)-family calls on files (`rchar` of
/// `/proc/PID/io`; socket receives are not counted).
pub fn rchar(pid: u32) -> u64 {
    let io = read(pid, "io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}

/// What the process's open descriptors point at (`socket:[INODE]`, paths, ...).
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|link| link.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Number of sockets the process has open.
pub fn socket_count(pid: u32) -> usize {
    fd_targets(pid)
        .iter()
        .filter(|link| link.starts_with("socket:"))
        .count()
}

/// Whether `pid` still has the TCP connection between its `local_port` and the peer's
/// `peer_port` open (IPv4): the connection's socket inode, from `/proc/PID/net/tcp`, among the
/// process's descriptors. A socket the process closed but the kernel still flushes is not
/// counted (its inode is 0).
pub fn holds_tcp_connection(pid: u32, local_port: u16, peer_port: u16) -> bool {
    let table = read(pid, "net/tcp");
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        (port(f.get(1)?)? == local_port && port(f.get(2)?)? == peer_port)
            .then(|| f.get(9)?.parse::<u64>().ok())
            .flatten()
    });
    let Some(inode) = inode.filter(|&i| i != 0) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    fd_targets(pid).contains(&wanted)
}

/// The soft limit on open files (`Max open files` of `/proc/PID/limits`).
pub fn nofile_soft_limit(pid: u32) -> u64 {
    let limits = read(pid, "limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Max open files in /proc/PID/limits")
}

/// What [`watch_rss`] saw.
#[derive(Debug, Clone, Copy)]
pub struct RssWatch {
    /// Highest VmRSS sampled, KiB.
    pub peak_kib: u64,
    /// VmRSS at the last sample, KiB.
    pub last_kib: u64,
    /// Whether sampling stopped early because VmRSS passed the stop level.
    pub stopped_early: bool,
}

/// Samples VmRSS of `pid` every 50 ms for `period`, stopping at once when it passes `stop_kib`
/// (so an unbounded target is caught before it takes the machine's memory) or when `pid` is
/// gone.
pub fn watch_rss(pid: u32, period: Duration, stop_kib: u64) -> RssWatch {
    let end = Instant::now() + period;
    let mut watch = RssWatch {
        peak_kib: 0,
        last_kib: 0,
        stopped_early: false,
    };
    while Instant::now() < end {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            break;
        };
        if let Some(kib) = kib_field(&status, "VmRSS") {
            watch.last_kib = kib;
            watch.peak_kib = watch.peak_kib.max(kib);
            if kib > stop_kib {
                watch.stopped_early = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    watch
}
