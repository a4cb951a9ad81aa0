//! `ctl cache …` and `overlaybd-target warm`: the registry layer cache through the API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{format_size, pretty, push_lines, row, table, CtlError};
use crate::daemon::api::{ApiClient, DEFAULT_API_SOCKET};
use crate::daemon::model::{CacheReport, CachedLayer, WarmReport, WarmRequest};

/// `ctl cache …`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Show the cache's bounds, its use, and what it holds per layer.
    Show {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop a layer's cached units (images using it fetch them again when read), or with
    /// --all those of every unpinned layer. Prints what was dropped.
    Purge {
        /// The layer's digest (sha256:…).
        #[arg(
            value_name = "DIGEST",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        digest: Option<String>,
        /// Every unpinned layer.
        #[arg(long)]
        all: bool,
        /// Purge a pinned layer too (its pin stays, for what is read next).
        #[arg(long, conflicts_with = "all")]
        force: bool,
    },
    /// Keep a layer's units whatever else is read (saved across restarts).
    Pin {
        /// The layer's digest (sha256:…).
        #[arg(value_name = "DIGEST")]
        digest: String,
    },
    /// Let a pinned layer be evicted again.
    Unpin {
        /// The layer's digest (sha256:…).
        #[arg(value_name = "DIGEST")]
        digest: String,
    },
}

/// Runs a `ctl cache` command and returns what it prints.
pub(super) async fn execute(
    client: &ApiClient,
    command: &CacheCommand,
) -> Result<String, CtlError> {
    Ok(match command {
        CacheCommand::Show { json: true } => {
            pretty(&client.get::<serde_json::Value>("/v1/cache").await?)
        }
        CacheCommand::Show { json: false } => format_cache(&client.cache().await?),
        CacheCommand::Purge { digest, force, .. } => {
            let purged = client.purge_cache(digest.as_deref(), *force).await?;
            format_purged(&purged)
        }
        CacheCommand::Pin { digest } => {
            client.pin_layer(digest, true).await?;
            String::new()
        }
        CacheCommand::Unpin { digest } => {
            client.pin_layer(digest, false).await?;
            String::new()
        }
    })
}

/// Arguments of `overlaybd-target warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The image: a config.v1.json (a path that exists) or an image reference.
    #[arg(value_name = "CONFIG|REFERENCE")]
    pub image: String,
    /// Pin its layers too, so they stay cached.
    #[arg(long)]
    pub pin: bool,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The management API's socket.
    #[arg(long = "api", value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    pub api: PathBuf,
    /// Give up waiting after this many seconds (the daemon goes on warming).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub timeout: u64,
}

/// `overlaybd-target warm`: asks the running target to fetch every byte of the image's
/// registry layers into its cache, and prints what it did.
pub async fn warm(args: &WarmArgs) -> Result<String, CtlError> {
    // The daemon resolves paths in its own folder: send a local config's absolute path.
    let image = if Path::new(&args.image).exists() {
        std::path::absolute(&args.image)
            .map_err(CtlError::Output)?
            .display()
            .to_string()
    } else {
        args.image.clone()
    };
    let client = ApiClient::new(&args.api).with_timeout(Duration::from_secs(args.timeout.max(1)));
    let request = WarmRequest {
        image,
        pin: args.pin,
    };
    if args.json {
        let value: serde_json::Value = client.post("/v1/cache/warm", &request).await?;
        return Ok(pretty(&value));
    }
    Ok(format_warm(&client.warm(&request).await?))
}

/// "12.0 MiB of 40 MiB (30 %)" when the size is known, else the cached bytes alone.
fn cached_share(cached: u64, size: Option<u64>) -> String {
    match size.filter(|&s| s > 0) {
        Some(size) => format!(
            "{} of {} ({} %)",
            format_size(cached),
            format_size(size),
            (u128::from(cached) * 100 / u128::from(size)).min(100)
        ),
        None => format_size(cached),
    }
}

/// The cache as text: its bounds, then one line per layer.
pub fn format_cache(report: &CacheReport) -> String {
    let mut out = String::new();
    let disk = if report.disk_capacity_bytes == 0 {
        "none (cache size 0)".to_string()
    } else {
        format!(
            "{} of {}, keeping {} free on its file system",
            format_size(report.disk_bytes),
            format_size(report.disk_capacity_bytes),
            format_size(report.min_free_bytes)
        )
    };
    let head = [
        row(["folder", &report.folder]),
        row([
            "memory",
            &format!(
                "{} of {}",
                format_size(report.memory_bytes),
                format_size(report.memory_capacity_bytes)
            ),
        ]),
        row(["disk", &disk]),
        row(["unit", &format_size(report.unit_bytes)]),
    ];
    push_lines(&mut out, &table(&head), "");
    if report.layers.is_empty() {
        out.push_str("\nno layers cached\n");
        return out;
    }
    out.push('\n');
    push_lines(
        &mut out,
        &table(&layer_rows(&report.layers, report.unit_bytes)),
        "",
    );
    out
}

/// A table of layers: digest, what is on disk (of the blob's size when known), what is in
/// memory, pinned.
fn layer_rows(layers: &[CachedLayer], unit: u64) -> Vec<Vec<String>> {
    let mut rows = vec![row(["LAYER", "UNITS", "ON DISK", "IN MEMORY", "PINNED"])];
    for l in layers {
        // Entry files hold a little more than the payload (a header and a CRC per 4 KiB);
        // the share is of units, whose payload is what the blob's bytes are.
        let payload = l.units.saturating_mul(unit);
        let cached = match l.size_bytes {
            Some(size) => cached_share(payload.min(size), Some(size)),
            None => format_size(l.bytes),
        };
        rows.push(row([
            &l.digest,
            &l.units.to_string(),
            &cached,
            &format_size(l.memory_bytes),
            if l.pinned { "yes" } else { "no" },
        ]));
    }
    rows
}

/// What a purge dropped, one line per layer.
fn format_purged(purged: &[CachedLayer]) -> String {
    purged
        .iter()
        .map(|l| {
            format!(
                "purged {} ({} units, {} on disk, {} in memory)\n",
                l.digest,
                l.units,
                format_size(l.bytes),
                format_size(l.memory_bytes)
            )
        })
        .collect()
}

/// A warm's report as text.
pub fn format_warm(report: &WarmReport) -> String {
    let mut out = format!("warmed {} in {:.1} s\n", report.image, report.seconds);
    if report.local_layers > 0 {
        out.push_str(&format!(
            "{} local layer(s) need no warming\n",
            report.local_layers
        ));
    }
    let mut rows = vec![row([
        "LAYER",
        "SIZE",
        "UNITS BEFORE",
        "UNITS NOW",
        "PINNED",
    ])];
    for l in &report.layers {
        let now = if l.cached_locally {
            format!("{} of {}", l.units_after, l.units_total)
        } else {
            "via the P2P proxy, not cached here".to_string()
        };
        rows.push(row([
            &l.digest,
            &format_size(l.size_bytes),
            &l.units_before.to_string(),
            &now,
            if l.pinned { "yes" } else { "no" },
        ]));
    }
    push_lines(&mut out, &table(&rows), "");
    out
}
