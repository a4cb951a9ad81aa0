//! The command pipeline behind [`ScsiTarget::execute`]: LUN lookup, CDB parsing, unit
//! attention and reservation checks, Data-Out length rules, dispatch to the command handlers,
//! and the response with its residual.

use bytes::Bytes;

use crate::metrics::CommandKind;

use super::cdb::service_action::{copy_results, pr_out};
use super::cdb::{self, opcode, Command};
use super::identity::ascii_field;
use super::lun::{self, LogicalUnit};
use super::reservations::Access;
use super::sense::{self, asc, Sense};
use super::{
    alua, inquiry, mode, provisioning, report, sanitize, sbc, status, xcopy, CommandFailure,
    CommandOutcome, Nexus, ScsiRequest, ScsiTarget, TaskAbort,
};

/// What a command with operation code `code` does, for metrics: reads and writes of the
/// medium's data, and the rest.
pub(super) fn kind_of(code: u8) -> CommandKind {
    match code {
        opcode::READ_6 | opcode::READ_10 | opcode::READ_12 | opcode::READ_16 => CommandKind::Read,
        opcode::WRITE_6
        | opcode::WRITE_10
        | opcode::WRITE_12
        | opcode::WRITE_16
        | opcode::WRITE_AND_VERIFY_10
        | opcode::WRITE_AND_VERIFY_12
        | opcode::WRITE_AND_VERIFY_16
        | opcode::WRITE_SAME_10
        | opcode::WRITE_SAME_16
        | opcode::COMPARE_AND_WRITE
        | opcode::WRITE_ATOMIC_16
        | opcode::ORWRITE_16 => CommandKind::Write,
        _ => CommandKind::Other,
    }
}

/// How many Data-Out bytes a command needs.
enum ExpectedDataOut {
    /// Whole blocks to write; a shorter or longer transport length moves only what both sides
    /// allow.
    Blocks(u64),
    /// Exactly this many; any other transport length is refused.
    Exact(u64),
    /// A parameter list of up to this many bytes.
    Parameters(u32),
    /// None.
    Nothing,
}

