//! SANITIZE through the target: what each action leaves on the medium, what the LUN answers
//! while one runs, refusals, and the failure mode a failed one leaves.

use std::time::Duration;

use super::*;

fn sanitize_cdb(sa: u8, immed: bool, param_len: u16) -> Vec<u8> {
    let mut cdb = vec![
        0x48,
        sa | if immed { 0x80 } else { 0 },
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    cdb[7..9].copy_from_slice(&param_len.to_be_bytes());
    cdb
}

/// OVERWRITE parameters: `count` passes (with INVERT when `invert`) of `pattern`.
fn overwrite_params(count: u8, invert: bool, pattern: &[u8]) -> Vec<u8> {
    let mut p = vec![count | if invert { 0x80 } else { 0 }, 0];
    p.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    p.extend_from_slice(pattern);
    p
}

async fn overwrite(t: &ScsiTarget, n: &Nexus, immed: bool, params: &[u8]) -> CommandOutcome {
    let cdb = sanitize_cdb(1, immed, params.len() as u16);
    exec(t, n, &cdb, params.len() as u32, params).await
}

/// Every block of LUN 0, read 64 blocks at a time.
async fn whole_lun(t: &ScsiTarget, n: &Nexus) -> Vec<u8> {
    let mut all = Vec::new();
    for lba in (0..BLOCKS as u32).step_by(64) {
        let r = exec(t, n, &read10(lba, 64), 64 * 512, &[]).await;
        assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
        all.extend_from_slice(&r.data_in);
    }
    all
}

async fn fill(t: &ScsiTarget, n: &Nexus, byte: u8) {
    for lba in (0..BLOCKS as u32).step_by(64) {
        let r = exec(t, n, &write10(lba, 64), 64 * 512, &[byte; 64 * 512]).await;
        assert_eq!(r.status, status::GOOD);
    }
}

fn thick_target() -> ScsiTarget {
    let mut config = lun_config(Arc::new(RamDevice::new(BLOCKS * 512)));
    config.options.thin = false;
    ScsiTarget::new(vec![config])
}

/// The SANITIZE service actions REPORT SUPPORTED OPERATION CODES lists for LUN 0.
async fn listed_actions(t: &ScsiTarget, n: &Nexus) -> Vec<u16> {
    let r = exec(
        t,
        n,
        &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        4096,
        &[],
    )
    .await;
    r.data_in[4..]
        .chunks(8)
        .filter(|d| d[0] == 0x48)
        .map(|d| u16::from_be_bytes([d[2], d[3]]))
        .collect()
}

#[tokio::test]
async fn overwrite_writes_the_pattern_into_every_block_pass_by_pass() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    fill(&t, &n, b'a').await;
    let r = overwrite(&t, &n, false, &overwrite_params(1, false, &[0xaa; 512])).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    assert!(whole_lun(&t, &n).await.iter().all(|&b| b == 0xaa));

    // Two passes with INVERT end on the inverted pattern; a short one repeats in each block.
    let r = overwrite(
        &t,
        &n,
        false,
        &overwrite_params(2, true, &[0x0f, 0x01, 0x02]),
    )
    .await;
    assert_eq!(r.status, status::GOOD);
    let all = whole_lun(&t, &n).await;
    let block: Vec<u8> = [0xf0u8, 0xfe, 0xfd]
        .iter()
        .copied()
        .cycle()
        .take(512)
        .collect();
    assert!(all.chunks(512).all(|b| b == block.as_slice()));
    // Three passes end on the pattern itself.
    let r = overwrite(&t, &n, false, &overwrite_params(3, true, &[0x0f])).await;
    assert_eq!(r.status, status::GOOD);
    assert!(whole_lun(&t, &n).await.iter().all(|&b| b == 0x0f));
}

#[tokio::test]
async fn the_erases_deallocate_a_thin_lun_and_are_not_offered_on_a_thick_one() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    assert_eq!(listed_actions(&t, &n).await, vec![1, 2, 3, 0x1f]);
    let b1 = exec(&t, &n, &[0x12, 1, 0xb1, 0, 64, 0], 64, &[]).await;
    assert_eq!(b1.data_in[7] & 0xf0, 0x50, "WABEREQ = WACEREQ = 01b");
    fill(&t, &n, b'a').await;
    let r = exec(&t, &n, &sanitize_cdb(2, false, 0), 0, &[]).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    assert!(whole_lun(&t, &n).await.iter().all(|&b| b == 0));
    let r = exec(&t, &n, &get_lba_status_cdb(0, 24), 24, &[]).await;
    assert_eq!(r.data_in[20], 1, "deallocated");
    assert_eq!(
        u32::from_be_bytes(r.data_in[16..20].try_into().unwrap()),
        BLOCKS as u32,
        "the whole LUN in one descriptor"
    );
    // Parameters are for OVERWRITE only.
    let r = exec(&t, &n, &sanitize_cdb(2, false, 8), 8, &[0; 8]).await;
    assert_sense(&r, 0x05, 0x24, 0x00);
    assert_field(&r, 7, None);

    // CRYPTOGRAPHIC ERASE deallocates as well.
    fill(&t, &n, b'a').await;
    let r = exec(&t, &n, &sanitize_cdb(3, false, 0), 0, &[]).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    assert!(whole_lun(&t, &n).await.iter().all(|&b| b == 0));

    // Thick: OVERWRITE only, and the VPD page says neither erase exists.
    let t = thick_target();
    let n = ready(&t, "a").await;
    assert_eq!(listed_actions(&t, &n).await, vec![1, 0x1f]);
    let b1 = exec(&t, &n, &[0x12, 1, 0xb1, 0, 64, 0], 64, &[]).await;
    assert_eq!(b1.data_in[7] & 0xf0, 0, "WABEREQ = WACEREQ = 0");
    for sa in [2, 3] {
        let r = exec(&t, &n, &sanitize_cdb(sa, false, 0), 0, &[]).await;
        assert_sense(&r, 0x05, 0x24, 0x00);
        assert_field(&r, 1, Some(4));
    }
}

