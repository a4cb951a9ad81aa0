//! An in-memory test pair in quinn's shape: a test initiator and a [`Session`] joined by two
//! byte queues instead of a TCP connection, on a simulated clock.
//!
//! # Why
//!
//! Timer and ordering behaviour is slow and flaky to test over sockets: a NOP timeout or a
//! Data-Out timeout costs real seconds, and "nothing arrives" can only be shown by waiting for
//! a while and hoping that was long enough. The session core never reads a clock or touches a
//! socket (it is sans-IO), so a test can own both: time moves only when the test says so, and
//! every PDU the target would send has been sent by the time a step returns, so the absence of
//! one is a fact, not a guess.
//!
//! # Design
//!
//! - **Wire.** Each direction is a byte queue. Both sides encode with [`PduCodec`] and decode
//!   what the other side wrote, so every PDU crosses the wire format (no digests). The target
//!   side decodes with our MaxRecvDataSegmentLength, like the real reader.
//! - **Clock.** The pair starts at an arbitrary `Instant` and only ever adds to it.
//!   [`Pair::advance`] steps to each deadline the session asks for ([`Session::poll_timeout`])
//!   and to each scheduled command completion, in time order, up to the target time, so
//!   timers fire exactly at their deadlines; [`Pair::elapsed`] says how far the clock is.
//! - **Driver.** [`Pair::drive`] does at one instant what `transport::driver` does on a live
//!   connection, in the same order: feed the session every buffered PDU, deliver completions
//!   that are due, run the timer if it is due, take events (work first, so a reset happens
//!   before its TMF response is sent), then transmit; it repeats until nothing moves. Once the
//!   session has a close reason and everything queued is out, the connection counts as closed
//!   ([`Pair::closed_at`]) and nothing more is delivered either way.
//! - **SCSI.** A [`Backend`] runs what the session starts: [`Backend::Manual`] holds commands
//!   until the test completes them ([`Pair::complete`]), so a test decides the order of
//!   completions; [`Backend::Target`] runs them against a real [`ScsiTarget`] at once (its
//!   effects happen in start order, as the driver spawns them) and reports the outcome a fixed
//!   service time later on the simulated clock. Cancelled commands never report, as the driver
//!   aborts their tasks.
//! - **Initiator.** [`Initiator`] builds requests with its CmdSN and ExpStatSN and checks
//!   what arrives as an initiator must be able to rely on (RFC 7143 §4.2.2.1, §4.2.2.2):
//!   StatSN of status PDUs in order without gaps, R2Ts and pings carrying the next StatSN,
//!   ExpCmdSN and MaxCmdSN never going backwards and MaxCmdSN never below ExpCmdSN - 1. A
//!   broken rule fails the test at the PDU that broke it.

mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{CloseReason, Event, Session, SessionOptions, TaskId};
use crate::iscsi::pdu::serial::sn_lt;
use crate::iscsi::pdu::{
    DataOut, LogoutReason, LogoutRequest, LunField, NopIn, NopOut, Pdu, PduCodec, R2t, ScsiCommand,
    TaskMgmtRequest, TmfFunction, RESERVED_TAG,
};
use crate::scsi::{CommandOutcome, Nexus, ScsiRequest, ScsiTarget};

/// How the pair runs the SCSI commands the session starts.
pub(crate) enum Backend {
    /// Commands wait until the test completes them with [`Pair::complete`]; [`Pair::held`]
    /// lists them in start order.
    Manual,
    /// Commands run against `target` for `nexus`, each reporting `service` after it started.
    Target {
        /// The SCSI target.
        target: Arc<ScsiTarget>,
        /// The I_T nexus of the session.
        nexus: Nexus,
        /// Simulated time from start to completion of every command.
        service: Duration,
    },
}

/// A completion scheduled on the simulated clock.
struct Due {
    at: Instant,
    task: TaskId,
    response: CommandOutcome,
}

