//! The full-feature phase of a session (normal or discovery), sans-IO (the quinn-proto
//! model).
//!
//! A [`Session`] owns everything RFC 7143 asks the target to track once login is over: the
//! CmdSN window ([`window`]), the task table keyed by Initiator Task Tag, Data-Out collection
//! and R2T generation ([`data_out`]), Data-In cutting and status delivery ([`data_in`],
//! [`status`]), StatSN, NOP pings, task management (`tmf.rs`), and NOP-Out, Text and Logout
//! requests (`control.rs`); [`registry`] tracks live sessions across connections. It never touches a
//! socket or a clock: the driver feeds it PDUs ([`Session::handle_pdu`]), command completions
//! ([`Session::complete`]) and the current time, and drains
//! - [`Session::poll_transmit`]: PDUs to send, in order;
//! - [`Session::poll_event`]: SCSI work to start or cancel ([`Event`]);
//! - [`Session::poll_timeout`]: when to call [`Session::handle_timeout`] next;
//! - [`Session::close_reason`]: once set, send what is queued and close the connection.
//!
//! Sessions have exactly one connection (MaxConnections=1) and ErrorRecoveryLevel 0: every
//! sequence error terminates the affected task and nothing is retransmitted.

pub mod budget;
mod control;
pub mod data_in;
pub mod data_out;
mod ordering;
pub mod registry;
pub mod status;
mod tasks;
mod tmf;
pub mod window;

#[cfg(test)]
mod pair;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::iscsi::pdu::{
    opcode, AsyncMessage, LunField, NopIn, Pdu, PduCodec, Reject, RejectReason, TextRequest,
    ASYNC_EVENT_LOGOUT_REQUESTED, BHS_LEN, RESERVED_TAG,
};
use crate::iscsi::text::{TextError, TextReply};
use crate::scsi::sense::{asc, Sense};
use crate::scsi::{CommandOutcome, ScsiRequest};

pub use crate::iscsi::login::SessionParams;

use self::budget::MemoryBudget;
use self::data_out::WriteLimits;
use self::tasks::Task;
use self::window::CommandWindow;

/// Everything a session needs to start.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Negotiated parameters.
    pub params: SessionParams,
    /// A discovery session: only Text, NOP-Out and Logout are allowed.
    pub discovery: bool,
    /// Commands that may be outstanding (the CmdSN window size).
    pub queue_depth: u32,
    /// Idle time before the target pings with a NOP-In; `None`: never.
    pub nop_interval: Option<Duration>,
    /// Time the initiator has to show life after a ping.
    pub nop_timeout: Duration,
    /// Bytes of write data the session may be collecting through R2Ts at once (the Expected
    /// Data Transfer Lengths of writes being solicited or executed). Writes beyond it wait for
    /// their first R2T; one write always proceeds, whatever its size.
    pub write_buffer_budget: u64,
    /// Bytes of Data-In the session may hold between reading them and writing them to the
    /// socket. Commands that would exceed it wait (holding their CmdSN slots, so the window
    /// stops opening) until Data-In drains; one command always proceeds, whatever its size.
    pub data_in_budget: u64,
    /// The budget every session of the server shares for solicited write data and unsent
    /// Data-In; `None`: no shared limit. A session that holds nothing may run one command of
    /// up to [`SESSION_FLOOR`] bytes outside it, so a full budget never locks a session out.
    pub shared_budget: Option<Arc<MemoryBudget>>,
    /// How long a write may go without the Data-Out it solicited or announced before it is
    /// ended with ABORTED COMMAND, INITIATOR RESPONSE TIMEOUT; `None`: no limit.
    pub data_out_timeout: Option<Duration>,
    /// Whether a LUN exists now (task management answers LUN DOES NOT EXIST otherwise); asked
    /// on every TMF, so LUNs added or removed after login count.
    pub lun_exists: LunExists,
    /// TARGET WARM RESET and TARGET COLD RESET are performed; when false they are answered
    /// "Function rejected" and change nothing (any initiator could otherwise end every session
    /// of the target).
    pub allow_target_reset: bool,
    /// The connection's CID (from login).
    pub cid: u16,
    /// The CmdSN of the final Login Request: the first command's CmdSN.
    pub first_cmd_sn: u32,
    /// The StatSN of the first full-feature status PDU (the final Login Response's + 1).
    pub first_stat_sn: u32,
}

