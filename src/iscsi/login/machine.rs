//! The per-connection login state machine (RFC 7143 §6 and §11.12-11.13), free of I/O and of
//! clocks: feed it each Login Request and the time, send what it returns, and wake it at
//! [`Login::poll_timeout`].
//!
//! [`Login::handle`] runs the rules every request obeys (PDU and text caps, header fields,
//! reassembly of continued text, the continuation of a long response, the per-login key
//! bookkeeping), then hands the keys to the stage the login is in: [`State`] names each by
//! what it expects next. The stages themselves are in `stages.rs` (leading keys, operational
//! negotiation) and `security.rs` (AuthMethod and CHAP).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::{AuthConfig, DigestPolicy, LoginSettings, LoginTarget, TargetDirectory};
use super::error::LoginError;
use super::keys::{self, TextAssembler, TextSplitter, TextWriter};
use super::params::SessionParams;
use super::security::Auth;
use crate::iscsi::pdu::{Isid, LoginRequest, LoginResponse, LoginStatus, Stage};

/// The only iSCSI version there is (Version-max/Version-min/Version-active 0x00).
const ISCSI_VERSION: u8 = 0;
/// Login PDUs carry at most 8192 data bytes: MaxRecvDataSegmentLength is not in force yet.
const LOGIN_SEGMENT_LIMIT: usize = 8192;
/// A login that takes more round trips than this is not converging.
const MAX_LOGIN_PDUS: u32 = 64;
/// Most text bytes all Login Requests of one login may carry together. With the PDU and key
/// caps this bounds a login's work, which is linear in its text, whatever the initiator sends.
const MAX_LOGIN_TEXT: usize = keys::MAX_TEXT_LEN;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
pub(super) const MAX_NAME_LEN: usize = 223;
/// Time a whole login may take, from the connection's start until the final response
/// (including admission, which may wait for a reinstated session to end). A login that is
/// still going then is cut off without an answer: it holds a place among the connections in
/// login, and RFC 7143 sets no time of its own.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Session type requested by the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// A session with a target, for SCSI commands.
    Normal,
    /// A discovery session, for SendTargets only.
    Discovery,
}

/// Everything the session layer needs once login has succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutcome {
    /// Normal or discovery.
    pub session_type: SessionType,
    /// InitiatorName.
    pub initiator_name: String,
    /// InitiatorAlias, if declared.
    pub initiator_alias: Option<String>,
    /// The target logged in to (None for discovery sessions).
    pub target: Option<LoginTarget>,
    /// ISID from the Login Requests.
    pub isid: Isid,
    /// TSIH requested: 0 for a new session, else the session to join or reinstate.
    pub requested_tsih: u16,
    /// CID of this connection.
    pub cid: u16,
    /// The CHAP name the initiator authenticated as, if CHAP was used.
    pub chap_user: Option<String>,
    /// Negotiated parameters. Digests take effect on the first PDU after the final response.
    pub params: SessionParams,
    /// ExpCmdSN to start full feature phase with (the login's CmdSN).
    pub exp_cmd_sn: u32,
    /// StatSN for the first response after login.
    pub next_stat_sn: u32,
}

/// What to do after feeding a Login Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStep {
    /// Send this response; the login continues.
    Respond(LoginResponse),
    /// Negotiation is complete. The session layer decides the TSIH (new session, reinstatement)
    /// and calls [`Login::accept`] for the final response, or [`Login::refuse`].
    Ready(Box<LoginOutcome>),
    /// Send this failure response, then close the connection. The reason is for the log.
    Fail(LoginResponse, LoginError),
}

/// Header fields that must not change during a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leading {
    isid: Isid,
    tsih: u16,
    cid: u16,
    version_max: u8,
    version_min: u8,
}

/// Who the requests said was logging in, kept for log lines even when the login fails.
#[derive(Debug, Clone, Default)]
pub(super) struct Claimed {
    pub(super) initiator: Option<String>,
    pub(super) target: Option<String>,
    pub(super) chap_name: Option<String>,
}

