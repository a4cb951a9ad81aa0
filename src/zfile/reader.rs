//! Random-access reads through a ZFile (zfile.md §9.1, §9.2): the reader opens any
//! [`LayerSource`] holding a ZFile and is itself a [`LayerSource`] of the uncompressed stream.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;

use super::codec::decode_block;
use super::error::ZFileError;
use super::header::{flag, parse_header, parse_trailer, ZFileInfo, STRUCT_SIZE};
use super::jump_table::{JumpTable, JumpTableBuilder, ENTRY_LEN};
use crate::source::{LayerSource, SourceResult, Span};

/// The jump table is fetched in pieces of this size, so a huge table never needs one huge read.
const TABLE_PIECE: u64 = 1 << 20;
/// A read is split across cores only when every piece gets at least this many uncompressed
/// bytes: handing a piece to a blocking thread costs a few microseconds, decoding 128 KiB of
/// LZ4 some 40. So a 1 MiB read splits in two on two cores, for 4 KiB and 32 KiB blocks alike.
const PARALLEL_MIN_PIECE: u64 = 128 << 10;

/// What is needed to decode: the validated description and the block offsets. Shared with
/// blocking decode tasks.
#[derive(Debug)]
struct Layout {
    info: ZFileInfo,
    table: JumpTable,
}

/// A ZFile opened for random access; reads return uncompressed bytes.
pub struct ZFileReader {
    source: Arc<dyn LayerSource>,
    layout: Arc<Layout>,
    /// Most blocking threads one read is split across; 1 decodes every read inline.
    workers: u64,
}

impl std::fmt::Debug for ZFileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZFileReader")
            .field("source", &self.source.describe())
            .field("info", &self.layout.info)
            .finish()
    }
}

impl ZFileReader {
    /// Opens the ZFile stored in `source`: reads and validates the header (and the trailer
    /// unless the header already holds the index fields), then loads and checks the jump table.
    pub async fn open(source: Arc<dyn LayerSource>) -> Result<ZFileReader, ZFileError> {
        let size = source.size();
        let struct_len = STRUCT_SIZE as u64;
        if size < struct_len {
            return Err(ZFileError::Truncated {
                what: "header",
                needed: struct_len,
                size,
            });
        }
        let header = parse_header(&source.read_exact_at(0, STRUCT_SIZE).await?)?;
        let overwrite = header.has(flag::HEADER_OVERWRITE);
        let used = if overwrite {
            header
        } else {
            if !header.has(flag::DATA) {
                return Err(ZFileError::Corrupt("header lacks the data flag".into()));
            }
            if size < 2 * struct_len {
                return Err(ZFileError::Truncated {
                    what: "trailer",
                    needed: 2 * struct_len,
                    size,
                });
            }
            let trailer =
                parse_trailer(&source.read_exact_at(size - struct_len, STRUCT_SIZE).await?)?;
            // Current writers set the digest flag in both structures, legacy ones in neither;
            // a mismatch means a flipped flag, which would silently disable digest checks.
            if header.has(flag::DIGEST) != trailer.has(flag::DIGEST) {
                return Err(ZFileError::Corrupt(
                    "header and trailer disagree on the digest flag".into(),
                ));
            }
            trailer
        };
        let info = ZFileInfo::from_structure(&used, size, overwrite)?;
        let table = load_table(source.as_ref(), &info).await?;
        // At least two workers, so the parallel path is exercised even on one-core machines.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2)) as u64;
        Ok(ZFileReader {
            source,
            layout: Arc::new(Layout { info, table }),
            workers,
        })
    }

    /// Caps how many blocking threads one large read is decoded on (default: the number of
    /// CPUs, at least 2). `1` decodes every read inline on the calling task, which bounds the
    /// CPU one reader uses and is how benchmarks measure single-thread throughput.
    pub fn with_decode_workers(mut self, workers: usize) -> ZFileReader {
        self.workers = workers.max(1) as u64;
        self
    }

    /// The validated header/trailer values.
    pub fn info(&self) -> &ZFileInfo {
        &self.layout.info
    }

    /// File range of stored block `index` (tests inspect the jump table through this).
    #[cfg(test)]
    pub(crate) fn block_span(&self, index: u64) -> Option<(u64, u64)> {
        self.layout.table.span(index, index)
    }

