//! What the server serves: portals, targets and their LUNs, session tuning. Built either from the
//! quick command-line form (`--target IQN --lun file:PATH ...`, see the binary's `cli.rs`) or from a TOML file
//! (see [`file`](mod@file)); both end up as one validated [`Config`].

pub mod backing;
pub mod demo;
pub mod file;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use backing::{Backing, BackingError, LunSpec, UnitSpec};

/// The target IQN used when none is given on the command line.
pub const DEFAULT_TARGET_NAME: &str = "iqn.2026-11.io.overlaybd:demo";

/// The portal used when none is given: every IPv4 address, port 3260.
pub const DEFAULT_PORTAL: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 3260));

/// A validated server configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Addresses to accept iSCSI connections on.
    pub portals: Vec<SocketAddr>,
    /// Session tuning shared by all targets.
    pub tuning: Tuning,
    /// The targets offered (at least one, names unique).
    pub targets: Vec<TargetConfig>,
    /// Fail fast: a LUN that cannot be opened stops the server from starting. Otherwise it is
    /// logged and served as a LUN that answers NOT READY while the others work.
    pub strict: bool,
    /// Daemon settings for `image:` LUNs with registry layers: overlaybd.json's keys (cache,
    /// credentials, download, P2P) after the command line's `--cache-dir` / `--cache-size`.
    pub images: crate::cache::DaemonSettings,
    /// ALUA access state of portal groups (tag: 1 for the first portal, ...); the others are
    /// active/optimized.
    pub alua: std::collections::BTreeMap<u16, crate::scsi::AccessState>,
    /// Self-learning of prefetch traces for images without one (`[global] learn_traces`,
    /// `learn_seconds`).
    pub learn: LearnSettings,
}

/// Whether images without a trace learn one (`crate::prefetch::learn`), and for how long a
/// learning recording runs once the device is first read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnSettings {
    /// `learn_traces`: on or off (default off). Needs a state file, beside which the traces
    /// are kept.
    pub enabled: bool,
    /// `learn_seconds`: the recording window (default 60 s).
    pub window: Duration,
    /// `publish_learned_traces`: push each trace learned from a `registry:` LUN as its
    /// image's acceleration layer, to the reference's tag (default off).
    pub publish: bool,
}

impl Default for LearnSettings {
    fn default() -> Self {
        LearnSettings {
            enabled: false,
            window: crate::prefetch::learn::DEFAULT_WINDOW,
            publish: false,
        }
    }
}

impl Config {
    /// `target` alone on `portals`, with default tuning and image settings, not strict.
    pub fn single(portals: Vec<SocketAddr>, target: TargetConfig) -> Self {
        Config {
            portals,
            tuning: Tuning::default(),
            targets: vec![target],
            strict: false,
            images: Default::default(),
            alua: Default::default(),
            learn: LearnSettings::default(),
        }
    }

    /// Every portal group's tag (1, 2, ... in portal order) with its ALUA access state.
    pub fn port_states(&self) -> Vec<(u16, crate::scsi::AccessState)> {
        (1u16..)
            .take(self.portals.len())
            .map(|tag| (tag, self.alua.get(&tag).copied().unwrap_or_default()))
            .collect()
    }
}

