//! EXTENDED COPY and RECEIVE COPY RESULTS: the claims of the `xcopy` module doc, with literal
//! parameter lists built as SPC-4 lays them out.

use proptest::prelude::*;

use super::*;
use crate::scsi::identity::naa_from_serial;
use crate::scsi::xcopy;

/// A target of RAM LUNs of `sizes` bytes, serials `XC0`, `XC1`, ...
fn copy_target(sizes: &[u64]) -> ScsiTarget {
    ScsiTarget::new(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| LunConfig {
                serial: format!("XC{i}"),
                ..lun_config(Arc::new(RamDevice::new(size)))
            })
            .collect(),
    )
}

/// An identification target descriptor naming the LUN with `serial` by its NAA.
fn naa_target(serial: &str) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xe4;
    d[4] = 0x01; // binary
    d[5] = 0x03; // NAA, associated with the logical unit
    d[7] = 8;
    d[8..16].copy_from_slice(&naa_from_serial(serial));
    d[29..32].copy_from_slice(&[0, 2, 0]); // 512-byte blocks
    d
}

/// The same LUN named by its T10 vendor ID designator instead.
fn t10_target(serial: &str) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xe4;
    d[4] = 0x02; // ASCII
    d[5] = 0x01; // T10 vendor ID
    let id = [&crate::scsi::identity::VENDOR[..], serial.as_bytes()].concat();
    d[7] = id.len() as u8;
    d[8..8 + id.len()].copy_from_slice(&id);
    d[29..32].copy_from_slice(&[0, 2, 0]);
    d
}

/// A block to block segment descriptor (02h).
fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[2..4].copy_from_slice(&0x18u16.to_be_bytes());
    d[4..6].copy_from_slice(&src.to_be_bytes());
    d[6..8].copy_from_slice(&dst.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    d
}

/// A block to block segment with byte offsets (0Ah).
fn b2b_bytes(bytes: u32, src_lba: u64, src_off: u16, dst_lba: u64, dst_off: u16) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0x0a;
    d[2..4].copy_from_slice(&0x1cu16.to_be_bytes());
    d[6..8].copy_from_slice(&0u16.to_be_bytes());
    d[8..12].copy_from_slice(&bytes.to_be_bytes());
    d[12..20].copy_from_slice(&src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    d[28..30].copy_from_slice(&src_off.to_be_bytes());
    d[30..32].copy_from_slice(&dst_off.to_be_bytes());
    d
}

