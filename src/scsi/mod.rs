//! SCSI (SPC-4 / SBC-3): CDB parsing into a closed enum, execution against logical units,
//! sense data. Transport-independent: the iSCSI layer hands in a complete command (with all of
//! its Data-Out bytes) and gets back status, sense and Data-In bytes.
//!
//! INTERFACE CONTRACT (used by `src/iscsi/`; keep these names and shapes):
//! - [`ScsiTarget::new`] builds a target from its logical units (LUN numbers from 0 in order);
//!   [`ScsiTarget::named`] also gives the target name that I/O error log lines carry.
//! - [`ScsiTarget::execute`] runs one command for one I_T nexus and returns a [`ScsiResponse`].
//! - [`ScsiTarget::nexus_gone`], [`ScsiTarget::lun_reset`], [`ScsiTarget::target_reset`] for
//!   session teardown and task management.

pub mod cdb;
mod dispatch;
mod inquiry;
pub(crate) mod io_log;
mod lun;
mod mode;
mod provisioning;
mod report;
mod reservations;
mod sbc;
pub mod sense;
mod unit_attention;

use std::sync::Arc;

use bytes::Bytes;

use crate::block::BlockDevice;
use lun::Lun;
use sense::{asc, Sense};

/// One I_T nexus: an initiator port (iSCSI initiator name + ISID) talking to this target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// The iSCSI initiator name (e.g. `iqn.1994-05.com.redhat:abc`).
    pub initiator_name: String,
    /// The session's ISID (6 bytes).
    pub isid: [u8; 6],
    /// The target portal group tag the session logged in through.
    pub tpgt: u16,
}

/// Data direction of a command as the transport declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    /// No data transfer declared.
    None,
    /// Target to initiator (iSCSI R bit).
    In,
    /// Initiator to target (iSCSI W bit).
    Out,
    /// Both (R and W bits).
    Bidirectional,
}

/// A complete SCSI command as the transport received it.
#[derive(Debug, Clone)]
pub struct ScsiRequest {
    /// The LUN addressed (flat number, already decoded from the 8-byte LUN field).
    pub lun: u64,
    /// The CDB bytes (up to 16 bytes, more with an extended-CDB AHS).
    pub cdb: Bytes,
    /// The declared data direction.
    pub direction: DataDirection,
    /// Expected Data Transfer Length from the transport (bytes).
    pub expected_len: u32,
    /// All Data-Out bytes received (empty for reads); at most `expected_len` bytes.
    pub data_out: Bytes,
}

/// The outcome of a command.
#[derive(Debug, Clone)]
pub struct ScsiResponse {
    /// SCSI status byte (0x00 GOOD, 0x02 CHECK CONDITION, 0x18 RESERVATION CONFLICT, ...).
    pub status: u8,
    /// Fixed-format sense data when `status` is CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// Data-In bytes, already cut to `expected_len`.
    pub data_in: Bytes,
    /// Residual: positive = underflow (fewer bytes transferred than expected), negative =
    /// overflow (the command wanted more than `expected_len`), zero = exact.
    pub residual: i64,
}

/// A logical unit's configuration.
pub struct LunConfig {
    /// The backing device.
    pub device: Arc<dyn BlockDevice>,
    /// Unit serial number (VPD 0x80); also used to derive the NAA identifier.
    pub serial: String,
    /// Product identification (INQUIRY), at most 16 bytes.
    pub product: String,
}

/// SCSI status codes (SAM-5 5.3).
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION: sense data describes the error.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
}

/// Why a command did not complete with GOOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// RESERVATION CONFLICT.
    Conflict,
}

impl From<Sense> for Failure {
    fn from(sense: Sense) -> Self {
        Failure::Check(sense)
    }
}

/// A SCSI target device: an ordered set of logical units plus per-nexus state
/// (unit attentions, reservations).
pub struct ScsiTarget {
    luns: Vec<Lun>,
}

impl ScsiTarget {
    /// Builds a target; LUN numbers are the indexes of `luns`.
    pub fn new(luns: Vec<LunConfig>) -> Self {
        ScsiTarget::named("", luns)
    }

    /// Builds target `name` (used in log lines); LUN numbers are the indexes of `luns`.
    pub fn named(name: &str, luns: Vec<LunConfig>) -> Self {
        let name: Arc<str> = Arc::from(name);
        ScsiTarget {
            luns: luns
                .into_iter()
                .enumerate()
                .map(|(i, config)| Lun::new(config, name.clone(), i as u64))
                .collect(),
        }
    }

    /// Executes one command for `nexus`. Never panics on any CDB or data.
    pub async fn execute(&self, nexus: &Nexus, req: ScsiRequest) -> ScsiResponse {
        self.execute_command(nexus, req).await
    }

    /// The nexus has ended (session closed): drop its unit attentions and RESERVE(6) state.
    pub fn nexus_gone(&self, nexus: &Nexus) {
        for lun in &self.luns {
            let mut state = lun.state.lock();
            state.ua.forget(nexus);
            state.reservations.nexus_gone(nexus);
        }
    }

    /// LOGICAL UNIT RESET requested through `by`: clears RESERVE(6) reservations and raises UNIT
    /// ATTENTION 29/03 for every nexus, `by` included (SAM-5 7.7; libiscsi's multipath reset
    /// test checks every path). Returns false when the LUN does not exist.
    pub fn lun_reset(&self, lun: u64, by: &Nexus) -> bool {
        let Some(lun) = usize::try_from(lun).ok().and_then(|i| self.luns.get(i)) else {
            return false;
        };
        let mut state = lun.state.lock();
        state.reservations.clear_legacy();
        state.ua.raise_others(None, asc::BUS_DEVICE_RESET);
        tracing::debug!(initiator = %by.initiator_name, "logical unit reset");
        true
    }

    /// TARGET WARM/COLD RESET requested through `by`: a LUN reset of every LUN (cold also clears
    /// persistent state that SPC says a power-on clears, and reports a power-on instead).
    pub fn target_reset(&self, cold: bool, by: &Nexus) {
        for lun in &self.luns {
            let mut state = lun.state.lock();
            state.reservations.clear_legacy();
            if cold {
                // No APTPL support: a power cycle forgets persistent reservations too.
                state.reservations.clear_all();
                lun.set_write_cache(true);
                lun.set_software_write_protect(false);
                state.ua.raise_others(None, asc::POWER_ON_RESET);
            } else {
                state.ua.raise_others(None, asc::BUS_DEVICE_RESET);
            }
        }
        tracing::debug!(initiator = %by.initiator_name, cold, "target reset");
    }

    /// Number of logical units.
    pub fn lun_count(&self) -> usize {
        self.luns.len()
    }
}

#[cfg(test)]
mod tests;
