//! The per-connection login state machine (RFC 7143 §6 and §11.12-11.13), free of I/O: feed it
//! each Login Request, send what it returns.

use std::collections::HashSet;

use bytes::Bytes;

use super::chap;
use super::config::{AuthConfig, LoginSettings, TargetConfig, TargetDirectory};
use super::keys::{self, TextAssembler, TextSplitter, TextWriter};
use super::params::{self, Answer, SessionParams};
use crate::iscsi::pdu::{Isid, LoginRequest, LoginResponse, LoginStatus, Stage};

/// The only iSCSI version there is (Version-max/Version-min/Version-active 0x00).
const ISCSI_VERSION: u8 = 0;
/// Login PDUs carry at most 8192 data bytes: MaxRecvDataSegmentLength is not in force yet.
const LOGIN_SEGMENT_LIMIT: usize = 8192;
/// A login that takes more round trips than this is not converging.
const MAX_LOGIN_PDUS: u32 = 64;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
const MAX_NAME_LEN: usize = 223;

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
    pub target: Option<TargetConfig>,
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
    /// Send this failure response, then close the connection.
    Fail(LoginResponse),
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

/// Progress of authentication in the security stage.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// AuthMethod not negotiated yet.
    AwaitMethod,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    AwaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    AwaitResponse { id: u8, challenge: Vec<u8> },
    /// Authenticated, or no authentication needed.
    Done,
}

/// What the first Login Request established.
#[derive(Debug, Clone)]
struct Session {
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
    target: Option<TargetConfig>,
    auth: AuthConfig,
}

/// A response being sent in several pieces (C bit) because it exceeds 8192 bytes.
#[derive(Debug)]
struct Pending {
    text: TextSplitter,
    /// Whether we were ready to transit once the text is out.
    transit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Active,
    /// Waiting for accept/refuse; holds the final response without its TSIH.
    Ready(Box<LoginResponse>),
    Finished,
}

/// Login state of one connection.
#[derive(Debug)]
pub struct Login {
    phase: Phase,
    leading: Option<Leading>,
    session: Option<Session>,
    stage: Stage,
    auth: Auth,
    chap_user: Option<String>,
    params: SessionParams,
    seen_keys: HashSet<String>,
    rx: TextAssembler,
    pending: Option<Pending>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    declared_mrdsl: bool,
    first_response_sent: bool,
    pdus: u32,
}

impl Default for Login {
    fn default() -> Self {
        Self::new()
    }
}

/// Keys only the first Login Request may carry.
const LEADING_KEYS: &[&str] = &["InitiatorName", "TargetName", "SessionType"];
/// Keys only a target sends.
const TARGET_ONLY_KEYS: &[&str] = &["TargetAlias", "TargetAddress", "TargetPortalGroupTag"];

