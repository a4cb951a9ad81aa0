//! Helpers for sparse writable layers (spec `lsmt.md` §7): data lives in place at
//! `4096 + virtual offset`, the index is rebuilt from the file's allocation map, and discards
//! punch holes.

use std::fs::File;
use std::os::unix::io::AsRawFd;

use super::error::{LsmtError, LsmtResult};
use super::header::HEADER_SIZE;
use super::index::{Record, MAX_LENGTH, SECTOR};

/// The allocated byte regions `[start, end)` of `file` at or after `from`, found with
/// `SEEK_DATA` / `SEEK_HOLE`.
pub(crate) fn allocated_regions(file: &File, from: u64, name: &str) -> LsmtResult<Vec<(u64, u64)>> {
    let size = file.metadata().map_err(|e| LsmtError::io(name, e))?.len();
    let fd = file.as_raw_fd();
    let mut regions = Vec::new();
    let mut pos = from;
    while pos < size {
        let start = match seek(fd, pos, libc::SEEK_DATA) {
            Ok(s) => s,
            // No data at or after `pos`.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(LsmtError::io(name, e)),
        };
        let end = seek(fd, start, libc::SEEK_HOLE)
            .map_err(|e| LsmtError::io(name, e))?
            .min(size);
        if end <= start {
            break;
        }
        regions.push((start, end));
        pos = end;
    }
    Ok(regions)
}

fn seek(fd: i32, pos: u64, whence: i32) -> std::io::Result<u64> {
    let off = i64::try_from(pos).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a descriptor owned by a live `File`; it only moves the file offset, which
    // this crate never relies on (all I/O is positional).
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // r ≥ 0 here.
        Ok(r as u64)
    }
}

/// Records for allocated data-file regions: region `[b, e)` maps virtual sector `(b−4096)/512`
/// to data sector `b/512`, split into pieces of at most 16383 sectors. Regions are widened to
/// whole sectors and clipped to the data area.
pub(crate) fn records_from_regions(regions: &[(u64, u64)]) -> Vec<Record> {
    let header = HEADER_SIZE as u64;
    let mut out = Vec::new();
    for &(b, e) in regions {
        let b = (b / SECTOR * SECTOR).max(header);
        let e = e.div_ceil(SECTOR) * SECTOR;
        let mut m = b / SECTOR;
        let end = e / SECTOR;
        while m < end {
            // Bounded by MAX_LENGTH.
            let len = (end - m).min(u64::from(MAX_LENGTH)) as u32;
            out.push(Record::data(m - header / SECTOR, len, m));
            m += u64::from(len);
        }
    }
    out
}

/// Deallocates `[offset, offset + len)` of `file` keeping its size; where the file system
/// cannot punch holes, the range is overwritten with zeros (it then reads the same).
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let off = i64::try_from(offset).map_err(std::io::Error::other)?;
    let l = i64::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: fallocate on a descriptor owned by a live `File`; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        // At most 1 MiB per step.
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_become_split_records() {
        let regions = [(4096, 8192), (1 << 20, (1 << 20) + 16384 * 512)];
        assert_eq!(
            records_from_regions(&regions),
            vec![
                Record::data(0, 8, 8),
                Record::data(2040, 16383, 2048),
                Record::data(2040 + 16383, 1, 2048 + 16383),
            ]
        );
    }

    #[test]
    fn allocation_map_of_a_sparse_file() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[2u8; 8192], 1 << 20).unwrap();
        let regions = allocated_regions(&f, 4096, "f").unwrap();
        assert_eq!(regions, vec![(1 << 20, (1 << 20) + 8192)]);
        punch_hole(&f, 1 << 20, 4096).unwrap();
        assert_eq!(
            allocated_regions(&f, 4096, "f").unwrap(),
            vec![((1 << 20) + 4096, (1 << 20) + 8192)]
        );
    }
}
