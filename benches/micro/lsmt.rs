//! LSMT extent-map lookups: the merged, sorted, disjoint record array of a layer stack, queried
//! at random sectors. `binary_search` is the bare search (comparable with overlaybd's figures
//! for `std::lower_bound`: 18.3, 12.8, 8.6 and 5.6 million lookups/s at 1k, 10k, 100k and 1M
//! segments); `binary_search_chained` is the same with each query waiting for the previous
//! answer; `lookup_*` is the full `index::lookup` the read path calls, which also collects
//! and clips the covering records.

use divan::counter::ItemsCount;
use divan::Bencher;
use overlaybd_target::overlaybd::index::{first_ending_after, lookup, Record};
use overlaybd_target::overlaybd::stack::{merge_indexes, MergeInput};

/// Merged map sizes, in records.
const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];
/// Layers stacked to produce the merged map.
const LAYERS: u8 = 4;
/// Queries per timed iteration (so the timer's resolution does not matter).
const QUERIES: usize = 4096;

/// xorshift64: deterministic, dependency-free query and layout generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One layer: `count` extents of 8..=128 sectors with gaps of 0..=64 sectors, as a layer of
/// scattered 4 KiB..64 KiB writes looks.
fn layer(rng: &mut Rng, count: usize) -> Vec<Record> {
    let mut at = 0;
    (0..count)
        .map(|i| {
            at += rng.below(65);
            let len = 8 + rng.below(121) as u32;
            let r = Record::data(at, len, i as u64 * 128);
            at += u64::from(len);
            r
        })
        .collect()
}

/// A merged map of exactly `n` records from [`LAYERS`] overlapping layers.
fn merged_map(n: usize) -> Vec<Record> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    let layers: Vec<Vec<Record>> = (0..LAYERS).map(|_| layer(&mut rng, n)).collect();
    let inputs: Vec<MergeInput<'_>> = layers
        .iter()
        .zip(0..)
        .map(|(records, tag)| MergeInput { records, tag })
        .collect();
    let mut merged = merge_indexes(&inputs);
    assert!(
        merged.len() >= n,
        "merge of {n}-record layers gave {}",
        merged.len()
    );
    merged.truncate(n);
    merged
}

/// Random query sectors over the mapped span of `map`.
fn queries(map: &[Record]) -> Vec<u64> {
    let end = map.last().map_or(1, Record::end);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    (0..QUERIES).map(|_| rng.below(end)).collect()
}

#[divan::bench(args = SIZES)]
fn binary_search(bencher: Bencher, n: usize) {
    let map = merged_map(n);
    let qs = queries(&map);
    bencher.counter(ItemsCount::new(QUERIES)).bench_local(|| {
        qs.iter()
            .map(|&q| first_ending_after(divan::black_box(&map), q))
            .fold(0usize, usize::wrapping_add)
    });
}

/// Each query depends on the previous answer, so searches cannot overlap in the CPU: the
/// latency-bound rate, closer to one lookup per request on a busy server.
#[divan::bench(args = SIZES)]
fn binary_search_chained(bencher: Bencher, n: usize) {
    let map = merged_map(n);
    let qs = queries(&map);
    bencher.counter(ItemsCount::new(QUERIES)).bench_local(|| {
        qs.iter().fold(0usize, |prev, &q| {
            // `prev & 1` is 0 or 1: it perturbs nothing but orders the searches.
            first_ending_after(divan::black_box(&map), q + (prev & 1) as u64)
        })
    });
}

/// 4 KiB point reads (8 sectors).
#[divan::bench(args = SIZES)]
fn lookup_4k(bencher: Bencher, n: usize) {
    bench_lookup(bencher, n, 8);
}

/// 128 KiB range reads (256 sectors, several records each).
#[divan::bench(args = SIZES)]
fn lookup_128k(bencher: Bencher, n: usize) {
    bench_lookup(bencher, n, 256);
}

fn bench_lookup(bencher: Bencher, n: usize, sectors: u64) {
    let map = merged_map(n);
    let qs = queries(&map);
    bencher.counter(ItemsCount::new(QUERIES)).bench_local(|| {
        qs.iter()
            .map(|&q| lookup(divan::black_box(&map), q, sectors).len())
            .sum::<usize>()
    });
}
