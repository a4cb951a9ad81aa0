//! The command line. The quick form is a contract that tests and benchmarks rely on:
//!
//! ```text
//! overlaybd-target --portal 127.0.0.1:3260 --target IQN --lun file:PATH --lun ram:1G \
//!                  --lun ro:file:PATH --log-level info
//! ```
//!
//! LUNs are numbered from 0 in the order given; a `ro:` prefix exports a LUN read-only;
//! `image:CONFIG.json` serves an overlaybd image. Image tools run as subcommands
//! (`overlaybd-target create|commit|zfile|merge|inspect|export|import|build …`, see
//! [`overlaybd_target::tools`]).
//! With neither `--lun` nor `--config`, the embedded demo image is served read-only as LUN 0.
//! `--config FILE` reads targets from TOML instead (see [`overlaybd_target::config::file`]);
//! `--portal` and the tuning flags then override the file's values. `--state` and `--api` say
//! where changes made at runtime are kept and where the management API listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use overlaybd_target::config::{
    self, Config, DigestSetting, LunSpec, TargetConfig, DEFAULT_PORTAL, DEFAULT_TARGET_NAME,
};

/// Command-line arguments of `overlaybd-target`.
#[derive(Debug, Parser)]
#[command(
    name = "overlaybd-target",
    version,
    about = "An iSCSI target for overlaybd images",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// An image tool or a management command to run instead of serving
    /// (`overlaybd-target COMMAND --help`).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The state file: targets and LUNs added or removed at runtime are written here and
    /// restored at start (README "Runtime changes").
    #[arg(long, value_name = "FILE", conflicts_with = "no_state")]
    pub state: Option<PathBuf>,

    /// Keep no state file: runtime changes last until the process exits.
    #[arg(long)]
    pub no_state: bool,

    /// The management API's Unix socket.
    #[arg(long, value_name = "PATH", conflicts_with = "no_api")]
    pub api: Option<PathBuf>,

    /// Serve no management API.
    #[arg(long)]
    pub no_api: bool,

    /// Address to listen on (repeatable). Default 0.0.0.0:3260.
    #[arg(long = "portal", value_name = "IP:PORT", value_parser = parse_socket_addr)]
    pub portals: Vec<SocketAddr>,

    /// ALUA access state of a portal group (repeatable), TAG=STATE: TAG 1 is the first
    /// `--portal`; STATE active-optimized (the default), active-non-optimized, standby or
    /// unavailable. Overrides the config file's `alua` table entry for that group.
    #[arg(long = "alua", value_name = "TAG=STATE", value_parser = parse_alua)]
    pub alua: Vec<(u16, overlaybd_target::scsi::AccessState)>,

    /// Target IQN for the quick form. Default iqn.2026-11.io.overlaybd:demo.
    #[arg(long, value_name = "IQN", conflicts_with = "config")]
    pub target: Option<String>,

    /// A LUN of the quick-form target (repeatable, numbered from 0): file:PATH, ram:SIZE,
    /// image:CONFIG.json (or image:LAYER.obd, one sealed layer), registry:HOST/REPO:TAG, or any
    /// of them prefixed by ro: for read-only.
    #[arg(long = "lun", value_name = "BACKING", value_parser = parse_lun, conflicts_with = "config")]
    pub luns: Vec<LunSpec>,

    /// Honour TARGET WARM/COLD RESET from initiators of the quick-form target (default: they
    /// are answered "Function rejected"; a cold reset would end every session of the target).
    #[arg(long, conflicts_with = "config")]
    pub allow_target_reset: bool,

    /// Exit at start when any LUN cannot be opened (default: log it and serve that LUN as NOT
    /// READY while the others work). Same as `strict = true` in the config file's [global].
    #[arg(long)]
    pub strict: bool,

    /// TOML configuration file with targets, LUNs, CHAP and global settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Commands a session may have outstanding (overrides the config file; default 128).
    #[arg(long, value_name = "N")]
    pub queue_depth: Option<u32>,

    /// Seconds of idle time before the target pings an initiator, 0 disables (default 10).
    #[arg(long, value_name = "SECS")]
    pub nop_interval: Option<u64>,

    /// Seconds an initiator has to answer a ping (default 15).
    #[arg(long, value_name = "SECS")]
    pub nop_timeout: Option<u64>,

    /// Memory all sessions together may hold for write data and unsent Data-In, e.g. 256M
    /// (overrides the config file; default 128M).
    #[arg(long, value_name = "SIZE", value_parser = parse_cache_size)]
    pub memory_budget: Option<u64>,

    /// Seconds a write may wait for its Data-Out, 0 for no limit (default 30).
    #[arg(long, value_name = "SECS")]
    pub data_out_timeout: Option<u64>,

    /// Sessions admitted at once (default 1024).
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<u32>,

    /// Connections in login at once, in total (default 256).
    #[arg(long, value_name = "N")]
    pub max_pending_logins: Option<u32>,

    /// Connections in login at once from one source address (default 16).
    #[arg(long, value_name = "N")]
    pub max_pending_logins_per_address: Option<u32>,

    /// overlaybd's daemon config (overlaybd.json: cacheConfig, credentialConfig, download,
    /// p2pConfig) for image LUNs whose layers live in a registry.
    #[arg(long, value_name = "FILE")]
    pub overlaybd_config: Option<PathBuf>,

    /// A registry that `registry:` LUNs speak to over plain HTTP (repeatable); loopback
    /// registries always are.
    #[arg(long = "plain-http", value_name = "HOST[:PORT]")]
    pub plain_http: Vec<String>,

    /// Folder of the registry layer cache (overrides overlaybd.json's cacheConfig.cacheDir).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Disk budget of the registry layer cache, e.g. 4G (overrides cacheConfig.cacheSizeGB).
    #[arg(long, value_name = "SIZE", value_parser = parse_cache_size)]
    pub cache_size: Option<u64>,

    /// HeaderDigest/DataDigest policy (overrides the config file; default prefer-none).
    #[arg(long, value_name = "POLICY", value_enum)]
    pub digests: Option<DigestSetting>,

    /// Serve Prometheus metrics at http://IP:PORT/metrics (off by default; the management
    /// API's GET /metrics has them too). README "Metrics" lists them.
    #[arg(long, value_name = "IP:PORT", value_parser = parse_socket_addr)]
    pub metrics: Option<SocketAddr>,

    /// Check the configuration (command line, config file, overlaybd.json) and exit: 0 and a
    /// summary when it is valid, 2 and the error otherwise. Backings are not opened.
    #[arg(long)]
    pub check_config: bool,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

