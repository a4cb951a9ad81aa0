//! The disk tier: refill units persisted under `cacheDir`, bounded in bytes (eviction chosen by
//! quick_cache, see below), and surviving restarts.
//!
//! Layout: `<root>/<algorithm>/<hex digest>/<unit index, 16 hex digits>`. Each file holds a
//! 32-byte header (magic, unit index, unit size, payload length, chunk size, CRC32C of the
//! header and the table), a table of one CRC32C per 4 KiB chunk of the payload, then the
//! payload. Per-chunk CRCs let a read that needs a few KiB of a 256 KiB unit read and verify
//! only the chunks it covers, instead of the whole unit; the header CRC covers the table, so a
//! damaged table is caught before any chunk is trusted. A unit is written to a temporary file
//! and renamed into place, and every read checks the header, the table, the file length and
//! the CRC of each chunk it returns, so a torn or corrupted file (crash mid-write, bad sector,
//! hand edits, an entry of an older format) is detected, deleted and refetched, never served.
//! No fsync is needed for that guarantee, which keeps fsync off the read path.
//!
//! Which units stay is quick_cache's decision (the same CLOCK-Pro-like policy as the memory
//! tier, weighted by entry size); an eviction deletes the entry's file. Recency survives
//! restarts through file modification times: a hit refreshes them (at most once a minute per
//! entry, to keep metadata writes off busy hits), and start-up admits entries oldest first.
//!
//! The tier also keeps a floor of free space on its file system ([`DiskTier::with_free_floor`];
//! `cacheConfig.minFreeMB`, 1 GiB by default as overlaybd keeps): before a unit is stored, a
//! file system with less free than the floor plus the unit evicts entries (the policy's
//! coldest first) until it has, so the cache shrinks below its bound rather than fill the disk
//! other programs share. If evicting everything is not enough (someone else filled it), the
//! unit is not stored: a miss later, never a failed read.
//!
//! Hits are the fast path. An entry file whose header and table passed their checks stays
//! open (up to a quarter of the process's open-file limit, the coldest closed first), so a
//! later read of the unit is one `pread` of the chunks it covers and their CRCs: no open, no
//! fstat, no header read. [`DiskTier::try_get_range`] does that read without blocking
//! (`preadv2(RWF_NOWAIT)`, page cache only) so the async caller skips the hop to a blocking
//! thread; what it cannot serve that way it hands to [`DiskTier::get_range`]. An open file
//! outlives nothing it should not: evicting or dropping a unit closes it too, so the space of
//! a deleted entry is not held by a descriptor (a read racing an eviction may reopen the old
//! file for one unit; its bytes are still that unit's, and the descriptor is closed when the
//! open-file table next drops it). Entry content never changes under a key (a unit of an
//! immutable blob), so a kept descriptor always reads the right bytes or fails a chunk CRC.
//!
//! Layers can be pinned ([`DiskTier::set_pinned`], kept in `pins.json` in the folder, see
//! [`pins`]): the policy passes over their units, so they stay whatever else is read. Pinned
//! units count against the bound like any other; a unit of an unpinned layer that does not fit
//! beside them is not kept, and pinned units alone may take the tier past its bound (the
//! operator asked for them), never past the free-space floor. [`DiskTier::purge`] drops every
//! unit of a layer.
//!
//! All methods except [`DiskTier::try_get_range`] block: call them from `spawn_blocking`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use self::pins::Pins;
use super::key::{BlobId, UnitKey};
use crate::block::file::{read_cached, read_rest};

mod pins;

/// Version 2: per-chunk CRCs. Version-1 files (one CRC over the whole payload) fail the magic
/// check, so they are dropped and refetched like any damaged entry.
const MAGIC: &[u8; 8] = b"OBDUNIT2";
const HEADER_LEN: usize = 32;
/// The granule of verification: the SCSI layer's common read size, so a 4 KiB read touches
/// one chunk (two when unaligned).
const CHUNK: usize = 4096;
const CRC_LEN: usize = 4;
const TMP_MARK: &str = ".tmp-";
/// The largest read [`DiskTier::try_get_range`] copies on the async thread: a 256 KiB unit
/// from the page cache takes some 20 µs, about what the hand-off to a blocking thread costs.
const INLINE_READ_MAX: usize = 1 << 20;

