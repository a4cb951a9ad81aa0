//! The audit log's lines, against the claims of the module doc. One log per process: this is
//! the only test of the library that opens one, and other tests' fetches may add lines to it,
//! so each check looks for its own.

use std::time::Duration;

use super::*;

#[test]
fn fetches_and_slow_commands_become_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    open(&path, Duration::from_millis(5)).unwrap();
    assert_eq!(super::path(), Some(path.as_path()));
    fetch(
        "sha256:audit-ok",
        4096,
        8192,
        Duration::from_micros(2500),
        Ok(8192),
    );
    fetch(
        "sha256:audit-bad",
        0,
        512,
        Duration::from_millis(3),
        Err("server error (HTTP 500)\nsecond line"),
    );
    assert!(!is_slow(Duration::from_millis(4)));
    assert!(is_slow(Duration::from_millis(5)));
    slow_command(
        "iqn.audit:t",
        2,
        "read",
        Some(77),
        Duration::from_millis(12),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let line = |needle: &str| {
        let found: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        assert_eq!(found.len(), 1, "{needle} in:\n{text}");
        found[0].to_string()
    };
    let ok = line("layer=sha256:audit-ok");
    let (stamp, record) = ok.split_once(' ').unwrap();
    assert!(
        stamp.parse::<f64>().unwrap() > 1.7e9,
        "seconds since the epoch: {stamp}"
    );
    assert_eq!(
        record,
        "fetch layer=sha256:audit-ok offset=4096 len=8192 bytes=8192 latency_ms=2.500 status=ok"
    );
    // An error from outside stays on its line, quoted.
    let bad = line("layer=sha256:audit-bad");
    assert!(
        bad.ends_with(
            r#"bytes=0 latency_ms=3.000 status=error error="server error (HTTP 500)\nsecond line""#
        ),
        "{bad}"
    );
    let slow = line("slow_command");
    assert!(
        slow.ends_with("slow_command target=iqn.audit:t lun=2 kind=read lba=77 latency_ms=12.000"),
        "{slow}"
    );
    // The second open is ignored: one log per process.
    let other = dir.path().join("other.log");
    open(&other, Duration::ZERO).unwrap();
    assert_eq!(super::path(), Some(path.as_path()));
}
