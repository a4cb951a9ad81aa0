//! What a LUN does when its registry cannot serve a read: hold the command until the registry
//! is back (the default), or fail it within a bounded time.
//!
//! Design note. A container's file system must not see an I/O error because the registry
//! blinked: Linux fails a read that gets MEDIUM ERROR at once, and ext4 then remounts
//! read-only. So by default a command whose bytes cannot be fetched is *held*: retried with
//! back-off until the registry answers, up to a deadline (10 minutes unless configured, or
//! forever). What makes holding safe:
//! - the command is an ordinary task of its session: ABORT TASK, LUN RESET and a closed
//!   connection drop its future, which ends the hold at once (nothing here spawns);
//! - the session keeps answering NOP-Outs while commands are held, so the initiator sees a
//!   live target (its SCSI timeout, not the connection, decides when to abort and retry);
//! - only [`BlockError::Remote`] is retried: a missing blob, refused credentials or damaged
//!   bytes fail as before, because waiting would not change them;
//! - a retry goes through the cache again, so a unit another reader fetched meanwhile is
//!   served without a request.
//!
//! The `fail` policy is for hosts that would rather see an error than wait: the whole command,
//! its first attempt included, ends within the deadline (20 s by default, below the Linux
//! initiator's 30 s SCSI timeout), retrying until then. Either way the final error is
//! [`BlockError::Remote`], MEDIUM ERROR to the initiator.
//!
//! Held commands are visible: the first one of a device logs a warning, the device's last
//! one logs how long reads were held, and `overlaybd_target_held_commands` counts them.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{BlockDevice, BlockError, BlockResult, BlockStatus, Unavailable};

/// How a LUN answers commands whose bytes its registry cannot serve now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailurePolicy {
    /// Retry until the registry answers; fail only after `deadline` (`None`: never).
    Hold {
        /// How long one command may be held.
        deadline: Option<Duration>,
    },
    /// Retry, but end the command within `deadline` (the first attempt included).
    Fail {
        /// How long one command may take in all.
        deadline: Duration,
    },
}

/// The deadline of `hold` when none is given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(600);
/// The deadline of `fail` when none is given: below the Linux initiator's 30 s SCSI timeout.
pub const DEFAULT_FAIL: Duration = Duration::from_secs(20);

impl Default for RemoteFailurePolicy {
    fn default() -> Self {
        RemoteFailurePolicy::Hold {
            deadline: Some(DEFAULT_HOLD),
        }
    }
}

impl RemoteFailurePolicy {
    /// How long one command may take before it fails, `None` for no limit.
    pub fn deadline(self) -> Option<Duration> {
        match self {
            RemoteFailurePolicy::Hold { deadline } => deadline,
            RemoteFailurePolicy::Fail { deadline } => Some(deadline),
        }
    }
}

/// A policy text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("remote failure policy {text:?}: {why} (expected hold, hold:DURATION, hold:forever, fail or fail:DURATION, a DURATION like 90s, 10m or 1h)")]
pub struct PolicyError {
    text: String,
    why: &'static str,
}

impl FromStr for RemoteFailurePolicy {
    type Err = PolicyError;

    /// Parses `hold`, `hold:10m`, `hold:forever`, `fail` or `fail:20s`.
    fn from_str(text: &str) -> Result<Self, PolicyError> {
        let err = |why| PolicyError {
            text: text.to_string(),
            why,
        };
        let (mode, limit) = match text.split_once(':') {
            Some((mode, limit)) => (mode, Some(limit)),
            None => (text, None),
        };
        match (mode, limit) {
            ("hold", None) => Ok(Self::default()),
            ("hold", Some("forever")) => Ok(RemoteFailurePolicy::Hold { deadline: None }),
            ("hold", Some(limit)) => Ok(RemoteFailurePolicy::Hold {
                deadline: Some(parse_duration(limit).map_err(err)?),
            }),
            ("fail", None) => Ok(RemoteFailurePolicy::Fail {
                deadline: DEFAULT_FAIL,
            }),
            ("fail", Some("forever")) => Err(err("fail needs a finite deadline")),
            ("fail", Some(limit)) => Ok(RemoteFailurePolicy::Fail {
                deadline: parse_duration(limit).map_err(err)?,
            }),
            _ => Err(err("unknown mode")),
        }
    }
}

impl fmt::Display for RemoteFailurePolicy {
    /// The text [`RemoteFailurePolicy::from_str`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteFailurePolicy::Hold { deadline: None } => f.write_str("hold:forever"),
            RemoteFailurePolicy::Hold { deadline: Some(d) } => {
                write!(f, "hold:{}", DurationText(*d))
            }
            RemoteFailurePolicy::Fail { deadline } => write!(f, "fail:{}", DurationText(*deadline)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RemoteFailurePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads `90s`, `10m`, `1h`, `2d` or `500ms` (a whole number and a unit; at least 1 ms).
fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().map_err(|_| "the duration has no number")?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err("the duration's unit is not ms, s, m, h or d"),
    };
    match n.checked_mul(ms_per) {
        Some(0) => Err("the duration is zero"),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err("the duration is too long"),
    }
}

