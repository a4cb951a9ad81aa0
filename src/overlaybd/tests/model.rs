//! Writable layers, commits, seals and stacks against a plain byte model.

use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A writable layer (append-only or sparse) reads like the model live, after reopen, after
    /// commit and after an in-place seal; compacting the sealed file equals the direct commit.
    #[test]
    fn writable_layer_matches_model(ops in prop::collection::vec(op_strategy(VSECTORS), 1..40), sparse in any::<bool>()) {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let vsize = VSECTORS * S;
            let layer = create_layer(dir.path(), "w", &CreateOptions { sparse, ..CreateOptions::new(vsize) });
            apply_layer(&layer, &ops).await;
            let mut model = vec![0u8; vsize as usize];
            apply_model(&mut model, &ops);
            assert_eq!(layer.read(0, vsize as usize).await.unwrap(), model, "live");
            layer.flush().await.unwrap();
            drop(layer);
            let layer = reopen(dir.path(), "w");
            assert_eq!(layer.read(0, vsize as usize).await.unwrap(), model, "reopened");
            let blob = commit_blob(&layer).await;
            let stack = LayerStack::new(vec![sealed(blob.clone()).await]).unwrap();
            assert_eq!(stack.read(0, vsize as usize).await.unwrap(), model, "committed");
            seal_in_place(layer).await.unwrap();
            let s = SealedLayer::open(Arc::new(FileSource::open(dir.path().join("w.data")).await.unwrap())).await.unwrap();
            // Compacting the sealed file (`--commit_sealed`) gives the very same blob.
            let compacted = commit_bytes(&CommitSource::from_sealed(&s), &CommitOptions::default()).await;
            assert!(compacted == blob, "compacted sealed layer differs from the direct commit");
            let stack = LayerStack::new(vec![s]).unwrap();
            assert_eq!(stack.read(0, vsize as usize).await.unwrap(), model, "sealed in place");
        });
    }

    /// Several committed layers stacked (and a writable layer on top) read like the model with
    /// every layer's operations applied bottom to top; the §11 merge of that image does too.
    #[test]
    fn stacked_commits_match_model(
        layers in prop::collection::vec(prop::collection::vec(op_strategy(VSECTORS), 1..12), 1..5),
        top in prop::collection::vec(op_strategy(VSECTORS), 0..12),
    ) {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let vsize = VSECTORS * S;
            let mut model = vec![0u8; vsize as usize];
            let mut sealed_layers = Vec::new();
            for (i, ops) in layers.iter().enumerate() {
                let layer = new_layer(dir.path(), &format!("l{i}"), vsize);
                apply_layer(&layer, ops).await;
                apply_model(&mut model, ops);
                sealed_layers.push(committed(&layer).await);
            }
            let stack = LayerStack::new(sealed_layers).unwrap();
            assert_eq!(stack.read(0, vsize as usize).await.unwrap(), model, "stack");
            let upper = new_layer(dir.path(), "top", vsize);
            apply_layer(&upper, &top).await;
            apply_model(&mut model, &top);
            let image = Image::new(stack, Some(upper.clone())).await.unwrap();
            assert_eq!(image.read(0, vsize as usize).await.unwrap(), model, "image");
            // Unaligned-to-extent partial reads agree too.
            assert_eq!(image.read(7 * S, 100 * S as usize).await.unwrap(), &model[(7 * S) as usize..(107 * S) as usize]);
            let merged = commit_bytes(&CommitSource::from_stack(image.stack(), Some(&upper)).unwrap(), &CommitOptions::default()).await;
            let flat = LayerStack::new(vec![sealed(merged).await]).unwrap();
            assert_eq!(flat.read(0, vsize as usize).await.unwrap(), model, "merged");
        });
    }
}
