//! `overlaybd-target ctl`: the command-line client of the management API. Its arguments and
//! output are a contract that scripts rely on:
//!
//! ```text
//! overlaybd-target ctl [--api PATH] status [--json]
//! overlaybd-target ctl sessions [--json]
//! overlaybd-target ctl target add IQN [--alias A] [--allow INITIATOR]... [--chap USER:SECRET]
//!                                     [--mutual-chap USER:SECRET] [--allow-target-reset]
//! overlaybd-target ctl target remove IQN [--force]
//! overlaybd-target ctl lun add IQN BACKING [--lun N] [--read-only]    # prints the LUN number
//! overlaybd-target ctl lun remove IQN N [--force]
//! overlaybd-target ctl cache show [--json]
//! overlaybd-target ctl cache purge (DIGEST [--force] | --all)  # prints what was purged
//! overlaybd-target ctl cache pin DIGEST
//! overlaybd-target ctl cache unpin DIGEST
//! overlaybd-target ctl trace show IQN N [--json]       # recording, replaying or none
//! overlaybd-target ctl trace stop IQN N                 # ends a recording, trace written
//! overlaybd-target warm (CONFIG.json | REFERENCE) [--pin] [--json] [--api PATH]
//! ```
//!
//! `--json` prints the API's JSON as it sent it (pretty-printed); without it, a table meant for
//! people, whose layout may change. Commands that change something print nothing on success,
//! except `lun add`, whose number the server may have chosen. Every failure is one line.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use super::api::DEFAULT_API_SOCKET;
use super::api::{ApiClient, ClientError};
use super::model::{
    AddLun, AddTarget, ChapInput, LunState, SessionInfo, Status, TargetInfo, TraceInfo, TraceMode,
};

mod cache;

pub use cache::{warm, CacheCommand, WarmArgs};

