//! The per-LUN options: a removable medium, the physical block size, thick LUNs; and READ
//! DEFECT DATA.

use super::*;

const PREVENT: [u8; 6] = [0x1e, 0, 0, 0, 1, 0];
const ALLOW: [u8; 6] = [0x1e, 0, 0, 0, 0, 0];
const EJECT: [u8; 6] = [0x1b, 0, 0, 0, 0x02, 0];
const LOAD: [u8; 6] = [0x1b, 0, 0, 0, 0x03, 0];
const READ_10_ONE: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];

fn target_with(options: UnitOptions) -> ScsiTarget {
    let mut config = lun_config(Arc::new(RamDevice::new(BLOCKS * 512)));
    config.options = options;
    ScsiTarget::new(vec![config])
}

fn removable() -> ScsiTarget {
    target_with(UnitOptions {
        removable: true,
        ..UnitOptions::default()
    })
}

fn assert_good(r: &CommandOutcome) {
    assert_eq!(r.status, status::GOOD, "sense {:02x?}", r.sense);
}

#[tokio::test]
async fn a_removable_medium_is_ejected_and_loaded_unless_a_nexus_prevents_it() {
    let t = removable();
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    let inquiry = exec(&t, &a, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await;
    assert_eq!(inquiry.data_in[1], 0x80, "RMB");

    // A prevent from either nexus holds the medium for both.
    assert_good(&exec(&t, &a, &PREVENT, 0, &[]).await);
    assert_sense(&exec(&t, &b, &EJECT, 0, &[]).await, 0x05, 0x53, 0x02);
    assert_good(&exec(&t, &b, &TUR, 0, &[]).await);

    // Ending the nexus ends its prevent; then the medium goes and media commands say so.
    t.nexus_gone(&a);
    assert_good(&exec(&t, &b, &EJECT, 0, &[]).await);
    assert_sense(&exec(&t, &b, &TUR, 0, &[]).await, 0x02, 0x3a, 0x00);
    assert_sense(
        &exec(&t, &b, &READ_10_ONE, 512, &[]).await,
        0x02,
        0x3a,
        0x00,
    );
    // INQUIRY still answers; loading is refused while prevented, then works.
    assert_good(&exec(&t, &b, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await);
    assert_good(&exec(&t, &b, &PREVENT, 0, &[]).await);
    assert_sense(&exec(&t, &b, &LOAD, 0, &[]).await, 0x05, 0x53, 0x02);
    assert!(t.lun_reset(0, &b), "a LUN reset ends every prevent");
    assert_sense(&exec(&t, &b, &TUR, 0, &[]).await, 0x06, 0x29, 0x03);
    assert_good(&exec(&t, &b, &LOAD, 0, &[]).await);
    assert_good(&exec(&t, &b, &READ_10_ONE, 512, &[]).await);

    // A third nexus that knew the LUN hears that the medium may have changed.
    let t2 = removable();
    let c = ready(&t2, "c").await;
    let d = ready(&t2, "d").await;
    assert_good(&exec(&t2, &d, &EJECT, 0, &[]).await);
    assert_good(&exec(&t2, &d, &LOAD, 0, &[]).await);
    assert_sense(&exec(&t2, &c, &TUR, 0, &[]).await, 0x06, 0x28, 0x00);
    assert_good(&exec(&t2, &d, &TUR, 0, &[]).await);

    // A target reset ends prevents too; ALLOW and media-changer values.
    assert_good(&exec(&t2, &d, &PREVENT, 0, &[]).await);
    t2.target_reset(false, &d);
    assert_sense(&exec(&t2, &d, &TUR, 0, &[]).await, 0x06, 0x29, 0x03);
    assert_good(&exec(&t2, &d, &EJECT, 0, &[]).await);
    assert_good(&exec(&t2, &d, &ALLOW, 0, &[]).await);
    let changer = exec(&t2, &d, &[0x1e, 0, 0, 0, 2, 0], 0, &[]).await;
    assert_sense(&changer, 0x05, 0x24, 0x00);
}

#[tokio::test]
async fn a_fixed_medium_ignores_load_eject_and_prevent() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let inquiry = exec(&t, &n, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await;
    assert_eq!(inquiry.data_in[1], 0x00, "RMB");
    assert_good(&exec(&t, &n, &PREVENT, 0, &[]).await);
    assert_good(&exec(&t, &n, &EJECT, 0, &[]).await);
    assert_good(&exec(&t, &n, &TUR, 0, &[]).await);
    assert_good(&exec(&t, &n, &READ_10_ONE, 512, &[]).await);
}

#[tokio::test]
async fn physical_block_size_reaches_read_capacity_and_block_limits() {
    let t = target_with(UnitOptions {
        physical_block_exponent: 4,
        ..UnitOptions::default()
    });
    let n = ready(&t, "a").await;
    let rc16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let r = exec(&t, &n, &rc16, 32, &[]).await;
    assert_good(&r);
    assert_eq!(
        r.data_in[13], 4,
        "LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT"
    );
    let b0 = exec(&t, &n, &[0x12, 1, 0xb0, 0, 64, 0], 64, &[]).await;
    assert_eq!(
        u16::from_be_bytes([b0.data_in[6], b0.data_in[7]]),
        16,
        "OPTIMAL TRANSFER LENGTH GRANULARITY is one physical block"
    );
    // The default keeps physical = logical and the 4 KiB granularity.
    let t = ram_target();
    let n = ready(&t, "a").await;
    assert_eq!(exec(&t, &n, &rc16, 32, &[]).await.data_in[13], 0);
    let b0 = exec(&t, &n, &[0x12, 1, 0xb0, 0, 64, 0], 64, &[]).await;
    assert_eq!(u16::from_be_bytes([b0.data_in[6], b0.data_in[7]]), 8);
}

#[tokio::test]
async fn a_thick_lun_advertises_no_thin_provisioning_and_refuses_unmap() {
    let t = target_with(UnitOptions {
        thin: false,
        ..UnitOptions::default()
    });
    let n = ready(&t, "a").await;
    let rc16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    assert_eq!(exec(&t, &n, &rc16, 32, &[]).await.data_in[14] & 0xc0, 0);
    // UNMAP is not listed, so it is not accepted either.
    let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut params = vec![0, 22, 0, 16, 0, 0, 0, 0];
    params.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0]);
    let r = exec(&t, &n, &unmap, 24, &params).await;
    assert_eq!(r.status, status::CHECK_CONDITION);
    // WRITE SAME with UNMAP is refused too, rather than written in silence.
    let mut ws16 = [0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    assert_field(&exec(&t, &n, &ws16, 512, &[0; 512]).await, 1, Some(3));
    ws16[1] = 0;
    assert_good(&exec(&t, &n, &ws16, 512, &[0; 512]).await);
    // The same device with the default option is thin.
    let t = ram_target();
    let n = ready(&t, "a").await;
    assert_eq!(exec(&t, &n, &rc16, 32, &[]).await.data_in[14] & 0xc0, 0xc0);
}

#[tokio::test]
async fn read_defect_data_returns_empty_lists_in_the_format_asked_for() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    // (10): PLIST and GLIST, block format 0; a 4-byte header with a zero length.
    let r = exec(&t, &n, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 32, 0], 32, &[]).await;
    assert_good(&r);
    assert_eq!(&r.data_in[..], &[0, 0x18, 0, 0]);
    assert_eq!(r.residual, 28);
    // (12): GLIST only, bytes-from-index format 4; an 8-byte header.
    let cdb = [0xb7, 0x0c, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    let r = exec(&t, &n, &cdb, 64, &[]).await;
    assert_good(&r);
    assert_eq!(&r.data_in[..], &[0, 0x0c, 0, 0, 0, 0, 0, 0]);
    // Reserved bits are refused like everywhere else.
    let r = exec(&t, &n, &[0x37, 0x01, 0, 0, 0, 0, 0, 0, 32, 0], 32, &[]).await;
    assert_sense(&r, 0x05, 0x24, 0x00);
}
