//! Memory budgets: bytes that sessions may hold for write data being collected and for Data-In
//! that was read but not yet sent.
//!
//! A [`MemoryBudget`] is a counter with a limit. Taking from it gives a [`Hold`] that gives the
//! bytes back when dropped, wherever that happens: a write's hold lives in its task until the
//! task finishes, a read's hold is attached to its Data-In bytes ([`Hold::attach`]), so it is
//! given back when the last PDU carrying them has been written to the socket (or dropped with
//! the connection). The budget thus follows the memory itself, not a guess at when it is freed.
//!
//! Nothing here blocks or sleeps: a session that cannot take what it needs leaves the command
//! waiting (holding its CmdSN slot, so the window stops opening), and its driver waits on
//! [`MemoryBudget::subscribe`] for bytes to come back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

/// A byte budget shared by whoever holds an `Arc` of it.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    /// Drivers waiting for bytes to come back; releases only signal when there are some.
    waiters: AtomicUsize,
    released: watch::Sender<u64>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (at least 1).
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit: limit.max(1),
            used: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            released: watch::Sender::new(0),
        })
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes currently held.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` if they fit under the limit. A request larger than the whole budget takes
    /// all of it once nothing else is held, so it can still run (alone).
    pub fn try_take(self: &Arc<Self>, bytes: u64) -> Option<Hold> {
        let bytes = bytes.min(self.limit);
        self.try_add(bytes).then(|| Hold {
            budget: Some(self.clone()),
            bytes,
        })
    }

    /// Counts `bytes` more as used if they fit under the limit.
    fn try_add(&self, bytes: u64) -> bool {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used.saturating_add(bytes) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// A receiver that changes whenever bytes come back while someone is waiting; see
    /// [`Waiting`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.released.subscribe()
    }

    /// Marks the caller as waiting for releases until the returned guard is dropped.
    pub fn wait(self: &Arc<Self>) -> Waiting {
        self.waiters.fetch_add(1, Ordering::AcqRel);
        Waiting {
            budget: self.clone(),
        }
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.released.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Registration as a waiter of a [`MemoryBudget`]; releases signal its subscribers only while
/// one exists.
#[derive(Debug)]
pub struct Waiting {
    budget: Arc<MemoryBudget>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.budget.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes taken from a budget; given back on drop.
#[derive(Debug, Default)]
pub struct Hold {
    budget: Option<Arc<MemoryBudget>>,
    bytes: u64,
}

impl Hold {
    /// A hold of nothing (for commands exempt from a budget).
    pub fn none() -> Hold {
        Hold::default()
    }

    /// A hold of nothing yet on `budget`, to grow and shrink with what it covers.
    pub fn empty(budget: &Arc<MemoryBudget>) -> Hold {
        Hold {
            budget: Some(budget.clone()),
            bytes: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `bytes` more if they fit; a hold on no budget always grows.
    pub fn try_grow(&mut self, bytes: u64) -> bool {
        let fits = self.budget.as_ref().map_or(true, |b| b.try_add(bytes));
        if fits {
            self.bytes += bytes;
        }
        fits
    }

    /// Gives `bytes` of the hold back now.
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        if let Some(budget) = &self.budget {
            budget.give_back(bytes);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.give_back(self.bytes);
        }
    }
}

/// Bytes that keep holds alive for as long as they are referenced.
struct Attached<H> {
    data: Bytes,
    _hold: H,
}

impl<H> AsRef<[u8]> for Attached<H> {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Several holds attached to the same bytes (the session's and the global budget).
#[derive(Debug, Default)]
pub struct Holds(pub Vec<Hold>);

impl Holds {
    /// Returns `data` such that the holds are given back when the last clone or slice of it
    /// is dropped; empty data gives them back at once.
    pub fn attach(self, data: Bytes) -> Bytes {
        if data.is_empty() || self.0.iter().all(|h| h.budget.is_none()) {
            return data;
        }
        Bytes::from_owner(Attached { data, _hold: self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back_on_drop() {
        let b = MemoryBudget::new(100);
        let a = b.try_take(60).unwrap();
        assert!(b.try_take(41).is_none());
        let c = b.try_take(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn an_oversized_request_takes_the_whole_budget_when_alone() {
        let b = MemoryBudget::new(100);
        let small = b.try_take(1).unwrap();
        assert!(b.try_take(1000).is_none(), "not while anything is held");
        drop(small);
        let big = b.try_take(1000).unwrap();
        assert_eq!((big.bytes(), b.used()), (100, 100));
    }

    #[test]
    fn attached_hold_lives_as_long_as_any_slice() {
        let b = MemoryBudget::new(1 << 20);
        let hold = b.try_take(4096).unwrap();
        let data = Holds(vec![hold]).attach(Bytes::from(vec![7u8; 4096]));
        let first = data.slice(..1024);
        let rest = data.slice(1024..);
        drop(data);
        assert_eq!(b.used(), 4096);
        drop(first);
        assert_eq!(b.used(), 4096);
        assert_eq!(rest[0], 7);
        drop(rest);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_hold_grows_within_the_limit_and_shrinks() {
        let b = MemoryBudget::new(10);
        let mut h = Hold::empty(&b);
        assert!(h.try_grow(6));
        assert!(!h.try_grow(5));
        assert!(h.try_grow(4));
        h.shrink(7);
        assert_eq!((h.bytes(), b.used()), (3, 3));
        drop(h);
        assert_eq!(b.used(), 0);
        let mut free = Hold::none();
        assert!(free.try_grow(1 << 40), "no budget, no limit");
    }

    #[test]
    fn empty_data_gives_the_hold_back_at_once() {
        let b = MemoryBudget::new(10);
        let hold = b.try_take(10).unwrap();
        let data = Holds(vec![hold]).attach(Bytes::new());
        assert!(data.is_empty());
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn releases_signal_only_waiters() {
        let b = MemoryBudget::new(10);
        let mut rx = b.subscribe();
        drop(b.try_take(5).unwrap());
        assert!(!rx.has_changed().unwrap(), "nobody waited");
        let waiting = b.wait();
        drop(b.try_take(5).unwrap());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        drop(waiting);
        drop(b.try_take(5).unwrap());
        assert!(!rx.has_changed().unwrap());
    }
}
