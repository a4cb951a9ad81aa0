//! A block that fails its checksum is invalidated in the source and fetched once more: damage
//! in transit or in a cache heals, damage in the blob is an error after exactly one retry.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{make_zfile, mem, sample_data};
use crate::source::{LayerSource, SourceError, SourceResult, Span};
use crate::zfile::{open_payload, BlockFault, WriterOptions, ZFileError, ZFileReader};

/// Serves `clean`, but flips one byte at `flip_at` in the first `bad_reads` reads that cover it
/// (`u32::MAX` = always), like a flaky link or a poisoned cache; records invalidations.
struct Flipping {
    clean: Vec<u8>,
    flip_at: u64,
    bad_reads: AtomicU32,
    reads_covering: AtomicU32,
    invalidated: Mutex<Vec<(u64, u64)>>,
}

impl Flipping {
    fn new(clean: Vec<u8>, flip_at: u64, bad_reads: u32) -> Arc<Self> {
        Arc::new(Self {
            clean,
            flip_at,
            bad_reads: AtomicU32::new(bad_reads),
            reads_covering: AtomicU32::new(0),
            invalidated: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl LayerSource for Flipping {
    fn size(&self) -> u64 {
        self.clean.len() as u64
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        let (offset, end) = (span.offset(), span.end());
        let mut out = self.clean[offset as usize..end as usize].to_vec();
        if (offset..end).contains(&self.flip_at) {
            self.reads_covering.fetch_add(1, Ordering::SeqCst);
            let left = self.bad_reads.load(Ordering::SeqCst);
            if left > 0 {
                if left != u32::MAX {
                    self.bad_reads.store(left - 1, Ordering::SeqCst);
                }
                out[(self.flip_at - offset) as usize] ^= 0x40;
            }
        }
        Ok(Bytes::from(out))
    }

    fn describe(&self) -> String {
        "flipping".into()
    }

    async fn invalidate(&self, offset: u64, len: u64) {
        self.invalidated.lock().push((offset, len));
    }
}

const LEN: usize = 5 * 4096 + 123;

/// A ZFile of `LEN` sample bytes and the stored span of block 2.
async fn fixture() -> (Vec<u8>, Vec<u8>, (u64, u64)) {
    let data = sample_data(LEN, 7);
    let file = make_zfile(&data, WriterOptions::default(), true);
    let span = ZFileReader::open(mem(file.clone()))
        .await
        .unwrap()
        .block_span(2)
        .unwrap();
    (data, file, span)
}

#[tokio::test]
async fn a_block_damaged_once_is_refetched_and_read_correctly() {
    let (data, file, (s, e)) = fixture().await;
    let source = Flipping::new(file, (s + e) / 2, 1);
    let reader = ZFileReader::open(Arc::clone(&source) as Arc<dyn LayerSource>)
        .await
        .unwrap();
    // A read spanning blocks 1..=3: one bad fetch, one invalidation of the fetched range,
    // then the right bytes.
    let got = reader.read_exact_at(4096 + 100, 3 * 4096).await.unwrap();
    assert_eq!(&got[..], &data[4096 + 100..4 * 4096 + 100]);
    assert_eq!(source.reads_covering.load(Ordering::SeqCst), 2);
    let invalidated = source.invalidated.lock().clone();
    assert_eq!(invalidated.len(), 1, "{invalidated:?}");
    let (off, len) = invalidated[0];
    assert!(
        off <= s && off + len >= e,
        "{invalidated:?} covers block 2 {s}..{e}"
    );
}

#[tokio::test]
async fn a_block_that_stays_bad_fails_after_exactly_one_retry() {
    let (data, file, (s, e)) = fixture().await;
    let source = Flipping::new(file, (s + e) / 2, u32::MAX);
    let reader = ZFileReader::open(Arc::clone(&source) as Arc<dyn LayerSource>)
        .await
        .unwrap();
    let err = reader.read_exact_at(2 * 4096, 10).await.unwrap_err();
    assert!(matches!(err, SourceError::Corrupt(_)), "{err}");
    let inner = err.finding().and_then(|e| e.downcast_ref::<ZFileError>());
    assert!(
        matches!(
            inner,
            Some(ZFileError::Block {
                index: 2,
                fault: BlockFault::Crc { .. }
            })
        ),
        "{err}"
    );
    assert_eq!(source.reads_covering.load(Ordering::SeqCst), 2, "no loop");
    // Invalidated before the retry, and again so the known-bad bytes are not kept.
    assert_eq!(source.invalidated.lock().len(), 2);
    // Neighbouring blocks are unaffected and need no retry.
    let got = reader.read_exact_at(0, 4096).await.unwrap();
    assert_eq!(&got[..], &data[..4096]);
    assert_eq!(source.invalidated.lock().len(), 2);
}

#[tokio::test]
async fn invalidation_passes_through_a_tar_wrapper_shifted() {
    let (data, file, (s, e)) = fixture().await;
    let wrapped = crate::zfile::tar::build::ustar(&file);
    let tar_offset = 512u64;
    assert_eq!(&wrapped[512..512 + file.len()], &file[..]);
    let source = Flipping::new(wrapped, tar_offset + (s + e) / 2, 1);
    let payload = open_payload(Arc::clone(&source) as Arc<dyn LayerSource>)
        .await
        .unwrap();
    assert_eq!(payload.tar_offset, Some(tar_offset));
    let reader = payload.decompressed().await.unwrap();
    let got = reader.read_exact_at(2 * 4096, 4096).await.unwrap();
    assert_eq!(&got[..], &data[2 * 4096..3 * 4096]);
    let invalidated = source.invalidated.lock().clone();
    assert_eq!(invalidated, vec![(tar_offset + s, e - s)]);
}
