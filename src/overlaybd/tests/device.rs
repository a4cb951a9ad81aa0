//! The image as a block device, and raw image conversions.

use super::*;

#[tokio::test]
async fn image_block_device_contract() {
    let dir = tempfile::tempdir().unwrap();
    let base = patterned_layer(dir.path(), "base", 16, 3).await;
    let blob = commit_blob(&base).await;

    // Read-only image: writes and unmaps are refused, flush is a no-op.
    let ro = Image::new(
        LayerStack::new(vec![sealed(blob.clone()).await]).unwrap(),
        None,
    )
    .await
    .unwrap();
    assert!(ro.read_only() && !ro.can_unmap());
    assert_eq!(ro.size(), 1 << 20);
    assert!(matches!(
        ro.write(0, Bytes::from(vec![0u8; 512]), false).await,
        Err(BlockError::ReadOnly)
    ));
    assert!(matches!(ro.unmap(0, 512).await, Err(BlockError::ReadOnly)));
    ro.flush().await.unwrap();
    assert!(matches!(
        ro.read(1 << 20, 512).await,
        Err(BlockError::OutOfRange { .. })
    ));
    let st = ro.block_status(0).await.unwrap();
    assert_eq!((st.state, st.len), (Provisioning::Mapped, 16 * S));
    let st = ro.block_status(16 * S).await.unwrap();
    assert_eq!(
        (st.state, st.len),
        (Provisioning::Deallocated, (1 << 20) - 16 * S)
    );

    // Writable upper with virtual size 0 takes the stack's size and records it in its headers.
    let upper = new_layer(dir.path(), "up", 0);
    let rw = Image::new(
        LayerStack::new(vec![sealed(blob).await]).unwrap(),
        Some(upper),
    )
    .await
    .unwrap();
    assert_eq!(rw.size(), 1 << 20);
    assert!(!rw.read_only() && rw.can_unmap());
    rw.write(8 * S, Bytes::from(pattern(4, 7)), true)
        .await
        .unwrap();
    rw.unmap(2 * S, 2 * S).await.unwrap();
    let mut model = vec![0u8; 32 * S as usize];
    model[..(16 * S) as usize].copy_from_slice(&pattern(16, 3));
    model[(8 * S) as usize..(12 * S) as usize].copy_from_slice(&pattern(4, 7));
    model[(2 * S) as usize..(4 * S) as usize].fill(0);
    assert_eq!(rw.read(0, 32 * S as usize).await.unwrap(), model);
    let st = rw.block_status(2 * S).await.unwrap();
    assert_eq!((st.state, st.len), (Provisioning::Deallocated, 2 * S));
    let st = rw.block_status(4 * S).await.unwrap();
    assert_eq!((st.state, st.len), (Provisioning::Mapped, 12 * S));
    assert!(matches!(
        rw.write((1 << 20) - 512, Bytes::from(vec![0u8; 1024]), false)
            .await,
        Err(BlockError::OutOfRange { .. })
    ));
    rw.flush().await.unwrap();
    drop(rw);
    let up = reopen(dir.path(), "up");
    assert_eq!(up.virtual_size(), 1 << 20);
    assert_eq!(up.header().virtual_size, 1 << 20);
}

#[tokio::test]
async fn raw_export_and_import_roundtrip() {
    use crate::overlaybd::raw::{export_sparse, import_raw};
    let dir = tempfile::tempdir().unwrap();
    let vsize = 8u64 << 20;
    let base = new_layer(dir.path(), "base", vsize);
    base.write(0, Bytes::from(pattern(64, 1))).await.unwrap();
    base.write(6 << 20, Bytes::from(pattern(16, 2)))
        .await
        .unwrap();
    let stack = LayerStack::new(vec![committed(&base).await]).unwrap();
    // The wanted disk: base with one block changed, one block zeroed, and new data elsewhere.
    let mut want = stack.read(0, vsize as usize).await.unwrap().to_vec();
    want[4096..8192].fill(0x55);
    want[8192..12288].fill(0);
    want[(5 << 20)..(5 << 20) + 512].fill(0x66);
    let raw = dir.path().join("want.raw");
    std::fs::write(&raw, &want).unwrap();
    let upper = new_layer(dir.path(), "up", vsize);
    let summary = import_raw(&raw, &stack, &upper, &|_| {}).await.unwrap();
    assert_eq!((summary.written, summary.discarded), (8192, 4096));
    let image = Image::new(stack, Some(upper)).await.unwrap();
    assert_eq!(image.read(0, vsize as usize).await.unwrap(), want);
    let out = dir.path().join("out.raw");
    export_sparse(&image, &out, &|_| {}).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), want);
}

