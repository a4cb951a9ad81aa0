//! Logical block provisioning commands (SBC-3 4.7): WRITE SAME(10/16), UNMAP and GET LBA
//! STATUS.

use bytes::{BufMut, Bytes, BytesMut};

use super::cdb::Extent;
use super::lun::{LogicalUnit, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS};
use super::sbc::{byte_range, read_error, write_error};
use super::sense::Sense;
use crate::block::Provisioning;

/// Bytes written per backend call when WRITE SAME has to write real data.
const WRITE_SAME_CHUNK: usize = 1 << 20;

/// Most descriptors one GET LBA STATUS returns.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// WRITE SAME(10/16). `data` is one block (empty with NDOB).
pub async fn write_same(
    lun: &LogicalUnit,
    e: &Extent,
    unmap: bool,
    anchor: bool,
    ndob: bool,
    data: &Bytes,
) -> Result<(), Sense> {
    lun.check_writable()?;
    if anchor {
        // ANC_SUP = 0: anchored blocks are not supported.
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    if unmap && !lun.can_unmap() {
        // LBPWS = LBPWS10 = 0: a LUN that does not deallocate says so rather than writing
        // the block in silence (libiscsi's WriteSame*.UnmapVPD checks the two agree).
        return Err(Sense::invalid_cdb_field(1, Some(3)));
    }
    // WSNZ = 0: zero blocks means "to the end of the medium".
    let blocks = match e.blocks {
        0 => lun
            .blocks()
            .checked_sub(e.lba)
            .ok_or_else(Sense::lba_out_of_range)?,
        n => u64::from(n),
    };
    let (offset, len) = byte_range(lun, e.lba, blocks)?;
    if blocks > MAX_WRITE_SAME_BLOCKS {
        return Err(Sense::invalid_cdb_field(e.length_byte, None));
    }
    let bs = lun.block_size() as usize;
    let block = if ndob {
        Bytes::from(vec![0u8; bs])
    } else {
        data.clone()
    };
    if block.len() != bs {
        return Err(Sense::invalid_cdb_field(e.length_byte, None));
    }
    if len == 0 {
        return Ok(());
    }
    if unmap {
        // UNMAP = 1, ANCHOR = 0 asks for an unmap operation whatever the block holds (SBC-3
        // table "ANCHOR bit, UNMAP bit and ANC_SUP bit relationships"); reads then return
        // zeros (LBPRZ).
        return lun
            .device
            .unmap(offset, len)
            .await
            .map_err(|e| write_error(lun, "unmap", offset, len, e));
    }
    // Build one chunk of the repeated pattern and write it as many times as needed.
    let chunk_blocks = (WRITE_SAME_CHUNK / bs).max(1);
    let mut pattern = BytesMut::with_capacity(chunk_blocks * bs);
    for _ in 0..chunk_blocks {
        pattern.put_slice(&block);
    }
    let pattern = pattern.freeze();
    let fua = !lun.write_cache_enabled();
    let mut done = 0u64;
    while done < len {
        let take = (len - done).min(pattern.len() as u64) as usize;
        lun.device
            .write(offset + done, pattern.slice(..take), fua)
            .await
            .map_err(|e| write_error(lun, "write same", offset + done, take as u64, e))?;
        done += take as u64;
    }
    Ok(())
}

/// UNMAP: validates the whole parameter list before deallocating anything.
pub async fn unmap(lun: &LogicalUnit, anchor: bool, params: &[u8]) -> Result<(), Sense> {
    lun.check_writable()?;
    if !lun.can_unmap() {
        return Err(Sense::invalid_opcode());
    }
    if anchor {
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    if params.is_empty() {
        return Ok(());
    }
    if params.len() < 8 {
        return Err(Sense::parameter_list_length());
    }
    let data_len = usize::from(u16::from_be_bytes([params[0], params[1]]));
    let desc_len = usize::from(u16::from_be_bytes([params[2], params[3]]));
    if data_len + 2 > params.len() || desc_len + 8 > params.len() {
        return Err(Sense::parameter_list_length());
    }
    // A trailing partial descriptor is ignored (SBC-3 5.28.2).
    let count = desc_len / 16;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2, None));
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let d = &params[8 + 16 * i..8 + 16 * (i + 1)];
        let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or_default());
        let blocks = u32::from_be_bytes(d[8..12].try_into().unwrap_or_default());
        ranges.push(byte_range(lun, lba, u64::from(blocks))?);
    }
    for (offset, len) in ranges {
        if len > 0 {
            lun.device
                .unmap(offset, len)
                .await
                .map_err(|e| write_error(lun, "unmap", offset, len, e))?;
        }
    }
    Ok(())
}

/// GET LBA STATUS: descriptors from `lba` on, as many as fit in `alloc_len`.
pub async fn get_lba_status(lun: &LogicalUnit, lba: u64, alloc_len: u32) -> Result<Bytes, Sense> {
    if lba >= lun.blocks() {
        return Err(Sense::lba_out_of_range());
    }
    let bs = u64::from(lun.block_size());
    let room = (alloc_len as usize).saturating_sub(8) / 16;
    let wanted = room.clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut body = BytesMut::new();
    let mut next = lba;
    while body.len() / 16 < wanted && next < lun.blocks() {
        let status = lun
            .device
            .block_status(next * bs)
            .await
            .map_err(|e| read_error(lun, next * bs, bs, e))?;
        let run = (status.len / bs).clamp(1, u64::from(u32::MAX));
        let run = run.min(lun.blocks() - next);
        body.put_u64(next);
        body.put_u32(run as u32);
        body.put_u8(match status.state {
            Provisioning::Mapped => 0,
            Provisioning::Deallocated => 1,
        });
        body.put_slice(&[0; 3]);
        next += run;
    }
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_u32((4 + body.len()) as u32);
    out.put_u32(0);
    out.put_slice(&body);
    Ok(out.freeze())
}
