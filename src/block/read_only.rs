//! A read-only view of any block device (`ro:` LUNs whose backend could write).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlockDevice, BlockError, BlockResult, BlockStatus};

/// Forwards reads and status queries to the wrapped device and refuses every change.
pub struct ReadOnlyDevice {
    inner: Arc<dyn BlockDevice>,
}

impl ReadOnlyDevice {
    /// Wraps `inner`; its data stays reachable for reads only.
    pub fn new(inner: Arc<dyn BlockDevice>) -> Self {
        ReadOnlyDevice { inner }
    }
}

#[async_trait]
impl BlockDevice for ReadOnlyDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn can_unmap(&self) -> bool {
        false
    }

    async fn read(&self, offset: u64, len: usize) -> BlockResult<Bytes> {
        self.inner.read(offset, len).await
    }

    async fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> BlockResult<()> {
        Err(BlockError::ReadOnly)
    }

    async fn flush(&self) -> BlockResult<()> {
        // Nothing was written through this view, so nothing needs to become durable.
        Ok(())
    }

    async fn unmap(&self, _offset: u64, _len: u64) -> BlockResult<()> {
        Err(BlockError::ReadOnly)
    }

    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus> {
        self.inner.block_status(offset).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::RamDevice;

    #[tokio::test]
    async fn reads_pass_writes_are_refused() {
        let ram = Arc::new(RamDevice::new(4096));
        ram.write(0, Bytes::from_static(&[7u8; 512]), false)
            .await
            .unwrap();
        let ro = ReadOnlyDevice::new(ram);
        assert!(ro.read_only() && !ro.can_unmap());
        assert_eq!(ro.read(0, 512).await.unwrap()[..], [7u8; 512]);
        assert!(matches!(
            ro.write(0, Bytes::from_static(&[0u8; 512]), false).await,
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(ro.unmap(0, 512).await, Err(BlockError::ReadOnly)));
    }
}
