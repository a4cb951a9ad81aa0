//! A writable layer: a data file and an index file (spec `lsmt.md` §6, §7).
//!
//! Append layers (`lsmt.md` §6): writes append their bytes to the data file and a record to the
//! index file; discards append a zeroed record. Nothing already written is ever modified, so a
//! reader that looked up a record before a concurrent overwrite still reads consistent (older)
//! bytes. The price is that every overwrite grows the data file: an append layer is unbounded.
//!
//! Sparse layers (`overlaybd-create -s`, §7; what our `create` makes by default) store data in
//! place at `4096 + offset` and keep no log, so the data file never exceeds its virtual size
//! plus the 4 KiB header, whatever the overwrite pattern; their index is rebuilt from the data
//! file's allocation map on open.
//!
//! # Durability and crash recovery (append layers)
//!
//! Write order: a write holds the tail lock while it `pwrite`s its data at the data file's end
//! and then appends its record to the index log, so data positions grow with log order and a
//! record is written only after the data it points at. [`WritableLayer::flush`] (SYNCHRONIZE
//! CACHE, and every FUA write, see `Image::write`) fdatasyncs the data file, then the index
//! file.
//!
//! Claim: after a crash, reopening loses no write or discard that completed before a flush (or
//! a FUA write) began. Proof: let R be the record of such a write and `F` the flush. R's data
//! was written before R, and R before `F` started, so `F`'s fdatasync of the data file made
//! that data durable together with a data-file size D ≥ R's mapped end; its fdatasync of the
//! index file then made R and every record before it in the log durable. Records before R were
//! appended earlier, so (positions grow with log order) their data ends are ≤ R's, hence ≤ D.
//! Recovery keeps the longest prefix of the log whose records all map inside the data file, so
//! it keeps R and everything before it. ∎
//!
//! Recovery on open: replay stops at the first record whose mapped range is not inside the
//! data file (for a zeroed record: whose moffset, the data-file size when it was logged, lies
//! past the end). Such a record is the ordinary outcome of a crash where the index tail reached
//! the disk but the data tail did not (delayed allocation writes them back independently), or
//! of an index page that never reached the disk and reads as zeros. Every record after it was
//! logged later, so it maps at or past the same point and is not durable either: it is dropped
//! too, as is a torn final record (a partial 16-byte record at the file's end). Open then
//! truncates the index file to the kept prefix and fdatasyncs it before anything is appended,
//! with a `warn` naming the layer, the counts and the dropped sector ranges. The truncation
//! matters: without it a new record would land after (or over the head of) the dropped ones,
//! and once new data grew the data file past their moffsets the next open would replay stale
//! records as valid. Data bytes past the last kept record are left alone; the next append
//! starts at the data file's end rounded up to a sector.
//!
//! What is not promised: a write that completed after the last flush began may be kept or
//! dropped, and only together with every write logged after it (recovery yields the state
//! after some prefix of the operations). If the file system exposes a data-file size whose
//! last blocks were never written (not ext4 `data=ordered` or XFS), such a non-flushed write
//! can read back as zeros instead.
//!
//! Sparse layers: [`WritableLayer::flush`] fdatasyncs the data file, which makes the written
//! data and the allocation map (its index) durable together; there is no log to recover.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::error::{LsmtError, LsmtResult};
use super::header::{flags, LayerUuid, LsmtHeader, HEADER_SIZE, USER_TAG_LEN};
use super::index::{decode_records, Record, MAX_LENGTH, RECORD_SIZE, SECTOR};
use super::layer::DATA_START_SECTOR;
use super::sparse;
use super::stack::{read_virtual, sector_range};
use super::writable_index::WritableIndex;
use crate::source::{LayerSource, SourceResult, Span};
use crate::sys::{blocking, run_blocking};

/// The reference's limit on records in a writable index file.
pub const MAX_WRITABLE_RECORDS: u64 = 128_000_000;
/// Writes larger than this are split into pieces of this size (one record each).
pub const WRITE_PIECE: usize = 4 << 20;
/// `index_offset` stored in every index-file header.
const INDEX_FILE_OFFSET: u64 = HEADER_SIZE as u64;
/// Records read per chunk while replaying an index file.
const REPLAY_CHUNK: u64 = 65_536;