/// The initiator side: sequence numbers, request builders, and what arrived.
pub(crate) struct Initiator {
    codec: PduCodec,
    /// CmdSN of the next non-immediate request.
    pub cmd_sn: u32,
    /// StatSN the next status PDU must carry.
    pub exp_stat_sn: u32,
    /// The highest ExpCmdSN the target has sent.
    pub exp_cmd_sn: u32,
    /// The highest MaxCmdSN the target has sent.
    pub max_cmd_sn: u32,
    /// Data-Out PDUs carry at most this many bytes (the target's MaxRecvDataSegmentLength).
    pub segment: u32,
    next_itt: u32,
    inbox: VecDeque<(Duration, Pdu)>,
}

impl Initiator {
    /// A fresh initiator for a session that starts at `opts`' CmdSN and StatSN.
    fn new(opts: &SessionOptions, exp_cmd_sn: u32, max_cmd_sn: u32) -> Self {
        Initiator {
            codec: PduCodec::new(),
            cmd_sn: opts.first_cmd_sn,
            exp_stat_sn: opts.first_stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            segment: opts.params.max_recv_data_segment_length,
            next_itt: 0,
            inbox: VecDeque::new(),
        }
    }

    /// A new Initiator Task Tag.
    pub fn itt(&mut self) -> u32 {
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 0;
        }
        self.next_itt
    }

    /// The CmdSN for a non-immediate request, advancing the counter.
    fn take_cmd_sn(&mut self) -> u32 {
        let sn = self.cmd_sn;
        self.cmd_sn = sn.wrapping_add(1);
        sn
    }

    /// A non-immediate SCSI command with `data` as immediate data; returns its ITT.
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        read: bool,
        write: bool,
        edtl: u32,
        data: Bytes,
    ) -> (u32, Pdu) {
        let itt = self.itt();
        let cmd = ScsiCommand {
            read,
            write,
            itt,
            cmd_sn: self.take_cmd_sn(),
            exp_stat_sn: self.exp_stat_sn,
            data,
            ..ScsiCommand::new(lun_field(lun), cdb, edtl)
        };
        (itt, Pdu::ScsiCommand(cmd))
    }

    /// READ(10) of `blocks` 512-byte blocks at `lba`.
    pub fn read10(&mut self, lun: u64, lba: u32, blocks: u16) -> (u32, Pdu) {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let len = u32::from(blocks) * 512;
        self.command(lun, &cdb, true, false, len, Bytes::new())
    }

    /// WRITE(10) of `data` (whole 512-byte blocks) at `lba`, the first `immediate` bytes sent
    /// as immediate data.
    pub fn write10(&mut self, lun: u64, lba: u32, data: &Bytes, immediate: usize) -> (u32, Pdu) {
        let blocks = u16::try_from(data.len() / 512).unwrap_or(u16::MAX);
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let imm = data.slice(..immediate.min(data.len()));
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.command(lun, &cdb, false, true, len, imm)
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready(&mut self, lun: u64) -> (u32, Pdu) {
        self.command(lun, &[0; 6], false, false, 0, Bytes::new())
    }

    /// The Data-Out PDUs answering `r2t` from the whole write buffer `data`, in segments of
    /// at most [`Initiator::segment`] bytes.
    pub fn answer(&self, r2t: &R2t, data: &Bytes) -> Vec<Pdu> {
        let start = r2t.buffer_offset as usize;
        let end = (start + r2t.desired_length as usize).min(data.len());
        let segment = (self.segment as usize).max(1);
        let mut out = Vec::new();
        let mut offset = start;
        let mut data_sn = 0;
        while offset < end {
            let n = segment.min(end - offset);
            out.push(Pdu::DataOut(DataOut {
                is_final: offset + n == end,
                lun: r2t.lun,
                itt: r2t.itt,
                ttt: r2t.ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: offset as u32,
                data: data.slice(offset..offset + n),
            }));
            offset += n;
            data_sn += 1;
        }
        out
    }

    /// The NOP-Out that answers the target's ping.
    pub fn ping_reply(&self, ping: &NopIn) -> Pdu {
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: ping.lun,
            itt: RESERVED_TAG,
            ttt: ping.ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Bytes::new(),
        })
    }

    /// An immediate task management request (`referenced` and `ref_cmd_sn` for ABORT TASK).
    pub fn tmf(
        &mut self,
        function: TmfFunction,
        lun: u64,
        referenced: u32,
        ref_cmd_sn: u32,
    ) -> (u32, Pdu) {
        let itt = self.itt();
        let req = TaskMgmtRequest {
            immediate: true,
            function,
            lun: lun_field(lun),
            itt,
            referenced_task_tag: referenced,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        };
        (itt, Pdu::TaskMgmtRequest(req))
    }

    /// An immediate Logout Request closing the session.
    pub fn logout(&mut self) -> (u32, Pdu) {
        let itt = self.itt();
        let req = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CLOSE_SESSION,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        (itt, Pdu::LogoutRequest(req))
    }

    /// Takes a PDU off the wire at `at`, checking the sequence numbers it carries.
    fn receive(&mut self, at: Duration, mut pdu: Pdu) {
        if let Some((exp, max)) = pdu.cmd_window_mut() {
            let (exp, max) = (*exp, *max);
            assert!(
                !sn_lt(max, exp.wrapping_sub(1)),
                "MaxCmdSN {max} below ExpCmdSN {exp} - 1 in {pdu:?}"
            );
            assert!(
                !sn_lt(exp, self.exp_cmd_sn) && !sn_lt(max, self.max_cmd_sn),
                "window went backwards: ({exp}, {max}) after ({}, {}) in {pdu:?}",
                self.exp_cmd_sn,
                self.max_cmd_sn
            );
            self.exp_cmd_sn = exp;
            self.max_cmd_sn = max;
        }
        // (StatSN carried, whether it consumes one): status PDUs take the next StatSN; R2Ts
        // and target pings show it without taking it; Data-In without status has none.
        let stat_sn = match &pdu {
            Pdu::ScsiResponse(p) => Some((p.stat_sn, true)),
            Pdu::DataIn(p) => p.status.map(|_| (p.stat_sn, true)),
            Pdu::NopIn(p) => Some((p.stat_sn, p.itt != RESERVED_TAG)),
            Pdu::R2t(p) => Some((p.stat_sn, false)),
            Pdu::TaskMgmtResponse(p) => Some((p.stat_sn, true)),
            Pdu::TextResponse(p) => Some((p.stat_sn, true)),
            Pdu::LogoutResponse(p) => Some((p.stat_sn, true)),
            Pdu::AsyncMessage(p) => Some((p.stat_sn, true)),
            Pdu::Reject(p) => Some((p.stat_sn, true)),
            _ => None,
        };
        if let Some((sn, consumes)) = stat_sn {
            assert_eq!(sn, self.exp_stat_sn, "StatSN out of order in {pdu:?}");
            if consumes {
                self.exp_stat_sn = sn.wrapping_add(1);
            }
        }
        self.inbox.push_back((at, pdu));
    }
}

