//! A stand-in for a LUN whose backing could not be opened: it keeps the LUN number in place
//! (INQUIRY and REPORT LUNS still work) while every media command answers NOT READY.

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlockDevice, BlockError, BlockResult, BlockStatus};

/// Why a device cannot serve data; the SCSI layer picks the NOT READY code from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The backing file, image config or a local layer does not exist.
    #[error("backing not found")]
    Missing,
    /// The backing exists but is not a usable image: bad config, header, index or size.
    #[error("backing is corrupt or invalid")]
    Corrupt,
    /// A remote layer's registry could not be reached or refused the request.
    #[error("backing is unreachable")]
    Unreachable,
    /// Any other failure (permissions, local I/O errors).
    #[error("backing failed")]
    Failed,
    /// The backing is still being opened (a LUN restored or declared at start whose image is
    /// not open yet); initiators retry until it is ready.
    #[error("backing is being opened")]
    Opening,
}

/// A device with no data that reports why ([`BlockDevice::unavailable`]); every operation
/// fails with [`BlockError::Unavailable`].
pub struct UnavailableDevice {
    reason: Unavailable,
}

impl UnavailableDevice {
    /// A device that is unavailable for `reason`.
    pub fn new(reason: Unavailable) -> Self {
        UnavailableDevice { reason }
    }
}

#[async_trait]
impl BlockDevice for UnavailableDevice {
    fn size(&self) -> u64 {
        0
    }

    fn read_only(&self) -> bool {
        false
    }

    fn can_unmap(&self) -> bool {
        false
    }

    async fn read(&self, _offset: u64, _len: usize) -> BlockResult<Bytes> {
        Err(BlockError::Unavailable(self.reason))
    }

    async fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> BlockResult<()> {
        Err(BlockError::Unavailable(self.reason))
    }

    async fn flush(&self) -> BlockResult<()> {
        Err(BlockError::Unavailable(self.reason))
    }

    async fn unmap(&self, _offset: u64, _len: u64) -> BlockResult<()> {
        Err(BlockError::Unavailable(self.reason))
    }

    async fn block_status(&self, _offset: u64) -> BlockResult<BlockStatus> {
        Err(BlockError::Unavailable(self.reason))
    }

    fn unavailable(&self) -> Option<Unavailable> {
        Some(self.reason)
    }
}
