//! `merge`: flatten an image into one committed layer, like `overlaybd-merge`.
//!
//! ```text
//! overlaybd-target merge [-z [--algorithm lz4|zstd] [--bs KB]] [-f] CONFIG OUTPUT
//! ```

use std::path::PathBuf;

use clap::Args;

use super::{open_config, remove_existing, write_layer, OutputArgs, ToolError};
use crate::overlaybd::commit::{CommitOptions, CommitSource};

/// Arguments of `merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The image's config.v1.json (local layers; its writable layer, if any, is included).
    pub config: PathBuf,
    /// The merged layer blob to write.
    pub output: PathBuf,
    /// Output format options.
    #[command(flatten)]
    pub out: OutputArgs,
    /// Replace an existing OUTPUT.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Runs `merge`.
pub async fn run(a: MergeArgs) -> Result<(), ToolError> {
    let zfile = a.out.zfile_options()?;
    let image = open_config(&a.config).await?;
    let source = CommitSource::from_stack(image.stack(), image.upper())?;
    if a.force {
        remove_existing(&a.output)?;
    }
    let summary = write_layer(&source, &CommitOptions::default(), &a.output, zfile).await?;
    println!(
        "merged {} layers: {} records, {} data bytes into {}",
        image.stack().len() + usize::from(image.upper().is_some()),
        summary.records,
        summary.data_sectors * 512,
        a.output.display()
    );
    Ok(())
}