/// A parameter list: header with `list_id` and LIST ID USAGE `usage`, then the descriptors.
fn list(list_id: u8, usage: u8, targets: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
    let t: Vec<u8> = targets.concat();
    let s: Vec<u8> = segments.concat();
    let mut p = vec![0u8; 16];
    p[0] = list_id;
    p[1] = usage << 3;
    p[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
    p[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    p.extend_from_slice(&t);
    p.extend_from_slice(&s);
    p
}

/// EXTENDED COPY(LID1) with a parameter list of `len` bytes.
fn xcopy_cdb(len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

/// RECEIVE COPY RESULTS with service action `sa` for list `id`.
fn rcr_cdb(sa: u8, id: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x84;
    c[1] = sa;
    c[2] = id;
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    c
}

async fn xcopy(t: &ScsiTarget, n: &Nexus, params: &[u8]) -> CommandOutcome {
    exec(
        t,
        n,
        &xcopy_cdb(params.len() as u32),
        params.len() as u32,
        params,
    )
    .await
}

/// Writes `data` (whole blocks) at `lba` of `lun`.
async fn put(t: &ScsiTarget, n: &Nexus, lun: u64, lba: u32, data: &[u8]) {
    let blocks = (data.len() / 512) as u16;
    let r = exec_lun(t, n, lun, &write10(lba, blocks), data.len() as u32, data).await;
    assert_eq!(r.status, status::GOOD);
}

/// Reads `blocks` blocks at `lba` of `lun`.
async fn get(t: &ScsiTarget, n: &Nexus, lun: u64, lba: u32, blocks: u16) -> Bytes {
    let r = exec_lun(
        t,
        n,
        lun,
        &read10(lba, blocks),
        u32::from(blocks) * 512,
        &[],
    )
    .await;
    assert_eq!(r.status, status::GOOD);
    r.data_in
}

/// Bytes that differ at every offset, so a misplaced copy cannot match.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_be_bytes())
        .take(len)
        .collect()
}

#[tokio::test]
async fn blocks_are_copied_within_one_lun_named_by_its_naa() {
    let t = copy_target(&[BLOCKS * 512]);
    let n = ready(&t, "xc").await;
    let data = pattern(16 * 512, 1);
    put(&t, &n, 0, 0, &data).await;
    let p = list(1, 0b10, &[naa_target("XC0")], &[b2b(0, 0, 16, 0, 1000)]);
    let r = xcopy(&t, &n, &p).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    assert_eq!(&get(&t, &n, 0, 1000, 16).await[..], &data[..]);
    assert_eq!(&get(&t, &n, 0, 0, 16).await[..], &data[..], "source kept");
    assert_eq!(get(&t, &n, 0, 1016, 1).await, vec![0; 512], "nothing past");
}

#[tokio::test]
async fn blocks_are_copied_between_luns_named_by_t10_vendor_ids() {
    let t = copy_target(&[BLOCKS * 512, BLOCKS * 512]);
    let n = ready(&t, "xc").await;
    let r = exec_lun(&t, &n, 1, &TUR, 0, &[]).await;
    assert_sense(&r, sense::key::UNIT_ATTENTION, 0x29, 0x00);
    let data = pattern(8 * 512, 2);
    put(&t, &n, 0, 10, &data).await;
    // Sent to LUN 0, copying from LUN 0 (descriptor 0) to LUN 1 (descriptor 1).
    let p = list(
        0,
        0b11,
        &[t10_target("XC0"), t10_target("XC1")],
        &[b2b(0, 1, 8, 10, 20)],
    );
    let r = xcopy(&t, &n, &p).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    assert_eq!(&get(&t, &n, 1, 20, 8).await[..], &data[..]);
    assert_eq!(
        get(&t, &n, 0, 20, 8).await,
        vec![0; 8 * 512],
        "LUN 0 untouched"
    );
}

#[tokio::test]
async fn byte_offset_segments_patch_partial_blocks_and_nothing_else() {
    let t = copy_target(&[BLOCKS * 512]);
    let n = ready(&t, "xc").await;
    let data = pattern(4 * 512, 3);
    put(&t, &n, 0, 0, &data).await;
    let background = pattern(4 * 512, 4);
    put(&t, &n, 0, 100, &background).await;
    // 1000 bytes from byte 100 of block 0 to byte 300 of block 100.
    let p = list(
        2,
        0b10,
        &[naa_target("XC0")],
        &[b2b_bytes(1000, 0, 100, 100, 300)],
    );
    let r = xcopy(&t, &n, &p).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    let mut want = background.clone();
    want[300..1300].copy_from_slice(&data[100..1100]);
    assert_eq!(&get(&t, &n, 0, 100, 4).await[..], &want[..]);
}

#[tokio::test]
async fn an_overlapping_copy_reads_every_byte_before_overwriting_it() {
    // 8 MiB, so a 3 MiB segment spans several chunks.
    let blocks_3m = 3 * 2048 + 17;
    let t = copy_target(&[8 << 20]);
    let n = ready(&t, "xc").await;
    let data = pattern(blocks_3m * 512, 5);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        put(&t, &n, 0, (i * 2048) as u32, chunk).await;
    }
    // Destination after the source, overlapping it: a forward chunked copy would smear.
    let shift = 2048 + 5;
    let p = list(
        3,
        0b10,
        &[naa_target("XC0")],
        &[b2b(0, 0, blocks_3m as u16, 0, shift as u64)],
    );
    let r = xcopy(&t, &n, &p).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    let mut got = Vec::new();
    for i in 0..blocks_3m.div_ceil(2048) {
        let lba = (shift + i * 2048) as u32;
        let blocks = (blocks_3m - i * 2048).min(2048) as u16;
        got.extend_from_slice(&get(&t, &n, 0, lba, blocks).await);
    }
    assert!(got == data, "the copy differs from the original source");
}

#[tokio::test]
async fn an_empty_list_copies_nothing_and_is_no_error() {
    let t = copy_target(&[BLOCKS * 512]);
    let n = ready(&t, "xc").await;
    let r = exec(&t, &n, &xcopy_cdb(0), 0, &[]).await;
    assert_eq!(r.status, status::GOOD);
}

#[tokio::test]
async fn malformed_lists_get_the_sense_spc_gives_them() {
    let t = copy_target(&[BLOCKS * 512]);
    let n = ready(&t, "xc").await;
    let good = list(1, 0b10, &[naa_target("XC0")], &[b2b(0, 0, 1, 0, 1)]);
    // Cut inside the segment descriptor: the header promises more than was sent.
    let r = xcopy(&t, &n, &good[..good.len() - 1]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x1a, 0x00);
    // Shorter than a header.
    let r = xcopy(&t, &n, &good[..10]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x1a, 0x00);
    // One target descriptor too many, then one segment descriptor too many.
    let targets = vec![naa_target("XC0"); usize::from(xcopy::MAX_TARGET_DESCRIPTORS) + 1];
    let r = xcopy(&t, &n, &list(1, 0b10, &targets, &[b2b(0, 0, 1, 0, 1)])).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x26, 0x06);
    let segments = vec![b2b(0, 0, 1, 0, 1); usize::from(xcopy::MAX_SEGMENT_DESCRIPTORS) + 1];
    let r = xcopy(&t, &n, &list(1, 0b10, &[naa_target("XC0")], &segments)).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x26, 0x08);
    // Descriptors longer in all than the copy manager takes.
    let segments = vec![b2b(0, 0, 1, 0, 1); 4096 / 28];
    let r = xcopy(&t, &n, &list(1, 0b10, &[naa_target("XC0")], &segments)).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x1a, 0x00);
    // A Fibre Channel target descriptor, a stream to stream segment.
    let mut fc = naa_target("XC0");
    fc[0] = 0xe0;
    let r = xcopy(&t, &n, &list(1, 0b10, &[fc], &[b2b(0, 0, 1, 0, 1)])).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x26, 0x07);
    assert_field(&r, 16, None);
    let mut stream = b2b(0, 0, 1, 0, 1);
    stream[0] = 0x03;
    let r = xcopy(&t, &n, &list(1, 0b10, &[naa_target("XC0")], &[stream])).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x26, 0x09);
    assert_field(&r, 48, None);
    // LIST ID USAGE 01b is reserved.
    let r = xcopy(
        &t,
        &n,
        &list(1, 0b01, &[naa_target("XC0")], &[b2b(0, 0, 1, 0, 1)]),
    )
    .await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x26, 0x00);
    assert_field(&r, 1, Some(4));
}