/// Parameters of a new writable layer.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes (0 = take the size of the lower stack when stacked).
    pub virtual_size: u64,
    /// The layer's UUID; `None` draws a random one, as `overlaybd-create` does.
    pub uuid: Option<uuid::Uuid>,
    /// UUID of the layer below (nil for none).
    pub parent_uuid: LayerUuid,
    /// Optional user tag (at most 256 bytes).
    pub user_tag: Vec<u8>,
    /// Create a sparse layer (`overlaybd-create -s`, §7): data stored in place, no index log.
    pub sparse: bool,
}

impl CreateOptions {
    /// Options for a layer of `virtual_size` bytes with a random UUID and no parent.
    pub fn new(virtual_size: u64) -> Self {
        CreateOptions {
            virtual_size,
            uuid: None,
            parent_uuid: LayerUuid::nil(),
            user_tag: Vec::new(),
            sparse: false,
        }
    }
}

/// The data file, readable as a [`LayerSource`] (what is written there never changes).
#[derive(Debug)]
pub(crate) struct DataFile {
    file: Arc<File>,
    name: String,
    /// Bytes known to be written (the append position).
    len: AtomicU64,
}

#[async_trait]
impl LayerSource for DataFile {
    fn size(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        let (file, offset) = (Arc::clone(&self.file), span.offset());
        let mut buf = vec![0u8; span.len()];
        Ok(blocking(move || {
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await?)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Append positions, guarded together so the index log's order equals the insert order.
#[derive(Debug)]
struct Tail {
    data_end: u64,
    index_end: u64,
}

#[derive(Debug)]
struct Inner {
    data: Arc<DataFile>,
    data_path: PathBuf,
    index_file: File,
    index_path: PathBuf,
    header: Mutex<LsmtHeader>,
    tail: Mutex<Tail>,
    map: RwLock<WritableIndex>,
    vsize: AtomicU64,
    /// Sparse layer (§7): data in place, no index log, index rebuilt from the allocation map.
    sparse: bool,
    /// Bytes the data file's file system allocates at once (see
    /// [`WritableLayer::allocation_unit`]).
    allocation_unit: u64,
}

/// What `assemble` needs besides the files.
struct State {
    header: LsmtHeader,
    map: WritableIndex,
    data_end: u64,
    index_end: u64,
    vsize: u64,
}

/// An open writable layer. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct WritableLayer {
    inner: Arc<Inner>,
}

impl WritableLayer {
    /// Creates the data and index files (they must not exist) as `overlaybd-create` does.
    pub fn create(data_path: &Path, index_path: &Path, opts: &CreateOptions) -> LsmtResult<Self> {
        if opts.user_tag.len() > USER_TAG_LEN {
            return Err(LsmtError::Invalid(format!(
                "user tag is {} bytes, at most {USER_TAG_LEN}",
                opts.user_tag.len()
            )));
        }
        let mut header = LsmtHeader::new(flags::HEADER | flags::DATA, opts.virtual_size);
        header.uuid = LayerUuid::from_uuid(&opts.uuid.unwrap_or_else(uuid::Uuid::new_v4));
        header.parent_uuid = opts.parent_uuid;
        header.user_tag = opts.user_tag.clone();
        if opts.sparse {
            header.flags |= flags::SPARSE_RW;
        }
        let data = create_new(data_path, Some(&header))?;
        let index = if opts.sparse {
            // The index file of a sparse layer exists but stays empty.
            let data_len = (HEADER_SIZE as u64)
                .checked_add(opts.virtual_size)
                .ok_or_else(|| {
                    LsmtError::Invalid(format!("virtual size {} too large", opts.virtual_size))
                })?;
            data.set_len(data_len)
                .map_err(|e| LsmtError::io(data_path.display().to_string(), e))?;
            create_new(index_path, None)?
        } else {
            let mut index_header = header.clone();
            index_header.flags = flags::HEADER;
            index_header.index_offset = INDEX_FILE_OFFSET;
            create_new(index_path, Some(&index_header))?
        };
        sync_parent(data_path)?;
        sync_parent(index_path)?;
        let data_end = data
            .metadata()
            .map_err(|e| LsmtError::io(data_path.display().to_string(), e))?
            .len();
        let state = State {
            vsize: opts.virtual_size,
            header,
            map: WritableIndex::new(),
            data_end,
            index_end: INDEX_FILE_OFFSET,
        };
        Ok(Self::assemble(data, data_path, index, index_path, state))
    }

    /// Opens an existing layer, replaying its index log (§6.5).
    pub fn open(data_path: &Path, index_path: &Path) -> LsmtResult<Self> {
        let dname = data_path.display().to_string();
        let iname = index_path.display().to_string();
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(data_path)
            .map_err(|e| LsmtError::io(&dname, e))?;
        let index = OpenOptions::new()
            .read(true)
            .write(true)
            .open(index_path)
            .map_err(|e| LsmtError::io(&iname, e))?;
        let header = LsmtHeader::decode(&read_header(&data, &dname)?, &dname)?;
        if !header.is_header() {
            return Err(LsmtError::corrupt(
                &dname,
                format!("flags {:#x}: header bit not set", header.flags),
            ));
        }
        if header.is_sparse() {
            return Self::open_sparse(data, data_path, index, index_path, header);
        }
        let index_header = LsmtHeader::decode(&read_header(&index, &iname)?, &iname)?;
        check_index_header(&index_header, &iname)?;
        let dsize = data.metadata().map_err(|e| LsmtError::io(&dname, e))?.len();
        let isize = index
            .metadata()
            .map_err(|e| LsmtError::io(&iname, e))?
            .len();
        let n = (isize.saturating_sub(INDEX_FILE_OFFSET)) / RECORD_SIZE as u64;
        if n > MAX_WRITABLE_RECORDS {
            return Err(LsmtError::corrupt(
                &iname,
                format!("{n} index records exceed the limit {MAX_WRITABLE_RECORDS}"),
            ));
        }
        let mut map = WritableIndex::new();
        let mut done = 0u64;
        while done < n {
            let count = (n - done).min(REPLAY_CHUNK);
            let buf = read_records(&index, &iname, done, count)?;
            let replay = replay_records(&mut map, &buf, dsize);
            done += replay.applied;
            if replay.stopped.is_some() {
                break;
            }
        }
        // Everything after the consistent prefix (records whose data never reached the disk,
        // and a torn final record) is cut off before anything new is appended (module doc).
        let index_end = INDEX_FILE_OFFSET + done * RECORD_SIZE as u64;
        if isize > index_end {
            let dropped = dropped_summary(&index, &iname, done, n)?;
            index
                .set_len(index_end)
                .and_then(|()| index.sync_data())
                .map_err(|e| LsmtError::io(&iname, e))?;
            tracing::warn!(
                layer = %iname,
                data_file = %dname,
                data_bytes = dsize,
                kept_records = done,
                dropped_records = n - done,
                dropped_index_bytes = format_args!("{index_end}..{isize}"),
                dropped_sectors = %dropped,
                "writable layer recovered after a crash: index records whose data is not in \
                 the data file were dropped (writes never made durable by a flush)"
            );
        }
        warn_if_mostly_garbage(&map, dsize, index_header.virtual_size, &dname);
        // A torn final data write may leave a partial sector; the next append starts aligned.
        let data_end = dsize
            .div_ceil(SECTOR)
            .saturating_mul(SECTOR)
            .max(HEADER_SIZE as u64);
        let state = State {
            vsize: index_header.virtual_size,
            header,
            map,
            data_end,
            index_end,
        };
        Ok(Self::assemble(data, data_path, index, index_path, state))
    }

    /// Reopens a sparse layer: every allocated region of the data file becomes a mapping.
    /// Discarded ranges are holes and so show lower layers again (a reference quirk, §7).
    fn open_sparse(
        data: File,
        data_path: &Path,
        index: File,
        index_path: &Path,
        header: LsmtHeader,
    ) -> LsmtResult<Self> {
        let dname = data_path.display().to_string();
        let regions = sparse::allocated_regions(&data, HEADER_SIZE as u64, &dname)?;
        let mut map = WritableIndex::new();
        for r in sparse::records_from_regions(&regions) {
            map.insert(r);
        }
        let data_end = data.metadata().map_err(|e| LsmtError::io(&dname, e))?.len();
        let state = State {
            vsize: header.virtual_size,
            header,
            map,
            data_end,
            index_end: 0,
        };
        Ok(Self::assemble(data, data_path, index, index_path, state))
    }

    fn assemble(data: File, data_path: &Path, index: File, index_path: &Path, st: State) -> Self {
        let State {
            header,
            map,
            data_end,
            index_end,
            vsize,
        } = st;
        let sparse = header.is_sparse();
        let allocation_unit = allocation_unit(&data);
        let data = Arc::new(DataFile {
            file: Arc::new(data),
            name: data_path.display().to_string(),
            len: AtomicU64::new(data_end),
        });
        WritableLayer {
            inner: Arc::new(Inner {
                data,
                data_path: data_path.to_path_buf(),
                index_file: index,
                index_path: index_path.to_path_buf(),
                header: Mutex::new(header),
                tail: Mutex::new(Tail {
                    data_end,
                    index_end,
                }),
                map: RwLock::new(map),
                vsize: AtomicU64::new(vsize),
                sparse,
                allocation_unit,
            }),
        }
    }

    /// The data file's header as last written (uuid, parent, virtual size).
    pub fn header(&self) -> LsmtHeader {
        self.inner.header.lock().clone()
    }

    /// Current virtual size in bytes (grows in memory when a write extends past it, §6.2).
    pub fn virtual_size(&self) -> u64 {
        self.inner.vsize.load(Ordering::Acquire)
    }

    /// True for a sparse layer (§7: data in place, bounded by the virtual size).
    pub fn is_sparse(&self) -> bool {
        self.inner.sparse
    }

    /// The bytes the data file's file system allocates at once (its block size, at least
    /// 4096). A sparse layer is rebuilt at reopen from what is allocated, in these units, so a
    /// write covering part of a unit makes the rest of it read as zeros afterwards rather than
    /// as the layers below: writers of sparse layers fill whole units ([`super::Image`] does).
    pub fn allocation_unit(&self) -> u64 {
        self.inner.allocation_unit
    }

    /// Path of the data file.
    pub fn data_path(&self) -> &Path {
        &self.inner.data_path
    }

    /// Path of the index file.
    pub fn index_path(&self) -> &Path {
        &self.inner.index_path
    }

    /// The data file as a read-only byte source (for stacking and committing).
    pub fn data_source(&self) -> Arc<dyn LayerSource> {
        Arc::clone(&self.inner.data) as Arc<dyn LayerSource>
    }

    /// Size of the data file's written part in bytes.
    pub fn data_size(&self) -> u64 {
        self.inner.data.size()
    }

    /// All records of the in-memory index, in logical order (tags 0).
    pub fn records(&self) -> Vec<Record> {
        self.inner.map.read().records()
    }

    /// Records intersecting `[start, start + sectors)`, clipped.
    pub fn lookup(&self, start: u64, sectors: u64) -> Vec<Record> {
        self.inner.map.read().lookup(start, sectors)
    }

    /// Reads this layer alone (holes and zeroed ranges read as zeros).
    pub async fn read(&self, offset: u64, len: usize) -> LsmtResult<Bytes> {
        let source = self.data_source();
        let resolve = |_| Some(Arc::clone(&source));
        read_virtual(offset, len, |s, n| self.lookup(s, n), resolve).await
    }

    /// Writes `data` at byte `offset` (both multiples of 512), in pieces of at most 4 MiB.
    pub async fn write(&self, offset: u64, data: Bytes) -> LsmtResult<()> {
        let (start, sectors) = sector_range(offset, data.len())?;
        check_span(start, sectors)?;
        let inner = Arc::clone(&self.inner);
        blocking_lsmt(move || inner.write(start, &data)).await
    }

    /// Discards `len` bytes at byte `offset`: the range reads as zeros and hides lower layers.
    pub async fn discard(&self, offset: u64, len: u64) -> LsmtResult<()> {
        let len = usize::try_from(len)
            .map_err(|_| LsmtError::Invalid(format!("discard length {len} too large")))?;
        let (start, sectors) = sector_range(offset, len)?;
        check_span(start, sectors)?;
        let inner = Arc::clone(&self.inner);
        blocking_lsmt(move || inner.discard(start, sectors)).await
    }

    /// Makes every completed write and discard durable: fdatasync data, then index.
    pub async fn flush(&self) -> LsmtResult<()> {
        let inner = Arc::clone(&self.inner);
        blocking_lsmt(move || {
            inner
                .data
                .file
                .sync_data()
                .map_err(|e| LsmtError::io(&inner.data.name, e))?;
            if inner.sparse {
                return Ok(());
            }
            inner.index_file.sync_data().map_err(|e| inner.index_err(e))
        })
        .await
    }

    /// Rewrites the virtual size in both headers (`update_vsize`, §6.6) and syncs them.
    pub async fn set_virtual_size(&self, vsize: u64) -> LsmtResult<()> {
        let inner = Arc::clone(&self.inner);
        blocking_lsmt(move || inner.set_virtual_size(vsize)).await
    }

    /// Shared state for the commit code (seal in place needs the files themselves).
    pub(crate) fn files(&self) -> (&File, &str, u64) {
        let tail = self.inner.tail.lock();
        (&self.inner.data.file, &self.inner.data.name, tail.data_end)
    }
}

impl Inner {
    fn index_err(&self, e: std::io::Error) -> LsmtError {
        LsmtError::io(self.index_path.display().to_string(), e)
    }

    fn data_err(&self, e: std::io::Error) -> LsmtError {
        LsmtError::io(&self.data.name, e)
    }

    fn write(&self, start: u64, data: &[u8]) -> LsmtResult<()> {
        let mut tail = self.tail.lock();
        let mut sector = start;
        for piece in data.chunks(WRITE_PIECE) {
            // Sparse layers store data in place after the header; others append it.
            let pos = if self.sparse {
                HEADER_SIZE as u64 + sector * SECTOR
            } else {
                tail.data_end
            };
            self.data
                .file
                .write_all_at(piece, pos)
                .map_err(|e| self.data_err(e))?;
            // A piece is at most 8192 sectors, below MAX_LENGTH.
            let len = (piece.len() as u64 / SECTOR) as u32;
            let rec = Record::data(sector, len, pos / SECTOR);
            if !self.sparse {
                self.append_record(&mut tail, rec)?;
            }
            tail.data_end = tail.data_end.max(pos + piece.len() as u64);
            self.data.len.store(tail.data_end, Ordering::Release);
            self.map.write().insert(rec);
            sector += u64::from(len);
        }
        self.vsize.fetch_max(sector * SECTOR, Ordering::AcqRel);
        Ok(())
    }

    fn discard(&self, start: u64, sectors: u64) -> LsmtResult<()> {
        let mut tail = self.tail.lock();
        if self.sparse {
            let at = HEADER_SIZE as u64 + start * SECTOR;
            sparse::punch_hole(&self.data.file, at, sectors * SECTOR)
                .map_err(|e| self.data_err(e))?;
        }
        let mut sector = start;
        let end = start + sectors;
        while sector < end {
            // Bounded by MAX_LENGTH, so the cast is lossless.
            let len = (end - sector).min(u64::from(MAX_LENGTH)) as u32;
            let moffset = if self.sparse {
                sector + DATA_START_SECTOR
            } else {
                tail.data_end / SECTOR
            };
            let rec = Record::zeroed(sector, len, moffset);
            if !self.sparse {
                self.append_record(&mut tail, rec)?;
            }
            self.map.write().insert(rec);
            sector += u64::from(len);
        }
        Ok(())
    }

    /// Appends one record to the index log. On failure the position is not advanced, so a
    /// partly written record is overwritten by the next append.
    fn append_record(&self, tail: &mut Tail, rec: Record) -> LsmtResult<()> {
        self.index_file
            .write_all_at(&rec.encode(), tail.index_end)
            .map_err(|e| self.index_err(e))?;
        tail.index_end += RECORD_SIZE as u64;
        Ok(())
    }

    fn set_virtual_size(&self, vsize: u64) -> LsmtResult<()> {
        let mut tail = self.tail.lock();
        let mut dh = self.header.lock();
        dh.virtual_size = vsize;
        self.data
            .file
            .write_all_at(&dh.encode(), 0)
            .map_err(|e| self.data_err(e))?;
        if self.sparse {
            // The data file spans the whole virtual disk (§7); the index file has no header.
            let len = (HEADER_SIZE as u64)
                .checked_add(vsize)
                .ok_or_else(|| LsmtError::Invalid(format!("virtual size {vsize} too large")))?;
            self.data.file.set_len(len).map_err(|e| self.data_err(e))?;
            tail.data_end = len;
            self.data.len.store(len, Ordering::Release);
        } else {
            let iname = self.index_path.display().to_string();
            let mut ih = LsmtHeader::decode(&read_header(&self.index_file, &iname)?, &iname)?;
            ih.virtual_size = vsize;
            self.index_file
                .write_all_at(&ih.encode(), 0)
                .map_err(|e| self.index_err(e))?;
            self.index_file.sync_data().map_err(|e| self.index_err(e))?;
        }
        self.data.file.sync_data().map_err(|e| self.data_err(e))?;
        self.vsize.store(vsize, Ordering::Release);
        Ok(())
    }
}

/// Checks an index-file header (§6.5 step 2).
fn check_index_header(h: &LsmtHeader, file: &str) -> LsmtResult<()> {
    if !h.is_header() || h.is_data() || h.is_sealed() {
        return Err(LsmtError::corrupt(
            file,
            format!(
                "flags {:#x}: not the header of a writable index file",
                h.flags
            ),
        ));
    }
    if h.index_offset != INDEX_FILE_OFFSET {
        return Err(LsmtError::corrupt(
            file,
            format!(
                "index_offset {} (expected {INDEX_FILE_OFFSET})",
                h.index_offset
            ),
        ));
    }
    Ok(())
}

/// How far [`replay_records`] got through a run of index-log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// Whole 16-byte records consumed (padding included) before stopping.
    pub applied: u64,
    /// The first record whose mapped range is not inside the data file, where replay stopped.
    pub stopped: Option<Record>,
}

/// Replays a run of index-log records into `map` (§6.5 steps 4–6): padding is dropped and tags
/// reset. Replay stops at the first record whose mapped range is not inside a data file of
/// `data_size` bytes: that record and everything after it were appended after data that never
/// reached the disk (module doc), so the records applied are the log's consistent prefix. A
/// trailing partial record is not consumed.
pub fn replay_records(map: &mut WritableIndex, bytes: &[u8], data_size: u64) -> Replay {
    let data_end = data_size / SECTOR;
    let mut applied = 0u64;
    for chunk in bytes.chunks_exact(RECORD_SIZE) {
        // chunks_exact yields exactly RECORD_SIZE bytes.
        let r = Record::decode(chunk.try_into().expect("record-sized chunk")).with_tag(0);
        if !r.is_padding() {
            if !r.mapped_within(DATA_START_SECTOR, data_end) {
                return Replay {
                    applied,
                    stopped: Some(r),
                };
            }
            map.insert(r);
        }
        applied += 1;
    }
    Replay {
        applied,
        stopped: None,
    }
}

/// Reads `count` (≤ [`REPLAY_CHUNK`]) records of an index file starting at record `first`.
fn read_records(index: &File, name: &str, first: u64, count: u64) -> LsmtResult<Vec<u8>> {
    // count ≤ 65536 records, so the buffer is at most 1 MiB.
    let mut buf = vec![0u8; (count as usize) * RECORD_SIZE];
    index
        .read_exact_at(&mut buf, INDEX_FILE_OFFSET + first * RECORD_SIZE as u64)
        .map_err(|e| LsmtError::io(name, e))?;
    Ok(buf)
}

/// Logical sector ranges named in a recovery warning; the rest are only counted.
const DROPPED_RANGES_SHOWN: u64 = 8;

/// The logical sector ranges of the first records of `first..n` (the ones recovery drops), as
/// text for the warning; the rest are only counted, so a huge dropped tail is not read.
fn dropped_summary(index: &File, name: &str, first: u64, n: u64) -> LsmtResult<String> {
    let count = (n - first).min(DROPPED_RANGES_SHOWN);
    let shown: Vec<String> = decode_records(&read_records(index, name, first, count)?)
        .iter()
        .map(|r| {
            let kind = if r.zeroed { "discard" } else { "write" };
            format!("{kind} of sectors {}+{}", r.offset, r.length)
        })
        .collect();
    let mut text = if count == 0 {
        "none (only a torn record)".to_string()
    } else {
        shown.join(", ")
    };
    if n - first > count {
        text.push_str(&format!(" and {} more records", n - first - count));
    }
    Ok(text)
}

/// The allocation unit of `file`'s file system: `st_blksize` when it is a power of two from
/// 4 KiB to 1 MiB, else 4 KiB (the page size, which tmpfs and most file systems use).
fn allocation_unit(file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let block = file.metadata().map(|m| m.blksize()).unwrap_or(0);
    if block.is_power_of_two() && (4096..=1 << 20).contains(&block) {
        block
    } else {
        4096
    }
}

/// Overwritten bytes in an append layer's data file above which opening it warns.
const GARBAGE_WARN_BYTES: u64 = 64 << 20;

/// Warns when an append layer's data file holds more overwritten bytes than its virtual size
/// (and more than [`GARBAGE_WARN_BYTES`]): such layers grow without bound under overwrites and
/// are only shrunk by committing them, which an operator should know before the disk fills.
fn warn_if_mostly_garbage(map: &WritableIndex, dsize: u64, vsize: u64, name: &str) {
    let live: u64 = map
        .records()
        .iter()
        .filter(|r| !r.zeroed)
        .map(|r| u64::from(r.length) * SECTOR)
        .sum();
    let garbage = dsize.saturating_sub(HEADER_SIZE as u64 + live);
    if garbage > vsize.max(GARBAGE_WARN_BYTES) {
        tracing::warn!(
            layer = %name,
            data_bytes = dsize,
            live_bytes = live,
            "append-only writable layer: most of its data file is overwritten data, and it grows \
             with every overwrite; commit it (or use a sparse layer) to bound its size"
        );
    }
}

/// Refuses ranges that cannot be expressed in index records.
fn check_span(start: u64, sectors: u64) -> LsmtResult<()> {
    match start.checked_add(sectors) {
        Some(end) if end <= super::index::MAX_OFFSET => Ok(()),
        _ => Err(LsmtError::Invalid(format!(
            "range at sector {start} + {sectors} is beyond the LSMT address space"
        ))),
    }
}

/// Creates a file that must not exist, with `header` at offset 0 when given, made durable.
fn create_new(path: &Path, header: Option<&LsmtHeader>) -> LsmtResult<File> {
    let name = path.display().to_string();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| LsmtError::io(&name, e))?;
    if let Some(h) = header {
        f.write_all_at(&h.encode(), 0)
            .map_err(|e| LsmtError::io(&name, e))?;
    }
    f.sync_all().map_err(|e| LsmtError::io(&name, e))?;
    Ok(f)
}

/// Makes a newly created file's directory entry durable.
fn sync_parent(path: &Path) -> LsmtResult<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LsmtError::io(dir.display().to_string(), e))
}

fn read_header(f: &File, name: &str) -> LsmtResult<[u8; HEADER_SIZE]> {
    let mut buf = [0u8; HEADER_SIZE];
    f.read_exact_at(&mut buf, 0).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            LsmtError::corrupt(name, "file is shorter than the 4096-byte LSMT header")
        } else {
            LsmtError::io(name, e)
        }
    })?;
    Ok(buf)
}

/// Runs layer file I/O off the async executor; a task that died is an I/O error of the layer.
async fn blocking_lsmt<T: Send + 'static>(
    f: impl FnOnce() -> LsmtResult<T> + Send + 'static,
) -> LsmtResult<T> {
    run_blocking(f)
        .await
        .map_err(|e| LsmtError::io("writable layer", e))?
}
