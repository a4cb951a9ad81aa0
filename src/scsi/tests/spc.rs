//! Primary commands (SPC-4): unit attentions, REQUEST SENSE, INQUIRY and VPD, REPORT LUNS,
//! MODE SENSE/SELECT, REPORT SUPPORTED OPERATION CODES and CDB validation.

use super::*;

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
    // DESC = 1: descriptor format, an 8-byte header with nothing to add here.
    let desc = exec(&t, &n, &[0x03, 1, 0, 0, 18, 0], 18, &[]).await;
    assert_eq!(&desc.data_in[..], &[0x72, 0, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn standard_inquiry_bytes() {
    let t = ram_target();
    let n = nexus("a");
    let r = exec(&t, &n, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await;
    let d = &r.data_in;
    assert_eq!(d.len(), 96);
    // Byte 5: TPGS 01b (implicit ALUA), 3PC (EXTENDED COPY).
    assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x18, 0x00, 0x02]);
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
        &[0, 0, 0, 7, 0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2]
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
    let thick = ScsiTarget::new(vec![lun_config(Arc::new(BrokenDevice::ON_FIRE))]);
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
    let r = exec(&t, &n, &[0x3b, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_sense(&r, 5, 0x20, 0);
    // Unknown service action of a known opcode.
    let r = exec(&t, &n, &[0x9e, 0x1f], 32, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 1, Some(4));
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

#[tokio::test]
async fn capacity_change_raises_unit_attention() {
    let dev = HookedRam::new(1 << 20, Resize(std::sync::atomic::AtomicU64::new(1 << 19)));
    let t = ScsiTarget::new(vec![lun_config(dev.clone())]);
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    dev.hook
        .0
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

/// MODE SELECT(6) parameter list holding just the Control page with `byte4` (TST 001 as the
/// target reports it).
fn control_page_params(byte4: u8) -> Vec<u8> {
    vec![
        0u8, 0, 0, 0, 0x0a, 10, 0x20, 0x10, byte4, 0, 0, 0, 0xff, 0xff, 0, 0,
    ]
}

#[tokio::test]
async fn software_write_protect_through_control_page() {
    let t = ram_target();
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    // Changeable values advertise SWP (and D_SENSE).
    let r = exec(&t, &a, &[0x1a, 0x08, 0x4a, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[4..9], &[0x0a, 10, 0x04, 0, 0x08]);
    let params = control_page_params(0x08);
    let r = exec(&t, &a, &[0x15, 0x10, 0, 0, 16, 0], 16, &params).await;
    assert_eq!(r.status, status::GOOD);
    assert_sense(
        &exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x2a,
        0x01,
    );
    let ms = exec(&t, &b, &[0x1a, 0x08, 0x0a, 0, 255, 0], 255, &[]).await;
    assert_eq!(ms.data_in[2], 0x90, "WP set in the header");
    assert_eq!(ms.data_in[8] & 0x08, 0x08, "SWP set in the page");
    assert_sense(
        &exec(&t, &b, &write10(0, 1), 512, &[1; 512]).await,
        7,
        0x27,
        0x02,
    );
    assert_eq!(
        exec(&t, &b, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
    // Clearing SWP makes the LUN writable again.
    let params = control_page_params(0);
    assert_eq!(
        exec(&t, &a, &[0x15, 0x10, 0, 0, 16, 0], 16, &params)
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        exec(&t, &a, &write10(0, 1), 512, &[1; 512]).await.status,
        status::GOOD
    );
    // A read-only device cannot change SWP.
    let ro = ro_target();
    let n = ready(&ro, "a").await;
    let r = exec(&ro, &n, &[0x1a, 0x08, 0x4a, 0, 255, 0], 255, &[]).await;
    assert_eq!(r.data_in[8], 0);
    let r = exec(
        &ro,
        &n,
        &[0x15, 0x10, 0, 0, 16, 0],
        16,
        &control_page_params(0x08),
    )
    .await;
    assert_sense(&r, 5, 0x26, 0);
}

#[tokio::test]
async fn target_port_groups_follow_the_portal_group_of_the_nexus() {
    let t = ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new(BLOCKS * 512)))])
        .with_ports(&[1, 3]);
    let n = Nexus {
        tpgt: 3,
        ..nexus("a")
    };
    assert_sense(&exec(&t, &n, &[0, 0, 0, 0, 0, 0], 0, &[]).await, 6, 0x29, 0);
    let vpd = exec(&t, &n, &[0x12, 1, 0x83, 0, 255, 0], 255, &[]).await;
    let tail = &vpd.data_in[vpd.data_in.len() - 16..];
    assert_eq!(
        tail,
        &[0x51, 0x94, 0, 4, 0, 0, 0, 3, 0x51, 0x95, 0, 4, 0, 0, 0, 3]
    );
    let rtpg = |format: u8| [0xa3, 0x0a | format << 5, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let r = exec(&t, &n, &rtpg(0), 256, &[]).await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(&r.data_in[..4], &[0, 0, 0, 24]);
    assert_eq!(
        &r.data_in[16..20],
        &[0, 0x0f, 0, 3],
        "the second group is port 3"
    );
    let r = exec(&t, &n, &rtpg(1), 256, &[]).await;
    assert_eq!(&r.data_in[..5], &[0, 0, 0, 28, 0x10]);
    let r = exec(&t, &n, &rtpg(2), 256, &[]).await;
    assert_sense(&r, 5, 0x24, 0);
    assert_field(&r, 1, Some(7));
    // A LUN that does not exist answers INQUIRY without TPGS.
    let missing = exec_lun(&t, &n, 9, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await;
    assert_eq!(missing.data_in[5], 0);
}

#[tokio::test]
async fn d_sense_switches_check_condition_to_descriptor_format() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let other = ready(&t, "b").await;
    // The Control page says D_SENSE is changeable.
    let r = exec(&t, &n, &[0x1a, 0x08, 0x4a, 0, 64, 0], 64, &[]).await;
    assert_eq!(r.data_in[4 + 2] & 0x04, 0x04, "{:02x?}", r.data_in);
    let bad_lba = read10(BLOCKS as u32, 1);
    assert_eq!(
        exec(&t, &n, &bad_lba, 512, &[]).await.sense.unwrap()[0],
        0x70
    );
    // MODE SELECT(6) of the Control page with D_SENSE set.
    let mut params = vec![0, 0, 0, 0];
    let mut control = exec(&t, &n, &[0x1a, 0x08, 0x0a, 0, 64, 0], 64, &[])
        .await
        .data_in[4..]
        .to_vec();
    assert_eq!(control[2] >> 5, 1, "TST: a task set per I_T nexus");
    control[2] |= 0x04;
    params.extend_from_slice(&control);
    let r = exec(
        &t,
        &n,
        &[0x15, 0x10, 0, 0, params.len() as u8, 0],
        params.len() as u32,
        &params,
    )
    .await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    // Every nexus now gets descriptor format, with the field pointer in its descriptor.
    let r = exec(&t, &n, &[0x28, 0x01, 0, 0, 0, 0, 0, 0, 1, 0], 512, &[]).await;
    let s = r.sense.unwrap();
    assert_eq!(&s[..8], &[0x72, 0x05, 0x24, 0x00, 0, 0, 0, 8]);
    assert_eq!(&s[8..12], &[0x02, 0x06, 0, 0]);
    let s = exec(&t, &other, &TUR, 0, &[]).await.sense.unwrap();
    assert_eq!(
        &s[..4],
        &[0x72, 0x06, 0x2a, 0x01],
        "MODE PARAMETERS CHANGED"
    );
    // REQUEST SENSE follows its own DESC bit.
    let r = exec(&t, &n, &[0x03, 0x01, 0, 0, 252, 0], 252, &[]).await;
    assert_eq!(&r.data_in[..], &[0x72, 0, 0, 0, 0, 0, 0, 0]);
    let r = exec(&t, &n, &[0x03, 0x00, 0, 0, 252, 0], 252, &[]).await;
    assert_eq!(r.data_in[0], 0x70);
    // A cold reset brings back fixed format.
    t.target_reset(true, &n);
    let s = exec(&t, &n, &TUR, 0, &[]).await.sense.unwrap();
    assert_eq!(s[0], 0x70);
}
