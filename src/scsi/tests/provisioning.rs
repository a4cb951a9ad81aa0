//! Thin provisioning: UNMAP, WRITE SAME and GET LBA STATUS on RAM and file LUNs.

use super::*;

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
