//! SCSI commands in the session: admission into the task table, Data-Out and R2Ts, hand-over
//! to the SCSI layer, completion, and cancellation.

use std::time::Instant;

use bytes::Bytes;

use super::budget::{Hold, Holds};
use super::data_out::{DataOutError, WriteTransfer};
use super::ordering::Ordering;
use super::status::{status_pdus, CommandRef, Stamp};
use super::{
    Event, Ordered, Phase, Session, TaskId, MAX_GAP_BYTES, SESSION_FLOOR, STAMPED_AT_TRANSMIT,
};
use crate::iscsi::pdu::{DataOut, LunField, Pdu, R2t, RejectReason, ScsiCommand, RESERVED_TAG};
use crate::scsi::sense::{asc, Sense};
use crate::scsi::{CommandOutcome, DataDirection, ScsiRequest};

/// Largest write the target buffers for one command (Expected Data Transfer Length); larger
/// ones are refused with ILLEGAL REQUEST before any data is solicited.
pub const MAX_WRITE_LEN: u32 = 64 << 20;

/// Whether a write of `need` bytes may start soliciting data while `reserved` bytes of
/// `budget` are taken. The first write always may, so one larger than the whole budget still
/// makes progress.
fn budget_allows(reserved: u64, budget: u64, need: u64) -> bool {
    reserved == 0 || reserved.saturating_add(need) <= budget
}

/// One command in the task table.
#[derive(Debug)]
pub(super) struct Task {
    pub(super) id: TaskId,
    pub(super) cmd_sn: u32,
    pub(super) immediate: bool,
    pub(super) lun: LunField,
    pub(super) phase: Phase,
    read: bool,
    read_len: u32,
    expected_len: u32,
    direction: DataDirection,
    cdb: Bytes,
    transfer: Option<WriteTransfer>,
    /// Set when the iSCSI layer already decided the outcome (a refused or broken transfer);
    /// the response is sent when the task's turn comes instead of executing it.
    verdict: Option<CommandOutcome>,
    r2t_count: u32,
    /// Its memory is reserved (or it needs none): it may run or solicit data.
    reserved: bool,
    /// Bytes of the session's write buffer budget it holds.
    write_local: u64,
    /// Its share of the shared budget for solicited write data; given back when it ends.
    write_hold: Hold,
    /// Its Data-In reservations (the session's and the shared budget's), attached to the
    /// Data-In bytes when it finishes so they come back once those are sent.
    read_holds: Holds,
    /// Unsolicited bytes it holds while waiting behind a CmdSN gap.
    gap_held: u64,
    /// Since when it has been waiting for Data-Out the target asked for or was promised.
    data_wait: Option<Instant>,
    /// It started waiting for Data-Out; the wait is stamped at the next clock reading.
    needs_stamp: bool,
    /// How its task attribute orders it against older tasks of its LUN.
    pub(super) ordering: Ordering,
    /// Its place in the LUN's task set, once its CmdSN turn came (see `ordering.rs`).
    pub(super) admitted: Option<u64>,
    /// The tasks it had to wait for have left: it may take memory and run.
    pub(super) enabled: bool,
    /// It is waiting for older tasks to leave (counted in `Session::dormant`).
    pub(super) dormant: bool,
}

/// ABORTED COMMAND for a Data-Out sequence error: DATA PHASE ERROR (4B/00), or
/// INVALID TARGET PORT TRANSFER TAG RECEIVED (4B/01) for a bad tag.
fn data_out_failure(err: DataOutError) -> CommandOutcome {
    match err {
        DataOutError::UnknownTtt(_) => CommandOutcome::check_condition(Sense::aborted_command(
            asc::INVALID_TARGET_PORT_TRANSFER_TAG_RECEIVED,
        )),
        _ => CommandOutcome::check_condition(Sense::aborted_command(asc::DATA_PHASE_ERROR)),
    }
}

