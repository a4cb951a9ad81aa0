//! Unit attention conditions per I_T nexus (SPC-4 5.14 / SAM-5 5.14).
//!
//! A nexus that has never sent a command to a logical unit first sees POWER ON, RESET, OR BUS
//! DEVICE RESET OCCURRED; later events (LUN reset, reservation preemption, mode or capacity
//! changes) queue further conditions, reported one per command.

use std::collections::{HashMap, HashSet, VecDeque};

use super::sense::{asc, Asc};
use super::Nexus;

/// Most conditions kept per nexus; older ones are dropped (SPC lets a device server lose
/// lower-priority conditions when it runs out of room).
const MAX_PENDING: usize = 8;

/// Unit attention bookkeeping for one logical unit.
#[derive(Debug, Default)]
pub struct UnitAttentions {
    /// Nexuses that have already been told about the power-on.
    seen: HashSet<Nexus>,
    /// Pending conditions per nexus, oldest first.
    pending: HashMap<Nexus, VecDeque<Asc>>,
}

impl UnitAttentions {
    /// Registers `nexus` on its first command by queueing POWER ON / RESET for it.
    pub fn note_nexus(&mut self, nexus: &Nexus) {
        // Checked first so the common case (a known nexus) allocates nothing.
        if !self.seen.contains(nexus) {
            self.seen.insert(nexus.clone());
            self.pending
                .entry(nexus.clone())
                .or_default()
                .push_front(asc::POWER_ON_RESET);
        }
    }

    /// Removes and returns the oldest pending condition of `nexus`.
    pub fn take(&mut self, nexus: &Nexus) -> Option<Asc> {
        let queue = self.pending.get_mut(nexus)?;
        let code = queue.pop_front();
        if queue.is_empty() {
            self.pending.remove(nexus);
        }
        code
    }

    /// Queues `code` for `nexus` (if it has been seen; unseen nexuses get a power-on anyway).
    pub fn raise(&mut self, nexus: &Nexus, code: Asc) {
        if !self.seen.contains(nexus) {
            return;
        }
        let queue = self.pending.entry(nexus.clone()).or_default();
        if code.0 == asc::POWER_ON_RESET.0 {
            // A reset supersedes every other condition (SPC-4 5.14: reset has highest priority).
            queue.clear();
        }
        if !queue.contains(&code) {
            if queue.len() == MAX_PENDING {
                queue.pop_back();
            }
            queue.push_back(code);
        }
    }

    /// Queues `code` for every seen nexus except `except`.
    pub fn raise_others(&mut self, except: Option<&Nexus>, code: Asc) {
        let targets: Vec<Nexus> = self
            .seen
            .iter()
            .filter(|n| Some(*n) != except)
            .cloned()
            .collect();
        for nexus in targets {
            self.raise(&nexus, code);
        }
    }

    /// Withdraws a pending `code` of `nexus`, e.g. REPORTED LUNS DATA HAS CHANGED once the
    /// nexus has read the new list with REPORT LUNS (SPC-4 6.33).
    pub fn clear(&mut self, nexus: &Nexus, code: Asc) {
        if let Some(queue) = self.pending.get_mut(nexus) {
            queue.retain(|&pending| pending != code);
            if queue.is_empty() {
                self.pending.remove(nexus);
            }
        }
    }

    /// How many nexuses have addressed the logical unit and not ended since: its users.
    pub fn nexus_count(&self) -> usize {
        self.seen.len()
    }

    /// Forgets `nexus` entirely (its session ended).
    pub fn forget(&mut self, nexus: &Nexus) {
        self.seen.remove(nexus);
        self.pending.remove(nexus);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(name: &str) -> Nexus {
        Nexus::for_test(name)
    }

    #[test]
    fn first_command_sees_power_on_then_nothing() {
        let mut ua = UnitAttentions::default();
        let a = nexus("a");
        ua.note_nexus(&a);
        assert_eq!(ua.take(&a), Some(asc::POWER_ON_RESET));
        assert_eq!(ua.take(&a), None);
        ua.note_nexus(&a);
        assert_eq!(ua.take(&a), None);
    }

    #[test]
    fn raise_others_skips_the_origin_and_unseen() {
        let mut ua = UnitAttentions::default();
        let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
        ua.note_nexus(&a);
        ua.note_nexus(&b);
        ua.take(&a);
        ua.take(&b);
        ua.raise_others(Some(&a), asc::BUS_DEVICE_RESET);
        ua.raise_others(Some(&a), asc::BUS_DEVICE_RESET);
        assert_eq!(ua.take(&a), None);
        assert_eq!(ua.take(&b), Some(asc::BUS_DEVICE_RESET));
        assert_eq!(ua.take(&b), None);
        assert_eq!(ua.take(&c), None);
        ua.forget(&b);
        ua.note_nexus(&b);
        assert_eq!(ua.take(&b), Some(asc::POWER_ON_RESET));
    }

    #[test]
    fn clear_withdraws_one_code_of_one_nexus() {
        let mut ua = UnitAttentions::default();
        let (a, b) = (nexus("a"), nexus("b"));
        ua.note_nexus(&a);
        ua.note_nexus(&b);
        assert_eq!(ua.nexus_count(), 2);
        ua.raise_others(None, asc::REPORTED_LUNS_DATA_CHANGED);
        ua.clear(&a, asc::REPORTED_LUNS_DATA_CHANGED);
        ua.clear(&nexus("c"), asc::REPORTED_LUNS_DATA_CHANGED);
        assert_eq!(ua.take(&a), Some(asc::POWER_ON_RESET));
        assert_eq!(ua.take(&a), None);
        assert_eq!(ua.take(&b), Some(asc::POWER_ON_RESET));
        assert_eq!(ua.take(&b), Some(asc::REPORTED_LUNS_DATA_CHANGED));
        ua.forget(&a);
        assert_eq!(ua.nexus_count(), 1);
    }
}