impl ScsiTarget {
    /// Runs one command: LUN lookup, CDB parsing, unit attentions, reservation conflicts,
    /// Data-Out length rules, the command itself, then residuals.
    pub(super) async fn execute_command(
        &self,
        lun: &LogicalUnit,
        nexus: &Nexus,
        req: ScsiRequest,
    ) -> CommandOutcome {
        let parsed = cdb::parse(&req.cdb);
        // INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear unit attentions.
        let code = req.cdb.first().copied().unwrap_or(0);
        let ua_exempt = matches!(
            code,
            opcode::INQUIRY | opcode::REPORT_LUNS | opcode::REQUEST_SENSE
        );
        let access = parsed.as_ref().map_or(Access::Always, access_of);
        {
            let mut state = lun.state.lock();
            // A capacity change is news only to nexuses that knew the old capacity, so it is
            // raised before this one is noted: a first command sees the power-on alone.
            let size = lun.device.size();
            if size != state.last_size {
                state.last_size = size;
                state.ua.raise_others(None, asc::CAPACITY_DATA_CHANGED);
            }
            state.ua.note_nexus(nexus);
            if !ua_exempt {
                if let Some(code) = state.ua.take(nexus) {
                    return respond(Err(Sense::unit_attention(code).into()), &req, None);
                }
            }
            if state.reservations.conflicts(nexus, access) {
                return respond(Err(CommandFailure::Conflict), &req, None);
            }
            if let Ok(cmd) = &parsed {
                if let Err(sense) = check_sanitize(&state, cmd) {
                    return respond(Err(sense.into()), &req, None);
                }
            }
        }
        let cmd = match parsed {
            Ok(cmd) => cmd,
            Err(sense) => return respond(Err(sense.into()), &req, None),
        };
        if let Err(sense) = alua::check_access(self.access_state(nexus.tpgt), &cmd) {
            return respond(Err(sense.into()), &req, None);
        }
        if let Err(sense) = offered(lun, &req.cdb) {
            return respond(Err(sense.into()), &req, None);
        }
        if let Some(reason) = lun.not_ready() {
            if needs_medium(&cmd) {
                return respond(Err(Sense::not_ready(reason).into()), &req, None);
            }
        }
        // START STOP UNIT is what loads an ejected medium, so it is let through.
        if lun.options.removable
            && needs_medium(&cmd)
            && !matches!(cmd, Command::StartStopUnit { .. })
        {
            if let Err(sense) = lun.state.lock().medium.check_present() {
                return respond(Err(sense.into()), &req, None);
            }
        }
        if modifies_medium(&cmd) {
            // Checked before the Data-Out length so a read-only LUN always says why.
            if let Err(sense) = lun.check_writable() {
                return respond(Err(sense.into()), &req, None);
            }
        }
        let bs = u64::from(lun.block_size());
        let edtl = u64::from(req.expected_len);
        let (cmd, data, wanted_out) = match data_out(&cmd, bs) {
            ExpectedDataOut::Blocks(want) if edtl != want => {
                // SPDTL != EDTL (FCP-4 9.4.2 a): move only what both allow, in whole blocks,
                // and report the difference as a residual. A partial block cannot be written.
                let moved = edtl.min(want);
                let residual = Some(want);
                if moved % bs != 0 || (req.data_out.len() as u64) < moved {
                    let sense = Sense::illegal(asc::INVALID_FIELD_IN_CDB_IU);
                    return respond(Err(sense.into()), &req, residual);
                }
                let blocks = (moved / bs) as u32;
                (
                    with_blocks(cmd, blocks),
                    req.data_out.slice(..moved as usize),
                    residual,
                )
            }
            ExpectedDataOut::Blocks(want) | ExpectedDataOut::Exact(want) => {
                if edtl != want || (req.data_out.len() as u64) < want {
                    // A buffer that must match exactly (COMPARE AND WRITE, WRITE SAME,
                    // VERIFY with BYTCHK): refuse without touching the medium.
                    let sense = match cmd {
                        Command::CompareAndWrite(_) => Sense::invalid_cdb_field(13, None),
                        _ => Sense::illegal(asc::INVALID_FIELD_IN_CDB_IU),
                    };
                    return respond(Err(sense.into()), &req, Some(want));
                }
                (cmd, req.data_out.slice(..want as usize), Some(want))
            }
            ExpectedDataOut::Parameters(len) => {
                let take = req.data_out.len().min(len as usize);
                (cmd, req.data_out.slice(..take), Some(u64::from(len)))
            }
            ExpectedDataOut::Nothing => (cmd, Bytes::new(), None),
        };
        // A READ reads only what the EDTL carries (`sbc::read`); a successful one's residual is
        // still counted against its whole extent.
        let read_len = match &cmd {
            Command::Read(e) => Some(u64::from(e.blocks) * bs),
            _ => None,
        };
        let result = self.run(lun, nexus, cmd, data, req.expected_len).await;
        let wanted_out = if result.is_ok() {
            wanted_out.or(read_len)
        } else {
            wanted_out
        };
        respond(result, &req, wanted_out)
    }