impl Session {
    pub(super) fn on_command(&mut self, cmd: ScsiCommand) {
        if !cmd.immediate && !self.window.in_window(cmd.cmd_sn) {
            // RFC 7143 §4.2.2.1: silently ignored (its Data-Out will be too).
            tracing::debug!(
                cmd_sn = cmd.cmd_sn,
                exp = self.window.exp_cmd_sn(),
                "CmdSN outside window"
            );
            return;
        }
        if cmd.immediate && !self.window.take_immediate() {
            // Immediate commands share the queue depth; beyond it they are refused
            // (RFC 7143 §11.17.1, reason 0x06) and hold nothing.
            self.reject_pdu(
                RejectReason::IMMEDIATE_COMMAND_REJECT,
                &Pdu::ScsiCommand(cmd),
            );
            return;
        }
        if cmd.itt == RESERVED_TAG || self.tasks.contains_key(&cmd.itt) {
            let reason = if cmd.itt == RESERVED_TAG {
                RejectReason::INVALID_PDU_FIELD
            } else {
                RejectReason::TASK_IN_PROGRESS
            };
            if cmd.immediate {
                self.window.retire();
            } else {
                // The CmdSN was received; keep the window moving.
                self.window.void(cmd.cmd_sn);
            }
            self.reject_pdu(reason, &Pdu::ScsiCommand(cmd));
            return;
        }
        let direction = match (cmd.read, cmd.write) {
            (false, false) => DataDirection::None,
            (true, false) => DataDirection::In,
            (false, true) => DataDirection::Out,
            (true, true) => DataDirection::Bidirectional,
        };
        let read_len = match direction {
            DataDirection::In => cmd.expected_data_transfer_length,
            DataDirection::Bidirectional => cmd.bidi_read_length.unwrap_or(0),
            _ => 0,
        };
        let (transfer, verdict) = if cmd.write {
            if cmd.expected_data_transfer_length > MAX_WRITE_LEN {
                let refusal = Sense::illegal(asc::INVALID_FIELD_IN_CDB);
                (None, Some(CommandOutcome::check_condition(refusal)))
            } else {
                match WriteTransfer::new(
                    cmd.expected_data_transfer_length,
                    cmd.data.clone(),
                    cmd.is_final,
                    self.limits,
                ) {
                    Ok(t) => (Some(t), None),
                    Err(e) => {
                        tracing::debug!(itt = cmd.itt, error = %e, "write refused");
                        (None, Some(data_out_failure(e)))
                    }
                }
            }
        } else if !cmd.data.is_empty() {
            // Immediate data on a command without the W bit.
            (None, Some(data_out_failure(DataOutError::TooMuch)))
        } else {
            (None, None)
        };
        let (ordering, verdict) = match Ordering::of(cmd.attr) {
            Ok(o) => (o, verdict),
            Err(refusal) => (Ordering::Simple, verdict.or(Some(refusal))),
        };
        let id = TaskId(self.next_task_id);
        self.next_task_id += 1;
        // Data of a command that will wait behind a CmdSN gap is counted until its turn.
        let gap_held = if !cmd.immediate && cmd.cmd_sn != self.window.exp_cmd_sn() {
            cmd.data.len() as u64
        } else {
            0
        };
        let task = Task {
            id,
            cmd_sn: cmd.cmd_sn,
            immediate: cmd.immediate,
            lun: cmd.lun,
            phase: Phase::Waiting,
            read: cmd.read,
            read_len,
            expected_len: cmd.expected_data_transfer_length,
            direction,
            cdb: cmd.cdb,
            transfer,
            verdict,
            r2t_count: 0,
            reserved: false,
            write_local: 0,
            write_hold: Hold::none(),
            read_holds: Holds::default(),
            gap_held,
            data_wait: None,
            needs_stamp: false,
            ordering,
            admitted: None,
            enabled: false,
            dormant: false,
        };
        self.tasks.insert(cmd.itt, task);
        self.ids.insert(id, cmd.itt);
        if cmd.immediate {
            self.deliver(cmd.itt, id);
        } else if self
            .window
            .offer(cmd.cmd_sn, Ordered::Task(cmd.itt, id))
            .is_err()
        {
            // A duplicate CmdSN: drop the newcomer.
            self.tasks.remove(&cmd.itt);
            self.ids.remove(&id);
        } else {
            self.hold_gap_bytes(gap_held);
        }
    }

    /// Counts `bytes` more held behind a CmdSN gap; past [`MAX_GAP_BYTES`] the session ends.
    fn hold_gap_bytes(&mut self, bytes: u64) {
        if !self.gap.try_grow(bytes) || self.gap.bytes() > MAX_GAP_BYTES {
            tracing::warn!(
                held = self.gap.bytes(),
                exp_cmd_sn = self.window.exp_cmd_sn(),
                "commands behind a CmdSN gap hold too much data"
            );
            self.fail("CmdSN gap holds too much unsolicited data");
        }
    }

