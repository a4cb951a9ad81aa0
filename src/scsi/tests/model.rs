//! Property tests: random command sequences against a plain model, and arbitrary CDBs.

use proptest::prelude::*;

use super::*;

/// The plain model a LUN must match.
#[derive(Debug, Clone)]
enum Op {
    Write {
        lba: u16,
        blocks: u8,
        fill: u8,
    },
    Unmap {
        lba: u16,
        blocks: u16,
    },
    WriteSame {
        lba: u16,
        blocks: u16,
        fill: u8,
        unmap: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let max = BLOCKS as u16;
    prop_oneof![
        (0..max, 1u8..=32, any::<u8>()).prop_map(|(lba, blocks, fill)| Op::Write {
            lba,
            blocks,
            fill
        }),
        (0..max, 0u16..400).prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
        (
            0..max,
            1u16..400,
            prop_oneof![Just(0u8), any::<u8>()],
            any::<bool>()
        )
            .prop_map(|(lba, blocks, fill, unmap)| Op::WriteSame {
                lba,
                blocks,
                fill,
                unmap
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_writes_unmaps_and_write_same_match_a_vec(ops in proptest::collection::vec(op_strategy(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let t = ram_target();
            let n = ready(&t, "model").await;
            let mut model = vec![0u8; (BLOCKS * 512) as usize];
            for op in ops {
                let (lba, blocks, r) = match op {
                    Op::Write { lba, blocks, fill } => {
                        let data = vec![fill; usize::from(blocks) * 512];
                        let r = exec(&t, &n, &write10(u32::from(lba), u16::from(blocks)), data.len() as u32, &data).await;
                        (lba, u16::from(blocks), (r, Some(fill)))
                    }
                    Op::Unmap { lba, blocks } => {
                        let p = unmap_params(&[(u64::from(lba), u32::from(blocks))]);
                        let r = exec(&t, &n, &unmap_cdb(p.len() as u16), p.len() as u32, &p).await;
                        (lba, blocks, (r, Some(0)))
                    }
                    Op::WriteSame { lba, blocks, fill, unmap } => {
                        let flags = if unmap { 0x08 } else { 0 };
                        let r = exec(&t, &n, &write_same16(u64::from(lba), u32::from(blocks), flags), 512, &[fill; 512]).await;
                        // UNMAP deallocates whatever the block holds; reads then give zeros.
                        (lba, blocks, (r, Some(if unmap { 0 } else { fill })))
                    }
                };
                let (resp, fill) = r;
                let end = u64::from(lba) + u64::from(blocks);
                if end > BLOCKS {
                    assert_sense(&resp, 5, 0x21, 0);
                    continue;
                }
                assert_eq!(resp.status, status::GOOD);
                if let Some(fill) = fill {
                    model[usize::from(lba) * 512..end as usize * 512].fill(fill);
                }
            }
            for start in (0..BLOCKS as u32).step_by(512) {
                let r = exec(&t, &n, &read10(start, 512), 512 * 512, &[]).await;
                let at = start as usize * 512;
                assert!(r.data_in[..] == model[at..at + 512 * 512], "mismatch in blocks {start}..");
            }
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Arbitrary CDBs (mostly with a known opcode) and Data-Out never panic, never return more
    /// Data-In than expected, and always carry sense data with CHECK CONDITION.
    #[test]
    fn arbitrary_commands_never_panic(
        opcode_index in 0..cdb::SUPPORTED.len() + 1,
        mut bytes in proptest::collection::vec(any::<u8>(), 0..20),
        expected_len in prop_oneof![0u32..2048, any::<u32>().prop_map(|v| v % (4 << 20))],
        out_len in 0usize..2048,
    ) {
        if let (Some(info), Some(first)) = (cdb::SUPPORTED.get(opcode_index), bytes.first_mut()) {
            *first = info.opcode;
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let t = ram_target();
        let n = rt.block_on(ready(&t, "fuzz"));
        let r = rt.block_on(t.execute(&n, ScsiRequest {
            lun: 0,
            cdb: Bytes::from(bytes),
            direction: DataDirection::Bidirectional,
            expected_len,
            data_out: Bytes::from(vec![0x5a; out_len.min(expected_len as usize)]),
        }));
        prop_assert!(r.data_in.len() <= expected_len as usize);
        prop_assert_eq!(r.status == status::CHECK_CONDITION, r.sense.is_some());
    }
}
