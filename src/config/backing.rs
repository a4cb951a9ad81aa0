//! LUN backing strings: the one place that turns `file:PATH`, `ram:SIZE` (optionally prefixed by
//! `ro:`) into a block device. New backends (e.g. `image:CONFIG.json`) are added here only.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::block::{parse_size, BlockDevice, FileDevice, RamDevice};
use crate::scsi::LunConfig;

/// Why a backing string could not be parsed or its device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// The string has no known `KIND:` prefix.
    #[error(
        "unknown LUN backing {0:?}: expected file:PATH or ram:SIZE, optionally prefixed by ro:"
    )]
    UnknownKind(String),
    /// `file:` with an empty path.
    #[error("LUN backing {0:?} has an empty path")]
    EmptyPath(String),
    /// `ram:` with a size that does not parse.
    #[error("LUN backing {text:?}: {source}")]
    BadSize {
        /// The whole backing string.
        text: String,
        /// What was wrong with the size.
        source: crate::block::SizeError,
    },
    /// `ram:` with a size of zero or not a multiple of 512 bytes.
    #[error("LUN backing {0:?}: the size must be a non-zero multiple of 512 bytes")]
    BadRamSize(String),
    /// The backing file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file named by the backing string.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The backing file is smaller than one block.
    #[error("{0} is smaller than one 512-byte block")]
    Empty(PathBuf),
}

/// What backs one logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A regular file or a host block device.
    File(PathBuf),
    /// A zero-filled RAM disk of this many bytes.
    Ram(u64),
}

/// A parsed LUN: its backing and whether writes are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// What holds the data.
    pub backing: Backing,
    /// True when the LUN is exported read-only.
    pub read_only: bool,
}

impl LunSpec {
    /// Parses `[ro:]file:PATH` or `[ro:]ram:SIZE` (SIZE like `1G`, `512M`, `4096`).
    pub fn parse(text: &str) -> Result<LunSpec, BackingError> {
        let (read_only, rest) = match text.strip_prefix("ro:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let backing = if let Some(path) = rest.strip_prefix("file:") {
            if path.is_empty() {
                return Err(BackingError::EmptyPath(text.to_string()));
            }
            Backing::File(PathBuf::from(path))
        } else if let Some(size) = rest.strip_prefix("ram:") {
            let bytes = parse_size(size).map_err(|source| BackingError::BadSize {
                text: text.to_string(),
                source,
            })?;
            if bytes == 0 || bytes % 512 != 0 {
                return Err(BackingError::BadRamSize(text.to_string()));
            }
            Backing::Ram(bytes)
        } else {
            return Err(BackingError::UnknownKind(text.to_string()));
        };
        Ok(LunSpec { backing, read_only })
    }

    /// Opens the device. Files are opened now, so a missing file fails at start-up rather than
    /// at the first SCSI command.
    pub fn open(&self) -> Result<Arc<dyn BlockDevice>, BackingError> {
        match &self.backing {
            Backing::File(path) => {
                let device = FileDevice::open(path, self.read_only).map_err(|source| {
                    BackingError::Open {
                        path: path.clone(),
                        source,
                    }
                })?;
                if device.size() == 0 {
                    return Err(BackingError::Empty(path.clone()));
                }
                Ok(Arc::new(device))
            }
            Backing::Ram(size) if self.read_only => Ok(Arc::new(RamDevice::new_read_only(*size))),
            Backing::Ram(size) => Ok(Arc::new(RamDevice::new(*size))),
        }
    }

    /// Opens the device and describes it as LUN `index` of target `target_name`. The serial
    /// number is derived from both, so it stays stable across restarts with the same config.
    pub fn lun_config(&self, target_name: &str, index: usize) -> Result<LunConfig, BackingError> {
        let device = self.open()?;
        let digest = Sha256::digest(format!("{target_name}/{index}/{self}").as_bytes());
        let serial = hex::encode(&digest[..8]);
        let product = match self.backing {
            Backing::File(_) => "overlaybd file",
            Backing::Ram(_) => "overlaybd ram",
        };
        Ok(LunConfig {
            device,
            serial,
            product: product.to_string(),
        })
    }
}

impl fmt::Display for LunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.read_only {
            f.write_str("ro:")?;
        }
        match &self.backing {
            Backing::File(path) => write!(f, "file:{}", path.display()),
            Backing::Ram(size) => write!(f, "ram:{size}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_ram_and_read_only_prefix() {
        assert_eq!(
            LunSpec::parse("file:/tmp/x.img").unwrap(),
            LunSpec {
                backing: Backing::File("/tmp/x.img".into()),
                read_only: false
            }
        );
        assert_eq!(
            LunSpec::parse("ram:1G").unwrap(),
            LunSpec {
                backing: Backing::Ram(1 << 30),
                read_only: false
            }
        );
        assert_eq!(
            LunSpec::parse("ro:file:/a:b").unwrap(),
            LunSpec {
                backing: Backing::File("/a:b".into()),
                read_only: true
            }
        );
    }

    #[test]
    fn rejects_bad_strings() {
        assert!(matches!(
            LunSpec::parse("disk:/x"),
            Err(BackingError::UnknownKind(_))
        ));
        assert!(matches!(
            LunSpec::parse("file:"),
            Err(BackingError::EmptyPath(_))
        ));
        assert!(matches!(
            LunSpec::parse("ram:lots"),
            Err(BackingError::BadSize { .. })
        ));
        assert!(matches!(
            LunSpec::parse("ram:0"),
            Err(BackingError::BadRamSize(_))
        ));
        assert!(matches!(
            LunSpec::parse("ram:1000"),
            Err(BackingError::BadRamSize(_))
        ));
    }

    #[test]
    fn opens_ram_and_file_devices() {
        let ram = LunSpec::parse("ro:ram:1M").unwrap().open().unwrap();
        assert_eq!(ram.size(), 1 << 20);
        assert!(ram.read_only());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let spec = LunSpec::parse(&format!("file:{}", path.display())).unwrap();
        let lun = spec.lun_config("iqn.x", 0).unwrap();
        assert_eq!(lun.device.size(), 4096);
        assert!(!lun.device.read_only());
        assert_eq!(lun.serial.len(), 16);

        let missing = LunSpec::parse("file:/nonexistent/disk.img").unwrap();
        assert!(matches!(missing.open(), Err(BackingError::Open { .. })));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(spec.open(), Err(BackingError::Empty(_))));
    }
}