    /// The task's CmdSN turn has come (or it is immediate).
    pub(super) fn deliver(&mut self, itt: u32, id: TaskId) {
        let Some(task) = self.tasks.get_mut(&itt).filter(|t| t.id == id) else {
            return;
        };
        task.phase = Phase::Collecting;
        let held = std::mem::take(&mut task.gap_held);
        self.gap.shrink(held);
        self.admit(itt);
        self.advance(itt);
    }

    /// Moves a delivered task on: answer a verdict, or (once its task attribute lets it)
    /// solicit data and start it.
    pub(super) fn advance(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.phase != Phase::Collecting {
            return;
        }
        if let Some(verdict) = task.verdict.take() {
            let id = task.id;
            self.finish(id, &verdict);
            return;
        }
        if !self.may_start(itt) {
            return;
        }
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        // Memory is taken when the task is about to solicit data or run, not while its
        // unsolicited data is still arriving (that is bounded by the window).
        let due = task
            .transfer
            .as_ref()
            .map_or(true, |t| t.wants_r2t() || t.is_complete());
        if !task.reserved && due && !self.reserve(itt) {
            if !self.memory_waiting.contains(&itt) {
                self.memory_waiting.push_back(itt);
            }
            return;
        }
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        let mut next_ttt = self.next_ttt;
        let mut r2ts = Vec::new();
        if let Some(transfer) = task.transfer.as_mut() {
            while let Some(r2t) = transfer.next_r2t(|| {
                let ttt = next_ttt;
                next_ttt = match ttt.wrapping_add(1) {
                    RESERVED_TAG | 0 => 1,
                    n => n,
                };
                ttt
            }) {
                r2ts.push(r2t);
            }
            if !transfer.is_complete() {
                if task.data_wait.is_none() && !task.needs_stamp {
                    task.needs_stamp = true;
                    self.stamp_due = true;
                }
                task.r2t_count += r2ts.len() as u32;
                self.next_ttt = next_ttt;
                let lun = task.lun;
                for r in r2ts {
                    let pdu = R2t {
                        lun,
                        itt,
                        ttt: r.ttt,
                        // R2Ts carry the next StatSN without consuming it.
                        stat_sn: self.stat_sn,
                        exp_cmd_sn: STAMPED_AT_TRANSMIT,
                        max_cmd_sn: STAMPED_AT_TRANSMIT,
                        r2t_sn: r.r2t_sn,
                        buffer_offset: r.offset,
                        desired_length: r.len,
                    };
                    self.transmit.push_back(Pdu::R2t(pdu));
                }
                return;
            }
        }
        let data_out = task
            .transfer
            .take()
            .map(WriteTransfer::into_data)
            .unwrap_or_default();
        task.phase = Phase::Running;
        task.data_wait = None;
        task.needs_stamp = false;
        let request = ScsiRequest {
            lun: task.lun.number().unwrap_or(u64::MAX),
            cdb: task.cdb.clone(),
            direction: task.direction,
            expected_len: match task.direction {
                DataDirection::Out | DataDirection::None => task.expected_len,
                _ => task.read_len,
            },
            data_out,
        };
        self.events.push_back(Event::Execute {
            task: task.id,
            request,
        });
    }

