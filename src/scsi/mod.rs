//! SCSI (SPC-4 / SBC-3): CDB parsing into a closed enum, execution against logical units,
//! sense data. Transport-independent: the iSCSI layer hands in a complete command (with all of
//! its Data-Out bytes) and gets back status, sense and Data-In bytes.
//!
//! INTERFACE CONTRACT (used by `src/iscsi/`; keep these names and shapes):
//! - [`ScsiTarget::new`] builds a target from its logical units (LUN numbers from 0 in order).
//! - [`ScsiTarget::execute`] runs one command for one I_T nexus and returns a [`ScsiResponse`].
//! - [`ScsiTarget::nexus_gone`], [`ScsiTarget::lun_reset`], [`ScsiTarget::target_reset`] for
//!   session teardown and task management.

use std::sync::Arc;

use bytes::Bytes;

use crate::block::BlockDevice;

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

/// A SCSI target device: an ordered set of logical units plus per-nexus state
/// (unit attentions, reservations).
pub struct ScsiTarget {
    _private: (),
}

impl ScsiTarget {
    /// Builds a target; LUN numbers are the indexes of `luns`.
    pub fn new(luns: Vec<LunConfig>) -> Self {
        let _ = luns;
        todo!("scsi helper")
    }

    /// Executes one command for `nexus`. Never panics on any CDB or data.
    pub async fn execute(&self, nexus: &Nexus, req: ScsiRequest) -> ScsiResponse {
        let _ = (nexus, req);
        todo!("scsi helper")
    }

    /// The nexus has ended (session closed): drop its unit attentions and RESERVE(6) state.
    pub fn nexus_gone(&self, nexus: &Nexus) {
        let _ = nexus;
        todo!("scsi helper")
    }

    /// LOGICAL UNIT RESET: clears RESERVE(6) reservations and raises UNIT ATTENTION 29/03 for every
    /// nexus other than `by`. Returns false when the LUN does not exist.
    pub fn lun_reset(&self, lun: u64, by: &Nexus) -> bool {
        let _ = (lun, by);
        todo!("scsi helper")
    }

    /// TARGET WARM/COLD RESET: a LUN reset of every LUN (cold also clears persistent state that
    /// SPC says a power-on clears).
    pub fn target_reset(&self, cold: bool, by: &Nexus) {
        let _ = (cold, by);
        todo!("scsi helper")
    }

    /// Number of logical units.
    pub fn lun_count(&self) -> usize {
        todo!("scsi helper")
    }
}