#[tokio::test]
async fn while_a_sanitize_runs_only_inquiry_report_luns_and_request_sense_answer() {
    // 32 MiB at the paced rate takes a quarter of a second.
    let bytes = 32u64 << 20;
    let t = ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new(bytes)))]);
    let n = ready(&t, "a").await;
    let r = overwrite(&t, &n, true, &overwrite_params(1, false, &[0x5a; 512])).await;
    assert_eq!(r.status, status::GOOD, "IMMED returns at once");
    let busy = exec(&t, &n, &TUR, 0, &[]).await;
    assert_sense(&busy, 0x02, 0x04, 0x1b);
    let busy_sense = busy.sense.as_ref().unwrap();
    assert_eq!(busy_sense[15], 0x80, "progress indication");
    assert_sense(
        &exec(&t, &n, &read10(0, 1), 512, &[]).await,
        0x02,
        0x04,
        0x1b,
    );
    let again = overwrite(&t, &n, false, &overwrite_params(1, false, &[0; 4])).await;
    assert_sense(&again, 0x02, 0x04, 0x1b);
    assert_eq!(
        exec(&t, &n, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await.status,
        status::GOOD
    );
    let sense = exec(&t, &n, &[0x03, 0, 0, 0, 18, 0], 18, &[]).await;
    assert_eq!(sense.status, status::GOOD);
    assert_eq!(
        (sense.data_in[2], sense.data_in[12], sense.data_in[13]),
        (0x02, 0x04, 0x1b)
    );

    // Progress only grows, and the sanitize ends by itself.
    let mut last = 0u16;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = exec(&t, &n, &TUR, 0, &[]).await;
        if r.status == status::GOOD {
            break;
        }
        let s = r.sense.unwrap();
        let progress = u16::from_be_bytes([s[16], s[17]]);
        assert!(progress >= last, "{progress} < {last}");
        last = progress;
        assert!(std::time::Instant::now() < deadline, "sanitize never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last > 0, "progress was seen moving");
    let r = exec(&t, &n, &read10(65535, 1), 512, &[]).await;
    assert!(r.data_in.iter().all(|&b| b == 0x5a));
}

#[tokio::test]
async fn sanitize_is_refused_where_it_cannot_apply() {
    // Read-only: WRITE PROTECTED.
    let t = ro_target();
    let n = ready(&t, "a").await;
    let r = overwrite(&t, &n, false, &overwrite_params(1, false, &[1; 4])).await;
    assert_sense(&r, 0x07, 0x27, 0x00);
    // A device that is not all its own (an image): not offered at all.
    struct Plain;
    impl RamHook for Plain {}
    let t = ScsiTarget::new(vec![lun_config(HookedRam::new(1 << 20, Plain))]);
    let n = ready(&t, "a").await;
    assert!(listed_actions(&t, &n).await.is_empty());
    let r = overwrite(&t, &n, false, &overwrite_params(1, false, &[1; 4])).await;
    assert_sense(&r, 0x05, 0x24, 0x00);
    assert_field(&r, 1, Some(4));
    // Service actions that do not exist; the reserved bit of byte 1.
    let t = ram_target();
    let n = ready(&t, "a").await;
    for sa in [0, 4, 0x1e] {
        let r = exec(&t, &n, &sanitize_cdb(sa, false, 0), 0, &[]).await;
        assert_sense(&r, 0x05, 0x24, 0x00);
    }
    let mut cdb = sanitize_cdb(2, false, 0);
    cdb[1] |= 0x40;
    assert_field(&exec(&t, &n, &cdb, 0, &[]).await, 1, Some(6));
}

#[tokio::test]
async fn a_failed_sanitize_leaves_failure_mode_until_an_allowed_exit() {
    let t = ScsiTarget::new(vec![lun_config(Arc::new(BrokenDevice::ON_FIRE))]);
    let n = ready(&t, "a").await;
    let params = overwrite_params(1, false, &[1; 4]);
    let r = overwrite(&t, &n, false, &params).await;
    assert_sense(&r, 0x03, 0x31, 0x03);
    assert_sense(&exec(&t, &n, &TUR, 0, &[]).await, 0x03, 0x31, 0x03);
    // Without AUSE the failure mode cannot simply be left.
    let exit = sanitize_cdb(0x1f, false, 0);
    assert_sense(&exec(&t, &n, &exit, 0, &[]).await, 0x05, 0x24, 0x00);
    // With AUSE it can.
    let mut cdb = sanitize_cdb(1, false, params.len() as u16);
    cdb[1] |= 0x20;
    let r = exec(&t, &n, &cdb, params.len() as u32, &params).await;
    assert_sense(&r, 0x03, 0x31, 0x03);
    assert_eq!(exec(&t, &n, &exit, 0, &[]).await.status, status::GOOD);
    assert_eq!(exec(&t, &n, &TUR, 0, &[]).await.status, status::GOOD);
}
