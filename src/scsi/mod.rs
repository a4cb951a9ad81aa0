//! SCSI (SPC-4 / SBC-3): CDB parsing into a closed enum, execution against logical units,
//! sense data. Transport-independent: the iSCSI layer hands in a complete command (with all of
//! its Data-Out bytes) and gets back status, sense and Data-In bytes.
//!
//! INTERFACE CONTRACT (used by `src/iscsi/`; keep these names and shapes):
//! - [`ScsiTarget::new`] builds a target from its logical units (LUN numbers from 0 in order);
//!   [`ScsiTarget::named`] also gives the target name that I/O error log lines carry;
//!   [`ScsiTarget::with_ports`] names its target ports (one per portal group, for ALUA).
//! - [`ScsiTarget::execute`] runs one command for one I_T nexus and returns a [`CommandOutcome`].
//! - [`ScsiTarget::nexus_gone`], [`ScsiTarget::lun_reset`], [`ScsiTarget::target_reset`] for
//!   session teardown and task management; [`ScsiTarget::task_aborts`] for the tasks a
//!   command of another nexus aborted (PREEMPT AND ABORT).
//! - [`ScsiTarget::insert_lun`], [`ScsiTarget::remove_lun`], [`ScsiTarget::replace_lun`] change
//!   the logical units while sessions run; [`ScsiTarget::has_lun`] and
//!   [`ScsiTarget::lun_users`] answer what exists and who uses it.

mod alua;
pub use alua::AccessState;
pub mod cdb;
mod dispatch;
mod identity;
mod inquiry;
pub(crate) mod io_log;
mod lun;
mod medium;
mod mode;
mod provisioning;
mod report;
mod reservations;
mod sanitize;
mod sbc;
pub mod sense;
mod unit_attention;
mod xcopy;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::block::BlockDevice;
use crate::metrics::CommandKind;
use lun::LogicalUnit;
pub use reservations::ReservationStore;
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

#[cfg(test)]
impl Nexus {
    /// A nexus of initiator `name` with ISID 0 through portal group 1 (unit tests).
    pub(crate) fn for_test(name: &str) -> Nexus {
        Nexus {
            initiator_name: name.to_string(),
            isid: [0; 6],
            tpgt: 1,
        }
    }
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
pub struct CommandOutcome {
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

impl CommandOutcome {
    /// CHECK CONDITION with `sense` and no data: how the iSCSI layer ends a command it
    /// terminates itself (a broken Data-Out sequence, a timeout, a failed task).
    pub fn check_condition(sense: Sense) -> Self {
        CommandOutcome {
            status: status::CHECK_CONDITION,
            sense: Some(sense.encode()),
            data_in: Bytes::new(),
            residual: 0,
        }
    }
}

/// A logical unit's configuration.
pub struct LunConfig {
    /// The backing device.
    pub device: Arc<dyn BlockDevice>,
    /// Unit serial number (VPD 0x80); also used to derive the NAA identifier.
    pub serial: String,
    /// Product identification (INQUIRY), at most 16 bytes.
    pub product: String,
    /// What the unit tells initiators about its medium beyond the device itself.
    pub options: UnitOptions,
}

/// Per-LUN SCSI options: `,key=value` after the backing in the quick form, keys of the LUN
/// table in TOML (README "LUN options").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitOptions {
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY(16)): the physical block is
    /// `2^exponent` logical blocks. Initiators align I/O to it (Linux: `physical_block_size`,
    /// `minimum_io_size`).
    pub physical_block_exponent: u8,
    /// Removable medium (INQUIRY RMB): PREVENT ALLOW MEDIUM REMOVAL is honoured and START
    /// STOP UNIT with LOEJ ejects and loads the medium.
    pub removable: bool,
    /// Thin provisioning is advertised (LBPME, UNMAP, WRITE SAME with UNMAP, SANITIZE BLOCK
    /// ERASE) when the device can deallocate; false exports a thick LUN.
    pub thin: bool,
}