    /// Reads `len` uncompressed bytes at `offset`. A stored block that fails its checksum (or
    /// does not decode) may have been damaged on the way or in a cache rather than in the blob,
    /// so the covering stored range is invalidated in the source and read once more; a second
    /// failure is returned (the SCSI layer reports it as a MEDIUM ERROR), never retried again.
    async fn read_range(&self, span: Span) -> Result<Bytes, ZFileError> {
        let info = &self.layout.info;
        let (offset, len, end) = (span.offset(), span.len(), span.end());
        let bs = u64::from(info.block_size);
        let (first, last) = (offset / bs, (end - 1) / bs);
        let (start, stop) = self.layout.span(first, last)?;
        match self.read_blocks(offset, len, start, stop).await {
            Err(ZFileError::Block { index, fault }) => {
                tracing::warn!(
                    source = %self.source.describe(),
                    block = index,
                    %fault,
                    "bad ZFile block; dropping cached bytes and fetching once more"
                );
                self.source.invalidate(start, stop - start).await;
                let second = self.read_blocks(offset, len, start, stop).await;
                if matches!(second, Err(ZFileError::Block { .. })) {
                    // Keep no bytes known to be bad: a later read fetches afresh (and may
                    // succeed once the link or the registry is healthy again).
                    self.source.invalidate(start, stop - start).await;
                }
                second
            }
            other => other,
        }
    }

    /// One attempt of [`Self::read_range`]: source read of the stored range `[start, stop)`
    /// covering the blocks, then checksum and decode of each block; large reads are split
    /// across cores ([`Self::read_parallel`]).
    async fn read_blocks(
        &self,
        offset: u64,
        len: usize,
        start: u64,
        stop: u64,
    ) -> Result<Bytes, ZFileError> {
        let bs = u64::from(self.layout.info.block_size);
        let (first, last) = (offset / bs, (offset + len as u64 - 1) / bs);
        let mut out = BytesMut::zeroed(len);
        let pieces = piece_count(len, last - first + 1, self.workers);
        if pieces > 1 {
            return self.read_parallel(offset, out, pieces).await;
        }
        let stored = fetch(self.source.as_ref(), start, stop).await?;
        self.layout.decode_into(&stored, start, offset, &mut out)?;
        Ok(out.freeze())
    }

    /// Splits a large read at block boundaries into `pieces` runs of blocks of about equal
    /// size. Each piece's stored bytes are fetched asynchronously, all pieces at once, on the
    /// calling task; as soon as a piece's bytes are in, they are decoded straight into its own
    /// part of `out`, on a blocking thread for the later pieces and on the calling task for
    /// the first. Blocking threads only ever decode: none waits on the network or a disk
    /// (a remote fetch parked there would hold a thread of tokio's bounded pool for a round
    /// trip). The parts are rejoined without copying. The error of the first failing piece
    /// (in file order) is the read's error.
    async fn read_parallel(
        &self,
        offset: u64,
        mut out: BytesMut,
        pieces: u64,
    ) -> Result<Bytes, ZFileError> {
        let bs = u64::from(self.layout.info.block_size);
        let (first, last) = (offset / bs, (offset + out.len() as u64 - 1) / bs);
        let per_piece = (last - first + 1).div_ceil(pieces);
        let mut parts = Vec::new();
        let (mut raw, mut block) = (offset, first);
        while !out.is_empty() {
            let next_block = block.saturating_add(per_piece).min(last + 1);
            let part_len = next_block.saturating_mul(bs).min(raw + out.len() as u64) - raw;
            let span = self.layout.span(block, next_block - 1)?;
            parts.push((out.split_to(part_len as usize), span, raw));
            raw += part_len;
            block = next_block;
        }
        let mut parts = parts.into_iter();
        let Some((joined, (s, e), head_raw)) = parts.next() else {
            return Ok(Bytes::new());
        };
        let tail = parts.map(|(mut part, (s, e), at)| async move {
            let stored = fetch(self.source.as_ref(), s, e).await?;
            let layout = Arc::clone(&self.layout);
            tokio::task::spawn_blocking(move || {
                layout.decode_into(&stored, s, at, &mut part)?;
                Ok::<_, ZFileError>(part)
            })
            .await
            .map_err(|e| ZFileError::Source(io::Error::other(e).into()))?
        });
        let head = async move {
            let mut joined = joined;
            let stored = fetch(self.source.as_ref(), s, e).await?;
            self.layout.decode_into(&stored, s, head_raw, &mut joined)?;
            Ok::<_, ZFileError>(joined)
        };
        // The later pieces are polled first, so their fetches start (and their decodes are
        // handed out) before this task decodes the first piece. Every piece is awaited even
        // after a failure, so a retry of this read never competes with its own leftovers.
        let (tail, head) = futures_util::future::join(join_all(tail), head).await;
        let mut joined = head?;
        for part in tail {
            joined.unsplit(part?);
        }
        Ok(joined.freeze())
    }
}

