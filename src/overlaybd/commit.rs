//! Turning layers into sealed blobs: commit / compaction (spec `lsmt.md` §8.2), layer merge
//! (§11) and seal in place (§8.1).
//!
//! A commit writes strictly sequentially (header, data, index, trailer) into any
//! [`AsyncWrite`] sink, so the output can stream into a file, a ZFile builder or an uploader.

use std::fs::OpenOptions;
use std::io::BufWriter;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::error::{LsmtError, LsmtResult};
use super::header::{flags, LayerUuid, LsmtHeader, HEADER_SIZE, USER_TAG_LEN};
use super::index::{encode_padded, Record, MAX_LENGTH, RECORD_SIZE, SECTOR};
use super::layer::{read, SealedLayer, DATA_START_SECTOR};
use super::stack::{merge_indexes, LayerStack, MergeInput};
use super::writable::WritableLayer;
use crate::source::LayerSource;
use crate::zfile::{WriterOptions, ZFileWriter};

/// Data is copied in chunks of this many sectors, one record per chunk before coalescing;
/// this is what bounds merged data records to 16320 sectors in reference output.
pub const COPY_CHUNK_SECTORS: u32 = 64;

/// Metadata choices of a commit (the `overlaybd-commit` options).
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// UUID of the output; `None` stores the all-zero UUID.
    pub uuid: Option<LayerUuid>,
    /// Replaces the parent UUID taken from the source.
    pub parent_uuid: Option<LayerUuid>,
    /// The commit message (at most 256 bytes).
    pub user_tag: Vec<u8>,
}

/// What a commit reads: sorted records whose tags index `sources`, plus the source's metadata.
pub struct CommitSource {
    /// Sorted, disjoint records; a record's tag selects its entry in `sources`.
    pub records: Vec<Record>,
    /// The files data records are read from.
    pub sources: Vec<Arc<dyn LayerSource>>,
    /// Virtual size stored in the output.
    pub virtual_size: u64,
    /// Parent UUID stored in the output unless [`CommitOptions::parent_uuid`] overrides it.
    pub parent_uuid: LayerUuid,
}

impl CommitSource {
    /// A writable layer (`overlaybd-commit DATA INDEX OUT`): its header supplies size and parent.
    pub fn from_writable(layer: &WritableLayer) -> Self {
        let h = layer.header();
        CommitSource {
            records: layer.records(),
            sources: vec![layer.data_source()],
            virtual_size: h.virtual_size,
            parent_uuid: h.parent_uuid,
        }
    }

    /// A sealed layer (`overlaybd-commit --commit_sealed`): compacts away garbage data.
    pub fn from_sealed(layer: &SealedLayer) -> Self {
        let h = &layer.layout().header;
        CommitSource {
            records: layer.records().to_vec(),
            sources: vec![Arc::clone(layer.source())],
            virtual_size: h.virtual_size,
            parent_uuid: h.parent_uuid,
        }
    }

    /// A whole image flattened into one layer (`overlaybd-merge`, §11): read-only layers tagged
    /// with their top-first position, the writable layer (if any) on top with tag N.
    pub fn from_stack(stack: &LayerStack, upper: Option<&WritableLayer>) -> LsmtResult<Self> {
        let lowers = stack.layers_top_first();
        let upper_records = upper.map(|u| u.records());
        let mut inputs = Vec::with_capacity(lowers.len() + 1);
        let mut sources: Vec<Arc<dyn LayerSource>> =
            lowers.iter().map(|l| Arc::clone(l.source())).collect();
        if let (Some(u), Some(recs)) = (upper, upper_records.as_deref()) {
            let tag = u8::try_from(lowers.len()).map_err(|_| {
                LsmtError::Invalid("too many layers to merge with a writable layer".into())
            })?;
            inputs.push(MergeInput { records: recs, tag });
            sources.push(u.data_source());
        }
        // A stack holds at most 255 layers, so positions fit a u8.
        inputs.extend(lowers.iter().enumerate().map(|(i, l)| MergeInput {
            records: l.records(),
            tag: i as u8,
        }));
        let records = merge_indexes(&inputs);
        // Reference file list, top first: the read-only layers, then the writable data file.
        // Size comes from the first file of that list, the parent from the last one.
        let virtual_size = match (lowers.first(), upper) {
            (Some(top), _) => top.layout().header.virtual_size,
            (None, Some(u)) => u.header().virtual_size,
            (None, None) => 0,
        };
        let parent_uuid = match (upper, lowers.last()) {
            (Some(u), _) => u.header().parent_uuid,
            (None, Some(bottom)) => bottom.layout().header.parent_uuid,
            (None, None) => LayerUuid::nil(),
        };
        Ok(CommitSource {
            records,
            sources,
            virtual_size,
            parent_uuid,
        })
    }
}