    /// Commands addressed to a LUN that does not exist (SPC-4 5.1: INQUIRY answers with
    /// peripheral qualifier 3, REPORT LUNS works, REQUEST SENSE reports the error as data).
    pub(super) fn missing_lun(&self, nexus: &Nexus, req: &ScsiRequest) -> CommandOutcome {
        let not_supported = Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED);
        let result = match cdb::parse(&req.cdb) {
            Ok(Command::Inquiry {
                evpd: false,
                page: 0,
                alloc_len,
            }) => Ok(cut(
                inquiry::standard(&ascii_field(""), false, false),
                alloc_len,
            )),
            Ok(Command::ReportLuns { select, alloc_len }) => self
                .report_luns(nexus, select, alloc_len)
                .map(|d| cut(d, alloc_len))
                .map_err(CommandFailure::from),
            Ok(Command::RequestSense { desc, alloc_len }) => {
                Ok(cut(sense_data(&not_supported, desc), alloc_len))
            }
            _ => Err(not_supported.into()),
        };
        respond(result, req, None)
    }

    /// Runs a parsed command that passed the unit attention and reservation checks.
    async fn run(
        &self,
        lun: &LogicalUnit,
        nexus: &Nexus,
        cmd: Command,
        data: Bytes,
        expected_len: u32,
    ) -> Result<Bytes, CommandFailure> {
        let none = |r: Result<(), Sense>| r.map(|()| Bytes::new()).map_err(CommandFailure::from);
        // Held until the command ends, so an atomic write never interleaves with another.
        let _gate = match gate_of(&cmd) {
            Gate::Free => None,
            Gate::Shared => Some(Held::Shared(lun.atomic_gate.read().await)),
            Gate::Exclusive => Some(Held::Exclusive(lun.atomic_gate.write().await)),
        };
        match cmd {
            Command::TestUnitReady => Ok(Bytes::new()),
            Command::StartStopUnit {
                loej,
                start,
                power_condition,
            } => {
                // A power condition other than START_VALID leaves LOEJ and START unused.
                if lun.options.removable && loej && power_condition == 0 {
                    let mut state = lun.state.lock();
                    if state.medium.load_eject(start)? {
                        state
                            .ua
                            .raise_others(Some(nexus), asc::MEDIUM_MAY_HAVE_CHANGED);
                    }
                    tracing::info!(
                        target = %lun.target_name,
                        lun = lun.number,
                        initiator = %nexus.initiator_name,
                        loaded = start,
                        "removable medium loaded or ejected"
                    );
                }
                Ok(Bytes::new())
            }
            Command::PreventAllow { prevent } => {
                if lun.options.removable {
                    lun.state.lock().medium.prevent_allow(nexus, prevent)?;
                }
                Ok(Bytes::new())
            }
            Command::ReadDefectData {
                long,
                lists,
                format,
                alloc_len,
            } => Ok(cut(sbc::read_defect_data(long, lists, format), alloc_len)),
            Command::RequestSense { desc, alloc_len } => {
                let (pending, sanitizing) = {
                    let mut state = lun.state.lock();
                    (state.ua.take(nexus), state.sanitize.check_idle().err())
                };
                let sense = match (pending, sanitizing, lun.not_ready()) {
                    (Some(code), _, _) => Sense::unit_attention(code),
                    // SBC-4 4.11: how far a sanitize has come is read with REQUEST SENSE.
                    (None, Some(progress), _) => progress,
                    // SPC-4 5.11: REQUEST SENSE reports the not-ready condition as data.
                    (None, None, Some(reason)) => Sense::not_ready(reason),
                    (None, None, None) => {
                        Sense::new(sense::key::NO_SENSE, asc::NO_ADDITIONAL_SENSE)
                    }
                };
                Ok(cut(sense_data(&sense, desc), alloc_len))
            }
            Command::Inquiry {
                evpd,
                page,
                alloc_len,
            } => Ok(cut(
                inquiry::inquiry(lun, evpd, page, nexus.tpgt)?,
                alloc_len,
            )),
            Command::ReportTargetPortGroups { format, alloc_len } => {
                if format > 1 {
                    return Err(Sense::invalid_cdb_field(1, Some(7)).into());
                }
                Ok(cut(
                    alua::report_target_port_groups(&self.ports, format == 1),
                    alloc_len,
                ))
            }
            Command::ReportLuns { select, alloc_len } => {
                Ok(cut(self.report_luns(nexus, select, alloc_len)?, alloc_len))
            }
            Command::ExtendedCopy { .. } => self
                .extended_copy(lun, nexus, &data)
                .await
                .map(|()| Bytes::new()),
            Command::ReceiveCopyResults {
                action,
                list_id,
                alloc_len,
            } => {
                let data = if action == copy_results::COPY_STATUS {
                    lun.state.lock().copies.copy_status(nexus, list_id)?
                } else {
                    xcopy::operating_parameters()
                };
                Ok(cut(data, alloc_len))
            }
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            } => Ok(cut(
                report::report_supported_opcodes(rctd, options, opcode, service_action, &|info| {
                    lun.offers(info)
                })?,
                alloc_len,
            )),
            Command::ModeSense {
                long,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc_len,
            } => Ok(cut(
                mode::mode_sense(lun, long, dbd, llbaa, pc, page, subpage)?,
                alloc_len,
            )),
            Command::ModeSelect { long, pf, .. } => {
                if mode::mode_select(lun, long, pf, &data)? {
                    lun.state
                        .lock()
                        .ua
                        .raise_others(Some(nexus), asc::MODE_PARAMETERS_CHANGED);
                }
                Ok(Bytes::new())
            }
            Command::Reserve => lun
                .state
                .lock()
                .reservations
                .reserve(nexus)
                .map(|()| Bytes::new()),
            Command::Release => {
                lun.state.lock().reservations.release(nexus);
                Ok(Bytes::new())
            }
            Command::PersistentReserveIn { action, alloc_len } => {
                let data = lun.state.lock().reservations.persistent_in(action)?;
                Ok(cut(data, alloc_len))
            }
            Command::PersistentReserveOut {
                action,
                scope,
                pr_type,
                ..
            } => {
                let mut state = lun.state.lock();
                let lun::LunState {
                    ua, reservations, ..
                } = &mut *state;
                let preempted = if action == pr_out::REGISTER_AND_MOVE {
                    let ports: Vec<u16> = self.ports.iter().map(|&(tag, _)| tag).collect();
                    reservations.register_and_move(nexus, &data, &ports)?;
                    Vec::new()
                } else {
                    reservations.persistent_out(nexus, action, scope, pr_type, &data, ua)?
                };
                lun.persist_reservations(reservations)?;
                for nexus in preempted {
                    // Nobody listening (no sessions) is fine.
                    let _ = self.aborts.send(TaskAbort {
                        lun: lun.number,
                        nexus,
                    });
                }
                Ok(Bytes::new())
            }
            Command::ReadCapacity10 { lba, pmi } => Ok(sbc::read_capacity10(lun, lba, pmi)?),
            Command::ReadCapacity16 { alloc_len } => Ok(cut(sbc::read_capacity16(lun), alloc_len)),
            Command::Read(e) => Ok(sbc::read(lun, &e, expected_len).await?),
            Command::Write(e) | Command::WriteAndVerify(e) => none(sbc::write(lun, &e, data).await),
            Command::Verify { extent, bytchk } => {
                none(sbc::verify(lun, &extent, bytchk, &data).await)
            }
            Command::OrWrite(e) => none(sbc::or_write(lun, &e, data).await),
            Command::WriteAtomic(e) => none(sbc::write_atomic(lun, &e, data).await),
            Command::CompareAndWrite(e) => none(sbc::compare_and_write(lun, &e, data).await),
            Command::SyncCache { lba, blocks } => {
                none(sbc::synchronize_cache(lun, lba, blocks).await)
            }
            Command::PreFetch { lba, blocks } => none(sbc::pre_fetch(lun, lba, blocks)),
            Command::WriteSame {
                extent,
                unmap,
                anchor,
                ndob,
            } => none(provisioning::write_same(lun, &extent, unmap, anchor, ndob, &data).await),
            Command::Unmap { anchor, .. } => none(provisioning::unmap(lun, anchor, &data).await),
            Command::Sanitize {
                immed,
                ause,
                action,
                param_len,
            } => none(sanitize::sanitize(lun, immed, ause, action, param_len, &data).await),
            Command::GetLbaStatus { lba, alloc_len } => Ok(cut(
                provisioning::get_lba_status(lun, lba, alloc_len).await?,
                alloc_len,
            )),
            Command::Unsupported { .. } => Err(Sense::invalid_opcode().into()),
        }
    }
}