/// The level words `--log-level` takes alone.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The log filter of `--log-level`: a level word, or a list of tracing directives
/// (`info,overlaybd_target::cache=debug`). A lone word that is not a level is refused: the
/// tracing syntax would take it as a module name and log everything of a module that does not
/// exist, that is nothing.
pub fn log_filter(text: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let lone_word = !text.contains(['=', ',', ':', '[']);
    if lone_word && !LOG_LEVELS.contains(&text.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "invalid --log-level {text:?}: use one of {} or tracing directives such as info,overlaybd_target::cache=debug",
            LOG_LEVELS.join(", ")
        ));
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map_err(|e| format!("invalid --log-level {text:?}: {e}"))
}

/// An address to listen on: an IP address and a port, not a host name (a name can stand for
/// several addresses, and a listener binds one).
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not IP:PORT; give an IP address and a port, such as 0.0.0.0:3260, 127.0.0.1:3260 or [::1]:3260 (host names are not resolved)")
    })
}

/// `TAG=STATE` of `--alua`.
fn parse_alua(text: &str) -> Result<(u16, overlaybd_target::scsi::AccessState), String> {
    use overlaybd_target::scsi::AccessState;
    let (tag, state) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not TAG=STATE, such as 2=standby"))?;
    let tag = tag.parse().map_err(|_| {
        format!("{tag:?} is not a portal group tag (1 for the first --portal, ...)")
    })?;
    let state = AccessState::parse(state).ok_or_else(|| {
        format!(
            "{state:?} is not an ALUA state; one of {}",
            AccessState::NAMES
        )
    })?;
    Ok((tag, state))
}

/// A size such as `4G` or `256M`.
fn parse_cache_size(text: &str) -> Result<u64, String> {
    overlaybd_target::block::parse_size(text).map_err(|e| e.to_string())
}

fn parse_lun(text: &str) -> Result<LunSpec, String> {
    LunSpec::parse(text).map_err(|e| e.to_string())
}