impl Default for UnitOptions {
    /// Physical block = logical block, fixed medium, thin when the device can deallocate.
    fn default() -> Self {
        UnitOptions {
            physical_block_exponent: 0,
            removable: false,
            thin: true,
        }
    }
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
pub(crate) enum CommandFailure {
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// RESERVATION CONFLICT.
    Conflict,
}

impl From<Sense> for CommandFailure {
    fn from(sense: Sense) -> Self {
        CommandFailure::Check(sense)
    }
}

/// LUN numbers are below this: the 14 bits of flat space addressing (SAM-5 4.7.7), the
/// widest form REPORT LUNS and the iSCSI layer encode.
pub const LUN_LIMIT: u64 = 1 << 14;

/// Why [`ScsiTarget::insert_lun`] refused a logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LunError {
    /// The target already has a logical unit with this number.
    #[error("LUN {0} already exists")]
    Exists(u64),
    /// The number is not below [`LUN_LIMIT`].
    #[error("LUN {0} is out of range (LUN numbers are below {LUN_LIMIT})")]
    OutOfRange(u64),
}

/// What [`ScsiTarget::remove_lun`] took out of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovedLun {
    /// The LUN number.
    pub number: u64,
    /// I_T nexuses that had addressed the LUN and not ended when it was removed.
    pub users: usize,
}

/// A SCSI target device: logical units by number, which can come and go while sessions run,
/// plus per-nexus state (unit attentions, reservations).
pub struct ScsiTarget {
    /// Target name for log lines, given to LUNs inserted later.
    name: Arc<str>,
    /// The logical units. Commands clone a LUN's `Arc` out under a short read lock, so one
    /// removed or replaced while its commands run keeps its device until they complete.
    luns: RwLock<BTreeMap<u64, Arc<LogicalUnit>>>,
    /// The target's ports: one per portal group, numbered by its tag, each its own target port
    /// group (REPORT TARGET PORT GROUPS) in its access state.
    ports: Arc<[(u16, AccessState)]>,
    /// Where LUNs inserted from now on save persistent reservations with APTPL.
    pr_store: Option<Arc<dyn ReservationStore>>,
    /// Tasks the transport must abort (PREEMPT AND ABORT); see [`ScsiTarget::task_aborts`].
    aborts: tokio::sync::broadcast::Sender<TaskAbort>,
    /// Chunk buffers EXTENDED COPY may hold at once (`xcopy::MAX_CHUNKS_IN_FLIGHT`).
    copy_slots: tokio::sync::Semaphore,
}

/// A request to the transport: abort every task of `nexus` on LUN `lun` without a response
/// (TAS = 0; the nexus learns why from a unit attention), as PREEMPT AND ABORT asks for the
/// nexuses it preempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAbort {
    /// The LUN whose tasks go.
    pub lun: u64,
    /// The I_T nexus whose tasks go.
    pub nexus: Nexus,
}

/// Abort requests are rare; a session that lags behind them is told and misses only aborts.
const ABORT_CHANNEL: usize = 64;

impl ScsiTarget {
    /// Builds a target; LUN numbers are the indexes of `luns`.
    pub fn new(luns: Vec<LunConfig>) -> Self {
        ScsiTarget::named("", luns)
    }

    /// Builds target `name` (used in log lines); LUN numbers are the indexes of `luns`. Units
    /// beyond [`LUN_LIMIT`] could not be addressed; they are left out with a warning.
    pub fn named(name: &str, luns: Vec<LunConfig>) -> Self {
        let name: Arc<str> = Arc::from(name);
        if luns.len() as u64 > LUN_LIMIT {
            tracing::warn!(target = %name, luns = luns.len(), "LUNs beyond {LUN_LIMIT} ignored");
        }
        let luns = (0..LUN_LIMIT)
            .zip(luns)
            .map(|(number, config)| {
                (
                    number,
                    Arc::new(LogicalUnit::new(config, name.clone(), number, None)),
                )
            })
            .collect();
        ScsiTarget {
            name,
            luns: RwLock::new(luns),
            ports: Arc::from([(1u16, AccessState::ActiveOptimized)].as_slice()),
            pr_store: None,
            aborts: tokio::sync::broadcast::channel(ABORT_CHANNEL).0,
            copy_slots: tokio::sync::Semaphore::new(xcopy::MAX_CHUNKS_IN_FLIGHT),
        }
    }

    /// The requests to abort tasks that commands of this target make (PREEMPT AND ABORT):
    /// each session honours those for its own nexus.
    pub fn task_aborts(&self) -> tokio::sync::broadcast::Receiver<TaskAbort> {
        self.aborts.subscribe()
    }

    /// LUNs inserted from now on ([`ScsiTarget::insert_lun`]) keep persistent reservations
    /// with APTPL in `store`, by serial number, and restore what it holds for their serial.
    pub fn with_reservation_store(mut self, store: Arc<dyn ReservationStore>) -> Self {
        self.pr_store = Some(store);
        self
    }

