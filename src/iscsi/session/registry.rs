//! The table of live normal sessions: TSIH allocation and session reinstatement.
//!
//! A session is identified by its initiator port (InitiatorName + ISID) and target. When a new
//! login with TSIH 0 arrives for an identity that already has a session, the old session is
//! reinstated (RFC 7143 §6.3.5): it must be torn down (tasks aborted) before the new one
//! proceeds. This is how hosts reconnect after a connection loss or a target restart. The
//! table only keeps the bookkeeping; `H` is whatever handle the transport uses to stop a
//! session.

use std::collections::HashMap;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// InitiatorName.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// TargetName.
    pub target: String,
    /// The target portal group tag the session logged in through: a session is named by the
    /// initiator, ISID, target and portal group together (RFC 7143 4.4.2).
    pub tpgt: u16,
}

/// Live sessions by identity, with unique non-zero TSIHs.
#[derive(Debug)]
pub struct SessionTable<H> {
    sessions: HashMap<SessionKey, (u16, H)>,
    next_tsih: u16,
}

impl<H> Default for SessionTable<H> {
    fn default() -> Self {
        SessionTable {
            sessions: HashMap::new(),
            next_tsih: 1,
        }
    }
}

impl<H> SessionTable<H> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new session for `key`, returning its TSIH and the handle of the session it
    /// replaces (to be torn down), if any. `None` when all 65535 TSIHs are in use.
    pub fn insert(&mut self, key: SessionKey, handle: H) -> Option<(u16, Option<H>)> {
        let old = self.sessions.remove(&key).map(|(_, h)| h);
        let tsih = self.allocate()?;
        self.sessions.insert(key, (tsih, handle));
        Some((tsih, old))
    }

    /// Removes the session of `key` if it still has `tsih` (a reinstated session must not
    /// remove its successor).
    pub fn remove(&mut self, key: &SessionKey, tsih: u16) -> Option<H> {
        match self.sessions.get(key) {
            Some((t, _)) if *t == tsih => self.sessions.remove(key).map(|(_, h)| h),
            _ => None,
        }
    }

    /// The TSIH of the live session of `key`.
    pub fn tsih(&self, key: &SessionKey) -> Option<u16> {
        self.sessions.get(key).map(|(t, _)| *t)
    }

    /// TSIHs and handles of every session of `target` (for a TARGET COLD RESET).
    pub fn of_target<'a>(&'a self, target: &'a str) -> impl Iterator<Item = (u16, &'a H)> + 'a {
        self.sessions
            .iter()
            .filter(move |(k, _)| k.target == target)
            .map(|(_, (tsih, h))| (*tsih, h))
    }

    /// Every session: its identity, TSIH and handle.
    pub fn entries(&self) -> impl Iterator<Item = (&SessionKey, u16, &H)> {
        self.sessions.iter().map(|(k, (tsih, h))| (k, *tsih, h))
    }

    /// Handles of every session.
    pub fn handles(&self) -> impl Iterator<Item = &H> {
        self.sessions.values().map(|(_, h)| h)
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn allocate(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let tsih = self.next_tsih;
            self.next_tsih = self.next_tsih.checked_add(1).unwrap_or(1);
            if tsih != 0 && !self.sessions.values().any(|(t, _)| *t == tsih) {
                return Some(tsih);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(initiator: &str, last: u8) -> SessionKey {
        SessionKey {
            initiator: initiator.into(),
            isid: [0, 2, 0x3d, 0, 0, last],
            tpgt: 1,
            target: "iqn.t".into(),
        }
    }

    #[test]
    fn distinct_sessions_get_distinct_tsihs() {
        let mut t = SessionTable::new();
        let (a, old_a) = t.insert(key("iqn.a", 1), "a").unwrap();
        let (b, old_b) = t.insert(key("iqn.a", 2), "b").unwrap();
        assert!(old_a.is_none() && old_b.is_none());
        assert!(a != 0 && b != 0 && a != b);
        assert_eq!(t.len(), 2);
        assert_eq!(t.of_target("iqn.t").count(), 2);
        assert_eq!(t.of_target("iqn.other").count(), 0);
    }

    #[test]
    fn same_identity_reinstates() {
        let mut t = SessionTable::new();
        let (first, _) = t.insert(key("iqn.a", 1), "old").unwrap();
        let (second, old) = t.insert(key("iqn.a", 1), "new").unwrap();
        assert_eq!(old, Some("old"));
        assert_ne!(first, second);
        // The old session's cleanup must not remove its successor.
        assert_eq!(t.remove(&key("iqn.a", 1), first), None);
        assert_eq!(t.tsih(&key("iqn.a", 1)), Some(second));
        assert_eq!(t.remove(&key("iqn.a", 1), second), Some("new"));
        assert!(t.is_empty());
    }

    #[test]
    fn tsih_skips_zero_and_live_values() {
        let mut t = SessionTable::new();
        t.next_tsih = u16::MAX;
        let (a, _) = t.insert(key("iqn.a", 1), ()).unwrap();
        let (b, _) = t.insert(key("iqn.a", 2), ()).unwrap();
        assert_eq!((a, b), (u16::MAX, 1));
        t.next_tsih = 1;
        let (c, _) = t.insert(key("iqn.a", 3), ()).unwrap();
        assert_eq!(c, 2, "1 is taken");
    }
}
