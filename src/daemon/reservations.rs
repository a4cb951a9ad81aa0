//! Persistent reservations with APTPL, kept across restarts: one JSON document per logical unit
//! (the SCSI layer writes and reads its content, see `scsi::reservations`) in `reservations/`
//! beside the state file, named by a digest of the unit's serial number, since serial numbers
//! may hold any character. A document is replaced the way the state file is: a new file,
//! flushed, renamed over the old one, the folder flushed; a crash leaves the old document or the
//! new one. The folder and the files are private to the owner (0700, 0600).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::state::{ensure_dir, parent_dir, sync_dir, write_private};
use crate::scsi::ReservationStore;

/// The folder of saved reservation documents.
pub struct ReservationDir {
    dir: PathBuf,
}

impl ReservationDir {
    /// The folder `reservations/` beside the state file `state`.
    pub fn beside(state: &Path) -> ReservationDir {
        ReservationDir {
            dir: parent_dir(state).join("reservations"),
        }
    }

    /// The document of the unit with `serial`.
    fn path_of(&self, serial: &str) -> PathBuf {
        let digest = Sha256::digest(serial.as_bytes());
        self.dir
            .join(format!("lun-{}.json", hex::encode(&digest[..16])))
    }
}

impl ReservationStore for ReservationDir {
    fn load(&self, serial: &str) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path_of(serial)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, serial: &str, document: Option<&[u8]>) -> std::io::Result<()> {
        let path = self.path_of(serial);
        let Some(bytes) = document else {
            return match std::fs::remove_file(&path) {
                Ok(()) => sync_dir(&self.dir),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        };
        ensure_dir(&self.dir).map_err(|(_, e)| e)?;
        let temp = path.with_extension(format!("{:016x}.tmp", rand::random::<u64>()));
        let written = write_private(&temp, bytes).and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_replaced_read_back_and_removed_per_serial() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ReservationDir::beside(&tmp.path().join("state.json"));
        assert_eq!(store.load("a/b c").unwrap(), None);
        store.save("a/b c", Some(b"one")).unwrap();
        store.save("a/b c", Some(b"two")).unwrap();
        store.save("other", Some(b"three")).unwrap();
        assert_eq!(store.load("a/b c").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(store.load("other").unwrap().as_deref(), Some(&b"three"[..]));
        store.save("a/b c", None).unwrap();
        assert_eq!(store.load("a/b c").unwrap(), None);
        store.save("a/b c", None).unwrap();
        // No temporary file is left behind, and the folder is private.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("reservations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("reservations"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