/// Answers whether a LUN number exists right now: a live view of the served target's LUNs,
/// since they can come and go while the session runs.
#[derive(Clone)]
pub struct LunExists(Arc<dyn Fn(u64) -> bool + Send + Sync>);

impl LunExists {
    /// Asks `check` (e.g. `ScsiTarget::has_lun` of the served target).
    pub fn new(check: impl Fn(u64) -> bool + Send + Sync + 'static) -> Self {
        LunExists(Arc::new(check))
    }

    /// No LUN exists (a discovery session serves no target).
    pub fn none() -> Self {
        LunExists::new(|_| false)
    }

    /// True when LUN `number` exists now.
    pub fn check(&self, number: u64) -> bool {
        (self.0)(number)
    }
}

impl std::fmt::Debug for LunExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A closure has nothing printable; the name says what the field is.
        f.write_str("LunExists(..)")
    }
}

/// What the ExpCmdSN and MaxCmdSN fields hold while a PDU waits to be sent:
/// [`Session::poll_transmit`] writes the window's values as it leaves.
pub(crate) const STAMPED_AT_TRANSMIT: u32 = 0;

/// Bytes a session that holds nothing may use for one command without the shared budget.
pub const SESSION_FLOOR: u64 = 1 << 20;

/// Unsolicited data that commands waiting behind a CmdSN gap may hold per session. A gap only
/// arises on a single connection when the initiator skips a CmdSN, so a session beyond this is
/// misbehaving and is closed.
pub const MAX_GAP_BYTES: u64 = 16 << 20;

/// Identifies one SCSI command for the driver (unlike ITTs, never reused within a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// Work for the driver.
#[derive(Debug, Clone)]
pub enum Event {
    /// Run `request` (e.g. `ScsiTarget::execute`) and report the outcome with
    /// [`Session::complete`].
    Execute {
        /// The task, to name in `complete`.
        task: TaskId,
        /// The complete command with its Data-Out bytes.
        request: ScsiRequest,
    },
    /// The task was aborted: stop it; its completion will be ignored and it gets no response.
    Cancel(TaskId),
    /// LOGICAL UNIT RESET was requested (`ScsiTarget::lun_reset`); its tasks here are already
    /// cancelled.
    LunReset {
        /// The LUN number.
        lun: u64,
    },
    /// TARGET WARM/COLD RESET was requested (`ScsiTarget::target_reset`).
    TargetReset {
        /// True for a cold reset, after which every session of the target must end.
        cold: bool,
    },
}

/// Why the connection is ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// A Logout Request was answered.
    LoggedOut,
    /// No sign of life within the NOP timeout after a ping.
    NopTimeout,
    /// TARGET COLD RESET was answered.
    ColdReset,
    /// A protocol violation the session cannot recover from.
    ProtocolError(String),
    /// The initiator did not log out within the time it was given ([`Session::request_logout`]).
    LogoutTimeout,
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for its CmdSN turn (Data-Out may already arrive).
    Waiting,
    /// Delivered; collecting Data-Out.
    Collecting,
    /// Handed to the SCSI layer.
    Running,
}

/// A numbered PDU waiting in the CmdSN window.
#[derive(Debug)]
enum Ordered {
    /// A SCSI command (its state is in the task table).
    Task(u32, TaskId),
    /// Any other non-immediate request (NOP-Out, Text, TMF, Logout).
    Control(Pdu),
}

/// An outstanding target ping.
#[derive(Debug, Clone, Copy)]
struct Ping {
    ttt: u32,
    sent: Instant,
}

