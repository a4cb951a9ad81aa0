//! Adaptive read-ahead for a remote blob: a stream of sequential reads gets the units ahead
//! of it fetched in the background, so it stops paying one registry round trip per unit.
//!
//! Sans-IO: [`ReadAhead::observe`] sees the units each read covers and answers which units to
//! fetch ahead, if any; [`super::cached::CachedSource`] does the fetching. The rules:
//! - A read is *sequential* when it starts in the unit after the previous read's last unit,
//!   or in that last unit itself (reads smaller than a unit). Anything else is random I/O: the
//!   stream ends and nothing is fetched ahead, so random reads cost nothing extra.
//! - A stream starts once sequential reads have moved into [`START_STREAK`] new units in a row
//!   (three units read in order). A small file read whole spans a unit or two of a compressed
//!   blob, so those short runs fetch nothing ahead that would be thrown away.
//! - The window starts at [`FIRST_WINDOW`] units and doubles at each refill up to `max_units`
//!   (4 MiB by default).
//! - The units fetched ahead reach a window past the read; a new batch is asked for once the
//!   stream has consumed half of what was fetched ahead (so the next batch arrives before the
//!   stream catches up), and never twice for the same unit.
//! - Only one batch per blob is in flight ([`ReadAhead::finished`] reports it done); a
//!   stream that outruns the link waits for its own misses instead of piling up requests.
//!   With the window bound, a blob never holds more than `max_units` units in read-ahead.
//!
//! The caller decides whether a read counts: only reads that missed a unit, or that reached
//! into the units fetched ahead, start or continue a stream; a fully cached blob is never
//! fetched ahead.

use std::ops::Range;

/// New units sequential reads must move into, in a row, before a stream is fetched ahead.
pub(super) const START_STREAK: u32 = 2;

/// Units in the first batch of a stream.
pub(super) const FIRST_WINDOW: u64 = 2;

/// Read-ahead bound per blob by default, in bytes (divided into units by the caller;
/// `cacheConfig.readAheadKB` sets another).
pub(super) const MAX_BYTES: u64 = 4 << 20;

/// The read-ahead state of one blob.
#[derive(Debug, Clone)]
pub(super) struct ReadAhead {
    /// Units per batch at most.
    max_units: u64,
    /// Units in the blob.
    total_units: u64,
    /// The unit after the previous read's last unit (`u64::MAX`: no previous read).
    next: u64,
    /// New units sequential reads moved into, in a row.
    streak: u32,
    /// The current window in units (0: no stream).
    window: u64,
    /// Units below this were fetched ahead (or asked for) in this stream.
    ahead_end: u64,
    /// A batch is in flight.
    busy: bool,
}

impl ReadAhead {
    /// State for a blob of `total_units` units, fetching at most `max_units` ahead.
    pub(super) fn new(total_units: u64, max_units: u64) -> Self {
        ReadAhead {
            max_units,
            total_units,
            next: u64::MAX,
            streak: 0,
            window: 0,
            ahead_end: 0,
            busy: false,
        }
    }

    /// A read covered units `first..=last`; `counts` says whether it missed a unit or reached
    /// into the units fetched ahead. Returns the units to fetch ahead now, if any (the caller
    /// then reports [`ReadAhead::finished`]).
    pub(super) fn observe(&mut self, first: u64, last: u64, counts: bool) -> Option<Range<u64>> {
        let sequential = self.next != u64::MAX && (first == self.next || first + 1 == self.next);
        let moved_on = sequential && last >= self.next;
        self.next = last.saturating_add(1);
        if !sequential {
            self.streak = 0;
            self.window = 0;
            self.ahead_end = 0;
            return None;
        }
        if moved_on {
            self.streak = self.streak.saturating_add(1);
        }
        if self.streak < START_STREAK || self.max_units == 0 || !counts || self.busy {
            return None;
        }
        let from = self.next.max(self.ahead_end);
        // More than half a window still fetched ahead of the stream: nothing to do yet.
        if self.window > 0 && from > self.next.saturating_add(self.window / 2) {
            return None;
        }
        self.window = if self.window == 0 {
            FIRST_WINDOW.min(self.max_units)
        } else {
            (self.window * 2).min(self.max_units)
        };
        let to = self
            .next
            .saturating_add(self.window)
            .min(self.total_units)
            .min(from.saturating_add(self.max_units));
        if from >= to {
            return None;
        }
        self.ahead_end = to;
        self.busy = true;
        Some(from..to)
    }

