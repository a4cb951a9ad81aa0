//! SANITIZE (SBC-4 5.30 and 4.11): destroys every block of a file or RAM LUN.
//!
//! - OVERWRITE writes the initialization pattern into every block (repeated to fill it), the
//!   requested number of passes, inverted between passes when INVERT is set. It is the only
//!   action that writes over the old bytes in the backing file itself.
//! - BLOCK ERASE deallocates every block (thin LUNs only, where reads of deallocated blocks
//!   return zeros: WABEREQ 1). The host file system frees the file's blocks; it may keep
//!   their old contents until it reuses them.
//! - CRYPTOGRAPHIC ERASE: there is no media key to change, so it deallocates like BLOCK ERASE
//!   (thin LUNs only; WACEREQ 1: reads succeed afterwards). A thick LUN offers OVERWRITE
//!   alone: libiscsi checks WACEREQ through the WABEREQ field, which must be 0 there.
//! - EXIT FAILURE MODE leaves the failure mode a failed sanitize left (when that one allowed
//!   it with AUSE); a later successful sanitize leaves it too.
//!
//! Refused on read-only LUNs (WRITE PROTECTED) and on overlaybd images, whose lower layers are
//! shared blobs that a sanitize of one LUN must not touch (the command is not listed there).
//!
//! A sanitize runs as a task of its own, not as part of the command: ABORT TASK, a LUN or
//! target reset, a logout or a lost connection do not stop it (SBC-4 requires it to run to
//! the end; libiscsi's Sanitize.Reset checks this), and IMMED returns GOOD at once. Only
//! removing the LUN stops it. While it runs every command but INQUIRY, REPORT LUNS, REQUEST
//! SENSE and REPORT SUPPORTED OPERATION CODES gets NOT READY, SANITIZE IN PROGRESS, with the
//! progress in the sense data. Writes are paced at [`SANITIZE_BYTES_PER_SEC`] so one LUN's
//! sanitize does not take the disk from every other LUN; a 1 GiB LUN takes 8 s per pass.
//! A sanitize that fails leaves the LUN in failure mode: media commands get MEDIUM ERROR,
//! SANITIZE COMMAND FAILED until another sanitize succeeds or EXIT FAILURE MODE is allowed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::cdb::service_action::sanitize as action;
use super::lun::{LogicalUnit, LunState};
use super::sense::{asc, key, Sense};
use crate::block::{BlockDevice, BlockError};

/// How fast a sanitize writes (bytes per second). Deallocation is not paced: it writes nothing.
pub const SANITIZE_BYTES_PER_SEC: u64 = 128 << 20;
/// Bytes written per step, between pacing and checks that the LUN still exists.
const WRITE_STEP: usize = 1 << 20;
/// Bytes deallocated per step.
const UNMAP_STEP: u64 = 256 << 20;

/// Sanitize state of one logical unit (part of its shared state).
#[derive(Debug, Default)]
pub struct SanitizeState {
    /// The sanitize in progress.
    running: Option<Arc<Progress>>,
    /// Set when the last sanitize failed: the LUN is in sanitize failure mode.
    failed: Option<Failure>,
}

/// How far a running sanitize has come.
#[derive(Debug)]
struct Progress {
    /// Bytes written or deallocated so far, all passes counted.
    done: AtomicU64,
    /// Bytes to write or deallocate in all.
    total: u64,
}

/// A failed sanitize.
#[derive(Debug, Clone, Copy)]
struct Failure {
    /// The failed SANITIZE had AUSE set, so EXIT FAILURE MODE may end the failure mode.
    ause: bool,
}

impl SanitizeState {
    /// NOT READY, SANITIZE IN PROGRESS (with the progress) while a sanitize runs.
    pub fn check_idle(&self) -> Result<(), Sense> {
        let Some(progress) = &self.running else {
            return Ok(());
        };
        let done = progress.done.load(Ordering::Relaxed);
        let fraction = (u128::from(done) << 16) / u128::from(progress.total.max(1));
        Err(Sense::sanitizing(fraction.min(0xffff) as u16))
    }

    /// MEDIUM ERROR, SANITIZE COMMAND FAILED while the LUN is in sanitize failure mode.
    pub fn check_not_failed(&self) -> Result<(), Sense> {
        match self.failed {
            Some(_) => Err(Sense::new(key::MEDIUM_ERROR, asc::SANITIZE_COMMAND_FAILED)),
            None => Ok(()),
        }
    }
}

/// What a validated SANITIZE does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Write this block (the pattern repeated), `passes` times, inverted every other pass.
    Overwrite {
        block: Bytes,
        passes: u8,
        invert: bool,
    },
    /// Deallocate every block.
    Deallocate,
    /// Leave failure mode.
    ExitFailureMode,
}

