//! [`CachedSource`]: a remote blob read through the tiers, the read path's composition.
//!
//! A read is four named steps: plan the units it covers ([`super::plan`]), look each up in
//! memory then disk ([`super::tiers`]), fill the missing ones by claiming and fetching them or
//! waiting for the reader that already does ([`super::inflight`], [`super::fetch`]), then cut
//! each unit to the needed bytes and join them. The range and the result's length are checked
//! once, by [`LayerSource::read_exact_at`]. After a background download completes, reads are
//! served from the verified local file instead.

use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};

use super::inflight::{Claim, Slot};
use super::plan::{plan, unit_len, PlannedUnit};
use super::priority::is_background;
use super::readahead::ReadAhead;
use super::tiers::{bump, CacheTiers, Found};
use crate::block::file::{read_cached, read_rest};
use crate::cache::key::{BlobId, UnitKey};
use crate::source::{LayerSource, SourceResult, Span};

/// A blob read through the cache tiers, falling back to `inner` for missing units.
pub struct CachedSource {
    inner: Arc<dyn LayerSource>,
    blob: BlobId,
    tiers: Arc<CacheTiers>,
    size: u64,
    local: RwLock<Option<Arc<std::fs::File>>>,
    /// Cleared when the downloaded copy's file system refuses `RWF_NOWAIT` reads.
    nowait: AtomicBool,
    /// This source, for the read-ahead task to hold while it runs (empty: no read-ahead).
    me: Weak<CachedSource>,
    /// Sequential-stream detection ([`super::readahead`]).
    readahead: Mutex<ReadAhead>,
}

/// Reports a read-ahead batch done however its task ends (finished, failed or dropped).
struct BatchDone(Arc<CachedSource>);

impl Drop for BatchDone {
    fn drop(&mut self) {
        self.0.readahead.lock().finished();
    }
}

/// The largest read of the downloaded copy tried on the calling thread (as for a local
/// layer file, [`crate::cache::file::FileSource`]).
const LOCAL_INLINE_MAX: usize = 1 << 20;

impl CachedSource {
    /// Caches `inner` (a blob named by `digest`) in `tiers`, without read-ahead.
    pub fn new(inner: Arc<dyn LayerSource>, digest: &str, tiers: Arc<CacheTiers>) -> Self {
        Self::build(inner, digest, tiers, Weak::new())
    }