/// What the first Login Request established.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) session_type: SessionType,
    pub(super) initiator_name: String,
    pub(super) initiator_alias: Option<String>,
    pub(super) target: Option<LoginTarget>,
    pub(super) auth: AuthConfig,
}

/// A response being sent in several pieces (C bit) because it exceeds 8192 bytes.
#[derive(Debug)]
struct Pending {
    text: TextSplitter,
    /// Whether we were ready to transit once the text is out.
    transit: bool,
}

/// What the login expects next (named the way rustls names its handshake states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    /// No Login Request yet: the first one fixes ISID, TSIH, CID and versions, and the stage
    /// the login starts in.
    ExpectFirstRequest,
    /// Security negotiation; [`Auth`] says which step of authentication comes next.
    ExpectSecurity(Auth),
    /// Operational negotiation.
    ExpectOperational,
    /// Negotiation is complete: the session layer's [`Login::accept`] or [`Login::refuse`].
    /// Holds the final response without its TSIH.
    FullFeatureReady(Box<LoginResponse>),
    /// The login ended: accepted, refused, failed or timed out.
    Finished,
}

impl State {
    /// The negotiation stage the login is in, if it is in one.
    pub(super) fn stage(&self) -> Option<Stage> {
        match self {
            State::ExpectSecurity(_) => Some(Stage::Security),
            State::ExpectOperational => Some(Stage::Operational),
            _ => None,
        }
    }
}

/// Login state of one connection.
#[derive(Debug)]
pub struct Login {
    pub(super) state: State,
    /// When the login must have ended (see [`LOGIN_TIMEOUT`]).
    deadline: Instant,
    leading: Option<Leading>,
    pub(super) session: Option<Session>,
    pub(super) chap_user: Option<String>,
    pub(super) claimed: Claimed,
    pub(super) params: SessionParams,
    pub(super) seen_keys: HashSet<String>,
    /// The leading keys of the first request with their values (a same-value repeat is
    /// tolerated later, see `take_keys`).
    pub(super) leading_keys: Vec<(String, String)>,
    text_bytes: usize,
    rx: TextAssembler,
    pending: Option<Pending>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    pub(super) declared_mrdsl: bool,
    pub(super) first_response_sent: bool,
    pdus: u32,
}

/// The name of `key` if it is a digest key whose policy requires CRC32C.
pub(super) fn required_digest(settings: &LoginSettings, key: &str) -> Option<&'static str> {
    let (name, policy) = match key {
        "HeaderDigest" => ("HeaderDigest", settings.header_digest),
        "DataDigest" => ("DataDigest", settings.data_digest),
        _ => return None,
    };
    (policy == DigestPolicy::Crc32cOnly).then_some(name)
}