impl Plan {
    /// What the plan does, for the log.
    fn describe(&self) -> String {
        match self {
            Plan::Overwrite { passes, invert, .. } => {
                let inverted = if *invert {
                    ", inverted between passes"
                } else {
                    ""
                };
                format!("overwrite, {passes} pass(es){inverted}")
            }
            Plan::Deallocate => "deallocate every block".to_string(),
            Plan::ExitFailureMode => "exit failure mode".to_string(),
        }
    }
}

/// SANITIZE with service action `sa` and parameter list `params` (`param_len` as the CDB
/// gave it). Returns when the sanitize has ended, or at once with `immed`.
pub async fn sanitize(
    lun: &LogicalUnit,
    immed: bool,
    ause: bool,
    sa: u8,
    param_len: u32,
    params: &[u8],
) -> Result<(), Sense> {
    let plan = plan(lun, sa, param_len, params)?;
    let steps = match plan {
        Plan::ExitFailureMode => {
            let mut state = lun.state.lock();
            if let Some(failure) = state.sanitize.failed {
                if !failure.ause {
                    // The failed sanitize did not allow an unrestricted exit.
                    return Err(Sense::invalid_cdb_field(1, Some(4)));
                }
            }
            state.sanitize.failed = None;
            return Ok(());
        }
        Plan::Overwrite { passes, .. } => u64::from(passes),
        Plan::Deallocate => 1,
    };
    let progress = Arc::new(Progress {
        done: AtomicU64::new(0),
        total: lun.device.size().saturating_mul(steps),
    });
    {
        let mut state = lun.state.lock();
        state.sanitize.check_idle()?;
        state.sanitize.running = Some(progress.clone());
    }
    let job = Job {
        device: lun.device.clone(),
        state: Arc::downgrade(&lun.state),
        progress,
        target: lun.target_name.to_string(),
        number: lun.number,
    };
    tracing::info!(target = %job.target, lun = job.number, action = plan.describe(), "sanitize started");
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        let result = job.run(&plan).await;
        job.finish(ause, &result);
        let _ = done_tx.send(result);
    });
    if immed {
        return Ok(());
    }
    match done_rx.await {
        Ok(Ok(())) => Ok(()),
        // Failed, or stopped because the LUN was removed.
        _ => Err(Sense::new(key::MEDIUM_ERROR, asc::SANITIZE_COMMAND_FAILED)),
    }
}

/// Checks a SANITIZE against the LUN and its parameter list.
fn plan(lun: &LogicalUnit, sa: u8, param_len: u32, params: &[u8]) -> Result<Plan, Sense> {
    let bs = lun.block_size() as usize;
    if sa != action::OVERWRITE && param_len != 0 {
        // Only OVERWRITE takes parameters.
        return Err(Sense::invalid_cdb_field(7, None));
    }
    match sa {
        action::OVERWRITE => overwrite_plan(bs, param_len, params),
        action::BLOCK_ERASE | action::CRYPTO_ERASE if lun.can_unmap() => Ok(Plan::Deallocate),
        action::EXIT_FAILURE_MODE => Ok(Plan::ExitFailureMode),
        // The erases on a thick LUN are not offered (REPORT SUPPORTED OPERATION CODES).
        _ => Err(Sense::invalid_cdb_field(1, Some(4))),
    }
}

/// The OVERWRITE parameter list: INVERT, TEST and OVERWRITE COUNT, the pattern length, the
/// pattern (SBC-4 5.30.3).
fn overwrite_plan(bs: usize, param_len: u32, params: &[u8]) -> Result<Plan, Sense> {
    let param_len = param_len as usize;
    if param_len <= 4 || param_len > bs + 4 {
        return Err(Sense::invalid_cdb_field(7, None));
    }
    if params.len() < param_len {
        return Err(Sense::parameter_list_length());
    }
    let invert = params[0] & 0x80 != 0;
    if params[0] & 0x60 != 0 {
        // TEST: a vendor's self-test of the overwrite path; not offered.
        return Err(Sense::invalid_param_field(0, Some(6)));
    }
    let passes = params[0] & 0x1f;
    if passes == 0 {
        return Err(Sense::invalid_param_field(0, Some(4)));
    }
    let pattern_len = usize::from(u16::from_be_bytes([params[2], params[3]]));
    if pattern_len == 0 || pattern_len > bs || pattern_len > param_len - 4 {
        return Err(Sense::invalid_param_field(2, None));
    }
    let pattern = &params[4..4 + pattern_len];
    let block: Vec<u8> = pattern.iter().copied().cycle().take(bs).collect();
    Ok(Plan::Overwrite {
        block: Bytes::from(block),
        passes,
        invert,
    })
}

/// A sanitize running on its own task.
struct Job {
    device: Arc<dyn BlockDevice>,
    /// The LUN's state: gone once the LUN is removed, which stops the job.
    state: Weak<Mutex<LunState>>,
    progress: Arc<Progress>,
    target: String,
    number: u64,
}

