//! A sparse RAM disk: storage is allocated in fixed chunks on first write, UNMAP frees whole
//! chunks, and reads of never-written chunks return zeros without allocating.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;

use super::{check_range, BlockDevice, BlockResult, BlockStatus, Provisioning};

/// Size of one allocation unit. 64 KiB keeps the map small for multi-GiB disks while a 4 KiB
/// write allocates no more than one chunk.
pub const CHUNK_SIZE: u64 = 64 * 1024;

/// Longest run (in chunks) one `block_status` call scans, so a query on a huge empty disk
/// stays cheap; callers ask again from the end of the returned run.
const MAX_STATUS_SCAN_CHUNKS: u64 = 1 << 16;

/// A thin-provisioned in-memory block device.
pub struct RamDevice {
    size: u64,
    read_only: bool,
    /// Chunk index -> chunk bytes (always `CHUNK_SIZE` long). A sharded map so concurrent
    /// commands on different chunks do not contend.
    chunks: DashMap<u64, Box<[u8]>>,
}

impl RamDevice {
    /// Creates an all-zero writable RAM disk of `size` bytes (rounded down to whole 512-byte
    /// blocks).
    pub fn new(size: u64) -> Self {
        RamDevice {
            size: size - size % 512,
            read_only: false,
            chunks: DashMap::new(),
        }
    }

    /// Creates a RAM disk that refuses writes (useful to test write protection).
    pub fn new_read_only(size: u64) -> Self {
        RamDevice {
            read_only: true,
            ..RamDevice::new(size)
        }
    }

    /// Number of chunks currently allocated (for tests and statistics).
    pub fn allocated_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Splits `[offset, offset+len)` into (chunk index, offset in chunk, length) pieces.
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize)> {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let index = pos / CHUNK_SIZE;
            let within = pos % CHUNK_SIZE;
            let take = (CHUNK_SIZE - within).min(end - pos);
            pos += take;
            // Both values are below CHUNK_SIZE, so they fit in usize.
            Some((index, within as usize, take as usize))
        })
    }
}

