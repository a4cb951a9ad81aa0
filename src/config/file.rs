//! The TOML configuration file.
//!
//! ```toml
//! [global]
//! portals = ["0.0.0.0:3260"]
//! queue_depth = 128
//! nop_interval_secs = 10        # 0 disables target pings
//! nop_timeout_secs = 15
//! max_recv_data_segment_length = 262144
//! digests = "prefer-none"       # or "prefer-crc32c", "require-crc32c" (header and data)
//! strict = false                # true: exit at start if any LUN cannot be opened
//! discovery_chap = { user = "disc", secret = "twelve+chars" }  # SendTargets needs CHAP
//! discovery_mutual_chap = { user = "target", secret = "another+secret" }
//! learn_traces = false          # true: images without a trace learn one (needs --state)
//! learn_seconds = 60            # a learning recording's window, from the first read
//! publish_learned_traces = false # true: a registry: LUN's learned trace is pushed to its tag
//!
//! [[targets]]
//! name = "iqn.2026-11.io.overlaybd:app"
//! alias = "app image"
//! allowed_initiators = ["iqn.1994-05.com.redhat:host1"]   # empty or absent: anyone
//! chap = { user = "host", secret = "twelve+chars" }
//! allow_target_reset = false    # true honours TARGET WARM/COLD RESET (default: rejected)
//! mutual_chap = { user = "target", secret = "other+secret" }
//! luns = [
//!     { backing = "file:/var/lib/disk.img" },
//!     { backing = "file:/var/lib/base.img", read_only = true },
//!     { backing = "image:/var/lib/app/config.v1.json" },     # an overlaybd image
//!     # Registry unreachable: hold commands (default hold:10m; hold:forever) or fail them.
//!     { backing = "registry:reg.example.com/team/app:v1", remote_failure = "fail:20s" },
//!     { backing = "registry:reg.example.com/team/db:v1", learn = false },
//! ]
//! ```
//!
//! Every error names the file and, where it can, the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ChapCredentials, Config, InvalidField, LunSpec, TargetConfig, Tuning, DEFAULT_PORTAL};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (the message names the key).
    #[error("{path}: {message}")]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// The parser's description, with line, column and key.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: {invalid}")]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The field and what is wrong with it.
        invalid: InvalidField,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    global: RawGlobal,
    #[serde(default)]
    targets: Vec<RawTarget>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    portals: Option<Vec<String>>,
    queue_depth: Option<u32>,
    nop_interval_secs: Option<u64>,
    nop_timeout_secs: Option<u64>,
    max_recv_data_segment_length: Option<u32>,
    digests: Option<super::DigestSetting>,
    memory_budget: Option<String>,
    data_out_timeout_secs: Option<u64>,
    max_sessions: Option<u32>,
    max_pending_logins: Option<u32>,
    max_pending_logins_per_address: Option<u32>,
    discovery_chap: Option<ChapCredentials>,
    discovery_mutual_chap: Option<ChapCredentials>,
    #[serde(default)]
    strict: bool,
    /// Portal group tag (as a string key) to ALUA access state name.
    alua: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    learn_traces: bool,
    learn_seconds: Option<u64>,
    #[serde(default)]
    publish_learned_traces: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    alias: Option<String>,
    #[serde(default)]
    luns: Vec<RawLun>,
    chap: Option<ChapCredentials>,
    mutual_chap: Option<ChapCredentials>,
    #[serde(default)]
    allowed_initiators: Vec<String>,
    #[serde(default)]
    allow_target_reset: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLun {
    backing: String,
    #[serde(default)]
    read_only: bool,
    remote_failure: Option<String>,
    physical_block_size: Option<u32>,
    removable: Option<bool>,
    thin: Option<bool>,
    learn: Option<bool>,
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates configuration text; `path` is only used in error messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigFileError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigFileError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let invalid = |invalid: InvalidField| ConfigFileError::Invalid {
        path: path.to_path_buf(),
        invalid,
    };
    let config = from_raw(raw).map_err(invalid)?;
    config.validate().map_err(invalid)?;
    Ok(config)
}