impl Job {
    /// Carries out `plan`, then makes it durable.
    async fn run(&self, plan: &Plan) -> Result<(), BlockError> {
        match plan {
            Plan::Overwrite {
                block,
                passes,
                invert,
            } => {
                let inverted: Bytes = block.iter().map(|b| !b).collect();
                let started = Instant::now();
                for pass in 0..*passes {
                    let block = if *invert && pass % 2 == 1 {
                        &inverted
                    } else {
                        block
                    };
                    self.write_all(block, u64::from(pass), started).await?;
                }
            }
            Plan::Deallocate => {
                let size = self.device.size();
                let mut offset = 0;
                while offset < size {
                    self.check_lun()?;
                    let len = UNMAP_STEP.min(size - offset);
                    self.device.unmap(offset, len).await?;
                    offset += len;
                    self.progress.done.store(offset, Ordering::Relaxed);
                }
            }
            Plan::ExitFailureMode => {}
        }
        self.device.flush().await
    }

    /// Writes `block` over the whole device, as pass `pass` (for pacing and progress).
    async fn write_all(
        &self,
        block: &Bytes,
        pass: u64,
        started: Instant,
    ) -> Result<(), BlockError> {
        let size = self.device.size();
        let mut step = BytesMut::with_capacity(WRITE_STEP);
        while step.len() + block.len() <= WRITE_STEP {
            step.extend_from_slice(block);
        }
        let step = step.freeze();
        let mut offset = 0;
        while offset < size {
            self.check_lun()?;
            let len = (step.len() as u64).min(size - offset);
            self.device
                .write(offset, step.slice(..len as usize), false)
                .await?;
            offset += len;
            let done = pass * size + offset;
            self.progress.done.store(done, Ordering::Relaxed);
            let due = Duration::from_secs_f64(done as f64 / SANITIZE_BYTES_PER_SEC as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
        Ok(())
    }

    /// Stops the job once the LUN has been removed.
    fn check_lun(&self) -> Result<(), BlockError> {
        if self.state.strong_count() == 0 {
            return Err(BlockError::Unsupported("the LUN was removed"));
        }
        Ok(())
    }

    /// Records the end: no sanitize running, and failure mode if it failed.
    fn finish(&self, ause: bool, result: &Result<(), BlockError>) {
        let Some(state) = self.state.upgrade() else {
            tracing::info!(target = %self.target, lun = self.number, "sanitize stopped: LUN removed");
            return;
        };
        let mut state = state.lock();
        state.sanitize.running = None;
        match result {
            Ok(()) => {
                state.sanitize.failed = None;
                tracing::info!(target = %self.target, lun = self.number, "sanitize completed");
            }
            Err(e) => {
                state.sanitize.failed = Some(Failure { ause });
                tracing::error!(
                    target = %self.target,
                    lun = self.number,
                    error = %e,
                    "sanitize failed; the LUN is in sanitize failure mode"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(first: u8, pattern: &[u8]) -> Vec<u8> {
        let mut p = vec![first, 0];
        p.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
        p.extend_from_slice(pattern);
        p
    }

    #[test]
    fn the_overwrite_parameter_list_is_checked_field_by_field() {
        let p = params(0x81, &[1, 2, 3]);
        let plan = overwrite_plan(512, p.len() as u32, &p).unwrap();
        let Plan::Overwrite {
            block,
            passes,
            invert,
        } = plan
        else {
            panic!("{plan:?}");
        };
        assert_eq!((passes, invert, block.len()), (1, true, 512));
        assert_eq!(&block[..7], &[1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(block[511], 2, "the pattern repeats to the end of the block");

        let cdb_field = |r: Result<Plan, Sense>| r.unwrap_err().field.map(|f| (f.in_cdb, f.byte));
        for len in [0, 4, 517] {
            let p = params(1, &[0xaa; 512]);
            assert_eq!(cdb_field(overwrite_plan(512, len, &p)), Some((true, 7)));
        }
        let p = params(0, &[0xaa; 4]);
        assert_eq!(
            cdb_field(overwrite_plan(512, 8, &p)),
            Some((false, 0)),
            "a count of 0"
        );
        let p = params(0x21, &[0xaa; 4]);
        assert_eq!(
            cdb_field(overwrite_plan(512, 8, &p)),
            Some((false, 0)),
            "TEST"
        );
        let mut p = params(1, &[0xaa; 512]);
        p[2..4].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(cdb_field(overwrite_plan(512, 516, &p)), Some((false, 2)));
        p[2..4].copy_from_slice(&516u16.to_be_bytes());
        assert_eq!(cdb_field(overwrite_plan(512, 516, &p)), Some((false, 2)));
        // A pattern longer than the list carries.
        let p = params(1, &[0xaa; 8]);
        assert_eq!(cdb_field(overwrite_plan(512, 10, &p)), Some((false, 2)));
        // Fewer bytes than the CDB announced.
        let p = params(1, &[0xaa; 4]);
        let e = overwrite_plan(512, 12, &p).unwrap_err();
        assert_eq!(e.asc, asc::PARAMETER_LIST_LENGTH_ERROR);
    }
}