#[tokio::test]
async fn a_copy_that_cannot_be_done_is_aborted_before_any_block_moves() {
    let t = copy_target(&[BLOCKS * 512]);
    let n = ready(&t, "xc").await;
    let data = pattern(512, 6);
    put(&t, &n, 0, 0, &data).await;
    let last = BLOCKS - 1;
    // The first segment is fine, the second is not: nothing may be copied.
    // (target descriptors, the bad segment, expected ASC/ASCQ, field pointer)
    type Case = (Vec<Vec<u8>>, Vec<u8>, (u8, u8), u16);
    let cases: [Case; 3] = [
        // A LUN this target does not have.
        (
            vec![naa_target("NOSUCH")],
            b2b(0, 0, 1, 0, 5),
            (0x08, 0x04),
            20,
        ),
        // Destination descriptor index past the list.
        (
            vec![naa_target("XC0")],
            b2b(0, 1, 1, 0, 5),
            (0x08, 0x04),
            48 + 28 + 6,
        ),
        // Past the end of the destination.
        (
            vec![naa_target("XC0")],
            b2b(0, 0, 2, 0, last),
            (0x00, 0x00),
            48 + 28 + 20,
        ),
    ];
    for (targets, bad, (asc_, ascq), at) in cases {
        let p = list(1, 0b10, &targets, &[b2b(0, 0, 1, 0, 5), bad]);
        let r = xcopy(&t, &n, &p).await;
        assert_sense(&r, sense::key::COPY_ABORTED, asc_, ascq);
        assert_field(&r, at, None);
        assert_eq!(get(&t, &n, 0, 5, 1).await, vec![0; 512], "nothing copied");
    }
    // A block length other than the LUN's is a bad parameter.
    let mut wrong_bs = naa_target("XC0");
    wrong_bs[29..32].copy_from_slice(&[0, 0x10, 0]);
    let r = xcopy(&t, &n, &list(1, 0b10, &[wrong_bs], &[b2b(0, 0, 1, 0, 5)])).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x26, 0x00);
    assert_field(&r, 16 + 29, None);
}

