//! A block device backed by a regular file or a host block device.
//!
//! System calls never run on async worker threads where they could block on disk. Writes go to
//! the file's own writer thread (see [`super::write_queue`]), which drains every queued write
//! in one wake-up; everything else runs on tokio's blocking pool. One exception: a read (or a
//! non-FUA write while no write is queued) of at most [`INLINE_READ_MAX`] bytes is first tried
//! on the calling thread with `preadv2`/`pwritev2(RWF_NOWAIT)`, which copies from (into) the
//! page cache or fails at once with EAGAIN; only what it could not do goes elsewhere. For small
//! cached reads the hand-off to another thread and back costs more than the read itself.
//! UNMAP punches holes (regular files on file systems that support it) and GET LBA STATUS asks
//! the file system where data and holes are (SEEK_DATA / SEEK_HOLE).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::write_queue::WriteQueue;
use super::{check_range, BlockDevice, BlockError, BlockResult, BlockStatus, Provisioning};
use crate::sys::{self, file::block_device_size, Nowait, Punch, Region};

/// A file or block device used as a logical unit.
pub struct FileDevice {
    file: Arc<File>,
    size: u64,
    read_only: bool,
    can_unmap: bool,
    is_block_device: bool,
    /// Cleared when the kernel or file system refuses `RWF_NOWAIT` reads, to stop trying.
    nowait_read: AtomicBool,
    /// The same for writes (ext4, for one, supports it for reads only).
    nowait_write: AtomicBool,
    /// The writer thread; `None` for read-only devices.
    writes: Option<WriteQueue>,
}

/// Largest read or write tried inline in the page cache (larger copies would hold up the async
/// worker thread for too long).
pub const INLINE_READ_MAX: usize = 128 * 1024;

impl FileDevice {
    /// Opens `path` read-only or read-write. The size is the file length (or the block device
    /// size) rounded down to whole 512-byte blocks.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        let is_block_device = meta.file_type().is_block_device();
        let raw_size = if is_block_device {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        // Block devices are not punched: a discard need not read back as zeros, and we
        // advertise LBPRZ, so unmap is reported unsupported there.
        let can_unmap = !read_only && !is_block_device && probe_punch_hole(&file, raw_size);
        let file = Arc::new(file);
        let writes = if read_only {
            None
        } else {
            Some(WriteQueue::start(Arc::clone(&file))?)
        };
        Ok(FileDevice {
            file,
            size: raw_size - raw_size % 512,
            read_only,
            can_unmap,
            is_block_device,
            nowait_read: AtomicBool::new(true),
            nowait_write: AtomicBool::new(true),
            writes,
        })
    }

    /// Runs `op` on the blocking pool with a handle to the file.
    async fn blocking<T, F>(&self, op: F) -> BlockResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> io::Result<T> + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        sys::blocking(move || op(&file))
            .await
            .map_err(BlockError::from)
    }
}

/// Fills `buf` up to `len` bytes from `offset` with `preadv2(RWF_NOWAIT)`, that is from the
/// page cache only, unless `nowait` is already cleared; true if it got all of them. Clears
/// `nowait` when the kernel or file system refuses `RWF_NOWAIT`, so callers stop trying.
pub(crate) fn read_cached(
    file: &File,
    buf: &mut BytesMut,
    len: usize,
    offset: u64,
    nowait: &AtomicBool,
) -> bool {
    if !nowait.load(Ordering::Relaxed) {
        return false;
    }
    while buf.len() < len {
        let Some(at) = offset.checked_add(buf.len() as u64) else {
            break;
        };
        match sys::file::pread_append_nowait(file, buf, len - buf.len(), at) {
            Nowait::Done(0) => break,
            Nowait::Done(_) => {}
            // Not (all) cached, or an error that the blocking read will meet again and report.
            Nowait::WouldBlock | Nowait::Failed => break,
            Nowait::Unsupported => {
                nowait.store(false, Ordering::Relaxed);
                break;
            }
        }
    }
    buf.len() == len
}

