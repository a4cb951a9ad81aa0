//! Reads split across cores: pieces cut at block boundaries, decoded by the calling task and by
//! blocking threads into parts of one buffer. Every split must return exactly the bytes an
//! inline decode returns, and a bad block anywhere must fail the read with that block's error.

use std::sync::Arc;

use super::corruption::zfile_error;
use super::{make_zfile, mem, sample_data};
use crate::source::{LayerSource, SourceError, SourceResult, Span};
use crate::zfile::{Algorithm, BlockFault, WriterOptions, ZFileError, ZFileReader};

const MIB: usize = 1 << 20;

fn options(algorithm: Algorithm, block_size: u32) -> WriterOptions {
    WriterOptions {
        algorithm,
        block_size,
        verify: true,
    }
}

async fn open_with(file: &[u8], workers: usize) -> ZFileReader {
    ZFileReader::open(mem(file.to_vec()))
        .await
        .unwrap()
        .with_decode_workers(workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_at_any_start_and_end_return_the_same_bytes() {
    let data = sample_data(3 * MIB / 2 + 777, 41);
    for (algorithm, bs) in [
        (Algorithm::Lz4, 4096u32),
        (Algorithm::Lz4, 32_768),
        (Algorithm::Zstd, 4096),
    ] {
        let file = make_zfile(&data, options(algorithm, bs), false);
        let bs = bs as usize;
        let len = data.len();
        // (offset, length): aligned, starting mid-block, ending mid-block, both, one block,
        // one byte, a block plus one byte on each side, the last partial block, everything.
        let reads = [
            (0, MIB),
            (bs / 2, MIB),
            (0, MIB - bs / 3),
            (bs + 17, MIB - 2 * bs + 5),
            (5 * bs, bs),
            (7 * bs + 3, 1),
            (9 * bs - 1, bs + 2),
            (len - len % bs, len % bs),
            (len - 300_000, 300_000),
            (0, len),
        ];
        for workers in [1, 2, 3, 8] {
            let reader = open_with(&file, workers).await;
            for &(offset, count) in &reads {
                let got = reader.read_exact_at(offset as u64, count).await.unwrap();
                assert!(
                    got[..] == data[offset..offset + count],
                    "{algorithm} {bs}: {count} bytes at {offset}, {workers} workers"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_parallel_reads_do_not_mix_their_parts() {
    let data = Arc::new(sample_data(2 * MIB, 5));
    let file = make_zfile(&data, options(Algorithm::Lz4, 4096), false);
    let reader = Arc::new(open_with(&file, 4).await);
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let (reader, data) = (Arc::clone(&reader), Arc::clone(&data));
            tokio::spawn(async move {
                let offset = i * 100_003;
                let got = reader.read_exact_at(offset, MIB).await.unwrap();
                assert!(
                    got[..] == data[offset as usize..offset as usize + MIB],
                    "read {i}"
                );
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Flips one byte in the middle of each listed block of `file`.
async fn damage(file: &[u8], blocks: &[u64]) -> Vec<u8> {
    let clean = open_with(file, 1).await;
    let mut bad = file.to_vec();
    for &index in blocks {
        let (s, e) = clean.block_span(index).unwrap();
        bad[((s + e) / 2) as usize] ^= 0x20;
    }
    bad
}

/// The block named by the error of a read, which must be a checksum failure.
fn failed_block(err: &SourceError) -> u64 {
    match zfile_error(err) {
        ZFileError::Block {
            index,
            fault: BlockFault::Crc { .. },
        } => *index,
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_block_in_any_piece_fails_the_read_with_its_index() {
    let data = sample_data(MIB, 8);
    let file = make_zfile(&data, options(Algorithm::Lz4, 4096), false);
    // A 1 MiB read in 2 pieces of 128 blocks: blocks 0 and 127 in the first (decoded by the
    // calling task), 128, 200 and 255 in the second (on a blocking thread).
    for bad_block in [0u64, 127, 128, 200, 255] {
        let reader = open_with(&damage(&file, &[bad_block]).await, 2).await;
        let err = reader.read_exact_at(0, MIB).await.unwrap_err();
        assert_eq!(failed_block(&err), bad_block);
        // Reads that avoid the block still work, in parallel too.
        let clean_at = if bad_block < 128 { 512 * 1024 } else { 0 };
        let got = reader.read_exact_at(clean_at, 512 * 1024).await.unwrap();
        assert!(got[..] == data[clean_at as usize..clean_at as usize + 512 * 1024]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bad_blocks_in_several_pieces_the_first_in_file_order_is_reported() {
    let data = sample_data(MIB, 9);
    let file = make_zfile(&data, options(Algorithm::Lz4, 4096), false);
    // Four pieces of 64 blocks; the blocking threads' pieces may finish in any order.
    let reader = open_with(&damage(&file, &[70, 140, 250]).await, 4).await;
    for _ in 0..5 {
        let err = reader.read_exact_at(0, MIB).await.unwrap_err();
        assert_eq!(failed_block(&err), 70);
    }
    let reader = open_with(&damage(&file, &[10, 250]).await, 4).await;
    let err = reader.read_exact_at(0, MIB).await.unwrap_err();
    assert_eq!(failed_block(&err), 10);
}

/// A blob whose reads, once armed, each wait until `pieces` reads are in flight together.
struct Gated {
    inner: crate::source::BytesSource,
    armed: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Barrier,
}

#[async_trait::async_trait]
impl LayerSource for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read_span(&self, span: Span) -> SourceResult<bytes::Bytes> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            self.gate.wait().await;
        }
        self.inner.read_exact_at(span.offset(), span.len()).await
    }
    fn describe(&self) -> String {
        "gated".into()
    }
}

#[test]
fn the_pieces_are_fetched_together_without_holding_blocking_threads() {
    // One blocking thread: had a piece's fetch waited there (as a network read once did), the
    // other pieces' fetches could not start and the gate would never open.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let data = sample_data(MIB, 10);
        let source = Arc::new(Gated {
            inner: crate::source::BytesSource::new(
                make_zfile(&data, options(Algorithm::Lz4, 4096), false),
                "zfile",
            ),
            armed: false.into(),
            gate: tokio::sync::Barrier::new(4),
        });
        let reader = ZFileReader::open(Arc::clone(&source) as Arc<dyn LayerSource>)
            .await
            .unwrap()
            .with_decode_workers(4);
        source
            .armed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            reader.read_exact_at(0, MIB),
        )
        .await
        .expect("all four stored ranges were in flight at once")
        .unwrap();
        assert!(got[..] == data[..]);
    });
}
