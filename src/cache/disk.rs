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
//! The LRU order is kept in memory and persisted through file modification times, which are
//! refreshed on every hit and read back at start-up. All methods block: call them from
//! `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;

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

#[derive(Default)]
struct Index {
    /// Key -> (bytes on disk, LRU tick).
    entries: HashMap<UnitKey, (u64, u64)>,
    /// LRU tick -> key; the first entry is the least recently used.
    lru: BTreeMap<u64, UnitKey>,
    next_tick: u64,
    used: u64,
}

impl Index {
    fn touch(&mut self, key: &UnitKey) {
        let tick = self.next_tick;
        if let Some((_, t)) = self.entries.get_mut(key) {
            self.lru.remove(t);
            *t = tick;
            self.lru.insert(tick, key.clone());
            self.next_tick += 1;
        }
    }

    fn insert(&mut self, key: UnitKey, size: u64) {
        self.remove(&key);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(tick, key.clone());
        self.entries.insert(key, (size, tick));
        self.used += size;
    }

    fn remove(&mut self, key: &UnitKey) -> bool {
        match self.entries.remove(key) {
            Some((size, tick)) => {
                self.lru.remove(&tick);
                self.used -= size;
                true
            }
            None => false,
        }
    }
}

/// Refill units persisted in a folder, at most `capacity` bytes of entry files in all.
pub struct DiskTier {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
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
        let tier = Self {
            root: root.to_path_buf(),
            capacity,
            index: Mutex::new(Index::default()),
        };
        {
            let mut idx = tier.index.lock();
            for (_, key, size) in found {
                idx.insert(key, size);
            }
            tier.evict_locked(&mut idx);
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
        if !self.index.lock().entries.contains_key(key) {
            return None;
        }
        let path = self.entry_path(key);
        let mut bytes = Vec::with_capacity(HEADER_LEN + expected_len);
        let read = fs::File::open(&path).and_then(|mut f| {
            f.read_to_end(&mut bytes)?;
            // Persist the LRU position; best effort (a read-only cache dir still serves).
            let _ = f.set_modified(SystemTime::now());
            Ok(())
        });
        if let Err(e) = read {
            tracing::debug!(path = %path.display(), error = %e, "disk cache entry unreadable");
            self.remove(key);
            return None;
        }
        match check_entry(&bytes, key.index, unit_size, expected_len) {
            Ok(range) => {
                self.index.lock().touch(key);
                Some(Bytes::from(bytes).slice(range))
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "dropping damaged disk cache entry");
                self.remove(key);
                None
            }
        }
    }

    /// Stores a unit, then evicts least recently used units until the tier fits.
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
        let mut idx = self.index.lock();
        idx.insert(key.clone(), size);
        self.evict_locked(&mut idx);
        Ok(())
    }

    /// Deletes a unit's entry, if any.
    pub fn remove(&self, key: &UnitKey) {
        let mut idx = self.index.lock();
        idx.remove(key);
        // Unlink under the lock so a concurrent `put` of the same unit cannot lose its file.
        let _ = fs::remove_file(self.entry_path(key));
    }

    /// Bytes of entry files currently accounted.
    pub fn used_bytes(&self) -> u64 {
        self.index.lock().used
    }

    /// Whether the unit is present (without reading or checking it).
    pub fn contains(&self, key: &UnitKey) -> bool {
        self.index.lock().entries.contains_key(key)
    }

    fn evict_locked(&self, idx: &mut Index) {
        while idx.used > self.capacity {
            let Some((_, key)) = idx.lru.pop_first() else {
                break;
            };
            if let Some((size, _)) = idx.entries.remove(&key) {
                idx.used -= size;
            }
            let _ = fs::remove_file(self.entry_path(&key));
        }
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
    fn size_bound_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let entry = (HEADER_LEN + 1000) as u64;
        let t = DiskTier::open(dir.path(), 3 * entry).unwrap();
        for i in 0..3 {
            t.put(&key(1, i), 4096, &[i as u8; 1000]).unwrap();
        }
        assert!(t.get(&key(1, 0), 4096, 1000).is_some()); // 0 becomes most recent
        t.put(&key(1, 3), 4096, &[3u8; 1000]).unwrap();
        assert!(t.used_bytes() <= 3 * entry);
        assert!(!t.contains(&key(1, 1)), "least recently used went first");
        assert!(!t.entry_path(&key(1, 1)).exists());
        assert!(t.contains(&key(1, 0)) && t.contains(&key(1, 2)) && t.contains(&key(1, 3)));
        // Reopening with a smaller bound evicts at start-up.
        drop(t);
        let t = DiskTier::open(dir.path(), entry).unwrap();
        assert!(t.used_bytes() <= entry);
        let files = walk_files(dir.path());
        assert_eq!(files, 1, "files on disk match the bound");
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