/// A config naming the real ZFile base layer by `file`, a ZFile-compressed commit by `dir`, and
/// a fresh writable upper of size 0: the device is the base's 64 GiB, reads through all layers,
/// and the result file says `success`.
#[tokio::test]
async fn image_from_config_with_zfile_layers_and_upper() {
    let Some(_) = super::fixture::require("ext4_64") else {
        return;
    };
    use crate::overlaybd::commit::write_commit_file;
    use crate::overlaybd::LocalOpener;
    use crate::zfile::WriterOptions;

    let dir = tempfile::tempdir().unwrap();
    let mid = new_layer(dir.path(), "mid", 64 << 30);
    mid.write(1 << 20, Bytes::from(pattern(8, 4)))
        .await
        .unwrap();
    let layer_dir = dir.path().join("layer1");
    std::fs::create_dir(&layer_dir).unwrap();
    let commit = layer_dir.join("overlaybd.commit");
    write_commit_file(
        &CommitSource::from_writable(&mid),
        &CommitOptions::default(),
        &commit,
        Some(WriterOptions::default()),
        &|_| {},
    )
    .await
    .unwrap();
    let head = std::fs::read(&commit).unwrap();
    assert_eq!(&head[..8], b"ZFile\0\x01\0");
    assert_eq!(
        crate::zfile::detect_format(&head[..512]).unwrap(),
        crate::zfile::BlobFormat::ZFile
    );
    drop(new_layer(dir.path(), "up", 0));

    let base = super::fixture::fixture("ext4_64");
    let cfg_path = dir.path().join("config.v1.json");
    let result = dir.path().join("result");
    let config = format!(
        r#"{{"lowers":[{{"file":"{}"}},{{"dir":"{}"}}],"upper":{{"index":"{}","data":"{}"}},"resultFile":"{}"}}"#,
        base.display(),
        layer_dir.display(),
        dir.path().join("up.index").display(),
        dir.path().join("up.data").display(),
        result.display()
    );
    std::fs::write(&cfg_path, config).unwrap();
    let image = Image::open_config_file(&cfg_path, &LocalOpener)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "success");
    assert_eq!(image.size(), 64 << 30);
    assert_eq!(image.stack().len(), 2);
    image
        .write(4096, Bytes::from(pattern(1, 9)), false)
        .await
        .unwrap();
    let head = image.read(0, (2 << 20) + 4096).await.unwrap();
    assert_eq!(&head[1080..1082], &[0x53, 0xEF]);
    assert_eq!(&head[4096..4608], &pattern(1, 9)[..]);
    assert_eq!(&head[1 << 20..(1 << 20) + 4096], &pattern(8, 4)[..]);

    // A missing layer fails the open and the result file says why, naming the field.
    std::fs::remove_file(layer_dir.join("overlaybd.commit")).unwrap();
    let err = Image::open_config_file(&cfg_path, &LocalOpener)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lowers[1]"), "{err}");
    let text = std::fs::read_to_string(&result).unwrap();
    assert!(
        text.starts_with("failed:") && text.contains("lowers[1]"),
        "{text}"
    );
}

/// Concurrent writers and readers on one image: every write lands, reads never see torn
/// extents (each block reads as one whole pattern, old or new).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let upper = new_layer(dir.path(), "up", 4 << 20);
    let image = Arc::new(
        Image::new(LayerStack::new(vec![]).unwrap(), Some(upper))
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let image = Arc::clone(&image);
        tasks.push(tokio::spawn(async move {
            for round in 0..16u64 {
                let block = (u64::from(t) * 16 + round) % 64;
                image
                    .write(block * 4096, Bytes::from(pattern(8, t)), false)
                    .await
                    .unwrap();
                let got = image.read(block * 4096, 4096).await.unwrap();
                assert!((0..8).any(|p| got == pattern(8, p)), "torn block {block}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    image.flush().await.unwrap();
    let all = image.read(0, 64 * 4096).await.unwrap();
    for block in 0..64usize {
        let got = &all[block * 4096..(block + 1) * 4096];
        // Blocks written by several tasks hold one of their patterns.
        let writers: Vec<u8> = (0..8u8)
            .filter(|&t| (0..16u64).any(|r| (u64::from(t) * 16 + r) % 64 == block as u64))
            .collect();
        assert!(
            writers.iter().any(|&p| got == pattern(8, p)),
            "block {block}"
        );
    }
    assert_eq!(
        image
            .upper()
            .unwrap()
            .records()
            .iter()
            .map(|r| u64::from(r.length))
            .sum::<u64>(),
        64 * 8
    );
}

/// Up to 255 read-only layers stack (the writable layer's tag is then 255); 256 are refused.
#[tokio::test]
async fn layer_count_limit() {
    let dir = tempfile::tempdir().unwrap();
    let one = patterned_layer(dir.path(), "one", 1, 1).await;
    let blob = commit_blob(&one).await;
    let mut layers = Vec::new();
    for _ in 0..256 {
        layers.push(sealed(blob.clone()).await);
    }
    let err = LayerStack::new(layers).unwrap_err().to_string();
    assert!(err.contains("at most 255"), "{err}");
    let mut layers = Vec::new();
    for _ in 0..255 {
        layers.push(sealed(blob.clone()).await);
    }
    let upper = new_layer(dir.path(), "up", 1 << 20);
    let image = Image::new(LayerStack::new(layers).unwrap(), Some(upper))
        .await
        .unwrap();
    image
        .write(512, Bytes::from(pattern(1, 2)), false)
        .await
        .unwrap();
    let got = image.read(0, 1024).await.unwrap();
    assert_eq!(&got[..512], &pattern(1, 1)[..]);
    assert_eq!(&got[512..], &pattern(1, 2)[..]);
    assert_eq!(
        image
            .extents(0, 2)
            .iter()
            .map(|r| r.tag)
            .collect::<Vec<_>>(),
        vec![0, 255]
    );
}
