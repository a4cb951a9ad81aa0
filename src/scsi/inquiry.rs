//! INQUIRY: standard data and the vital product data pages (SPC-4 6.6, 7.8; SBC-3 6.5).

use bytes::{BufMut, Bytes, BytesMut};

use super::cdb::service_action::sanitize;
use super::cdb::{lookup, opcode};
use super::identity::VENDOR;
use super::lun::{
    LogicalUnit, MAX_ATOMIC_BLOCKS, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS, OPTIMAL_GRANULARITY_BLOCKS,
};
use super::sense::Sense;

/// Product revision level.
const REVISION: &[u8; 4] = b"0001";
/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3 (no version claimed).
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0960, 0x0460, 0x04c0];
/// Supported VPD pages, in ascending order.
const VPD_PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2];
/// Length of the standard INQUIRY data we return.
const STANDARD_LEN: usize = 96;

/// Standard INQUIRY data; `present` false gives the "no logical unit" form (PQ 3, type 1Fh);
/// `removable` sets RMB.
pub fn standard(product: &[u8; 16], present: bool, removable: bool) -> Bytes {
    let mut d = BytesMut::zeroed(STANDARD_LEN);
    d[0] = if present { 0x00 } else { 0x7f };
    d[1] = if removable { 0x80 } else { 0x00 };
    if present {
        // TPGS 01b: implicit ALUA (REPORT TARGET PORT GROUPS); 3PC: EXTENDED COPY.
        d[5] = 0x10 | 0x08;
    }
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (STANDARD_LEN - 5) as u8;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(product);
    d[32..36].copy_from_slice(REVISION);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d.freeze()
}

/// INQUIRY against an existing logical unit, received through target port `port`.
pub fn inquiry(lun: &LogicalUnit, evpd: bool, page: u8, port: u16) -> Result<Bytes, Sense> {
    if !evpd {
        if page != 0 {
            return Err(Sense::invalid_cdb_field(2, None));
        }
        return Ok(standard(&lun.product, true, lun.options.removable));
    }
    let body = match page {
        0x00 => Bytes::from_static(&VPD_PAGES),
        0x80 => Bytes::copy_from_slice(lun.serial.as_bytes()),
        0x83 => device_identification(lun, port),
        0x8f => super::xcopy::third_party_copy_vpd(),
        0xb0 => block_limits(lun),
        0xb1 => block_device_characteristics(lun),
        0xb2 => logical_block_provisioning(lun),
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u8(0x00);
    out.put_u8(page);
    out.put_u16(body.len() as u16);
    out.put_slice(&body);
    Ok(out.freeze())
}

/// VPD 0x83: NAA, T10 vendor ID, and the relative target port and target port group the
/// command came through (the same number: each portal group is one port in a group of its own,
/// see `alua`).
fn device_identification(lun: &LogicalUnit, port: u16) -> Bytes {
    let mut d = BytesMut::new();
    // NAA, binary, associated with the logical unit.
    d.put_slice(&[0x01, 0x03, 0x00, 0x08]);
    d.put_slice(&lun.naa);
    // T10 vendor ID, ASCII: vendor + serial.
    let serial = lun.serial.as_bytes();
    let serial = &serial[..serial.len().min(200)];
    d.put_slice(&[0x02, 0x01, 0x00, (8 + serial.len()) as u8]);
    d.put_slice(VENDOR);
    d.put_slice(serial);
    // Relative target port identifier, iSCSI, associated with the target port (PIV set).
    d.put_slice(&[0x51, 0x94, 0x00, 0x04, 0, 0]);
    d.put_u16(port);
    // Target port group, associated with the target port (PIV set).
    d.put_slice(&[0x51, 0x95, 0x00, 0x04, 0, 0]);
    d.put_u16(port);
    d.freeze()
}

/// VPD 0xb0 (SBC-3 6.5.3): limits that the command handlers enforce.
fn block_limits(lun: &LogicalUnit) -> Bytes {
    // Transfers and unmaps are best in whole physical blocks, and never below 4 KiB.
    let granularity = OPTIMAL_GRANULARITY_BLOCKS.max(lun.blocks_per_physical());
    let mut d = BytesMut::zeroed(0x3c);
    d[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
    d[2..4].copy_from_slice(&(granularity as u16).to_be_bytes());
    d[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
    d[8..12].copy_from_slice(&2048u32.to_be_bytes());
    if lun.can_unmap() {
        d[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        d[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        d[24..28].copy_from_slice(&granularity.to_be_bytes());
    }
    d[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    // MAXIMUM ATOMIC TRANSFER LENGTH; ATOMIC ALIGNMENT and GRANULARITY 0: any block, any
    // length; no atomic boundaries.
    d[40..44].copy_from_slice(&MAX_ATOMIC_BLOCKS.to_be_bytes());
    d.freeze()
}

/// VPD 0xb1: a non-rotating medium; reads succeed after a SANITIZE BLOCK ERASE or
/// CRYPTOGRAPHIC ERASE (WABEREQ, WACEREQ = 01b) where the LUN offers them.
fn block_device_characteristics(lun: &LogicalUnit) -> Bytes {
    let mut d = BytesMut::zeroed(0x3c);
    d[1] = 0x01;
    let offered =
        |sa: u8| lookup(opcode::SANITIZE, u16::from(sa)).is_some_and(|info| lun.offers(info));
    if offered(sanitize::BLOCK_ERASE) {
        d[3] |= 0x40;
    }
    if offered(sanitize::CRYPTO_ERASE) {
        d[3] |= 0x10;
    }
    d.freeze()
}

/// VPD 0xb2: thin provisioning with UNMAP and WRITE SAME(10/16) UNMAP when the device
/// deallocates; deallocated blocks read as zeros (LBPRZ).
fn logical_block_provisioning(lun: &LogicalUnit) -> Bytes {
    let mut d = [0u8; 4];
    if lun.can_unmap() {
        d[1] = 0x80 | 0x40 | 0x20 | 0x04;
        d[2] = 0x02;
    }
    Bytes::copy_from_slice(&d)
}