/// Per-session limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Commands a session may have outstanding (the CmdSN window).
    pub queue_depth: u32,
    /// Idle time after which the target pings the initiator with a NOP-In; `None` disables pings.
    pub nop_interval: Option<Duration>,
    /// How long the initiator has to answer a ping before the connection is dropped.
    pub nop_timeout: Duration,
    /// The largest data segment the target accepts, declared at login.
    pub max_recv_data_segment_length: u32,
    /// Which HeaderDigest/DataDigest values the target accepts and prefers.
    pub digests: DigestSetting,
    /// Bytes all sessions together may hold for solicited write data and for Data-In read but
    /// not yet sent; commands beyond it wait (backpressure) instead of failing.
    pub memory_budget: u64,
    /// How long a write may wait for Data-Out before it is ended; `None`: forever.
    pub data_out_timeout: Option<Duration>,
    /// Sessions the server admits at once; more logins are refused (out of resources).
    pub max_sessions: u32,
    /// Connections that may be in login at once; more are closed on accept.
    pub max_pending_logins: u32,
    /// Connections from one source address that may be in login at once.
    pub max_pending_logins_per_address: u32,
    /// CHAP credentials a discovery (SendTargets) session must prove; none: discovery is open.
    pub discovery_chap: Option<ChapCredentials>,
    /// Credentials the target answers with when a discovery initiator asks for mutual CHAP.
    pub discovery_mutual_chap: Option<ChapCredentials>,
}

/// The target's digest policy, applied to both HeaderDigest and DataDigest.
///
/// Open-iscsi offers `None` unless configured otherwise, and `CRC32C,None` when digests are
/// merely allowed; the target's preference decides that second case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DigestSetting {
    /// Either value; `None` when both are offered (no CRC cost).
    #[default]
    PreferNone,
    /// Either value; `CRC32C` when both are offered (end-to-end integrity).
    PreferCrc32c,
    /// Only `CRC32C`: initiators that cannot do digests are refused.
    RequireCrc32c,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            queue_depth: 128,
            nop_interval: Some(Duration::from_secs(10)),
            nop_timeout: Duration::from_secs(15),
            max_recv_data_segment_length: 262_144,
            digests: DigestSetting::PreferNone,
            memory_budget: 128 << 20,
            data_out_timeout: Some(Duration::from_secs(30)),
            max_sessions: 1024,
            max_pending_logins: 256,
            max_pending_logins_per_address: 16,
            discovery_chap: None,
            discovery_mutual_chap: None,
        }
    }
}

/// One iSCSI target: a name, its LUNs and who may log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// The iSCSI name (`iqn.…`, `eui.…` or `naa.…`).
    pub name: String,
    /// Optional human-readable alias (TargetAlias).
    pub alias: Option<String>,
    /// LUNs, numbered from 0 in this order.
    pub luns: Vec<LunSpec>,
    /// CHAP credentials the initiator must prove (none: no authentication).
    pub chap: Option<ChapCredentials>,
    /// Credentials the target proves to the initiator (mutual CHAP); requires `chap`.
    pub mutual_chap: Option<ChapCredentials>,
    /// Initiator names allowed to log in; empty allows everyone.
    pub allowed_initiators: Vec<String>,
    /// Whether TARGET WARM RESET and TARGET COLD RESET are honoured. Off by default: a cold
    /// reset ends every session of the target, and any initiator that may log in could send it.
    pub allow_target_reset: bool,
}

impl TargetConfig {
    /// A target serving `luns` to every initiator without CHAP, refusing target resets.
    pub fn open(name: impl Into<String>, luns: Vec<LunSpec>) -> Self {
        TargetConfig {
            name: name.into(),
            alias: None,
            luns,
            chap: None,
            mutual_chap: None,
            allowed_initiators: Vec::new(),
            allow_target_reset: false,
        }
    }

    /// Checks the name, CHAP settings and access list (everything but the LUNs); `at` turns a
    /// field name into the path errors name it by.
    pub fn check_login(&self, at: &dyn Fn(&str) -> String) -> Result<(), InvalidField> {
        check_iscsi_name(&self.name).map_err(|m| InvalidField::new(at("name"), m))?;
        check_chap_pair(&self.chap, &self.mutual_chap, &|f| at(f))?;
        for (j, initiator) in self.allowed_initiators.iter().enumerate() {
            check_iscsi_name(initiator)
                .map_err(|m| InvalidField::new(at(&format!("allowed_initiators[{j}]")), m))?;
        }
        Ok(())
    }
}

/// A CHAP user name and secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapCredentials {
    /// CHAP name.
    pub user: String,
    /// CHAP secret.
    pub secret: String,
}

