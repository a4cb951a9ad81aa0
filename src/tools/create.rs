//! `create`: a new writable layer, like `overlaybd-create`.
//!
//! ```text
//! overlaybd-target create [--append] [-u PARENT_UUID] [--uuid UUID] DATA INDEX SIZE
//! ```
//!
//! Unlike `overlaybd-create`, the default is the sparse layout (`-s` there, spec `lsmt.md` §7):
//! data is stored in place, so the data file never exceeds SIZE plus its 4 KiB header whatever
//! the overwrite pattern, while an append layer grows with every overwrite. Both layouts are
//! read by the reference daemon and its snapshotter (`writableLayerType: sparse`). `--append`
//! makes the reference's default append-only layout (§6); `-s` is accepted and changes nothing.

use std::path::PathBuf;

use clap::Args;

use super::{parse_uuid, ToolError};
use crate::block::parse_size;
use crate::overlaybd::header::LayerUuid;
use crate::overlaybd::writable::{CreateOptions, WritableLayer};

/// Arguments of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The data file to create (must not exist).
    pub data: PathBuf,
    /// The index file to create (must not exist).
    pub index: PathBuf,
    /// Virtual size: bytes or with a K/M/G/T suffix (a multiple of 512).
    pub size: String,
    /// Parent layer UUID stored in the headers.
    #[arg(short = 'u', long = "parent-uuid", value_parser = parse_uuid)]
    pub parent_uuid: Option<LayerUuid>,
    /// The layer's own UUID (default: random).
    #[arg(long, value_parser = parse_uuid)]
    pub uuid: Option<LayerUuid>,
    /// Sparse layer: data stored in place, no index log (the default; kept for
    /// `overlaybd-create -s` command lines).
    #[arg(short = 's', long, conflicts_with = "append")]
    pub sparse: bool,
    /// Append-only layer (`overlaybd-create` without `-s`): every write appends to the data
    /// file, so it grows without bound under overwrites until committed.
    #[arg(long)]
    pub append: bool,
}

/// Runs `create`.
pub fn run(a: CreateArgs) -> Result<(), ToolError> {
    let size = parse_size(&a.size).map_err(|e| ToolError::Usage(format!("SIZE: {e}")))?;
    if size == 0 || size % 512 != 0 {
        return Err(ToolError::Usage(format!(
            "SIZE {size}: the virtual size must be a non-zero multiple of 512 bytes"
        )));
    }
    let mut opts = CreateOptions::new(size);
    opts.parent_uuid = a.parent_uuid.unwrap_or_else(LayerUuid::nil);
    opts.uuid = a.uuid.and_then(|u| u.to_uuid());
    opts.sparse = !a.append;
    let layer = WritableLayer::create(&a.data, &a.index, &opts)?;
    println!(
        "created {} writable layer {} + {} (virtual size {size}, uuid {})",
        if opts.sparse { "sparse" } else { "append-only" },
        a.data.display(),
        a.index.display(),
        layer.header().uuid
    );
    Ok(())
}