/// Fills `buf` up to `len` bytes from `offset` with blocking reads.
pub(crate) fn read_rest(
    file: &File,
    buf: &mut BytesMut,
    len: usize,
    offset: u64,
) -> io::Result<()> {
    while buf.len() < len {
        let at = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if sys::file::pread_append(file, buf, len - buf.len(), at)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Finds out whether the file system can punch holes without touching data: punching past the
/// end of the file with KEEP_SIZE changes nothing but fails with EOPNOTSUPP where unsupported.
fn probe_punch_hole(file: &File, size: u64) -> bool {
    let start = size.div_ceil(4096) * 4096;
    matches!(sys::file::punch_hole(file, start, 4096), Ok(Punch::Done))
}

#[async_trait]
impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn can_unmap(&self) -> bool {
        self.can_unmap
    }

    fn erasable(&self) -> bool {
        true
    }

    async fn read(&self, offset: u64, len: usize) -> BlockResult<Bytes> {
        check_range(offset, len as u64, self.size)?;
        let mut buf = BytesMut::with_capacity(len);
        if len <= INLINE_READ_MAX
            && read_cached(&self.file, &mut buf, len, offset, &self.nowait_read)
        {
            return Ok(buf.freeze());
        }
        self.blocking(move |file| {
            read_rest(file, &mut buf, len, offset)?;
            Ok(buf.freeze())
        })
        .await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> BlockResult<()> {
        // Read-only devices have no writer threads.
        let Some(writes) = &self.writes else {
            return Err(BlockError::ReadOnly);
        };
        check_range(offset, data.len() as u64, self.size)?;
        let mut done = 0;
        // Inline only while nothing is queued, so a write never overtakes an earlier one.
        if !fua
            && data.len() <= INLINE_READ_MAX
            && self.nowait_write.load(Ordering::Relaxed)
            && writes.is_idle()
        {
            // Into the page cache without blocking, or EAGAIN (allocation, writeback throttling).
            while done < data.len() {
                match sys::file::pwrite_nowait(&self.file, &data[done..], offset + done as u64) {
                    Nowait::Done(0) => break,
                    Nowait::Done(n) => done += n,
                    // The writer thread does the rest (and reports an error that persists).
                    Nowait::WouldBlock | Nowait::Failed => break,
                    Nowait::Unsupported => {
                        self.nowait_write.store(false, Ordering::Relaxed);
                        break;
                    }
                }
            }
            if done == data.len() {
                return Ok(());
            }
        }
        writes
            .write(offset + done as u64, data.slice(done..), fua)
            .await
            .map_err(BlockError::from)
    }

    async fn flush(&self) -> BlockResult<()> {
        if self.read_only {
            return Ok(());
        }
        self.blocking(|file| file.sync_data()).await
    }

    async fn unmap(&self, offset: u64, len: u64) -> BlockResult<()> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if !self.can_unmap {
            return Err(BlockError::Unsupported("unmap"));
        }
        check_range(offset, len, self.size)?;
        match self
            .blocking(move |file| sys::file::punch_hole(file, offset, len))
            .await?
        {
            Punch::Done => Ok(()),
            // Probed when opened, so only a file system that changed its mind gets here.
            Punch::Unsupported => Err(BlockError::Unsupported("unmap")),
        }
    }

    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus> {
        check_range(offset, 1, self.size)?;
        let size = self.size;
        if self.is_block_device {
            return Ok(BlockStatus {
                state: Provisioning::Mapped,
                len: size - offset,
            });
        }
        self.blocking(move |file| {
            let (state, end) = match sys::file::seek_data(file, offset)? {
                Region::At(data) if data <= offset => {
                    let hole = match sys::file::seek_hole(file, offset)? {
                        Region::At(hole) => hole,
                        // The file shrank under us: treat the rest as data.
                        Region::None => size,
                    };
                    (Provisioning::Mapped, hole)
                }
                Region::At(data) => (Provisioning::Deallocated, data),
                Region::None => (Provisioning::Deallocated, size),
            };
            // Runs are whole blocks: a partly mapped block counts as mapped, so round a data
            // run's end up and a hole run's end down (but never below one block).
            let end = match state {
                Provisioning::Mapped => end.div_ceil(512) * 512,
                Provisioning::Deallocated => (end / 512 * 512).max(offset + 512),
            };
            Ok(BlockStatus {
                state,
                len: end.min(size) - offset,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    fn temp_file(len: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(len).unwrap();
        file
    }

    /// Bytes the file system has really allocated for the file.
    fn allocated_bytes(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[tokio::test]
    async fn file_reads_back_writes() {
        let tmp = temp_file(1 << 20);
        let dev = FileDevice::open(tmp.path(), false).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        dev.write(4096, Bytes::from(vec![0x5a; 8192]), true)
            .await
            .unwrap();
        dev.flush().await.unwrap();
        let back = dev.read(0, 16384).await.unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..12288].iter().all(|&b| b == 0x5a));
        assert!(back[12288..].iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn inline_and_blocking_reads_return_the_same_bytes() {
        let len = 2 * INLINE_READ_MAX + 4096;
        let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&pattern).unwrap();
        let dev = FileDevice::open(tmp.path(), true).unwrap();
        // Small (inline from the page cache) and large (blocking pool) reads, unaligned too.
        for (off, n) in [
            (0, 512),
            (512, 4096),
            (4096, INLINE_READ_MAX),
            (1024, len - 1024),
        ] {
            let got = dev.read(off as u64, n).await.unwrap();
            assert_eq!(&got[..], &pattern[off..off + n], "read {n} at {off}");
        }
    }

    #[tokio::test]
    async fn cached_writes_without_fua_read_back() {
        let tmp = temp_file(1 << 20);
        let dev = FileDevice::open(tmp.path(), false).unwrap();
        // Small (tried inline) and large (blocking pool) writes.
        for (off, n, v) in [(512u64, 4096usize, 1u8), (65536, 2 * INLINE_READ_MAX, 2)] {
            dev.write(off, Bytes::from(vec![v; n]), false)
                .await
                .unwrap();
            let got = dev.read(off - 512, n + 1024).await.unwrap();
            assert!(got[..512].iter().all(|&b| b != v), "before {off}");
            assert!(got[512..512 + n].iter().all(|&b| b == v), "write at {off}");
            assert!(got[512 + n..].iter().all(|&b| b != v), "after {off}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_read_back_once_answered_and_overlaps_keep_order() {
        let tmp = temp_file(4 << 20);
        let dev = Arc::new(FileDevice::open(tmp.path(), false).unwrap());
        // 64 writers, each writing then at once reading back its own 4 KiB, while a burst of
        // overlapping writes to one block is queued in between.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u64 {
            let dev = Arc::clone(&dev);
            tasks.spawn(async move {
                let off = (i + 1) * 8192;
                let v = i as u8 + 1;
                dev.write(off, Bytes::from(vec![v; 4096]), i % 8 == 0)
                    .await
                    .unwrap();
                let back = dev.read(off, 4096).await.unwrap();
                assert!(back.iter().all(|&b| b == v), "write {i} not read back");
            });
        }
        let burst = (0..32u8).map(|v| dev.write(0, Bytes::from(vec![v; 4096]), false));
        for r in futures_util::future::join_all(burst).await {
            r.unwrap();
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let back = dev.read(0, 4096).await.unwrap();
        assert!(
            back.iter().all(|&b| b == 31),
            "last queued write lost: {}",
            back[0]
        );
    }

    #[tokio::test]
    async fn fua_writes_and_flush_reach_the_disk_path() {
        let tmp = temp_file(1 << 20);
        let dev = FileDevice::open(tmp.path(), false).unwrap();
        let writes = dev.writes.as_ref().unwrap();
        dev.write(0, Bytes::from(vec![1u8; 4096]), false)
            .await
            .unwrap();
        let before = writes.syncs();
        dev.write(4096, Bytes::from(vec![2u8; 4096]), true)
            .await
            .unwrap();
        assert_eq!(
            writes.syncs(),
            before + 1,
            "FUA write answered without a sync"
        );
        dev.flush().await.unwrap();
        // What another handle on the file sees (the bytes are in the file, not in a buffer).
        let mut back = vec![0u8; 8192];
        std::fs::File::open(tmp.path())
            .unwrap()
            .read_exact_at(&mut back, 0)
            .unwrap();
        assert!(back[..4096].iter().all(|&b| b == 1));
        assert!(back[4096..].iter().all(|&b| b == 2));
    }

    #[tokio::test]
    async fn file_read_only_refuses_writes_and_rounds_size() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&[1u8; 1000]).unwrap();
        let dev = FileDevice::open(tmp.path(), true).unwrap();
        assert_eq!(dev.size(), 512);
        assert!(dev.read_only());
        assert!(
            dev.writes.is_none(),
            "no writer threads for a read-only device"
        );
        assert!(!dev.can_unmap());
        assert!(matches!(
            dev.write(0, Bytes::from_static(&[0; 512]), false).await,
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(
            dev.read(512, 512).await,
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn file_punch_hole_deallocates_and_block_status_sees_it() {
        let tmp = temp_file(4 << 20);
        let dev = FileDevice::open(tmp.path(), false).unwrap();
        if !dev.can_unmap() {
            panic!("the temp directory's file system cannot punch holes; run on ext4/xfs/tmpfs");
        }
        dev.write(0, Bytes::from(vec![9u8; 2 << 20]), true)
            .await
            .unwrap();
        let before = allocated_bytes(tmp.path());
        assert!(before >= 2 << 20);
        let s = dev.block_status(0).await.unwrap();
        assert_eq!(s.state, Provisioning::Mapped);
        assert_eq!(s.len, 2 << 20);
        let s = dev.block_status(2 << 20).await.unwrap();
        assert_eq!(s.state, Provisioning::Deallocated);
        assert_eq!(s.len, 2 << 20);

        dev.unmap(1 << 20, 1 << 20).await.unwrap();
        let after = allocated_bytes(tmp.path());
        assert!(
            after + (1 << 20) <= before,
            "punch freed nothing: {before} -> {after}"
        );
        let back = dev.read((1 << 20) - 512, 1024).await.unwrap();
        assert!(back[..512].iter().all(|&b| b == 9));
        assert!(back[512..].iter().all(|&b| b == 0));
        let s = dev.block_status(1 << 20).await.unwrap();
        assert_eq!(s.state, Provisioning::Deallocated);
        assert_eq!(s.len, 3 << 20);
    }
}
