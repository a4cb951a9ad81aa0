//! Foreground first: a background read (a trace replay) starts no fetch while a foreground
//! miss is being fetched, so the reads a host waits for are never queued behind prefetching
//! on the link to the registry.
//!
//! - **Which reads are background.** Those run inside [`background`], a task-local mark the
//!   replay workers set around their reads; every other read is foreground. The mark follows
//!   the read down through the layer stack and ZFile to [`super::CachedSource`] because they
//!   read their sources in the same task.
//! - **Foreground never waits.** A foreground read that fetches holds a [`Foreground`] guard
//!   for the duration of its fetches, and nothing else.
//! - **Background waits, holding nothing.** A background read with units to fetch waits in
//!   [`Gate::background_turn`] until no foreground fetch is in flight, and only then claims
//!   its units. While it waits it holds no claim, so a foreground read of the same unit
//!   fetches it at once instead of waiting behind it (no priority inversion).
//! - **Started fetches go on.** A background fetch already on the wire is not cancelled when a
//!   foreground miss arrives: its bytes are partly paid for, and the replay bounds how many
//!   there are (`prefetchConfig.concurrency`). Only new ones wait.
//! - **Starvation is accepted.** While foreground misses follow each other without a gap, the
//!   replay makes no progress: it only fetches what the host will read, and the host is
//!   fetching for itself. With a good trace the host's reads mostly find their units cached
//!   or in flight, so foreground misses are rare and short.
//! - Read-ahead fetches ([`super::readahead`]) serve a foreground stream and neither wait nor
//!   hold the gate; background reads do not drive read-ahead (the replay knows what to fetch).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

tokio::task_local! {
    static BACKGROUND: ();
}

/// Runs `read` as a background read: its fetches give way to foreground ones (module doc).
pub async fn background<F: Future>(read: F) -> F::Output {
    BACKGROUND.scope((), read).await
}

/// Whether the current task is inside [`background`].
pub(crate) fn is_background() -> bool {
    BACKGROUND.try_with(|_| ()).is_ok()
}

/// The daemon-wide priority gate of the fetch path (one per [`super::CacheTiers`]).
#[derive(Default)]
pub(super) struct Gate {
    /// Foreground reads with fetches in flight.
    foreground: AtomicUsize,
    /// Woken when `foreground` drops to zero.
    idle: Notify,
    /// Times a background read waited for foreground fetches.
    pub(super) waits: AtomicU64,
}

/// Marks a foreground read's fetches in flight; dropping it may let background reads go.
pub(super) struct Foreground<'a>(&'a Gate);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        if self.0.foreground.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Gate {
    /// A foreground read is about to fetch: background reads wait until the guard is dropped.
    pub(super) fn foreground(&self) -> Foreground<'_> {
        self.foreground.fetch_add(1, Ordering::SeqCst);
        Foreground(self)
    }

    /// Returns once no foreground fetch is in flight.
    pub(super) async fn background_turn(&self) {
        let mut counted = false;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a guard dropped between the check and the
            // await still wakes this waiter.
            idle.as_mut().enable();
            if self.foreground.load(Ordering::SeqCst) == 0 {
                return;
            }
            if !counted {
                counted = true;
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_mark_covers_the_scope_only() {
        assert!(!is_background());
        assert!(background(async { is_background() }).await);
        assert!(!is_background());
    }

    #[tokio::test]
    async fn background_waits_for_the_last_foreground_guard() {
        let gate = Arc::new(Gate::default());
        background_turn_now(&gate).await;
        let a = gate.foreground();
        let b = gate.foreground();
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.background_turn().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "one foreground fetch is still in flight"
        );
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the last guard went")
            .unwrap();
        assert_eq!(gate.waits.load(Ordering::Relaxed), 1);
    }

    async fn background_turn_now(gate: &Gate) {
        tokio::time::timeout(Duration::from_secs(5), gate.background_turn())
            .await
            .expect("no foreground fetch: no wait");
        assert_eq!(gate.waits.load(Ordering::Relaxed), 0);
    }
}