/// Bytes before the payload (header and chunk table) for a payload of `len` bytes, `None` on
/// overflow.
fn prefix_len(len: usize) -> Option<usize> {
    len.div_ceil(CHUNK)
        .checked_mul(CRC_LEN)?
        .checked_add(HEADER_LEN)
}

/// Encodes an entry's header and chunk table for `payload` (pure; used by `put` and tests).
/// The caller has checked that `unit_size` and the payload length fit in 32 bits.
fn encode_prefix(index: u64, unit_size: u64, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix_len(payload.len()).unwrap_or(HEADER_LEN));
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&index.to_le_bytes());
    p.extend_from_slice(&(unit_size as u32).to_le_bytes());
    p.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    p.extend_from_slice(&(CHUNK as u32).to_le_bytes());
    p.extend_from_slice(&[0; CRC_LEN]); // the header CRC, filled in below
    for chunk in payload.chunks(CHUNK) {
        p.extend_from_slice(&crc32c::crc32c(chunk).to_le_bytes());
    }
    let crc = prefix_crc(&p);
    p[HEADER_LEN - CRC_LEN..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    p
}

/// CRC32C of a prefix (header then table) with the header CRC field itself left out.
fn prefix_crc(prefix: &[u8]) -> u32 {
    let head = prefix.get(..HEADER_LEN - CRC_LEN).unwrap_or_default();
    let table = prefix.get(HEADER_LEN..).unwrap_or_default();
    crc32c::crc32c_append(crc32c::crc32c(head), table)
}

/// Little-endian u32 at `at` in `b` (`None` past the end).
fn le32(b: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    b.get(at..end)?.try_into().ok().map(u32::from_le_bytes)
}

/// Checks an entry's header and chunk table (`prefix`, exactly `prefix_len(expected_len)`
/// bytes) against the unit we expect; returns the table (the CRC of each chunk).
fn check_prefix(
    prefix: &[u8],
    index: u64,
    unit_size: u64,
    expected_len: usize,
) -> Result<Vec<u32>, &'static str> {
    if prefix.get(..8) != Some(MAGIC.as_slice()) {
        return Err("bad magic (damaged entry or older format)");
    }
    if prefix_len(expected_len) != Some(prefix.len()) {
        return Err("short header or table");
    }
    if le32(prefix, HEADER_LEN - CRC_LEN) != Some(prefix_crc(prefix)) {
        return Err("header CRC mismatch");
    }
    let got_index = prefix
        .get(8..16)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes);
    if got_index != Some(index) || le32(prefix, 16).map(u64::from) != Some(unit_size) {
        return Err("entry belongs to another unit or unit size");
    }
    if le32(prefix, 20).and_then(|n| usize::try_from(n).ok()) != Some(expected_len) {
        return Err("payload length mismatch");
    }
    if le32(prefix, 24).and_then(|n| usize::try_from(n).ok()) != Some(CHUNK) {
        return Err("unexpected chunk size");
    }
    let table = prefix.get(HEADER_LEN..).unwrap_or_default();
    Ok(table
        .chunks_exact(CRC_LEN)
        .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
        .collect())
}

/// Checks `data`, the payload's chunks from number `first_chunk` on, against the table.
fn check_chunks(table: &[u32], first_chunk: usize, data: &[u8]) -> Result<(), &'static str> {
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let want = first_chunk
            .checked_add(i)
            .and_then(|n| table.get(n))
            .ok_or("chunk past the table")?;
        if crc32c::crc32c(chunk) != *want {
            return Err("chunk CRC mismatch");
        }
    }
    Ok(())
}

/// The chunks around `[start, end)` of a payload of `len` bytes: (first chunk, first byte,
/// end byte), whole chunks because a CRC only vouches for a whole chunk.
fn chunk_span(start: usize, end: usize, len: usize) -> (usize, usize, usize) {
    let first_chunk = start / CHUNK;
    let to = end
        .div_ceil(CHUNK)
        .checked_mul(CHUNK)
        .map_or(len, |t| t.min(len));
    (first_chunk, first_chunk * CHUNK, to)
}