    /// Whether units `first..=last` reach into what the current stream fetched ahead.
    pub(super) fn in_window(&self, first: u64, last: u64) -> bool {
        self.window > 0 && first < self.ahead_end && last.saturating_add(1) >= self.next
    }

    /// The batch asked for by [`ReadAhead::observe`] is done (fetched, failed or dropped).
    pub(super) fn finished(&mut self) {
        self.busy = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of one unit each at `units`, all counting; the batches asked for.
    fn batches(ra: &mut ReadAhead, units: &[u64]) -> Vec<Option<Range<u64>>> {
        units
            .iter()
            .map(|&u| {
                let b = ra.observe(u, u, true);
                ra.finished();
                b
            })
            .collect()
    }

    #[test]
    fn a_stream_starts_at_the_third_unit_read_in_order_and_its_window_doubles_to_the_bound() {
        let mut ra = ReadAhead::new(1000, 16);
        let got = batches(&mut ra, &[9, 10, 11]);
        assert_eq!(got, vec![None, None, Some(12..14)]);
        // The stream reads what was fetched ahead; a new batch once half of it is consumed.
        assert_eq!(ra.observe(12, 12, true), Some(14..17));
        ra.finished();
        assert_eq!(ra.observe(13, 13, true), None, "half a window still ahead");
        let mut asked = vec![12..14, 14..17];
        for u in 14..200 {
            if let Some(b) = ra.observe(u, u, true) {
                assert!(b.start >= asked.last().unwrap().end, "never twice: {b:?}");
                assert!(b.end - u - 1 <= 16, "at most 16 units ahead: {u} {b:?}");
                asked.push(b);
            }
            ra.finished();
        }
        let widths: Vec<u64> = asked.iter().map(|r| r.end - r.start).collect();
        assert!(
            widths.iter().any(|&w| w >= 8),
            "the window grew: {widths:?}"
        );
        // Every unit of the stream was fetched ahead, in order, without a gap.
        for pair in asked.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "{asked:?}");
        }
    }

    #[test]
    fn random_reads_fetch_nothing_ahead() {
        let mut ra = ReadAhead::new(1000, 16);
        let got = batches(&mut ra, &[5, 900, 17, 400, 401 + 7, 3, 250]);
        assert!(got.iter().all(Option::is_none), "{got:?}");
    }

    #[test]
    fn a_jump_ends_the_stream_and_a_new_one_starts_small() {
        let mut ra = ReadAhead::new(1000, 16);
        batches(&mut ra, &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(ra.observe(500, 500, true), None);
        assert_eq!(ra.observe(501, 501, true), None);
        assert_eq!(ra.observe(502, 502, true), Some(503..505));
    }

    #[test]
    fn reads_within_one_unit_keep_a_stream_but_do_not_start_it() {
        let mut ra = ReadAhead::new(1000, 16);
        let got = batches(&mut ra, &[3, 3, 3, 4, 4, 4]);
        assert!(got.iter().all(Option::is_none), "{got:?}");
        assert_eq!(ra.observe(5, 5, true), Some(6..8));
    }

    #[test]
    fn a_small_file_spanning_two_units_fetches_nothing_ahead() {
        let mut ra = ReadAhead::new(1000, 16);
        // Four 128 KiB reads of a file whose compressed bytes span units 40 and 41.
        let got: Vec<_> = [(40, 40), (40, 40), (40, 41), (41, 41)]
            .iter()
            .map(|&(f, l)| ra.observe(f, l, true))
            .collect();
        assert!(got.iter().all(Option::is_none), "{got:?}");
    }

    #[test]
    fn one_batch_in_flight_and_reads_that_do_not_count_start_nothing() {
        let mut ra = ReadAhead::new(1000, 16);
        ra.observe(0, 0, true);
        assert_eq!(ra.observe(1, 1, false), None, "a fully cached read");
        assert_eq!(ra.observe(2, 2, true), Some(3..5));
        assert_eq!(ra.observe(3, 3, true), None, "the batch is still in flight");
        assert_eq!(ra.observe(4, 4, true), None);
        ra.finished();
        assert_eq!(ra.observe(5, 5, true), Some(6..10));
    }

    #[test]
    fn the_blob_end_and_a_zero_bound_are_respected() {
        let mut ra = ReadAhead::new(10, 16);
        let got = batches(&mut ra, &[6, 7, 8, 9]);
        assert!(got.iter().flatten().all(|b| b.end <= 10), "{got:?}");
        let mut off = ReadAhead::new(1000, 0);
        assert!(batches(&mut off, &[0, 1, 2, 3]).iter().all(Option::is_none));
    }
}
