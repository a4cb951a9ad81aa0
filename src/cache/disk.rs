//! The disk tier: refill units persisted under `cacheDir`, bounded in bytes, evicting the least
//! recently used units first, and surviving restarts.
//!
//! Layout: `<root>/<algorithm>/<hex digest>/<unit index, 16 hex digits>`. Each file holds a
//! 32-byte header (magic, unit index, unit size, payload length, CRC32C of the payload, CRC32C
//! of the header) and the payload. A unit is written to a temporary file and renamed into
//! place, and every read checks the header and the CRC, so a torn or corrupted file (crash
//! mid-write, bad sector, hand edits) is detected, deleted and refetched, never served. No
//! fsync is needed for that guarantee, which keeps fsync off the read path.
//!
//! Which units stay is quick_cache's decision (the same CLOCK-Pro-like policy as the memory
//! tier, weighted by entry size); an eviction deletes the entry's file. Recency survives
//! restarts through file modification times: a hit refreshes them (at most once a minute per
//! entry, to keep metadata writes off busy hits), and start-up admits entries oldest first.
//! All methods block: call them from `spawn_blocking`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::key::{BlobId, UnitKey};

const MAGIC: &[u8; 8] = b"OBDUNIT1";
const HEADER_LEN: usize = 32;
const TMP_MARK: &str = ".tmp-";

/// Encodes an entry header for `payload` (pure; used by `put` and by tests).
fn encode_header(index: u64, unit_size: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&index.to_le_bytes());
    h[16..20].copy_from_slice(&(unit_size as u32).to_le_bytes());
    h[20..24].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[24..28].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let hcrc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&hcrc.to_le_bytes());
    h
}

/// Checks an entry's bytes; returns the payload range when the entry is whole and is the
/// unit we expect.
fn check_entry(
    bytes: &[u8],
    index: u64,
    unit_size: u64,
    expected_len: usize,
) -> Result<std::ops::Range<usize>, &'static str> {
    let h = bytes.get(..HEADER_LEN).ok_or("short header")?;
    let word = |r: std::ops::Range<usize>| -> u32 {
        h.get(r)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    if h.get(..8) != Some(MAGIC.as_slice()) {
        return Err("bad magic");
    }
    if crc32c::crc32c(h.get(..28).unwrap_or_default()) != word(28..32) {
        return Err("header CRC mismatch");
    }
    let got_index = h
        .get(8..16)
        .and_then(|s| s.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes);
    if got_index != index || u64::from(word(16..20)) != unit_size {
        return Err("entry belongs to another unit or unit size");
    }
    let len = word(20..24) as usize;
    if len != expected_len || bytes.len() != HEADER_LEN + len {
        return Err("length mismatch (torn entry)");
    }
    let payload = HEADER_LEN..HEADER_LEN + len;
    if crc32c::crc32c(
        bytes
            .get(payload.clone())
            .ok_or("length mismatch (torn entry)")?,
    ) != word(24..28)
    {
        return Err("payload CRC mismatch");
    }
    Ok(payload)
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
/// the insert returns rather than inside the cache's lock.
#[derive(Clone, Copy, Default)]
struct CollectEvicted;

impl quick_cache::Lifecycle<UnitKey, Entry> for CollectEvicted {
    type RequestState = Vec<UnitKey>;

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, state: &mut Self::RequestState, key: UnitKey, _val: Entry) {
        state.push(key);
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
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `root`, rebuilding its index from the files
    /// there (oldest modification first in the LRU order), deleting leftover temporary files
    /// and evicting down to `capacity` if it shrank.
    pub fn open(root: &Path, capacity: u64) -> io::Result<Self> {
        fs::create_dir_all(root)
            .map_err(|e| io::Error::new(e.kind(), format!("cache dir {}: {e}", root.display())))?;
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
        let tier = Self {
            root: root.to_path_buf(),
            capacity,
            index: Index::with_options(
                options,
                EntryWeighter,
                quick_cache::DefaultHashBuilder::default(),
                CollectEvicted,
            ),
        };
        // Oldest first, so the policy sees the last run's recency; a shrunk bound evicts here.
        for (touched, key, size) in found {
            tier.admit(key, Entry { size, touched });
        }
        Ok(tier)
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
        // `get` also counts the hit for the eviction policy.
        let entry = self.index.get(key)?;
        let path = self.entry_path(key);
        let mut bytes = Vec::with_capacity(HEADER_LEN + expected_len);
        let now = SystemTime::now();
        let stale = now
            .duration_since(entry.touched)
            .map_or(true, |age| age >= TOUCH_EVERY);
        let read = fs::File::open(&path).and_then(|mut f| {
            f.read_to_end(&mut bytes)?;
            // Persist the recency for the next start; best effort (a read-only cache dir
            // still serves).
            if stale && f.set_modified(now).is_ok() {
                self.index.replace(key.clone(), Entry { touched: now, ..entry }, true).ok();
            }
            Ok(())
        });
        if let Err(e) = read {
            tracing::debug!(path = %path.display(), error = %e, "disk cache entry unreadable");
            self.remove(key);
            return None;
        }
        match check_entry(&bytes, key.index, unit_size, expected_len) {
            Ok(range) => Some(Bytes::from(bytes).slice(range)),
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "dropping damaged disk cache entry");
                self.remove(key);
                None
            }
        }
    }

    /// Stores a unit; the units the policy evicts to make room lose their files.
    pub fn put(&self, key: &UnitKey, unit_size: u64, payload: &[u8]) -> io::Result<()> {
        let size = (HEADER_LEN + payload.len()) as u64;
        if size > self.capacity
            || payload.len() > u32::MAX as usize
            || unit_size > u64::from(u32::MAX)
        {
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
            f.write_all(&encode_header(key.index, unit_size, payload))?;
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

    #[test]
    fn entry_roundtrip_and_damage_detection() {
        let payload = b"hello unit";
        let mut e = encode_header(7, 4096, payload).to_vec();
        e.extend_from_slice(payload);
        assert_eq!(
            &e[check_entry(&e, 7, 4096, payload.len()).unwrap()],
            payload
        );
        assert!(
            check_entry(&e, 8, 4096, payload.len()).is_err(),
            "wrong index"
        );
        assert!(
            check_entry(&e, 7, 8192, payload.len()).is_err(),
            "wrong unit size"
        );
        assert!(
            check_entry(&e[..e.len() - 1], 7, 4096, payload.len()).is_err(),
            "torn"
        );
        assert!(
            check_entry(&e[..10], 7, 4096, payload.len()).is_err(),
            "torn header"
        );
        let mut flipped = e.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            check_entry(&flipped, 7, 4096, payload.len()),
            Err("payload CRC mismatch")
        );
        let mut hflip = e.clone();
        hflip[20] ^= 1;
        assert_eq!(
            check_entry(&hflip, 7, 4096, payload.len()),
            Err("header CRC mismatch")
        );
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
        assert_eq!(t.used_bytes(), (2 * HEADER_LEN + 4096 + 100) as u64);
        assert_eq!(t.get(&key(1, 0), 4096, 4096).unwrap(), vec![1u8; 4096]);
        assert_eq!(t.get(&key(1, 1), 4096, 100).unwrap(), vec![2u8; 100]);
        assert!(t.get(&key(2, 0), 4096, 4096).is_none());
    }

    #[test]
    fn size_bound_evicts_cold_units_and_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let entry = (HEADER_LEN + 1000) as u64;
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
            assert_eq!(t.contains(&key(1, i)), t.entry_path(&key(1, i)).exists(), "unit {i}");
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
        assert_eq!(files * entry, t.used_bytes(), "files on disk match the index");
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
}