/// An entry file kept open after its length, header and table passed their checks.
struct OpenEntry {
    file: fs::File,
    /// The CRC of each chunk of the payload.
    table: Box<[u32]>,
    /// Where the payload starts in the file.
    prefix_len: usize,
    /// The unit size and payload length the checks were made for.
    unit_size: u64,
    expected_len: usize,
}

impl OpenEntry {
    /// Whether this open entry was checked as the unit a caller asks for.
    fn is(&self, unit_size: u64, expected_len: usize) -> bool {
        self.unit_size == unit_size && self.expected_len == expected_len
    }
}

/// What [`DiskTier::try_get_range`] found.
pub enum Quick {
    /// The bytes, read and verified without blocking.
    Hit(Bytes),
    /// The tier does not hold the unit (or the range is outside it): a miss.
    Absent,
    /// The tier holds it, but reading it now might block: call [`DiskTier::get_range`] from
    /// a blocking thread.
    WouldBlock,
}

/// How many entry files the tier keeps open: a quarter of the open-file limit (connections,
/// layers and file LUNs need the rest), at least 16 and at most 65 536.
fn open_file_budget() -> usize {
    let limit = crate::sys::open_file_limit().unwrap_or(1024);
    usize::try_from(limit / 4)
        .unwrap_or(usize::MAX)
        .clamp(16, 65_536)
}

/// Why a read of an entry failed: the file could not be read (logged quietly) or its content
/// is damaged (logged as a warning). Either way the entry is dropped.
enum ReadFailure {
    Io(io::Error),
    Damaged(&'static str),
}

impl From<io::Error> for ReadFailure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A hit refreshes the entry file's modification time only when it is older than this: the
/// order across restarts needs no finer grain, and a metadata write per hit would cost more
/// than the hit.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What the index keeps per unit: the entry file's size (its weight) and when its
/// modification time was last refreshed.
#[derive(Clone, Copy)]
struct Entry {
    size: u64,
    touched: SystemTime,
}

#[derive(Clone, Copy, Default)]
struct EntryWeighter;

impl quick_cache::Weighter<UnitKey, Entry> for EntryWeighter {
    fn weight(&self, _key: &UnitKey, val: &Entry) -> u64 {
        val.size.max(1)
    }
}

/// Collects the keys quick_cache evicts during one insert, so their files are deleted after
/// the insert returns rather than inside the cache's lock. Evictions of requests that do not
/// hand their keys back (a capacity change) are parked in `orphans` for the tier to delete.
/// Units of pinned layers are never chosen.
#[derive(Clone)]
struct CollectEvicted {
    orphans: std::sync::Arc<parking_lot::Mutex<Vec<UnitKey>>>,
    pins: Arc<Pins>,
}

impl quick_cache::Lifecycle<UnitKey, Entry> for CollectEvicted {
    type RequestState = Vec<UnitKey>;

    fn is_pinned(&self, key: &UnitKey, _val: &Entry) -> bool {
        self.pins.contains(&key.blob)
    }

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, state: &mut Self::RequestState, key: UnitKey, _val: Entry) {
        state.push(key);
    }

    fn end_request(&self, state: Self::RequestState) {
        self.orphans.lock().extend(state);
    }
}

type Index = quick_cache::sync::Cache<
    UnitKey,
    Entry,
    EntryWeighter,
    quick_cache::DefaultHashBuilder,
    CollectEvicted,
>;

/// What the disk tier holds of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerUsage {
    /// The layer's blob.
    pub blob: BlobId,
    /// Refill units stored.
    pub units: u64,
    /// Bytes of their entry files.
    pub bytes: u64,
    /// Whether the layer is pinned.
    pub pinned: bool,
}

impl LayerUsage {
    /// A layer with nothing stored.
    pub fn empty(blob: BlobId, pinned: bool) -> LayerUsage {
        LayerUsage {
            blob,
            units: 0,
            bytes: 0,
            pinned,
        }
    }
}

