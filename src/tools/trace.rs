//! `trace`: prefetch traces (spec `trace-prefetch.md`).
//!
//! ```text
//! overlaybd-target trace inspect [--records] FILE
//! overlaybd-target trace attach [--to REFERENCE2] [--platform OS/ARCH[/VARIANT]]
//!                               [--plain-http HOST[:PORT]]... [--overlaybd-config FILE]
//!                               TRACE REFERENCE
//! ```
//!
//! `inspect` decodes a binary trace (or an acceleration layer tar holding one) and prints a
//! summary: records, reads per layer with their bytes, and the total; `--records` adds one
//! line per record. A file list (Dynamic mode) is named as such; a damaged trace is an error.
//!
//! `attach` packages TRACE as the acceleration layer of the image REFERENCE (§7): a tar with
//! the one file `trace`, appended as the last layer of its manifest, with its digest added to
//! the config's `diff_ids` and an `Acceleration Layer` history entry; then pushes the layer,
//! the new config and the new manifest (same flavour, Docker or OCI) to REFERENCE2, by default
//! REFERENCE's own tag. An acceleration layer the image already has is **replaced**: an image
//! carries at most one. The trace is checked first (a damaged trace, a file list or one naming
//! a layer the image does not have is refused before anything is pushed). Layers missing
//! from REFERENCE2's repository are mounted from REFERENCE's (same registry) or copied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use clap::{Args, Subcommand};

use super::progress::Progress;
use super::registry_args::{reference, RegistryArgs};
use super::ToolError;
use crate::prefetch::trace::{Op, TraceRecord};
use crate::prefetch::{self, TraceFile};
use crate::registry::acceleration::{self, MAX_LAYER_BLOB};
use crate::registry::push::BlobOutcome;
use crate::registry::{publish, ImageReference};

/// Arguments of `trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TraceCommand,
}

/// The `trace` subcommands.
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Decode a trace file (or an acceleration layer tar) and summarise it.
    Inspect(InspectArgs),
    /// Attach a trace to an image in a registry as its acceleration layer, and push it.
    Attach(AttachArgs),
}

/// Arguments of `trace inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Also print one line per record, in file (replay) order.
    #[arg(long)]
    pub records: bool,
    /// The trace: a binary trace file, or an acceleration layer tar holding `trace`.
    pub file: PathBuf,
}

/// Arguments of `trace attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Platform, plain-HTTP registries and settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Where to push the image with the trace: HOST[:PORT]/REPOSITORY[:TAG] (default:
    /// REFERENCE's own tag).
    #[arg(long, value_name = "REFERENCE")]
    pub to: Option<String>,
    /// The binary trace file (recorded with `recordTracePath`).
    pub trace: PathBuf,
    /// The image: HOST[:PORT]/REPOSITORY[:TAG|@DIGEST].
    pub reference: String,
}

/// Runs `trace`.
pub async fn run(a: TraceArgs) -> Result<(), ToolError> {
    match a.command {
        TraceCommand::Inspect(a) => inspect(a).await,
        TraceCommand::Attach(a) => attach(a).await,
    }
}

