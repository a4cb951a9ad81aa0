//! Slowing down password guessing: each failed authentication from the same initiator name or
//! the same source address waits longer before its failure response is sent (100 ms, doubling
//! up to 5 s). Free of I/O and clocks: the caller passes the time and sleeps for the delay.
//!
//! Strikes fade with time (one per 30 s without a new failure) and a success clears the
//! initiator name's strikes and takes one off its address, so a host that mistyped a secret is
//! not slowed for long while a guesser stays at the longest delay. The table is bounded: when
//! full, faded entries go first, then the least recently failed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Delay after the first failure.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay (well inside the 30 s a whole login may take).
const MAX_DELAY: Duration = Duration::from_secs(5);
/// One strike fades per this much time without a failure.
const FADE: Duration = Duration::from_secs(30);
/// Most initiator names and addresses remembered.
const CAPACITY: usize = 4096;

/// Who failed: an initiator name, or a source address (IPv6 by /64, the block one host
/// usually holds, so rotating addresses within it does not reset the count).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Initiator(String),
    Address(IpAddr),
}

impl Subject {
    fn address(ip: IpAddr) -> Subject {
        Subject::Address(match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            v4 => v4,
        })
    }
}

/// Failures of one subject.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    last: Instant,
}

impl Strikes {
    /// The count once faded to `now`.
    fn at(self, now: Instant) -> u32 {
        let faded = now.saturating_duration_since(self.last).as_secs() / FADE.as_secs();
        self.count
            .saturating_sub(u32::try_from(faded).unwrap_or(u32::MAX))
    }
}

/// Failed-authentication counts per initiator name and per source address, and the delay
/// they earn. One per server, shared by all connections.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    strikes: HashMap<Subject, Strikes>,
}

impl AuthThrottle {
    /// Nobody has failed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a failed authentication at `now` and returns how long to wait before answering
    /// it: the delay earned by the initiator name or the address, whichever has more strikes.
    pub fn failed(
        &mut self,
        now: Instant,
        initiator: Option<&str>,
        addr: Option<IpAddr>,
    ) -> Duration {
        let mut worst = 0;
        for subject in subjects(initiator, addr) {
            let count = self.strikes.get(&subject).map_or(0, |s| s.at(now)) + 1;
            if !self.strikes.contains_key(&subject) {
                self.make_room(now);
            }
            self.strikes.insert(subject, Strikes { count, last: now });
            worst = worst.max(count);
        }
        delay(worst)
    }

    /// Records a successful authentication: the initiator name starts afresh and its address
    /// loses one strike (an address may be shared with a guesser, so it is not cleared).
    pub fn succeeded(&mut self, now: Instant, initiator: Option<&str>, addr: Option<IpAddr>) {
        if let Some(name) = initiator {
            self.strikes.remove(&Subject::Initiator(name.to_owned()));
        }
        if let Some(ip) = addr {
            let subject = Subject::address(ip);
            if let Some(s) = self.strikes.get_mut(&subject) {
                s.count = s.at(now).saturating_sub(1);
                if s.count == 0 {
                    self.strikes.remove(&subject);
                }
            }
        }
    }

    /// Keeps the table within [`CAPACITY`]: drops faded entries, then the oldest.
    fn make_room(&mut self, now: Instant) {
        if self.strikes.len() < CAPACITY {
            return;
        }
        self.strikes.retain(|_, s| s.at(now) > 0);
        if self.strikes.len() >= CAPACITY {
            if let Some(oldest) = self
                .strikes
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
            {
                self.strikes.remove(&oldest);
            }
        }
    }

    /// How many subjects are remembered (for tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.strikes.len()
    }
}

fn subjects(initiator: Option<&str>, addr: Option<IpAddr>) -> impl Iterator<Item = Subject> {
    initiator
        .map(|n| Subject::Initiator(n.to_owned()))
        .into_iter()
        .chain(addr.map(Subject::address))
}

/// The delay for the `count`th strike in a row: 100 ms doubling, at most [`MAX_DELAY`].
fn delay(count: u32) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (count - 1).min(16);
    FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Option<&str> = Some("iqn.2026-11.test:alice");

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_doubles_from_100ms_up_to_5s() {
        let mut t = AuthThrottle::new();
        let now = Instant::now();
        let delays: Vec<Duration> = (0..9)
            .map(|_| t.failed(now, ALICE, ip("127.0.0.1")))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(ms)
        );
    }

    #[test]
    fn name_and_address_are_counted_apart_and_the_worse_one_counts() {
        let mut t = AuthThrottle::new();
        let now = Instant::now();
        // A guesser rotating initiator names is still slowed by its address.
        for i in 0..4 {
            t.failed(now, Some(&format!("iqn.x:{i}")), ip("10.0.0.1"));
        }
        assert_eq!(t.failed(now, Some("iqn.x:new"), ip("10.0.0.1")), ms(1600));
        // The same name from a new address is slowed by its name.
        for _ in 0..2 {
            t.failed(now, ALICE, ip("10.0.0.2"));
        }
        assert_eq!(t.failed(now, ALICE, ip("10.0.0.3")), ms(400));
        // An unrelated initiator elsewhere starts at the shortest delay.
        assert_eq!(t.failed(now, Some("iqn.y:z"), ip("10.0.0.9")), ms(100));
        // IPv6 addresses count by /64; IPv4-mapped IPv6 counts as the IPv4 address.
        t.failed(now, None, ip("2001:db8::1"));
        assert_eq!(t.failed(now, None, ip("2001:db8::ffff:2")), ms(200));
        assert_eq!(t.failed(now, None, ip("::ffff:10.0.0.9")), ms(200));
    }

    #[test]
    fn strikes_fade_with_time() {
        let mut t = AuthThrottle::new();
        let start = Instant::now();
        for _ in 0..5 {
            t.failed(start, ALICE, None);
        }
        // 60 s later two strikes have faded: the next failure is the 4th, not the 6th.
        assert_eq!(t.failed(start + FADE * 2, ALICE, None), ms(800));
        // Long after, it is as if nothing had happened.
        assert_eq!(t.failed(start + FADE * 100, ALICE, None), ms(100));
    }

    #[test]
    fn success_clears_the_name_and_eases_the_address() {
        let mut t = AuthThrottle::new();
        let now = Instant::now();
        for _ in 0..3 {
            t.failed(now, ALICE, ip("10.0.0.1"));
        }
        t.succeeded(now, ALICE, ip("10.0.0.1"));
        // The name is clear, the address keeps 2 of its 3 strikes: next is its 3rd failure.
        assert_eq!(t.failed(now, ALICE, ip("10.0.0.2")), ms(100));
        assert_eq!(t.failed(now, Some("iqn.other:x"), ip("10.0.0.1")), ms(400));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = AuthThrottle::new();
        let now = Instant::now();
        let at = |i: usize| now + ms(i as u64);
        for i in 0..CAPACITY * 2 {
            t.failed(at(i), Some(&format!("iqn.x:{i}")), None);
        }
        assert!(t.len() <= CAPACITY);
        // The newest subjects are the ones remembered.
        let last = format!("iqn.x:{}", CAPACITY * 2 - 1);
        assert_eq!(t.failed(at(CAPACITY * 2), Some(&last), None), ms(200));
    }
}