    /// Caches `inner` (a blob named by `digest`) in `tiers`, with adaptive read-ahead for
    /// sequential reads that miss ([`super::readahead`]).
    pub fn shared(inner: Arc<dyn LayerSource>, digest: &str, tiers: Arc<CacheTiers>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(inner, digest, tiers, me.clone()))
    }

    fn build(
        inner: Arc<dyn LayerSource>,
        digest: &str,
        tiers: Arc<CacheTiers>,
        me: Weak<CachedSource>,
    ) -> Self {
        let size = inner.size();
        let unit = tiers.unit;
        let readahead = ReadAhead::new(size.div_ceil(unit), tiers.read_ahead / unit);
        Self {
            inner,
            blob: BlobId::from_digest(digest),
            tiers,
            size,
            local: RwLock::new(None),
            nowait: AtomicBool::new(true),
            me,
            readahead: Mutex::new(readahead),
        }
    }

    /// The uncached source behind the tiers.
    pub fn inner(&self) -> &Arc<dyn LayerSource> {
        &self.inner
    }

    /// The blob's cache identity.
    pub fn blob_id(&self) -> &BlobId {
        &self.blob
    }

    /// The tiers this blob is cached in.
    pub(super) fn tiers(&self) -> &CacheTiers {
        &self.tiers
    }

    /// Serves every later read from `file`, a complete, verified copy of the blob.
    pub fn use_local_file(&self, file: std::fs::File) {
        *self.local.write() = Some(Arc::new(file));
    }

    /// Whether reads are served from a downloaded local copy.
    pub fn is_local(&self) -> bool {
        self.local.read().is_some()
    }

    fn key(&self, index: u64) -> UnitKey {
        UnitKey {
            blob: self.blob.clone(),
            index,
        }
    }

    /// Evicts the units covering `[offset, offset + len)` from both tiers, so the next read
    /// refetches them (for a block whose checksum failed above the cache).
    pub async fn invalidate_range(&self, offset: u64, len: u64) {
        if len == 0 || offset >= self.size {
            return;
        }
        let end = offset.saturating_add(len).min(self.size);
        let (first, last) = (offset / self.tiers.unit, (end - 1) / self.tiers.unit);
        for index in first..=last {
            self.tiers.forget(self.key(index)).await;
        }
    }

    /// Reads from the downloaded copy: from the page cache on this thread when it can, the
    /// rest on a blocking thread.
    async fn read_local(
        &self,
        file: Arc<std::fs::File>,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Bytes> {
        let mut buf = BytesMut::with_capacity(len);
        if len <= LOCAL_INLINE_MAX && read_cached(&file, &mut buf, len, offset, &self.nowait) {
            return Ok(buf.freeze());
        }
        crate::sys::blocking(move || {
            read_rest(&file, &mut buf, len, offset)?;
            Ok(buf.freeze())
        })
        .await
    }

    /// Tells the read-ahead about a read of `plan` (`missed`: some unit was in no tier) and
    /// starts the batch it asks for in the background.
    fn note_read(&self, plan: &[PlannedUnit], missed: bool) {
        let (Some(first), Some(last)) = (plan.first(), plan.last()) else {
            return;
        };
        let (first, last) = (first.index, last.index);
        let batch = {
            let mut ra = self.readahead.lock();
            let counts = missed || ra.in_window(first, last);
            ra.observe(first, last, counts)
        };
        let Some(batch) = batch else {
            return;
        };
        let (Some(this), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            self.readahead.lock().finished();
            return;
        };
        // Claimed now, before the read returns: the stream's next read joins these fetches
        // instead of racing them with fetches of its own.
        let runs = self.claim_batch(batch);
        runtime.spawn(async move {
            let done = BatchDone(this);
            done.0.fetch_batch(runs).await;
        });
    }

    /// Claims the units of `batch` that no tier holds and nobody fetches, grouped into runs
    /// of adjacent units.
    fn claim_batch(&self, batch: Range<u64>) -> Vec<Vec<Claim>> {
        let mut runs: Vec<Vec<Claim>> = Vec::new();
        let mut prev_mine = false;
        for index in batch {
            let key = self.key(index);
            if unit_len(self.size, self.tiers.unit, index) == 0 || self.tiers.holds(&key) {
                prev_mine = false;
                continue;
            }
            let memory = &self.tiers.memory;
            let lookup = key.clone();
            prev_mine = match self.tiers.inflight.claim(key, || memory.get(&lookup)) {
                Slot::Mine(c) => {
                    match runs.last_mut() {
                        Some(run) if prev_mine => run.push(c),
                        _ => runs.push(vec![c]),
                    }
                    true
                }
                Slot::Ready(_) | Slot::Theirs(_) => false,
            };
        }
        runs
    }

    /// Fetches claimed runs, one request each; after a failure the rest are released for the
    /// stream's own reads to fetch (or fail on).
    async fn fetch_batch(&self, runs: Vec<Vec<Claim>>) {
        for run in runs {
            let units = run.len() as u64;
            match self.fetch_run(run).await {
                Ok(_) => bump(&self.tiers.counters.readahead_units, units),
                Err(e) => {
                    tracing::debug!(blob = %self.describe(), error = %e, "read-ahead failed");
                    return;
                }
            }
        }
    }

    /// Fills every empty slot of `plan`: each round claims the missing units, fetches the
    /// claimed ones (adjacent ones in one request) and waits for those another reader is
    /// fetching. A unit whose fetcher was cancelled comes back empty and is claimed again in
    /// the next round; a failed fetch, this reader's or another's, fails the read.
    /// A `background` reader waits for its turn before each round's claims, a foreground one
    /// holds the gate while it fetches ([`super::priority`]).
    async fn fill_missing(
        &self,
        plan: &[PlannedUnit],
        slots: &mut [Option<Found>],
        background: bool,
    ) -> SourceResult<()> {
        while slots.iter().any(Option::is_none) {
            if background {
                self.tiers.gate.background_turn().await;
            }
            let mut runs: Vec<(usize, Vec<Claim>)> = Vec::new();
            let mut waits = Vec::new();
            let mut prev_mine = false;
            for (i, (unit, slot)) in plan.iter().zip(slots.iter_mut()).enumerate() {
                if slot.is_some() {
                    prev_mine = false;
                    continue;
                }
                let key = self.key(unit.index);
                let memory = &self.tiers.memory;
                let lookup = key.clone();
                prev_mine = match self.tiers.inflight.claim(key, || memory.get(&lookup)) {
                    Slot::Ready(b) => {
                        *slot = Some(Found::Whole(b));
                        false
                    }
                    Slot::Mine(c) => {
                        match runs.last_mut() {
                            Some((_, run)) if prev_mine => run.push(c),
                            _ => runs.push((i, vec![c])),
                        }
                        true
                    }
                    Slot::Theirs(w) => {
                        waits.push((i, w));
                        false
                    }
                };
            }
            // Held while this reader's own fetches are on the wire, not while it waits for
            // another reader's.
            let foreground =
                (!background && !runs.is_empty()).then(|| self.tiers.gate.foreground());
            for (base, run) in runs {
                for (j, b) in self.fetch_run(run).await?.into_iter().enumerate() {
                    slots[base + j] = Some(Found::Whole(b));
                }
            }
            drop(foreground);
            for (i, waiter) in waits {
                match waiter.outcome().await {
                    Some(Ok(b)) => {
                        bump(&self.tiers.counters.shared_fetches, 1);
                        slots[i] = Some(Found::Whole(b));
                    }
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
        }
        Ok(())
    }
}

/// Cuts each unit to its needed bytes and joins them; a read inside one unit is a slice of
/// it, without a copy.
fn assemble(plan: &[PlannedUnit], slots: Vec<Option<Found>>, len: usize) -> Bytes {
    let mut pieces: Vec<Bytes> = plan
        .iter()
        .zip(slots)
        .filter_map(|(unit, slot)| slot.map(|found| found.needed(unit)))
        .collect();
    if pieces.len() == 1 {
        return pieces.swap_remove(0);
    }
    let mut out = BytesMut::with_capacity(len);
    for p in &pieces {
        out.extend_from_slice(p);
    }
    out.freeze()
}

#[async_trait]
impl LayerSource for CachedSource {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        let local = self.local.read().clone();
        if let Some(file) = local {
            return Ok(self.read_local(file, span.offset(), span.len()).await?);
        }
        let plan = plan(span, self.size, self.tiers.unit);
        let mut slots = Vec::with_capacity(plan.len());
        for unit in &plan {
            slots.push(self.tiers.lookup(&self.key(unit.index), unit).await);
        }
        let background = is_background();
        if !background {
            self.note_read(&plan, slots.iter().any(Option::is_none));
        }
        self.fill_missing(&plan, &mut slots, background).await?;
        // Every slot is filled; were one not, the short result would be refused by
        // `read_exact_at` as a wrong length, never served as data.
        Ok(assemble(&plan, slots, span.len()))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn invalidate(&self, offset: u64, len: u64) {
        self.invalidate_range(offset, len).await;
    }
}
