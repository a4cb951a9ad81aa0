//! Logical units added, removed and replaced while nexuses use the target: REPORTED LUNS DATA
//! HAS CHANGED, sparse REPORT LUNS, and commands in flight on a removed LUN.

use super::*;
use crate::block::{Unavailable, UnavailableDevice};

/// REPORT LUNS, all logical units, allocation length 256.
const REPORT_LUNS: [u8; 12] = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
/// PERSISTENT RESERVE IN, READ KEYS, allocation length 255.
const READ_KEYS: [u8; 10] = [0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0];

fn ram() -> LunConfig {
    lun_config(Arc::new(RamDevice::new(BLOCKS * 512)))
}

/// A nexus that has consumed its power-on unit attention on each of `luns`.
async fn ready_on(t: &ScsiTarget, name: &str, luns: &[u64]) -> Nexus {
    let n = nexus(name);
    for &lun in luns {
        let first = exec_lun(t, &n, lun, &TUR, 0, &[]).await;
        assert_sense(&first, sense::key::UNIT_ATTENTION, 0x29, 0x00);
        assert_eq!(
            exec_lun(t, &n, lun, &TUR, 0, &[]).await.status,
            status::GOOD
        );
    }
    n
}

/// Asserts that the next TEST UNIT READY on `lun` reports REPORTED LUNS DATA HAS CHANGED and
/// the one after it is GOOD.
async fn assert_luns_changed_once(t: &ScsiTarget, n: &Nexus, lun: u64) {
    let r = exec_lun(t, n, lun, &TUR, 0, &[]).await;
    assert_sense(&r, sense::key::UNIT_ATTENTION, 0x3f, 0x0e);
    assert_eq!(exec_lun(t, n, lun, &TUR, 0, &[]).await.status, status::GOOD);
}

/// The LUN fields of a REPORT LUNS answer.
fn listed(r: &CommandOutcome) -> Vec<[u8; 8]> {
    assert_eq!(r.status, status::GOOD);
    let len = u32::from_be_bytes([r.data_in[0], r.data_in[1], r.data_in[2], r.data_in[3]]);
    r.data_in[8..8 + len as usize]
        .chunks(8)
        .map(|c| c.try_into().unwrap())
        .collect()
}

#[tokio::test]
async fn adding_a_lun_tells_the_users_of_the_others_once() {
    let t = ram_target();
    let a = ready(&t, "a").await;
    t.insert_lun(5, ram()).unwrap();
    assert_luns_changed_once(&t, &a, 0).await;
    // A nexus that had not used the target only sees its power-on.
    ready(&t, "b").await;
    // On the new LUN every nexus starts with a power-on.
    let r = exec_lun(&t, &a, 5, &TUR, 0, &[]).await;
    assert_sense(&r, sense::key::UNIT_ATTENTION, 0x29, 0x00);
    assert_eq!(exec_lun(&t, &a, 5, &TUR, 0, &[]).await.status, status::GOOD);
    assert!(t.lun_reset(5, &a), "resets reach the new LUN");
}

#[tokio::test]
async fn report_luns_lists_sparse_numbers_with_their_addressing() {
    let t = ram_target();
    t.insert_lun(300, ram()).unwrap();
    t.insert_lun(5, ram()).unwrap();
    assert_eq!(t.lun_numbers(), vec![0, 5, 300]);
    assert_eq!(t.lun_count(), 3);
    assert!(t.has_lun(300) && !t.has_lun(1));
    let n = nexus("a");
    let r = exec(&t, &n, &REPORT_LUNS, 256, &[]).await;
    // Peripheral device addressing below 256, flat space (01b) at and above.
    assert_eq!(
        listed(&r),
        vec![
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 5, 0, 0, 0, 0, 0, 0],
            [0x41, 0x2c, 0, 0, 0, 0, 0, 0],
        ]
    );
}

