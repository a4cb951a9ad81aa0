//! The per-connection login state machine (RFC 7143 §6 and §11.12-11.13), free of I/O: feed it
//! each Login Request, send what it returns.

use std::collections::HashSet;

use bytes::Bytes;

use super::chap;
use super::config::{AuthConfig, DigestPolicy, LoginSettings, TargetConfig, TargetDirectory};
use super::failure::{AuthFailure, LoginFailure};
use super::keys::{self, TextAssembler, TextSplitter, TextWriter};
use super::params::{self, Answer, SessionParams};
use crate::iscsi::pdu::{Isid, LoginRequest, LoginResponse, LoginStatus, Stage};

/// The only iSCSI version there is (Version-max/Version-min/Version-active 0x00).
const ISCSI_VERSION: u8 = 0;
/// Login PDUs carry at most 8192 data bytes: MaxRecvDataSegmentLength is not in force yet.
const LOGIN_SEGMENT_LIMIT: usize = 8192;
/// A login that takes more round trips than this is not converging.
const MAX_LOGIN_PDUS: u32 = 64;
/// Most distinct keys one login may offer across all its requests (a real one offers ~20).
const MAX_LOGIN_KEYS: usize = keys::MAX_KEYS;
/// Most text bytes all Login Requests of one login may carry together. With the PDU and key
/// caps this bounds a login's work, which is linear in its text, whatever the initiator sends.
const MAX_LOGIN_TEXT: usize = keys::MAX_TEXT_LEN;
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
    /// Send this failure response, then close the connection. The reason is for the log.
    Fail(LoginResponse, LoginFailure),
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

/// Who the requests said was logging in, kept for log lines even when the login fails.
#[derive(Debug, Clone, Default)]
struct Claimed {
    initiator: Option<String>,
    target: Option<String>,
    chap_name: Option<String>,
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
    claimed: Claimed,
    params: SessionParams,
    seen_keys: HashSet<String>,
    text_bytes: usize,
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

/// The name of `key` if it is a digest key whose policy requires CRC32C.
fn required_digest(settings: &LoginSettings, key: &str) -> Option<&'static str> {
    let (name, policy) = match key {
        "HeaderDigest" => ("HeaderDigest", settings.header_digest),
        "DataDigest" => ("DataDigest", settings.data_digest),
        _ => return None,
    };
    (policy == DigestPolicy::Crc32cOnly).then_some(name)
}