fn from_raw(raw: RawFile) -> Result<Config, InvalidField> {
    let defaults = Tuning::default();
    let g = raw.global;
    let mut portals = Vec::new();
    for (i, text) in g.portals.iter().flatten().enumerate() {
        let addr: SocketAddr = text.parse().map_err(|_| InvalidField {
            field: format!("global.portals[{i}]"),
            message: format!("{text:?} is not an IP:PORT address"),
        })?;
        portals.push(addr);
    }
    let tuning = Tuning {
        queue_depth: g.queue_depth.unwrap_or(defaults.queue_depth),
        nop_interval: match g.nop_interval_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => defaults.nop_interval,
        },
        nop_timeout: g
            .nop_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.nop_timeout),
        max_recv_data_segment_length: g
            .max_recv_data_segment_length
            .unwrap_or(defaults.max_recv_data_segment_length),
        digests: g.digests.unwrap_or(defaults.digests),
        memory_budget: match &g.memory_budget {
            Some(text) => crate::block::parse_size(text).map_err(|e| InvalidField {
                field: "global.memory_budget".to_string(),
                message: e.to_string(),
            })?,
            None => defaults.memory_budget,
        },
        data_out_timeout: match g.data_out_timeout_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => defaults.data_out_timeout,
        },
        max_sessions: g.max_sessions.unwrap_or(defaults.max_sessions),
        max_pending_logins: g.max_pending_logins.unwrap_or(defaults.max_pending_logins),
        max_pending_logins_per_address: g
            .max_pending_logins_per_address
            .unwrap_or(defaults.max_pending_logins_per_address),
        discovery_chap: g.discovery_chap,
        discovery_mutual_chap: g.discovery_mutual_chap,
    };
    let mut targets = Vec::with_capacity(raw.targets.len());
    for (i, t) in raw.targets.into_iter().enumerate() {
        let mut luns = Vec::with_capacity(t.luns.len());
        for (j, lun) in t.luns.into_iter().enumerate() {
            let mut spec = LunSpec::parse(&lun.backing).map_err(|e| InvalidField {
                field: format!("targets[{i}].luns[{j}].backing"),
                message: e.to_string(),
            })?;
            spec.read_only |= lun.read_only;
            let options = [
                ("remote_failure", lun.remote_failure),
                (
                    "physical_block_size",
                    lun.physical_block_size.map(|n| n.to_string()),
                ),
                ("removable", lun.removable.map(|b| b.to_string())),
                ("thin", lun.thin.map(|b| b.to_string())),
                ("learn", lun.learn.map(|b| b.to_string())),
            ];
            for (key, value) in options {
                if let Some(value) = value {
                    spec.set_option(key, &value)
                        .map_err(|message| InvalidField {
                            field: format!("targets[{i}].luns[{j}].{key}"),
                            message,
                        })?;
                }
            }
            luns.push(spec);
        }
        targets.push(TargetConfig {
            name: t.name,
            alias: t.alias,
            luns,
            chap: t.chap,
            mutual_chap: t.mutual_chap,
            allowed_initiators: t.allowed_initiators,
            allow_target_reset: t.allow_target_reset,
        });
    }
    if portals.is_empty() {
        portals.push(DEFAULT_PORTAL);
    }
    let mut alua = std::collections::BTreeMap::new();
    for (tag, state) in g.alua.iter().flatten() {
        let field = format!("global.alua.{tag}");
        let tag: u16 = tag.parse().map_err(|_| InvalidField {
            field: field.clone(),
            message: "the key is a portal group tag: 1 for the first portal, 2 for the second, ..."
                .to_string(),
        })?;
        let state = crate::scsi::AccessState::parse(state).ok_or_else(|| InvalidField {
            field: field.clone(),
            message: format!(
                "{state:?} is not an ALUA state; one of {}",
                crate::scsi::AccessState::NAMES
            ),
        })?;
        alua.insert(tag, state);
    }
    let mut learn = super::LearnSettings {
        enabled: g.learn_traces,
        publish: g.publish_learned_traces,
        ..Default::default()
    };
    match g.learn_seconds {
        Some(0) => {
            return Err(InvalidField {
                field: "global.learn_seconds".to_string(),
                message: "the recording window must be at least 1 second".to_string(),
            })
        }
        Some(secs) => learn.window = Duration::from_secs(secs),
        None => {}
    }
    Ok(Config {
        portals,
        tuning,
        targets,
        images: Default::default(),
        strict: g.strict,
        alua,
        learn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backing;

    fn parse_str(text: &str) -> Result<Config, ConfigFileError> {
        parse(text, Path::new("/etc/t.toml"))
    }

    /// `global` followed by one small target.
    fn with_target(global: &str) -> String {
        format!("{global}[[targets]]\nname = \"iqn.x:y\"\nluns = [{{ backing = \"ram:1M\" }}]\n")
    }

    #[test]
    fn full_file_parses() {
        let c = parse_str(
            r#"
            [global]
            portals = ["127.0.0.1:3260", "[::1]:3261"]
            queue_depth = 32
            nop_interval_secs = 0
            nop_timeout_secs = 7
            max_recv_data_segment_length = 65536
            digests = "prefer-crc32c"
            strict = true

            [[targets]]
            name = "iqn.2026-11.io.overlaybd:a"
            alias = "A"
            allowed_initiators = ["iqn.1994-05.com.redhat:h1"]
            chap = { user = "u", secret = "s3cret-s3cret" }
            mutual_chap = { user = "t", secret = "other-secret" }
            allow_target_reset = true
            luns = [{ backing = "ram:1M" },
                    { backing = "file:/x.img", read_only = true, physical_block_size = 4096, removable = true, thin = false },
                    { backing = "image:/img/config.v1.json", read_only = true, remote_failure = "hold:forever" }]
            "#,
        )
        .unwrap();
        assert_eq!(c.portals.len(), 2);
        assert_eq!(c.tuning.queue_depth, 32);
        assert_eq!(c.tuning.nop_interval, None);
        assert_eq!(c.tuning.nop_timeout, Duration::from_secs(7));
        assert_eq!(c.tuning.max_recv_data_segment_length, 65536);
        assert_eq!(c.tuning.digests, crate::config::DigestSetting::PreferCrc32c);
        assert!(c.strict);
        let t = &c.targets[0];
        assert_eq!(t.alias.as_deref(), Some("A"));
        assert_eq!(t.luns[0].backing, Backing::Ram(1 << 20));
        assert!(t.luns[1].read_only);
        assert_eq!(
            t.luns[1].unit,
            crate::config::UnitSpec {
                physical_block_size: Some(4096),
                removable: true,
                thick: true,
            }
        );
        assert_eq!(t.luns[0].unit, crate::config::UnitSpec::default());
        assert_eq!(
            t.luns[2].backing,
            Backing::Image("/img/config.v1.json".into())
        );
        assert!(t.luns[2].read_only);
        assert_eq!(
            t.luns[2].remote_failure,
            Some(crate::block::RemoteFailurePolicy::Hold { deadline: None })
        );
        assert_eq!(
            t.luns[0].remote_failure, None,
            "the daemon's setting applies"
        );
        assert_eq!(t.chap.as_ref().unwrap().user, "u");
        assert_eq!(t.mutual_chap.as_ref().unwrap().user, "t");
        assert!(t.allow_target_reset);
    }

    #[test]
    fn defaults_apply() {
        let c = parse_str("[[targets]]\nname = \"iqn.x:y\"\nluns = [{ backing = \"ram:1M\" }]\n")
            .unwrap();
        assert_eq!(c.portals, vec![DEFAULT_PORTAL]);
        assert_eq!(c.tuning, Tuning::default());
        assert!(!c.targets[0].allow_target_reset);
        assert!(!c.strict);
    }

    #[test]
    fn alua_states_are_read_by_portal_group_and_checked() {
        let c = parse_str(&with_target(
            "[global]\nportals = [\"127.0.0.1:3260\", \"127.0.0.1:3261\"]\nalua = { 2 = \"standby\" }\n",
        ))
        .unwrap();
        use crate::scsi::AccessState;
        assert_eq!(
            c.port_states(),
            vec![(1, AccessState::ActiveOptimized), (2, AccessState::Standby)]
        );
        c.validate().unwrap();
        let e = parse_str(&with_target("[global]\nalua = { 1 = \"passive\" }\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("global.alua.1") && e.contains("standby"), "{e}");
        let e = parse_str(&with_target("[global]\nalua = { one = \"standby\" }\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("portal group tag"), "{e}");
        // A group the portals do not have, and no active group at all.
        let e = parse_str(&with_target("[global]\nalua = { 2 = \"standby\" }\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = parse_str(&with_target("[global]\nalua = { 1 = \"unavailable\" }\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("at least one portal group must be active"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse_str("[[targets]]\nname = \"iqn.x:y\"\nluns = [{ backing = \"tape:1\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/t.toml: targets[0].luns[0].backing:"),
            "{e}"
        );

        let e = parse_str(
            "[[targets]]\nname = \"iqn.x:y\"\n\
             luns = [{ backing = \"ram:1M\", remote_failure = \"wait\" }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/t.toml: targets[0].luns[0].remote_failure: remote failure policy"),
            "{e}"
        );
        let e = parse_str(
            "[[targets]]\nname = \"iqn.x:y\"\n\
             luns = [{ backing = \"ram:1M\", physical_block_size = 1000 }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/t.toml: targets[0].luns[0].physical_block_size: ")
                && e.contains("a power of two"),
            "{e}"
        );

        let e = parse_str("[global]\nqueue_dept = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/t.toml") && e.contains("queue_dept"), "{e}");

        let e = parse_str("[global]\nportals = [\"nowhere\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("global.portals[0]"), "{e}");

        let e = parse_str("[global]\nqueue_depth = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_depth"), "{e}");

        let e = parse_str(
            "[[targets]]\nname = \"iqn.x:y\"\nluns = [{ backing = \"ram:1M\" }]\n\
             chap = { user = \"u\", secret = \"hunter2\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/t.toml: targets[0].chap.secret: must be at least 12"),
            "{e}"
        );

        let target = "[[targets]]\nname = \"iqn.x:y\"\nluns = [{ backing = \"ram:1M\" }]\n";
        let e = parse_str(&format!(
            "[global]\ndiscovery_chap = {{ user = \"d\", secret = \"short\" }}\n{target}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/t.toml: global.discovery_chap.secret: must be at least 12"),
            "{e}"
        );
        let e = parse_str(&format!(
            "[global]\ndiscovery_mutual_chap = {{ user = \"t\", secret = \"long-enough-secret\" }}\n{target}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("global.discovery_mutual_chap: mutual CHAP requires chap"),
            "{e}"
        );
        let c = parse_str(&format!(
            "[global]\ndiscovery_chap = {{ user = \"d\", secret = \"long-enough-secret\" }}\n{target}"
        ))
        .unwrap();
        assert_eq!(c.tuning.discovery_chap.unwrap().user, "d");

        let e = load(Path::new("/nonexistent/t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/t.toml:"), "{e}");
    }

    #[test]
    fn learning_keys_are_read_and_checked() {
        let c = parse_str(&with_target("")).unwrap();
        assert_eq!(c.learn, crate::config::LearnSettings::default());
        assert!(!c.learn.enabled);
        assert_eq!(c.learn.window, Duration::from_secs(60));
        let c = parse_str(&with_target(
            "[global]\nlearn_traces = true\nlearn_seconds = 5\n",
        ))
        .unwrap();
        assert!(c.learn.enabled);
        assert_eq!(c.learn.window, Duration::from_secs(5));
        assert!(!c.learn.publish);
        let c = parse_str(&with_target(
            "[global]\nlearn_traces = true\npublish_learned_traces = true\n",
        ))
        .unwrap();
        assert!(c.learn.publish);
        let e = parse_str(&with_target("[global]\nlearn_seconds = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("global.learn_seconds"), "{e}");
        let e = parse_str(&with_target("[global]\nlearn_traces = \"yes\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("learn_traces"), "{e}");
    }
}
