//! Block commands (SBC-3): READ CAPACITY, READ/WRITE of every size, residuals, write
//! protection, backend errors, VERIFY, COMPARE AND WRITE, ORWRITE, SYNCHRONIZE CACHE.

use super::*;

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

/// Records the length of every read the device serves.
struct CountReads(parking_lot::Mutex<Vec<usize>>);

#[async_trait]
impl RamHook for CountReads {
    async fn before_read(&self, len: usize) {
        self.0.lock().push(len);
    }
}

#[tokio::test]
async fn reads_fetch_only_what_the_transfer_carries() {
    let dev = HookedRam::new(64 << 20, CountReads(Default::default()));
    let t = ScsiTarget::new(vec![lun_config(dev.clone())]);
    let n = ready(&t, "a").await;
    // READ(16) of 65536 blocks (32 MiB) with EDTL 512: one block read, overflow of the rest.
    let r16 = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    let r = exec(&t, &n, &r16, 512, &[]).await;
    assert_eq!(
        (r.status, r.data_in.len(), r.residual),
        (status::GOOD, 512, 512 - (32 << 20))
    );
    // EDTL that ends inside a block: that block is read and cut.
    let r = exec(&t, &n, &read10(0, 8), 700, &[]).await;
    assert_eq!((r.data_in.len(), r.residual), (700, 700 - 4096));
    // EDTL 0: nothing read at all.
    let r = exec(&t, &n, &read10(0, 8), 0, &[]).await;
    assert_eq!((r.status, r.residual), (status::GOOD, -4096));
    assert_eq!(*dev.hook.0.lock(), vec![512, 1024]);
    // The whole extent is still range-checked.
    let past = [0x88, 0, 0, 0, 0, 0, 0, 0x01, 0xff, 0xff, 0, 1, 0, 0, 0, 0];
    let r = exec(&t, &n, &past, 512, &[]).await;
    assert_sense(&r, 5, 0x21, 0);
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

#[tokio::test]
async fn backend_errors_become_medium_errors() {
    let t = ScsiTarget::new(vec![lun_config(Arc::new(BrokenDevice::ON_FIRE))]);
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

fn write_atomic16(lba: u64, blocks: u16, flags: u8) -> Vec<u8> {
    let mut cdb = vec![0x9c, flags, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[12..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

#[tokio::test]
async fn write_atomic_checks_its_range_length_and_flags() {
    let t = ram_target();
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &write_atomic16(8, 2, 0x18), 1024, &[0x77; 1024]).await;
    assert_eq!(r.status, status::GOOD, "{:02x?}", r.sense);
    let back = exec(&t, &n, &read10(8, 2), 1024, &[]).await;
    assert_eq!(&back.data_in[..], &[0x77; 1024][..]);
    // Zero blocks at the end is fine; past it is not.
    let r = exec(&t, &n, &write_atomic16(BLOCKS, 0, 0), 0, &[]).await;
    assert_eq!(r.status, status::GOOD);
    let r = exec(&t, &n, &write_atomic16(BLOCKS + 1, 0, 0), 0, &[]).await;
    assert_sense(&r, 0x05, 0x21, 0x00);
    let r = exec(&t, &n, &write_atomic16(BLOCKS - 1, 2, 0), 1024, &[0; 1024]).await;
    assert_sense(&r, 0x05, 0x21, 0x00);
    // WRPROTECT without protection information; longer than advertised.
    let r = exec(&t, &n, &write_atomic16(0, 1, 0x20), 512, &[0; 512]).await;
    assert_field(&r, 1, Some(5));
    let vpd = exec(&t, &n, &[0x12, 1, 0xb0, 0, 64, 0], 64, &[]).await;
    let max = u32::from_be_bytes(vpd.data_in[44..48].try_into().unwrap());
    assert_eq!(max, lun::MAX_ATOMIC_BLOCKS);
    let big = ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new(4 << 20)))]);
    let big_n = ready(&big, "a").await;
    let long = (max + 1) as u16;
    let data = vec![0; long as usize * 512];
    let r = exec(
        &big,
        &big_n,
        &write_atomic16(0, long, 0),
        data.len() as u32,
        &data,
    )
    .await;
    assert_field(&r, 12, None);
    // A transfer that does not carry the whole write moves nothing.
    let r = exec(&t, &n, &write_atomic16(8, 2, 0), 512, &[0x11; 512]).await;
    assert_sense(&r, 0x05, 0x0e, 0x03);
    let back = exec(&t, &n, &read10(8, 1), 512, &[]).await;
    assert_eq!(&back.data_in[..], &[0x77; 512][..]);
}

#[tokio::test]
async fn an_atomic_write_waits_for_earlier_commands_and_holds_back_later_ones() {
    let device = HookedRam::new(BLOCKS * 512, HoldReads::default());
    let t = Arc::new(ScsiTarget::new(vec![lun_config(device.clone())]));
    let n = ready(&t, "a").await;
    let spawn = |cdb: Vec<u8>, len: u32, out: Vec<u8>| {
        let (t, n) = (t.clone(), n.clone());
        tokio::spawn(async move { exec(&t, &n, &cdb, len, &out).await })
    };
    // A read is inside the device when the atomic write arrives.
    let first_read = spawn(read10(0, 4), 2048, Vec::new());
    device.hook.entered.notified().await;
    let atomic = spawn(write_atomic16(0, 4, 0), 2048, vec![0xab; 2048]);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!atomic.is_finished(), "the atomic write waits for the read");
    // A write sent after it waits behind it, so it lands last.
    let later_write = spawn(write10(0, 4), 2048, vec![0xcd; 2048]);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !later_write.is_finished(),
        "a later write waits for the atomic one"
    );
    device.hook.gate.add_permits(10);
    let first = first_read.await.unwrap();
    assert!(
        first.data_in.iter().all(|&b| b == 0),
        "the read saw none of it"
    );
    assert_eq!(atomic.await.unwrap().status, status::GOOD);
    assert_eq!(later_write.await.unwrap().status, status::GOOD);
    let back = exec(&t, &n, &read10(0, 4), 2048, &[]).await;
    assert!(back.data_in.iter().all(|&b| b == 0xcd));
}