/// The 8-byte LUN field of LUN `number` (LUN 0 for numbers beyond flat addressing).
fn lun_field(number: u64) -> LunField {
    LunField::from_number(number).unwrap_or_default()
}

/// A test initiator and a session joined in memory, on a simulated clock (see the module
/// documentation).
pub(crate) struct Pair {
    /// The target side.
    pub session: Session,
    /// The initiator side.
    pub ini: Initiator,
    backend: Backend,
    start: Instant,
    now: Instant,
    to_target: BytesMut,
    to_initiator: BytesMut,
    /// Decodes at the target (our receive limit).
    target_codec: PduCodec,
    held: Vec<(TaskId, ScsiRequest)>,
    due: Vec<Due>,
    cancelled: Vec<TaskId>,
    resets: Vec<Event>,
    closed_at: Option<Duration>,
}

/// Steps one instant may take before the pair declares the session stuck in a loop.
const MAX_STEPS: usize = 100_000;

impl Pair {
    /// A session with `opts`, just after login, whose commands `backend` runs.
    pub fn new(opts: SessionOptions, backend: Backend) -> Self {
        let start = Instant::now();
        let mut target_codec = PduCodec::new();
        target_codec.set_max_recv_data_segment_length(opts.params.max_recv_data_segment_length);
        let session = Session::new(opts.clone(), start);
        // What the final Login Response told the initiator.
        let ini = Initiator::new(&opts, session.exp_cmd_sn(), session.max_cmd_sn());
        Pair {
            session,
            ini,
            backend,
            start,
            now: start,
            to_target: BytesMut::new(),
            to_initiator: BytesMut::new(),
            target_codec,
            held: Vec::new(),
            due: Vec::new(),
            cancelled: Vec::new(),
            resets: Vec::new(),
            closed_at: None,
        }
    }

