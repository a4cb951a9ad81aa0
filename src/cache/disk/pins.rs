//! Pinned layers: blobs whose units the disk tier never evicts, kept in `<root>/pins.json` so
//! a pin outlives restarts.
//!
//! The file is a JSON list of blob ids (`["sha256:…", …]`), replaced whole through a temporary
//! file and a rename, so a crash leaves the old list or the new one. A file that cannot be
//! parsed is reported at open and treated as empty (pins are an optimisation: losing them costs
//! refetches, never data), and is overwritten by the next change.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use crate::cache::key::BlobId;

/// The pins file's name in the tier's folder.
pub(super) const PINS_FILE: &str = "pins.json";

/// The pinned blobs of one disk tier.
pub(super) struct Pins {
    path: PathBuf,
    set: RwLock<BTreeSet<BlobId>>,
    /// Serialises changes, so the file is written in the order the set changed.
    write: parking_lot::Mutex<()>,
}

impl Pins {
    /// The pins saved in `root`, or none.
    pub(super) fn load(root: &Path) -> Pins {
        let path = root.join(PINS_FILE);
        // A save cut short by a crash leaves its temporary file: garbage now.
        let leftover = format!("{PINS_FILE}.tmp-");
        for entry in fs::read_dir(root).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&leftover) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let set = match fs::read(&path) {
            Ok(text) => parse(&text).unwrap_or_else(|why| {
                tracing::warn!(file = %path.display(), why, "ignoring the unreadable pin list");
                BTreeSet::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the pin list");
                BTreeSet::new()
            }
        };
        Pins {
            path,
            set: RwLock::new(set),
            write: parking_lot::Mutex::new(()),
        }
    }

    /// Whether `blob` is pinned.
    pub(super) fn contains(&self, blob: &BlobId) -> bool {
        self.set.read().contains(blob)
    }

    /// Every pinned blob, in order.
    pub(super) fn list(&self) -> Vec<BlobId> {
        self.set.read().iter().cloned().collect()
    }

    /// Pins or unpins `blob` and saves the list; false when it already was so. On a failed
    /// save nothing changes.
    pub(super) fn set(&self, blob: &BlobId, pinned: bool) -> io::Result<bool> {
        let _order = self.write.lock();
        let mut next = self.set.read().clone();
        let changed = if pinned {
            next.insert(blob.clone())
        } else {
            next.remove(blob)
        };
        if !changed {
            return Ok(false);
        }
        save(&self.path, &next)?;
        *self.set.write() = next;
        Ok(true)
    }
}

/// The list's ids from the file's bytes; ids that are not well-formed blob ids are refused.
fn parse(text: &[u8]) -> Result<BTreeSet<BlobId>, &'static str> {
    let ids: Vec<String> = serde_json::from_slice(text).map_err(|_| "not a JSON list of ids")?;
    ids.iter()
        .map(|id| {
            BlobId::parse(id)
                .map(|_| BlobId::from_digest(id))
                .ok_or("an entry is not a blob digest")
        })
        .collect()
}

/// Writes the list through a temporary file and a rename.
fn save(path: &Path, set: &BTreeSet<BlobId>) -> io::Result<()> {
    let ids: Vec<&str> = set.iter().map(BlobId::as_str).collect();
    let text = serde_json::to_vec_pretty(&ids).map_err(io::Error::other)?;
    let tmp = path.with_file_name(format!("{PINS_FILE}.tmp-{:08x}", rand::random::<u32>()));
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&text)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> BlobId {
        BlobId::from_digest(&format!("sha256:{}", format!("{n:02x}").repeat(32)))
    }

    #[test]
    fn pins_are_saved_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::load(dir.path());
        assert!(pins.list().is_empty());
        assert!(pins.set(&blob(1), true).unwrap());
        assert!(!pins.set(&blob(1), true).unwrap(), "already pinned");
        assert!(pins.set(&blob(2), true).unwrap());
        assert!(pins.set(&blob(1), false).unwrap());
        assert!(!pins.contains(&blob(1)) && pins.contains(&blob(2)));
        let again = Pins::load(dir.path());
        assert_eq!(again.list(), vec![blob(2)]);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(PINS_FILE)]);
    }

    #[test]
    fn a_damaged_list_is_empty_and_replaced_by_the_next_change() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            &b"{\"not\": 1}"[..],
            b"[\"../../etc\"]",
            b"[1, 2]",
            b"\xff\xfe",
        ] {
            fs::write(dir.path().join(PINS_FILE), bad).unwrap();
            let pins = Pins::load(dir.path());
            assert!(pins.list().is_empty(), "{bad:?}");
        }
        let pins = Pins::load(dir.path());
        pins.set(&blob(3), true).unwrap();
        // A save a crash cut short is cleaned up at the next load.
        let leftover = dir.path().join(format!("{PINS_FILE}.tmp-0badf00d"));
        fs::write(&leftover, b"[").unwrap();
        assert_eq!(Pins::load(dir.path()).list(), vec![blob(3)]);
        assert!(!leftover.exists());
    }

    #[test]
    fn a_failed_save_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::load(&dir.path().join("missing-folder"));
        assert!(pins.set(&blob(4), true).is_err());
        assert!(!pins.contains(&blob(4)));
    }
}
