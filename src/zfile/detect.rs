//! What a layer blob is (image-config.md §7, zfile.md §3, lsmt.md §3): an optional tar wrapper
//! around a ZFile or a plain LSMT file.

use std::sync::Arc;

use super::error::ZFileError;
use super::header::{parse_header, STRUCT_SIZE};
use super::reader::ZFileReader;
use super::tar::{locate_payload, PREFIX_LEN};
use super::view::RangeView;
use crate::source::LayerSource;

/// LSMT `magic0` ‖ `magic1` (lsmt.md §3); checked here only to name the format.
const LSMT_MAGIC: [u8; 24] = [
    0x4C, 0x53, 0x4D, 0x54, 0x00, 0x01, 0x02, 0x00, 0x65, 0x7E, 0x63, 0xD2, 0x94, 0x44, 0x08, 0x4C,
    0xA2, 0xD2, 0xC8, 0xEC, 0x4F, 0xCF, 0xAE, 0x8A,
];
/// Offset of the LSMT u32 flags field; bit 0 marks a header.
const LSMT_FLAGS: usize = 28;

/// Format of a (tar-unwrapped) payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobFormat {
    /// A ZFile; read it through [`ZFileReader`].
    ZFile,
    /// An uncompressed LSMT file.
    Lsmt,
    /// Neither; the reference would still try it as LSMT and fail there.
    Unknown,
}

/// Names the format from the payload's first bytes (512 suffice). A ZFile header whose digest
/// does not verify is an error, not "unknown", as in the reference.
pub fn detect_format(prefix: &[u8]) -> Result<BlobFormat, ZFileError> {
    match parse_header(prefix) {
        Ok(_) => return Ok(BlobFormat::ZFile),
        Err(ZFileError::NotZFile(_) | ZFileError::Truncated { .. }) => {}
        Err(e) => return Err(e),
    }
    let lsmt = prefix.get(..LSMT_MAGIC.len()) == Some(&LSMT_MAGIC[..])
        && prefix.get(LSMT_FLAGS).is_some_and(|flags| flags & 1 == 1);
    Ok(if lsmt {
        BlobFormat::Lsmt
    } else {
        BlobFormat::Unknown
    })
}

/// A layer blob with any tar wrapper removed.
pub struct Payload {
    /// The payload bytes (the blob itself, or a window of it when tar-wrapped).
    pub source: Arc<dyn LayerSource>,
    /// What the payload is.
    pub format: BlobFormat,
    /// Offset of the payload in the blob when it was tar-wrapped.
    pub tar_offset: Option<u64>,
}

impl Payload {
    /// The uncompressed stream: the payload itself, or a [`ZFileReader`] over it for a ZFile.
    pub async fn decompressed(self) -> Result<Arc<dyn LayerSource>, ZFileError> {
        Ok(match self.format {
            BlobFormat::ZFile => Arc::new(ZFileReader::open(self.source).await?),
            BlobFormat::Lsmt | BlobFormat::Unknown => self.source,
        })
    }
}

/// Unwraps a tar wrapper if present and detects the payload's format.
pub async fn open_payload(blob: Arc<dyn LayerSource>) -> Result<Payload, ZFileError> {
    let prefix_len = blob.size().min(PREFIX_LEN as u64) as usize;
    let prefix = blob.read_exact_at(0, prefix_len).await?;
    let (source, tar_offset): (Arc<dyn LayerSource>, _) =
        match locate_payload(&prefix, blob.size())? {
            Some(p) => (
                Arc::new(RangeView::new(blob, p.offset, p.size)?),
                Some(p.offset),
            ),
            None => (blob, None),
        };
    let head_len = source.size().min(STRUCT_SIZE as u64) as usize;
    let head = source.read_exact_at(0, head_len).await?;
    let format = detect_format(&head)?;
    Ok(Payload {
        source,
        format,
        tar_offset,
    })
}