    /// The target reachable through the portal groups tagged `ports` (the default is one, tag
    /// 1), all active/optimized: each is a target port and a target port group of its own for
    /// ALUA. An empty list keeps the default.
    pub fn with_ports(self, ports: &[u16]) -> Self {
        let states: Vec<_> = ports
            .iter()
            .map(|&p| (p, AccessState::ActiveOptimized))
            .collect();
        self.with_port_states(&states)
    }

    /// [`ScsiTarget::with_ports`] with each group's ALUA access state.
    pub fn with_port_states(mut self, ports: &[(u16, AccessState)]) -> Self {
        if !ports.is_empty() {
            self.ports = Arc::from(ports);
        }
        self
    }

    /// The access state of the port group `tag` (active/optimized for one the target lacks).
    fn access_state(&self, tag: u16) -> AccessState {
        self.ports
            .iter()
            .find(|(p, _)| *p == tag)
            .map_or(AccessState::ActiveOptimized, |(_, s)| *s)
    }

    /// Executes one command for `nexus`. Never panics on any CDB or data.
    /// Each command to an existing LUN is counted in the LUN's metrics (kind, latency, bytes,
    /// sense key).
    pub async fn execute(&self, nexus: &Nexus, req: ScsiRequest) -> CommandOutcome {
        let Some(lun) = self.lun(req.lun) else {
            return self.missing_lun(nexus, &req);
        };
        let started = std::time::Instant::now();
        let kind = dispatch::kind_of(req.cdb.first().copied().unwrap_or(0));
        let sent = req.data_out.len() as u64;
        let cdb = req.cdb.clone();
        let outcome = self.execute_command(&lun, nexus, req).await;
        let good = outcome.status == status::GOOD;
        let read = match kind {
            CommandKind::Read if good => outcome.data_in.len() as u64,
            _ => 0,
        };
        let written = match kind {
            CommandKind::Write if good => sent,
            _ => 0,
        };
        let sense_key = outcome
            .sense
            .as_ref()
            .and_then(|s| s.get(2))
            .map(|k| sense::key::name(k & 0x0f));
        let elapsed = started.elapsed();
        lun.metrics.command(kind, elapsed, read, written, sense_key);
        let mut outcome = outcome;
        if lun.descriptor_sense() {
            // D_SENSE: the same sense, in descriptor format (SPC-4 4.5.2).
            outcome.sense = outcome
                .sense
                .map(|fixed| sense::fixed_to_descriptor(&fixed));
        }
        if crate::audit::is_slow(elapsed) {
            let lba = match cdb::parse(&cdb) {
                Ok(cdb::Command::Read(e) | cdb::Command::Write(e)) => Some(e.lba),
                _ => None,
            };
            crate::audit::slow_command(&self.name, lun.number, kind.label(), lba, elapsed);
        }
        outcome
    }

    /// The logical unit `number`, if the target has it now.
    fn lun(&self, number: u64) -> Option<Arc<LogicalUnit>> {
        self.luns.read().get(&number).cloned()
    }

    /// Adds logical unit `number`. Every nexus that has used one of the other LUNs is told
    /// with UNIT ATTENTION REPORTED LUNS DATA HAS CHANGED, so it rescans.
    pub fn insert_lun(&self, number: u64, config: LunConfig) -> Result<(), LunError> {
        if number >= LUN_LIMIT {
            return Err(LunError::OutOfRange(number));
        }
        let mut luns = self.luns.write();
        let std::collections::btree_map::Entry::Vacant(slot) = luns.entry(number) else {
            return Err(LunError::Exists(number));
        };
        slot.insert(Arc::new(LogicalUnit::new(
            config,
            self.name.clone(),
            number,
            self.pr_store.clone(),
        )));
        // The new LUN has seen nobody yet, so raising on every LUN reaches only the others.
        raise_on_all(&luns, asc::REPORTED_LUNS_DATA_CHANGED);
        Ok(())
    }

