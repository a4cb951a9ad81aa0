//! The in-flight table: which units are being fetched right now, and by whom.
//!
//! Single-flight state lives here, apart from the data tiers (memory and disk hold bytes;
//! this table holds only promises of bytes). The table is shared by every cached blob of the
//! daemon, so concurrent readers of one unit, even through different images sharing a layer,
//! wait for one fetch instead of issuing their own.
//!
//! The rules, each pinned by a test below:
//! - The first reader of a missing unit gets a [`Claim`] and must fetch; later readers get a
//!   [`Waiter`] on that claim.
//! - The leader publishes its outcome, bytes or error, to every waiter; a failure is shared,
//!   not retried by each waiter (a failing registry sees one request, not one per reader).
//! - Dropping a claim (done, failed or cancelled) removes it from the table. A waiter whose
//!   leader vanished without publishing learns that ([`Waiter::outcome`] is `None`) and
//!   claims the unit itself, so a cancelled reader never strands the others.
//! - The caller's check of the memory tier runs under the table's lock, so a unit published
//!   between a reader's first look and its claim is found, not fetched twice.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::cache::key::UnitKey;
use crate::source::SourceError;

/// The outcome of one unit fetch as the readers waiting on it see it.
pub(super) type UnitResult = Result<Bytes, SourceError>;
type Outcome = watch::Receiver<Option<UnitResult>>;

/// Units being fetched, each with the channel its outcome will be published on.
#[derive(Default)]
pub(super) struct InFlight {
    table: Mutex<HashMap<UnitKey, Outcome>>,
}

/// What a reader gets for a missing unit.
pub(super) enum Slot {
    /// The unit turned up (in memory) after all.
    Ready(Bytes),
    /// This reader fetches the unit.
    Mine(Claim),
    /// Another reader fetches it; wait for its outcome.
    Theirs(Waiter),
}

impl InFlight {
    /// Units being fetched now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// Claims `key` or joins the reader already fetching it. `ready` looks the unit up in
    /// memory under the table's lock first: a fetch may have finished since the caller's
    /// first look.
    pub(super) fn claim(
        self: &Arc<Self>,
        key: UnitKey,
        ready: impl FnOnce() -> Option<Bytes>,
    ) -> Slot {
        let mut table = self.table.lock();
        if let Some(b) = ready() {
            return Slot::Ready(b);
        }
        if let Some(rx) = table.get(&key) {
            return Slot::Theirs(Waiter(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        table.insert(key.clone(), rx);
        Slot::Mine(Claim {
            key,
            tx,
            table: Arc::clone(self),
        })
    }
}

/// A unit this reader has claimed and must fetch; dropping it (done or cancelled) releases
/// the claim.
pub(super) struct Claim {
    key: UnitKey,
    tx: watch::Sender<Option<UnitResult>>,
    table: Arc<InFlight>,
}

impl Claim {
    /// The claimed unit.
    pub(super) fn key(&self) -> &UnitKey {
        &self.key
    }

    /// Hands `outcome` to every reader waiting on this claim (and any that join until it is
    /// dropped).
    pub(super) fn publish(&self, outcome: UnitResult) {
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut table = self.table.table.lock();
        // Only this claim's own entry: never one made by a later claim of the same unit.
        if table
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            table.remove(&self.key);
        }
    }
}

/// A reader waiting for another reader's fetch of a unit.
pub(super) struct Waiter(Outcome);

impl Waiter {
    /// The leader's outcome, or `None` when its claim was released without one (its reader
    /// was cancelled): then the unit is free to claim again.
    pub(super) async fn outcome(mut self) -> Option<UnitResult> {
        match self.0.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::BlobId;
    use std::time::Duration;

    fn key(index: u64) -> UnitKey {
        UnitKey {
            blob: BlobId::from_digest(
                "sha256:2222222222222222222222222222222222222222222222222222222222222222",
            ),
            index,
        }
    }

    fn mine(slot: Slot) -> Claim {
        match slot {
            Slot::Mine(c) => c,
            _ => panic!("expected a claim"),
        }
    }

    fn theirs(slot: Slot) -> Waiter {
        match slot {
            Slot::Theirs(w) => w,
            _ => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn waiters_get_the_leaders_bytes_and_the_claim_is_released() {
        let table = Arc::new(InFlight::default());
        let claim = mine(table.claim(key(0), || None));
        let waiters = [
            theirs(table.claim(key(0), || None)),
            theirs(table.claim(key(0), || None)),
        ];
        assert!(
            matches!(table.claim(key(1), || None), Slot::Mine(_)),
            "other units are free"
        );
        claim.publish(Ok(Bytes::from_static(b"unit")));
        drop(claim);
        for w in waiters {
            assert_eq!(&w.outcome().await.unwrap().unwrap()[..], b"unit");
        }
        assert_eq!(table.len(), 0);
        assert!(matches!(table.claim(key(0), || None), Slot::Mine(_)));
    }

    #[tokio::test]
    async fn a_failed_fetch_fails_every_waiter_with_the_same_kind() {
        let table = Arc::new(InFlight::default());
        let claim = mine(table.claim(key(0), || None));
        let waiter = theirs(table.claim(key(0), || None));
        claim.publish(Err(SourceError::NotFound("HTTP 404".into())));
        drop(claim);
        let outcome = waiter.outcome().await.expect("published");
        assert!(matches!(outcome, Err(SourceError::NotFound(m)) if m == "HTTP 404"));
        assert_eq!(table.len(), 0, "a failure is not kept");
    }

    #[tokio::test]
    async fn a_cancelled_leader_releases_its_waiters_to_claim_again() {
        let table = Arc::new(InFlight::default());
        let leader = tokio::spawn({
            let table = Arc::clone(&table);
            async move {
                let _claim = mine(table.claim(key(0), || None));
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        while table.len() == 0 {
            tokio::task::yield_now().await;
        }
        let waiter = theirs(table.claim(key(0), || None));
        leader.abort();
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiter.outcome())
            .await
            .expect("the waiter is not stranded");
        assert!(outcome.is_none(), "no outcome: the leader vanished");
        assert!(matches!(table.claim(key(0), || None), Slot::Mine(_)));
    }

    #[tokio::test]
    async fn memory_is_checked_under_the_lock_before_claiming_or_waiting() {
        let table = Arc::new(InFlight::default());
        let _claim = mine(table.claim(key(0), || None));
        let found = table.claim(key(0), || Some(Bytes::from_static(b"cached")));
        assert!(matches!(found, Slot::Ready(b) if &b[..] == b"cached"));
        assert!(matches!(
            table.claim(key(1), || Some(Bytes::new())),
            Slot::Ready(_)
        ));
        assert_eq!(table.len(), 1, "a found unit is not claimed");
    }

    #[tokio::test]
    async fn a_late_drop_of_an_old_claim_keeps_the_new_one() {
        let table = Arc::new(InFlight::default());
        let old = mine(table.claim(key(0), || None));
        // Forget the old entry as an invalidation would, then let a new reader claim.
        table.table.lock().remove(&key(0));
        let new = mine(table.claim(key(0), || None));
        drop(old);
        assert_eq!(table.len(), 1, "the new claim stays");
        let waiter = theirs(table.claim(key(0), || None));
        new.publish(Ok(Bytes::from_static(b"new")));
        drop(new);
        assert_eq!(&waiter.outcome().await.unwrap().unwrap()[..], b"new");
    }
}
