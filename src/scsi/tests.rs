//! End-to-end tests of [`ScsiTarget::execute`] with literal CDBs and expected bytes.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::block::{BlockError, BlockResult, BlockStatus, RamDevice};

const BLOCKS: u64 = 2048; // 1 MiB of 512-byte blocks

fn nexus(name: &str) -> Nexus {
    Nexus {
        initiator_name: format!("iqn.2026-11.test:{name}"),
        isid: [0x40, 0, 0, 0, 0, 1],
        tpgt: 1,
    }
}

fn lun_config(device: Arc<dyn BlockDevice>) -> LunConfig {
    LunConfig {
        device,
        serial: "SERIAL0001".to_string(),
        product: "TESTDISK".to_string(),
    }
}

fn ram_target() -> ScsiTarget {
    ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new(BLOCKS * 512)))])
}

fn ro_target() -> ScsiTarget {
    ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new_read_only(
        BLOCKS * 512,
    )))])
}

/// Runs one command on LUN 0; the CDB is padded to 16 bytes like iSCSI does.
async fn exec(
    t: &ScsiTarget,
    n: &Nexus,
    cdb: &[u8],
    expected_len: u32,
    out: &[u8],
) -> ScsiResponse {
    exec_lun(t, n, 0, cdb, expected_len, out).await
}

async fn exec_lun(
    t: &ScsiTarget,
    n: &Nexus,
    lun: u64,
    cdb: &[u8],
    expected_len: u32,
    out: &[u8],
) -> ScsiResponse {
    let mut padded = cdb.to_vec();
    padded.resize(16.max(cdb.len()), 0);
    let direction = if out.is_empty() {
        DataDirection::In
    } else {
        DataDirection::Out
    };
    t.execute(
        n,
        ScsiRequest {
            lun,
            cdb: Bytes::from(padded),
            direction,
            expected_len,
            data_out: Bytes::copy_from_slice(out),
        },
    )
    .await
}