/// What runs instead of the server.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// An image tool.
    #[command(flatten)]
    Tool(overlaybd_target::tools::Tool),
    /// Manage a running target through its API: targets, LUNs, sessions, status.
    Ctl(overlaybd_target::daemon::ctl::CtlArgs),
    /// Attach an image (reference or config.v1.json) as a local disk through the target's API
    /// and open-iscsi; prints the device.
    Attach(overlaybd_target::host::AttachArgs),
    /// Fetch every byte of an image's registry layers into the running target's cache
    /// (through its API), so its first start reads nothing from the network.
    Warm(overlaybd_target::daemon::ctl::WarmArgs),
    /// Log out of an attached image's disk and remove it from the target.
    Detach(overlaybd_target::host::DetachArgs),
}

/// Why the command line does not describe a usable configuration.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration file was refused.
    #[error(transparent)]
    File(#[from] config::file::ConfigFileError),
    /// A value is out of range (the field is named as the flag that set it, when one did).
    #[error("invalid option: {0}")]
    Invalid(#[from] config::InvalidField),
    /// `--target` without `--lun`: the quick form has nothing to serve under that name.
    #[error(
        "--target {0} needs at least one --lun (file:PATH, ram:SIZE, image:CONFIG.json); \
         without --target and --lun the embedded demo image is served"
    )]
    TargetWithoutLuns(String),
    /// A config file without targets while `--no-api` leaves no way to add one.
    #[error(
        "{0} declares no target and --no-api leaves no way to add one: declare a [[targets]] \
         entry, or serve the management API"
    )]
    NothingToServe(String),
    /// The overlaybd.json daemon config was refused (the message names the file and key).
    #[error("{0}")]
    DaemonSettings(String),
}

impl Cli {
    /// Builds the validated configuration the arguments describe.
    pub fn into_config(self) -> Result<Config, CliError> {
        let mut config = match &self.config {
            Some(path) => {
                let config = config::file::load(path)?;
                if config.targets.is_empty() && self.no_api {
                    return Err(CliError::NothingToServe(path.display().to_string()));
                }
                config
            }
            None => {
                if let (Some(name), true) = (&self.target, self.luns.is_empty()) {
                    return Err(CliError::TargetWithoutLuns(name.clone()));
                }
                // Nothing named: serve the embedded demo image.
                let luns = if self.luns.is_empty() {
                    vec![LunSpec {
                        backing: config::Backing::Demo,
                        read_only: true,
                        remote_failure: None,
                        unit: Default::default(),
                        learn: None,
                    }]
                } else {
                    self.luns.clone()
                };
                let name = self
                    .target
                    .clone()
                    .unwrap_or_else(|| DEFAULT_TARGET_NAME.to_string());
                let target = TargetConfig {
                    allow_target_reset: self.allow_target_reset,
                    ..TargetConfig::open(name, luns)
                };
                Config::single(vec![], target)
            }
        };
        if !self.portals.is_empty() {
            config.portals = self.portals.clone();
        }
        if config.portals.is_empty() {
            config.portals = vec![DEFAULT_PORTAL];
        }
        config.alua.extend(self.alua.iter().copied());
        if let Some(depth) = self.queue_depth {
            config.tuning.queue_depth = depth;
        }
        match self.nop_interval {
            Some(0) => config.tuning.nop_interval = None,
            Some(secs) => config.tuning.nop_interval = Some(Duration::from_secs(secs)),
            None => {}
        }
        if let Some(secs) = self.nop_timeout {
            config.tuning.nop_timeout = Duration::from_secs(secs);
        }
        let t = &mut config.tuning;
        if let Some(bytes) = self.memory_budget {
            t.memory_budget = bytes;
        }
        match self.data_out_timeout {
            Some(0) => t.data_out_timeout = None,
            Some(secs) => t.data_out_timeout = Some(Duration::from_secs(secs)),
            None => {}
        }
        if let Some(n) = self.max_sessions {
            t.max_sessions = n;
        }
        if let Some(n) = self.max_pending_logins {
            t.max_pending_logins = n;
        }
        if let Some(n) = self.max_pending_logins_per_address {
            t.max_pending_logins_per_address = n;
        }
        if let Some(path) = &self.overlaybd_config {
            config.images = overlaybd_target::cache::DaemonSettings::from_file(path)
                .map_err(|e| CliError::DaemonSettings(e.to_string()))?;
        }
        config
            .images
            .override_cache(self.cache_dir.as_deref(), self.cache_size);
        config.images.plain_http.clone_from(&self.plain_http);
        config.strict |= self.strict;
        if let Some(digests) = self.digests {
            config.tuning.digests = digests;
        }
        config.validate().map_err(|e| self.as_flag(e))?;
        Ok(config)
    }