/// Arguments of `overlaybd-target ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The management API's socket.
    #[arg(long = "api", value_name = "PATH", default_value = DEFAULT_API_SOCKET, global = true)]
    pub api: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The `ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Show the targets, their LUNs and the server's counters.
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the logged-in sessions.
    Sessions {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove a target.
    #[command(subcommand)]
    Target(TargetCommand),
    /// Add or remove a LUN of a target.
    #[command(subcommand)]
    Lun(LunCommand),
    /// Show, purge and pin the registry layer cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Show or stop a LUN's trace recording (learned traces, recordTracePath).
    #[command(subcommand)]
    Trace(TraceCommand),
}

/// `ctl trace …`.
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Show whether the LUN records a trace, replays one, or neither.
    Show {
        /// The target's iSCSI name.
        #[arg(value_name = "IQN")]
        iqn: String,
        /// The LUN number.
        #[arg(value_name = "N")]
        lun: u64,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End the LUN's recording now; returns once the trace is written.
    Stop {
        /// The target's iSCSI name.
        #[arg(value_name = "IQN")]
        iqn: String,
        /// The LUN number.
        #[arg(value_name = "N")]
        lun: u64,
    },
    /// Push the trace a registry: LUN learned as its image's acceleration layer (to its own
    /// tag, or --to), with the target's registry credentials.
    Publish {
        /// The target's iSCSI name.
        #[arg(value_name = "IQN")]
        iqn: String,
        /// The LUN number.
        #[arg(value_name = "N")]
        lun: u64,
        /// Push to this reference (HOST/REPOSITORY:TAG) instead of the LUN's own tag.
        #[arg(long, value_name = "REFERENCE")]
        to: Option<String>,
    },
}

/// `ctl target …`.
#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Add a target without LUNs.
    Add(TargetAdd),
    /// Remove a target.
    Remove {
        /// The target's iSCSI name.
        #[arg(value_name = "IQN")]
        iqn: String,
        /// Remove it even with sessions logged in (they are asked to log out, then dropped).
        #[arg(long)]
        force: bool,
    },
}

/// `ctl target add`.
#[derive(Debug, Args)]
pub struct TargetAdd {
    /// The target's iSCSI name.
    #[arg(value_name = "IQN")]
    pub iqn: String,
    /// Its TargetAlias.
    #[arg(long, value_name = "ALIAS")]
    pub alias: Option<String>,
    /// An initiator name allowed to log in (repeatable; without any, everyone may).
    #[arg(long = "allow", value_name = "INITIATOR")]
    pub allow: Vec<String>,
    /// CHAP the initiator must prove. Split at the first ':'. Note that other local users
    /// can read command lines.
    #[arg(long, value_name = "USER:SECRET", value_parser = parse_chap)]
    pub chap: Option<ChapInput>,
    /// CHAP the target proves back to the initiator (needs --chap).
    #[arg(long, value_name = "USER:SECRET", value_parser = parse_chap, requires = "chap")]
    pub mutual_chap: Option<ChapInput>,
    /// Honour TARGET WARM/COLD RESET from initiators.
    #[arg(long)]
    pub allow_target_reset: bool,
}

/// `ctl lun …`.
#[derive(Debug, Subcommand)]
pub enum LunCommand {
    /// Add a LUN and print its number once it serves I/O.
    Add {
        /// The target's iSCSI name.
        #[arg(value_name = "IQN")]
        iqn: String,
        /// The backing, as `--lun` takes it: file:PATH, ram:SIZE, image:CONFIG.json, …
        #[arg(value_name = "BACKING")]
        backing: String,
        /// The LUN number (default: the lowest free one).
        #[arg(long, value_name = "N")]
        lun: Option<u64>,
        /// Export it read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// Remove a LUN.
    Remove {
        /// The target's iSCSI name.
        #[arg(value_name = "IQN")]
        iqn: String,
        /// The LUN number.
        #[arg(value_name = "N")]
        lun: u64,
        /// Remove it even while a session uses it (its new commands then fail).
        #[arg(long)]
        force: bool,
    },
}

/// Why a `ctl` command failed; its Display is one line, which the binary prints after
/// `overlaybd-target: ` before exiting with status 1.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The API could not be reached or refused the request.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

/// Runs a `ctl` command and prints its output on standard output.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    print(&execute(&args).await?)
}

/// Runs `overlaybd-target warm` and prints its report on standard output.
pub async fn run_warm(args: WarmArgs) -> Result<(), CtlError> {
    print(&warm(&args).await?)
}

/// Writes a command's output on standard output.
fn print(text: &str) -> Result<(), CtlError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CtlError::Output)
}

/// Runs a `ctl` command and returns what it prints.
pub async fn execute(args: &CtlArgs) -> Result<String, CtlError> {
    let client = ApiClient::new(&args.api);
    let text = match &args.command {
        CtlCommand::Status { json: true } => {
            pretty(&client.get::<serde_json::Value>("/v1/status").await?)
        }
        CtlCommand::Status { json: false } => format_status(&client.status().await?),
        CtlCommand::Sessions { json: true } => {
            pretty(&client.get::<serde_json::Value>("/v1/sessions").await?)
        }
        CtlCommand::Sessions { json: false } => format_sessions(&client.sessions().await?),
        CtlCommand::Target(TargetCommand::Add(add)) => {
            let request = AddTarget {
                name: add.iqn.clone(),
                alias: add.alias.clone(),
                allowed_initiators: add.allow.clone(),
                chap: add.chap.clone(),
                mutual_chap: add.mutual_chap.clone(),
                allow_target_reset: add.allow_target_reset,
            };
            client.add_target(&request).await?;
            String::new()
        }
        CtlCommand::Target(TargetCommand::Remove { iqn, force }) => {
            client.remove_target(iqn, *force).await?;
            String::new()
        }
        CtlCommand::Lun(LunCommand::Add {
            iqn,
            backing,
            lun,
            read_only,
        }) => {
            let request = AddLun {
                backing: backing.clone(),
                lun: *lun,
                read_only: *read_only,
            };
            format!("{}\n", client.add_lun(iqn, &request).await?.lun)
        }
        CtlCommand::Lun(LunCommand::Remove { iqn, lun, force }) => {
            client.remove_lun(iqn, *lun, *force).await?;
            String::new()
        }
        CtlCommand::Cache(command) => cache::execute(&client, command).await?,
        CtlCommand::Trace(TraceCommand::Show {
            iqn,
            lun,
            json: true,
        }) => {
            let path = format!(
                "/v1/targets/{}/luns/{lun}/trace",
                super::api::encode_segment(iqn)
            );
            pretty(&client.get::<serde_json::Value>(&path).await?)
        }
        CtlCommand::Trace(TraceCommand::Show {
            iqn,
            lun,
            json: false,
        }) => format_trace(&client.trace(iqn, *lun).await?),
        CtlCommand::Trace(TraceCommand::Stop { iqn, lun }) => {
            client.stop_trace(iqn, *lun).await?;
            String::new()
        }
        CtlCommand::Trace(TraceCommand::Publish { iqn, lun, to }) => {
            let p = client.publish_trace(iqn, *lun, to.as_deref()).await?;
            let mut text = format!("pushed {}\ntrace layer {}\n", p.pushed, p.layer);
            if let Some(old) = p.replaced {
                text.push_str(&format!("replaced trace layer {old}\n"));
            }
            text
        }
    };
    Ok(text)
}

/// A LUN's trace prefetch as text.
fn format_trace(info: &TraceInfo) -> String {
    let mode = match info.mode {
        TraceMode::None => "none",
        TraceMode::Recording => "recording",
        TraceMode::Recorded => "recorded",
        TraceMode::Replaying => "replaying",
    };
    let mut rows = vec![row(["mode", mode])];
    if let Some(path) = &info.path {
        rows.push(row(["trace", path]));
    }
    if info.mode != TraceMode::None {
        rows.push(row(["records", &info.records.to_string()]));
    }
    if let Some(error) = &info.error {
        rows.push(row(["error", error]));
    }
    let mut out = String::new();
    push_lines(&mut out, &table(&rows), "");
    out
}

/// `USER:SECRET`, split at the first ':' (a secret may contain more).
fn parse_chap(text: &str) -> Result<ChapInput, String> {
    match text.split_once(':') {
        Some((user, secret)) if !user.is_empty() && !secret.is_empty() => Ok(ChapInput {
            user: user.to_string(),
            secret: secret.to_string(),
        }),
        _ => Err("expected USER:SECRET, both non-empty".to_string()),
    }
}

/// JSON as the API sent it, indented, with a final newline.
fn pretty(value: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text + "\n"
}

/// The status as text: the server's lines, then each target with a table of its LUNs (a
/// failed LUN's reason on the line below it).
pub fn format_status(status: &Status) -> String {
    let mut out = String::new();
    let mut head = vec![
        row(["version", &status.version]),
        row(["portals", &status.portals.join(", ")]),
        row(["sessions", &status.sessions.to_string()]),
    ];
    if let Some(cache) = &status.cache {
        let counters = format!(
            "memory hits {}, disk hits {}, shared fetches {}, registry requests {} ({}); holds {} in memory, {} on disk",
            cache.memory_hits,
            cache.disk_hits,
            cache.shared_fetches,
            cache.source_requests,
            format_size(cache.source_bytes),
            format_size(cache.memory_bytes),
            format_size(cache.disk_bytes)
        );
        head.push(row(["cache", &counters]));
    }
    push_lines(&mut out, &table(&head), "");
    if status.targets.is_empty() {
        out.push_str("\nno targets\n");
    }
    for target in &status.targets {
        out.push('\n');
        format_target(&mut out, target);
    }
    out
}

/// One target of [`format_status`].
fn format_target(out: &mut String, target: &TargetInfo) {
    out.push_str(&format!("target {}\n", target.name));
    let mut lines = Vec::new();
    if let Some(alias) = &target.alias {
        lines.push(row(["alias", alias]));
    }
    lines.push(row(["sessions", &target.sessions.to_string()]));
    let allowed = if target.allowed_initiators.is_empty() {
        "any initiator".to_string()
    } else {
        target.allowed_initiators.join(", ")
    };
    lines.push(row(["allow", &allowed]));
    let chap = match (&target.chap_user, &target.mutual_chap_user) {
        (None, _) => "none".to_string(),
        (Some(user), None) => user.clone(),
        (Some(user), Some(mutual)) => format!("{user} (mutual: {mutual})"),
    };
    lines.push(row(["chap", &chap]));
    push_lines(out, &table(&lines), "  ");
    if target.luns.is_empty() {
        out.push_str("  no LUNs\n");
        return;
    }
    let mut rows = vec![row(["LUN", "STATE", "SIZE", "MODE", "BACKING"])];
    for lun in &target.luns {
        let state = match lun.state {
            LunState::Opening => "opening",
            LunState::Ready => "ready",
            LunState::Failed => "failed",
        };
        let size = lun.size_bytes.map_or_else(|| "-".to_string(), format_size);
        let mode = if lun.read_only { "ro" } else { "rw" };
        rows.push(row([
            &lun.lun.to_string(),
            state,
            &size,
            mode,
            &lun.backing,
        ]));
    }
    // The first line is the header; each LUN's line is followed by its reason, if any.
    let lines = table(&rows);
    let Some((header, rows)) = lines.split_first() else {
        return;
    };
    push_lines(out, std::slice::from_ref(header), "  ");
    let reason_indent = " ".repeat(header.find("STATE").unwrap_or(0) + 2);
    for (line, lun) in rows.iter().zip(&target.luns) {
        push_lines(out, std::slice::from_ref(line), "  ");
        if let Some(reason) = &lun.reason {
            out.push_str(&format!("{reason_indent}reason: {reason}\n"));
        }
    }
}

/// The sessions as a table.
pub fn format_sessions(sessions: &[SessionInfo]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".to_string();
    }
    let mut rows = vec![row([
        "INITIATOR",
        "ISID",
        "TSIH",
        "TARGET",
        "PEER",
        "DIGEST(H/D)",
    ])];
    for s in sessions {
        let key = |name: &str| s.keys.get(name).map_or("-", String::as_str).to_string();
        let digests = format!("{}/{}", key("HeaderDigest"), key("DataDigest"));
        rows.push(row([
            &s.initiator,
            &s.isid,
            &s.tsih.to_string(),
            s.target.as_deref().unwrap_or("(discovery)"),
            s.peer.as_deref().unwrap_or("-"),
            &digests,
        ]));
    }
    let mut out = String::new();
    push_lines(&mut out, &table(&rows), "");
    out
}

/// A table row from cells.
fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Rows as lines whose columns line up (two spaces apart, no trailing blanks).
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (cell, width) in r.iter().zip(&widths) {
                line.push_str(cell);
                line.push_str(&" ".repeat(width - cell.chars().count() + 2));
            }
            line.trim_end().to_string()
        })
        .collect()
}

/// Appends lines, each indented and ended.
fn push_lines(out: &mut String, lines: &[String], indent: &str) {
    for line in lines {
        out.push_str(indent);
        out.push_str(line);
        out.push('\n');
    }
}

/// A byte count in binary units: exact ones as integers ("10 GiB"), others to one decimal.
fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes % scale == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{Parser, Subcommand};

    use super::{execute, format_sessions, format_size, format_status, parse_chap, CtlArgs};
    use super::{CtlCommand, DEFAULT_API_SOCKET};
    use crate::daemon::api::fake::{FakeControl, Running};
    use crate::daemon::model::{CacheInfo, LunInfo, LunState, SessionInfo, Status, TargetInfo};

    const IQN: &str = "iqn.2026-11.io.overlaybd:node";

    /// The binary's command line as far as `ctl` goes.
    #[derive(Debug, Parser)]
    #[command(name = "overlaybd-target")]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        Ctl(CtlArgs),
    }

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        let argv = ["overlaybd-target", "ctl"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Top::Ctl(ctl) => ctl,
        })
    }

    /// Runs `ctl --api SOCKET ARGS…` and returns its output or its error's message.
    async fn ctl(socket: &Path, args: &[&str]) -> Result<String, String> {
        let mut argv = vec!["--api", socket.to_str().unwrap()];
        argv.extend_from_slice(args);
        let args = parse(&argv).map_err(|e| e.to_string())?;
        execute(&args).await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn cache_commands_print_the_layers_and_what_they_purged() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        let (a, b) = (
            format!("sha256:{}", "aa".repeat(32)),
            format!("sha256:{}", "bb".repeat(32)),
        );
        assert_eq!(ctl(&p, &["cache", "pin", &a]).await.unwrap(), "");
        assert_eq!(ctl(&p, &["cache", "pin", &b]).await.unwrap(), "");
        assert_eq!(ctl(&p, &["cache", "unpin", &b]).await.unwrap(), "");
        server
            .control
            .layers
            .lock()
            .unwrap()
            .get_mut(&a)
            .unwrap()
            .size_bytes = Some(1 << 20);
        let shown = ctl(&p, &["cache", "show"]).await.unwrap();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], "folder  /var/cache/test");
        assert!(lines.contains(&"disk    0 B of 4 GiB, keeping 1 GiB free on its file system"));
        let row_a = lines.iter().find(|l| l.starts_with(&a)).unwrap();
        assert!(
            row_a.contains("0 B of 1 MiB (0 %)") && row_a.ends_with("yes"),
            "{row_a}"
        );
        let err = ctl(&p, &["cache", "purge", &a]).await.unwrap_err();
        assert!(err.contains("pinned"), "{err}");
        assert_eq!(
            ctl(&p, &["cache", "purge", "--all"]).await.unwrap(),
            format!("purged {b} (0 units, 0 B on disk, 0 B in memory)\n")
        );
        assert_eq!(
            ctl(&p, &["cache", "purge", &a, "--force"]).await.unwrap(),
            format!("purged {a} (0 units, 0 B on disk, 0 B in memory)\n")
        );
        assert!(ctl(&p, &["cache", "show"])
            .await
            .unwrap()
            .ends_with("\nno layers cached\n"));
        // A digest or --all, not both, and --force only with a digest.
        for bad in [
            &["cache", "purge"][..],
            &["cache", "purge", &a, "--all"],
            &["cache", "purge", "--all", "--force"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn lun_add_prints_the_number_alone_and_changes_print_nothing() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        assert_eq!(ctl(&p, &["target", "add", IQN]).await.unwrap(), "");
        assert_eq!(
            ctl(&p, &["lun", "add", IQN, "file:/a"]).await.unwrap(),
            "0\n"
        );
        assert_eq!(
            ctl(&p, &["lun", "add", IQN, "file:/b"]).await.unwrap(),
            "1\n"
        );
        assert_eq!(
            ctl(
                &p,
                &["lun", "add", IQN, "ram:1G", "--lun", "7", "--read-only"]
            )
            .await
            .unwrap(),
            "7\n"
        );
        let luns = server.control.targets.lock().unwrap()[IQN].luns.clone();
        let summary: Vec<_> = luns
            .iter()
            .map(|l| (l.lun, l.backing.as_str(), l.read_only))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "file:/a", false),
                (1, "file:/b", false),
                (7, "ram:1G", true)
            ]
        );

        assert_eq!(
            ctl(&p, &["lun", "remove", IQN, "1", "--force"])
                .await
                .unwrap(),
            ""
        );
        assert_eq!(ctl(&p, &["lun", "remove", IQN, "7"]).await.unwrap(), "");
        assert_eq!(ctl(&p, &["target", "remove", IQN]).await.unwrap(), "");
        let removed = server.control.removed.lock().unwrap().clone();
        assert_eq!(
            removed,
            [
                (IQN.to_string(), Some(1), true),
                (IQN.to_string(), Some(7), false),
                (IQN.to_string(), None, false),
            ]
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn target_add_sends_every_option() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        let args = [
            "target",
            "add",
            IQN,
            "--alias",
            "web",
            "--allow",
            "iqn.a",
            "--allow",
            "iqn.b",
            "--chap",
            "user:secret:with:colons",
            "--mutual-chap",
            "back:another-secret",
            "--allow-target-reset",
        ];
        assert_eq!(ctl(&p, &args).await.unwrap(), "");
        let t = server.control.targets.lock().unwrap()[IQN].clone();
        assert_eq!(t.alias.as_deref(), Some("web"));
        assert_eq!(t.allowed_initiators, ["iqn.a", "iqn.b"]);
        assert_eq!(t.chap_user.as_deref(), Some("user"));
        assert_eq!(t.mutual_chap_user.as_deref(), Some("back"));
        // The options are parsed exactly, secret included.
        let parsed = parse(&args).unwrap();
        match parsed.command {
            CtlCommand::Target(super::TargetCommand::Add(add)) => {
                let chap = add.chap.unwrap();
                assert_eq!(
                    (chap.user.as_str(), chap.secret.as_str()),
                    ("user", "secret:with:colons")
                );
                assert!(add.allow_target_reset);
            }
            other => panic!("{other:?}"),
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn failures_are_the_servers_one_line_message() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        ctl(&p, &["target", "add", IQN]).await.unwrap();
        assert_eq!(
            ctl(&p, &["target", "add", IQN]).await.unwrap_err(),
            format!("target {IQN} already exists")
        );
        assert_eq!(
            ctl(&p, &["lun", "remove", IQN, "9"]).await.unwrap_err(),
            format!("no LUN 9 in {IQN}")
        );
        assert_eq!(
            ctl(&p, &["lun", "add", IQN, "bad:x"]).await.unwrap_err(),
            "cannot open bad:x"
        );
        server.stop().await;
        let e = ctl(&p, &["status"]).await.unwrap_err();
        assert_eq!(
            e,
            format!(
                "cannot reach the API at {}: no such socket (is overlaybd-target running with --api?)",
                p.display()
            )
        );
    }

    #[tokio::test]
    async fn json_output_is_the_apis_json() {
        let control = FakeControl {
            sessions: vec![session(Some(IQN))],
            ..FakeControl::default()
        };
        let mut server = Running::start(control).await;
        let p = server.path.clone();
        ctl(&p, &["target", "add", IQN, "--alias", "web"])
            .await
            .unwrap();
        ctl(&p, &["lun", "add", IQN, "file:/a"]).await.unwrap();
        let text = ctl(&p, &["status", "--json"]).await.unwrap();
        assert!(
            text.ends_with("}\n") && text.contains("\n  \"targets\": ["),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        use crate::daemon::control::ControlPlane;
        assert_eq!(
            value,
            serde_json::to_value(server.control.status()).unwrap()
        );
        let text = ctl(&p, &["sessions", "--json"]).await.unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::to_value(vec![session(Some(IQN))]).unwrap()
        );
        // The readable forms come from the same answers.
        let text = ctl(&p, &["status"]).await.unwrap();
        assert_eq!(text, format_status(&server.control.status()));
        let text = ctl(&p, &["sessions"]).await.unwrap();
        assert_eq!(text, format_sessions(&[session(Some(IQN))]));
        server.stop().await;
    }

    #[test]
    fn arguments_follow_the_contract() {
        let args = parse(&["status"]).unwrap();
        assert_eq!(args.api, Path::new(DEFAULT_API_SOCKET));
        assert_eq!(DEFAULT_API_SOCKET, "/run/overlaybd-target/api.sock");
        // --api is accepted after the subcommand too.
        let args = parse(&["sessions", "--json", "--api", "/tmp/x.sock"]).unwrap();
        assert_eq!(args.api, Path::new("/tmp/x.sock"));
        assert!(matches!(args.command, CtlCommand::Sessions { json: true }));
        // Mutual CHAP needs CHAP; a LUN number is a number; USER:SECRET needs both.
        assert!(parse(&["target", "add", IQN, "--mutual-chap", "a:b"]).is_err());
        assert!(parse(&["lun", "remove", IQN, "x"]).is_err());
        assert!(parse(&["target", "add", IQN, "--chap", "nosecret"]).is_err());
        assert!(parse(&["lun", "add", IQN]).is_err());
    }

    #[test]
    fn chap_splits_at_the_first_colon() {
        let chap = parse_chap("u:s:t").unwrap();
        assert_eq!((chap.user.as_str(), chap.secret.as_str()), ("u", "s:t"));
        for bad in ["", "u", ":s", "u:"] {
            assert!(parse_chap(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_are_in_binary_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (10 << 30, "10 GiB"),
            ((1 << 40) + (1 << 39), "1.5 TiB"),
            (u64::MAX, "16384.0 PiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(format_size(bytes), text);
        }
    }

    fn session(target: Option<&str>) -> SessionInfo {
        SessionInfo {
            initiator: "iqn.1994-05.com.redhat:host".into(),
            isid: "23d000000001".into(),
            tsih: 7,
            peer: Some("10.0.0.2:51000".into()),
            target: target.map(str::to_string),
            keys: [
                ("HeaderDigest".to_string(), "CRC32C".to_string()),
                ("DataDigest".to_string(), "None".to_string()),
            ]
            .into(),
        }
    }

    #[test]
    fn status_text_shows_targets_luns_and_reasons() {
        let status = Status {
            version: "0.1.0".into(),
            portals: vec!["0.0.0.0:3260".into(), "[::]:3260".into()],
            sessions: 2,
            cache: Some(CacheInfo {
                memory_hits: 10,
                disk_hits: 2,
                shared_fetches: 1,
                source_requests: 5,
                source_bytes: 3 << 19,
                memory_bytes: 1 << 20,
                disk_bytes: 4 << 20,
            }),
            targets: vec![
                TargetInfo {
                    name: IQN.into(),
                    alias: Some("web".into()),
                    allowed_initiators: vec!["iqn.a".into(), "iqn.b".into()],
                    chap_user: Some("u".into()),
                    mutual_chap_user: Some("m".into()),
                    luns: vec![
                        LunInfo {
                            lun: 0,
                            backing: "file:/srv/disk.img".into(),
                            read_only: false,
                            state: LunState::Ready,
                            reason: None,
                            size_bytes: Some(10 << 30),
                        },
                        LunInfo {
                            lun: 12,
                            backing: "registry:example.com/app:v1".into(),
                            read_only: true,
                            state: LunState::Failed,
                            reason: Some("cannot fetch the manifest: 404".into()),
                            size_bytes: None,
                        },
                    ],
                    sessions: 2,
                },
                TargetInfo {
                    name: "iqn.2026-11.io.overlaybd:empty".into(),
                    alias: None,
                    allowed_initiators: vec![],
                    chap_user: None,
                    mutual_chap_user: None,
                    luns: vec![],
                    sessions: 0,
                },
            ],
        };
        let expected = "\
version   0.1.0
portals   0.0.0.0:3260, [::]:3260
sessions  2
cache     memory hits 10, disk hits 2, shared fetches 1, registry requests 5 (1.5 MiB); holds 1 MiB in memory, 4 MiB on disk

target iqn.2026-11.io.overlaybd:node
  alias     web
  sessions  2
  allow     iqn.a, iqn.b
  chap      u (mutual: m)
  LUN  STATE   SIZE    MODE  BACKING
  0    ready   10 GiB  rw    file:/srv/disk.img
  12   failed  -       ro    registry:example.com/app:v1
       reason: cannot fetch the manifest: 404

target iqn.2026-11.io.overlaybd:empty
  sessions  0
  allow     any initiator
  chap      none
  no LUNs
";
        assert_eq!(format_status(&status), expected);
        let empty = Status {
            targets: vec![],
            cache: None,
            ..status
        };
        assert!(format_status(&empty).ends_with("sessions  2\n\nno targets\n"));
    }

    #[test]
    fn sessions_text_is_a_table() {
        let mut discovery = session(None);
        discovery.isid = "23d000000002".into();
        discovery.tsih = 8;
        discovery.peer = None;
        discovery.keys.clear();
        let expected = "\
INITIATOR                    ISID          TSIH  TARGET                         PEER            DIGEST(H/D)
iqn.1994-05.com.redhat:host  23d000000001  7     iqn.2026-11.io.overlaybd:node  10.0.0.2:51000  CRC32C/None
iqn.1994-05.com.redhat:host  23d000000002  8     (discovery)                    -               -/-
";
        assert_eq!(format_sessions(&[session(Some(IQN)), discovery]), expected);
        assert_eq!(format_sessions(&[]), "no sessions\n");
    }
}
