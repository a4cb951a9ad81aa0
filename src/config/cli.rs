//! The command line. The quick form is a contract that tests and benchmarks rely on:
//!
//! ```text
//! overlaybd-target --portal 127.0.0.1:3260 --target IQN --lun file:PATH --lun ram:1G \
//!                  --lun ro:file:PATH --log-level info
//! ```
//!
//! LUNs are numbered from 0 in the order given; a `ro:` prefix exports a LUN read-only.
//! `--config FILE` reads targets from TOML instead (see [`super::file`]); `--portal` and the
//! tuning flags then override the file's values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::{Config, LunSpec, TargetConfig, Tuning, DEFAULT_PORTAL, DEFAULT_TARGET_NAME};

/// Command-line arguments of `overlaybd-target`.
#[derive(Debug, Parser)]
#[command(
    name = "overlaybd-target",
    version,
    about = "An iSCSI target for overlaybd images"
)]
pub struct Cli {
    /// Address to listen on (repeatable). Default 0.0.0.0:3260.
    #[arg(long = "portal", value_name = "IP:PORT")]
    pub portals: Vec<SocketAddr>,

    /// Target IQN for the quick form. Default iqn.2026-11.io.overlaybd:demo.
    #[arg(long, value_name = "IQN", conflicts_with = "config")]
    pub target: Option<String>,

    /// A LUN of the quick-form target (repeatable, numbered from 0): file:PATH, ram:SIZE,
    /// or either prefixed by ro: for read-only.
    #[arg(long = "lun", value_name = "BACKING", value_parser = parse_lun, conflicts_with = "config")]
    pub luns: Vec<LunSpec>,

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

    /// HeaderDigest/DataDigest policy (overrides the config file; default prefer-none).
    #[arg(long, value_name = "POLICY", value_enum)]
    pub digests: Option<super::Digests>,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

fn parse_lun(text: &str) -> Result<LunSpec, String> {
    LunSpec::parse(text).map_err(|e| e.to_string())
}

/// Why the command line does not describe a usable configuration.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration file was refused.
    #[error(transparent)]
    File(#[from] super::file::ConfigFileError),
    /// A value is out of range.
    #[error("invalid option: {0}")]
    Invalid(#[from] super::InvalidField),
    /// Neither `--lun` nor `--config` was given.
    #[error("nothing to serve: give at least one --lun BACKING or --config FILE")]
    NoLuns,
}

impl Cli {
    /// Builds the validated configuration the arguments describe.
    pub fn into_config(self) -> Result<Config, CliError> {
        let mut config = match &self.config {
            Some(path) => super::file::load(path)?,
            None => {
                if self.luns.is_empty() {
                    return Err(CliError::NoLuns);
                }
                Config {
                    portals: vec![],
                    tuning: Tuning::default(),
                    targets: vec![TargetConfig {
                        name: self
                            .target
                            .clone()
                            .unwrap_or_else(|| DEFAULT_TARGET_NAME.to_string()),
                        alias: None,
                        luns: self.luns.clone(),
                        chap: None,
                        mutual_chap: None,
                        allowed_initiators: vec![],
                    }],
                }
            }
        };
        if !self.portals.is_empty() {
            config.portals = self.portals.clone();
        }
        if config.portals.is_empty() {
            config.portals = vec![DEFAULT_PORTAL];
        }
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
        if let Some(digests) = self.digests {
            config.tuning.digests = digests;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backing;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("overlaybd-target").chain(args.iter().copied()))
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
    fn defaults_and_errors() {
        let config = cli(&["--lun", "ram:1M"]).unwrap().into_config().unwrap();
        assert_eq!(config.targets[0].name, DEFAULT_TARGET_NAME);
        assert_eq!(config.portals, vec![DEFAULT_PORTAL]);
        assert_eq!(config.tuning.queue_depth, 128);
        assert_eq!(config.tuning.digests, crate::config::Digests::PreferNone);
        let strict = cli(&["--lun", "ram:1M", "--digests", "require-crc32c"]).unwrap();
        assert_eq!(
            strict.into_config().unwrap().tuning.digests,
            crate::config::Digests::RequireCrc32c
        );
        assert!(cli(&["--lun", "ram:1M", "--digests", "crc16"]).is_err());

        assert!(matches!(
            cli(&[]).unwrap().into_config(),
            Err(CliError::NoLuns)
        ));
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
}
