//! RESERVE/RELEASE, persistent reservations and resets, through `execute`.

use super::*;

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
