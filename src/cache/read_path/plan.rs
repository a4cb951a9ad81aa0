//! The unit plan: which aligned refill units a read covers, and which bytes of each it needs.
//!
//! Pure arithmetic on a [`Span`] already checked against the blob: no I/O, no locks. Every
//! later step (tier lookup, claims, fetches, assembly) walks this plan, so the alignment rule
//! lives here once. Units are `unit` bytes at multiples of `unit`; the blob's last unit is
//! shorter when the size is not a multiple, and a unit key always names the same bytes
//! whatever read asked for them.

use std::ops::Range;

use crate::source::Span;

/// One refill unit a read touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlannedUnit {
    /// Index of the unit in the blob; its first byte is at `index * unit`.
    pub index: u64,
    /// Length of the unit: the refill size, or less for the blob's last unit.
    pub len: usize,
    /// The bytes of the unit the read needs, relative to the unit's start.
    pub needed: Range<usize>,
}

/// Length of unit `index` of a blob of `size` bytes cut into `unit`-byte units (0 past the
/// end). At most `unit`, which the tiers keep small, so it fits usize.
pub(super) fn unit_len(size: u64, unit: u64, index: u64) -> usize {
    let start = index.saturating_mul(unit);
    size.saturating_sub(start).min(unit) as usize
}

/// The units covering `span` of a blob of `size` bytes, in order. `span` must lie inside the
/// blob (a [`Span`] built for `size` does); an empty span covers no unit.
pub(super) fn plan(span: Span, size: u64, unit: u64) -> Vec<PlannedUnit> {
    if span.is_empty() || unit == 0 {
        return Vec::new();
    }
    let (offset, end) = (span.offset(), span.end());
    let (first, last) = (offset / unit, (end - 1) / unit);
    (first..=last)
        .map(|index| {
            let start = index * unit;
            let len = unit_len(size, unit, index);
            // Both bounds lie within the unit: offset < start + unit and end > start.
            let lo = (offset.max(start) - start) as usize;
            let hi = (end.min(start + len as u64) - start) as usize;
            PlannedUnit {
                index,
                len,
                needed: lo..hi,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(index: u64, len: usize, needed: Range<usize>) -> PlannedUnit {
        PlannedUnit { index, len, needed }
    }

    fn plan_of(offset: u64, len: usize, size: u64) -> Vec<PlannedUnit> {
        plan(Span::within(size, offset, len).unwrap(), size, 1024)
    }

    #[test]
    fn one_byte_at_the_start_middle_and_end_of_a_unit() {
        assert_eq!(plan_of(0, 1, 10_000), vec![unit(0, 1024, 0..1)]);
        assert_eq!(plan_of(1500, 1, 10_000), vec![unit(1, 1024, 476..477)]);
        assert_eq!(plan_of(2047, 1, 10_000), vec![unit(1, 1024, 1023..1024)]);
    }

    #[test]
    fn reads_ending_on_a_boundary_do_not_touch_the_next_unit() {
        assert_eq!(plan_of(0, 1024, 10_000), vec![unit(0, 1024, 0..1024)]);
        assert_eq!(
            plan_of(512, 1536, 10_000),
            vec![unit(0, 1024, 512..1024), unit(1, 1024, 0..1024)]
        );
    }

    #[test]
    fn a_read_crossing_a_boundary_takes_a_part_of_each_unit() {
        assert_eq!(
            plan_of(1023, 2, 10_000),
            vec![unit(0, 1024, 1023..1024), unit(1, 1024, 0..1)]
        );
        let whole = plan_of(100, 2900, 10_000);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[1], unit(1, 1024, 0..1024), "middle units are whole");
        let needed: usize = whole.iter().map(|u| u.needed.len()).sum();
        assert_eq!(needed, 2900);
        assert_eq!(whole[2], unit(2, 1024, 0..952));
    }

    #[test]
    fn the_last_unit_is_short_and_the_whole_blob_covers_every_unit() {
        // 10_000 = 9 * 1024 + 784.
        assert_eq!(plan_of(9_999, 1, 10_000), vec![unit(9, 784, 783..784)]);
        let all = plan_of(0, 10_000, 10_000);
        assert_eq!(all.len(), 10);
        assert_eq!(all[9], unit(9, 784, 0..784));
        assert!(all[..9]
            .iter()
            .all(|u| u.len == 1024 && u.needed == (0..1024)));
        // A blob of exactly one unit, and one smaller than a unit.
        assert_eq!(plan_of(0, 1024, 1024), vec![unit(0, 1024, 0..1024)]);
        assert_eq!(plan_of(3, 4, 7), vec![unit(0, 7, 3..7)]);
    }

    #[test]
    fn empty_reads_plan_nothing_and_unit_lengths_stop_at_the_end() {
        assert!(plan_of(10_000, 0, 10_000).is_empty());
        assert_eq!(unit_len(10_000, 1024, 9), 784);
        assert_eq!(unit_len(10_000, 1024, 10), 0);
        assert_eq!(unit_len(10_000, 1024, u64::MAX), 0, "no overflow");
    }
}