    /// A session whose commands run against `target` as `Nexus` "iqn.pair:initiator", each
    /// taking `service` of simulated time.
    pub fn with_target(opts: SessionOptions, target: Arc<ScsiTarget>, service: Duration) -> Self {
        let nexus = Nexus {
            initiator_name: "iqn.2024-01.test.pair:initiator".to_string(),
            isid: [0x80, 0, 0, 0, 0, 1],
            tpgt: 1,
        };
        Pair::new(
            opts,
            Backend::Target {
                target,
                nexus,
                service,
            },
        )
    }

    /// Simulated time since the pair started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// When the connection closed (the session ended and its last PDU was delivered).
    pub fn closed_at(&self) -> Option<Duration> {
        self.closed_at
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.session.close_reason()
    }

    /// Puts `pdu` on the wire to the target; it is read at the next [`Pair::drive`].
    pub fn send(&mut self, pdu: Pdu) {
        if self.closed_at.is_some() {
            return;
        }
        let codec = PduCodec::new();
        if let Err(e) = codec.encode_into(&pdu, &mut self.to_target) {
            panic!("the test initiator cannot encode {pdu:?}: {e}");
        }
    }

    /// [`Pair::send`] every PDU of `pdus`, in order.
    pub fn send_all(&mut self, pdus: impl IntoIterator<Item = Pdu>) {
        for pdu in pdus {
            self.send(pdu);
        }
    }

    /// The next PDU the initiator received, with the simulated time it arrived.
    pub fn recv_at(&mut self) -> Option<(Duration, Pdu)> {
        self.ini.inbox.pop_front()
    }

    /// The next PDU the initiator received.
    pub fn recv(&mut self) -> Option<Pdu> {
        self.recv_at().map(|(_, pdu)| pdu)
    }

    /// Everything the initiator received and has not taken yet.
    pub fn received(&mut self) -> Vec<Pdu> {
        self.ini.inbox.drain(..).map(|(_, pdu)| pdu).collect()
    }

    /// Commands held by [`Backend::Manual`], in start order.
    pub fn held(&self) -> &[(TaskId, ScsiRequest)] {
        &self.held
    }

    /// Commands the session cancelled, in order.
    pub fn cancelled(&self) -> &[TaskId] {
        &self.cancelled
    }

    /// LUN and target resets the session asked for, in order.
    pub fn resets(&self) -> &[Event] {
        &self.resets
    }

    /// Completes the held command `task` now with `response`, then drives.
    pub fn complete(&mut self, task: TaskId, response: CommandOutcome) {
        let Some(at) = self.held.iter().position(|(t, _)| *t == task) else {
            panic!("{task:?} is not held");
        };
        self.held.remove(at);
        self.session.complete(task, response);
        self.drive();
    }

    /// Runs everything that happens at the current instant until nothing moves.
    pub fn drive(&mut self) {
        for _ in 0..MAX_STEPS {
            if !self.step() {
                return;
            }
        }
        panic!("the pair did not settle at {:?}", self.elapsed());
    }