fn is_security_key(key: &str) -> bool {
    key == "AuthMethod" || key.starts_with("CHAP_")
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Login {
    /// A connection that has not received any Login Request yet.
    pub fn new() -> Self {
        Login {
            phase: Phase::Active,
            leading: None,
            session: None,
            stage: Stage::Security,
            auth: Auth::AwaitMethod,
            chap_user: None,
            params: SessionParams::default(),
            seen_keys: HashSet::new(),
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

    /// Processes one Login Request.
    pub fn handle(&mut self, dir: &dyn TargetDirectory, req: &LoginRequest) -> LoginStep {
        match self.step(dir, req) {
            Ok(step) => step,
            Err(status) => LoginStep::Fail(self.failure(req, status)),
        }
    }

    /// The final Login Response (T=1, NSG=FullFeaturePhase, success) carrying the TSIH the
    /// session layer assigned. `None` unless [`Login::handle`] just returned `Ready`.
    pub fn accept(&mut self, tsih: u16) -> Option<LoginResponse> {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Ready(mut rsp) => {
                rsp.tsih = tsih;
                Some(*rsp)
            }
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// A failure response in place of the final one, when the session layer cannot admit the
    /// login (e.g. 0x020a session does not exist). `None` unless `Ready` was returned.
    pub fn refuse(&mut self, status: LoginStatus) -> Option<LoginResponse> {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Ready(rsp) => Some(LoginResponse {
                transit: false,
                continues: false,
                nsg: Stage::Security,
                status,
                data: Bytes::new(),
                ..*rsp
            }),
            other => {
                self.phase = other;
                None
            }
        }
    }

    fn failure(&mut self, req: &LoginRequest, status: LoginStatus) -> LoginResponse {
        self.phase = Phase::Finished;
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

    fn step(
        &mut self,
        dir: &dyn TargetDirectory,
        req: &LoginRequest,
    ) -> Result<LoginStep, LoginStatus> {
        if self.phase != Phase::Active {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        self.check_header(dir.settings(), req)?;

        if let Some(pending) = &mut self.pending {
            // The initiator answers a continued response with empty requests.
            if !req.data.is_empty() || req.continues {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            let (chunk, more) = pending.text.next_chunk(LOGIN_SEGMENT_LIMIT);
            let transit = !more && pending.transit && req.transit;
            if !more {
                self.pending = None;
            }
            return Ok(self.emit(req, transit, more, chunk));
        }

        let text = match self.rx.push(&req.data, req.continues) {
            Err(_) => return Err(LoginStatus::INITIATOR_ERROR),
            // More text follows: acknowledge with an empty response.
            Ok(None) => {
                return Ok(LoginStep::Respond(self.response(
                    req,
                    false,
                    false,
                    Bytes::new(),
                )))
            }
            Ok(Some(text)) => text,
        };
        let pairs = keys::parse(&text).map_err(|_| LoginStatus::INITIATOR_ERROR)?;
        let first = self.session.is_none();
        for (k, _) in &pairs {
            // Renegotiating a key during login is a protocol error (RFC 7143 §6.2).
            if !self.seen_keys.insert(k.clone()) || (!first && LEADING_KEYS.contains(&k.as_str())) {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
        }
        if first {
            self.start_session(dir, &pairs)?;
        }
        let session = self.session.clone().ok_or(LoginStatus::TARGET_ERROR)?;
        let discovery = session.session_type == SessionType::Discovery;
        let settings = dir.settings();

        let mut out = TextWriter::new();
        if !self.first_response_sent {
            self.first_response_sent = true;
            out.push(
                "TargetPortalGroupTag",
                &settings.target_portal_group_tag.to_string(),
            );
            if let Some(alias) = session.target.as_ref().and_then(|t| t.alias.as_deref()) {
                out.push("TargetAlias", alias);
            }
        }
        let mut security = Vec::new();
        for (key, value) in &pairs {
            let key = key.as_str();
            if is_security_key(key) {
                if self.stage != Stage::Security {
                    return Err(LoginStatus::INITIATOR_ERROR);
                }
                security.push((key, value.as_str()));
            } else if LEADING_KEYS.contains(&key) {
                // Consumed by start_session.
            } else if key == "InitiatorAlias" {
                if let Some(s) = &mut self.session {
                    s.initiator_alias = Some(value.clone());
                }
            } else if TARGET_ONLY_KEYS.contains(&key) || key == "SendTargets" {
                out.push(key, "Reject");
            } else {
                match params::answer(key, value, discovery, settings, &mut self.params) {
                    Answer::Value(v) => out.push(key, &v),
                    Answer::Silent => {}
                    Answer::NotOperational => out.push(key, "NotUnderstood"),
                }
            }
        }
        params::settle(&mut self.params);

        let ready = match self.stage {
            Stage::Security => {
                self.security(&session.auth, &security, &mut out)?;
                let required = session.auth.chap.is_some();
                match self.auth {
                    Auth::Done => true,
                    Auth::AwaitMethod if !required => {
                        if req.transit {
                            self.auth = Auth::Done;
                        }
                        true
                    }
                    // Leaving the security stage before authenticating is not allowed.
                    Auth::AwaitMethod if req.transit => {
                        return Err(LoginStatus::AUTHENTICATION_FAILURE)
                    }
                    _ => false,
                }
            }
            _ => {
                if !self.declared_mrdsl {
                    self.declared_mrdsl = true;
                    self.params.max_recv_data_segment_length =
                        settings.max_recv_data_segment_length;
                    out.push(
                        "MaxRecvDataSegmentLength",
                        &settings.max_recv_data_segment_length.to_string(),
                    );
                }
                true
            }
        };

        let text = out.finish();
        let transit = req.transit && ready;
        if text.len() > LOGIN_SEGMENT_LIMIT {
            let mut splitter = TextSplitter::new(text);
            let (chunk, _) = splitter.next_chunk(LOGIN_SEGMENT_LIMIT);
            self.pending = Some(Pending {
                text: splitter,
                transit,
            });
            return Ok(self.emit(req, false, true, chunk));
        }
        Ok(self.emit(req, transit, false, text))
    }

    /// Sends a response, moving to the next stage on transit; entering full feature phase
    /// yields `Ready` and parks the final response until the session layer decides.
    fn emit(
        &mut self,
        req: &LoginRequest,
        transit: bool,
        continues: bool,
        data: Bytes,
    ) -> LoginStep {
        let rsp = self.response(req, transit, continues, data);
        if !transit {
            return LoginStep::Respond(rsp);
        }
        self.stage = req.nsg;
        if req.nsg != Stage::FullFeature {
            return LoginStep::Respond(rsp);
        }
        let outcome = self.outcome(req, rsp.stat_sn);
        self.phase = Phase::Ready(Box::new(rsp));
        LoginStep::Ready(Box::new(outcome))
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
    fn check_header(
        &mut self,
        settings: &LoginSettings,
        req: &LoginRequest,
    ) -> Result<(), LoginStatus> {
        if req.transit && req.continues {
            return Err(LoginStatus::INITIATOR_ERROR);
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
                    return Err(LoginStatus::UNSUPPORTED_VERSION);
                }
                if !matches!(req.csg, Stage::Security | Stage::Operational) {
                    return Err(LoginStatus::INITIATOR_ERROR);
                }
                self.leading = Some(this);
                self.stage = req.csg;
                self.stat_sn = req.exp_stat_sn;
            }
            Some(leading) => {
                if leading != this || req.csg != self.stage {
                    return Err(LoginStatus::INITIATOR_ERROR);
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
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        Ok(())
    }

    /// Reads the leading keys of the first request: who logs in, to what, for what.
    fn start_session(
        &mut self,
        dir: &dyn TargetDirectory,
        pairs: &[(String, String)],
    ) -> Result<(), LoginStatus> {
        let initiator_name = lookup(pairs, "InitiatorName")
            .filter(|n| !n.is_empty())
            .ok_or(LoginStatus::MISSING_PARAMETER)?;
        if initiator_name.len() > MAX_NAME_LEN {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        let session_type = match lookup(pairs, "SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(LoginStatus::SESSION_TYPE_NOT_SUPPORTED),
        };
        let (target, auth) = match session_type {
            SessionType::Discovery => (None, dir.settings().discovery_auth.clone()),
            SessionType::Normal => {
                let name = lookup(pairs, "TargetName")
                    .filter(|n| !n.is_empty())
                    .ok_or(LoginStatus::MISSING_PARAMETER)?;
                let target = dir.target(name).ok_or(LoginStatus::NOT_FOUND)?;
                if !target.allows(initiator_name) {
                    return Err(LoginStatus::AUTHORIZATION_FAILURE);
                }
                let auth = target.auth.clone();
                (Some(target), auth)
            }
        };
        // Skipping the security stage is only allowed when the target requires no CHAP.
        if self.stage != Stage::Security && auth.chap.is_some() {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        self.session = Some(Session {
            session_type,
            initiator_name: initiator_name.to_owned(),
            initiator_alias: lookup(pairs, "InitiatorAlias").map(str::to_owned),
            target,
            auth,
        });
        Ok(())
    }

    /// Runs the security keys of one request through AuthMethod and CHAP negotiation.
    fn security(
        &mut self,
        auth: &AuthConfig,
        keys: &[(&str, &str)],
        out: &mut TextWriter,
    ) -> Result<(), LoginStatus> {
        let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        if let Some(offer) = get("AuthMethod") {
            if self.auth != Auth::AwaitMethod {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            let offered: Vec<&str> = keys::list_items(offer).collect();
            if auth.chap.is_some() && offered.contains(&"CHAP") {
                out.push("AuthMethod", "CHAP");
                self.auth = Auth::AwaitAlgorithm;
            } else if auth.chap.is_none() && offered.contains(&"None") {
                out.push("AuthMethod", "None");
                self.auth = Auth::Done;
            } else {
                return Err(LoginStatus::AUTHENTICATION_FAILURE);
            }
        }
        if let Some(algorithms) = get("CHAP_A") {
            if self.auth != Auth::AwaitAlgorithm {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            if !keys::list_items(algorithms).any(|a| a == chap::CHAP_MD5) {
                return Err(LoginStatus::AUTHENTICATION_FAILURE);
            }
            let (id, challenge) = chap::new_challenge();
            out.push("CHAP_A", chap::CHAP_MD5);
            out.push("CHAP_I", &id.to_string());
            out.push("CHAP_C", &chap::encode_hex(&challenge));
            self.auth = Auth::AwaitResponse { id, challenge };
        }
        let (name, response) = (get("CHAP_N"), get("CHAP_R"));
        let (mutual_id, mutual_challenge) = (get("CHAP_I"), get("CHAP_C"));
        if name.is_none() && response.is_none() {
            // CHAP_I/CHAP_C from the initiator only make sense together with its response.
            return if mutual_id.is_some() || mutual_challenge.is_some() {
                Err(LoginStatus::INITIATOR_ERROR)
            } else {
                Ok(())
            };
        }
        let Auth::AwaitResponse { id, challenge } = &self.auth else {
            return Err(LoginStatus::INITIATOR_ERROR);
        };
        let account = auth
            .chap
            .as_ref()
            .ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
        let (Some(name), Some(response)) = (name, response) else {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        };
        let expected = chap::md5_response(*id, &account.secret, challenge);
        let received = chap::decode_binary(response).ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
        if name != account.user || !chap::constant_time_eq(&received, &expected) {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        match (mutual_id, mutual_challenge) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let mutual = auth
                    .mutual_chap
                    .as_ref()
                    .ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
                let i = chap::parse_identifier(i).ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
                let c = chap::decode_binary(c).ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
                // A reflected challenge would let an attacker make us answer our own challenge.
                if chap::constant_time_eq(&c, challenge) {
                    return Err(LoginStatus::AUTHENTICATION_FAILURE);
                }
                out.push("CHAP_N", &mutual.user);
                out.push(
                    "CHAP_R",
                    &chap::encode_hex(&chap::md5_response(i, &mutual.secret, &c)),
                );
            }
            _ => return Err(LoginStatus::AUTHENTICATION_FAILURE),
        }
        self.chap_user = Some(name.to_owned());
        self.auth = Auth::Done;
        Ok(())
    }
}