/// The full-feature state of one session (and its single connection).
pub struct Session {
    opts: SessionOptions,
    limits: WriteLimits,
    window: CommandWindow<Ordered>,
    stat_sn: u32,
    tasks: HashMap<u32, Task>,
    ids: HashMap<TaskId, u32>,
    next_task_id: u64,
    next_ttt: u32,
    transmit: VecDeque<Pdu>,
    events: VecDeque<Event>,
    last_rx: Instant,
    ping: Option<Ping>,
    closing: Option<CloseReason>,
    text: Option<TextHandler>,
    /// Sum of the lengths of writes holding a share of `write_buffer_budget`.
    write_reserved: u64,
    /// This session's Data-In budget (`data_in_budget`).
    data_in: Arc<MemoryBudget>,
    /// Delivered commands waiting for memory before they run or solicit data, oldest first.
    memory_waiting: VecDeque<u32>,
    /// Unsolicited bytes held by commands waiting behind a CmdSN gap, as a hold on the
    /// shared budget (they count there too).
    gap: budget::Hold,
    /// The latest time the session was given.
    now: Instant,
    /// Some write started waiting for Data-Out since the clock was last read: its wait is
    /// stamped at the next `handle_timeout` (which [`Session::poll_timeout`] asks for at once).
    stamp_due: bool,
    /// When the initiator asked to log out must have done so.
    logout_deadline: Option<Instant>,
    /// The admission number of the next task to join its LUN's task set (`ordering.rs`).
    next_admission: u64,
    /// Admitted ORDERED and HEAD OF QUEUE tasks still in the table.
    blocking: usize,
    /// Tasks waiting for older tasks to leave.
    dormant: usize,
    /// Several tasks are being dropped at once: dormant ones wait until all are gone.
    wakes_held: bool,
}

