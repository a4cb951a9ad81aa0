//! Helpers for sparse writable layers (spec `lsmt.md` §7): data lives in place at
//! `4096 + virtual offset`, the index is rebuilt from the file's allocation map, and discards
//! punch holes.

use std::fs::File;

use super::error::{LsmtError, LsmtResult};
use super::header::HEADER_SIZE;
use super::index::{Record, MAX_LENGTH, SECTOR};
use crate::sys::file::{seek_data, seek_hole};
use crate::sys::{Punch, Region};

/// The allocated byte regions `[start, end)` of `file` at or after `from`, found with
/// `SEEK_DATA` / `SEEK_HOLE`.
pub(crate) fn allocated_regions(file: &File, from: u64, name: &str) -> LsmtResult<Vec<(u64, u64)>> {
    let size = file.metadata().map_err(|e| LsmtError::io(name, e))?.len();
    let mut regions = Vec::new();
    let mut pos = from;
    while pos < size {
        let start = match seek_data(file, pos).map_err(|e| LsmtError::io(name, e))? {
            Region::At(start) => start,
            // No data at or after `pos`.
            Region::None => break,
        };
        let end = match seek_hole(file, start).map_err(|e| LsmtError::io(name, e))? {
            Region::At(end) => end.min(size),
            // `start` is past the end: the file shrank since `size` was read.
            Region::None => break,
        };
        if end <= start {
            break;
        }
        regions.push((start, end));
        pos = end;
    }
    Ok(regions)
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
    if crate::sys::file::punch_hole(file, offset, len)? == Punch::Done {
        return Ok(());
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
