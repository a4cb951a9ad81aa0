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
//! All methods block: call them from `spawn_blocking`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::key::{BlobId, UnitKey};

/// Version 2: per-chunk CRCs. Version-1 files (one CRC over the whole payload) fail the magic
/// check, so they are dropped and refetched like any damaged entry.
const MAGIC: &[u8; 8] = b"OBDUNIT2";
const HEADER_LEN: usize = 32;
/// The granule of verification: the SCSI layer's common read size, so a 4 KiB read touches
/// one chunk (two when unaligned).
const CHUNK: usize = 4096;
const CRC_LEN: usize = 4;
const TMP_MARK: &str = ".tmp-";

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
#[derive(Clone, Default)]
struct CollectEvicted {
    orphans: std::sync::Arc<parking_lot::Mutex<Vec<UnitKey>>>,
}

impl quick_cache::Lifecycle<UnitKey, Entry> for CollectEvicted {
    type RequestState = Vec<UnitKey>;

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
        let lifecycle = CollectEvicted::default();
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
            if !self.index.contains_key(key) {
                let _ = fs::remove_file(self.entry_path(key));
            }
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
        use std::os::unix::fs::FileExt;
        let damaged = ReadFailure::Damaged;
        let file = fs::File::open(path)?;
        let prefix_len = prefix_len(expected_len).ok_or(damaged("payload length overflows"))?;
        let whole_len = prefix_len
            .checked_add(expected_len)
            .ok_or(damaged("payload length overflows"))?;
        // A torn write leaves a short file; a length check (one fstat) catches it even when the
        // chunks this read needs happen to be intact.
        if file.metadata()?.len() != whole_len as u64 {
            return Err(damaged("length mismatch (torn entry)"));
        }
        let mut prefix = vec![0u8; prefix_len];
        file.read_exact_at(&mut prefix, 0)?;
        let table = check_prefix(&prefix, key.index, unit_size, expected_len).map_err(damaged)?;
        let now = SystemTime::now();
        let stale = now
            .duration_since(entry.touched)
            .map_or(true, |age| age >= TOUCH_EVERY);
        // Persist the recency for the next start; best effort (a read-only cache dir still
        // serves).
        if stale && file.set_modified(now).is_ok() {
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
        // Whole chunks around the range: a CRC only vouches for a whole chunk.
        let first_chunk = start / CHUNK;
        let from = first_chunk * CHUNK;
        let to = end
            .div_ceil(CHUNK)
            .checked_mul(CHUNK)
            .map_or(expected_len, |t| t.min(expected_len));
        let mut data = vec![0u8; to - from];
        let at = prefix_len
            .checked_add(from)
            .ok_or(damaged("payload length overflows"))?;
        file.read_exact_at(&mut data, at as u64)?;
        check_chunks(&table, first_chunk, &data).map_err(damaged)?;
        Ok(Bytes::from(data).slice(start - from..end - from))
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
        Ok(())
    }

    /// Records an entry whose file exists, then deletes the files of the units evicted for
    /// it. A unit re-stored between its eviction and the deletion would lose its new file;
    /// the next `get` then finds it unreadable and reports a miss, so the race costs a refetch,
    /// never wrong data.
    fn admit(&self, key: UnitKey, entry: Entry) {
        for gone in self.index.insert_with_lifecycle(key, entry) {
            if !self.index.contains_key(&gone) {
                let _ = fs::remove_file(self.entry_path(&gone));
            }
        }
    }