/// Reads the prefetch file at `path`: a trace or file list, or an acceleration layer tar
/// holding one. At most [`MAX_LAYER_BLOB`] bytes are read.
async fn read_trace_file(path: &Path) -> Result<TraceFile, ToolError> {
    let len = std::fs::metadata(path)
        .map_err(|e| ToolError::io(path, e))?
        .len();
    if len > MAX_LAYER_BLOB {
        return Err(ToolError::Usage(format!(
            "{}: {len} bytes, larger than any valid trace ({MAX_LAYER_BLOB} at most)",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| ToolError::io(path, e))?;
    let bad = |e: &dyn std::fmt::Display| {
        ToolError::Usage(format!("{}: not a valid trace: {e}", path.display()))
    };
    if crate::zfile::tar::is_tar_header(&bytes) {
        let inner = acceleration::extract_trace(&bytes).map_err(|e| bad(&e))?;
        return prefetch::parse(&inner).map_err(|e| bad(&e));
    }
    prefetch::parse(&bytes).map_err(|e| bad(&e))
}

/// The summary `inspect` prints for `records`: counts by op, then reads and bytes per layer.
pub fn summary(records: &[TraceRecord]) -> String {
    let (mut reads, mut writes, mut other) = (0usize, 0usize, 0usize);
    // layer → (reads, bytes)
    let mut layers: BTreeMap<u32, (usize, u64)> = BTreeMap::new();
    for r in records {
        match r.op {
            Op::Read => {
                reads += 1;
                let e = layers.entry(r.layer).or_default();
                e.0 += 1;
                e.1 = e.1.saturating_add(r.count);
            }
            Op::Write => writes += 1,
            Op::Other(_) => other += 1,
        }
    }
    let total: u64 = layers.values().fold(0, |t, l| t.saturating_add(l.1));
    let mut out = format!(
        "{} records: {reads} reads, {writes} writes, {other} other\n",
        records.len()
    );
    for (layer, (n, bytes)) in &layers {
        let _ = writeln!(out, "layer {layer}: {n} reads, {bytes} bytes");
    }
    let _ = writeln!(out, "total: {total} bytes read");
    out
}

/// One record as `inspect --records` prints it.
fn record_line(i: usize, r: &TraceRecord) -> String {
    let op = match r.op {
        Op::Read => "R".to_string(),
        Op::Write => "W".to_string(),
        Op::Other(b) => format!("0x{b:02x}"),
    };
    format!(
        "#{i} {op} layer {} offset {} count {}",
        r.layer, r.offset, r.count
    )
}

async fn inspect(a: InspectArgs) -> Result<(), ToolError> {
    let name = a.file.display();
    match read_trace_file(&a.file).await? {
        TraceFile::Empty => println!("{name}: empty (as recordTracePath: record here)"),
        TraceFile::FileList => {
            println!("{name}: a file list (Dynamic mode prefetch), not a binary trace")
        }
        TraceFile::Binary(records) => {
            print!("{name}: binary trace, {}", summary(&records));
            if a.records {
                for (i, r) in records.iter().enumerate() {
                    println!("{}", record_line(i, r));
                }
            }
        }
    }
    Ok(())
}

/// The destination of `attach`: `--to`, else REFERENCE's tag ([`publish::destination`]).
fn destination(source: &ImageReference, to: Option<&str>) -> Result<ImageReference, ToolError> {
    let to = to.map(reference).transpose()?;
    publish::destination(source, to).map_err(|e| ToolError::Usage(e.to_string()))
}

async fn attach(a: AttachArgs) -> Result<(), ToolError> {
    let records = match read_trace_file(&a.trace).await? {
        TraceFile::Binary(records) => records,
        TraceFile::Empty => {
            return Err(ToolError::Usage(format!(
                "{}: the trace is empty; record one first",
                a.trace.display()
            )))
        }
        TraceFile::FileList => {
            return Err(ToolError::Usage(format!(
                "{}: a file list (Dynamic mode), which this target does not replay; attach \
                 takes a binary trace",
                a.trace.display()
            )))
        }
    };
    let source = reference(&a.reference)?;
    let dest = destination(&source, a.to.as_deref())?;
    let platform = a.registry.platform()?;
    let client = a.registry.client()?;
    let progress: Arc<OnceLock<Progress>> = Arc::default();
    let shown = Arc::clone(&progress);
    let what = format!("push {dest}");
    let published = publish::publish(
        &client,
        &records,
        &source,
        &dest,
        a.to.is_some(),
        &platform,
        &a.registry.plain_http,
        Arc::new(move |done, total| {
            shown
                .get_or_init(|| Progress::new(what.clone(), total))
                .set(done)
        }),
    )
    .await
    .map_err(|e| ToolError::Usage(format!("{}: {e}", a.trace.display())))?;
    if let Some(p) = progress.get() {
        p.finish();
    }
    let outcome = |digest: &str| {
        published
            .blobs
            .iter()
            .find(|p| p.blob.digest == digest)
            .map(|p| match &p.outcome {
                BlobOutcome::Present => "already present".to_string(),
                BlobOutcome::Mounted { from } => format!("mounted from {from}"),
                BlobOutcome::Uploaded => "uploaded".to_string(),
            })
            .unwrap_or_default()
    };
    let (layer, config) = (&published.layer, &published.config);
    println!(
        "trace layer {} ({} bytes, {} records): {}",
        layer.digest,
        layer.size,
        records.len(),
        outcome(&layer.digest)
    );
    if let Some(old) = &published.replaced {
        println!("replaced trace layer {}", old.digest);
    }
    println!(
        "config {} ({} bytes): {}",
        config.digest,
        config.size,
        outcome(&config.digest)
    );
    let pinned = &published.pinned;
    println!("pushed {pinned}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::trace;

    #[test]
    fn the_summary_counts_reads_per_layer() {
        let mut w = TraceRecord::read(0, 0, 100);
        w.op = Op::Write;
        let records = [
            TraceRecord::read(1, 0, 4096),
            TraceRecord::read(0, 8192, 512),
            TraceRecord::read(1, 4096, 4096),
            w,
        ];
        assert_eq!(
            summary(&records),
            "4 records: 3 reads, 1 writes, 0 other\n\
             layer 0: 1 reads, 512 bytes\n\
             layer 1: 2 reads, 8192 bytes\n\
             total: 8704 bytes read\n"
        );
        assert_eq!(
            record_line(3, &records[1]),
            "#3 R layer 0 offset 8192 count 512"
        );
    }

    #[tokio::test]
    async fn inspect_reads_traces_and_layer_tars_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![TraceRecord::read(0, 0, 4096)];
        let plain = dir.path().join("trace");
        std::fs::write(&plain, trace::encode(&records)).unwrap();
        let tar = dir.path().join("layer.tar");
        std::fs::write(&tar, acceleration::layer_tar(&trace::encode(&records))).unwrap();
        for path in [&plain, &tar] {
            assert_eq!(
                read_trace_file(path).await.unwrap(),
                TraceFile::Binary(records.clone())
            );
        }
        let list = dir.path().join("list");
        std::fs::write(&list, b"/usr/bin/containerd\n").unwrap();
        assert_eq!(read_trace_file(&list).await.unwrap(), TraceFile::FileList);
        let mut damaged = trace::encode(&records);
        damaged[40] ^= 1;
        std::fs::write(&plain, damaged).unwrap();
        let e = read_trace_file(&plain).await.unwrap_err().to_string();
        assert!(
            e.contains("not a valid trace") && e.contains("checksum"),
            "{e}"
        );
        assert!(read_trace_file(&dir.path().join("missing")).await.is_err());
    }

    #[test]
    fn the_destination_is_a_tag() {
        let r = |t: &str| reference(t).unwrap();
        let d = format!("sha256:{}", "a".repeat(64));
        let src = r(&format!("reg.example/app:v1@{d}"));
        let dest = destination(&src, None).unwrap();
        assert_eq!(dest.to_string(), "reg.example/app:v1");
        assert!(destination(&r(&format!("reg.example/app@{d}")), None).is_err());
        let to = destination(&src, Some("reg.example/other:v2")).unwrap();
        assert_eq!(to.to_string(), "reg.example/other:v2");
        let e = destination(&src, Some(&format!("reg.example/other@{d}")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("name a tag"), "{e}");
    }
}
