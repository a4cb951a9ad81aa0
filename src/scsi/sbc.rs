//! Block data commands (SBC-3 5.x): READ, WRITE, WRITE AND VERIFY, VERIFY, ORWRITE, COMPARE
//! AND WRITE, SYNCHRONIZE CACHE, PRE-FETCH and READ CAPACITY.

use bytes::{BufMut, Bytes, BytesMut};

use super::cdb::Extent;
use super::io_log::io_failed;
use super::lun::{
    LogicalUnit, MAX_ATOMIC_BLOCKS, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BLOCKS,
};
use super::sense::{asc, key, Sense};
use crate::block::BlockError;

/// Maps a backend error during a read of `len` bytes at byte `offset` to sense data; I/O
/// errors are logged (rate limited) and a device found unavailable makes the LUN NOT READY.
pub fn read_error(lun: &LogicalUnit, offset: u64, len: u64, err: BlockError) -> Sense {
    io_failed(lun, "read", offset, len, &err);
    sense_of(lun, err, asc::UNRECOVERED_READ_ERROR)
}

/// Maps a backend error during a write, unmap or flush to sense data, like [`read_error`].
pub fn write_error(
    lun: &LogicalUnit,
    op: &'static str,
    offset: u64,
    len: u64,
    err: BlockError,
) -> Sense {
    io_failed(lun, op, offset, len, &err);
    sense_of(lun, err, asc::WRITE_ERROR)
}

/// Sense for `err`; `medium` is the MEDIUM ERROR code for the direction.
fn sense_of(lun: &LogicalUnit, err: BlockError, medium: super::sense::Asc) -> Sense {
    match err {
        BlockError::ReadOnly => Sense::write_protected(),
        BlockError::OutOfRange { .. } => Sense::lba_out_of_range(),
        BlockError::Unsupported(_) => Sense::invalid_opcode(),
        BlockError::Corrupt(_) | BlockError::Io(_) | BlockError::Remote(_) => {
            Sense::new(key::MEDIUM_ERROR, medium)
        }
        BlockError::NoSpace(_) => Sense::new(key::DATA_PROTECT, asc::SPACE_ALLOCATION_FAILED),
        BlockError::Unavailable(reason) => {
            lun.mark_unavailable(reason);
            Sense::not_ready(reason)
        }
    }
}

/// Checks that `blocks` blocks at `lba` lie inside the LUN; returns (byte offset, byte length).
pub fn byte_range(lun: &LogicalUnit, lba: u64, blocks: u64) -> Result<(u64, u64), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lun.blocks() && lba <= lun.blocks() => {}
        _ => return Err(Sense::lba_out_of_range()),
    }
    let bs = u64::from(lun.block_size());
    Ok((lba * bs, blocks * bs))
}

/// Range check plus the MAXIMUM TRANSFER LENGTH limit for READ/WRITE/VERIFY.
fn transfer_range(lun: &LogicalUnit, e: &Extent) -> Result<(u64, u64), Sense> {
    let range = byte_range(lun, e.lba, u64::from(e.blocks))?;
    if e.blocks > MAX_TRANSFER_BLOCKS {
        return Err(Sense::invalid_cdb_field(e.length_byte, None));
    }
    Ok(range)
}

/// READ(6/10/12/16) of which the transport carries at most `carried` bytes (its Expected Data
/// Transfer Length): the whole extent is checked, but only the blocks that reach the initiator
/// are read, so a READ of 32 MiB with an EDTL of 512 reads one block, not 32 MiB.
pub async fn read(lun: &LogicalUnit, e: &Extent, carried: u32) -> Result<Bytes, Sense> {
    let (offset, len) = transfer_range(lun, e)?;
    let bs = u64::from(lun.block_size());
    let len = len.min(u64::from(carried).div_ceil(bs) * bs);
    if len == 0 {
        return Ok(Bytes::new());
    }
    read_medium(lun, offset, len).await
}

/// Reads `len` bytes (at most MAX_TRANSFER_BLOCKS or MAX_COMPARE_AND_WRITE_BLOCKS blocks, so
/// the length fits in usize).
async fn read_medium(lun: &LogicalUnit, offset: u64, len: u64) -> Result<Bytes, Sense> {
    lun.device
        .read(offset, len as usize)
        .await
        .map_err(|e| read_error(lun, offset, len, e))
}

/// Writes with FUA when the CDB asks for it or the write cache is disabled (WCE = 0).
async fn write_medium(lun: &LogicalUnit, offset: u64, data: Bytes, fua: bool) -> Result<(), Sense> {
    let fua = fua || !lun.write_cache_enabled();
    let len = data.len() as u64;
    lun.device
        .write(offset, data, fua)
        .await
        .map_err(|e| write_error(lun, "write", offset, len, e))
}

/// WRITE(6/10/12/16) and WRITE AND VERIFY; `data` holds exactly the blocks to write.
pub async fn write(lun: &LogicalUnit, e: &Extent, data: Bytes) -> Result<(), Sense> {
    lun.check_writable()?;
    let (offset, len) = transfer_range(lun, e)?;
    if len == 0 {
        return Ok(());
    }
    write_medium(lun, offset, data, e.fua).await
}

/// WRITE ATOMIC(16): one write of at most [`MAX_ATOMIC_BLOCKS`]. The dispatcher holds the
/// LUN's atomic gate exclusively around it, so no other command of this target sees or
/// writes part of it; the device gets it as one write. What a host crash leaves of a write
/// still in its page cache is up to the host's file system (FUA makes it durable first).
pub async fn write_atomic(lun: &LogicalUnit, e: &Extent, data: Bytes) -> Result<(), Sense> {
    lun.check_writable()?;
    let (offset, len) = byte_range(lun, e.lba, u64::from(e.blocks))?;
    if e.blocks > MAX_ATOMIC_BLOCKS {
        return Err(Sense::invalid_cdb_field(e.length_byte, None));
    }
    if len == 0 {
        return Ok(());
    }
    write_medium(lun, offset, data, e.fua).await
}