    /// Moves the clock forward by `by`, stopping at every timer deadline and completion on
    /// the way so each fires at its own time.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        self.drive();
        for _ in 0..MAX_STEPS {
            let timer = self
                .closed_at
                .is_none()
                .then(|| self.session.poll_timeout());
            let next = [timer.flatten(), self.due.iter().map(|d| d.at).min()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.drive();
                }
                _ => {
                    self.now = end;
                    self.drive();
                    return;
                }
            }
        }
        panic!("the pair did not reach {:?}", end - self.start);
    }

    /// One round of the driver loop at the current instant; false when nothing moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        if self.closed_at.is_none() {
            moved |= self.read_requests();
            moved |= self.deliver_completions();
            if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
                self.session.handle_timeout(self.now);
                moved = true;
            }
            moved |= self.run_events();
            while let Some(pdu) = self.session.poll_transmit() {
                let codec = PduCodec::new();
                if let Err(e) = codec.encode_into(&pdu, &mut self.to_initiator) {
                    panic!("the target queued a PDU it cannot encode, {pdu:?}: {e}");
                }
                moved = true;
            }
            // Encoded PDUs are dropped with their Data-In holds, as after a socket write.
            if self.session.waiting_for_memory() {
                self.session.memory_freed();
                moved |= self.session.has_work();
            }
        }
        while let Some(pdu) = self.decode_at_initiator() {
            let at = self.elapsed();
            self.ini.receive(at, pdu);
            moved = true;
        }
        if self.closed_at.is_none() && self.session.close_reason().is_some() {
            self.closed_at = Some(self.elapsed());
            moved = true;
        }
        moved
    }

    /// Feeds the session the PDUs on the wire to it (none once it is closing, as the driver
    /// stops reading).
    fn read_requests(&mut self) -> bool {
        let mut moved = false;
        while self.session.close_reason().is_none() {
            match self.target_codec.decode(&mut self.to_target) {
                Ok(Some(pdu)) => {
                    self.session.handle_pdu(pdu, self.now);
                    moved = true;
                }
                Ok(None) => break,
                Err(e) => panic!("the target could not decode what the test initiator sent: {e}"),
            }
        }
        moved
    }

    fn decode_at_initiator(&mut self) -> Option<Pdu> {
        match self.ini.codec.decode(&mut self.to_initiator) {
            Ok(pdu) => pdu,
            Err(e) => panic!("the initiator could not decode what the target sent: {e}"),
        }
    }

    /// Reports the completions that are due, earliest first.
    fn deliver_completions(&mut self) -> bool {
        let mut moved = false;
        loop {
            let next = self
                .due
                .iter()
                .enumerate()
                .filter(|(_, d)| d.at <= self.now)
                .min_by_key(|(i, d)| (d.at, *i))
                .map(|(i, _)| i);
            let Some(i) = next else {
                return moved;
            };
            let done = self.due.remove(i);
            self.session.complete(done.task, done.response);
            moved = true;
        }
    }

    /// Takes the session's events: starts, cancels and resets.
    fn run_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(event) = self.session.poll_event() {
            moved = true;
            match event {
                Event::Execute { task, request } => match &self.backend {
                    Backend::Manual => self.held.push((task, request)),
                    Backend::Target {
                        target,
                        nexus,
                        service,
                    } => {
                        let response = run_now(target, nexus, request);
                        self.due.push(Due {
                            at: self.now + *service,
                            task,
                            response,
                        });
                    }
                },
                Event::Cancel(task) => {
                    self.held.retain(|(t, _)| *t != task);
                    self.due.retain(|d| d.task != task);
                    self.cancelled.push(task);
                }
                Event::LunReset { lun } => {
                    if let Backend::Target { target, nexus, .. } = &self.backend {
                        target.lun_reset(lun, nexus);
                    }
                    self.resets.push(Event::LunReset { lun });
                }
                Event::TargetReset { cold } => {
                    if let Backend::Target { target, nexus, .. } = &self.backend {
                        target.target_reset(cold, nexus);
                    }
                    self.resets.push(Event::TargetReset { cold });
                }
            }
        }
        moved
    }
}

/// Runs one command to completion on a throwaway single-threaded runtime (the RAM devices
/// the pair's tests use never wait on anything, so this takes no real time to speak of).
fn run_now(target: &ScsiTarget, nexus: &Nexus, request: ScsiRequest) -> CommandOutcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("no runtime for the pair's SCSI target: {e}"));
    runtime.block_on(target.execute(nexus, request))
}
