//! The disk tier's tests: each claim of the module doc, attacked.

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

/// The deleted files under `root` this process still holds open (their space is not
/// freed while it does).
fn deleted_but_open(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(&root) && p.ends_with(" (deleted)"))
        .collect()
}

#[test]
fn an_opened_entry_is_read_without_blocking_and_still_checked() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (t, payload) = tier_with_unit(dir.path());
    let (k, n) = (key(1, 0), payload.len());
    let quick = |start: usize, len: usize| t.try_get_range(&k, 16_384, n, start, len);
    assert!(matches!(
        t.try_get_range(&key(2, 0), 16_384, n, 0, 10),
        Quick::Absent
    ));
    assert!(matches!(quick(n - 10, 11), Quick::Absent), "past the end");
    // Not open yet: the first read opens and checks the file, which may block.
    assert!(matches!(quick(0, 10), Quick::WouldBlock));
    assert_eq!(
        t.get_range(&k, 16_384, n, 0, 10).as_deref(),
        Some(&payload[..10])
    );
    assert_eq!(t.open_count(), 1);
    if !t.nowait.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("skipped the inline reads: this file system refuses RWF_NOWAIT");
        return;
    }
    for (start, len) in [
        (0, 4096),
        (4095, 2),
        (3000, 6000),
        (9000, 1000),
        (0, n),
        (7, 0),
    ] {
        match quick(start, len) {
            Quick::Hit(b) => assert_eq!(&b[..], &payload[start..start + len], "{start}+{len}"),
            _ => panic!("{start}+{len}: not served inline"),
        }
    }
    // The open entry was checked for this unit size and length only.
    assert!(matches!(
        t.try_get_range(&k, 32_768, n, 0, 10),
        Quick::WouldBlock
    ));
    // Bit rot in the open file (the same inode): the chunk's CRC still catches it, inline
    // and in the blocking read, which drops the entry and closes the file.
    let path = t.entry_path(&k);
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let at = (prefix_len(n).unwrap() + 5000) as u64;
    file.write_all_at(&[payload[5000] ^ 0x10], at).unwrap();
    drop(file);
    assert!(matches!(quick(4096, 10), Quick::WouldBlock));
    assert!(
        matches!(quick(0, 4096), Quick::Hit(_)),
        "other chunks still serve"
    );
    assert!(t.get_range(&k, 16_384, n, 4096, 10).is_none());
    assert!(!path.exists());
    assert!(matches!(quick(0, 10), Quick::Absent));
    assert_eq!(t.open_count(), 0);
    assert_eq!(deleted_but_open(dir.path()), Vec::<String>::new());
}

#[test]
fn an_evicted_entry_is_closed_as_well_as_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4096;
    // Room for two entries.
    let t = DiskTier::open(dir.path(), 2 * entry_len(n) as u64).unwrap();
    let payload = patterned(n);
    for index in 0..6 {
        t.put(&key(1, index), 16_384, &payload).unwrap();
        // Read every stored unit, so each is opened while it is held.
        for held in 0..=index {
            if t.contains(&key(1, held)) {
                assert_eq!(
                    t.get(&key(1, held), 16_384, n).as_deref(),
                    Some(&payload[..])
                );
            }
        }
    }
    let held = (0..6).filter(|&i| t.contains(&key(1, i))).count();
    assert!(held <= 2, "{held} held");
    assert!(t.open_count() <= held, "{} open", t.open_count());
    assert_eq!(deleted_but_open(dir.path()), Vec::<String>::new());
    for index in (0..6).filter(|&i| !t.contains(&key(1, i))) {
        assert!(matches!(
            t.try_get_range(&key(1, index), 16_384, n, 0, 10),
            Quick::Absent
        ));
    }
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

#[test]
fn a_pinned_layer_outlives_other_reads_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4096;
    let payload = patterned(n);
    let blob_a = key(1, 0).blob;
    {
        // Room for four entries.
        let t = DiskTier::open(dir.path(), 4 * entry_len(n) as u64).unwrap();
        t.put(&key(1, 0), 16_384, &payload).unwrap();
        t.put(&key(1, 1), 16_384, &payload).unwrap();
        assert!(t.set_pinned(&blob_a, true).unwrap());
        for index in 0..20 {
            t.put(&key(2, index), 16_384, &payload).unwrap();
            t.get(&key(2, index), 16_384, n);
        }
        assert!(t.contains(&key(1, 0)) && t.contains(&key(1, 1)));
        assert!(t.entry_path(&key(1, 1)).exists());
        assert!(t.used_bytes() <= 4 * entry_len(n) as u64);
    }
    let t = DiskTier::open(dir.path(), 4 * entry_len(n) as u64).unwrap();
    let layers = t.layers();
    let a = layers.iter().find(|l| l.blob == blob_a).unwrap();
    assert_eq!(
        (a.units, a.bytes, a.pinned),
        (2, 2 * entry_len(n) as u64, true)
    );
    assert!(layers.iter().all(|l| l.blob == blob_a || !l.pinned));
    drop(t);
    // A bound shrunk below the pinned layer keeps it whole...
    let t = DiskTier::open(dir.path(), entry_len(n) as u64).unwrap();
    assert!(t.contains(&key(1, 0)) && t.contains(&key(1, 1)));
    // ...and once unpinned it is evicted like any other.
    assert!(t.set_pinned(&blob_a, false).unwrap());
    drop(t);
    let t = DiskTier::open(dir.path(), entry_len(n) as u64 * 3 / 2).unwrap();
    assert!(t.layers().iter().map(|l| l.units).sum::<u64>() <= 1);
    assert!(!(t.contains(&key(1, 0)) && t.contains(&key(1, 1))));
}

#[test]
fn units_that_do_not_fit_beside_pinned_ones_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4096;
    let payload = patterned(n);
    let t = DiskTier::open(dir.path(), 2 * entry_len(n) as u64).unwrap();
    t.set_pinned(&key(1, 0).blob, true).unwrap();
    for index in 0..3 {
        t.put(&key(1, index), 16_384, &payload).unwrap();
    }
    // Pinned units may pass the bound: the operator asked for them.
    assert!((0..3).all(|i| t.contains(&key(1, i))));
    t.put(&key(2, 0), 16_384, &payload).unwrap();
    assert!(!t.contains(&key(2, 0)));
    assert!(!t.entry_path(&key(2, 0)).exists());
    assert_eq!(t.used_bytes(), 3 * entry_len(n) as u64);
}

#[test]
fn purging_a_layer_deletes_and_closes_all_its_units_only() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4096;
    let payload = patterned(n);
    let t = DiskTier::open(dir.path(), 1 << 20).unwrap();
    for index in 0..3 {
        t.put(&key(1, index), 16_384, &payload).unwrap();
        t.put(&key(2, index), 16_384, &payload).unwrap();
        // Opened, so purging must close them.
        t.get(&key(1, index), 16_384, n).unwrap();
    }
    let folder = t.entry_path(&key(1, 0)).parent().unwrap().to_path_buf();
    let gone = t.purge(&key(1, 0).blob);
    assert_eq!((gone.units, gone.bytes), (3, 3 * entry_len(n) as u64));
    assert!((0..3).all(|i| !t.contains(&key(1, i))));
    assert!(!folder.exists(), "the layer's folder is removed");
    assert_eq!(deleted_but_open(dir.path()), Vec::<String>::new());
    assert!((0..3).all(|i| t.get(&key(2, i), 16_384, n).is_some()));
    assert_eq!(t.layers().len(), 1);
    assert_eq!(t.purge(&key(1, 0).blob).units, 0, "nothing left");
}
