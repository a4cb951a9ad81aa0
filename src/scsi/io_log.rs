//! Warnings for I/O errors that reach the initiator as CHECK CONDITION, at most one line per
//! LUN per interval so a failing disk cannot flood the log; the next line counts what was left
//! out.

use std::time::{Duration, Instant};

use super::lun::LogicalUnit;
use crate::block::BlockError;

/// How often one LUN may log an I/O error.
pub const IO_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Lets one event through per interval and counts the rest. The caller passes the time, so
/// tests drive it without a clock.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter that admits one event per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether an event at `now` may be logged: `Some(n)` with the number of events suppressed
    /// since the last admitted one, or `None` (counted) when the last was too recent.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// True for errors of the medium or its backing store (not of the request, such as a range
/// or write-protect refusal), which an operator needs to hear about.
fn is_io_error(err: &BlockError) -> bool {
    matches!(
        err,
        BlockError::Io(_)
            | BlockError::Remote(_)
            | BlockError::Corrupt(_)
            | BlockError::NoSpace(_)
            | BlockError::Unavailable(_)
    )
}

/// Logs `err` from `op` on `len` bytes at byte `offset` of `lun` at warn level, rate limited.
pub fn io_failed(lun: &LogicalUnit, op: &'static str, offset: u64, len: u64, err: &BlockError) {
    if !is_io_error(err) {
        return;
    }
    let Some(suppressed) = lun.io_log.lock().admit(Instant::now()) else {
        return;
    };
    let bs = u64::from(lun.block_size().max(1));
    tracing::warn!(
        target = %lun.target_name,
        lun = lun.number,
        op,
        lba = offset / bs,
        blocks = len / bs,
        cause = %err,
        suppressed,
        "I/O error answered with CHECK CONDITION"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_and_the_rest_are_counted() {
        let mut l = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_millis(10)), None);
        assert_eq!(l.admit(t0 + Duration::from_millis(999)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_millis(1500)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(5)), Some(1));
        assert_eq!(l.admit(t0 + Duration::from_secs(7)), Some(0));
    }
}
