//! `build`: an ext4 filesystem made from a directory tree (`mkfs.ext4 -d`), imported as a new
//! layer on top of a base image (or as a base layer of its own).
//!
//! ```text
//! overlaybd-target build [-z [--algorithm lz4|zstd] [--bs KB]] [--base CONFIG] [--size SIZE]
//!                        [-m TAG] [-f] DIR LAYER_OUT CONFIG_OUT
//! ```
//!
//! The filesystem spans the base image's virtual size, or `--size` without a base.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;

use super::import::{import, ImportArgs, NewLayerArgs};
use super::{open_config, ToolError};
use crate::block::parse_size;
use crate::block::BlockDevice;

/// Arguments of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The directory tree to put into the filesystem.
    pub dir: PathBuf,
    /// The sealed layer to write.
    pub layer: PathBuf,
    /// The config.v1.json to write.
    pub config: PathBuf,
    /// Filesystem size without a base (e.g. 64M); with a base it must equal the base's size.
    #[arg(long)]
    pub size: Option<String>,
    /// Base image, format and metadata of the new layer.
    #[command(flatten)]
    pub layer_opts: NewLayerArgs,
}

/// Runs `build`.
pub async fn run(a: BuildArgs) -> Result<(), ToolError> {
    if !a.dir.is_dir() {
        return Err(ToolError::Usage(format!(
            "{} is not a directory",
            a.dir.display()
        )));
    }
    let base_size = match &a.layer_opts.base {
        Some(path) => Some(open_config(path).await?.size()),
        None => None,
    };
    let wanted = match &a.size {
        Some(text) => Some(parse_size(text).map_err(|e| ToolError::Usage(format!("--size: {e}")))?),
        None => None,
    };
    let size = match (base_size, wanted) {
        (Some(b), Some(w)) if b != w => {
            return Err(ToolError::Usage(format!(
                "--size {w} differs from the base image's size {b}"
            )))
        }
        (Some(b), _) => b,
        (None, Some(w)) => w,
        (None, None) => {
            return Err(ToolError::Usage(
                "give --size for a build without --base".into(),
            ))
        }
    };
    if size < (1 << 20) || size % 4096 != 0 {
        return Err(ToolError::Usage(format!(
            "size {size}: must be at least 1 MiB and a multiple of 4096"
        )));
    }
    let mut raw_name = a.layer.as_os_str().to_owned();
    raw_name.push(".build-raw");
    let raw = PathBuf::from(raw_name);
    let tracked = super::interrupt::Partial::track(&raw);
    let result = build(&a, &raw, size).await;
    drop(tracked);
    let _ = std::fs::remove_file(&raw);
    let summary = result?;
    println!(
        "{}: built from {}, {} bytes written relative to the base; config {}",
        a.layer.display(),
        a.dir.display(),
        summary.written,
        a.config.display()
    );
    Ok(())
}

async fn build(
    a: &BuildArgs,
    raw: &std::path::Path,
    size: u64,
) -> Result<crate::overlaybd::raw::RawSummary, ToolError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(raw)
        .map_err(|e| ToolError::io(raw, e))?;
    file.set_len(size).map_err(|e| ToolError::io(raw, e))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&a.dir)
        .arg(raw)
        .output()
        .map_err(|e| ToolError::Usage(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(ToolError::Usage(format!(
            "mkfs.ext4 -d {} failed: {}",
            a.dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    import(&ImportArgs {
        raw: raw.to_path_buf(),
        layer: a.layer.clone(),
        config: a.config.clone(),
        layer_opts: a.layer_opts.clone(),
    })
    .await
}