/// Shape of a written blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitSummary {
    /// Sectors of data copied.
    pub data_sectors: u64,
    /// Byte offset of the index in the output.
    pub index_offset: u64,
    /// Real (non-padding) records written.
    pub records: u64,
    /// Records stored, padding included (the trailer's index_size).
    pub index_size: u64,
    /// Total bytes written.
    pub bytes: u64,
}

/// Writes `src` as a committed, sealed blob into `out` (§8.2), byte-compatible with
/// `overlaybd-commit` and `overlaybd-merge`. The sink is flushed but not shut down.
pub async fn write_commit<W: AsyncWrite + Unpin>(
    src: &CommitSource,
    opts: &CommitOptions,
    out: &mut W,
) -> LsmtResult<CommitSummary> {
    if opts.user_tag.len() > USER_TAG_LEN {
        return Err(LsmtError::Invalid(format!(
            "user tag is {} bytes, at most {USER_TAG_LEN}",
            opts.user_tag.len()
        )));
    }
    let mut header = LsmtHeader::new(
        flags::HEADER | flags::DATA | flags::SEALED,
        src.virtual_size,
    );
    header.uuid = opts.uuid.unwrap_or_else(LayerUuid::nil);
    header.parent_uuid = opts.parent_uuid.unwrap_or(src.parent_uuid);
    header.user_tag = opts.user_tag.clone();
    emit(out, &header.encode()).await?;

    let mut pos = DATA_START_SECTOR;
    let mut emitted = Coalescer::default();
    for r in &src.records {
        if r.zeroed {
            emitted.push(Record { moffset: pos, ..*r });
            continue;
        }
        let source = src.sources.get(usize::from(r.tag)).ok_or_else(|| {
            LsmtError::Invalid(format!(
                "record at sector {} names source {} of {}",
                r.offset,
                r.tag,
                src.sources.len()
            ))
        })?;
        // A record is at most 16383 sectors (8 MiB): read it whole, then cut it into chunks.
        let bytes = read(
            &**source,
            r.moffset * SECTOR,
            (u64::from(r.length) * SECTOR) as usize,
        )
        .await?;
        emit(out, &bytes).await?;
        let mut done = 0u32;
        while done < r.length {
            let len = (r.length - done).min(COPY_CHUNK_SECTORS);
            emitted.push(Record {
                offset: r.offset + u64::from(done),
                length: len,
                moffset: pos,
                ..*r
            });
            pos += u64::from(len);
            done += len;
        }
    }
    let records = emitted.finish();
    let (index, index_size) = encode_padded(&records);
    emit(out, &index).await?;
    let mut trailer = header.clone();
    trailer.flags = flags::DATA | flags::SEALED;
    trailer.index_offset = pos * SECTOR;
    trailer.index_size = index_size;
    emit(out, &trailer.encode()).await?;
    out.flush()
        .await
        .map_err(|e| LsmtError::io("commit output", e))?;
    Ok(CommitSummary {
        data_sectors: pos - DATA_START_SECTOR,
        index_offset: pos * SECTOR,
        records: records.len() as u64,
        index_size,
        bytes: pos * SECTOR + index.len() as u64 + HEADER_SIZE as u64,
    })
}

/// Writes a committed blob to a new file at `path` (it must not exist), as `overlaybd-commit`
/// does: plain LSMT, or with `zfile` a ZFile whose header is rewritten with the final values
/// (`-z`). The file is fsynced before returning.
pub async fn write_commit_file(
    src: &CommitSource,
    opts: &CommitOptions,
    path: &Path,
    zfile: Option<WriterOptions>,
    progress: super::OnProgress<'_>,
) -> LsmtResult<CommitSummary> {
    let name = path.display().to_string();
    let io = |e: std::io::Error| LsmtError::io(&name, e);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    let out = BufWriter::new(Counting {
        inner: file,
        written: 0,
        progress,
    });
    let (summary, out) = match zfile {
        None => {
            let mut sink = SyncSink(out);
            let summary = write_commit(src, opts, &mut sink).await?;
            (summary, sink.0)
        }
        Some(zopts) => {
            let writer = ZFileWriter::new(out, zopts)
                .map_err(|e| LsmtError::corrupt(&name, e.to_string()))?;
            let mut sink = SyncSink(writer);
            let summary = write_commit(src, opts, &mut sink).await?;
            let (out, _) = sink.0.finish_with_header().map_err(io)?;
            (summary, out)
        }
    };
    let file = out.into_inner().map_err(|e| io(e.into_error()))?.inner;
    file.sync_all().map_err(io)?;
    Ok(summary)
}

/// A file that reports how many bytes were written to it so far.
struct Counting<'a> {
    inner: std::fs::File,
    written: u64,
    progress: super::OnProgress<'a>,
}