/// How a command stands to WRITE ATOMIC (SBC-4 4.29): commands that read or change the
/// medium run side by side, an atomic write alone.
enum Gate {
    /// Touches no data.
    Free,
    /// Reads or changes blocks: may run beside any command but an atomic write.
    Shared,
    /// WRITE ATOMIC: waits for the commands before it and holds back the ones after it.
    Exclusive,
}

/// A held [`Gate`]: kept for its release when dropped.
#[allow(dead_code)]
enum Held<'a> {
    Shared(tokio::sync::RwLockReadGuard<'a, ()>),
    Exclusive(tokio::sync::RwLockWriteGuard<'a, ()>),
}

/// The gate `cmd` needs.
fn gate_of(cmd: &Command) -> Gate {
    match cmd {
        Command::WriteAtomic(_) => Gate::Exclusive,
        Command::Read(_)
        | Command::Write(_)
        | Command::WriteAndVerify(_)
        | Command::Verify { .. }
        | Command::OrWrite(_)
        | Command::CompareAndWrite(_)
        | Command::WriteSame { .. }
        | Command::Unmap { .. } => Gate::Shared,
        _ => Gate::Free,
    }
}

/// REQUEST SENSE's data: descriptor format when DESC is set, else fixed.
fn sense_data(sense: &Sense, desc: bool) -> Bytes {
    if desc {
        sense.encode_descriptor()
    } else {
        sense.encode()
    }
}

/// Cuts command data to the CDB's allocation length.
fn cut(data: Bytes, alloc_len: u32) -> Bytes {
    let keep = data.len().min(alloc_len as usize);
    data.slice(..keep)
}

/// Reservation class of a command (SPC-4 5.13.1 table 63, simplified to three classes).
fn access_of(cmd: &Command) -> Access {
    match cmd {
        Command::Inquiry { .. }
        | Command::ReportLuns { .. }
        | Command::RequestSense { .. }
        | Command::ReportSupportedOpcodes { .. }
        | Command::ReportTargetPortGroups { .. }
        | Command::Unsupported { .. } => Access::Always,
        Command::TestUnitReady
        | Command::ReadCapacity10 { .. }
        | Command::ReadCapacity16 { .. }
        | Command::PersistentReserveIn { .. }
        | Command::PersistentReserveOut { .. }
        | Command::ReceiveCopyResults { .. }
        // The copy's own reads and writes are checked against each LUN's reservations.
        | Command::ExtendedCopy { .. }
        | Command::PreventAllow { prevent: 0 } => Access::Status,
        Command::Read(_)
        | Command::ReadDefectData { .. }
        | Command::Verify { .. }
        | Command::ModeSense { .. }
        | Command::GetLbaStatus { .. }
        | Command::PreFetch { .. } => Access::Read,
        Command::Release => Access::Release,
        _ => Access::Write,
    }
}

/// Commands that need the medium, answered NOT READY by a LUN whose backing is unavailable.
/// INQUIRY, REPORT LUNS, REQUEST SENSE, the opcode list, mode pages and reservations still
/// work, so an initiator can see the LUN and why it is not ready (SPC-4 5.1).
fn needs_medium(cmd: &Command) -> bool {
    !cmd.describes_unit()
        && !matches!(
            cmd,
            Command::ModeSense { .. }
                | Command::ModeSelect { .. }
                | Command::Reserve
                | Command::Release
                | Command::PersistentReserveIn { .. }
                | Command::PersistentReserveOut { .. }
                | Command::PreventAllow { .. }
                | Command::ReceiveCopyResults { .. }
                // Checks each LUN it copies from or to when it does (`xcopy`).
                | Command::ExtendedCopy { .. }
                | Command::Unsupported { .. }
        )
}

/// Commands that change the medium (refused with WRITE PROTECTED on read-only LUNs).
fn modifies_medium(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Write(_)
            | Command::WriteAndVerify(_)
            | Command::WriteAtomic(_)
            | Command::OrWrite(_)
            | Command::CompareAndWrite(_)
            | Command::WriteSame { .. }
            | Command::Unmap { .. }
            | Command::Sanitize { .. }
    )
}

