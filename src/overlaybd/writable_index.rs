//! The in-memory index of a writable layer: an ordered set of disjoint records where every
//! insert becomes authoritative for its range (spec `lsmt.md` §6.4).

use std::collections::BTreeMap;

use super::index::{clip, Record};

/// Disjoint records keyed by logical start sector.
#[derive(Debug, Default, Clone)]
pub struct WritableIndex {
    map: BTreeMap<u64, Record>,
}

impl WritableIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no record is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts `m`, removing, truncating or splitting whatever it overlaps. Zero-length records
    /// are ignored.
    pub fn insert(&mut self, m: Record) {
        if m.length == 0 {
            return;
        }
        let (start, end) = (m.offset, m.end());
        // A record starting before `m` may overlap its left edge or contain it entirely.
        if let Some((&k, prev)) = self.map.range(..start).next_back() {
            if prev.end() > start {
                let mut left = *prev;
                let prev = *prev;
                left.truncate_to(start);
                self.map.insert(k, left);
                if prev.end() > end {
                    let mut right = prev;
                    right.advance_to(end);
                    self.map.insert(end, right);
                }
            }
        }
        // Records starting inside `m` are removed; the last may stick out on the right.
        let inside: Vec<u64> = self.map.range(start..end).map(|(&k, _)| k).collect();
        for k in inside {
            if let Some(r) = self.map.remove(&k) {
                if r.end() > end {
                    let mut right = r;
                    right.advance_to(end);
                    self.map.insert(end, right);
                }
            }
        }
        self.map.insert(start, m);
    }

    /// The records intersecting `[start, start + len)`, clipped to it, in order.
    pub fn lookup(&self, start: u64, len: u64) -> Vec<Record> {
        let end = start.saturating_add(len);
        let mut out = Vec::new();
        if len == 0 {
            return out;
        }
        if let Some((_, prev)) = self.map.range(..start).next_back() {
            if prev.end() > start {
                out.push(*prev);
            }
        }
        out.extend(self.map.range(start..end).map(|(_, r)| *r));
        clip(&mut out, start, end);
        out
    }

    /// All records in logical order.
    pub fn records(&self) -> Vec<Record> {
        self.map.values().copied().collect()
    }
}

/// The spec's §6.4 worked example, shared by the replay test below and the end-to-end test in
/// `overlaybd::tests::examples`, which writes it through a real layer: both must land on the
/// same records, so they are written down once.
#[cfg(test)]
pub(crate) mod spec_example {
    use super::Record;

    /// The index log the example's writes and discard leave, in order.
    pub(crate) fn log() -> Vec<Record> {
        vec![
            Record::data(0, 8, 8),
            Record::data(2, 4, 16),
            Record::data(128, 8, 20),
            Record::zeroed(130, 4, 28),
            Record::data(137, 1, 28),
        ]
    }

    /// The index that replaying [`log`] gives.
    pub(crate) fn replayed() -> Vec<Record> {
        vec![
            Record::data(0, 2, 8),
            Record::data(2, 4, 16),
            Record::data(6, 2, 14),
            Record::data(128, 2, 20),
            Record::zeroed(130, 4, 28),
            Record::data(134, 2, 26),
            Record::data(137, 1, 28),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_example_from_spec() {
        let mut ix = WritableIndex::new();
        ix.insert(Record::data(100, 50, 1000));
        ix.insert(Record::data(120, 10, 2000));
        assert_eq!(
            ix.records(),
            vec![
                Record::data(100, 20, 1000),
                Record::data(120, 10, 2000),
                Record::data(130, 20, 1030)
            ]
        );
    }

    #[test]
    fn worked_replay_from_spec() {
        let mut ix = WritableIndex::new();
        for r in spec_example::log() {
            ix.insert(r);
        }
        assert_eq!(ix.records(), spec_example::replayed());
    }

    #[test]
    fn insert_covering_many_and_edges() {
        let mut ix = WritableIndex::new();
        for i in 0..10 {
            ix.insert(Record::data(i * 10, 10, 8 + i * 10));
        }
        ix.insert(Record::zeroed(15, 60, 500));
        assert_eq!(
            ix.records(),
            vec![
                Record::data(0, 10, 8),
                Record::data(10, 5, 18),
                Record::zeroed(15, 60, 500),
                Record::data(75, 5, 83),
                Record::data(80, 10, 88),
                Record::data(90, 10, 98),
            ]
        );
        assert_eq!(
            ix.lookup(12, 5),
            vec![Record::data(12, 3, 20), Record::zeroed(15, 2, 500)]
        );
        assert_eq!(ix.lookup(12, 0), vec![]);
    }
}
