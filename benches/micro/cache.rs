//! The remote-layer cache hit path: a read served by `CachedSource` from the memory tier
//! (the refill unit is already held), and the bare memory-tier lookup under it.

use std::sync::Arc;

use bytes::Bytes;
use divan::counter::BytesCount;
use divan::Bencher;
use overlaybd_target::cache::key::{BlobId, UnitKey};
use overlaybd_target::cache::memory::MemoryTier;
use overlaybd_target::cache::{CacheTiers, CachedSource};
use overlaybd_target::source::BytesSource;
use overlaybd_target::source::LayerSource;

const BLOB: usize = 16 << 20;
/// Refill unit (overlaybd's default refill size).
const UNIT: u64 = 1 << 20;
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
/// Read sizes: a 4 KiB block inside one unit, and 256 KiB straddling two units.
const READS: [usize; 2] = [4096, 256 * 1024];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

#[divan::bench(args = READS)]
fn cached_source_hit(bencher: Bencher, len: usize) {
    let rt = runtime();
    let tiers = CacheTiers::new(64 << 20, None, UNIT).expect("cache tiers");
    let blob: Vec<u8> = (0..BLOB).map(|i| (i % 253) as u8).collect();
    let inner = Arc::new(BytesSource::new(blob, "blob"));
    let source = CachedSource::new(inner, DIGEST, tiers);
    // Fill every unit once, so the timed reads are all hits.
    rt.block_on(source.read_exact_at(0, BLOB))
        .expect("warm-up read");
    // Centred on a unit boundary: a 4 KiB read stays inside one unit only if it is smaller
    // than the unit, so place it mid-unit; the 256 KiB read straddles units 3 and 4.
    let offset = if len < 8192 {
        3 * UNIT + UNIT / 2
    } else {
        4 * UNIT - len as u64 / 2
    };
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        rt.block_on(source.read_exact_at(divan::black_box(offset), len))
            .expect("cached read")
    });
}

#[divan::bench]
fn memory_tier_get(bencher: Bencher) {
    let tier = MemoryTier::new(64 << 20, UNIT);
    let blob = BlobId::from_digest(DIGEST);
    for index in 0..16 {
        tier.insert(
            UnitKey {
                blob: blob.clone(),
                index,
            },
            Bytes::from(vec![0u8; UNIT as usize]),
        );
    }
    let key = UnitKey { blob, index: 7 };
    bencher.bench_local(|| tier.get(divan::black_box(&key)).map(|b| b.len()));
}