/// NOT READY while a sanitize runs, for all but the commands that follow it; MEDIUM ERROR for
/// media commands while a failed sanitize left the LUN in failure mode (a new SANITIZE may
/// still run).
fn check_sanitize(state: &lun::LunState, cmd: &Command) -> Result<(), Sense> {
    if cmd.describes_unit() {
        return Ok(());
    }
    state.sanitize.check_idle()?;
    if needs_medium(cmd) && !matches!(cmd, Command::Sanitize { .. }) {
        state.sanitize.check_not_failed()?;
    }
    Ok(())
}

/// INVALID COMMAND OPERATION CODE (or, for one service action of an opcode, INVALID FIELD IN
/// CDB at the service action) for a command the LUN does not offer ([`LogicalUnit::offers`]).
fn offered(lun: &LogicalUnit, cdb: &[u8]) -> Result<(), Sense> {
    let code = cdb.first().copied().unwrap_or(0);
    let sa = match cdb.get(1) {
        Some(b) if cdb::has_service_action(code) => u16::from(b & 0x1f),
        _ => 0,
    };
    match cdb::lookup(code, sa) {
        Some(info) if !lun.offers(info) => Err(if info.service_action.is_some() {
            Sense::invalid_cdb_field(1, Some(4))
        } else {
            Sense::invalid_opcode()
        }),
        _ => Ok(()),
    }
}