    /// Takes the memory task `itt` needs before it runs or solicits data: room for its Data-In
    /// in the session's Data-In budget, room for its solicited write data in the session's
    /// write buffer budget, and both in the shared budget (unless the session holds nothing
    /// and the command needs at most [`SESSION_FLOOR`]). Takes nothing and returns false when
    /// the task must wait.
    fn reserve(&mut self, itt: u32) -> bool {
        let Some(task) = self.tasks.get(&itt) else {
            return false;
        };
        let write_need = if task.transfer.as_ref().is_some_and(WriteTransfer::wants_r2t) {
            u64::from(task.expected_len)
        } else {
            0
        };
        let read_need = u64::from(task.read_len);
        if write_need > 0
            && !budget_allows(
                self.write_reserved,
                self.opts.write_buffer_budget,
                write_need,
            )
        {
            return false;
        }
        let idle = self.write_reserved == 0 && self.data_in.used() == 0;
        let mut read_holds = Vec::with_capacity(2);
        if read_need > 0 {
            match self.data_in.try_take(read_need) {
                Some(h) => read_holds.push(h),
                None => return false,
            }
        }
        let mut write_hold = Hold::none();
        let exempt = idle && write_need + read_need <= SESSION_FLOOR;
        if let Some(shared) = self.opts.shared_budget.as_ref().filter(|_| !exempt) {
            if write_need > 0 {
                match shared.try_take(write_need) {
                    Some(h) => write_hold = h,
                    None => return false,
                }
            }
            if read_need > 0 {
                match shared.try_take(read_need) {
                    Some(h) => read_holds.push(h),
                    None => return false,
                }
            }
        }
        let Some(task) = self.tasks.get_mut(&itt) else {
            return false;
        };
        task.reserved = true;
        task.write_local = write_need;
        task.write_hold = write_hold;
        task.read_holds = Holds(read_holds);
        self.write_reserved += write_need;
        true
    }

    /// Memory came back to a budget this session takes from (see [`Session::budgets`]):
    /// commands waiting for it are retried, oldest first.
    pub fn memory_freed(&mut self) {
        self.retry_memory_waiting();
    }

    /// Stamps the Data-Out waits that began since the clock was last read.
    pub(super) fn stamp_data_waits(&mut self, now: Instant) {
        if !std::mem::take(&mut self.stamp_due) {
            return;
        }
        for task in self.tasks.values_mut().filter(|t| t.needs_stamp) {
            task.needs_stamp = false;
            task.data_wait = Some(now);
        }
    }