#[tokio::test]
async fn a_write_protected_or_reserved_destination_stops_the_copy() {
    let t = ScsiTarget::new(vec![
        LunConfig {
            serial: "XC0".into(),
            ..lun_config(Arc::new(RamDevice::new(BLOCKS * 512)))
        },
        LunConfig {
            serial: "XC1".into(),
            ..lun_config(Arc::new(RamDevice::new_read_only(BLOCKS * 512)))
        },
        LunConfig {
            serial: "XC2".into(),
            ..lun_config(Arc::new(RamDevice::new(BLOCKS * 512)))
        },
    ]);
    let n = ready(&t, "xc").await;
    put(&t, &n, 0, 0, &pattern(512, 7)).await;
    let targets = [naa_target("XC0"), naa_target("XC1"), naa_target("XC2")];
    let r = xcopy(&t, &n, &list(0, 0b11, &targets, &[b2b(0, 1, 1, 0, 5)])).await;
    assert_sense(&r, sense::key::COPY_ABORTED, 0x27, 0x00);
    // Another initiator holds WRITE EXCLUSIVE on LUN 2: our copy into it conflicts.
    let other = nexus("holder");
    for _ in 0..2 {
        exec_lun(&t, &other, 2, &TUR, 0, &[]).await;
    }
    let mut reg = vec![0u8; 24];
    reg[8..16].copy_from_slice(&7u64.to_be_bytes());
    let r = exec_lun(&t, &other, 2, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], 24, &reg).await;
    assert_eq!(r.status, status::GOOD);
    let mut res = vec![0u8; 24];
    res[0..8].copy_from_slice(&7u64.to_be_bytes());
    let r = exec_lun(
        &t,
        &other,
        2,
        &[0x5f, 1, 0x01, 0, 0, 0, 0, 0, 24, 0],
        24,
        &res,
    )
    .await;
    assert_eq!(r.status, status::GOOD);
    exec_lun(&t, &n, 2, &TUR, 0, &[]).await;
    let r = xcopy(&t, &n, &list(0, 0b11, &targets, &[b2b(0, 2, 1, 0, 5)])).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    assert_eq!(get(&t, &other, 2, 5, 1).await, vec![0; 512]);
}