#[tokio::test]
async fn report_luns_clears_the_change_on_every_lun() {
    let t = ScsiTarget::new(vec![ram(), ram()]);
    let a = ready_on(&t, "a", &[0, 1]).await;
    let b = ready_on(&t, "b", &[0, 1]).await;
    assert!(t.lun_reset(1, &a));
    t.insert_lun(2, ram()).unwrap();
    // Through a LUN that exists.
    assert_eq!(listed(&exec(&t, &a, &REPORT_LUNS, 256, &[]).await).len(), 3);
    assert_eq!(exec_lun(&t, &a, 0, &TUR, 0, &[]).await.status, status::GOOD);
    // Only REPORTED LUNS DATA HAS CHANGED is withdrawn; the reset is still reported.
    assert_sense(&exec_lun(&t, &a, 1, &TUR, 0, &[]).await, 6, 0x29, 0x03);
    assert_eq!(exec_lun(&t, &a, 1, &TUR, 0, &[]).await.status, status::GOOD);
    // Through a LUN that does not exist; the other nexus's condition is untouched until then.
    let r = exec_lun(&t, &b, 9, &REPORT_LUNS, 256, &[]).await;
    assert_eq!(listed(&r).len(), 3);
    assert_eq!(exec_lun(&t, &b, 0, &TUR, 0, &[]).await.status, status::GOOD);
    assert_sense(&exec_lun(&t, &b, 1, &TUR, 0, &[]).await, 6, 0x29, 0x03);
    assert_eq!(exec_lun(&t, &b, 1, &TUR, 0, &[]).await.status, status::GOOD);
    // A REPORT LUNS that fails (allocation length below 16) clears nothing.
    t.insert_lun(3, ram()).unwrap();
    let short = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    let r = exec(&t, &a, &short, 8, &[]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x24, 0x00);
    assert_luns_changed_once(&t, &a, 0).await;
}