impl std::fmt::Debug for ChapCredentials {
    // Keeps secrets out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The rules for a CHAP account and its optional mutual account: both parts non-empty, a
/// secret of at least [`MIN_CHAP_SECRET_LEN`], distinct secrets, no mutual without one-way.
/// `at` names a field (`chap`, `mutual_chap.secret`, ...) for the error.
fn check_chap_pair(
    chap: &Option<ChapCredentials>,
    mutual: &Option<ChapCredentials>,
    at: &dyn Fn(&str) -> String,
) -> Result<(), InvalidField> {
    for (field, creds) in [("chap", chap), ("mutual_chap", mutual)] {
        if let Some(c) = creds {
            if c.user.is_empty() || c.secret.is_empty() {
                return Err(InvalidField::new(
                    at(field),
                    "user and secret must be non-empty",
                ));
            }
            if c.secret.chars().count() < MIN_CHAP_SECRET_LEN {
                return Err(InvalidField::new(
                    at(&format!("{field}.secret")),
                    format!("must be at least {MIN_CHAP_SECRET_LEN} characters"),
                ));
            }
        }
    }
    if let (Some(chap), Some(mutual)) = (chap, mutual) {
        // With one secret for both directions, an attacker posing as the target can have
        // the initiator answer the very challenge the real target sent it.
        if chap.secret == mutual.secret {
            return Err(InvalidField::new(
                at("mutual_chap.secret"),
                "must differ from chap.secret",
            ));
        }
    }
    if mutual.is_some() && chap.is_none() {
        return Err(InvalidField::new(
            at("mutual_chap"),
            "mutual CHAP requires chap",
        ));
    }
    Ok(())
}

/// Shortest CHAP secret accepted, in characters. RFC 7143 asks for at least 96 bits of secret
/// (12 bytes) when CHAP runs without IPsec, and open-iscsi refuses to use a shorter one; a
/// shorter secret can be recovered offline from one observed CHAP exchange.
pub const MIN_CHAP_SECRET_LEN: usize = 12;

/// A configuration value that is out of range or inconsistent; `field` names it the way the TOML
/// file spells it (e.g. `targets[0].luns[1].backing`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidField {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks that `name` looks like an iSCSI name (RFC 7143 §4.2.7: iqn., eui. or naa. type
/// designator, at most 223 bytes, no whitespace).
pub fn check_iscsi_name(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if !(lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa.")) {
        return Err(format!(
            "{name:?} is not an iSCSI name (iqn.…, eui.… or naa.…)"
        ));
    }
    if name.len() > 223 {
        return Err(format!("{name:?} is longer than 223 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(format!(
            "{name:?} contains whitespace, a control character or a comma"
        ));
    }
    Ok(())
}

impl Config {
    /// Checks ranges and consistency; called by both front ends.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.portals.is_empty() {
            return Err(InvalidField::new(
                "global.portals",
                "at least one portal is needed",
            ));
        }
        if let Some(tag) = self
            .alua
            .keys()
            .find(|&&t| t == 0 || usize::from(t) > self.portals.len())
        {
            return Err(InvalidField::new(
                "global.alua",
                format!(
                    "portal group {tag} does not exist: the {} portal(s) are groups 1 to {}",
                    self.portals.len(),
                    self.portals.len()
                ),
            ));
        }
        if !self.port_states().iter().any(|(_, s)| s.is_active()) {
            return Err(InvalidField::new(
                "global.alua",
                "at least one portal group must be active (active-optimized or active-non-optimized)",
            ));
        }
        let t = &self.tuning;
        if !(1..=65_536).contains(&t.queue_depth) {
            return Err(InvalidField::new(
                "global.queue_depth",
                "must be between 1 and 65536",
            ));
        }
        // RFC 7143 §13.12: 512 to 2^24-1.
        if !(512..=16_777_215).contains(&t.max_recv_data_segment_length) {
            return Err(InvalidField::new(
                "global.max_recv_data_segment_length",
                "must be between 512 and 16777215",
            ));
        }
        if t.memory_budget < (1 << 20) {
            return Err(InvalidField::new(
                "global.memory_budget",
                "must be at least 1M",
            ));
        }
        for (field, value) in [
            ("global.max_sessions", t.max_sessions),
            ("global.max_pending_logins", t.max_pending_logins),
            (
                "global.max_pending_logins_per_address",
                t.max_pending_logins_per_address,
            ),
        ] {
            if value == 0 {
                return Err(InvalidField::new(field, "must be at least 1"));
            }
        }
        if t.nop_timeout.is_zero() {
            return Err(InvalidField::new(
                "global.nop_timeout_secs",
                "must be at least 1",
            ));
        }
        check_chap_pair(&t.discovery_chap, &t.discovery_mutual_chap, &|f| {
            format!("global.discovery_{f}")
        })?;
        // No target is valid: a node's image service may get all of them through the API
        // (the command line refuses it when the API is off, see `cli`).
        for (i, target) in self.targets.iter().enumerate() {
            let at = |field: &str| format!("targets[{i}].{field}");
            target.check_login(&at)?;
            if self.targets[..i]
                .iter()
                .any(|other| other.name.eq_ignore_ascii_case(&target.name))
            {
                return Err(InvalidField::new(at("name"), "duplicate target name"));
            }
            if target.luns.is_empty() {
                return Err(InvalidField::new(
                    at("luns"),
                    "a target needs at least one LUN",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_target() -> Config {
        let luns = vec![LunSpec::parse("ram:1M").unwrap()];
        Config::single(
            vec!["127.0.0.1:3260".parse().unwrap()],
            TargetConfig::open(DEFAULT_TARGET_NAME, luns),
        )
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(one_target().validate(), Ok(()));

        let mut c = one_target();
        c.tuning.queue_depth = 0;
        assert_eq!(c.validate().unwrap_err().field, "global.queue_depth");

        let mut c = one_target();
        c.targets.push(c.targets[0].clone());
        assert_eq!(c.validate().unwrap_err().field, "targets[1].name");

        let mut c = one_target();
        c.targets[0].allowed_initiators = vec!["iqn.ok".into(), "bad name".into()];
        assert_eq!(
            c.validate().unwrap_err().field,
            "targets[0].allowed_initiators[1]"
        );

        let mut c = one_target();
        c.targets[0].mutual_chap = Some(ChapCredentials {
            user: "t".into(),
            secret: "target-secret-1".into(),
        });
        assert_eq!(c.validate().unwrap_err().field, "targets[0].mutual_chap");
    }

    fn creds(secret: &str) -> Option<ChapCredentials> {
        Some(ChapCredentials {
            user: "u".into(),
            secret: secret.into(),
        })
    }

    #[test]
    fn chap_secrets_are_long_and_differ_by_direction() {
        let mut c = one_target();
        c.targets[0].chap = creds("eleven-char");
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "targets[0].chap.secret");
        assert!(e.message.contains("12 characters"), "{e}");
        // Characters, not bytes: 11 two-byte characters are still too short.
        c.targets[0].chap = creds(&"é".repeat(11));
        assert_eq!(c.validate().unwrap_err().field, "targets[0].chap.secret");
        c.targets[0].chap = creds("twelve+chars");
        assert_eq!(c.validate(), Ok(()));

        c.targets[0].mutual_chap = creds("short");
        assert_eq!(
            c.validate().unwrap_err().field,
            "targets[0].mutual_chap.secret"
        );
        c.targets[0].mutual_chap = creds("twelve+chars");
        let e = c.validate().unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            (
                "targets[0].mutual_chap.secret",
                "must differ from chap.secret"
            )
        );
        c.targets[0].mutual_chap = creds("other+secret");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let c = ChapCredentials {
            user: "alice".into(),
            secret: "hunter2hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
