//! Which accepted connections may start a login: at most so many in login at once in total and
//! per source address, so idle or slow sockets from one place cannot use up the file
//! descriptors and lock every other initiator out. A connection leaves the count when its
//! login ends, either way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Counts of connections in login, by source address.
#[derive(Debug)]
pub struct PendingLogins {
    max_total: u32,
    max_per_address: u32,
    total: u32,
    by_address: HashMap<IpAddr, u32>,
}

/// Why a connection may not start a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many connections are in login in total.
    Total,
    /// Too many connections from this address are in login.
    PerAddress,
}

impl PendingLogins {
    /// Limits of `max_total` connections in login, `max_per_address` from one address.
    pub fn new(max_total: u32, max_per_address: u32) -> Self {
        PendingLogins {
            max_total,
            max_per_address,
            total: 0,
            by_address: HashMap::new(),
        }
    }

    /// Counts a new connection from `addr` in, unless a limit is reached.
    pub fn enter(&mut self, addr: IpAddr) -> Result<(), Refused> {
        if self.total >= self.max_total {
            return Err(Refused::Total);
        }
        let here = self.by_address.entry(addr).or_insert(0);
        if *here >= self.max_per_address {
            return Err(Refused::PerAddress);
        }
        *here += 1;
        self.total += 1;
        Ok(())
    }

    /// Counts a connection from `addr` out (its login ended).
    pub fn leave(&mut self, addr: IpAddr) {
        if let Some(here) = self.by_address.get_mut(&addr) {
            *here -= 1;
            if *here == 0 {
                self.by_address.remove(&addr);
            }
            self.total -= 1;
        }
    }

    /// Connections in login now.
    pub fn total(&self) -> u32 {
        self.total
    }
}

/// A connection's place in [`PendingLogins`], given back when dropped.
#[derive(Debug)]
pub struct PendingGuard {
    logins: Arc<Mutex<PendingLogins>>,
    addr: IpAddr,
}

impl PendingGuard {
    /// Enters `addr` into `logins`; `Err` when a limit is reached.
    pub fn enter(logins: &Arc<Mutex<PendingLogins>>, addr: IpAddr) -> Result<Self, Refused> {
        logins.lock().enter(addr)?;
        Ok(PendingGuard {
            logins: logins.clone(),
            addr,
        })
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.logins.lock().leave(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn per_address_limit_leaves_other_addresses_alone() {
        let mut p = PendingLogins::new(10, 2);
        assert_eq!(p.enter(ip(1)), Ok(()));
        assert_eq!(p.enter(ip(1)), Ok(()));
        assert_eq!(p.enter(ip(1)), Err(Refused::PerAddress));
        assert_eq!(p.enter(ip(2)), Ok(()));
        p.leave(ip(1));
        assert_eq!(p.enter(ip(1)), Ok(()));
        assert_eq!(p.total(), 3);
    }

    #[test]
    fn total_limit_counts_every_address() {
        let mut p = PendingLogins::new(3, 2);
        p.enter(ip(1)).unwrap();
        p.enter(ip(2)).unwrap();
        p.enter(ip(3)).unwrap();
        assert_eq!(p.enter(ip(4)), Err(Refused::Total));
        p.leave(ip(2));
        assert_eq!(p.enter(ip(4)), Ok(()));
    }

    #[test]
    fn guard_gives_its_place_back() {
        let logins = Arc::new(Mutex::new(PendingLogins::new(1, 1)));
        let g = PendingGuard::enter(&logins, ip(1)).unwrap();
        assert_eq!(
            PendingGuard::enter(&logins, ip(1)).unwrap_err(),
            Refused::Total
        );
        drop(g);
        let again = PendingGuard::enter(&logins, ip(1)).unwrap();
        assert_eq!(logins.lock().total(), 1);
        drop(again);
        assert_eq!(logins.lock().total(), 0);
    }
}
