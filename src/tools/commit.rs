//! `commit`: seal a writable layer into a committed blob, like `overlaybd-commit`.
//!
//! ```text
//! overlaybd-target commit [-z [--algorithm lz4|zstd] [--bs KB]] [-m TAG] [--uuid UUID]
//!                         [-p PARENT_UUID] [-f] DATA INDEX OUTPUT
//! ```

use std::path::PathBuf;

use clap::Args;

use super::{parse_uuid, remove_existing, write_layer, OutputArgs, ToolError};
use crate::overlaybd::commit::{CommitOptions, CommitSource};
use crate::overlaybd::header::LayerUuid;
use crate::overlaybd::WritableLayer;

/// Arguments of `commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The writable layer's data file.
    pub data: PathBuf,
    /// The writable layer's index file.
    pub index: PathBuf,
    /// The sealed blob to write (must not exist unless -f).
    pub output: PathBuf,
    /// Output format options.
    #[command(flatten)]
    pub out: OutputArgs,
    /// Commit message stored as the user tag (at most 256 bytes).
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// UUID of the committed layer (default: all zeros, as the reference).
    #[arg(long, value_parser = parse_uuid)]
    pub uuid: Option<LayerUuid>,
    /// Parent UUID (default: the writable layer's).
    #[arg(short = 'p', long = "parent-uuid", value_parser = parse_uuid)]
    pub parent_uuid: Option<LayerUuid>,
    /// Replace an existing OUTPUT.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Runs `commit`.
pub async fn run(a: CommitArgs) -> Result<(), ToolError> {
    let zfile = a.out.zfile_options()?;
    let layer = WritableLayer::open(&a.data, &a.index)?;
    let opts = CommitOptions {
        uuid: a.uuid,
        parent_uuid: a.parent_uuid,
        user_tag: a.message.unwrap_or_default().into_bytes(),
    };
    if a.force {
        remove_existing(&a.output)?;
    }
    let summary = write_layer(
        &CommitSource::from_writable(&layer),
        &opts,
        &a.output,
        zfile,
    )
    .await?;
    println!(
        "committed {} records, {} data bytes into {}",
        summary.records,
        summary.data_sectors * 512,
        a.output.display()
    );
    Ok(())
}
