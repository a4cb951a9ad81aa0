//! The CmdSN window (RFC 7143 §4.2.2.1, §3.2.2.1 of RFC 3720): which numbered commands the target
//! accepts, in what order it delivers them, and the MaxCmdSN credit it advertises.
//!
//! A non-immediate command is accepted when its CmdSN lies in `[ExpCmdSN, MaxCmdSN]`, and is
//! delivered only once every lower CmdSN has been: commands that overtake a missing one wait in
//! the window. Anything outside the window is silently dropped, as the RFC requires. The credit
//! is a queue depth: a delivered command holds its slot until it retires (its response is
//! queued), so at most `depth` commands are outstanding and MaxCmdSN never moves backwards.

use std::collections::HashMap;

/// What occupies one CmdSN of the window.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot<T> {
    /// A command waiting for its turn.
    Held(T),
    /// A CmdSN the target considers received without a command (ABORT TASK of a command that
    /// never arrived, RFC 7143 §11.5.1); it is skipped when its turn comes.
    Void,
}

/// Why a command was not accepted into the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// CmdSN is below ExpCmdSN or above MaxCmdSN: drop the PDU silently.
    OutOfWindow,
    /// A command with this CmdSN is already waiting: drop the duplicate.
    Duplicate,
}

/// The ordering and credit state of one session's CmdSN stream.
#[derive(Debug)]
pub struct CommandWindow<T> {
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    depth: u32,
    /// Delivered commands that have not retired.
    outstanding: u32,
    waiting: HashMap<u32, Slot<T>>,
}

impl<T> CommandWindow<T> {
    /// A window whose next expected CmdSN is `exp_cmd_sn` (the login's CmdSN) and which allows
    /// `depth` (at least 1) outstanding commands.
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Self {
        let depth = depth.max(1);
        CommandWindow {
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn.wrapping_add(depth - 1),
            depth,
            outstanding: 0,
            waiting: HashMap::new(),
        }
    }

    /// ExpCmdSN to advertise.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    /// MaxCmdSN to advertise.
    pub fn max_cmd_sn(&self) -> u32 {
        self.max_cmd_sn
    }

    /// Whether `cmd_sn` lies in `[ExpCmdSN, MaxCmdSN]`.
    pub fn in_window(&self, cmd_sn: u32) -> bool {
        // Distances from ExpCmdSN: a closed window (MaxCmdSN = ExpCmdSN - 1) has a span of
        // u32::MAX, which no in-range distance reaches.
        let span = self.max_cmd_sn.wrapping_sub(self.exp_cmd_sn);
        span != u32::MAX && cmd_sn.wrapping_sub(self.exp_cmd_sn) <= span
    }

    /// Whether `cmd_sn` names a command already received or delivered (below ExpCmdSN, within
    /// the last 2^31 numbers).
    pub fn is_past(&self, cmd_sn: u32) -> bool {
        let behind = self.exp_cmd_sn.wrapping_sub(cmd_sn);
        behind != 0 && behind < 0x8000_0000
    }

    /// Offers a non-immediate command. Accepted commands come out of [`Self::next_ready`] in
    /// CmdSN order.
    pub fn offer(&mut self, cmd_sn: u32, item: T) -> Result<(), Refusal> {
        if !self.in_window(cmd_sn) {
            return Err(Refusal::OutOfWindow);
        }
        if self.waiting.contains_key(&cmd_sn) {
            return Err(Refusal::Duplicate);
        }
        self.waiting.insert(cmd_sn, Slot::Held(item));
        Ok(())
    }

    /// The next command whose turn has come, with its CmdSN; it now holds a slot until
    /// [`Self::retire`]. Void CmdSNs are stepped over.
    pub fn next_ready(&mut self) -> Option<(u32, T)> {
        while let Some(slot) = self.waiting.remove(&self.exp_cmd_sn) {
            let cmd_sn = self.exp_cmd_sn;
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            match slot {
                Slot::Held(item) => {
                    self.outstanding += 1;
                    return Some((cmd_sn, item));
                }
                Slot::Void => self.refresh_max(),
            }
        }
        None
    }

    /// Takes a slot for an immediate command (which has no CmdSN of its own, RFC 7143
    /// §4.2.2.1), so immediate commands count against the same queue depth as numbered ones.
    /// Returns false when every slot is in use: the command is to be rejected (reason 0x06).
    /// The slot is given back with [`Self::retire`].
    pub fn take_immediate(&mut self) -> bool {
        if self.outstanding >= self.depth {
            return false;
        }
        self.outstanding += 1;
        true
    }

    /// A delivered command has retired: its slot is free again and MaxCmdSN moves up.
    pub fn retire(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.refresh_max();
    }

    /// Marks `cmd_sn` as received without a command, taking out whatever waited there. Used by
    /// ABORT TASK for a referenced command that has not been delivered. Returns the removed
    /// command, or `None` (nothing waited, or `cmd_sn` is outside the window).
    pub fn void(&mut self, cmd_sn: u32) -> Option<T> {
        if !self.in_window(cmd_sn) {
            return None;
        }
        match self.waiting.insert(cmd_sn, Slot::Void) {
            Some(Slot::Held(item)) => Some(item),
            _ => None,
        }
    }

