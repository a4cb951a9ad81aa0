//! The cached read path of a remote blob, in named parts.
//!
//! A read through [`CachedSource`] goes:
//! 1. [`plan`]: which aligned refill units (256 KiB by default) the read covers, and which
//!    bytes of each it needs;
//! 2. [`tiers`]: each unit looked up in memory, then on disk, with the admission rules
//!    (a small read takes only its part from disk and leaves memory alone);
//! 3. [`inflight`]: the missing units claimed in the daemon-wide in-flight table, or joined
//!    when another reader (even through another image sharing the layer) already fetches
//!    them: single-flight, kept apart from the data tiers;
//! 4. [`fetch`]: claimed adjacent units fetched in one ranged request and handed to memory,
//!    to the waiting readers, then to disk (the copy and admission rules live there);
//! 5. [`cached`]: the composition, which cuts the units to the read and joins them;
//! 6. [`readahead`]: a stream of sequential reads that miss gets the units ahead of it fetched
//!    in the background (bounded, one batch per blob, nothing for random reads);
//! 7. [`priority`]: background reads (a trace replay) start no fetch while a foreground miss
//!    is being fetched.
//!
//! A failed fetch caches nothing and fails every reader waiting on it with the same typed
//! error; a cancelled fetch releases its waiters to fetch for themselves.

mod cached;
mod fetch;
mod inflight;
mod plan;
mod priority;
mod readahead;
mod tiers;

#[cfg(test)]
mod tests;

pub use cached::CachedSource;
pub use priority::background;
#[cfg(test)]
pub(crate) use priority::is_background;
pub use tiers::{CacheStats, CacheTiers};
