//! A sealed, read-only LSMT layer: committed blob or sealed-in-place file (spec `lsmt.md` §5).
//!
//! [`SealedLayout`] validates header, trailer and index from bytes alone (sans-IO, fuzzable);
//! [`SealedLayer::open`] drives it over a [`LayerSource`].

use std::sync::Arc;

use bytes::Bytes;

use super::error::{LsmtError, LsmtResult};
use super::header::{LsmtHeader, HEADER_SIZE};
use super::index::{check_sorted_disjoint, decode_records, Record, RECORD_SIZE, SECTOR};
use crate::source::LayerSource;

/// The reference's limit on stored records (padding included) in one read-only layer.
pub const MAX_SEALED_RECORDS: u64 = 1_000_000;
/// First sector of the data area (just after the header).
pub const DATA_START_SECTOR: u64 = (HEADER_SIZE as u64) / SECTOR;

/// Header and trailer of a sealed file, checked against each other and against the file size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedLayout {
    /// The header at offset 0 (its index fields are placeholders).
    pub header: LsmtHeader,
    /// The trailer at `size − 4096`: the authority for index location and virtual size.
    pub trailer: LsmtHeader,
    /// Size of the whole file in bytes.
    pub size: u64,
}

impl SealedLayout {
    /// Checks the header (first 4096 bytes), the trailer (last 4096 bytes) and the index bounds
    /// (steps 1–3 of §5.2).
    pub fn parse(head: &[u8], tail: &[u8], size: u64, file: &str) -> LsmtResult<Self> {
        let min = 2 * HEADER_SIZE as u64;
        if size < min {
            return Err(LsmtError::corrupt(
                file,
                format!("file size {size} is below the minimum {min} of a sealed LSMT layer"),
            ));
        }
        let header = LsmtHeader::decode(head, file)?;
        if !header.is_header() || !header.is_data() {
            return Err(LsmtError::corrupt(
                file,
                format!(
                    "header flags {:#x}: not the header of an LSMT data file",
                    header.flags
                ),
            ));
        }
        let trailer = LsmtHeader::decode(tail, file).map_err(|e| match e {
            LsmtError::Corrupt { file, reason } => {
                LsmtError::corrupt(file, format!("trailer: {reason} (the layer is not sealed)"))
            }
            other => other,
        })?;
        if trailer.is_header() || !trailer.is_data() || !trailer.is_sealed() {
            return Err(LsmtError::corrupt(
                file,
                format!(
                    "trailer flags {:#x}: not the trailer of a sealed data file",
                    trailer.flags
                ),
            ));
        }
        if trailer.index_size > MAX_SEALED_RECORDS {
            return Err(LsmtError::corrupt(
                file,
                format!(
                    "trailer index_size {} exceeds the limit {MAX_SEALED_RECORDS}",
                    trailer.index_size
                ),
            ));
        }
        let room = (size - HEADER_SIZE as u64)
            .checked_sub(trailer.index_offset)
            .ok_or_else(|| {
                LsmtError::corrupt(
                    file,
                    format!(
                        "trailer index_offset {} lies beyond the trailer",
                        trailer.index_offset
                    ),
                )
            })?;
        // index_size ≤ 1e6, so the product cannot overflow.
        if trailer.index_size * RECORD_SIZE as u64 > room {
            return Err(LsmtError::corrupt(
                file,
                format!(
                    "trailer index_size {} records at index_offset {} overlap the trailer",
                    trailer.index_size, trailer.index_offset
                ),
            ));
        }
        Ok(SealedLayout {
            header,
            trailer,
            size,
        })
    }

    /// Byte offset and byte length of the stored index.
    pub fn index_range(&self) -> (u64, usize) {
        // Bounded by MAX_SEALED_RECORDS · 16 in `parse`.
        (
            self.trailer.index_offset,
            (self.trailer.index_size as usize) * RECORD_SIZE,
        )
    }

    /// Decodes and validates the index bytes (steps 4–5 of §5.2). Padding is dropped and every
    /// tag is reset to 0, since stored tags of normal layers carry no meaning.
    pub fn parse_index(&self, bytes: &[u8], file: &str) -> LsmtResult<Vec<Record>> {
        let (_, len) = self.index_range();
        if bytes.len() != len {
            return Err(LsmtError::corrupt(
                file,
                format!("index is {} bytes, expected {len}", bytes.len()),
            ));
        }
        let mut records = decode_records(bytes);
        let data_end = self.trailer.index_offset / SECTOR;
        for (i, r) in records.iter_mut().enumerate() {
            r.tag = 0;
            if r.length == 0 {
                return Err(LsmtError::corrupt(
                    file,
                    format!("index record {i} at sector {} has length 0", r.offset),
                ));
            }
            if !r.mapped_within(DATA_START_SECTOR, data_end) {
                return Err(LsmtError::corrupt(
                    file,
                    format!(
                        "index record {i} (offset {}, length {}, moffset {}) points outside the data area [8, {data_end})",
                        r.offset, r.length, r.moffset
                    ),
                ));
            }
        }
        if let Err(i) = check_sorted_disjoint(&records) {
            return Err(LsmtError::corrupt(
                file,
                format!(
                    "index records {i} and {} overlap or are out of order",
                    i + 1
                ),
            ));
        }
        Ok(records)
    }
}

/// An opened sealed layer: its layout, its validated index and the bytes it reads data from.
pub struct SealedLayer {
    source: Arc<dyn LayerSource>,
    layout: SealedLayout,
    records: Arc<[Record]>,
}

impl std::fmt::Debug for SealedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedLayer")
            .field("source", &self.source.describe())
            .field("virtual_size", &self.virtual_size())
            .field("records", &self.records.len())
            .finish()
    }
}

impl SealedLayer {
    /// Opens and validates the sealed layer stored in `source` (already decompressed).
    pub async fn open(source: Arc<dyn LayerSource>) -> LsmtResult<Self> {
        let name = source.describe();
        let size = source.size();
        if size < 2 * HEADER_SIZE as u64 {
            return Err(LsmtError::corrupt(
                &name,
                format!("file size {size} is too small for a sealed LSMT layer"),
            ));
        }
        let head = read(&*source, 0, HEADER_SIZE).await?;
        let tail = read(&*source, size - HEADER_SIZE as u64, HEADER_SIZE).await?;
        let layout = SealedLayout::parse(&head, &tail, size, &name)?;
        let (off, len) = layout.index_range();
        let bytes = read(&*source, off, len).await?;
        let records = layout.parse_index(&bytes, &name)?;
        Ok(SealedLayer {
            source,
            layout,
            records: records.into(),
        })
    }

    /// The header and trailer.
    pub fn layout(&self) -> &SealedLayout {
        &self.layout
    }

    /// The layer's virtual size in bytes (from the trailer).
    pub fn virtual_size(&self) -> u64 {
        self.layout.trailer.virtual_size
    }

    /// The validated index, sorted, without padding, tags 0.
    pub fn records(&self) -> &Arc<[Record]> {
        &self.records
    }

    /// The bytes of the layer file.
    pub fn source(&self) -> &Arc<dyn LayerSource> {
        &self.source
    }
}

/// Reads exactly `len` bytes at `offset` of a layer's bytes, naming the source in errors: the
/// one read helper of the LSMT code (layer open, stack and image reads).
pub(crate) async fn read(source: &dyn LayerSource, offset: u64, len: usize) -> LsmtResult<Bytes> {
    source
        .read_exact_at(offset, len)
        .await
        .map_err(|e| LsmtError::source(source.describe(), e))
}
