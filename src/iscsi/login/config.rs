//! What the login state machine needs to know about the targets we serve: names, CHAP
//! accounts, access lists, and the target-wide negotiation preferences.

use std::collections::BTreeMap;

/// A CHAP identity: the name sent in CHAP_N and the shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapAccount {
    /// CHAP name (CHAP_N).
    pub user: String,
    /// Shared secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ChapAccount {
    // Never print secrets into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapAccount")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Authentication required to log in to a target (or to a discovery session).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// When set, the initiator must authenticate with CHAP as this account.
    pub chap: Option<ChapAccount>,
    /// When set (together with `chap`), the target can authenticate itself to an initiator that
    /// asks for mutual CHAP, using this account.
    pub mutual_chap: Option<ChapAccount>,
}

/// One target as the login and discovery code sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginTarget {
    /// iSCSI name, e.g. `iqn.2026-11.io.overlaybd:image`.
    pub name: String,
    /// Optional TargetAlias declared at login.
    pub alias: Option<String>,
    /// CHAP settings.
    pub auth: AuthConfig,
    /// Initiator names allowed to log in; empty allows everyone.
    pub allowed_initiators: Vec<String>,
}

impl LoginTarget {
    /// A target open to every initiator without authentication.
    pub fn open(name: impl Into<String>) -> Self {
        LoginTarget {
            name: name.into(),
            alias: None,
            auth: AuthConfig::default(),
            allowed_initiators: Vec::new(),
        }
    }

    /// Whether `initiator` may log in to (or discover) this target.
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty() || self.allowed_initiators.iter().any(|i| i == initiator)
    }
}

/// Which digest values we accept, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestPolicy {
    /// Only `None`.
    NoneOnly,
    /// Only `CRC32C`.
    Crc32cOnly,
    /// Either; `None` when the initiator offers both.
    PreferNone,
    /// Either; `CRC32C` when the initiator offers both.
    PreferCrc32c,
}

impl DigestPolicy {
    /// Our values in preference order.
    pub(crate) fn preference(self) -> &'static [&'static str] {
        match self {
            DigestPolicy::NoneOnly => &["None"],
            DigestPolicy::Crc32cOnly => &["CRC32C"],
            DigestPolicy::PreferNone => &["None", "CRC32C"],
            DigestPolicy::PreferCrc32c => &["CRC32C", "None"],
        }
    }
}

/// Target-wide login settings: our side of every negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSettings {
    /// MaxRecvDataSegmentLength we declare (what we accept per PDU).
    pub max_recv_data_segment_length: u32,
    /// HeaderDigest policy.
    pub header_digest: DigestPolicy,
    /// DataDigest policy.
    pub data_digest: DigestPolicy,
    /// Largest MaxBurstLength we agree to.
    pub max_burst_length: u32,
    /// Largest FirstBurstLength we agree to.
    pub first_burst_length: u32,
    /// Largest MaxOutstandingR2T we agree to.
    pub max_outstanding_r2t: u32,
    /// Our InitialR2T value. `true` forces R2T-solicited writes; `false` lets the initiator
    /// send unsolicited Data-Out (the session must then handle FirstBurstLength).
    pub initial_r2t: bool,
    /// Our ImmediateData value.
    pub immediate_data: bool,
    /// Our DefaultTime2Wait (the result is the larger of both sides).
    pub default_time2wait: u32,
    /// Our DefaultTime2Retain (the result is the smaller of both sides).
    pub default_time2retain: u32,
    /// Command window: MaxCmdSN = ExpCmdSN + queue_depth - 1.
    pub queue_depth: u32,
    /// TargetPortalGroupTag of the portal this connection came in on.
    pub target_portal_group_tag: u16,
    /// Authentication for discovery sessions.
    pub discovery_auth: AuthConfig,
}

impl Default for LoginSettings {
    fn default() -> Self {
        LoginSettings {
            max_recv_data_segment_length: 262_144,
            header_digest: DigestPolicy::PreferNone,
            data_digest: DigestPolicy::PreferNone,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            max_outstanding_r2t: 1,
            initial_r2t: true,
            immediate_data: true,
            default_time2wait: 2,
            default_time2retain: 0,
            queue_depth: 128,
            target_portal_group_tag: 1,
            discovery_auth: AuthConfig::default(),
        }
    }
}

/// The targets a portal serves, as seen by login and SendTargets.
pub trait TargetDirectory {
    /// Target-wide settings.
    fn settings(&self) -> &LoginSettings;
    /// The target with this exact name, if we serve it.
    fn target(&self, name: &str) -> Option<LoginTarget>;
    /// Every target, in a stable order.
    fn targets(&self) -> Vec<LoginTarget>;
}

/// A fixed set of targets, kept in name order.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    /// Target-wide settings.
    pub settings: LoginSettings,
    targets: BTreeMap<String, LoginTarget>,
}

impl StaticDirectory {
    /// A directory with the given settings and targets (a later duplicate name wins).
    pub fn new(settings: LoginSettings, targets: impl IntoIterator<Item = LoginTarget>) -> Self {
        StaticDirectory {
            settings,
            targets: targets.into_iter().map(|t| (t.name.clone(), t)).collect(),
        }
    }
}

impl TargetDirectory for StaticDirectory {
    fn settings(&self) -> &LoginSettings {
        &self.settings
    }

    fn target(&self, name: &str) -> Option<LoginTarget> {
        self.targets.get(name).cloned()
    }

    fn targets(&self) -> Vec<LoginTarget> {
        self.targets.values().cloned().collect()
    }
}
