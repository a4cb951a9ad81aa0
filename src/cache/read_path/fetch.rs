//! Fetching claimed units from the source, and where fetched bytes go.
//!
//! A run of adjacent units this reader claimed is fetched in one ranged request (fewer round
//! trips to the registry). Then, per unit, in this order:
//! 1. into the memory tier, so a reader arriving now finds it without waiting;
//! 2. to the readers waiting on the claim;
//! 3. the claims are released, and only then
//! 4. to the disk tier, whose writes are slower and must not hold the waiters up.
//!
//! The copy rule ([`split_run`]): units of a merged fetch get their own buffers, because a
//! slice would keep the whole fetch alive after its siblings are evicted, beyond the memory
//! tier's bound; a single-unit fetch is kept as it came, without a copy. A failed fetch
//! publishes its error to every waiter and caches nothing.

use bytes::Bytes;

use super::cached::CachedSource;
use super::inflight::Claim;
use super::plan::unit_len;
use super::tiers::bump;
use crate::cache::key::UnitKey;
use crate::source::{LayerSource, SourceResult};

/// Cuts the bytes of a fetched run into units of `lens` bytes (their sum is `data.len()`):
/// copies when there are several, the buffer itself when there is one.
pub(super) fn split_run(data: &Bytes, lens: &[usize]) -> Vec<Bytes> {
    if let [_] = lens {
        return vec![data.clone()];
    }
    let mut at = 0;
    lens.iter()
        .map(|&n| {
            let unit = Bytes::copy_from_slice(&data[at..at + n]);
            at += n;
            unit
        })
        .collect()
}

impl CachedSource {
    /// Fetches a run of adjacent claimed units in one request, publishes each unit and returns
    /// them in order.
    pub(super) async fn fetch_run(&self, claims: Vec<Claim>) -> SourceResult<Vec<Bytes>> {
        let Some(first) = claims.first().map(|c| c.key().index) else {
            return Ok(Vec::new());
        };
        let (size, unit) = (self.size(), self.tiers().unit);
        let lens: Vec<usize> = claims
            .iter()
            .map(|c| unit_len(size, unit, c.key().index))
            .collect();
        let len: usize = lens.iter().sum();
        let counters = &self.tiers().counters;
        bump(&counters.source_requests, 1);
        crate::metrics::global().cache_misses(claims.len() as u64);
        let data = match self.inner().read_exact_at(first * unit, len).await {
            Ok(d) => d,
            Err(e) => {
                for c in &claims {
                    c.publish(Err(e.clone()));
                }
                return Err(e);
            }
        };
        bump(&counters.source_bytes, len as u64);
        let units = split_run(&data, &lens);
        for (claim, unit) in claims.iter().zip(&units) {
            self.tiers()
                .memory
                .insert(claim.key().clone(), unit.clone());
            claim.publish(Ok(unit.clone()));
        }
        self.tiers().publish_sizes();
        // Waiters have their data; release the claims before the slower disk writes.
        let keys: Vec<UnitKey> = claims.iter().map(|c| c.key().clone()).collect();
        drop(claims);
        for (key, unit) in keys.into_iter().zip(&units) {
            self.tiers().disk_put(key, unit.clone()).await;
        }
        Ok(units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_unit_is_kept_and_a_merged_run_is_copied_apart() {
        let data = Bytes::from((0..=255u8).collect::<Vec<_>>());
        let one = split_run(&data, &[256]);
        assert_eq!(one[0].as_ptr(), data.as_ptr(), "no copy for one unit");
        let three = split_run(&data, &[100, 100, 56]);
        assert_eq!(
            three.iter().map(Bytes::len).collect::<Vec<_>>(),
            [100, 100, 56]
        );
        assert_eq!(&three[1][..], &data[100..200]);
        assert_eq!(&three[2][..], &data[200..]);
        for unit in &three {
            let inside = data.as_ptr_range().contains(&unit.as_ptr());
            assert!(!inside, "a merged unit owns its buffer");
        }
    }
}