/// A nexus that has already consumed its power-on unit attention.
async fn ready(t: &ScsiTarget, name: &str) -> Nexus {
    let n = nexus(name);
    let first = exec(t, &n, &[0x00, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_sense(&first, sense::key::UNIT_ATTENTION, 0x29, 0x00);
    let second = exec(t, &n, &[0x00, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_eq!(second.status, status::GOOD);
    n
}

fn assert_sense(r: &ScsiResponse, key: u8, asc: u8, ascq: u8) {
    assert_eq!(
        r.status,
        status::CHECK_CONDITION,
        "expected CHECK CONDITION, got status {:#x}",
        r.status
    );
    let s = r.sense.as_ref().expect("sense data");
    assert_eq!(
        (s[2] & 0x0f, s[12], s[13]),
        (key, asc, ascq),
        "sense {s:02x?}"
    );
}

fn assert_field(r: &ScsiResponse, byte: u16, bit: Option<u8>) {
    let s = r.sense.as_ref().expect("sense data");
    assert_eq!(s[15] & 0x80, 0x80, "SKSV");
    assert_eq!(u16::from_be_bytes([s[16], s[17]]), byte);
    match bit {
        Some(b) => assert_eq!(s[15] & 0x0f, 0x08 | b),
        None => assert_eq!(s[15] & 0x08, 0),
    }
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    vec![0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

#[tokio::test]
async fn power_on_unit_attention_and_request_sense() {
    let t = ram_target();
    let n = nexus("a");
    // INQUIRY neither reports nor clears the unit attention.
    let inq = exec(&t, &n, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await;
    assert_eq!(inq.status, status::GOOD);
    // REQUEST SENSE returns it as data and clears it.
    let rs = exec(&t, &n, &[0x03, 0, 0, 0, 18, 0], 18, &[]).await;
    assert_eq!(rs.status, status::GOOD);
    assert_eq!(
        &rs.data_in[..],
        &Sense::unit_attention(asc::POWER_ON_RESET).encode()[..]
    );
    let tur = exec(&t, &n, &[0x00, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_eq!(tur.status, status::GOOD);
    let rs = exec(&t, &n, &[0x03, 0, 0, 0, 252, 0], 252, &[]).await;
    assert_eq!(
        &rs.data_in[..],
        &[0x70, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(rs.residual, 252 - 18);
    // DESC = 1 (descriptor format) is not supported.
    let desc = exec(&t, &n, &[0x03, 1, 0, 0, 18, 0], 18, &[]).await;
    assert_sense(&desc, 5, 0x24, 0);
    assert_field(&desc, 1, Some(0));
}

#[tokio::test]
async fn standard_inquiry_bytes() {
    let t = ram_target();
    let n = nexus("a");
    let r = exec(&t, &n, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await;
    let d = &r.data_in;
    assert_eq!(d.len(), 96);
    assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x00, 0x00, 0x02]);
    assert_eq!(&d[8..16], b"OVERLAYB");
    assert_eq!(&d[16..32], b"TESTDISK        ");
    assert_eq!(
        &d[58..66],
        &[0x00, 0xa0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xc0]
    );
    // Allocation length 5 cuts the data without a residual.
    let r = exec(&t, &n, &[0x12, 0, 0, 0, 5, 0], 5, &[]).await;
    assert_eq!((r.data_in.len(), r.residual), (5, 0));
    // Page code with EVPD = 0.
    let r = exec(&t, &n, &[0x12, 0, 0x80, 0, 96, 0], 96, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 2, None);
}

#[tokio::test]
async fn vpd_pages() {
    let t = ram_target();
    let n = nexus("a");
    let r = exec(&t, &n, &[0x12, 1, 0x00, 0, 255, 0], 255, &[]).await;
    assert_eq!(
        &r.data_in[..],
        &[0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]
    );
    let r = exec(&t, &n, &[0x12, 1, 0x80, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[..], b"\x00\x80\x00\x0aSERIAL0001");
    let r = exec(&t, &n, &[0x12, 1, 0x83, 0, 255, 0], 255, &[]).await;
    let d = &r.data_in;
    assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(d[8] >> 4, 3, "NAA 3");
    assert_eq!(&d[16..20], &[0x02, 0x01, 0x00, 18]);
    assert_eq!(&d[20..38], b"OVERLAYBSERIAL0001");
    assert_eq!(&d[38..46], &[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    let r = exec(&t, &n, &[0x12, 1, 0xb0, 0, 255, 0], 255, &[]).await;
    let d = &r.data_in;
    assert_eq!(&d[..4], &[0, 0xb0, 0, 0x3c]);
    assert_eq!(d[5], 255, "MAXIMUM COMPARE AND WRITE LENGTH");
    assert_eq!(&d[8..12], &65536u32.to_be_bytes());
    assert_eq!(&d[20..24], &u32::MAX.to_be_bytes());
    assert_eq!(&d[24..28], &256u32.to_be_bytes());
    assert_eq!(&d[36..44], &65536u64.to_be_bytes());
    let r = exec(&t, &n, &[0x12, 1, 0xb1, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[..6], &[0, 0xb1, 0, 0x3c, 0, 1]);
    let r = exec(&t, &n, &[0x12, 1, 0xb2, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[..], &[0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]);
    let r = exec(&t, &n, &[0x12, 1, 0xc0, 0, 255, 0], 255, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 2, None);
    // A read-only LUN advertises no provisioning and no unmap limits.
    let ro = ro_target();
    let r = exec(&ro, &n, &[0x12, 1, 0xb2, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[..], &[0, 0xb2, 0, 4, 0, 0, 0, 0]);
    let r = exec(&ro, &n, &[0x12, 1, 0xb0, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[20..28], &[0; 8]);
    // A LUN that cannot deallocate does not offer UNMAP at all.
    let thick = ScsiTarget::new(vec![lun_config(Arc::new(BrokenDevice))]);
    let n = ready(&thick, "a").await;
    let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    assert_sense(&exec(&thick, &n, &unmap, 24, &[0; 24]).await, 5, 0x20, 0);
    let rsoc = [0xa3, 0x0c, 0x01, 0x42, 0, 0, 0, 0, 0, 255, 0, 0];
    assert_eq!(
        &exec(&thick, &n, &rsoc, 255, &[]).await.data_in[..2],
        &[0, 1]
    );
}

#[tokio::test]
async fn missing_lun() {
    let t = ram_target();
    let n = nexus("a");
    let r = exec_lun(&t, &n, 5, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(r.data_in[0], 0x7f);
    let r = exec_lun(&t, &n, 5, &[0x00, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_sense(&r, 5, 0x25, 0);
    let r = exec_lun(&t, &n, 5, &[0x03, 0, 0, 0, 18, 0], 18, &[]).await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!((r.data_in[2], r.data_in[12]), (5, 0x25));
    let r = exec_lun(
        &t,
        &n,
        5,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        256,
        &[],
    )
    .await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(
        &r.data_in[..],
        &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(r.residual, 256 - 16);
    assert!(!t.lun_reset(5, &n));
    assert_eq!(t.lun_count(), 1);
}

#[tokio::test]
async fn report_luns_errors() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0], 15, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 6, None);
    let r = exec(
        &t,
        &n,
        &[0xa0, 0, 0x05, 0, 0, 0, 0, 0, 0, 16, 0, 0],
        16,
        &[],
    )
    .await;
    assert_field(&r, 2, None);
}

#[tokio::test]
async fn read_capacity() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, &[]).await;
    assert_eq!(&r.data_in[..], &[0, 0, 0x07, 0xff, 0, 0, 2, 0]);
    let r = exec(&t, &n, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], 8, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    let r = exec(
        &t,
        &n,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        32,
        &[],
    )
    .await;
    let mut want = [0u8; 32];
    want[6..8].copy_from_slice(&[0x07, 0xff]);
    want[10] = 2;
    want[14] = 0xc0; // LBPME | LBPRZ
    assert_eq!(&r.data_in[..], &want[..]);
    let ro = ro_target();
    let n = ready(&ro, "a").await;
    let r = exec(
        &ro,
        &n,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        32,
        &[],
    )
    .await;
    assert_eq!(r.data_in[14], 0);
}

#[tokio::test]
async fn write_then_read_all_sizes() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    let r = exec(&t, &n, &write10(10, 2), 1024, &data).await;
    assert_eq!((r.status, r.residual), (status::GOOD, 0));
    let r = exec(&t, &n, &read10(10, 2), 1024, &[]).await;
    assert_eq!(&r.data_in[..], &data[..]);
    // READ(6), READ(12), READ(16) of the same blocks.
    let r6 = exec(&t, &n, &[0x08, 0, 0, 10, 2, 0], 1024, &[]).await;
    assert_eq!(&r6.data_in[..], &data[..]);
    let r12 = exec(&t, &n, &[0xa8, 0, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0], 1024, &[]).await;
    assert_eq!(&r12.data_in[..], &data[..]);
    let r16 = exec(
        &t,
        &n,
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0],
        1024,
        &[],
    )
    .await;
    assert_eq!(&r16.data_in[..], &data[..]);
    // WRITE(16) with FUA, WRITE(6) with length 0 meaning 256 blocks.
    let w16 = [0x8a, 0x08, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0];
    assert_eq!(
        exec(&t, &n, &w16, 512, &[7; 512]).await.status,
        status::GOOD
    );
    let w6 = exec(&t, &n, &[0x0a, 0, 1, 0, 0, 0], 256 * 512, &[9; 256 * 512]).await;
    assert_eq!(w6.status, status::GOOD);
    let r = exec(&t, &n, &read10(256 + 255, 1), 512, &[]).await;
    assert!(r.data_in.iter().all(|&b| b == 9));
    // Zero blocks: nothing moves, GOOD.
    assert_eq!(
        exec(&t, &n, &read10(0, 0), 0, &[]).await.status,
        status::GOOD
    );
}

#[tokio::test]
async fn lba_out_of_range_and_limits() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &read10(BLOCKS as u32 - 1, 2), 1024, &[]).await;
    assert_sense(&r, 5, 0x21, 0);
    let r = exec(&t, &n, &read10(u32::MAX, 1), 512, &[]).await;
    assert_sense(&r, 5, 0x21, 0);
    let r16 = [
        0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0,
    ];
    assert_sense(&exec(&t, &n, &r16, 512, &[]).await, 5, 0x21, 0);
    let r = exec(&t, &n, &write10(BLOCKS as u32, 1), 512, &[0; 512]).await;
    assert_sense(&r, 5, 0x21, 0);
    // Past MAXIMUM TRANSFER LENGTH on a LUN big enough to hold it.
    let big = ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new(64 << 20)))]);
    let n = ready(&big, "a").await;
    let r16 = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x01, 0, 0];
    let r = exec(&big, &n, &r16, 65537 * 512, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 10, None);
}

#[tokio::test]
async fn reserved_bits_and_control_byte() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    // RDPROTECT = 1.
    let r = exec(&t, &n, &[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], 512, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 1, Some(5));
    // NACA in the control byte of TEST UNIT READY.
    let r = exec(&t, &n, &[0x00, 0, 0, 0, 0, 0x04], 0, &[]).await;
    assert_field(&r, 5, Some(2));
    // FUA_NV and DPO are accepted.
    let r = exec(
        &t,
        &n,
        &[0x2a, 0x12, 0, 0, 0, 0, 0, 0, 1, 0],
        512,
        &[1; 512],
    )
    .await;
    assert_eq!(r.status, status::GOOD);
}

#[tokio::test]
async fn unsupported_opcode() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &[0x37, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_sense(&r, 5, 0x20, 0);
    // Unknown service action of a known opcode.
    let r = exec(&t, &n, &[0x9e, 0x1f], 32, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 1, Some(4));
}

#[tokio::test]
async fn read_residuals() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    // EDTL 0 for one block: GOOD, overflow of one block.
    let r = exec(&t, &n, &read10(0, 1), 0, &[]).await;
    assert_eq!(
        (r.status, r.data_in.len(), r.residual),
        (status::GOOD, 0, -512)
    );
    let r = exec(&t, &n, &read10(0, 1), 10000, &[]).await;
    assert_eq!((r.data_in.len(), r.residual), (512, 10000 - 512));
    let r = exec(&t, &n, &read10(0, 2), 512, &[]).await;
    assert_eq!((r.data_in.len(), r.residual), (512, -512));
}

#[tokio::test]
async fn write_residuals_move_only_whole_blocks_both_sides_allow() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    for (blocks, edtl, residual, written) in [
        (1u16, 0u32, -512i64, 0usize),
        (1, 1024, 512, 512),
        (2, 512, -512, 512),
        (1, 10000, 10000 - 512, 512),
    ] {
        exec(&t, &n, &write10(0, 2), 1024, &[b'a'; 1024]).await;
        let out = vec![b'b'; edtl as usize];
        let r = exec(&t, &n, &write10(0, blocks), edtl, &out).await;
        assert_eq!(
            (r.status, r.residual),
            (status::GOOD, residual),
            "{blocks} {edtl}"
        );
        let back = exec(&t, &n, &read10(0, 2), 1024, &[]).await;
        assert!(back.data_in[..written].iter().all(|&b| b == b'b'));
        assert!(back.data_in[written..].iter().all(|&b| b == b'a'));
    }
    // EDTL of 200 bytes cannot be a whole block: refused, nothing written.
    exec(&t, &n, &write10(0, 1), 512, &[b'a'; 512]).await;
    let r = exec(&t, &n, &write10(0, 1), 200, &[b'b'; 200]).await;
    assert_sense(&r, 5, 0x0e, 0x03);
    assert_eq!(r.residual, -312);
    let back = exec(&t, &n, &read10(0, 1), 512, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == b'a'));
}

#[tokio::test]
async fn read_only_lun_is_write_protected() {
    let t = ro_target();
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &write10(0, 1), 512, &[1; 512]).await;
    assert_sense(&r, 7, 0x27, 0);
    let ws = [0x93, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    assert_sense(&exec(&t, &n, &ws, 512, &[0; 512]).await, 7, 0x27, 0);
    let caw = [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    assert_sense(&exec(&t, &n, &caw, 1024, &[0; 1024]).await, 7, 0x27, 0);
    let ms = exec(&t, &n, &[0x1a, 0x08, 0x3f, 0, 255, 0], 255, &[]).await;
    assert_eq!(ms.data_in[2], 0x90, "WP and DPOFUA");
    let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    assert_sense(&exec(&t, &n, &unmap, 24, &[0; 24]).await, 7, 0x27, 0);
    // Write protection is reported even when the Data-Out length is wrong.
    assert_sense(&exec(&t, &n, &write10(0, 1), 0, &[]).await, 7, 0x27, 0);
    assert_eq!(
        exec(&t, &n, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
}

/// A device whose every operation fails with an I/O error.
struct BrokenDevice;

#[async_trait]
impl BlockDevice for BrokenDevice {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_unmap(&self) -> bool {
        false
    }
    async fn read(&self, _: u64, _: usize) -> BlockResult<Bytes> {
        Err(BlockError::Io(std::io::Error::other("disk on fire")))
    }
    async fn write(&self, _: u64, _: Bytes, _: bool) -> BlockResult<()> {
        Err(BlockError::Io(std::io::Error::other("disk on fire")))
    }
    async fn flush(&self) -> BlockResult<()> {
        Err(BlockError::Corrupt("flush".into()))
    }
    async fn unmap(&self, _: u64, _: u64) -> BlockResult<()> {
        Err(BlockError::Unsupported("unmap"))
    }
    async fn block_status(&self, _: u64) -> BlockResult<BlockStatus> {
        Err(BlockError::Io(std::io::Error::other("disk on fire")))
    }
}

#[tokio::test]
async fn backend_errors_become_medium_errors() {
    let t = ScsiTarget::new(vec![lun_config(Arc::new(BrokenDevice))]);
    let n = ready(&t, "a").await;
    assert_sense(&exec(&t, &n, &read10(0, 1), 512, &[]).await, 3, 0x11, 0);
    assert_sense(
        &exec(&t, &n, &write10(0, 1), 512, &[0; 512]).await,
        3,
        0x0c,
        0,
    );
    let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_sense(&exec(&t, &n, &sync, 0, &[]).await, 3, 0x0c, 0);
}

#[tokio::test]
async fn mode_sense_pages() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &[0x1a, 0, 0x3f, 0, 255, 0], 255, &[]).await;
    let d = &r.data_in;
    // Header: length, medium type, DPOFUA, one 8-byte block descriptor.
    assert_eq!(&d[..4], &[(d.len() - 1) as u8, 0, 0x10, 8]);
    assert_eq!(&d[4..12], &[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
    assert_eq!(&d[12..16], &[0x08, 18, 0x04, 0]);
    assert_eq!(&d[32..34], &[0x0a, 10]);
    assert_eq!(&d[44..47], &[0x1c, 10, 0x08]);
    assert_eq!(d.len(), 56);
    assert_eq!(r.residual, 255 - 56);
    // Allocation length 4: no residual.
    let r = exec(&t, &n, &[0x1a, 0, 0x3f, 0, 4, 0], 4, &[]).await;
    assert_eq!((r.data_in.len(), r.residual), (4, 0));
    // MODE SENSE(10) with DBD, caching page only, changeable values.
    let r = exec(&t, &n, &[0x5a, 0x08, 0x48, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(
        &r.data_in[..],
        &[
            0, 26, 0, 0x10, 0, 0, 0, 0, 0x08, 18, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0
        ]
    );
    // MODE SENSE(10) with LLBAA: a 16-byte descriptor.
    let r = exec(&t, &n, &[0x5a, 0x10, 0x0a, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[4..8], &[1, 0, 0, 16]);
    assert_eq!(&r.data_in[8..16], &BLOCKS.to_be_bytes());
    // Saved values, unknown page, unknown subpage.
    assert_sense(
        &exec(&t, &n, &[0x1a, 0, 0xc8, 0, 255, 0], 255, &[]).await,
        5,
        0x39,
        0,
    );
    let r = exec(&t, &n, &[0x1a, 0, 0x19, 0, 255, 0], 255, &[]).await;
    assert_field(&r, 2, Some(5));
    let r = exec(&t, &n, &[0x1a, 0, 0x08, 1, 255, 0], 255, &[]).await;
    assert_field(&r, 3, None);
    assert_eq!(
        exec(&t, &n, &[0x1a, 0, 0x3f, 0xff, 255, 0], 255, &[])
            .await
            .status,
        status::GOOD
    );
}

#[tokio::test]
async fn mode_select_changes_wce_only() {
    let t = ram_target();
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    let mut params = vec![0u8, 0, 0, 0];
    params.extend_from_slice(&[0x08, 18]);
    params.extend_from_slice(&[0; 18]);
    let len = params.len() as u8;
    let r = exec(&t, &a, &[0x15, 0x10, 0, 0, len, 0], u32::from(len), &params).await;
    assert_eq!(r.status, status::GOOD);
    let ms = exec(&t, &a, &[0x1a, 0x08, 0x08, 0, 255, 0], 255, &[]).await;
    assert_eq!(ms.data_in[6], 0, "WCE cleared");
    let tur = exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_sense(&tur, 6, 0x2a, 0x01);
    // Changing RCD (not changeable) is refused with a pointer into the parameter list.
    params[6] = 0x01;
    let r = exec(&t, &a, &[0x15, 0x10, 0, 0, len, 0], u32::from(len), &params).await;
    assert_sense(&r, 5, 0x26, 0);
    assert_eq!(&r.sense.as_ref().unwrap()[15..18], &[0x88, 0, 6]);
    // SP (save pages) is not supported.
    let r = exec(&t, &a, &[0x15, 0x11, 0, 0, len, 0], u32::from(len), &params).await;
    assert_field(&r, 1, Some(0));
    // A truncated page.
    let r = exec(&t, &a, &[0x15, 0x10, 0, 0, 8, 0], 8, &params[..8]).await;
    assert_sense(&r, 5, 0x1a, 0);
}

#[tokio::test]
async fn verify_and_miscompare() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let mut data = vec![5u8; 1024];
    exec(&t, &n, &write10(4, 2), 1024, &data).await;
    let v10 = [0x2f, 0x02, 0, 0, 0, 4, 0, 0, 2, 0];
    assert_eq!(exec(&t, &n, &v10, 1024, &data).await.status, status::GOOD);
    data[700] = 6;
    let r = exec(&t, &n, &v10, 1024, &data).await;
    assert_sense(&r, 0x0e, 0x1d, 0);
    let s = r.sense.unwrap();
    assert_eq!(s[0], 0xf0, "VALID");
    assert_eq!(&s[3..7], &700u32.to_be_bytes());
    // BYTCHK = 0: no data, medium check only.
    let v = [0x2f, 0, 0, 0, 0, 4, 0, 0, 2, 0];
    assert_eq!(exec(&t, &n, &v, 0, &[]).await.status, status::GOOD);
    // BYTCHK = 3: one block compared against each.
    let v = [0x2f, 0x06, 0, 0, 0, 4, 0, 0, 2, 0];
    assert_eq!(exec(&t, &n, &v, 512, &[5; 512]).await.status, status::GOOD);
    let v16 = [0x8f, 0x02, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0x08, 0, 0, 0];
    assert_sense(
        &exec(&t, &n, &v16, 1 << 20, &vec![0; 1 << 20]).await,
        5,
        0x21,
        0,
    );
}

#[tokio::test]
async fn compare_and_write() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    exec(&t, &n, &write10(7, 1), 512, &[1; 512]).await;
    let caw = [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0];
    let mut buf = vec![1u8; 512];
    buf.extend_from_slice(&[2u8; 512]);
    assert_eq!(exec(&t, &n, &caw, 1024, &buf).await.status, status::GOOD);
    let r = exec(&t, &n, &caw, 1024, &buf).await;
    assert_sense(&r, 0x0e, 0x1d, 0);
    assert_eq!(&r.sense.unwrap()[3..7], &[0, 0, 0, 0]);
    let back = exec(&t, &n, &read10(7, 1), 512, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == 2));
    // Data-Out of four blocks for one block of CAW: the NUMBER OF LOGICAL BLOCKS is wrong.
    let r = exec(&t, &n, &caw, 2048, &[2; 2048]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 13, None);
}

#[tokio::test]
async fn orwrite_merges() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    exec(&t, &n, &write10(3, 1), 512, &[0x0f; 512]).await;
    let orw = [0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0];
    assert_eq!(
        exec(&t, &n, &orw, 512, &[0xf0; 512]).await.status,
        status::GOOD
    );
    let back = exec(&t, &n, &read10(3, 1), 512, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == 0xff));
}

fn unmap_params(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
    p.extend_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    for (lba, n) in ranges {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

fn unmap_cdb(len: u16) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

fn get_lba_status_cdb(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0x9e, 0x12];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[tokio::test]
async fn unmap_and_get_lba_status() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    // Write 256 blocks (two 64 KiB chunks) then unmap the second chunk.
    exec(&t, &n, &write10(0, 256), 256 * 512, &vec![3; 256 * 512]).await;
    let p = unmap_params(&[(128, 128)]);
    let r = exec(&t, &n, &unmap_cdb(p.len() as u16), p.len() as u32, &p).await;
    assert_eq!(r.status, status::GOOD);
    let back = exec(&t, &n, &read10(127, 2), 1024, &[]).await;
    assert!(back.data_in[..512].iter().all(|&b| b == 3));
    assert!(back.data_in[512..].iter().all(|&b| b == 0));
    let r = exec(&t, &n, &get_lba_status_cdb(0, 40), 40, &[]).await;
    assert_eq!(
        &r.data_in[..],
        &[
            0, 0, 0, 36, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0x07, 0x80, 1, 0, 0, 0
        ][..]
    );
    let r = exec(&t, &n, &get_lba_status_cdb(BLOCKS, 24), 24, &[]).await;
    assert_sense(&r, 5, 0x21, 0);
    // Parameter list errors: too short, descriptor beyond the end, too many descriptors.
    let r = exec(&t, &n, &unmap_cdb(4), 4, &p[..4]).await;
    assert_sense(&r, 5, 0x1a, 0);
    let bad = unmap_params(&[(0, 1), (BLOCKS, 1)]);
    let r = exec(&t, &n, &unmap_cdb(bad.len() as u16), bad.len() as u32, &bad).await;
    assert_sense(&r, 5, 0x21, 0);
    let back = exec(&t, &n, &read10(0, 1), 512, &[]).await;
    assert!(
        back.data_in.iter().all(|&b| b == 3),
        "nothing unmapped on error"
    );
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
    let bad = unmap_params(&many);
    let r = exec(&t, &n, &unmap_cdb(bad.len() as u16), bad.len() as u32, &bad).await;
    assert_sense(&r, 5, 0x26, 0);
    // Zero-length parameter list is a no-op; ANCHOR is refused.
    assert_eq!(
        exec(&t, &n, &unmap_cdb(0), 0, &[]).await.status,
        status::GOOD
    );
    let r = exec(&t, &n, &[0x42, 1, 0, 0, 0, 0, 0, 0, 24, 0], 24, &p).await;
    assert_field(&r, 1, Some(0));
}

fn write_same16(lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
    let mut c = vec![0x93, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[tokio::test]
async fn write_same_variants() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &write_same16(10, 300, 0), 512, &[0xaa; 512]).await;
    assert_eq!(r.status, status::GOOD);
    let back = exec(&t, &n, &read10(10, 300), 300 * 512, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == 0xaa));
    // UNMAP with zeros deallocates; NDOB writes zeros without a buffer.
    let r = exec(&t, &n, &write_same16(0, 512, 0x08), 512, &[0; 512]).await;
    assert_eq!(r.status, status::GOOD);
    let back = exec(&t, &n, &read10(10, 300), 300 * 512, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == 0));
    let r = exec(&t, &n, &get_lba_status_cdb(0, 24), 24, &[]).await;
    assert_eq!(r.data_in[20], 1, "deallocated");
    exec(&t, &n, &write_same16(600, 4, 0), 512, &[1; 512]).await;
    let r = exec(&t, &n, &write_same16(600, 4, 0x09), 0, &[]).await;
    assert_eq!(r.status, status::GOOD);
    let back = exec(&t, &n, &read10(600, 4), 2048, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == 0));
    // UNMAP = 1 is an unmap operation whatever the block holds (reads then give zeros).
    exec(&t, &n, &write_same16(700, 4, 0), 512, &[1; 512]).await;
    let r = exec(&t, &n, &write_same16(700, 4, 0x08), 512, &[0xee; 512]).await;
    assert_eq!(r.status, status::GOOD);
    let back = exec(&t, &n, &read10(700, 4), 2048, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == 0));
    // WRITE SAME(10) to the end of the medium with 0 blocks.
    let ws10 = [0x41, 0, 0, 0, 0x07, 0xf0, 0, 0, 0, 0];
    assert_eq!(
        exec(&t, &n, &ws10, 512, &[4; 512]).await.status,
        status::GOOD
    );
    let back = exec(&t, &n, &read10(BLOCKS as u32 - 16, 16), 16 * 512, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == 4));
    // Errors: ANCHOR, wrong Data-Out size, beyond the end, over the maximum length.
    let r = exec(&t, &n, &write_same16(0, 1, 0x18), 512, &[0; 512]).await;
    assert_field(&r, 1, Some(4));
    assert_sense(
        &exec(&t, &n, &write_same16(0, 1, 0), 256, &[0; 256]).await,
        5,
        0x0e,
        0x03,
    );
    assert_sense(
        &exec(&t, &n, &write_same16(0, 1, 0), 1024, &[0; 1024]).await,
        5,
        0x0e,
        0x03,
    );
    assert_sense(
        &exec(&t, &n, &write_same16(BLOCKS, 1, 0), 512, &[0; 512]).await,
        5,
        0x21,
        0,
    );
    let big = ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new(64 << 20)))]);
    let n = ready(&big, "a").await;
    let r = exec(&big, &n, &write_same16(0, 65537, 0), 512, &[0; 512]).await;
    assert_field(&r, 10, None);
}