/// Answers a Text Request (SendTargets and other keys) given the initiator's current
/// MaxRecvDataSegmentLength; see [`crate::iscsi::text::TextExchange`].
pub type TextHandler = Box<dyn FnMut(&TextRequest, u32) -> Result<TextReply, TextError> + Send>;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("exp_cmd_sn", &self.window.exp_cmd_sn())
            .field("max_cmd_sn", &self.window.max_cmd_sn())
            .field("stat_sn", &self.stat_sn)
            .field("tasks", &self.tasks.len())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts the full-feature phase at `now`.
    pub fn new(opts: SessionOptions, now: Instant) -> Self {
        let p = &opts.params;
        let data_in = MemoryBudget::new(opts.data_in_budget);
        let gap = opts
            .shared_budget
            .as_ref()
            .map_or_else(budget::Hold::none, budget::Hold::empty);
        Session {
            limits: WriteLimits {
                immediate_data: p.immediate_data,
                initial_r2t: p.initial_r2t,
                first_burst: p.first_burst_length,
                max_burst: p.max_burst_length,
                max_outstanding_r2t: p.max_outstanding_r2t,
            },
            window: CommandWindow::new(opts.first_cmd_sn, opts.queue_depth),
            stat_sn: opts.first_stat_sn,
            opts,
            tasks: HashMap::new(),
            ids: HashMap::new(),
            next_task_id: 0,
            next_ttt: 1,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            last_rx: now,
            ping: None,
            closing: None,
            text: None,
            write_reserved: 0,
            data_in,
            memory_waiting: VecDeque::new(),
            gap,
            now,
            stamp_due: false,
            logout_deadline: None,
            next_admission: 0,
            blocking: 0,
            dormant: 0,
            wakes_held: false,
        }
    }

    /// Installs the answerer for Text Requests (e.g. SendTargets). Without one, Text Requests
    /// get an empty final response.
    pub fn set_text_handler(&mut self, handler: TextHandler) {
        self.text = Some(handler);
    }

    /// The next PDU to send, with the ExpCmdSN and MaxCmdSN of this moment.
    ///
    /// This is the one place those two fields are written (PDUs are queued with
    /// [`STAMPED_AT_TRANSMIT`]). A PDU may wait in the queue while the window moves: commands
    /// arrive behind it (ExpCmdSN grows), or tasks finish and slots free up (MaxCmdSN grows).
    /// It still leaves with the values of the moment it leaves, which is what RFC 7143 asks:
    /// - ExpCmdSN acknowledges every command below it as received and MaxCmdSN bounds what may
    ///   be sent (§4.2.2.1); the current values are the true ones, so a waiting PDU never
    ///   understates what the target has received nor opens the window later than it could.
    /// - Both values only grow in serial arithmetic ([`CommandWindow`] never lowers MaxCmdSN),
    ///   and PDUs leave in queue order, so what the initiator sees never goes backwards; and
    ///   at every moment MaxCmdSN >= ExpCmdSN - 1, the least §4.2.2.1 allows, so no PDU carries
    ///   a pair the initiator must ignore.
    /// - Every target → initiator PDU of the full-feature phase carries the fields (§11.3 to
    ///   §11.17, a Data-In whether or not it carries status; R2T and Reject too), and nothing
    ///   ties a PDU to the values of the moment it was built: the StatSN is what orders
    ///   responses, and it is still assigned when they are queued.
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        let mut pdu = self.transmit.pop_front()?;
        if let Some((exp_cmd_sn, max_cmd_sn)) = pdu.cmd_window_mut() {
            *exp_cmd_sn = self.window.exp_cmd_sn();
            *max_cmd_sn = self.window.max_cmd_sn();
        }
        Some(pdu)
    }

    /// The next piece of work for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing.is_some() {
            return None;
        }
        if self.stamp_due {
            return Some(self.now);
        }
        let nop = match self.ping {
            Some(p) => Some(p.sent + self.opts.nop_timeout),
            None => self.opts.nop_interval.map(|i| self.last_rx + i),
        };
        let data_out = self.next_data_out_deadline();
        [nop, data_out, self.logout_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The budgets this session takes from: its own Data-In budget and the shared one. Their
    /// bytes come back asynchronously (as Data-In is written); when
    /// [`Session::waiting_for_memory`], the driver waits on their
    /// [`MemoryBudget::subscribe`] and then calls [`Session::memory_freed`].
    pub fn budgets(&self) -> (Arc<MemoryBudget>, Option<Arc<MemoryBudget>>) {
        (self.data_in.clone(), self.opts.shared_budget.clone())
    }

    /// Whether PDUs or events are ready to be polled.
    pub fn has_work(&self) -> bool {
        !self.transmit.is_empty() || !self.events.is_empty()
    }

    /// Whether some command waits for memory to come back.
    pub fn waiting_for_memory(&self) -> bool {
        !self.memory_waiting.is_empty()
    }

    /// Why the connection must close, once it must: send the queued PDUs, then close.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.closing.as_ref()
    }

    /// Number of commands in the task table.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The ExpCmdSN currently advertised.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.window.exp_cmd_sn()
    }

    /// The MaxCmdSN currently advertised.
    pub fn max_cmd_sn(&self) -> u32 {
        self.window.max_cmd_sn()
    }

    /// Handles one PDU from the initiator, received at `now`.
    pub fn handle_pdu(&mut self, pdu: Pdu, now: Instant) {
        self.last_rx = now;
        self.now = now;
        if self.closing.is_some() {
            // After a Logout Response nothing more is processed.
            return;
        }
        match pdu {
            // Discovery sessions carry no SCSI traffic (RFC 7143 §4.3).
            Pdu::ScsiCommand(_) | Pdu::DataOut(_) | Pdu::TaskMgmtRequest(_)
                if self.opts.discovery =>
            {
                self.reject_pdu(RejectReason::PROTOCOL_ERROR, &pdu)
            }
            Pdu::ScsiCommand(cmd) => self.on_command(cmd),
            Pdu::DataOut(data) => self.on_data_out(data),
            Pdu::NopOut(nop) if nop.itt == RESERVED_TAG => self.on_ping_reply(&nop),
            Pdu::NopOut(nop) if nop.immediate => self.on_nop_out(nop),
            Pdu::TaskMgmtRequest(tmf) if tmf.immediate => self.on_tmf(tmf),
            Pdu::TextRequest(text) if text.immediate => self.on_text(text),
            Pdu::LogoutRequest(logout) if logout.immediate => self.on_logout(logout),
            pdu @ (Pdu::NopOut(_)
            | Pdu::TaskMgmtRequest(_)
            | Pdu::TextRequest(_)
            | Pdu::LogoutRequest(_)) => {
                let cmd_sn = match &pdu {
                    Pdu::NopOut(p) => p.cmd_sn,
                    Pdu::TaskMgmtRequest(p) => p.cmd_sn,
                    Pdu::TextRequest(p) => p.cmd_sn,
                    Pdu::LogoutRequest(p) => p.cmd_sn,
                    _ => return,
                };
                if let Err(refusal) = self.window.offer(cmd_sn, Ordered::Control(pdu)) {
                    tracing::debug!(cmd_sn, ?refusal, "numbered request dropped");
                }
            }
            // ErrorRecoveryLevel 0 has no SNACK (RFC 7143 §11.16).
            Pdu::Snack(_) => self.reject_pdu(RejectReason::PROTOCOL_ERROR, &pdu),
            Pdu::Unknown(_) => self.reject_pdu(RejectReason::COMMAND_NOT_SUPPORTED, &pdu),
            // Login after login, or a PDU only a target sends.
            _ => self.reject_pdu(RejectReason::PROTOCOL_ERROR, &pdu),
        }
        self.run_window();
        self.stamp_data_waits(now);
    }

    /// Answers a PDU the codec consumed but could not use (data digest error, malformed AHS or
    /// field; its header is `bhs`) with a Reject, and keeps the session consistent at
    /// ErrorRecoveryLevel 0: a lost Data-Out terminates its task with CHECK CONDITION (ABORTED
    /// COMMAND, PROTOCOL SERVICE CRC ERROR), and a lost numbered command gives up its CmdSN so
    /// the window does not stall.
    pub fn reject_corrupt(&mut self, reason: RejectReason, bhs: &[u8; BHS_LEN]) {
        let field =
            |at: usize| u32::from_be_bytes([bhs[at], bhs[at + 1], bhs[at + 2], bhs[at + 3]]);
        let opcode = bhs[0] & 0x3f;
        let immediate = bhs[0] & 0x40 != 0;
        match opcode {
            opcode::DATA_OUT => {
                let lost = Sense::aborted_command(asc::PROTOCOL_SERVICE_CRC_ERROR);
                self.fail_task(field(16), CommandOutcome::check_condition(lost))
            }
            opcode::SCSI_COMMAND
            | opcode::NOP_OUT
            | opcode::TASK_MGMT_REQUEST
            | opcode::TEXT_REQUEST
            | opcode::LOGOUT_REQUEST
                if !immediate =>
            {
                self.window.void(field(24));
            }
            _ => {}
        }
        self.reject_header(reason, bhs);
        self.run_window();
    }

    /// Sends a Reject echoing `bhs`.
    pub fn reject_header(&mut self, reason: RejectReason, bhs: &[u8; BHS_LEN]) {
        let mut reject = Reject::of_header(reason, bhs);
        reject.stat_sn = self.next_stat_sn();
        self.transmit.push_back(Pdu::Reject(reject));
    }

    /// Ends the connection for a protocol violation (queued PDUs are still sent).
    pub fn fail(&mut self, why: impl Into<String>) {
        if self.closing.is_none() {
            self.closing = Some(CloseReason::ProtocolError(why.into()));
            self.abort_all();
        }
    }

    /// Checks the timers at `now`: sends a NOP-In ping after idle time, and closes the
    /// connection when a ping went unanswered or a requested logout did not come in time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        self.now = now;
        if self.logout_deadline.is_some_and(|d| now >= d) {
            // RFC 7143 §11.9.1: the target may then simply drop the connection.
            self.closing = Some(CloseReason::LogoutTimeout);
            self.abort_all();
            return;
        }
        self.stamp_data_waits(now);
        self.expire_data_waits(now);
        if let Some(ping) = self.ping {
            if now < ping.sent + self.opts.nop_timeout {
                return;
            }
            if self.last_rx > ping.sent {
                // Other traffic arrived since: the initiator is alive.
                self.ping = None;
            } else {
                self.closing = Some(CloseReason::NopTimeout);
                self.abort_all();
                return;
            }
        }
        if let Some(interval) = self.opts.nop_interval {
            if now >= self.last_rx + interval {
                let ttt = self.alloc_ttt();
                let nop = NopIn {
                    lun: LunField::default(),
                    itt: RESERVED_TAG,
                    ttt,
                    // A ping does not consume a StatSN.
                    stat_sn: self.stat_sn,
                    exp_cmd_sn: STAMPED_AT_TRANSMIT,
                    max_cmd_sn: STAMPED_AT_TRANSMIT,
                    data: Bytes::new(),
                };
                self.transmit.push_back(Pdu::NopIn(nop));
                self.ping = Some(Ping { ttt, sent: now });
            }
        }
    }

    /// Asks the initiator at `now` to log out within `grace` (Async Message, event 1, in whole
    /// seconds), e.g. because the target is shutting down; the connection closes with
    /// [`CloseReason::LogoutTimeout`] once `grace` has passed without a logout. Asking again
    /// changes nothing.
    pub fn request_logout(&mut self, grace: Duration, now: Instant) {
        if self.closing.is_some() || self.logout_deadline.is_some() {
            return;
        }
        self.logout_deadline = Some(now + grace);
        let within_secs = u16::try_from(grace.as_secs()).unwrap_or(u16::MAX);
        let msg = AsyncMessage {
            lun: LunField::default(),
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: STAMPED_AT_TRANSMIT,
            max_cmd_sn: STAMPED_AT_TRANSMIT,
            event: ASYNC_EVENT_LOGOUT_REQUESTED,
            vcode: 0,
            parameter1: 0,
            parameter2: 0,
            parameter3: within_secs,
            data: Bytes::new(),
        };
        self.transmit.push_back(Pdu::AsyncMessage(msg));
    }

    /// Delivers every numbered request whose CmdSN turn has come.
    fn run_window(&mut self) {
        while self.closing.is_none() {
            let Some((cmd_sn, item)) = self.window.next_ready() else {
                break;
            };
            match item {
                Ordered::Task(itt, id) => self.deliver(itt, id),
                Ordered::Control(pdu) => {
                    // Requests that are answered at once hold no slot.
                    self.window.retire();
                    match pdu {
                        Pdu::NopOut(nop) => self.on_nop_out(nop),
                        Pdu::TaskMgmtRequest(tmf) => self.on_tmf(tmf),
                        Pdu::TextRequest(text) => self.on_text(text),
                        Pdu::LogoutRequest(logout) => self.on_logout(logout),
                        other => tracing::warn!(
                            cmd_sn,
                            opcode = other.opcode(),
                            "unexpected ordered PDU"
                        ),
                    }
                }
            }
        }
    }

    fn next_stat_sn(&mut self) -> u32 {
        let sn = self.stat_sn;
        self.stat_sn = sn.wrapping_add(1);
        sn
    }

    fn alloc_ttt(&mut self) -> u32 {
        let ttt = self.next_ttt;
        self.next_ttt = match ttt.wrapping_add(1) {
            RESERVED_TAG | 0 => 1,
            next => next,
        };
        ttt
    }

    /// Rejects a decoded PDU, echoing its header.
    fn reject_pdu(&mut self, reason: RejectReason, pdu: &Pdu) {
        tracing::debug!(opcode = pdu.opcode(), reason = reason.0, "rejecting PDU");
        let header = header_of(pdu);
        self.reject_header(reason, &header);
    }
}

/// The 48-byte BHS of a decoded PDU, for a Reject's data segment.
fn header_of(pdu: &Pdu) -> [u8; BHS_LEN] {
    let mut bhs = [0u8; BHS_LEN];
    if let Ok(enc) = PduCodec::new().encode(pdu) {
        if let Some(head) = enc.header.get(..BHS_LEN) {
            bhs.copy_from_slice(head);
        }
    }
    bhs
}