    /// Removes logical unit `number`; `None` when there is no such LUN. New commands to it
    /// answer LOGICAL UNIT NOT SUPPORTED while commands already running complete; the users
    /// of the remaining LUNs get UNIT ATTENTION REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_lun(&self, number: u64) -> Option<RemovedLun> {
        let mut luns = self.luns.write();
        let removed = luns.remove(&number)?;
        raise_on_all(&luns, asc::REPORTED_LUNS_DATA_CHANGED);
        let users = removed.state.lock().ua.nexus_count();
        Some(RemovedLun { number, users })
    }

    /// Puts the device of `config` behind the existing LUN `number` (e.g. once a backing that
    /// was served NOT READY while it opened is ready); false when there is no such LUN. The
    /// LUN keeps its unit attentions, reservations and mode parameters, and the next command
    /// reports CAPACITY DATA HAS CHANGED if the size differs. The LUN list is unchanged, so
    /// no REPORTED LUNS DATA HAS CHANGED.
    pub fn replace_lun(&self, number: u64, config: LunConfig) -> bool {
        let mut luns = self.luns.write();
        let Some(slot) = luns.get_mut(&number) else {
            return false;
        };
        *slot = Arc::new(slot.successor(config));
        true
    }

    /// How many I_T nexuses have addressed LUN `number` and not ended (for refusing to remove
    /// a LUN in use); `None` when there is no such LUN.
    pub fn lun_users(&self, number: u64) -> Option<usize> {
        let lun = self.lun(number)?;
        let users = lun.state.lock().ua.nexus_count();
        Some(users)
    }

    /// The LUN numbers, ascending.
    pub fn lun_numbers(&self) -> Vec<u64> {
        self.luns.read().keys().copied().collect()
    }

    /// True when the target has LUN `number` now.
    pub fn has_lun(&self, number: u64) -> bool {
        self.luns.read().contains_key(&number)
    }

    /// Number of logical units.
    pub fn lun_count(&self) -> usize {
        self.luns.read().len()
    }

    /// The nexus has ended (session closed): drop its unit attentions and RESERVE(6) state.
    pub fn nexus_gone(&self, nexus: &Nexus) {
        for lun in self.luns.read().values() {
            let mut state = lun.state.lock();
            state.ua.forget(nexus);
            state.reservations.nexus_gone(nexus);
            state.medium.nexus_gone(nexus);
            state.copies.nexus_gone(nexus);
        }
    }

    /// LOGICAL UNIT RESET requested through `by`: clears RESERVE(6) reservations and raises UNIT
    /// ATTENTION 29/03 for every nexus, `by` included (SAM-5 7.7; libiscsi's multipath reset
    /// test checks every path). Returns false when the LUN does not exist.
    pub fn lun_reset(&self, lun: u64, by: &Nexus) -> bool {
        let Some(lun) = self.lun(lun) else {
            return false;
        };
        let mut state = lun.state.lock();
        state.reservations.clear_legacy();
        state.medium.reset();
        state.ua.raise_others(None, asc::BUS_DEVICE_RESET);
        tracing::debug!(initiator = %by.initiator_name, "logical unit reset");
        true
    }

    /// TARGET WARM/COLD RESET requested through `by`: a LUN reset of every LUN (cold also clears
    /// persistent state that SPC says a power-on clears, and reports a power-on instead).
    pub fn target_reset(&self, cold: bool, by: &Nexus) {
        for lun in self.luns.read().values() {
            let mut state = lun.state.lock();
            state.reservations.clear_legacy();
            state.medium.reset();
            if cold {
                // A power cycle forgets persistent reservations, unless APTPL keeps them.
                state.reservations.clear_all();
                lun.set_write_cache(true);
                lun.set_software_write_protect(false);
                lun.set_descriptor_sense(false);
                state.ua.raise_others(None, asc::POWER_ON_RESET);
            } else {
                state.ua.raise_others(None, asc::BUS_DEVICE_RESET);
            }
        }
        tracing::debug!(initiator = %by.initiator_name, cold, "target reset");
    }

    /// REPORT LUNS for `nexus`: the LUN list, and (SPC-4 6.33) its pending REPORTED LUNS DATA
    /// HAS CHANGED withdrawn on every LUN. Both happen under one read lock so a LUN added
    /// meanwhile is either listed or still announced.
    fn report_luns(&self, nexus: &Nexus, select: u8, alloc_len: u32) -> Result<Bytes, Sense> {
        let luns = self.luns.read();
        let numbers: Vec<u64> = luns.keys().copied().collect();
        let data = report::report_luns(&numbers, select, alloc_len)?;
        for lun in luns.values() {
            lun.state
                .lock()
                .ua
                .clear(nexus, asc::REPORTED_LUNS_DATA_CHANGED);
        }
        Ok(data)
    }
}

/// Raises `code` for every nexus each of `luns` has seen.
fn raise_on_all(luns: &BTreeMap<u64, Arc<LogicalUnit>>, code: sense::Asc) {
    for lun in luns.values() {
        lun.state.lock().ua.raise_others(None, code);
    }
}

#[cfg(test)]
mod tests;