/// Reads the stored bytes `[start, stop)` from `source`.
async fn fetch(source: &dyn LayerSource, start: u64, stop: u64) -> Result<Bytes, ZFileError> {
    let len = stop
        .checked_sub(start)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ZFileError::Corrupt("stored range exceeds memory".into()))?;
    Ok(source.read_exact_at(start, len).await?)
}

/// How many pieces a read of `len` bytes over `blocks` blocks is decoded in: one per worker,
/// as long as each gets [`PARALLEL_MIN_PIECE`] bytes and at least one block.
fn piece_count(len: usize, blocks: u64, workers: u64) -> u64 {
    (len as u64 / PARALLEL_MIN_PIECE)
        .min(blocks)
        .min(workers)
        .max(1)
}

/// Fetches the jump table in bounded pieces and builds the block offsets.
async fn load_table(source: &dyn LayerSource, info: &ZFileInfo) -> Result<JumpTable, ZFileError> {
    // Already checked by ZFileInfo::from_structure to fit inside the blob.
    let table_len = info.block_count * ENTRY_LEN;
    let mut builder = JumpTableBuilder::new(info.data_offset, info.block_count, info.verify);
    let mut pos = 0;
    while pos < table_len {
        let piece = (table_len - pos).min(TABLE_PIECE);
        builder.push(
            &source
                .read_exact_at(info.index_offset + pos, piece as usize)
                .await?,
        )?;
        pos += piece;
    }
    builder.finish(info.index_crc, info.index_offset)
}

impl Layout {
    fn span(&self, first: u64, last: u64) -> Result<(u64, u64), ZFileError> {
        self.table.span(first, last).ok_or_else(|| {
            ZFileError::Corrupt(format!("blocks {first}..={last} outside the jump table"))
        })
    }

    /// Decodes raw bytes `[raw_offset, raw_offset + out.len())` from `stored`, which holds the
    /// stored bytes of the covering blocks starting at file offset `stored_base`.
    fn decode_into(
        &self,
        stored: &[u8],
        stored_base: u64,
        raw_offset: u64,
        out: &mut [u8],
    ) -> Result<(), ZFileError> {
        let info = &self.info;
        let bs = u64::from(info.block_size);
        let mut scratch = Vec::new();
        let mut pos = 0usize;
        while pos < out.len() {
            let raw = raw_offset + pos as u64;
            let index = raw / bs;
            let within = (raw - index * bs) as usize;
            let raw_len = info.raw_len(index);
            let take = raw_len.saturating_sub(within).min(out.len() - pos);
            if take == 0 {
                return Err(ZFileError::Corrupt(format!(
                    "raw offset {raw} lies past block {index}"
                )));
            }
            let (s, e) = self.span(index, index)?;
            let block = s
                .checked_sub(stored_base)
                .zip(e.checked_sub(stored_base))
                .and_then(|(a, b)| stored.get(a as usize..b as usize))
                .ok_or_else(|| {
                    ZFileError::Corrupt(format!("block {index} outside the fetched range"))
                })?;
            let fault = |fault| ZFileError::Block { index, fault };
            if take == raw_len {
                decode_block(
                    info.algorithm,
                    info.verify,
                    block,
                    &mut out[pos..pos + take],
                )
                .map_err(fault)?;
            } else {
                scratch.resize(raw_len, 0);
                decode_block(info.algorithm, info.verify, block, &mut scratch).map_err(fault)?;
                out[pos..pos + take].copy_from_slice(&scratch[within..within + take]);
            }
            pos += take;
        }
        Ok(())
    }
}

#[async_trait]
impl LayerSource for ZFileReader {
    fn size(&self) -> u64 {
        self.layout.info.original_file_size
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        Ok(self.read_range(span).await?)
    }

    fn describe(&self) -> String {
        format!("zfile:{}", self.source.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1_mib_read_splits_on_two_cores_for_small_and_large_blocks() {
        const MIB: usize = 1 << 20;
        // 4 KiB blocks (256 per MiB) and 32 KiB blocks (32 per MiB).
        assert_eq!(piece_count(MIB, 256, 2), 2);
        assert_eq!(piece_count(MIB, 32, 2), 2);
        assert_eq!(piece_count(MIB, 33, 8), 8);
        // Too little work per piece, or nothing to split.
        assert_eq!(piece_count(MIB, 256, 1), 1);
        assert_eq!(piece_count(255 << 10, 64, 2), 1);
        assert_eq!(piece_count(256 << 10, 64, 2), 2);
        assert_eq!(piece_count(MIB, 1, 4), 1);
        assert_eq!(piece_count(0, 0, 4), 1);
    }
}