#[async_trait]
impl BlockDevice for RamDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn can_unmap(&self) -> bool {
        !self.read_only
    }

    fn erasable(&self) -> bool {
        true
    }

    async fn read(&self, offset: u64, len: usize) -> BlockResult<Bytes> {
        check_range(offset, len as u64, self.size)?;
        let mut out = BytesMut::zeroed(len);
        let mut at = 0usize;
        for (index, within, take) in Self::pieces(offset, len as u64) {
            if let Some(chunk) = self.chunks.get(&index) {
                out[at..at + take].copy_from_slice(&chunk[within..within + take]);
            }
            at += take;
        }
        Ok(out.freeze())
    }

    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> BlockResult<()> {
        if self.read_only {
            return Err(super::BlockError::ReadOnly);
        }
        check_range(offset, data.len() as u64, self.size)?;
        let mut at = 0usize;
        for (index, within, take) in Self::pieces(offset, data.len() as u64) {
            let mut chunk = self
                .chunks
                .entry(index)
                .or_insert_with(|| vec![0u8; CHUNK_SIZE as usize].into_boxed_slice());
            chunk[within..within + take].copy_from_slice(&data[at..at + take]);
            at += take;
        }
        Ok(())
    }

    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }

    async fn unmap(&self, offset: u64, len: u64) -> BlockResult<()> {
        if self.read_only {
            return Err(super::BlockError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        for (index, within, take) in Self::pieces(offset, len) {
            if take as u64 == CHUNK_SIZE {
                self.chunks.remove(&index);
            } else if let Some(mut chunk) = self.chunks.get_mut(&index) {
                // A partial chunk cannot be freed; zero it so reads still return zeros.
                chunk[within..within + take].fill(0);
            }
        }
        Ok(())
    }

    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus> {
        check_range(offset, 1, self.size)?;
        let first = offset / CHUNK_SIZE;
        let mapped = self.chunks.contains_key(&first);
        let last_chunk = (self.size - 1) / CHUNK_SIZE;
        let mut index = first + 1;
        while index <= last_chunk
            && index - first < MAX_STATUS_SCAN_CHUNKS
            && self.chunks.contains_key(&index) == mapped
        {
            index += 1;
        }
        let end = (index * CHUNK_SIZE).min(self.size);
        Ok(BlockStatus {
            state: if mapped {
                Provisioning::Mapped
            } else {
                Provisioning::Deallocated
            },
            len: end - offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockError;

    #[tokio::test]
    async fn ram_reads_back_writes_and_zeros_elsewhere() {
        let dev = RamDevice::new(1 << 20);
        assert_eq!(dev.allocated_chunks(), 0);
        let data = Bytes::from(vec![0xabu8; 1024]);
        // Straddles the boundary between chunk 0 and chunk 1.
        dev.write(CHUNK_SIZE - 512, data.clone(), false)
            .await
            .unwrap();
        assert_eq!(dev.allocated_chunks(), 2);
        let back = dev.read(CHUNK_SIZE - 1024, 2048).await.unwrap();
        assert_eq!(&back[..512], &[0u8; 512][..]);
        assert_eq!(&back[512..1536], &data[..]);
        assert_eq!(&back[1536..], &[0u8; 512][..]);
    }

    #[tokio::test]
    async fn ram_unmap_frees_whole_chunks_and_zeroes_partial() {
        let dev = RamDevice::new(1 << 20);
        dev.write(0, Bytes::from(vec![1u8; 3 * CHUNK_SIZE as usize]), false)
            .await
            .unwrap();
        assert_eq!(dev.allocated_chunks(), 3);
        // Frees chunk 1 entirely and zeroes the tail of chunk 0 and head of chunk 2.
        dev.unmap(CHUNK_SIZE - 512, CHUNK_SIZE + 1024)
            .await
            .unwrap();
        assert_eq!(dev.allocated_chunks(), 2);
        let back = dev.read(0, 3 * CHUNK_SIZE as usize).await.unwrap();
        let zero_start = (CHUNK_SIZE - 512) as usize;
        let zero_end = (2 * CHUNK_SIZE + 512) as usize;
        assert!(back[..zero_start].iter().all(|&b| b == 1));
        assert!(back[zero_start..zero_end].iter().all(|&b| b == 0));
        assert!(back[zero_end..].iter().all(|&b| b == 1));
    }

    #[tokio::test]
    async fn ram_block_status_follows_chunk_presence() {
        let dev = RamDevice::new(8 * CHUNK_SIZE);
        dev.write(2 * CHUNK_SIZE, Bytes::from(vec![7u8; 512]), false)
            .await
            .unwrap();
        let s = dev.block_status(0).await.unwrap();
        assert_eq!(s.state, Provisioning::Deallocated);
        assert_eq!(s.len, 2 * CHUNK_SIZE);
        let s = dev.block_status(2 * CHUNK_SIZE + 512).await.unwrap();
        assert_eq!(s.state, Provisioning::Mapped);
        assert_eq!(s.len, CHUNK_SIZE - 512);
        let s = dev.block_status(3 * CHUNK_SIZE).await.unwrap();
        assert_eq!(s.state, Provisioning::Deallocated);
        assert_eq!(s.len, 5 * CHUNK_SIZE);
        assert!(matches!(
            dev.block_status(8 * CHUNK_SIZE).await,
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn ram_rejects_out_of_range_and_read_only() {
        let dev = RamDevice::new(4096);
        assert!(matches!(
            dev.read(4096, 512).await,
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write(u64::MAX - 10, Bytes::from_static(&[0; 512]), false)
                .await,
            Err(BlockError::OutOfRange { .. })
        ));
        let ro = RamDevice::new_read_only(4096);
        assert!(ro.read_only());
        assert!(!ro.can_unmap());
        assert!(matches!(
            ro.write(0, Bytes::from_static(&[0; 512]), false).await,
            Err(BlockError::ReadOnly)
        ));
    }
}
