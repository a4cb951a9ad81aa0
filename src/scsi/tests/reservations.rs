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

/// A [`ReservationStore`] in memory: what survives a "restart" of the target in these tests.
#[derive(Default)]
struct MemoryStore(parking_lot::Mutex<std::collections::HashMap<String, Vec<u8>>>);

impl ReservationStore for MemoryStore {
    fn load(&self, serial: &str) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.lock().get(serial).cloned())
    }
    fn save(&self, serial: &str, document: Option<&[u8]>) -> std::io::Result<()> {
        match document {
            Some(d) => self.0.lock().insert(serial.to_string(), d.to_vec()),
            None => self.0.lock().remove(serial),
        };
        Ok(())
    }
}

/// A target whose LUN 0 (serial SERIAL0001) keeps reservations in `store`, as the daemon
/// builds one at every start.
fn stored_target(store: &Arc<MemoryStore>) -> ScsiTarget {
    let t = ScsiTarget::named("t", Vec::new()).with_reservation_store(store.clone());
    let device = Arc::new(RamDevice::new(BLOCKS * 512));
    t.insert_lun(0, lun_config(device)).unwrap();
    t
}

/// PERSISTENT RESERVE OUT parameters with APTPL set.
fn aptpl_params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = pr_params(key, sa_key).to_vec();
    p[20] |= 0x01;
    p
}

