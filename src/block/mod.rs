//! The block-device trait that every logical unit is backed by, and its simple backends.
//!
//! The SCSI layer knows nothing but this trait: raw files, RAM disks and overlaybd images all
//! implement it. Offsets and lengths are in bytes; the SCSI layer only issues requests that are
//! aligned to [`BlockDevice::block_size`] and inside [`BlockDevice::size`].

pub mod file;
pub mod hold;
pub mod ram;
pub mod read_only;
mod size;
pub mod unavailable;
mod write_queue;

pub use file::FileDevice;
pub use hold::{HeldDevice, RemoteFailurePolicy};
pub use ram::RamDevice;
pub use read_only::ReadOnlyDevice;
pub use size::{parse_size, SizeError};
pub use unavailable::{Unavailable, UnavailableDevice};

use async_trait::async_trait;
use bytes::Bytes;

use crate::source::{range_end, SourceError};

/// Why a block-device operation failed; the SCSI layer maps each kind to its sense data.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The device refuses writes (SCSI: DATA PROTECT / WRITE PROTECTED).
    #[error("device is read-only")]
    ReadOnly,
    /// The request lies (partly) beyond the end of the device (SCSI: LBA OUT OF RANGE).
    #[error("offset {offset} + length {len} is beyond the device size {size}")]
    OutOfRange {
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
        /// Size of the device in bytes.
        size: u64,
    },
    /// The operation is not supported by this backend (SCSI: INVALID COMMAND OPERATION CODE).
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    /// Stored data failed an integrity check, e.g. a CRC (SCSI: MEDIUM ERROR).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// An I/O error in the backend, local or remote (SCSI: MEDIUM ERROR).
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// A registry (or other remote store) cannot serve the bytes now, but may later: network
    /// errors, timeouts, HTTP 5xx and 429. A [`HeldDevice`] retries these under its LUN's
    /// policy; what reaches the SCSI layer is MEDIUM ERROR.
    #[error("remote store unavailable: {0}")]
    Remote(String),
    /// A thin backend could not allocate space for a write: its file system is full or over
    /// quota, ENOSPC or EDQUOT (SCSI: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT).
    #[error("no space for the write: {0}")]
    NoSpace(std::io::Error),
    /// The device cannot serve data at all, for good (SCSI: NOT READY with the reason's code,
    /// and the LUN stays NOT READY).
    #[error("device unavailable: {0}")]
    Unavailable(Unavailable),
}

impl From<std::io::Error> for BlockError {
    /// Sorts an operating-system error: out of space or quota is [`BlockError::NoSpace`], so a
    /// full thin LUN says so instead of reporting a medium error; a backing device that has
    /// gone away (ENXIO, ENODEV: e.g. a removed disk) makes the LUN unavailable for good;
    /// anything else is [`BlockError::Io`].
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        let no_space = matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
            || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        if no_space {
            BlockError::NoSpace(e)
        } else if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ENODEV)) {
            BlockError::Unavailable(Unavailable::Missing)
        } else {
            BlockError::Io(e)
        }
    }
}

impl BlockError {
    /// The device error for a failed read of layer bytes, `context` naming the layer. Damaged
    /// bytes (a ZFile CRC, a bad format structure) are [`BlockError::Corrupt`] by type; every
    /// other kind becomes an [`std::io::Error`] of the kind [`SourceError`] gives it, sorted by
    /// the `From<io::Error>` above (so a full disk still reads as out of space). All of them
    /// reach the initiator as MEDIUM ERROR / UNRECOVERED READ ERROR: a layer read past its
    /// blob is a damaged image, not the initiator's LBA OUT OF RANGE. A registry that cannot
    /// answer now is [`BlockError::Remote`], which the LUN's policy may wait out.
    pub fn from_source(context: &str, e: SourceError) -> BlockError {
        let message = format!("{context}: {e}");
        match e {
            SourceError::Corrupt(_) => BlockError::Corrupt(message),
            SourceError::Unavailable(_) => BlockError::Remote(message),
            other => {
                let kind = std::io::Error::from(other).kind();
                BlockError::from(std::io::Error::new(kind, message))
            }
        }
    }
}

/// Result of a block-device operation.
pub type BlockResult<T> = Result<T, BlockError>;

/// Provisioning state of a run of bytes, as reported by GET LBA STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Backed by stored data.
    Mapped,
    /// Not stored anywhere; reads return zeros.
    Deallocated,
}

/// The provisioning state of the run that starts at the queried offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatus {
    /// Whether the run is mapped or deallocated.
    pub state: Provisioning,
    /// Length of the run in bytes (at least one block, never past the end of the device).
    pub len: u64,
}

/// An async random-access block device.
#[async_trait]
pub trait BlockDevice: Send + Sync + 'static {
    /// Size of the device in bytes (a multiple of [`BlockDevice::block_size`]).
    fn size(&self) -> u64;

    /// Logical block size in bytes.
    fn block_size(&self) -> u32 {
        512
    }

    /// True when writes, unmaps and flushes that change data are refused.
    fn read_only(&self) -> bool;

    /// True when [`BlockDevice::unmap`] really deallocates (thin provisioning).
    fn can_unmap(&self) -> bool;

    /// True when every byte of the device is its own, so SANITIZE may destroy all of them:
    /// files and RAM disks. An overlaybd image is not: its lower layers are shared, immutable
    /// blobs.
    fn erasable(&self) -> bool {
        false
    }

    /// Reads `len` bytes at `offset`.
    async fn read(&self, offset: u64, len: usize) -> BlockResult<Bytes>;

    /// Writes `data` at `offset`; when `fua` is set the data is durable on return.
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> BlockResult<()>;

    /// Makes every completed write durable.
    async fn flush(&self) -> BlockResult<()>;

    /// Deallocates `len` bytes at `offset`; later reads of the range return zeros.
    async fn unmap(&self, offset: u64, len: u64) -> BlockResult<()>;

    /// Provisioning state of the run starting at `offset`.
    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus>;

    /// `Some` when the device cannot serve media commands at all (its backing failed to open);
    /// the SCSI layer then answers NOT READY instead of trying.
    fn unavailable(&self) -> Option<Unavailable> {
        None
    }
}

/// Checks that `[offset, offset+len)` lies inside a device of `size` bytes (overflow-safe).
/// The rule is [`range_end`], shared with layer reads; only the error differs (a device
/// request past the end is the initiator's LBA OUT OF RANGE).
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> BlockResult<()> {
    match range_end(size, offset, len) {
        Some(_) => Ok(()),
        None => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_and_quota_are_told_apart_from_other_io_errors() {
        for code in [libc::ENOSPC, libc::EDQUOT] {
            let e = BlockError::from(std::io::Error::from_raw_os_error(code));
            assert!(matches!(e, BlockError::NoSpace(_)), "{code}: {e:?}");
        }
        // Rebuilt errors keep only the kind (e.g. after a layer adds the file name).
        let e = std::io::Error::new(std::io::ErrorKind::StorageFull, "layer.data: full");
        assert!(matches!(BlockError::from(e), BlockError::NoSpace(_)));
        let e = BlockError::from(std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(e, BlockError::Io(_)), "{e:?}");
        let e = BlockError::from(std::io::Error::from_raw_os_error(libc::ENXIO));
        assert!(
            matches!(e, BlockError::Unavailable(Unavailable::Missing)),
            "{e:?}"
        );
    }
}