    /// Removes every waiting command that `doomed` selects, voiding their CmdSNs (task-set
    /// aborts and resets). Returns them.
    pub fn void_where(&mut self, mut doomed: impl FnMut(&T) -> bool) -> Vec<T> {
        let sns: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Held(item) if doomed(item)))
            .map(|(sn, _)| *sn)
            .collect();
        let mut removed = Vec::with_capacity(sns.len());
        for sn in sns {
            if let Some(Slot::Held(item)) = self.waiting.insert(sn, Slot::Void) {
                removed.push(item);
            }
        }
        removed
    }

    /// Number of commands waiting for a lower CmdSN.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn refresh_max(&mut self) {
        let free = self.depth.saturating_sub(self.outstanding);
        // ExpCmdSN + free - 1; with no free slot this is ExpCmdSN - 1, a closed window.
        let candidate = self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1);
        // MaxCmdSN never decreases (initiators ignore a smaller one anyway).
        if candidate.wrapping_sub(self.max_cmd_sn) < 0x8000_0000 {
            self.max_cmd_sn = candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_and_holds_gaps() {
        let mut w = CommandWindow::new(10, 8);
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (10, 17));
        w.offer(12, "c").unwrap();
        w.offer(11, "b").unwrap();
        assert_eq!(w.next_ready(), None, "10 is missing");
        assert_eq!(w.waiting(), 2);
        w.offer(10, "a").unwrap();
        assert_eq!(w.next_ready(), Some((10, "a")));
        assert_eq!(w.next_ready(), Some((11, "b")));
        assert_eq!(w.next_ready(), Some((12, "c")));
        assert_eq!(w.next_ready(), None);
        assert_eq!(w.exp_cmd_sn(), 13);
        assert_eq!(w.max_cmd_sn(), 17, "three slots in use");
        w.retire();
        assert_eq!(w.max_cmd_sn(), 18);
    }

    #[test]
    fn refuses_outside_window_and_duplicates() {
        let mut w = CommandWindow::new(5, 4);
        assert_eq!(w.offer(4, ()), Err(Refusal::OutOfWindow), "below ExpCmdSN");
        assert_eq!(w.offer(9, ()), Err(Refusal::OutOfWindow), "MaxCmdSN + 1");
        w.offer(8, ()).unwrap();
        assert_eq!(w.offer(8, ()), Err(Refusal::Duplicate));
        assert!(w.is_past(4) && !w.is_past(5) && !w.is_past(6));
    }

    #[test]
    fn full_window_closes_then_reopens() {
        let mut w = CommandWindow::new(0, 2);
        w.offer(0, 'a').unwrap();
        w.offer(1, 'b').unwrap();
        while w.next_ready().is_some() {}
        assert_eq!(w.max_cmd_sn(), 1, "MaxCmdSN = ExpCmdSN - 1: closed");
        assert!(!w.in_window(2));
        assert_eq!(w.offer(2, 'c'), Err(Refusal::OutOfWindow));
        w.retire();
        assert_eq!(w.max_cmd_sn(), 2);
        w.offer(2, 'c').unwrap();
        assert_eq!(w.next_ready(), Some((2, 'c')));
    }

    #[test]
    fn immediate_commands_share_the_depth() {
        let mut w = CommandWindow::new(0, 2);
        assert!(w.take_immediate());
        w.offer(0, 'a').unwrap();
        assert_eq!(w.next_ready(), Some((0, 'a')));
        assert_eq!(w.max_cmd_sn(), 1, "no slot opened past the two in use");
        assert!(!w.take_immediate(), "both slots are in use");
        w.retire();
        assert!(w.take_immediate());
        w.retire();
        w.retire();
        assert_eq!(w.max_cmd_sn(), 2);
    }

    #[test]
    fn wraps_around_zero() {
        let mut w = CommandWindow::new(u32::MAX - 1, 4);
        assert_eq!(w.max_cmd_sn(), 1);
        w.offer(0, 'c').unwrap();
        w.offer(u32::MAX, 'b').unwrap();
        w.offer(u32::MAX - 1, 'a').unwrap();
        let order: Vec<_> = std::iter::from_fn(|| w.next_ready())
            .map(|(_, c)| c)
            .collect();
        assert_eq!(order, vec!['a', 'b', 'c']);
        assert_eq!(w.exp_cmd_sn(), 1);
        assert!(w.is_past(u32::MAX));
    }

    #[test]
    fn voided_cmd_sn_is_skipped_and_frees_credit() {
        let mut w = CommandWindow::new(0, 4);
        w.offer(1, 'b').unwrap();
        assert_eq!(w.void(0), None, "nothing waited at 0");
        assert_eq!(w.next_ready(), Some((1, 'b')));
        assert_eq!(w.exp_cmd_sn(), 2);
        assert_eq!(w.max_cmd_sn(), 4, "the void did not use a slot");

        w.offer(3, 'd').unwrap();
        w.offer(4, 'e').unwrap();
        assert_eq!(w.void_where(|c| *c == 'd'), vec!['d']);
        assert_eq!(w.void(9), None, "outside the window");
        w.offer(2, 'c').unwrap();
        let order: Vec<_> = std::iter::from_fn(|| w.next_ready())
            .map(|(_, c)| c)
            .collect();
        assert_eq!(order, vec!['c', 'e']);
    }
}