    /// Ends the writes whose Data-Out is overdue at `now`.
    pub(super) fn expire_data_waits(&mut self, now: Instant) {
        let Some(timeout) = self.opts.data_out_timeout else {
            return;
        };
        let overdue: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.data_wait.is_some_and(|since| now >= since + timeout))
            .map(|(itt, _)| *itt)
            .collect();
        for itt in overdue {
            tracing::info!(itt, ?timeout, "no Data-Out within the timeout, task ended");
            if let Some(task) = self.tasks.get_mut(&itt) {
                task.data_wait = None;
            }
            let timeout = Sense::aborted_command(asc::INITIATOR_RESPONSE_TIMEOUT);
            self.fail_task(itt, CommandOutcome::check_condition(timeout));
        }
    }

    /// When the earliest Data-Out wait expires.
    pub(super) fn next_data_out_deadline(&self) -> Option<Instant> {
        let timeout = self.opts.data_out_timeout?;
        self.tasks
            .values()
            .filter_map(|t| t.data_wait)
            .min()
            .map(|since| since + timeout)
    }

    /// Ends the task `itt` with `verdict` as soon as its CmdSN turn has come (at once if it
    /// has); its remaining Data-Out is ignored.
    pub(super) fn fail_task(&mut self, itt: u32, verdict: CommandOutcome) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.phase == Phase::Running {
            return;
        }
        task.transfer = None;
        task.verdict = Some(verdict);
        self.advance(itt);
    }

    pub(super) fn on_data_out(&mut self, data: DataOut) {
        let Some(task) = self.tasks.get_mut(&data.itt) else {
            // Data for a task that was aborted, failed or never accepted.
            tracing::debug!(itt = data.itt, "Data-Out for no task, ignored");
            return;
        };
        let Some(transfer) = task.transfer.as_mut() else {
            return;
        };
        let len = data.data.len() as u64;
        match transfer.on_data_out(
            data.ttt,
            data.data_sn,
            data.buffer_offset,
            data.data,
            data.is_final,
        ) {
            Ok(()) => {
                if task.phase == Phase::Waiting {
                    task.gap_held += len;
                    self.hold_gap_bytes(len);
                } else if task.data_wait.is_some() {
                    task.data_wait = Some(self.now);
                }
                self.advance(data.itt)
            }
            Err(e) => {
                tracing::info!(itt = data.itt, error = %e, "Data-Out sequence error, task terminated");
                self.fail_task(data.itt, data_out_failure(e));
            }
        }
    }

    /// Reports the outcome of a task started by [`Event::Execute`]. Completions of tasks that
    /// were aborted meanwhile are ignored.
    pub fn complete(&mut self, task: TaskId, response: CommandOutcome) {
        if self.closing.is_some() {
            return;
        }
        self.finish(task, &response);
    }

    /// Removes a task and queues its status PDUs.
    fn finish(&mut self, id: TaskId, response: &CommandOutcome) {
        let Some(itt) = self.ids.remove(&id) else {
            return;
        };
        let Some(mut task) = self.tasks.remove(&itt) else {
            return;
        };
        // Immediate commands took a slot too (`CommandWindow::take_immediate`).
        self.window.retire();
        // The Data-In reservations come back once the last PDU carrying the data is sent.
        let response = &CommandOutcome {
            data_in: std::mem::take(&mut task.read_holds).attach(response.data_in.clone()),
            ..response.clone()
        };
        let cmd = CommandRef {
            itt,
            lun: task.lun,
            read: task.read,
            read_len: task.read_len,
            r2t_count: task.r2t_count,
        };
        let stamp = Stamp {
            stat_sn: self.next_stat_sn(),
            max_segment: self.opts.params.max_send_data_segment_length,
            max_burst: self.opts.params.max_burst_length,
        };
        self.transmit.extend(status_pdus(cmd, response, stamp));
        // After the status, so a waiting write's R2T follows it.
        self.release_memory(task);
    }

    /// Drops a task without a response: cancels it if running, voids its CmdSN if it was still
    /// waiting for its turn, frees its window slot if it was delivered.
    pub(super) fn drop_task(&mut self, itt: u32) {
        let Some(task) = self.tasks.remove(&itt) else {
            return;
        };
        self.ids.remove(&task.id);
        self.gap.shrink(task.gap_held);
        match task.phase {
            Phase::Waiting => {
                if !task.immediate {
                    self.window.void(task.cmd_sn);
                }
            }
            Phase::Collecting | Phase::Running => {
                // Delivered commands hold a slot, immediate ones included.
                self.window.retire();
                if task.phase == Phase::Running {
                    self.events.push_back(Event::Cancel(task.id));
                }
            }
        }
        self.release_memory(task);
    }

    /// Gives back a finished or dropped task's memory (its holds go with it) and lets
    /// waiting commands start, and the tasks that waited for it to leave (task attributes).
    fn release_memory(&mut self, task: Task) {
        self.write_reserved = self.write_reserved.saturating_sub(task.write_local);
        self.left_task_set(&task);
        let reserved = task.reserved;
        drop(task);
        if reserved {
            self.retry_memory_waiting();
        }
        self.wake_dormant();
    }

    /// Starts waiting commands, oldest first, until one still does not fit.
    fn retry_memory_waiting(&mut self) {
        while let Some(&itt) = self.memory_waiting.front() {
            match self.tasks.get(&itt) {
                Some(t) if t.phase == Phase::Collecting && !t.reserved => {}
                _ => {
                    self.memory_waiting.pop_front();
                    continue;
                }
            }
            if !self.reserve(itt) {
                break;
            }
            self.memory_waiting.pop_front();
            self.advance(itt);
        }
    }

    /// Drops every task selected by `doomed` (see [`Session::drop_task`]); returns how many.
    pub(super) fn drop_tasks_where(&mut self, mut doomed: impl FnMut(&Task) -> bool) -> usize {
        let itts: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| doomed(t))
            .map(|(itt, _)| *itt)
            .collect();
        // No task they held back starts before all of them are gone: it may be doomed too.
        self.wakes_held = true;
        for itt in &itts {
            self.drop_task(*itt);
        }
        self.wakes_held = false;
        self.wake_dormant();
        itts.len()
    }

    /// Cancels every task (logout, connection failure).
    pub(super) fn abort_all(&mut self) {
        self.drop_tasks_where(|_| true);
    }

    /// Another session reset LUN `lun` (or, with `None`, the whole target): this session's
    /// tasks there are aborted without a response (SAM-5 with TAS=0); the initiator learns of
    /// it from the UNIT ATTENTION the reset raised. Returns how many tasks were dropped.
    pub fn abort_for_foreign_reset(&mut self, lun: Option<u64>) -> usize {
        self.drop_tasks_where(|t| lun.is_none() || t.lun.number() == lun)
    }
}