/// A value from the initiator shortened for a log line (names are at most 223 bytes).
pub(super) fn clip(value: &str) -> String {
    let mut end = value.len().min(MAX_NAME_LEN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

impl Login {
    /// A connection that has not received any Login Request yet, accepted at `now`; the
    /// login must be over by `now` + [`LOGIN_TIMEOUT`].
    pub fn new(now: Instant) -> Self {
        Login {
            state: State::ExpectFirstRequest,
            deadline: now + LOGIN_TIMEOUT,
            leading: None,
            session: None,
            chap_user: None,
            claimed: Claimed::default(),
            params: SessionParams::default(),
            seen_keys: HashSet::new(),
            leading_keys: Vec::new(),
            text_bytes: 0,
            rx: TextAssembler::new(),
            pending: None,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            declared_mrdsl: false,
            first_response_sent: false,
            pdus: 0,
        }
    }

    /// Processes one Login Request. A failure names its [`LoginError`]; the response carries
    /// the status [`LoginError::status`] gives it.
    pub fn handle(&mut self, dir: &dyn TargetDirectory, req: &LoginRequest) -> LoginStep {
        match self.step(dir, req) {
            Ok(step) => step,
            Err(reason) => LoginStep::Fail(self.failure(req, reason.status()), reason),
        }
    }

    /// Answers a PDU other than a Login Request (opcode `opcode`, Initiator Task Tag `itt`)
    /// that arrived during the login. Once the login has started, RFC 7143 §6.3 asks for a
    /// Login Response with status "invalid during login" (0x020b) before disconnecting: that
    /// is the `Fail` step returned. Before the first Login Request the connection is closed
    /// at once, without an answer, and `None` comes back.
    pub fn invalid_pdu(&mut self, opcode: u8, itt: u32) -> Option<LoginStep> {
        let leading = self.leading?;
        if matches!(self.state, State::FullFeatureReady(_) | State::Finished) {
            return None;
        }
        self.state = State::Finished;
        let reason = LoginError::NotALoginRequest { opcode };
        let rsp = LoginResponse {
            transit: false,
            continues: false,
            csg: Stage::Security,
            nsg: Stage::Security,
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid: leading.isid,
            tsih: leading.tsih,
            itt,
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            status: reason.status(),
            data: Bytes::new(),
        };
        Some(LoginStep::Fail(rsp, reason))
    }

    /// When [`Login::handle_timeout`] should be called: the login's deadline, until the login
    /// has ended (accepted, refused or failed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state != State::Finished).then_some(self.deadline)
    }

    /// Checks the login's deadline at `now`. True when it has passed: the login is over and
    /// the connection is closed without an answer (nothing is owed to an initiator that has
    /// not finished in [`LOGIN_TIMEOUT`]; a parked final response is dropped with it).
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.state == State::Finished || now < self.deadline {
            return false;
        }
        self.state = State::Finished;
        true
    }

    /// The InitiatorName the first request gave (cut to 223 bytes), for log lines.
    pub fn initiator_name(&self) -> Option<&str> {
        self.claimed.initiator.as_deref()
    }

    /// The TargetName the first request asked for (cut to 223 bytes), for log lines.
    pub fn target_name(&self) -> Option<&str> {
        self.claimed.target.as_deref()
    }

    /// The CHAP name (CHAP_N) the initiator tried, authenticated or not, for log lines.
    pub fn chap_name(&self) -> Option<&str> {
        self.claimed.chap_name.as_deref()
    }

    /// The final Login Response (T=1, NSG=FullFeaturePhase, success) carrying the TSIH the
    /// session layer assigned. `None` unless [`Login::handle`] just returned `Ready`.
    pub fn accept(&mut self, tsih: u16) -> Option<LoginResponse> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::FullFeatureReady(mut rsp) => {
                rsp.tsih = tsih;
                Some(*rsp)
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// A failure response in place of the final one, when the session layer cannot admit the
    /// login (e.g. [`LoginError::SessionDoesNotExist`]); its status is `reason`'s. `None`
    /// unless `Ready` was returned.
    pub fn refuse(&mut self, reason: &LoginError) -> Option<LoginResponse> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::FullFeatureReady(rsp) => Some(LoginResponse {
                transit: false,
                continues: false,
                nsg: Stage::Security,
                status: reason.status(),
                data: Bytes::new(),
                ..*rsp
            }),
            other => {
                self.state = other;
                None
            }
        }
    }

    fn failure(&mut self, req: &LoginRequest, status: LoginStatus) -> LoginResponse {
        self.state = State::Finished;
        // T, CSG and NSG are reserved in a failure response, so they are sent as zero.
        LoginResponse {
            csg: Stage::Security,
            nsg: Stage::Security,
            status,
            ..self.base_response(req, false, false, Bytes::new())
        }
    }

    /// A success-status response echoing the request's identifying fields.
    fn base_response(
        &self,
        req: &LoginRequest,
        transit: bool,
        continues: bool,
        data: Bytes,
    ) -> LoginResponse {
        LoginResponse {
            transit,
            continues,
            csg: req.csg,
            nsg: if transit { req.nsg } else { req.csg },
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            status: LoginStatus::SUCCESS,
            data,
        }
    }

    /// Builds a success-status response and advances StatSN.
    fn response(
        &mut self,
        req: &LoginRequest,
        transit: bool,
        continues: bool,
        data: Bytes,
    ) -> LoginResponse {
        let rsp = self.base_response(req, transit, continues, data);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        rsp
    }

    /// One request: the rules every request obeys, then the stage's own.
    fn step(
        &mut self,
        dir: &dyn TargetDirectory,
        req: &LoginRequest,
    ) -> Result<LoginStep, LoginError> {
        let settings = dir.settings();
        self.count(req)?;
        self.check_header(settings, req)?;
        if self.pending.is_some() {
            return self.continue_response(settings, req);
        }
        let Some(text) = self.rx.push(&req.data, req.continues)? else {
            // More text follows: acknowledge with an empty response.
            let ack = self.response(req, false, false, Bytes::new());
            return Ok(LoginStep::Respond(ack));
        };
        let pairs = self.take_keys(&text)?;
        let session = match &self.session {
            Some(session) => session.clone(),
            None => self.expect_first_keys(dir, &pairs)?,
        };
        let mut out = TextWriter::new();
        self.declare_target(settings, &session, &mut out);
        let security = self.negotiate(settings, &session, &pairs, &mut out)?;
        let ready = match self.state.stage() {
            Some(Stage::Security) => {
                self.expect_security(&session.auth, req.transit, &security, &mut out)?
            }
            Some(Stage::Operational) => self.expect_operational(settings, &mut out),
            // check_header put the login in a stage; nothing else gets here.
            _ => return Err(LoginError::AfterEnd),
        };
        self.send_text(settings, req, out.finish(), req.transit && ready)
    }

    /// Counts the request against the login's caps (PDUs, text bytes); refuses requests after
    /// the login ended.
    fn count(&mut self, req: &LoginRequest) -> Result<(), LoginError> {
        if matches!(self.state, State::FullFeatureReady(_) | State::Finished) {
            return Err(LoginError::AfterEnd);
        }
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(LoginError::TooManyPdus(MAX_LOGIN_PDUS));
        }
        self.text_bytes += req.data.len();
        if self.text_bytes > MAX_LOGIN_TEXT {
            return Err(LoginError::TooMuchText(MAX_LOGIN_TEXT));
        }
        Ok(())
    }

    /// The next piece of a response too long for one PDU; the initiator asks for each with an
    /// empty request.
    fn continue_response(
        &mut self,
        settings: &LoginSettings,
        req: &LoginRequest,
    ) -> Result<LoginStep, LoginError> {
        if !req.data.is_empty() || req.continues {
            return Err(LoginError::DataDuringContinuation);
        }
        let Some(pending) = &mut self.pending else {
            return Err(LoginError::DataDuringContinuation);
        };
        let (chunk, more) = pending.text.next_chunk(LOGIN_SEGMENT_LIMIT);
        let transit = !more && pending.transit && req.transit;
        if !more {
            self.pending = None;
        }
        self.emit(settings, req, transit, more, chunk)
    }

    /// Sends the answer text of a request, in pieces when it is longer than a login PDU may
    /// carry (the transit then waits for the last piece).
    fn send_text(
        &mut self,
        settings: &LoginSettings,
        req: &LoginRequest,
        text: Bytes,
        transit: bool,
    ) -> Result<LoginStep, LoginError> {
        if text.len() > LOGIN_SEGMENT_LIMIT {
            let mut splitter = TextSplitter::new(text);
            let (chunk, _) = splitter.next_chunk(LOGIN_SEGMENT_LIMIT);
            self.pending = Some(Pending {
                text: splitter,
                transit,
            });
            return self.emit(settings, req, false, true, chunk);
        }
        self.emit(settings, req, transit, false, text)
    }

    /// Sends a response, moving to the next stage on transit; entering full feature phase
    /// yields `Ready` and parks the final response until the session layer decides.
    fn emit(
        &mut self,
        settings: &LoginSettings,
        req: &LoginRequest,
        transit: bool,
        continues: bool,
        data: Bytes,
    ) -> Result<LoginStep, LoginError> {
        if transit && req.nsg == Stage::FullFeature {
            self.check_required_digests(settings)?;
        }
        let rsp = self.response(req, transit, continues, data);
        if !transit {
            return Ok(LoginStep::Respond(rsp));
        }
        if req.nsg != Stage::FullFeature {
            // check_header allows no other transit than security -> operational here.
            self.state = State::ExpectOperational;
            return Ok(LoginStep::Respond(rsp));
        }
        let outcome = self.outcome(req, rsp.stat_sn);
        self.state = State::FullFeatureReady(Box::new(rsp));
        Ok(LoginStep::Ready(Box::new(outcome)))
    }

    /// Refuses to enter full feature phase without CRC32C where the policy requires it. An
    /// offer without CRC32C was refused when it came; this catches keys never sent, whose
    /// default is None. The target could offer the key itself instead (RFC 7143 lets either
    /// side start a negotiation), but open-iscsi and libiscsi always send both digest keys,
    /// so only an unusual initiator gets here and a clear refusal serves it better than a
    /// negotiation it may not expect.
    fn check_required_digests(&self, settings: &LoginSettings) -> Result<(), LoginError> {
        for (key, on) in [
            ("HeaderDigest", self.params.header_digest),
            ("DataDigest", self.params.data_digest),
        ] {
            if !on && required_digest(settings, key).is_some() {
                return Err(LoginError::DigestRequired {
                    key,
                    offered: "nothing".into(),
                });
            }
        }
        Ok(())
    }

    fn outcome(&self, req: &LoginRequest, final_stat_sn: u32) -> LoginOutcome {
        let (session_type, initiator_name, initiator_alias, target) = match &self.session {
            Some(s) => (
                s.session_type,
                s.initiator_name.clone(),
                s.initiator_alias.clone(),
                s.target.clone(),
            ),
            None => (SessionType::Normal, String::new(), None, None),
        };
        LoginOutcome {
            session_type,
            initiator_name,
            initiator_alias,
            target,
            isid: req.isid,
            requested_tsih: req.tsih,
            cid: req.cid,
            chap_user: self.chap_user.clone(),
            params: self.params.clone(),
            exp_cmd_sn: self.exp_cmd_sn,
            next_stat_sn: final_stat_sn.wrapping_add(1),
        }
    }

    /// Header rules: version, stage sequencing, T/C bits and the fields that must stay fixed.
    /// The first request puts the login in the stage it starts in.
    fn check_header(
        &mut self,
        settings: &LoginSettings,
        req: &LoginRequest,
    ) -> Result<(), LoginError> {
        if req.transit && req.continues {
            return Err(LoginError::TransitAndContinue);
        }
        let this = Leading {
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
            version_max: req.version_max,
            version_min: req.version_min,
        };
        match self.leading {
            None => {
                if req.version_min > ISCSI_VERSION || req.version_max < req.version_min {
                    return Err(LoginError::UnsupportedVersion {
                        min: req.version_min,
                        max: req.version_max,
                    });
                }
                self.state = match req.csg {
                    Stage::Security => State::ExpectSecurity(Auth::ExpectAuthMethod),
                    Stage::Operational => State::ExpectOperational,
                    other => return Err(LoginError::BadFirstStage(other)),
                };
                self.leading = Some(this);
                self.stat_sn = req.exp_stat_sn;
            }
            Some(leading) => {
                if leading != this {
                    return Err(LoginError::LeadingFieldsChanged);
                }
                // count() let no request through once the login left its stages.
                let Some(current) = self.state.stage() else {
                    return Err(LoginError::AfterEnd);
                };
                if current != req.csg {
                    return Err(LoginError::WrongStage {
                        current,
                        got: req.csg,
                    });
                }
            }
        }
        // Login Requests are immediate: the first command after login reuses this CmdSN.
        self.exp_cmd_sn = req.cmd_sn;
        self.max_cmd_sn = req.cmd_sn.wrapping_add(settings.queue_depth.max(1) - 1);
        if req.transit
            && !matches!(
                (req.csg, req.nsg),
                (Stage::Security, Stage::Operational | Stage::FullFeature)
                    | (Stage::Operational, Stage::FullFeature)
            )
        {
            return Err(LoginError::BadTransition {
                from: req.csg,
                to: req.nsg,
            });
        }
        Ok(())
    }
}