    /// Renames a configuration field after the flag that set its value: the TOML path means
    /// nothing to someone who typed `--queue-depth 0`. Fields a file set keep their path.
    fn as_flag(&self, mut invalid: config::InvalidField) -> config::InvalidField {
        let quick = self.config.is_none();
        let flag = match invalid.field.as_str() {
            "global.queue_depth" if self.queue_depth.is_some() => "--queue-depth",
            "global.nop_timeout_secs" if self.nop_timeout.is_some() => "--nop-timeout",
            "global.memory_budget" if self.memory_budget.is_some() => "--memory-budget",
            "global.max_sessions" if self.max_sessions.is_some() => "--max-sessions",
            "global.max_pending_logins" if self.max_pending_logins.is_some() => {
                "--max-pending-logins"
            }
            "global.max_pending_logins_per_address"
                if self.max_pending_logins_per_address.is_some() =>
            {
                "--max-pending-logins-per-address"
            }
            "global.portals" if !self.portals.is_empty() => "--portal",
            "global.alua" if !self.alua.is_empty() => "--alua",
            "targets[0].name" if quick => "--target",
            "targets[0].luns" if quick => "--lun",
            _ => return invalid,
        };
        invalid.field = flag.to_string();
        invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlaybd_target::config::Backing;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("overlaybd-target").chain(args.iter().copied()))
    }

    #[test]
    fn a_config_without_targets_needs_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("global.toml");
        std::fs::write(&path, "[global]\nlearn_traces = true\n").unwrap();
        let file = path.to_str().unwrap();
        let config = cli(&["--config", file]).unwrap().into_config().unwrap();
        assert!(config.targets.is_empty(), "the API adds them");
        let e = cli(&["--config", file, "--no-api"])
            .unwrap()
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("declares no target and --no-api"), "{e}");
    }

    #[test]
    fn quick_form_numbers_luns_in_order() {
        let c = cli(&[
            "--portal",
            "127.0.0.1:3260",
            "--target",
            "iqn.2026-11.test:t",
            "--lun",
            "file:/a.img",
            "--lun",
            "ram:1G",
            "--lun",
            "ro:file:/b.img",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(c.log_level, "debug");
        let config = c.into_config().unwrap();
        assert_eq!(
            config.portals,
            vec!["127.0.0.1:3260".parse::<SocketAddr>().unwrap()]
        );
        let t = &config.targets[0];
        assert_eq!(t.name, "iqn.2026-11.test:t");
        assert_eq!(t.luns[0].backing, Backing::File("/a.img".into()));
        assert_eq!(t.luns[1].backing, Backing::Ram(1 << 30));
        assert!(t.luns[2].read_only && !t.luns[0].read_only);
    }

    #[test]
    fn alua_states_name_portal_groups() {
        use overlaybd_target::scsi::AccessState;
        let two = ["--portal", "127.0.0.1:3260", "--portal", "127.0.0.1:3261"];
        let args = [&two[..], &["--lun", "ram:1M", "--alua", "2=standby"]].concat();
        let config = cli(&args).unwrap().into_config().unwrap();
        assert_eq!(config.alua.get(&2), Some(&AccessState::Standby));
        let err = cli(&["--alua", "2=passive"]).err().unwrap().to_string();
        assert!(err.contains("active-non-optimized"), "{err}");
        assert!(cli(&["--alua", "standby"]).is_err());
        // Checked against the portals, and named by the flag.
        let err = cli(&["--lun", "ram:1M", "--alua", "3=standby"])
            .unwrap()
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--alua") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn defaults_and_errors() {
        let config = cli(&["--lun", "ram:1M"]).unwrap().into_config().unwrap();
        assert_eq!(config.targets[0].name, DEFAULT_TARGET_NAME);
        assert_eq!(config.portals, vec![DEFAULT_PORTAL]);
        assert_eq!(config.tuning.queue_depth, 128);
        assert_eq!(config.tuning.digests, DigestSetting::PreferNone);
        assert!(!config.strict && !config.targets[0].allow_target_reset);
        let c = cli(&["--lun", "ram:1M", "--strict", "--allow-target-reset"]).unwrap();
        let config = c.into_config().unwrap();
        assert!(config.strict && config.targets[0].allow_target_reset);
        let strict = cli(&["--lun", "ram:1M", "--digests", "require-crc32c"]).unwrap();
        assert_eq!(
            strict.into_config().unwrap().tuning.digests,
            DigestSetting::RequireCrc32c
        );
        assert!(cli(&["--lun", "ram:1M", "--digests", "crc16"]).is_err());

        let demo = cli(&[]).unwrap().into_config().unwrap();
        assert_eq!(demo.targets[0].name, DEFAULT_TARGET_NAME);
        assert_eq!(demo.targets[0].luns[0].backing, Backing::Demo);
        assert!(demo.targets[0].luns[0].read_only);
        assert_eq!(demo.portals, vec![DEFAULT_PORTAL]);
        assert!(cli(&["--lun", "floppy:1"]).is_err());
        assert!(cli(&["--lun", "ram:1M", "--config", "/x.toml"]).is_err());
        let bad = cli(&["--lun", "ram:1M", "--target", "not-an-iqn"])
            .unwrap()
            .into_config();
        assert!(matches!(bad, Err(CliError::Invalid(_))));
        let bad = cli(&["--lun", "ram:1M", "--queue-depth", "0"])
            .unwrap()
            .into_config();
        assert!(matches!(bad, Err(CliError::Invalid(_))));
    }

    #[test]
    fn errors_name_the_flags_that_were_typed() {
        for (args, flag) in [
            (
                &["--lun", "ram:1M", "--queue-depth", "0"][..],
                "--queue-depth",
            ),
            (
                &["--lun", "ram:1M", "--max-sessions", "0"][..],
                "--max-sessions",
            ),
            (
                &["--lun", "ram:1M", "--memory-budget", "1K"][..],
                "--memory-budget",
            ),
            (
                &["--lun", "ram:1M", "--nop-timeout", "0"][..],
                "--nop-timeout",
            ),
            (
                &["--lun", "ram:1M", "--target", "not-an-iqn"][..],
                "--target",
            ),
        ] {
            let err = cli(args).unwrap().into_config().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid option: {flag}: ")) && !err.contains("global."),
                "{args:?}: {err}"
            );
        }
        // A value from a file keeps its TOML path.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[[targets]]\nname = \"iqn.2026-12.test:x\"\nluns = [{ backing = \"ram:1M\" }]\n",
        )
        .unwrap();
        let args = ["--config", file.to_str().unwrap(), "--queue-depth", "0"];
        let err = cli(&args).unwrap().into_config().unwrap_err().to_string();
        assert!(err.contains("--queue-depth"), "{err}");
        // `--target` alone used to serve the demo under that name.
        let err = cli(&["--target", "iqn.2026-12.test:mine"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(matches!(err, CliError::TargetWithoutLuns(_)));
        assert!(
            err.to_string().contains("needs at least one --lun"),
            "{err}"
        );
    }

    #[test]
    fn log_levels_are_words_or_directives_and_nothing_else() {
        for good in [
            "info",
            "WARN",
            "off",
            "debug,overlaybd_target::cache=trace",
            "overlaybd_target=info",
        ] {
            assert!(log_filter(good).is_ok(), "{good}");
        }
        for bad in ["verbose", "information", "", "warn,=x=y"] {
            let err = log_filter(bad).unwrap_err();
            assert!(err.contains("invalid --log-level"), "{bad}: {err}");
        }
        let err = log_filter("verbose").unwrap_err();
        assert!(err.contains("error, warn, info"), "{err}");
    }

    #[test]
    fn listen_addresses_must_be_ip_and_port_and_say_so() {
        assert!(cli(&["--portal", "[::1]:3260", "--metrics", "127.0.0.1:9863"]).is_ok());
        for bad in ["localhost:3260", "3260", "10.0.0.1"] {
            let err = cli(&["--portal", bad]).unwrap_err().to_string();
            assert!(
                err.contains("is not IP:PORT") && err.contains("0.0.0.0:3260"),
                "{bad}: {err}"
            );
        }
    }
}