/// A block write command cut down to `blocks` blocks.
fn with_blocks(cmd: Command, blocks: u32) -> Command {
    let cut = |e: cdb::Extent| cdb::Extent { blocks, ..e };
    match cmd {
        Command::Write(e) => Command::Write(cut(e)),
        Command::WriteAndVerify(e) => Command::WriteAndVerify(cut(e)),
        Command::OrWrite(e) => Command::OrWrite(cut(e)),
        other => other,
    }
}

/// Data-Out the command expects, given the block size.
fn data_out(cmd: &Command, bs: u64) -> ExpectedDataOut {
    match cmd {
        Command::Write(e) | Command::WriteAndVerify(e) | Command::OrWrite(e) => {
            ExpectedDataOut::Blocks(u64::from(e.blocks) * bs)
        }
        Command::CompareAndWrite(e) => ExpectedDataOut::Exact(2 * u64::from(e.blocks) * bs),
        // Moving only part of an atomic write would break it in two: all or nothing.
        Command::WriteAtomic(e) => ExpectedDataOut::Exact(u64::from(e.blocks) * bs),
        Command::Verify { extent, bytchk } => match bytchk {
            1 => ExpectedDataOut::Exact(u64::from(extent.blocks) * bs),
            3 => ExpectedDataOut::Exact(bs),
            _ => ExpectedDataOut::Exact(0),
        },
        Command::WriteSame { ndob: true, .. } => ExpectedDataOut::Exact(0),
        Command::WriteSame { .. } => ExpectedDataOut::Exact(bs),
        Command::ModeSelect { param_len, .. }
        | Command::Sanitize { param_len, .. }
        | Command::Unmap { param_len, .. }
        | Command::ExtendedCopy { param_len }
        | Command::PersistentReserveOut { param_len, .. } => {
            ExpectedDataOut::Parameters(*param_len)
        }
        _ => ExpectedDataOut::Nothing,
    }
}

/// Builds the response: Data-In cut to the transport's expected length, and the residual
/// between that length and what the command wanted to move (`wanted_out` bytes of Data-Out, or
/// else the full Data-In).
fn respond(
    result: Result<Bytes, CommandFailure>,
    req: &ScsiRequest,
    wanted_out: Option<u64>,
) -> CommandOutcome {
    let expected = i64::from(req.expected_len);
    let residual_for = |moved: u64| expected - i64::try_from(moved).unwrap_or(i64::MAX);
    match result {
        Ok(data) => {
            let residual = residual_for(wanted_out.unwrap_or(data.len() as u64));
            let keep = data.len().min(req.expected_len as usize);
            CommandOutcome {
                status: status::GOOD,
                sense: None,
                data_in: data.slice(..keep),
                residual,
            }
        }
        Err(failure) => {
            let (status, sense) = match failure {
                CommandFailure::Check(sense) => (status::CHECK_CONDITION, Some(sense.encode())),
                CommandFailure::Conflict => (status::RESERVATION_CONFLICT, None),
            };
            CommandOutcome {
                status,
                sense,
                data_in: Bytes::new(),
                residual: residual_for(wanted_out.unwrap_or(0)),
            }
        }
    }
}