#[tokio::test]
async fn aptpl_reservations_survive_a_restart_of_the_target() {
    let store = Arc::new(MemoryStore::default());
    let t = stored_target(&store);
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    let r = exec(&t, &a, &prout(0, 0), 24, &aptpl_params(0, 0xaa)).await;
    assert_eq!(r.status, status::GOOD);
    // Each REGISTER's APTPL applies to the whole unit: B asks for it too.
    let r = exec(&t, &b, &prout(0, 0), 24, &aptpl_params(0, 0xbb)).await;
    assert_eq!(r.status, status::GOOD);
    let r = exec(&t, &a, &prout(1, 1), 24, &pr_params(0xaa, 0)).await;
    assert_eq!(r.status, status::GOOD);
    // PTPL_C and PTPL_A.
    let caps = exec(&t, &a, &[0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0], 8, &[]).await;
    assert_eq!(&caps.data_in[2..4], &[0x11, 0x81]);
    let before = exec(&t, &a, &[0x5e, 3, 0, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    drop(t);

    // The next start: same serial, same store, fresh everything else.
    let t = stored_target(&store);
    let a = ready(&t, "a").await;
    let b = ready(&t, "b").await;
    let c = ready(&t, "c").await;
    let after = exec(&t, &a, &[0x5e, 3, 0, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(after.data_in, before.data_in, "READ FULL STATUS");
    let res = exec(&t, &c, &[0x5e, 1, 0, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(
        &res.data_in[4..16],
        &[0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xaa]
    );
    assert_eq!(res.data_in[21], 0x01, "WRITE EXCLUSIVE");
    // The holder writes, a registrant and a stranger may not (WRITE EXCLUSIVE).
    assert_eq!(write_status(&t, &a).await, status::GOOD);
    assert_eq!(write_status(&t, &b).await, status::RESERVATION_CONFLICT);
    assert_eq!(write_status(&t, &c).await, status::RESERVATION_CONFLICT);
    // A cold target reset is a power cycle: APTPL keeps them through it too.
    t.target_reset(true, &a);
    for n in [&a, &b, &c] {
        assert_sense(&exec(&t, n, &TUR, 0, &[]).await, 6, 0x29, 0x00);
    }
    assert_eq!(write_status(&t, &c).await, status::RESERVATION_CONFLICT);

    // A REGISTER with APTPL clear ends the persistence: the next start has none.
    let r = exec(&t, &b, &prout(6, 0), 24, &pr_params(0, 0xbc)).await;
    assert_eq!(r.status, status::GOOD);
    assert!(store.0.lock().is_empty(), "the saved copy is dropped");
    let caps = exec(&t, &a, &[0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0], 8, &[]).await;
    assert_eq!(&caps.data_in[2..4], &[0x11, 0x80]);
    drop(t);
    let t = stored_target(&store);
    let c = ready(&t, "c").await;
    assert_eq!(write_status(&t, &c).await, status::GOOD);
}

/// The status of a one-block WRITE(10) by `n`.
async fn write_status(t: &ScsiTarget, n: &Nexus) -> u8 {
    exec(t, n, &write10(0, 1), 512, &[0; 512]).await.status
}

#[tokio::test]
async fn aptpl_is_refused_without_a_store_and_a_bad_saved_copy_is_ignored() {
    let t = ram_target();
    let a = ready(&t, "a").await;
    let r = exec(&t, &a, &prout(0, 0), 24, &aptpl_params(0, 0xaa)).await;
    assert_sense(&r, 5, 0x26, 0x00);
    assert_field(&r, 20, Some(0));
    let caps = exec(&t, &a, &[0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0], 8, &[]).await;
    assert_eq!(&caps.data_in[2..4], &[0x10, 0x80]);

    let store = Arc::new(MemoryStore::default());
    store
        .save("SERIAL0001", Some(br#"{"version": 1, "generation": 3"#))
        .unwrap();
    let t = stored_target(&store);
    let a = ready(&t, "a").await;
    let keys = exec(&t, &a, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(&keys.data_in[..8], &[0, 0, 0, 0, 0, 0, 0, 0]);
    // The next change with APTPL replaces it.
    let r = exec(&t, &a, &prout(0, 0), 24, &aptpl_params(0, 0xaa)).await;
    assert_eq!(r.status, status::GOOD);
    let saved = store.load("SERIAL0001").unwrap().unwrap();
    assert!(String::from_utf8(saved).unwrap().contains("\"key\": 170"));
}

/// REGISTER AND MOVE parameters: keys, UNREG, the relative target port and an iSCSI
/// TransportID with ISID for `to`.
fn move_params(key: u64, sa_key: u64, unreg: bool, port: u16, to: &Nexus) -> Vec<u8> {
    let mut name = format!("{},i,0x{}", to.initiator_name, hex::encode(to.isid)).into_bytes();
    name.push(0);
    name.resize(name.len().div_ceil(4) * 4, 0);
    let mut p = pr_params(key, sa_key);
    p[17] = if unreg { 0x02 } else { 0 };
    p[18..20].copy_from_slice(&port.to_be_bytes());
    p[20..24].copy_from_slice(&((4 + name.len()) as u32).to_be_bytes());
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(name.len() as u16).to_be_bytes());
    p.extend_from_slice(&name);
    p
}

/// PERSISTENT RESERVE OUT, REGISTER AND MOVE with a parameter list of `len` bytes.
fn move_cdb(len: usize) -> Vec<u8> {
    let mut c = prout(7, 0);
    c[5..9].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

#[tokio::test]
async fn register_and_move_hands_the_reservation_to_another_nexus() {
    let t = ram_target().with_ports(&[1, 2]);
    let a = ready(&t, "a").await;
    // B comes in through the second port.
    let b = Nexus {
        tpgt: 2,
        ..nexus("b")
    };
    exec(&t, &b, &TUR, 0, &[]).await;
    let mv = |p: Vec<u8>, by: Nexus| {
        let t = &t;
        async move { exec(t, &by, &move_cdb(p.len()), p.len() as u32, &p).await }
    };
    // Not registered: conflict. No reservation yet: invalid.
    let r = mv(move_params(0xa, 0xbb, true, 2, &b), a.clone()).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    assert_eq!(
        exec(&t, &a, &prout(0, 0), 24, &pr_params(0, 0xa))
            .await
            .status,
        status::GOOD
    );
    let r = mv(move_params(0xa, 0xbb, true, 2, &b), a.clone()).await;
    assert_sense(&r, 5, 0x24, 0);
    // A holds EXCLUSIVE ACCESS; B cannot read.
    assert_eq!(
        exec(&t, &a, &prout(1, 3), 24, &pr_params(0xa, 0))
            .await
            .status,
        status::GOOD
    );
    let r = exec(&t, &b, &read10(0, 1), 512, &[]).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    // Malformed moves change nothing: a port the target lacks, a TransportID without ISID,
    // a length that disagrees with the TransportID's, a move to oneself, a zero key.
    let r = mv(move_params(0xa, 0xbb, true, 9, &b), a.clone()).await;
    assert_field(&r, 18, None);
    let mut no_isid = move_params(0xa, 0xbb, true, 2, &b);
    no_isid[24] = 0x05;
    assert_field(&mv(no_isid, a.clone()).await, 24, None);
    let mut long = move_params(0xa, 0xbb, true, 2, &b);
    long.extend_from_slice(&[0; 4]);
    assert_sense(&mv(long, a.clone()).await, 5, 0x1a, 0);
    assert_field(
        &mv(move_params(0xa, 0xbb, true, 1, &a), a.clone()).await,
        24,
        None,
    );
    assert_field(
        &mv(move_params(0xa, 0, true, 2, &b), a.clone()).await,
        8,
        None,
    );
    let r = exec(&t, &b, &read10(0, 1), 512, &[]).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);

    // The move: B holds EXCLUSIVE ACCESS with key 0xbb, A is unregistered (UNREG).
    let r = mv(move_params(0xa, 0xbb, true, 2, &b), a.clone()).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    let res = exec(&t, &b, &[0x5e, 1, 0, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(&res.data_in[8..16], &0xbbu64.to_be_bytes());
    assert_eq!(res.data_in[21], 0x03);
    let keys = exec(&t, &b, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    assert_eq!(
        &keys.data_in[4..16],
        &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xbb]
    );
    assert_eq!(
        exec(&t, &b, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
    let r = exec(&t, &a, &read10(0, 1), 512, &[]).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    // A's registration is gone, so A cannot move it back.
    let r = mv(move_params(0xa, 0xa, false, 1, &a), a.clone()).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    // An all-registrants reservation cannot be moved.
    assert_eq!(
        exec(&t, &b, &prout(2, 3), 24, &pr_params(0xbb, 0))
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        exec(&t, &b, &prout(1, 8), 24, &pr_params(0xbb, 0))
            .await
            .status,
        status::GOOD
    );
    let r = mv(move_params(0xbb, 0xa, false, 1, &a), b.clone()).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
}
