//! Safe wrappers for the file system calls std does not offer: positional reads into
//! uninitialised memory and `RWF_NOWAIT` I/O (`preadv2`, `pwritev2`), hole punching
//! (`fallocate`), the allocation map (`lseek` with SEEK_DATA / SEEK_HOLE) and a block device's
//! size (`ioctl(BLKGETSIZE64)`). The parent module's table lists each one's errno handling.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

use bytes::BytesMut;

/// Outcome of a `RWF_NOWAIT` read or write, one variant per decision the caller makes.
#[derive(Debug)]
pub(crate) enum Nowait {
    /// This many bytes were moved without blocking (at most the length asked for, possibly
    /// fewer: only part was cached). 0 for a read means end of file.
    Done(usize),
    /// EAGAIN: the operation would have had to wait for the disk, an allocation or writeback.
    /// Do it on a blocking thread this time and keep trying the fast path next time.
    WouldBlock,
    /// The kernel or this file system offers no `RWF_NOWAIT` for this operation: stop trying
    /// it on this file.
    Unsupported,
    /// Any other error. The blocking path repeats the operation and reports the error if it
    /// persists (so it is not kept here); one failure is no reason to give up the fast path.
    Failed,
}

impl Nowait {
    /// Sorts the errno of a failed `preadv2`/`pwritev2(RWF_NOWAIT)` (not EINTR: retried).
    fn from_error(err: io::Error) -> Nowait {
        match err.raw_os_error() {
            // EWOULDBLOCK is the same number on Linux.
            Some(libc::EAGAIN) => Nowait::WouldBlock,
            // EOPNOTSUPP: no FMODE_NOWAIT on this file (or RWF_NOWAIT unknown to the kernel);
            // EINVAL: older kernels refuse NOWAIT buffered writes so; ENOSYS: no preadv2.
            // Our own offsets are checked before the call, so EINVAL cannot mean those.
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => Nowait::Unsupported,
            _ => Nowait::Failed,
        }
    }
}

/// Outcome of [`punch_hole`] that is not an I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Punch {
    /// The range is deallocated and reads as zeros; the file size is unchanged.
    Done,
    /// EOPNOTSUPP (or ENOSYS): this file system cannot punch holes; nothing changed.
    Unsupported,
}

/// Where a SEEK_DATA or SEEK_HOLE search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Region {
    /// The first byte of data (SEEK_DATA) or of a hole (SEEK_HOLE) at or after the offset.
    /// The end of the file counts as a hole, so SEEK_HOLE inside the file always finds one.
    At(u64),
    /// ENXIO: no data at or after the offset (SEEK_DATA), or the offset is at or past the end
    /// of the file (both).
    None,
}

/// `BLKGETSIZE64` from <linux/fs.h>: the size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// `offset` as an `off_t`, with `offset + len` also representable (the kernel would refuse
/// it with EINVAL, which [`Nowait`] reads as "unsupported").
fn file_span(offset: u64, len: usize) -> io::Result<libc::off_t> {
    let end = offset.checked_add(len as u64);
    match (
        libc::off_t::try_from(offset),
        end.map(libc::off_t::try_from),
    ) {
        (Ok(at), Some(Ok(_))) => Ok(at),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file range at {offset} of {len} bytes is beyond off_t"),
        )),
    }
}

/// `preadv2(flags)` of up to `max` bytes at `offset` into the spare capacity of `buf`,
/// appended to it; EINTR is retried.
fn preadv2_append(
    file: &File,
    buf: &mut BytesMut,
    max: usize,
    offset: u64,
    flags: libc::c_int,
) -> io::Result<usize> {
    let at = file_span(offset, max)?;
    if max == 0 {
        return Ok(0);
    }
    // Without room a zero-length read would look like the end of the file.
    buf.reserve(max);
    let have = buf.len();
    let spare = buf.spare_capacity_mut();
    let n = max.min(spare.len());
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: n,
    };
    let read = loop {
        // SAFETY: the iovec points at `n` bytes of `buf`'s spare capacity, which `buf` owns
        // and which nothing else can reach while `buf` is mutably borrowed here; the kernel
        // writes at most `n` bytes there. The descriptor is open: `file` is borrowed.
        let rc = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        match usize::try_from(rc) {
            Ok(read) => break read.min(n),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    };
    // SAFETY: the kernel initialised the first `read` (≤ `n`) bytes of the spare capacity.
    unsafe { buf.set_len(have + read) };
    Ok(read)
}

/// Reads up to `max` bytes at `offset` and appends them to `buf` (growing it if needed, but
/// never zeroing first: only what the kernel filled becomes part of `buf`). Returns how many
/// were read; 0 at (or past) the end of the file, or when `max` is 0. Blocks on the disk.
pub(crate) fn pread_append(
    file: &File,
    buf: &mut BytesMut,
    max: usize,
    offset: u64,
) -> io::Result<usize> {
    preadv2_append(file, buf, max, offset, 0)
}