#[tokio::test]
async fn a_removed_lun_is_not_supported_and_the_others_hear_of_it() {
    let t = ScsiTarget::new(vec![ram(), ram()]);
    let a = ready_on(&t, "a", &[0, 1]).await;
    assert_eq!(
        t.remove_lun(1),
        Some(RemovedLun {
            number: 1,
            users: 1
        })
    );
    assert_eq!(t.remove_lun(1), None);
    assert_eq!(t.lun_numbers(), vec![0]);
    let r = exec_lun(&t, &a, 1, &read10(0, 1), 512, &[]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x25, 0x00);
    // INQUIRY: peripheral qualifier 3, no device.
    let r = exec_lun(&t, &a, 1, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await;
    assert_eq!((r.status, r.data_in[0]), (status::GOOD, 0x7f));
    assert_luns_changed_once(&t, &a, 0).await;
    assert!(!t.lun_reset(1, &a));
}

#[tokio::test]
async fn a_read_in_flight_on_a_removed_lun_completes_with_its_data() {
    let device = HookedRam::new(BLOCKS * 512, HoldReads::default());
    device
        .ram
        .write(512, Bytes::from(vec![0x5a; 512]), false)
        .await
        .unwrap();
    let t = Arc::new(ScsiTarget::new(vec![ram(), lun_config(device.clone())]));
    let a = ready_on(&t, "a", &[0, 1]).await;
    let read = tokio::spawn({
        let (t, a) = (t.clone(), a.clone());
        async move { exec_lun(&t, &a, 1, &read10(1, 1), 512, &[]).await }
    });
    device.hook.entered.notified().await;
    assert!(t.remove_lun(1).is_some());
    let r = exec_lun(&t, &a, 1, &TUR, 0, &[]).await;
    assert_sense(&r, sense::key::ILLEGAL_REQUEST, 0x25, 0x00);
    device.hook.gate.add_permits(1);
    let r = read.await.unwrap();
    assert_eq!(r.status, status::GOOD);
    assert_eq!(&r.data_in[..], &[0x5a; 512][..]);
    // Once the read is over the target no longer holds the device.
    assert_eq!(Arc::strong_count(&device), 1);
}

#[tokio::test]
async fn replace_lun_keeps_what_initiators_knew_and_reports_the_new_size() {
    let t = ScsiTarget::new(vec![lun_config(Arc::new(UnavailableDevice::new(
        Unavailable::Missing,
    )))]);
    let a = nexus("a");
    assert_sense(&exec(&t, &a, &TUR, 0, &[]).await, 6, 0x29, 0x00);
    assert_sense(&exec(&t, &a, &TUR, 0, &[]).await, 2, 0x3a, 0x00);
    let r = exec(&t, &a, &prout(0, 0), 24, &pr_params(0, 0x1234)).await;
    assert_eq!(r.status, status::GOOD);
    let b = nexus("b");
    assert_sense(&exec(&t, &b, &TUR, 0, &[]).await, 6, 0x29, 0x00);
    // MODE SELECT by `a` leaves MODE PARAMETERS CHANGED pending for `b`: WCE off.
    let caching = [
        0, 0, 0, 0, 0x08, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let r = exec(&t, &a, &[0x15, 0x10, 0, 0, 24, 0], 24, &caching).await;
    assert_eq!(r.status, status::GOOD);

    assert!(t.replace_lun(0, ram()));
    assert!(!t.replace_lun(1, ram()));
    assert_eq!(t.lun_numbers(), vec![0]);
    assert_eq!(t.lun_users(0), Some(2));
    // `b`: its pending condition first, then the capacity change; no LUN list change.
    assert_sense(&exec(&t, &b, &TUR, 0, &[]).await, 6, 0x2a, 0x01);
    assert_sense(&exec(&t, &b, &TUR, 0, &[]).await, 6, 0x2a, 0x09);
    assert_eq!(exec(&t, &b, &TUR, 0, &[]).await.status, status::GOOD);
    assert_sense(&exec(&t, &a, &TUR, 0, &[]).await, 6, 0x2a, 0x09);
    assert_eq!(
        exec(&t, &a, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
    // The registration survived.
    let keys = exec(&t, &a, &READ_KEYS, 255, &[]).await;
    assert_eq!(keys.status, status::GOOD);
    assert_eq!(&keys.data_in[4..8], &8u32.to_be_bytes());
    assert_eq!(&keys.data_in[8..16], &0x1234u64.to_be_bytes());
    // So did WCE: MODE SENSE(6) of the caching page shows it off.
    let r = exec(&t, &a, &[0x1a, 0x08, 0x08, 0, 24, 0], 24, &[]).await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(r.data_in[4 + 2] & 0x04, 0, "WCE");
    // The same size again: nothing to report.
    assert!(t.replace_lun(0, ram()));
    assert_eq!(exec(&t, &a, &TUR, 0, &[]).await.status, status::GOOD);
}

#[tokio::test]
async fn lun_users_counts_nexuses_until_they_end() {
    let t = ram_target();
    assert_eq!(t.lun_users(0), Some(0));
    assert_eq!(t.lun_users(1), None);
    let a = ready(&t, "a").await;
    ready(&t, "b").await;
    assert_eq!(t.lun_users(0), Some(2));
    t.nexus_gone(&a);
    assert_eq!(t.lun_users(0), Some(1));
}

#[tokio::test]
async fn insert_refuses_a_taken_or_out_of_range_number() {
    let t = ram_target();
    assert_eq!(t.insert_lun(0, ram()), Err(LunError::Exists(0)));
    assert_eq!(
        t.insert_lun(LUN_LIMIT, ram()),
        Err(LunError::OutOfRange(16384))
    );
    assert_eq!(
        t.insert_lun(u64::MAX, ram()),
        Err(LunError::OutOfRange(u64::MAX))
    );
    t.insert_lun(16383, ram()).unwrap();
    let r = exec(&t, &nexus("a"), &REPORT_LUNS, 256, &[]).await;
    assert_eq!(listed(&r)[1], [0x7f, 0xff, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn a_standby_port_reports_unit_attentions_first_then_not_ready() {
    let t = ram_target()
        .with_port_states(&[(1, AccessState::ActiveOptimized), (2, AccessState::Standby)]);
    let standby = Nexus {
        tpgt: 2,
        ..nexus("s")
    };
    assert_sense(&exec(&t, &standby, &TUR, 0, &[]).await, 6, 0x29, 0x00);
    assert_sense(&exec(&t, &standby, &TUR, 0, &[]).await, 2, 0x04, 0x0b);
    let inquiry = exec(&t, &standby, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await;
    assert_eq!(inquiry.status, status::GOOD);
    let active = ready(&t, "a").await;
    assert_eq!(
        exec(&t, &active, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
}