/// Index of the first differing byte of `a` and `b` (equal lengths).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// VERIFY(10/12/16). BYTCHK 0 reads the medium; 1 compares `data` with it; 3 compares one
/// block of `data` against every block.
pub async fn verify(lun: &LogicalUnit, e: &Extent, bytchk: u8, data: &Bytes) -> Result<(), Sense> {
    if bytchk == 2 {
        return Err(Sense::invalid_cdb_field(1, Some(2)));
    }
    let (offset, len) = transfer_range(lun, e)?;
    if len == 0 {
        return Ok(());
    }
    let medium = read_medium(lun, offset, len).await?;
    let mismatch = match bytchk {
        0 => None,
        1 => first_difference(&medium, data),
        _ => {
            let bs = lun.block_size() as usize;
            medium
                .chunks(bs)
                .enumerate()
                .find_map(|(i, block)| first_difference(block, data).map(|at| i * bs + at))
        }
    };
    match mismatch {
        Some(at) => Err(Sense::miscompare(at as u32)),
        None => Ok(()),
    }
}

/// COMPARE AND WRITE: `data` is the verify blocks followed by the write blocks.
pub async fn compare_and_write(lun: &LogicalUnit, e: &Extent, data: Bytes) -> Result<(), Sense> {
    lun.check_writable()?;
    if e.blocks > u32::from(MAX_COMPARE_AND_WRITE_BLOCKS) {
        return Err(Sense::invalid_cdb_field(13, None));
    }
    let (offset, len) = byte_range(lun, e.lba, u64::from(e.blocks))?;
    if len == 0 {
        return Ok(());
    }
    let half = len as usize;
    let _guard = lun.rmw_lock.lock().await;
    let medium = read_medium(lun, offset, len).await?;
    if let Some(at) = first_difference(&medium, &data[..half]) {
        return Err(Sense::miscompare(at as u32));
    }
    write_medium(lun, offset, data.slice(half..), e.fua).await
}

/// ORWRITE(16): ORs `data` into the medium.
pub async fn or_write(lun: &LogicalUnit, e: &Extent, data: Bytes) -> Result<(), Sense> {
    lun.check_writable()?;
    let (offset, len) = transfer_range(lun, e)?;
    if len == 0 {
        return Ok(());
    }
    let _guard = lun.rmw_lock.lock().await;
    let medium = read_medium(lun, offset, len).await?;
    let mut merged = BytesMut::from(&medium[..]);
    for (m, d) in merged.iter_mut().zip(data.iter()) {
        *m |= d;
    }
    write_medium(lun, offset, merged.freeze(), e.fua).await
}

/// SYNCHRONIZE CACHE(10/16): the range is checked, then the whole device is flushed.
pub async fn synchronize_cache(lun: &LogicalUnit, lba: u64, blocks: u32) -> Result<(), Sense> {
    let (offset, len) = byte_range(lun, lba, u64::from(blocks))?;
    lun.device
        .flush()
        .await
        .map_err(|e| write_error(lun, "flush", offset, len, e))
}

/// PRE-FETCH(10/16): range check only; we keep no cache of our own to fill.
pub fn pre_fetch(lun: &LogicalUnit, lba: u64, blocks: u32) -> Result<(), Sense> {
    byte_range(lun, lba, u64::from(blocks)).map(|_| ())
}

/// READ CAPACITY(10).
pub fn read_capacity10(lun: &LogicalUnit, lba: u32, pmi: bool) -> Result<Bytes, Sense> {
    if !pmi && lba != 0 {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    let last = lun.blocks().saturating_sub(1);
    let mut out = BytesMut::with_capacity(8);
    out.put_u32(u32::try_from(last).unwrap_or(u32::MAX));
    out.put_u32(lun.block_size());
    Ok(out.freeze())
}

/// READ CAPACITY(16): the physical block exponent, and LBPME and LBPRZ when the LUN
/// deallocates.
pub fn read_capacity16(lun: &LogicalUnit) -> Bytes {
    let mut out = BytesMut::zeroed(32);
    out[0..8].copy_from_slice(&lun.blocks().saturating_sub(1).to_be_bytes());
    out[8..12].copy_from_slice(&lun.block_size().to_be_bytes());
    // LOWEST ALIGNED LOGICAL BLOCK ADDRESS stays 0: block 0 starts a physical block.
    out[13] = lun.options.physical_block_exponent & 0x0f;
    if lun.can_unmap() {
        out[14] = 0x80 | 0x40;
    }
    out.freeze()
}

/// READ DEFECT DATA(10/12) (SBC-3 5.12, 5.13): the primary and grown lists asked for (`lists`:
/// REQ_PLIST 0x10, REQ_GLIST 0x08) are valid and empty, in the format asked for: a virtual
/// medium has no defects to report.
pub fn read_defect_data(long: bool, lists: u8, format: u8) -> Bytes {
    let flags = (lists & 0x18) | (format & 0x07);
    if long {
        // Header of the 12-byte form: flags, a generation code (0: not tracked), a 4-byte
        // list length.
        Bytes::copy_from_slice(&[0, flags, 0, 0, 0, 0, 0, 0])
    } else {
        Bytes::copy_from_slice(&[0, flags, 0, 0])
    }
}
