//! `inspect`: describe a layer blob (tar wrapper, ZFile fields, LSMT header and index), a
//! writable layer file, or an image config (each layer, the UUID chain, the image size).
//!
//! ```text
//! overlaybd-target inspect PATH
//! ```
//!
//! Output is one `key: value` per line, layers of a config prefixed by `lowers[i].`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::{is_config, ToolError};
use crate::block::BlockDevice;
use crate::cache::file::FileSource;
use crate::overlaybd::config::LayerLocation;
use crate::overlaybd::header::{is_lsmt_header, LayerUuid, LsmtHeader, HEADER_SIZE};
use crate::overlaybd::layer::read;
use crate::overlaybd::stack::uuid_chain_break;
use crate::overlaybd::{Image, ImageConfig, LocalOpener, LsmtError, SealedLayer};
use crate::source::LayerSource;
use crate::zfile::{open_payload, Algorithm, BlobFormat, ZFileReader};

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A layer blob, a writable data or index file, or a config.v1.json.
    pub path: PathBuf,
}

/// Runs `inspect`, printing the report.
pub async fn run(a: InspectArgs) -> Result<(), ToolError> {
    let (lines, layer) = if is_config(&a.path)? {
        (inspect_config(&a.path).await?, true)
    } else {
        let report = inspect_blob(&a.path).await?;
        (report.lines, report.known_format)
    };
    for (key, value) in lines {
        println!("{key}: {value}");
    }
    if !layer {
        // What was found is printed; the exit status tells a script it was no image.
        return Err(LsmtError::Corrupt {
            file: a.path.display().to_string(),
            reason: "not an overlaybd layer (ZFile or LSMT) nor an image config".into(),
        }
        .into());
    }
    Ok(())
}

/// A report: ordered `key: value` pairs.
type Lines = Vec<(String, String)>;

/// What inspecting one blob found.
struct BlobReport {
    lines: Lines,
    /// UUID and parent UUID, for chain checks (none for files that are not LSMT).
    uuids: Option<(LayerUuid, LayerUuid)>,
    /// Whether the file is a ZFile or an LSMT file (whatever a ZFile holds).
    known_format: bool,
}

fn push(lines: &mut Lines, key: &str, value: impl ToString) {
    lines.push((key.to_string(), value.to_string()));
}

async fn inspect_blob(path: &Path) -> Result<BlobReport, ToolError> {
    let mut lines = Lines::new();
    let zerr = |source| ToolError::ZFile {
        path: path.to_path_buf(),
        source,
    };
    let file = FileSource::open(path)
        .await
        .map_err(|e| ToolError::io(path, e))?;
    push(&mut lines, "file_size", file.size());
    let payload = open_payload(Arc::new(file)).await.map_err(zerr)?;
    if let Some(off) = payload.tar_offset {
        push(&mut lines, "tar_payload_offset", off);
    }
    let lsmt: Arc<dyn LayerSource> = match payload.format {
        BlobFormat::ZFile => {
            let reader = ZFileReader::open(payload.source).await.map_err(zerr)?;
            let info = reader.info();
            push(&mut lines, "format", "zfile");
            let algorithm = match info.algorithm {
                Algorithm::Lz4 => "lz4",
                Algorithm::Zstd => "zstd",
            };
            push(&mut lines, "zfile.algorithm", algorithm);
            push(&mut lines, "zfile.block_size", info.block_size);
            push(&mut lines, "zfile.blocks", info.block_count);
            push(&mut lines, "zfile.verify", info.verify);
            push(
                &mut lines,
                "zfile.original_file_size",
                info.original_file_size,
            );
            push(&mut lines, "zfile.legacy_header", info.legacy);
            Arc::new(reader)
        }
        BlobFormat::Lsmt => {
            push(&mut lines, "format", "lsmt");
            payload.source
        }
        BlobFormat::Unknown => {
            push(&mut lines, "format", "unknown (neither ZFile nor LSMT)");
            return Ok(BlobReport {
                lines,
                uuids: None,
                known_format: false,
            });
        }
    };
    let name = path.display().to_string();
    let head_len = lsmt.size().min(HEADER_SIZE as u64) as usize;
    let head = read(&*lsmt, 0, head_len).await?;
    if !is_lsmt_header(&head) {
        push(
            &mut lines,
            "lsmt.kind",
            "none (the payload is not an LSMT layer)",
        );
        return Ok(BlobReport {
            lines,
            uuids: None,
            known_format: true,
        });
    }
    let header = LsmtHeader::decode(&head, &name)?;
    let uuids = Some((header.uuid, header.parent_uuid));
    if header.is_sealed() {
        let layer = SealedLayer::open(lsmt).await?;
        push(&mut lines, "lsmt.kind", "sealed");
        describe_header(&mut lines, &layer.layout().header);
        let records = layer.records();
        let data: u64 = records
            .iter()
            .filter(|r| !r.zeroed)
            .map(|r| u64::from(r.length) * 512)
            .sum();
        push(
            &mut lines,
            "lsmt.index_records_stored",
            layer.layout().trailer.index_size,
        );
        push(&mut lines, "lsmt.extents", records.len());
        push(&mut lines, "lsmt.mapped_bytes", data);
    } else {
        let kind = match (header.is_data(), header.is_sparse()) {
            (true, true) => "writable data (sparse)",
            (true, false) => "writable data",
            (false, _) => "writable index",
        };
        push(&mut lines, "lsmt.kind", kind);
        describe_header(&mut lines, &header);
    }
    Ok(BlobReport {
        lines,
        uuids,
        known_format: true,
    })
}

fn describe_header(lines: &mut Lines, h: &LsmtHeader) {
    push(lines, "lsmt.virtual_size", h.virtual_size);
    push(lines, "lsmt.uuid", h.uuid);
    push(lines, "lsmt.parent_uuid", h.parent_uuid);
    push(
        lines,
        "lsmt.version",
        format!("{}.{}", h.version, h.sub_version),
    );
    if !h.user_tag.is_empty() {
        push(lines, "lsmt.user_tag", String::from_utf8_lossy(&h.user_tag));
    }
}

async fn inspect_config(path: &Path) -> Result<Lines, ToolError> {
    let config = ImageConfig::load(path)?;
    let name = path.display().to_string();
    let mut lines = Lines::new();
    let lowers = config.data_lowers();
    push(&mut lines, "config.lowers", lowers.len());
    let mut chain = Vec::with_capacity(lowers.len());
    for i in 0..lowers.len() {
        let prefix = format!("lowers[{i}]");
        let location = config.locate(i, &name)?;
        let LayerLocation::Local(file) = location else {
            push(&mut lines, &format!("{prefix}.location"), "registry blob");
            chain.push(None);
            continue;
        };
        push(&mut lines, &format!("{prefix}.file"), file.display());
        let report = inspect_blob(&file).await?;
        for (k, v) in report.lines {
            lines.push((format!("{prefix}.{k}"), v));
        }
        chain.push(report.uuids);
    }
    push(
        &mut lines,
        "uuid_chain",
        uuid_chain_break(&chain).unwrap_or_else(|| "ok".into()),
    );
    if let Some(u) = config.writable() {
        push(&mut lines, "upper.data", &u.data);
        push(&mut lines, "upper.index", &u.index);
    }
    let image = Image::open(&config, &name, &LocalOpener).await?;
    push(&mut lines, "image.virtual_size", image.size());
    push(&mut lines, "image.read_only", image.read_only());
    Ok(lines)
}