impl std::io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        (self.progress)(self.written);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl std::io::Seek for Counting<'_> {
    // The ZFile writer seeks back to rewrite its header at the end; progress counts bytes
    // written, so the position is the file's own.
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl CommitSource {
    /// Bytes of data the records map (what a commit copies), for progress totals.
    pub fn data_bytes(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| !r.zeroed)
            .map(|r| u64::from(r.length) * 512)
            .sum()
    }
}

/// Greedy one-pass coalescing of emitted records (§8.2 step 5).
#[derive(Default)]
struct Coalescer {
    out: Vec<Record>,
}

impl Coalescer {
    fn push(&mut self, j: Record) {
        if let Some(i) = self.out.last_mut() {
            let mapped_contiguous = if j.zeroed {
                i.moffset == j.moffset
            } else {
                i.moffset + u64::from(i.length) == j.moffset
            };
            if i.end() == j.offset
                && i.zeroed == j.zeroed
                && i.tag == j.tag
                && mapped_contiguous
                && i.length + j.length < MAX_LENGTH
            {
                i.length += j.length;
                return;
            }
        }
        self.out.push(j);
    }

    fn finish(self) -> Vec<Record> {
        self.out
    }
}

async fn emit<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> LsmtResult<()> {
    out.write_all(bytes)
        .await
        .map_err(|e| LsmtError::io("commit output", e))
}

/// Adapts a synchronous [`Write`](std::io::Write) sink (a file, a [`crate::zfile::ZFileWriter`])
/// to [`write_commit`]. Writes run inline on the calling task, which suits tools; a server
/// committing in the background should wrap a blocking writer in its own task instead.
#[derive(Debug)]
pub struct SyncSink<W>(pub W);

impl<W: std::io::Write + Unpin> AsyncWrite for SyncSink<W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.get_mut().0.write(buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(self.get_mut().0.flush())
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Seals a writable layer in place (`overlaybd-commit --seal`, §8.1): appends its index and a
/// trailer to the data file, which then opens as a [`SealedLayer`]. The layer must not be
/// written afterwards; the index file is left for the caller to delete.
pub async fn seal_in_place(layer: WritableLayer) -> LsmtResult<()> {
    crate::sys::run_blocking(move || {
        let records = layer.records();
        let header = layer.header();
        let (file, name, data_end) = layer.files();
        let mut index = Vec::with_capacity(records.len() * RECORD_SIZE + SECTOR as usize);
        for r in &records {
            index.extend_from_slice(&r.encode());
        }
        // Pad to a whole sector with padding records (the reference leaves garbage there).
        while index.len() as u64 % SECTOR != 0 {
            index.extend_from_slice(&Record::PADDING.encode());
        }
        let mut trailer = LsmtHeader::new(
            flags::DATA | flags::SEALED | (header.flags & flags::SPARSE_RW),
            header.virtual_size,
        );
        trailer.uuid = header.uuid;
        trailer.parent_uuid = header.parent_uuid;
        trailer.index_offset = data_end;
        trailer.index_size = records.len() as u64;
        let trailer_at = data_end + index.len() as u64;
        let io = |e| LsmtError::io(name, e);
        file.write_all_at(&index, data_end).map_err(io)?;
        file.write_all_at(&trailer.encode(), trailer_at)
            .map_err(io)?;
        // Drop anything a torn write may have left past the trailer: it must end the file.
        file.set_len(trailer_at + HEADER_SIZE as u64).map_err(io)?;
        file.sync_all().map_err(io)
    })
    .await
    .map_err(|e| LsmtError::io("seal", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_rules() {
        let mut c = Coalescer::default();
        c.push(Record::data(0, 64, 8));
        c.push(Record::data(64, 64, 72));
        c.push(Record::data(128, 8, 200)); // not contiguous in mapped space
        c.push(Record::zeroed(136, 10, 208));
        c.push(Record::zeroed(146, 10, 208));
        c.push(Record::data(156, 4, 208).with_tag(1)); // different tag
        c.push(Record::data(160, 4, 212));
        assert_eq!(
            c.finish(),
            vec![
                Record::data(0, 128, 8),
                Record::data(128, 8, 200),
                Record::zeroed(136, 20, 208),
                Record::data(156, 4, 208).with_tag(1),
                Record::data(160, 4, 212),
            ]
        );
        let mut c = Coalescer::default();
        for i in 0..300u64 {
            c.push(Record::data(i * 64, 64, 8 + i * 64));
        }
        let out = c.finish();
        assert_eq!(out[0].length, 16320);
        assert_eq!(
            out.iter().map(|r| u64::from(r.length)).sum::<u64>(),
            300 * 64
        );
    }
}
