//! The audit log (overlaybd.json's `enableAudit`, `auditPath`): one line per remote fetch and
//! per SCSI command slower than `auditSlowCommandMs`, for finding out afterwards why a
//! container was slow (which layer, which range, how long, what the registry said).
//!
//! Design note. Like the metrics, the log is one per process ([`open`] sets it up at start)
//! and the layers that have something to say call [`fetch`] or [`slow_command`]; when no log is
//! open those return after one atomic load. Each line is written with a single `write` on a
//! file opened with `O_APPEND`, so lines from concurrent tasks never interleave and a crash
//! loses at most the line being written; nothing is buffered. Lines are `key=value` words after
//! a timestamp in seconds since the epoch, so `grep` and `awk` read them; values that come from
//! outside (error messages) are quoted with Rust's escaping, so a line is always one line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The open audit log.
struct AuditLog {
    file: File,
    path: PathBuf,
    slow: Duration,
}

static LOG: OnceLock<AuditLog> = OnceLock::new();

/// Opens (creating, appending) the audit log at `path`; commands taking at least `slow` get a
/// line. The first call wins; later ones are ignored (one log per process).
pub fn open(path: &Path, slow: Duration) -> io::Result<()> {
    if LOG.get().is_some() {
        return Ok(());
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("audit log {}: {e}", path.display())))?;
    let _ = LOG.set(AuditLog {
        file,
        path: path.to_path_buf(),
        slow,
    });
    Ok(())
}

/// Where the audit log is written, if one is open.
pub fn path() -> Option<&'static Path> {
    LOG.get().map(|log| log.path.as_path())
}

/// One remote fetch of `len` bytes at `offset` of `layer` ended after `elapsed`: `Ok` with the
/// bytes received, or the error.
pub fn fetch(layer: &str, offset: u64, len: u64, elapsed: Duration, result: Result<u64, &str>) {
    let Some(log) = LOG.get() else {
        return;
    };
    let (bytes, status) = match result {
        Ok(bytes) => (bytes, "ok".to_string()),
        Err(e) => (0, format!("error error={e:?}")),
    };
    log.write(&format!(
        "fetch layer={layer} offset={offset} len={len} bytes={bytes} latency_ms={:.3} status={status}",
        elapsed.as_secs_f64() * 1000.0
    ));
}

/// Whether a command that took `elapsed` gets an audit line (false when no log is open).
pub fn is_slow(elapsed: Duration) -> bool {
    LOG.get().is_some_and(|log| elapsed >= log.slow)
}

/// A SCSI command of `kind` at `lba` (for reads and writes) took `elapsed`; callers ask
/// [`is_slow`] first.
pub fn slow_command(target: &str, lun: u64, kind: &str, lba: Option<u64>, elapsed: Duration) {
    let Some(log) = LOG.get() else {
        return;
    };
    let lba = lba.map_or_else(|| "-".to_string(), |l| l.to_string());
    log.write(&format!(
        "slow_command target={target} lun={lun} kind={kind} lba={lba} latency_ms={:.3}",
        elapsed.as_secs_f64() * 1000.0
    ));
}

impl AuditLog {
    fn write(&self, record: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!("{}.{:03} {record}\n", now.as_secs(), now.subsec_millis());
        // One write per line (O_APPEND): concurrent lines never interleave. A full or broken
        // disk must not fail the I/O being audited, so errors are only logged.
        if let Err(e) = (&self.file).write_all(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "audit log write failed");
        }
    }
}

#[cfg(test)]
mod tests;