/// [`pread_append`] from the page cache only (`preadv2(RWF_NOWAIT)`): never waits for the disk.
pub(crate) fn pread_append_nowait(
    file: &File,
    buf: &mut BytesMut,
    max: usize,
    offset: u64,
) -> Nowait {
    match preadv2_append(file, buf, max, offset, libc::RWF_NOWAIT) {
        Ok(n) => Nowait::Done(n),
        // Our own range check (no errno) comes out as `Failed`.
        Err(e) => Nowait::from_error(e),
    }
}

/// Writes what it can of `data` at `offset` without blocking (`pwritev2(RWF_NOWAIT)`): into
/// the page cache, or not at all.
pub(crate) fn pwrite_nowait(file: &File, data: &[u8], offset: u64) -> Nowait {
    let at = match file_span(offset, data.len()) {
        Ok(at) => at,
        Err(_) => return Nowait::Failed,
    };
    if data.is_empty() {
        return Nowait::Done(0);
    }
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    loop {
        // SAFETY: the iovec points at `data`, borrowed for the call; pwritev2 only reads it.
        // The descriptor is open: `file` is borrowed.
        let rc = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        match usize::try_from(rc) {
            Ok(n) => return Nowait::Done(n.min(data.len())),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Nowait::from_error(err);
                }
            }
        }
    }
}

/// Deallocates `[offset, offset + len)` keeping the file size
/// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): the range then reads as zeros. Parts past the end
/// of the file are left alone; an empty range is a no-op (the kernel would refuse it).
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<Punch> {
    if len == 0 {
        return Ok(Punch::Done);
    }
    let length = libc::off_t::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("hole length {len} is beyond off_t"),
        )
    })?;
    let at = file_span(offset, 0)?;
    if at.checked_add(length).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("hole at {offset} of {len} bytes ends beyond off_t"),
        ));
    }
    loop {
        // SAFETY: fallocate is passed no memory, only a descriptor that the borrowed `file`
        // keeps open for the call.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at,
                length,
            )
        };
        if rc == 0 {
            return Ok(Punch::Done);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(Punch::Unsupported),
            _ => return Err(err),
        }
    }
}

/// `lseek(whence)`, with ENXIO as [`Region::None`].
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Region> {
    let at = file_span(offset, 0)?;
    // SAFETY: lseek is passed no memory, only a descriptor that the borrowed `file` keeps
    // open. It moves the file's shared offset, which nothing in the crate uses (all I/O on
    // these files is positional).
    let rc = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
    match u64::try_from(rc) {
        Ok(pos) => Ok(Region::At(pos)),
        Err(_) => {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                Ok(Region::None)
            } else {
                Err(err)
            }
        }
    }
}

/// The first data byte at or after `offset` (SEEK_DATA); [`Region::None`] when there is none.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Region> {
    seek(file, offset, libc::SEEK_DATA)
}

/// The first hole byte at or after `offset` (SEEK_HOLE; the end of the file is a hole);
/// [`Region::None`] when `offset` is at or past the end of the file.
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<Region> {
    seek(file, offset, libc::SEEK_HOLE)
}