#[tokio::test]
async fn a_held_copy_status_is_reported_once_to_its_own_nexus() {
    let t = copy_target(&[BLOCKS * 512]);
    let n = ready(&t, "xc").await;
    let other = ready(&t, "other").await;
    // Nothing held yet.
    let r = exec(&t, &n, &rcr_cdb(0, 9), 1024, &[]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x24, 0x00);
    assert_field(&r, 2, None);
    let p = list(
        9,
        0b00,
        &[naa_target("XC0")],
        &[b2b(0, 0, 4, 0, 8), b2b(0, 0, 2, 0, 16)],
    );
    assert_eq!(xcopy(&t, &n, &p).await.status, status::GOOD);
    // Another nexus does not see it.
    let r = exec(&t, &other, &rcr_cdb(0, 9), 1024, &[]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x24, 0x00);
    let r = exec(&t, &n, &rcr_cdb(0, 9), 1024, &[]).await;
    assert_eq!(r.status, status::GOOD);
    // 8 bytes follow; completed without errors, 2 segments, 6 blocks in bytes.
    assert_eq!(
        &r.data_in[..],
        &[0, 0, 0, 8, 0x01, 0, 2, 0x00, 0, 0, 0x0c, 0x00]
    );
    let r = exec(&t, &n, &rcr_cdb(0, 9), 1024, &[]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x24, 0x00);
    // A failed held copy: completed with errors, after the segments that were done.
    let p = list(
        9,
        0b00,
        &[naa_target("XC0")],
        &[b2b(0, 0, 1, 0, 8), b2b(0, 0, 1, BLOCKS, 0)],
    );
    assert_sense(&xcopy(&t, &n, &p).await, sense::key::COPY_ABORTED, 0, 0);
    let r = exec(&t, &n, &rcr_cdb(0, 9), 1024, &[]).await;
    assert_eq!(r.data_in[4], 0x02);
    // Not held when LIST ID USAGE says discard.
    let p = list(9, 0b10, &[naa_target("XC0")], &[b2b(0, 0, 1, 0, 8)]);
    assert_eq!(xcopy(&t, &n, &p).await.status, status::GOOD);
    let r = exec(&t, &n, &rcr_cdb(0, 9), 1024, &[]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x24, 0x00);
    // A LIST ID USAGE of "none" with a list identifier is refused.
    let p = list(9, 0b11, &[naa_target("XC0")], &[b2b(0, 0, 1, 0, 8)]);
    assert_sense(
        &xcopy(&t, &n, &p).await,
        sense::key::ILLEGAL_REQUEST,
        0x26,
        0x00,
    );
}