#[tokio::test]
async fn sync_cache_prefetch_start_stop() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    for cdb in [
        vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x91, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        vec![0x34, 0, 0, 0, 0, 0, 0, 0, 8, 0],
        vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        vec![0x1b, 0, 0, 0, 1, 0],
        vec![0x1e, 0, 0, 0, 1, 0],
    ] {
        assert_eq!(
            exec(&t, &n, &cdb, 0, &[]).await.status,
            status::GOOD,
            "{cdb:02x?}"
        );
    }
    let r = exec(&t, &n, &[0x35, 0, 0, 0, 0x08, 0, 0, 0, 1, 0], 0, &[]).await;
    assert_sense(&r, 5, 0x21, 0);
    let r = exec(
        &t,
        &n,
        &[0x34, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0],
        0,
        &[],
    )
    .await;
    assert_sense(&r, 5, 0x21, 0);
}

#[tokio::test]
async fn reserve6_conflicts_and_lun_reset() {
    let t = ram_target();
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    assert_eq!(
        exec(&t, &a, &[0x16, 0, 0, 0, 0, 0], 0, &[]).await.status,
        status::GOOD
    );
    let r = exec(&t, &b, &read10(0, 1), 512, &[]).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    assert_eq!(
        exec(&t, &b, &[0x16, 0, 0, 0, 0, 0], 0, &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        exec(&t, &b, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await.status,
        status::GOOD
    );
    // A non-holder's RELEASE is GOOD and changes nothing.
    assert_eq!(
        exec(&t, &b, &[0x17, 0, 0, 0, 0, 0], 0, &[]).await.status,
        status::GOOD
    );
    assert_eq!(
        exec(&t, &b, &read10(0, 1), 512, &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    assert!(t.lun_reset(0, &a));
    let r = exec(&t, &b, &read10(0, 1), 512, &[]).await;
    assert_sense(&r, 6, 0x29, 0x03);
    assert_eq!(
        exec(&t, &b, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
    // The nexus that asked for the reset is told too.
    assert_sense(&exec(&t, &a, &read10(0, 1), 512, &[]).await, 6, 0x29, 0x03);
    assert_eq!(
        exec(&t, &a, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
    // Reservation released when the holder's nexus goes away.
    assert_eq!(
        exec(&t, &b, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[])
            .await
            .status,
        status::GOOD
    );
    t.nexus_gone(&b);
    assert_eq!(
        exec(&t, &a, &write10(0, 1), 512, &[0; 512]).await.status,
        status::GOOD
    );
    // After a cold target reset everyone sees a power-on.
    t.target_reset(true, &a);
    assert_sense(&exec(&t, &a, &read10(0, 1), 512, &[]).await, 6, 0x29, 0x00);
}

fn prout(action: u8, pr_type: u8) -> Vec<u8> {
    vec![0x5f, action, pr_type, 0, 0, 0, 0, 0, 24, 0]
}

fn pr_params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p
}

#[tokio::test]
async fn persistent_reservations_through_execute() {
    let t = ram_target();
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    assert_eq!(
        exec(&t, &a, &prout(0, 0), 24, &pr_params(0, 0x1111))
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        exec(&t, &b, &prout(0, 0), 24, &pr_params(0, 0x2222))
            .await
            .status,
        status::GOOD
    );
    // Exclusive access by A.
    assert_eq!(
        exec(&t, &a, &prout(1, 3), 24, &pr_params(0x1111, 0))
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        exec(&t, &b, &read10(0, 1), 512, &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await.status,
        status::GOOD
    );
    let keys = exec(&t, &b, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(
        &keys.data_in[4..24],
        &[0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
    );
    // Truncated READ KEYS: the header still tells the full length.
    let keys = exec(&t, &b, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8, &[]).await;
    assert_eq!(&keys.data_in[4..8], &[0, 0, 0, 16]);
    let caps = exec(&t, &b, &[0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0], 8, &[]).await;
    assert_eq!(&caps.data_in[..], &[0, 8, 0x10, 0x80, 0xea, 0x01, 0, 0]);
    // B preempts A's reservation; A gets REGISTRATIONS PREEMPTED.
    let r = exec(&t, &b, &prout(4, 1), 24, &pr_params(0x2222, 0x1111)).await;
    assert_eq!(r.status, status::GOOD);
    assert_sense(&exec(&t, &a, &read10(0, 1), 512, &[]).await, 6, 0x2a, 0x05);
    assert_eq!(
        exec(&t, &a, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
    assert_eq!(
        exec(&t, &a, &write10(0, 1), 512, &[0; 512]).await.status,
        status::RESERVATION_CONFLICT
    );
    // Bad type and bad parameter list length.
    assert_field(
        &exec(&t, &b, &prout(1, 2), 24, &pr_params(0x2222, 0)).await,
        2,
        Some(3),
    );
    let r = exec(&t, &b, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 20, 0], 20, &[0; 20]).await;
    assert_sense(&r, 5, 0x1a, 0);
    // RESERVE(6) conflicts with persistent reservations.
    assert_eq!(
        exec(&t, &b, &[0x16, 0, 0, 0, 0, 0], 0, &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        exec(&t, &b, &prout(3, 0), 24, &pr_params(0x2222, 0))
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        exec(&t, &a, &write10(0, 1), 512, &[0; 512]).await.status,
        status::GOOD
    );
}

#[tokio::test]
async fn report_supported_opcodes_through_execute() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let cdb = [0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0, 255, 0, 0];
    let r = exec(&t, &n, &cdb, 255, &[]).await;
    assert_eq!(
        &r.data_in[..],
        &[0, 3, 0, 10, 0x28, 0x1e, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]
    );
    let all = [0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    let r = exec(&t, &n, &all, 4096, &[]).await;
    assert_eq!(r.status, status::GOOD);
    // Every listed command parses with its own usage bitmap as the CDB (all bits set that
    // may be set) except for the opcode-dependent fields we validate semantically.
    for d in r.data_in[4..].chunks(8) {
        let len = usize::from(u16::from_be_bytes([d[6], d[7]]));
        let sa = u16::from_be_bytes([d[2], d[3]]);
        let info = cdb::lookup(d[0], sa).expect("listed command exists");
        assert_eq!(info.usage.len(), len);
    }
}

/// The plain model a LUN must match.
#[derive(Debug, Clone)]
enum Op {
    Write {
        lba: u16,
        blocks: u8,
        fill: u8,
    },
    Unmap {
        lba: u16,
        blocks: u16,
    },
    WriteSame {
        lba: u16,
        blocks: u16,
        fill: u8,
        unmap: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let max = BLOCKS as u16;
    prop_oneof![
        (0..max, 1u8..=32, any::<u8>()).prop_map(|(lba, blocks, fill)| Op::Write {
            lba,
            blocks,
            fill
        }),
        (0..max, 0u16..400).prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
        (
            0..max,
            1u16..400,
            prop_oneof![Just(0u8), any::<u8>()],
            any::<bool>()
        )
            .prop_map(|(lba, blocks, fill, unmap)| Op::WriteSame {
                lba,
                blocks,
                fill,
                unmap
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_writes_unmaps_and_write_same_match_a_vec(ops in proptest::collection::vec(op_strategy(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let t = ram_target();
            let n = ready(&t, "model").await;
            let mut model = vec![0u8; (BLOCKS * 512) as usize];
            for op in ops {
                let (lba, blocks, r) = match op {
                    Op::Write { lba, blocks, fill } => {
                        let data = vec![fill; usize::from(blocks) * 512];
                        let r = exec(&t, &n, &write10(u32::from(lba), u16::from(blocks)), data.len() as u32, &data).await;
                        (lba, u16::from(blocks), (r, Some(fill)))
                    }
                    Op::Unmap { lba, blocks } => {
                        let p = unmap_params(&[(u64::from(lba), u32::from(blocks))]);
                        let r = exec(&t, &n, &unmap_cdb(p.len() as u16), p.len() as u32, &p).await;
                        (lba, blocks, (r, Some(0)))
                    }
                    Op::WriteSame { lba, blocks, fill, unmap } => {
                        let flags = if unmap { 0x08 } else { 0 };
                        let r = exec(&t, &n, &write_same16(u64::from(lba), u32::from(blocks), flags), 512, &[fill; 512]).await;
                        // UNMAP deallocates whatever the block holds; reads then give zeros.
                        (lba, blocks, (r, Some(if unmap { 0 } else { fill })))
                    }
                };
                let (resp, fill) = r;
                let end = u64::from(lba) + u64::from(blocks);
                if end > BLOCKS {
                    assert_sense(&resp, 5, 0x21, 0);
                    continue;
                }
                assert_eq!(resp.status, status::GOOD);
                if let Some(fill) = fill {
                    model[usize::from(lba) * 512..end as usize * 512].fill(fill);
                }
            }
            for start in (0..BLOCKS as u32).step_by(512) {
                let r = exec(&t, &n, &read10(start, 512), 512 * 512, &[]).await;
                let at = start as usize * 512;
                assert!(r.data_in[..] == model[at..at + 512 * 512], "mismatch in blocks {start}..");
            }
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Arbitrary CDBs (mostly with a known opcode) and Data-Out never panic, never return more
    /// Data-In than expected, and always carry sense data with CHECK CONDITION.
    #[test]
    fn arbitrary_commands_never_panic(
        opcode_index in 0..cdb::SUPPORTED.len() + 1,
        mut bytes in proptest::collection::vec(any::<u8>(), 0..20),
        expected_len in prop_oneof![0u32..2048, any::<u32>().prop_map(|v| v % (4 << 20))],
        out_len in 0usize..2048,
    ) {
        if let (Some(info), Some(first)) = (cdb::SUPPORTED.get(opcode_index), bytes.first_mut()) {
            *first = info.opcode;
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let t = ram_target();
        let n = rt.block_on(ready(&t, "fuzz"));
        let r = rt.block_on(t.execute(&n, ScsiRequest {
            lun: 0,
            cdb: Bytes::from(bytes),
            direction: DataDirection::Bidirectional,
            expected_len,
            data_out: Bytes::from(vec![0x5a; out_len.min(expected_len as usize)]),
        }));
        prop_assert!(r.data_in.len() <= expected_len as usize);
        prop_assert_eq!(r.status == status::CHECK_CONDITION, r.sense.is_some());
    }
}

/// A RAM disk whose reported size can change under the target.
struct Resizable {
    inner: RamDevice,
    size: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl BlockDevice for Resizable {
    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_unmap(&self) -> bool {
        false
    }
    async fn read(&self, offset: u64, len: usize) -> BlockResult<Bytes> {
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> BlockResult<()> {
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    async fn unmap(&self, _: u64, _: u64) -> BlockResult<()> {
        Err(BlockError::Unsupported("unmap"))
    }
    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus> {
        self.inner.block_status(offset).await
    }
}

#[tokio::test]
async fn capacity_change_raises_unit_attention() {
    let dev = Arc::new(Resizable {
        inner: RamDevice::new(1 << 20),
        size: std::sync::atomic::AtomicU64::new(1 << 19),
    });
    let t = ScsiTarget::new(vec![lun_config(dev.clone())]);
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    dev.size
        .store(1 << 20, std::sync::atomic::Ordering::Relaxed);
    assert_sense(
        &exec(&t, &a, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x2a,
        0x09,
    );
    assert_sense(
        &exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x2a,
        0x09,
    );
    let r = exec(&t, &a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, &[]).await;
    assert_eq!(&r.data_in[..4], &[0, 0, 0x07, 0xff]);
}

#[tokio::test]
async fn cold_reset_clears_persistent_reservations() {
    let t = ram_target();
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    exec(&t, &a, &prout(0, 0), 24, &pr_params(0, 0xa)).await;
    exec(&t, &a, &prout(1, 3), 24, &pr_params(0xa, 0)).await;
    assert_eq!(
        exec(&t, &b, &read10(0, 1), 512, &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    t.target_reset(false, &a);
    assert_sense(&exec(&t, &b, &read10(0, 1), 512, &[]).await, 6, 0x29, 0x03);
    assert_eq!(
        exec(&t, &b, &read10(0, 1), 512, &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    t.target_reset(true, &a);
    assert_sense(&exec(&t, &b, &read10(0, 1), 512, &[]).await, 6, 0x29, 0x00);
    assert_eq!(
        exec(&t, &b, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
    let keys = exec(&t, &b, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(&keys.data_in[4..8], &[0, 0, 0, 0]);
}

#[tokio::test]
async fn file_backed_lun_punches_holes() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.as_file().set_len(4 << 20).unwrap();
    let dev = crate::block::FileDevice::open(tmp.path(), false).unwrap();
    assert!(
        dev.can_unmap(),
        "temp dir file system must support hole punching"
    );
    let t = ScsiTarget::new(vec![lun_config(Arc::new(dev))]);
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &write_same16(0, 4096, 0), 512, &[0x77; 512]).await;
    assert_eq!(r.status, status::GOOD);
    let r = exec(&t, &n, &get_lba_status_cdb(0, 24), 24, &[]).await;
    assert_eq!(
        (&r.data_in[16..20], r.data_in[20]),
        (&4096u32.to_be_bytes()[..], 0)
    );
    let r = exec(&t, &n, &write_same16(2048, 2048, 0x08), 512, &[0; 512]).await;
    assert_eq!(r.status, status::GOOD);
    let r = exec(&t, &n, &get_lba_status_cdb(2048, 24), 24, &[]).await;
    assert_eq!(&r.data_in[8..16], &2048u64.to_be_bytes());
    assert_eq!(r.data_in[20], 1, "deallocated after WRITE SAME with UNMAP");
    let back = exec(&t, &n, &read10(2047, 2), 1024, &[]).await;
    assert!(back.data_in[..512].iter().all(|&b| b == 0x77));
    assert!(back.data_in[512..].iter().all(|&b| b == 0));
}

#[test]
fn execute_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let t = ram_target();
    let n = nexus("a");
    let req = ScsiRequest {
        lun: 0,
        cdb: Bytes::from_static(&[0; 16]),
        direction: DataDirection::None,
        expected_len: 0,
        data_out: Bytes::new(),
    };
    let fut = t.execute(&n, req);
    assert_send(&fut);
}