/// A duration in the largest unit that divides it, as [`parse_duration`] reads it back.
struct DurationText(Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (per, unit) in [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ] {
            if ms != 0 && ms % per == 0 {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// The first pause between attempts of a held command; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause between attempts, so a command resumes within seconds of the registry's
/// return (each attempt already retries a few times inside the registry client).
const MAX_PAUSE: Duration = Duration::from_secs(4);

/// Commands of one device held now, and since when the device has had any.
#[derive(Default)]
struct Holds {
    count: usize,
    since: Option<Instant>,
}

/// A device whose commands follow a [`RemoteFailurePolicy`] when its registry cannot serve
/// them. Wraps the device of an image LUN; every other answer passes through unchanged.
pub struct HeldDevice {
    inner: Arc<dyn BlockDevice>,
    policy: RemoteFailurePolicy,
    name: String,
    holds: Arc<Mutex<Holds>>,
}

impl HeldDevice {
    /// `inner` under `policy`; `name` (the LUN's backing) is what the log lines name.
    pub fn new(inner: Arc<dyn BlockDevice>, policy: RemoteFailurePolicy, name: String) -> Self {
        HeldDevice {
            inner,
            policy,
            name,
            holds: Arc::default(),
        }
    }

    /// Runs `op` under the policy: once, and while it fails with [`BlockError::Remote`],
    /// again after a pause, until it gives another answer or the deadline passes.
    async fn run<T, F, Fut>(&self, op: F) -> BlockResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = BlockResult<T>>,
    {
        let mut last = None;
        let attempts = self.attempts(op, &mut last);
        let Some(deadline) = self.policy.deadline() else {
            return attempts.await;
        };
        match tokio::time::timeout(deadline, attempts).await {
            Ok(answer) => answer,
            Err(_) => Err(BlockError::Remote(format!(
                "{}: gave up after {} ({} policy){}",
                self.name,
                DurationText(deadline),
                self.policy,
                last.map(|e| format!(": {e}")).unwrap_or_default()
            ))),
        }
    }

    /// The attempts of [`HeldDevice::run`] with no deadline; `last` keeps the latest error,
    /// for the message when the deadline cuts this short.
    async fn attempts<T, F, Fut>(&self, mut op: F, last: &mut Option<String>) -> BlockResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = BlockResult<T>>,
    {
        let mut held: Option<HoldGuard> = None;
        let mut pause = FIRST_PAUSE;
        loop {
            match op().await {
                Err(BlockError::Remote(message)) => {
                    if held.is_none() {
                        held = Some(HoldGuard::enter(self, &message));
                    }
                    *last = Some(message);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                answer => return answer,
            }
        }
    }
}

/// One held command: counted in the device's holds and the gauge while it lives, so a
/// command that ends any way (answered, failed, aborted) is uncounted.
struct HoldGuard {
    holds: Arc<Mutex<Holds>>,
    name: String,
}

impl HoldGuard {
    fn enter(device: &HeldDevice, error: &str) -> HoldGuard {
        let mut holds = device.holds.lock();
        holds.count += 1;
        if holds.count == 1 {
            holds.since = Some(Instant::now());
            tracing::warn!(
                device = %device.name,
                policy = %device.policy,
                error,
                "the registry cannot serve this image's reads now; holding them until it does"
            );
        }
        crate::metrics::global().held_commands(1);
        HoldGuard {
            holds: Arc::clone(&device.holds),
            name: device.name.clone(),
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        crate::metrics::global().held_commands(-1);
        let mut holds = self.holds.lock();
        holds.count -= 1;
        if holds.count == 0 {
            if let Some(since) = holds.since.take() {
                tracing::info!(
                    device = %self.name,
                    held_secs = since.elapsed().as_secs_f64(),
                    "no command of this image is held any more"
                );
            }
        }
    }
}

#[async_trait]
impl BlockDevice for HeldDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn can_unmap(&self) -> bool {
        self.inner.can_unmap()
    }

    async fn read(&self, offset: u64, len: usize) -> BlockResult<Bytes> {
        self.run(|| self.inner.read(offset, len)).await
    }

    /// Writes are held too: a write into a writable layer may read the lower layers to fill
    /// the rest of its allocation unit, and writing the same bytes again is harmless.
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> BlockResult<()> {
        self.run(|| self.inner.write(offset, data.clone(), fua))
            .await
    }

    async fn flush(&self) -> BlockResult<()> {
        self.run(|| self.inner.flush()).await
    }

    async fn unmap(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.run(|| self.inner.unmap(offset, len)).await
    }

    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus> {
        self.run(|| self.inner.block_status(offset)).await
    }

    fn unavailable(&self) -> Option<Unavailable> {
        self.inner.unavailable()
    }
}

#[cfg(test)]
mod tests;