/// A value from the initiator shortened for a log line (names are at most 223 bytes).
fn clip(value: &str) -> String {
    let mut end = value.len().min(MAX_NAME_LEN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
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
            claimed: Claimed::default(),
            params: SessionParams::default(),
            seen_keys: HashSet::new(),
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

    /// Processes one Login Request.
    pub fn handle(&mut self, dir: &dyn TargetDirectory, req: &LoginRequest) -> LoginStep {
        match self.step(dir, req) {
            Ok(step) => step,
            Err(reason) => LoginStep::Fail(self.failure(req, reason.status()), reason),
        }
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
    ) -> Result<LoginStep, LoginFailure> {
        if self.phase != Phase::Active {
            return Err(LoginFailure::Protocol(
                "login request after the login ended",
            ));
        }
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(LoginFailure::TooManyPdus(MAX_LOGIN_PDUS));
        }
        self.text_bytes += req.data.len();
        if self.text_bytes > MAX_LOGIN_TEXT {
            return Err(LoginFailure::TooMuchText(MAX_LOGIN_TEXT));
        }
        self.check_header(dir.settings(), req)?;

        if let Some(pending) = &mut self.pending {
            // The initiator answers a continued response with empty requests.
            if !req.data.is_empty() || req.continues {
                return Err(LoginFailure::Protocol(
                    "data sent while the target's response continues",
                ));
            }
            let (chunk, more) = pending.text.next_chunk(LOGIN_SEGMENT_LIMIT);
            let transit = !more && pending.transit && req.transit;
            if !more {
                self.pending = None;
            }
            return self.emit(dir.settings(), req, transit, more, chunk);
        }

        let text = match self.rx.push(&req.data, req.continues) {
            Err(e) => return Err(e.into()),
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
        let pairs = keys::parse(&text)?;
        let first = self.session.is_none();
        for (k, _) in &pairs {
            // Renegotiating a key during login is a protocol error (RFC 7143 §6.2).
            if !self.seen_keys.insert(k.clone()) || (!first && LEADING_KEYS.contains(&k.as_str())) {
                return Err(LoginFailure::Renegotiated(clip(k)));
            }
        }
        if self.seen_keys.len() > MAX_LOGIN_KEYS {
            return Err(LoginFailure::TooManyKeys(MAX_LOGIN_KEYS));
        }
        if first {
            self.start_session(dir, &pairs)?;
        }
        let session = self
            .session
            .clone()
            .ok_or(LoginFailure::Protocol("no session"))?;
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
                    return Err(LoginFailure::Protocol(
                        "security key outside the security stage",
                    ));
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
                let answer = params::answer(key, value, discovery, settings, &mut self.params);
                if let Some(key) = required_digest(settings, key) {
                    if answer != Answer::Value("CRC32C".into()) {
                        return Err(LoginFailure::DigestRequired {
                            key,
                            offered: clip(value),
                        });
                    }
                }
                match answer {
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
                    Auth::AwaitMethod if req.transit => return Err(AuthFailure::Skipped.into()),
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
    ) -> Result<LoginStep, LoginFailure> {
        if transit && req.nsg == Stage::FullFeature {
            self.check_required_digests(settings)?;
        }
        let rsp = self.response(req, transit, continues, data);
        if !transit {
            return Ok(LoginStep::Respond(rsp));
        }
        self.stage = req.nsg;
        if req.nsg != Stage::FullFeature {
            return Ok(LoginStep::Respond(rsp));
        }
        let outcome = self.outcome(req, rsp.stat_sn);
        self.phase = Phase::Ready(Box::new(rsp));
        Ok(LoginStep::Ready(Box::new(outcome)))
    }

    /// Refuses to enter full feature phase without CRC32C where the policy requires it. An
    /// offer without CRC32C was refused when it came; this catches keys never sent, whose
    /// default is None. The target could offer the key itself instead (RFC 7143 lets either
    /// side start a negotiation), but open-iscsi and libiscsi always send both digest keys,
    /// so only an unusual initiator gets here and a clear refusal serves it better than a
    /// negotiation it may not expect.
    fn check_required_digests(&self, settings: &LoginSettings) -> Result<(), LoginFailure> {
        for (key, on) in [
            ("HeaderDigest", self.params.header_digest),
            ("DataDigest", self.params.data_digest),
        ] {
            if !on && required_digest(settings, key).is_some() {
                return Err(LoginFailure::DigestRequired {
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
    fn check_header(
        &mut self,
        settings: &LoginSettings,
        req: &LoginRequest,
    ) -> Result<(), LoginFailure> {
        if req.transit && req.continues {
            return Err(LoginFailure::Protocol("T and C bits both set"));
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
                    return Err(LoginFailure::UnsupportedVersion);
                }
                if !matches!(req.csg, Stage::Security | Stage::Operational) {
                    return Err(LoginFailure::Protocol(
                        "login starts in no negotiation stage",
                    ));
                }
                self.leading = Some(this);
                self.stage = req.csg;
                self.stat_sn = req.exp_stat_sn;
            }
            Some(leading) => {
                if leading != this {
                    return Err(LoginFailure::Protocol("ISID, TSIH, CID or version changed"));
                }
                if req.csg != self.stage {
                    return Err(LoginFailure::Protocol("CSG is not the current stage"));
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
            return Err(LoginFailure::Protocol("invalid stage transition"));
        }
        Ok(())
    }

    /// Reads the leading keys of the first request: who logs in, to what, for what.
    fn start_session(
        &mut self,
        dir: &dyn TargetDirectory,
        pairs: &[(String, String)],
    ) -> Result<(), LoginFailure> {
        let nonempty = |key| lookup(pairs, key).filter(|n| !n.is_empty());
        self.claimed.initiator = nonempty("InitiatorName").map(clip);
        self.claimed.target = nonempty("TargetName").map(clip);
        let initiator_name =
            nonempty("InitiatorName").ok_or(LoginFailure::MissingKey("InitiatorName"))?;
        if initiator_name.len() > MAX_NAME_LEN {
            return Err(LoginFailure::NameTooLong);
        }
        let session_type = match lookup(pairs, "SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(LoginFailure::UnknownSessionType),
        };
        let (target, auth) = match session_type {
            SessionType::Discovery => (None, dir.settings().discovery_auth.clone()),
            SessionType::Normal => {
                let name = nonempty("TargetName").ok_or(LoginFailure::MissingKey("TargetName"))?;
                let target = dir.target(name).ok_or(LoginFailure::UnknownTarget)?;
                if !target.allows(initiator_name) {
                    return Err(LoginFailure::InitiatorNotAllowed);
                }
                let auth = target.auth.clone();
                (Some(target), auth)
            }
        };
        // Skipping the security stage is only allowed when the target requires no CHAP.
        if self.stage != Stage::Security && auth.chap.is_some() {
            return Err(AuthFailure::Skipped.into());
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
    ) -> Result<(), LoginFailure> {
        let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        if let Some(offer) = get("AuthMethod") {
            if self.auth != Auth::AwaitMethod {
                return Err(LoginFailure::Protocol("AuthMethod out of order"));
            }
            let offered: Vec<&str> = keys::list_items(offer).collect();
            if auth.chap.is_some() && offered.contains(&"CHAP") {
                out.push("AuthMethod", "CHAP");
                self.auth = Auth::AwaitAlgorithm;
            } else if auth.chap.is_none() && offered.contains(&"None") {
                out.push("AuthMethod", "None");
                self.auth = Auth::Done;
            } else {
                return Err(AuthFailure::NoCommonMethod.into());
            }
        }
        if let Some(algorithms) = get("CHAP_A") {
            if self.auth != Auth::AwaitAlgorithm {
                return Err(LoginFailure::Protocol("CHAP_A out of order"));
            }
            if !keys::list_items(algorithms).any(|a| a == chap::CHAP_MD5) {
                return Err(AuthFailure::NoCommonAlgorithm.into());
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
                Err(LoginFailure::Protocol(
                    "CHAP_I/CHAP_C without CHAP_N/CHAP_R",
                ))
            } else {
                Ok(())
            };
        }
        if let Some(name) = name {
            self.claimed.chap_name = Some(clip(name));
        }
        let Auth::AwaitResponse { id, challenge } = &self.auth else {
            return Err(LoginFailure::Protocol("CHAP response before a challenge"));
        };
        let account = auth.chap.as_ref().ok_or(AuthFailure::NoCommonMethod)?;
        let (Some(name), Some(response)) = (name, response) else {
            return Err(AuthFailure::MalformedResponse.into());
        };
        let expected = chap::md5_response(*id, &account.secret, challenge);
        let received = chap::decode_binary(response).ok_or(AuthFailure::MalformedResponse)?;
        let response_ok = chap::constant_time_eq(&received, &expected);
        if name != account.user {
            return Err(AuthFailure::UnknownUser.into());
        }
        if !response_ok {
            return Err(AuthFailure::WrongResponse.into());
        }
        match (mutual_id, mutual_challenge) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let mutual = auth
                    .mutual_chap
                    .as_ref()
                    .ok_or(AuthFailure::MutualNotConfigured)?;
                let i = chap::parse_identifier(i).ok_or(AuthFailure::MalformedChallenge)?;
                let c = chap::decode_binary(c).ok_or(AuthFailure::MalformedChallenge)?;
                if c.len() < chap::MIN_PEER_CHALLENGE_LEN {
                    return Err(AuthFailure::ShortChallenge.into());
                }
                // A reflected challenge would let an attacker make us answer our own challenge.
                if chap::constant_time_eq(&c, challenge) {
                    return Err(AuthFailure::ReflectedChallenge.into());
                }
                out.push("CHAP_N", &mutual.user);
                out.push(
                    "CHAP_R",
                    &chap::encode_hex(&chap::md5_response(i, &mutual.secret, &c)),
                );
            }
            _ => return Err(AuthFailure::MalformedChallenge.into()),
        }
        self.chap_user = Some(name.to_owned());
        self.auth = Auth::Done;
        Ok(())
    }
}