#[tokio::test]
async fn operating_parameters_and_vpd_8f_state_the_limits_that_are_enforced() {
    let t = copy_target(&[BLOCKS * 512]);
    let n = ready(&t, "xc").await;
    let r = exec(&t, &n, &rcr_cdb(3, 0), 1024, &[]).await;
    assert_eq!(r.status, status::GOOD);
    let d = &r.data_in;
    assert_eq!(
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
        d.len() - 4
    );
    assert_eq!(
        u16::from_be_bytes([d[8], d[9]]),
        xcopy::MAX_TARGET_DESCRIPTORS
    );
    assert_eq!(
        u16::from_be_bytes([d[10], d[11]]),
        xcopy::MAX_SEGMENT_DESCRIPTORS
    );
    let max_list = u32::from_be_bytes([d[12], d[13], d[14], d[15]]);
    assert_eq!(max_list, xcopy::MAX_DESCRIPTOR_LIST_LENGTH);
    assert_eq!(&d[43..], &[1 + 2, 0x02, 0x0a, 0xe4][..]);
    // VPD 0x00 lists 0x8F; 0x8F's descriptors walk to its end and name both commands.
    let r = exec(&t, &n, &[0x12, 1, 0x00, 0, 255, 0], 255, &[]).await;
    assert!(r.data_in[4..].contains(&0x8f));
    let r = exec(&t, &n, &[0x12, 1, 0x8f, 4, 0, 0], 1024, &[]).await;
    assert_eq!(r.status, status::GOOD);
    let page = &r.data_in;
    assert_eq!(
        usize::from(u16::from_be_bytes([page[2], page[3]])),
        page.len() - 4
    );
    let mut at = 4;
    let mut kinds = Vec::new();
    while at < page.len() {
        let kind = u16::from_be_bytes([page[at], page[at + 1]]);
        let len = usize::from(u16::from_be_bytes([page[at + 2], page[at + 3]]));
        assert_eq!(len % 4, 0, "descriptor {kind:#x} padded");
        if kind == 0x0001 {
            assert_eq!(
                &page[at + 4..at + 12],
                &[7, 0x83, 1, 0x00, 0x84, 2, 0x00, 0x03]
            );
        }
        kinds.push(kind);
        at += 4 + len;
    }
    assert_eq!(at, page.len());
    assert_eq!(kinds, [0x0001, 0x0004, 0x0008, 0x8001]);
    // Standard INQUIRY says 3PC.
    let r = exec(&t, &n, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await;
    assert_eq!(r.data_in[5] & 0x08, 0x08);
}

/// Reads count themselves, then wait for a permit.
struct CountAndHold {
    entered: std::sync::atomic::AtomicUsize,
    gate: tokio::sync::Semaphore,
}

impl Default for CountAndHold {
    /// Every read waits until the test adds a permit.
    fn default() -> Self {
        CountAndHold {
            entered: Default::default(),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

#[async_trait]
impl RamHook for CountAndHold {
    async fn before_read(&self, _len: usize) {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(permit) = self.gate.acquire().await {
            permit.forget();
        }
    }
}

#[tokio::test]
async fn copies_piled_up_wait_for_one_of_a_few_chunk_slots() {
    use std::sync::atomic::Ordering;
    let device = HookedRam::new(BLOCKS * 512, CountAndHold::default());
    let t = Arc::new(ScsiTarget::new(vec![LunConfig {
        serial: "XC0".into(),
        ..lun_config(device.clone())
    }]));
    let n = ready(&t, "xc").await;
    let copies = xcopy::MAX_CHUNKS_IN_FLIGHT + 3;
    let tasks: Vec<_> = (0..copies as u64)
        .map(|i| {
            let (t, n) = (t.clone(), n.clone());
            tokio::spawn(async move {
                let p = list(0, 0b11, &[naa_target("XC0")], &[b2b(0, 0, 1, i, 100 + i)]);
                xcopy(&t, &n, &p).await.status
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while device.hook.entered.load(Ordering::SeqCst) < xcopy::MAX_CHUNKS_IN_FLIGHT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "copies did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        device.hook.entered.load(Ordering::SeqCst),
        xcopy::MAX_CHUNKS_IN_FLIGHT,
        "no more chunks in flight than slots"
    );
    device.hook.gate.add_permits(copies);
    for task in tasks {
        assert_eq!(task.await.unwrap(), status::GOOD);
    }
    assert_eq!(device.hook.entered.load(Ordering::SeqCst), copies);
}

proptest! {
    /// Any bytes, and any mutation of a good list, parse to a plan or a sense; never a panic,
    /// and a plan's segments always refer to descriptors by index only.
    #[test]
    fn parsing_never_panics(
        raw in proptest::collection::vec(any::<u8>(), 0..700),
        flips in proptest::collection::vec((0usize..120, any::<u8>()), 0..6),
    ) {
        let _ = xcopy::parse(&raw);
        let mut good = list(1, 0b10, &[naa_target("XC0")], &[b2b(0, 0, 1, 0, 1), b2b_bytes(9, 0, 1, 2, 3)]);
        for (at, value) in flips {
            let at = at % good.len();
            good[at] = value;
        }
        if let Ok(Some(plan)) = xcopy::parse(&good) {
            prop_assert!(plan.targets.len() <= usize::from(xcopy::MAX_TARGET_DESCRIPTORS));
            prop_assert!(plan.segments.len() <= usize::from(xcopy::MAX_SEGMENT_DESCRIPTORS));
        }
    }
}