/// The size in bytes of the block device open as `file` (`ioctl(BLKGETSIZE64)`).
pub(crate) fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`, alive
    // for the call. The descriptor is open: `file` is borrowed.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Bytes an unprivileged writer may still use on the file system holding `file` (an open
/// file or folder): `fstatvfs`'s available blocks times the fragment size.
pub(crate) fn free_space(file: &File) -> io::Result<u64> {
    // SAFETY: statvfs is plain data; an all-zero value is valid, and fstatvfs only writes it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open (`file` is borrowed) and `st` is alive for the call.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    /// A read-write temporary file of `len` bytes, all hole.
    fn sparse_file(len: u64) -> File {
        let file = tempfile::tempfile().unwrap();
        file.set_len(len).unwrap();
        file
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 + 1).collect()
    }

    #[test]
    fn data_and_holes_of_a_sparse_file() {
        let f = sparse_file(4 * MIB);
        f.write_all_at(&pattern(8192), MIB).unwrap();
        assert_eq!(seek_data(&f, 0).unwrap(), Region::At(MIB));
        assert_eq!(seek_hole(&f, 0).unwrap(), Region::At(0));
        assert_eq!(seek_data(&f, MIB + 100).unwrap(), Region::At(MIB + 100));
        assert_eq!(seek_hole(&f, MIB).unwrap(), Region::At(MIB + 8192));
        // No data after the run; the end of the file is a hole.
        assert_eq!(seek_data(&f, MIB + 8192).unwrap(), Region::None);
        assert_eq!(seek_hole(&f, 3 * MIB).unwrap(), Region::At(3 * MIB));
    }

    #[test]
    fn seeks_at_and_past_the_end_find_nothing() {
        let f = sparse_file(8192);
        f.write_all_at(&pattern(8192), 0).unwrap();
        assert_eq!(seek_hole(&f, 0).unwrap(), Region::At(8192));
        for at in [8192, 8193, 10 * MIB] {
            assert_eq!(seek_data(&f, at).unwrap(), Region::None, "data at {at}");
            assert_eq!(seek_hole(&f, at).unwrap(), Region::None, "hole at {at}");
        }
        let err = seek_data(&f, u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_punched_hole_reads_as_zeros_and_seek_hole_finds_it() {
        let f = sparse_file(64 * 1024);
        f.write_all_at(&pattern(64 * 1024), 0).unwrap();
        assert_eq!(seek_hole(&f, 0).unwrap(), Region::At(64 * 1024));
        assert_eq!(punch_hole(&f, 16384, 8192).unwrap(), Punch::Done);
        assert_eq!(seek_hole(&f, 0).unwrap(), Region::At(16384));
        assert_eq!(seek_data(&f, 16384).unwrap(), Region::At(24576));
        let mut back = vec![0xffu8; 8192];
        f.read_exact_at(&mut back, 16384).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        f.read_exact_at(&mut back, 24576).unwrap();
        assert_eq!(back, pattern(64 * 1024)[24576..32768]);
        assert_eq!(f.metadata().unwrap().len(), 64 * 1024);
    }

    #[test]
    fn punching_past_the_end_or_nothing_changes_nothing() {
        let f = sparse_file(10_000);
        f.write_all_at(&pattern(10_000), 0).unwrap();
        // How FileDevice probes for support: past the end, nothing to deallocate.
        assert_eq!(punch_hole(&f, 12_288, 4096).unwrap(), Punch::Done);
        assert_eq!(punch_hole(&f, 0, 0).unwrap(), Punch::Done);
        assert_eq!(f.metadata().unwrap().len(), 10_000);
        assert_eq!(seek_hole(&f, 0).unwrap(), Region::At(10_000));
        let err = punch_hole(&f, u64::MAX - 10, 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = punch_hole(&f, 4096, u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn blocking_reads_append_until_the_end_of_the_file() {
        let f = sparse_file(0);
        let data = pattern(10_000);
        f.write_all_at(&data, 0).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(pread_append(&f, &mut buf, 4000, 1000).unwrap(), 4000);
        // Appends after what is there, from the offset given.
        assert_eq!(pread_append(&f, &mut buf, 8000, 5000).unwrap(), 5000);
        assert_eq!(&buf[..], &data[1000..]);
        assert_eq!(pread_append(&f, &mut buf, 100, 10_000).unwrap(), 0);
        assert_eq!(pread_append(&f, &mut buf, 100, 20 * MIB).unwrap(), 0);
        assert_eq!(pread_append(&f, &mut buf, 0, 0).unwrap(), 0);
        assert_eq!(buf.len(), 9000);
        let err = pread_append(&f, &mut buf, 1, i64::MAX as u64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn nowait_reads_copy_cached_data() {
        let f = sparse_file(0);
        let data = pattern(64 * 1024);
        // Just written, so in the page cache.
        f.write_all_at(&data, 0).unwrap();
        let mut buf = BytesMut::with_capacity(data.len());
        let mut at = 0;
        loop {
            match pread_append_nowait(&f, &mut buf, 128 * 1024, at) {
                Nowait::Done(0) => break,
                Nowait::Done(n) => at += n as u64,
                // A file system without RWF_NOWAIT: nothing to check here.
                Nowait::Unsupported => return,
                other => panic!("cached read answered {other:?}"),
            }
        }
        assert_eq!(&buf[..], &data[..]);
        // Past the end: the end of the file, not an error.
        assert!(matches!(
            pread_append_nowait(&f, &mut buf, 10, MIB),
            Nowait::Done(0)
        ));
        assert!(matches!(
            pread_append_nowait(&f, &mut buf, 1, u64::MAX),
            Nowait::Failed
        ));
    }

    #[test]
    fn nowait_writes_land_or_say_why_not() {
        let f = sparse_file(MIB);
        let data = pattern(8192);
        let mut done = 0;
        while done < data.len() {
            match pwrite_nowait(&f, &data[done..], 4096 + done as u64) {
                Nowait::Done(0) => panic!("no progress"),
                Nowait::Done(n) => done += n,
                // Not possible without blocking, or not offered here: the caller falls back.
                Nowait::WouldBlock | Nowait::Unsupported => return,
                Nowait::Failed => panic!("write failed"),
            }
        }
        let mut back = vec![0u8; 8192];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
        assert!(matches!(pwrite_nowait(&f, &[], 0), Nowait::Done(0)));
    }

    #[test]
    fn nowait_errors_sort_into_the_callers_decisions() {
        let sort = |errno| Nowait::from_error(io::Error::from_raw_os_error(errno));
        assert!(matches!(sort(libc::EAGAIN), Nowait::WouldBlock));
        for errno in [libc::EOPNOTSUPP, libc::EINVAL, libc::ENOSYS] {
            assert!(matches!(sort(errno), Nowait::Unsupported), "errno {errno}");
        }
        assert!(matches!(sort(libc::EIO), Nowait::Failed));
    }

    #[test]
    fn a_regular_file_has_no_block_device_size() {
        let f = sparse_file(4096);
        // ENOTTY: the ioctl is for block devices only.
        assert!(block_device_size(&f).is_err());
    }
}