/// Refill units persisted in a folder, at most `capacity` bytes of entry files in all.
pub struct DiskTier {
    root: PathBuf,
    capacity: u64,
    index: Index,
    /// Evictions parked by the index (see [`CollectEvicted`]).
    orphans: std::sync::Arc<parking_lot::Mutex<Vec<UnitKey>>>,
    /// Free bytes to leave on the file system; 0 for no floor.
    free_floor: u64,
    /// The root folder, open, for `fstatvfs`.
    root_dir: Option<fs::File>,
    /// When a unit was last refused for want of space (the warning is rate limited).
    refused_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Entry files kept open (see the module doc), bounded in count.
    open_files: quick_cache::sync::Cache<UnitKey, Arc<OpenEntry>>,
    /// Cleared when the file system refuses `RWF_NOWAIT` reads: every read then blocks.
    nowait: AtomicBool,
    /// The pinned layers (shared with the index's lifecycle).
    pins: Arc<Pins>,
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `root`, rebuilding its index from the files
    /// there (oldest modification first in the LRU order), deleting leftover temporary files
    /// and evicting down to `capacity` if it shrank.
    pub fn open(root: &Path, capacity: u64) -> io::Result<Self> {
        fs::create_dir_all(root)
            .map_err(|e| io::Error::new(e.kind(), format!("cache dir {}: {e}", root.display())))?;
        // A folder that exists but cannot be written (another user's, read-only mount) would
        // otherwise fail every refill later, one warning per unit: say so once, here.
        let probe = root.join(format!(
            ".write-test{TMP_MARK}{:08x}",
            rand::random::<u32>()
        ));
        fs::File::create(&probe).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cache folder {} cannot be written: {e} (choose another with \
                     cacheConfig.cacheDir in overlaybd.json or --cache-dir)",
                    root.display()
                ),
            )
        })?;
        let _ = fs::remove_file(&probe);
        let mut found: Vec<(SystemTime, UnitKey, u64)> = Vec::new();
        // Only `<algo>/<hex>/<index>` entries are ours; anything else in the folder (e.g. the
        // reference daemon's own cache files) is left alone, and an unreadable sub-folder is
        // skipped rather than failing the whole cache.
        for algo in read_dirs(root) {
            for blob in read_dirs(&algo) {
                let id = format!("{}:{}", file_name(&algo), file_name(&blob));
                if BlobId::parse(&id).is_none() {
                    continue;
                }
                let blob_id = BlobId::from_digest(&id);
                for entry in fs::read_dir(&blob).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.contains(TMP_MARK) {
                        // A write that never reached its rename: garbage from a crash.
                        let _ = fs::remove_file(entry.path());
                        continue;
                    }
                    let Ok(index) = u64::from_str_radix(&name, 16) else {
                        continue;
                    };
                    let Ok(meta) = entry.metadata() else { continue };
                    if meta.is_file() {
                        found.push((
                            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            UnitKey {
                                blob: blob_id.clone(),
                                index,
                            },
                            meta.len(),
                        ));
                    }
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let items = usize::try_from(capacity / 65_536)
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 20);
        // One shard: quick_cache splits the weight capacity between shards, and a unit must
        // fit in one; the disk tier's cost is the file system, not this lock.
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(capacity.max(1))
            .shards(1)
            .build()
            .map_err(|e| io::Error::other(format!("disk cache index: {e:?}")))?;
        let pins = Arc::new(Pins::load(root));
        let lifecycle = CollectEvicted {
            orphans: Arc::default(),
            pins: Arc::clone(&pins),
        };
        let tier = Self {
            root: root.to_path_buf(),
            capacity,
            orphans: std::sync::Arc::clone(&lifecycle.orphans),
            index: Index::with_options(
                options,
                EntryWeighter,
                quick_cache::DefaultHashBuilder::default(),
                lifecycle,
            ),
            free_floor: 0,
            root_dir: fs::File::open(root).ok(),
            refused_at: parking_lot::Mutex::new(None),
            open_files: quick_cache::sync::Cache::new(open_file_budget()),
            nowait: AtomicBool::new(true),
            pins,
        };
        // Oldest first, so the policy sees the last run's recency; a shrunk bound evicts here.
        for (touched, key, size) in found {
            tier.admit(key, Entry { size, touched });
        }
        Ok(tier)
    }

    /// Keeps at least `bytes` free on the tier's file system (see the module doc).
    pub fn with_free_floor(mut self, bytes: u64) -> Self {
        self.free_floor = bytes;
        self
    }

    /// Makes room for a `size`-byte entry above the free-space floor, evicting entries if
    /// needed; false when even that leaves too little (the entry is then not stored).
    fn make_room(&self, size: u64) -> bool {
        let Some(dir) = self.root_dir.as_ref().filter(|_| self.free_floor > 0) else {
            return true;
        };
        let need = self.free_floor.saturating_add(size);
        let Ok(free) = crate::sys::free_space(dir) else {
            return true;
        };
        if free >= need {
            return true;
        }
        // Shrink the index by the deficit (the policy picks what goes), then restore the
        // bound: the floor, not the bound, is what limits the tier while the disk is short.
        let used = self.index.weight();
        self.index
            .set_capacity(used.saturating_sub(need - free).max(1));
        self.index.set_capacity(self.capacity.max(1));
        let gone: Vec<UnitKey> = std::mem::take(&mut *self.orphans.lock());
        for key in &gone {
            self.drop_file(key);
        }
        let free = crate::sys::free_space(dir).unwrap_or(0);
        if free >= need {
            return true;
        }
        let mut refused = self.refused_at.lock();
        if !refused.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            *refused = Some(std::time::Instant::now());
            tracing::warn!(
                folder = %self.root.display(),
                free_bytes = free,
                floor_bytes = self.free_floor,
                "the cache's file system is below its free-space floor even with the cache \
                 emptied; not storing more until space is freed (reads still work)"
            );
        }
        false
    }

    /// The folder of the tier.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a unit's entry file.
    pub fn entry_path(&self, key: &UnitKey) -> PathBuf {
        let (algo, hex) = key.blob.parts();
        self.root
            .join(algo)
            .join(hex)
            .join(format!("{:016x}", key.index))
    }

    /// The unit's payload if a whole, matching entry exists (`expected_len` bytes for a unit
    /// of `unit_size`). A damaged entry is deleted and reported as a miss.
    pub fn get(&self, key: &UnitKey, unit_size: u64, expected_len: usize) -> Option<Bytes> {
        self.get_range(key, unit_size, expected_len, 0, expected_len)
    }

    /// [`DiskTier::get_range`] without blocking: from an entry already open and checked, and
    /// only from the page cache. [`Quick::WouldBlock`] when it would have to open the file,
    /// wait for the disk, or refresh the entry's modification time, and when a chunk fails
    /// its CRC (the blocking read checks again and drops the entry). Never blocks.
    pub fn try_get_range(
        &self,
        key: &UnitKey,
        unit_size: u64,
        expected_len: usize,
        start: usize,
        len: usize,
    ) -> Quick {
        let Some(end) = start.checked_add(len).filter(|&e| e <= expected_len) else {
            return Quick::Absent;
        };
        let Some(entry) = self.index.get(key) else {
            return Quick::Absent;
        };
        if is_stale(entry.touched, SystemTime::now()) {
            return Quick::WouldBlock;
        }
        let Some(open) = self
            .open_files
            .get(key)
            .filter(|o| o.is(unit_size, expected_len))
        else {
            return Quick::WouldBlock;
        };
        if start == end {
            return Quick::Hit(Bytes::new());
        }
        let (first_chunk, from, to) = chunk_span(start, end, expected_len);
        let Some(at) = open.prefix_len.checked_add(from) else {
            return Quick::WouldBlock;
        };
        if to - from > INLINE_READ_MAX {
            return Quick::WouldBlock;
        }
        let mut buf = BytesMut::with_capacity(to - from);
        if !read_cached(&open.file, &mut buf, to - from, at as u64, &self.nowait)
            || check_chunks(&open.table, first_chunk, &buf).is_err()
        {
            return Quick::WouldBlock;
        }
        Quick::Hit(buf.freeze().slice(start - from..end - from))
    }

    /// Bytes `[start, start + len)` of the unit's payload, reading and verifying only the
    /// header, the table and the 4 KiB chunks that range covers. A damaged header, table or
    /// covered chunk deletes the entry and reports a miss; so does a range outside the
    /// `expected_len`-byte payload (a caller's mistake, never served as data).
    pub fn get_range(
        &self,
        key: &UnitKey,
        unit_size: u64,
        expected_len: usize,
        start: usize,
        len: usize,
    ) -> Option<Bytes> {
        let end = start.checked_add(len).filter(|&e| e <= expected_len)?;
        // `get` also counts the hit for the eviction policy.
        let entry = self.index.get(key)?;
        let path = self.entry_path(key);
        match self.read_range(key, entry, &path, unit_size, expected_len, start, end) {
            Ok(bytes) => Some(bytes),
            Err(ReadFailure::Io(e)) => {
                tracing::debug!(path = %path.display(), error = %e, "disk cache entry unreadable");
                self.remove(key);
                None
            }
            Err(ReadFailure::Damaged(why)) => {
                tracing::warn!(path = %path.display(), why, "dropping damaged disk cache entry");
                self.remove(key);
                None
            }
        }
    }

    /// The checked read behind `get_range`, for `start..end` within the payload.
    #[allow(clippy::too_many_arguments)]
    fn read_range(
        &self,
        key: &UnitKey,
        entry: Entry,
        path: &Path,
        unit_size: u64,
        expected_len: usize,
        start: usize,
        end: usize,
    ) -> Result<Bytes, ReadFailure> {
        let open = self.open_entry(key, path, unit_size, expected_len)?;
        let now = SystemTime::now();
        // Persist the recency for the next start; best effort (a read-only cache dir still
        // serves).
        if is_stale(entry.touched, now) && open.file.set_modified(now).is_ok() {
            self.index
                .replace(
                    key.clone(),
                    Entry {
                        touched: now,
                        ..entry
                    },
                    true,
                )
                .ok();
        }
        if start == end {
            return Ok(Bytes::new());
        }
        let (first_chunk, from, to) = chunk_span(start, end, expected_len);
        let at = open
            .prefix_len
            .checked_add(from)
            .ok_or(ReadFailure::Damaged("payload length overflows"))?;
        let mut data = BytesMut::with_capacity(to - from);
        read_rest(&open.file, &mut data, to - from, at as u64)?;
        check_chunks(&open.table, first_chunk, &data).map_err(ReadFailure::Damaged)?;
        Ok(data.freeze().slice(start - from..end - from))
    }

    /// The unit's entry file, open and checked: the kept one, or the file opened now, whose
    /// length, header and table are checked before it is kept.
    fn open_entry(
        &self,
        key: &UnitKey,
        path: &Path,
        unit_size: u64,
        expected_len: usize,
    ) -> Result<Arc<OpenEntry>, ReadFailure> {
        if let Some(open) = self
            .open_files
            .get(key)
            .filter(|o| o.is(unit_size, expected_len))
        {
            return Ok(open);
        }
        use std::os::unix::fs::FileExt;
        let damaged = ReadFailure::Damaged;
        let file = fs::File::open(path)?;
        let prefix_len = prefix_len(expected_len).ok_or(damaged("payload length overflows"))?;
        let whole_len = prefix_len
            .checked_add(expected_len)
            .ok_or(damaged("payload length overflows"))?;
        // A torn write leaves a short file; a length check (one fstat) catches it even when the
        // chunks a read needs happen to be intact.
        if file.metadata()?.len() != whole_len as u64 {
            return Err(damaged("length mismatch (torn entry)"));
        }
        let mut prefix = vec![0u8; prefix_len];
        file.read_exact_at(&mut prefix, 0)?;
        let table = check_prefix(&prefix, key.index, unit_size, expected_len).map_err(damaged)?;
        let open = Arc::new(OpenEntry {
            file,
            table: table.into_boxed_slice(),
            prefix_len,
            unit_size,
            expected_len,
        });
        self.open_files.insert(key.clone(), Arc::clone(&open));
        // An eviction that ran between this read's index lookup and the insert above has
        // already closed what it could: close this one too, so no descriptor keeps a
        // deleted entry's space.
        if !self.index.contains_key(key) {
            self.open_files.remove(key);
        }
        Ok(open)
    }

    /// Stores a unit; the units the policy evicts to make room lose their files.
    pub fn put(&self, key: &UnitKey, unit_size: u64, payload: &[u8]) -> io::Result<()> {
        let Some(size) = prefix_len(payload.len())
            .and_then(|p| p.checked_add(payload.len()))
            .map(|n| n as u64)
        else {
            return Ok(());
        };
        if size > self.capacity
            || payload.len() > u32::MAX as usize
            || unit_size > u64::from(u32::MAX)
        {
            return Ok(());
        }
        if !self.make_room(size) {
            return Ok(());
        }
        let path = self.entry_path(key);
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            "{:016x}{TMP_MARK}{:08x}",
            key.index,
            rand::random::<u32>()
        ));
        let written = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&encode_prefix(key.index, unit_size, payload))?;
            f.write_all(payload)
        });
        if let Err(e) = written.and_then(|_| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.admit(
            key.clone(),
            Entry {
                size,
                touched: SystemTime::now(),
            },
        );
        // With pinned layers filling the bound, the policy found nothing to evict for it.
        if self.index.weight() > self.capacity && !self.pins.contains(&key.blob) {
            self.remove(key);
        }
        Ok(())
    }

    /// Records an entry whose file exists, then deletes the files of the units evicted for
    /// it. A unit re-stored between its eviction and the deletion would lose its new file;
    /// the next `get` then finds it unreadable and reports a miss, so the race costs a refetch,
    /// never wrong data.
    fn admit(&self, key: UnitKey, entry: Entry) {
        for gone in self.index.insert_with_lifecycle(key, entry) {
            self.drop_file(&gone);
        }
    }

    /// Closes and deletes the file of a unit the index evicted, unless it was stored again.
    fn drop_file(&self, key: &UnitKey) {
        if !self.index.contains_key(key) {
            self.open_files.remove(key);
            let _ = fs::remove_file(self.entry_path(key));
        }
    }

    /// Deletes a unit's entry, if any.
    pub fn remove(&self, key: &UnitKey) {
        self.index.remove(key);
        self.open_files.remove(key);
        let _ = fs::remove_file(self.entry_path(key));
    }

    /// Every layer the tier holds units of, and every pinned one, in digest order.
    pub fn layers(&self) -> Vec<LayerUsage> {
        let mut by_blob: std::collections::BTreeMap<BlobId, (u64, u64)> = Default::default();
        for blob in self.pins.list() {
            by_blob.entry(blob).or_default();
        }
        for (key, entry) in self.index.iter() {
            let usage = by_blob.entry(key.blob).or_default();
            usage.0 += 1;
            usage.1 += entry.size;
        }
        by_blob
            .into_iter()
            .map(|(blob, (units, bytes))| LayerUsage {
                pinned: self.pins.contains(&blob),
                blob,
                units,
                bytes,
            })
            .collect()
    }

    /// Whether `blob` is pinned.
    pub fn is_pinned(&self, blob: &BlobId) -> bool {
        self.pins.contains(blob)
    }

    /// Pins (or unpins) a layer and saves the pin list; false when it already was so. A
    /// failed save changes nothing.
    pub fn set_pinned(&self, blob: &BlobId, pinned: bool) -> io::Result<bool> {
        self.pins.set(blob, pinned)
    }

    /// Deletes every unit of `blob` (pinned or not: callers decide); returns what it held.
    pub fn purge(&self, blob: &BlobId) -> LayerUsage {
        let keys: Vec<(UnitKey, u64)> = self
            .index
            .iter()
            .filter(|(key, _)| key.blob == *blob)
            .map(|(key, entry)| (key, entry.size))
            .collect();
        let mut gone = LayerUsage::empty(blob.clone(), self.pins.contains(blob));
        for (key, size) in keys {
            self.remove(&key);
            gone.units += 1;
            gone.bytes += size;
        }
        // The blob's folder, now empty unless a unit was stored meanwhile (then it stays).
        if let Some(folder) = self
            .entry_path(&UnitKey {
                blob: blob.clone(),
                index: 0,
            })
            .parent()
        {
            let _ = fs::remove_dir(folder);
        }
        gone
    }

    /// How many entry files are open now (tests check the eviction closes them).
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.open_files.len()
    }

    /// Bytes of entry files currently accounted.
    pub fn used_bytes(&self) -> u64 {
        self.index.weight()
    }

    /// Whether the unit is present (without reading or checking it).
    pub fn contains(&self, key: &UnitKey) -> bool {
        self.index.contains_key(key)
    }
}

/// Whether an entry last touched at `touched` should have its modification time refreshed.
fn is_stale(touched: SystemTime, now: SystemTime) -> bool {
    now.duration_since(touched)
        .map_or(true, |age| age >= TOUCH_EVERY)
}

/// The sub-folders of `dir` (none if it cannot be read).
fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