    /// Deletes a unit's entry, if any.
    pub fn remove(&self, key: &UnitKey) {
        self.index.remove(key);
        let _ = fs::remove_file(self.entry_path(key));
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
mod tests {
    use super::*;

    fn key(blob: u8, index: u64) -> UnitKey {
        UnitKey {
            blob: BlobId::from_digest(&format!("sha256:{}", format!("{blob:02x}").repeat(32))),
            index,
        }
    }

    /// Size of an entry file for a payload of `len` bytes.
    fn entry_len(len: usize) -> usize {
        prefix_len(len).unwrap() + len
    }

    /// A payload whose every byte depends on its position, so a misplaced chunk shows.
    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 4096) as u8).collect()
    }

    #[test]
    fn prefix_roundtrip_and_damage_detection() {
        let payload = patterned(10_000); // two full chunks and a short one
        let p = encode_prefix(7, 16_384, &payload);
        assert_eq!(p.len(), HEADER_LEN + 3 * CRC_LEN);
        let table = check_prefix(&p, 7, 16_384, payload.len()).unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!(check_chunks(&table, 0, &payload), Ok(()));
        assert_eq!(check_chunks(&table, 2, &payload[8192..]), Ok(()));
        assert_eq!(
            check_chunks(&table, 1, &payload[..4096]),
            Err("chunk CRC mismatch"),
            "a chunk checked against another chunk's CRC"
        );
        assert!(
            check_chunks(&table, 3, &payload[..1]).is_err(),
            "past the table"
        );
        assert!(
            check_prefix(&p, 8, 16_384, payload.len()).is_err(),
            "wrong index"
        );
        assert!(
            check_prefix(&p, 7, 8192, payload.len()).is_err(),
            "wrong unit size"
        );
        assert!(check_prefix(&p, 7, 16_384, 9000).is_err(), "wrong length");
        assert!(
            check_prefix(&p[..p.len() - 1], 7, 16_384, payload.len()).is_err(),
            "torn"
        );
        assert!(
            check_prefix(&p[..10], 7, 16_384, payload.len()).is_err(),
            "torn header"
        );
        // Every single-bit flip in the header or the table is caught.
        for byte in 0..p.len() {
            let mut bad = p.clone();
            bad[byte] ^= 0x10;
            assert!(
                check_prefix(&bad, 7, 16_384, payload.len()).is_err(),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
            t.put(&key(1, 0), 4096, &[1u8; 4096]).unwrap();
            t.put(&key(1, 1), 4096, &[2u8; 100]).unwrap();
        }
        let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(t.used_bytes(), (entry_len(4096) + entry_len(100)) as u64);
        assert_eq!(t.get(&key(1, 0), 4096, 4096).unwrap(), vec![1u8; 4096]);
        assert_eq!(t.get(&key(1, 1), 4096, 100).unwrap(), vec![2u8; 100]);
        assert!(t.get(&key(2, 0), 4096, 4096).is_none());
    }

    /// A small tmpfs mounted for a test and unmounted when dropped; `None` (the test says it
    /// is skipped) where mounting is not allowed.
    struct SmallFs(PathBuf);

    impl SmallFs {
        fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
            let mnt = dir.join("small");
            fs::create_dir_all(&mnt).unwrap();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&mnt)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !mounted {
                eprintln!("skipped: cannot mount a tmpfs here (needs root and mount(8))");
                return None;
            }
            Some(SmallFs(mnt))
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    #[test]
    fn a_small_file_system_keeps_its_free_space_floor() {
        let dir = tempfile::tempdir().unwrap();
        let Some(small) = SmallFs::mount(dir.path(), "8m") else {
            return;
        };
        let free = || crate::sys::free_space(&fs::File::open(&small.0).unwrap()).unwrap();
        const MIB: u64 = 1 << 20;
        let floor = 2 * MIB;
        // A bound far above the file system's size: only the floor can stop it filling up.
        let t = DiskTier::open(&small.0, 64 * MIB)
            .unwrap()
            .with_free_floor(floor);
        let unit = patterned(256 << 10);
        for i in 0..100 {
            t.put(&key(1, i), 256 << 10, &unit).unwrap();
            assert!(free() >= floor, "unit {i}: {} bytes free", free());
            assert!(
                t.contains(&key(1, i)),
                "unit {i} was stored, by evicting older ones"
            );
        }
        let entry = entry_len(256 << 10) as u64;
        assert!(
            t.used_bytes() >= 4 * MIB,
            "the tier still caches: {}",
            t.used_bytes()
        );
        assert_eq!(
            walk_files(&small.0) as u64 * entry,
            t.used_bytes(),
            "no orphaned files"
        );
        // Someone else keeps filling the file system: each store evicts more, the floor
        // holds while the tier has anything to give, and once it is empty a unit is simply
        // not stored (no error).
        let filler = small.0.join("filler");
        let mut f = fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; MIB as usize];
        let mut stored = 0;
        for i in 0..100 {
            while free() > MIB {
                f.write_all(&chunk[..(free() - MIB).min(MIB) as usize])
                    .unwrap();
            }
            f.sync_all().unwrap();
            let before = t.used_bytes();
            t.put(&key(2, i), 256 << 10, &unit).expect("never an error");
            if !t.contains(&key(2, i)) {
                assert_eq!(
                    t.used_bytes(),
                    0,
                    "stored nothing while it had units to evict"
                );
                break;
            }
            stored += 1;
            assert!(free() >= floor, "{} bytes free", free());
            assert!(t.used_bytes() < before, "made room by evicting");
        }
        assert!(stored >= 1, "stores evicted before giving up");
        assert_eq!(t.used_bytes(), 0);
        assert_eq!(walk_files(&small.0), 1, "only the filler is left");
        drop(f);
        // Space comes back: storing resumes.
        fs::remove_file(&filler).unwrap();
        t.put(&key(3, 0), 256 << 10, &unit).unwrap();
        assert_eq!(t.get(&key(3, 0), 256 << 10, unit.len()).unwrap(), unit);
    }

    #[test]
    fn size_bound_evicts_cold_units_and_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000) as u64;
        let t = DiskTier::open(dir.path(), 10 * entry).unwrap();
        for i in 0..10 {
            t.put(&key(1, i), 4096, &[i as u8; 1000]).unwrap();
        }
        // Units 0-4 are read again (a working set); then a one-off scan of 10 new units.
        for _ in 0..3 {
            for i in 0..5 {
                assert!(t.get(&key(1, i), 4096, 1000).is_some());
            }
        }
        for i in 10..20 {
            t.put(&key(1, i), 4096, &[i as u8; 1000]).unwrap();
        }
        assert!(t.used_bytes() <= 10 * entry);
        // Every unit the index dropped lost its file, and every unit it kept has one.
        for i in 0..20 {
            assert_eq!(
                t.contains(&key(1, i)),
                t.entry_path(&key(1, i)).exists(),
                "unit {i}"
            );
        }
        assert_eq!(walk_files(dir.path()) as u64 * entry, t.used_bytes());
        let kept = |r: std::ops::Range<u64>| r.filter(|&i| t.contains(&key(1, i))).count();
        assert_eq!(kept(0..5), 5, "the re-read units survive the scan");
        assert!(kept(5..10) < 5, "units read once go first");
        for i in 0..5 {
            assert_eq!(t.get(&key(1, i), 4096, 1000).unwrap(), vec![i as u8; 1000]);
        }
        // Reopening with a smaller bound evicts at start-up.
        drop(t);
        let t = DiskTier::open(dir.path(), 4 * entry).unwrap();
        assert!(t.used_bytes() <= 4 * entry && t.used_bytes() > 0);
        let files = walk_files(dir.path()) as u64;
        assert_eq!(
            files * entry,
            t.used_bytes(),
            "files on disk match the index"
        );
    }

    fn walk_files(p: &Path) -> usize {
        fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { walk_files(&p) } else { 1 })
            .sum()
    }

    #[test]
    fn torn_entry_is_detected_deleted_and_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
        t.put(&key(1, 0), 4096, &[9u8; 4096]).unwrap();
        let path = t.entry_path(&key(1, 0));
        drop(t);
        // Simulate a crash that left a partly written file under the final name, plus a
        // temporary file that never got renamed.
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(2000).unwrap();
        fs::write(
            path.with_file_name(format!("0000000000000001{TMP_MARK}1234")),
            b"junk",
        )
        .unwrap();
        let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(walk_files(dir.path()), 1, "temporary file removed at open");
        assert!(t.get(&key(1, 0), 4096, 4096).is_none());
        assert!(!path.exists(), "damaged entry deleted");
        assert_eq!(t.used_bytes(), 0);
    }

    #[test]
    fn foreign_files_in_the_cache_folder_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join(format!("sha256:{}", "ab".repeat(32)));
        fs::write(&foreign, b"overlaybd's own sparse cache file").unwrap();
        fs::create_dir_all(dir.path().join("notes/readme")).unwrap();
        fs::write(dir.path().join("notes/readme/0000000000000000"), b"x").unwrap();
        let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(t.used_bytes(), 0);
        t.put(&key(1, 0), 4096, &[1; 10]).unwrap();
        assert!(foreign.exists() && dir.path().join("notes/readme/0000000000000000").exists());
    }

    #[test]
    fn entry_larger_than_capacity_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let t = DiskTier::open(dir.path(), 100).unwrap();
        t.put(&key(1, 0), 4096, &[0u8; 200]).unwrap();
        assert_eq!(t.used_bytes(), 0);
        assert!(t.get(&key(1, 0), 4096, 200).is_none());
    }

    /// A tier holding one 10_000-byte unit (two full chunks and a short one) as key (1, 0).
    fn tier_with_unit(dir: &Path) -> (DiskTier, Vec<u8>) {
        let t = DiskTier::open(dir, 1 << 20).unwrap();
        let payload = patterned(10_000);
        t.put(&key(1, 0), 16_384, &payload).unwrap();
        (t, payload)
    }

    #[test]
    fn range_reads_return_exactly_the_requested_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (t, payload) = tier_with_unit(dir.path());
        let n = payload.len();
        for (start, len) in [
            (0, 4096),    // one whole chunk
            (4096, 4096), // a chunk boundary to the next
            (0, 1),
            (4095, 2),    // straddles two chunks
            (100, 200),   // inside a chunk
            (3000, 6000), // mid-chunk start and end over three chunks
            (8192, 1808), // the short last chunk, whole
            (9000, 1000), // ends at the payload's end
            (n - 1, 1),
            (0, n), // the whole unit
            (5000, 0),
        ] {
            let got = t.get_range(&key(1, 0), 16_384, n, start, len);
            assert_eq!(
                got.as_deref(),
                Some(&payload[start..start + len]),
                "{start}+{len}"
            );
        }
        assert_eq!(t.get(&key(1, 0), 16_384, n).as_deref(), Some(&payload[..]));
        // A range beyond the payload is refused, not clamped.
        assert!(t.get_range(&key(1, 0), 16_384, n, n - 10, 11).is_none());
        assert!(t.get_range(&key(1, 0), 16_384, n, usize::MAX, 2).is_none());
    }

    #[test]
    fn a_flipped_payload_byte_fails_only_reads_of_its_chunk_and_drops_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (t, payload) = tier_with_unit(dir.path());
        let n = payload.len();
        let path = t.entry_path(&key(1, 0));
        let mut raw = fs::read(&path).unwrap();
        let prefix = prefix_len(n).unwrap();
        raw[prefix + 5000] ^= 0x01; // inside chunk 1
        fs::write(&path, &raw).unwrap();
        // Ranges that avoid chunk 1 still verify and are right.
        for (start, len) in [(0, 4096), (8192, 1808), (100, 3000)] {
            let got = t.get_range(&key(1, 0), 16_384, n, start, len);
            assert_eq!(
                got.as_deref(),
                Some(&payload[start..start + len]),
                "{start}+{len}"
            );
        }
        // A range touching it (even without the flipped byte itself) misses and drops the entry.
        assert!(t.get_range(&key(1, 0), 16_384, n, 4096, 10).is_none());
        assert!(!path.exists() && !t.contains(&key(1, 0)), "entry removed");
        assert_eq!(t.used_bytes(), 0);
        assert!(
            t.get_range(&key(1, 0), 16_384, n, 0, 10).is_none(),
            "stays gone"
        );
    }

    #[test]
    fn corrupt_payload_anywhere_never_yields_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let n = 10_000;
        let payload = patterned(n);
        let ranges = [(0, n), (0, 4096), (4000, 200), (8192, 1808), (6000, 100)];
        let (mut hits, mut misses) = (0, 0);
        for flip in (0..entry_len(n)).step_by(397) {
            for &(start, len) in &ranges {
                let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
                t.put(&key(1, 0), 16_384, &payload).unwrap();
                let path = t.entry_path(&key(1, 0));
                let mut raw = fs::read(&path).unwrap();
                raw[flip] ^= 0x80;
                fs::write(&path, &raw).unwrap();
                if let Some(got) = t.get_range(&key(1, 0), 16_384, n, start, len) {
                    assert_eq!(
                        &got[..],
                        &payload[start..start + len],
                        "flip {flip}, {start}+{len}"
                    );
                    hits += 1;
                } else {
                    assert!(!path.exists(), "a miss drops the entry (flip {flip})");
                    misses += 1;
                }
            }
        }
        // Both outcomes occur: flips outside a range's chunks spare it, the rest are caught.
        assert!(hits > 0 && misses > 0, "{hits} hits, {misses} misses");
    }

    #[test]
    fn corrupt_header_or_table_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let n = 10_000;
        // Byte 20 is the payload length in the header; byte HEADER_LEN + 4 is chunk 1's CRC.
        for flip in [0, 9, 20, 25, HEADER_LEN - 1, HEADER_LEN + 4] {
            let (t, _) = tier_with_unit(dir.path());
            let path = t.entry_path(&key(1, 0));
            let mut raw = fs::read(&path).unwrap();
            raw[flip] ^= 0x04;
            fs::write(&path, &raw).unwrap();
            // Even a range far from the damaged table entry misses: the header CRC covers it.
            assert!(
                t.get_range(&key(1, 0), 16_384, n, 0, 10).is_none(),
                "flip {flip}"
            );
            assert!(!path.exists(), "flip {flip}: entry removed");
        }
    }

    #[test]
    fn an_old_format_entry_is_a_miss_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let payload = patterned(4096);
        // A version-1 entry, as the previous release wrote it: header (magic, index, unit
        // size, payload length, payload CRC, header CRC) then the payload.
        let mut old = Vec::new();
        old.extend_from_slice(b"OBDUNIT1");
        old.extend_from_slice(&0u64.to_le_bytes());
        old.extend_from_slice(&16_384u32.to_le_bytes());
        old.extend_from_slice(&4096u32.to_le_bytes());
        old.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        let hcrc = crc32c::crc32c(&old);
        old.extend_from_slice(&hcrc.to_le_bytes());
        old.extend_from_slice(&payload);
        let path = {
            let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
            t.entry_path(&key(1, 0))
        };
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &old).unwrap();
        // The start-up walk admits it by name; the first read finds it foreign.
        let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
        assert!(t.contains(&key(1, 0)));
        assert!(t.get_range(&key(1, 0), 16_384, 4096, 0, 10).is_none());
        assert!(!path.exists() && !t.contains(&key(1, 0)));
        // Stored again, it reads back in the new format.
        t.put(&key(1, 0), 16_384, &payload).unwrap();
        assert_eq!(
            t.get(&key(1, 0), 16_384, 4096).as_deref(),
            Some(&payload[..])
        );
    }
}
