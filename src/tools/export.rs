//! `export`: the virtual disk of an image as a sparse raw file.
//!
//! ```text
//! overlaybd-target export [-f] [--overlaybd-config FILE] [--cache-dir DIR] SOURCE OUTPUT.raw
//! # SOURCE: config.v1.json (lowers local or in a registry) or a layer blob
//! ```

use std::path::PathBuf;

use clap::Args;

use super::progress::Progress;
use super::registry_args::CacheArgs;
use super::{open_image_with, remove_existing, removing_partial_output, ToolError};
use crate::block::BlockDevice;
use crate::overlaybd::raw::export_sparse;

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// An image config (config.v1.json) or a single sealed layer blob.
    pub source: PathBuf,
    /// The raw file to write (must not exist unless -f).
    pub output: PathBuf,
    /// Replace an existing OUTPUT.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Settings and cache folder for lowers that are registry blobs.
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Runs `export`.
pub async fn run(a: ExportArgs) -> Result<(), ToolError> {
    let image = open_image_with(&a.source, &a.cache).await?;
    if a.force {
        remove_existing(&a.output)?;
    }
    let progress = Progress::new(format!("export {}", a.output.display()), image.size());
    let summary = removing_partial_output(&a.output, async {
        Ok(export_sparse(&image, &a.output, &|n| progress.set(n)).await?)
    })
    .await?;
    progress.finish();
    println!(
        "exported {} bytes ({} bytes of data) to {}",
        image.size(),
        summary.written,
        a.output.display()
    );
    Ok(())
}
