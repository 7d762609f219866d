//! Clients that keep presenting bad tokens are banned (444 for everything) for a while, like the
//! `BlockAfterFails`/`BlockDuration` of the systems ferry replaces. A client is identified by its
//! address (for IPv6, its /64), not by its User-Agent, which an attacker can change at will. At
//! most one failure per client per second counts, because Funnel's proxy retries an idempotent
//! request once on its own.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    fails: u32,
    last_fail_ms: u64,
    banned_until_ms: u64,
}

pub struct Bans {
    after: u32,
    for_ms: u64,
    clients: Mutex<Clients>,
}

#[derive(Default)]
struct Clients {
    by_address: HashMap<String, Entry>,
    /// When the map was last swept of forgotten clients. Sweeps happen at most once a second, so
    /// that a flood of addresses does not make every failure walk the whole map.
    swept_ms: u64,
}

impl Bans {
    pub fn new(after: u32, for_ms: u64) -> Self {
        Bans {
            after,
            for_ms,
            clients: Mutex::new(Clients::default()),
        }
    }

    /// How many addresses are tracked now.
    pub fn tracked(&self) -> usize {
        self.clients.lock().expect("bans mutex").by_address.len()
    }

    pub fn is_banned(&self, address: &str, now: u64) -> bool {
        self.clients
            .lock()
            .expect("bans mutex")
            .by_address
            .get(address)
            .is_some_and(|e| now < e.banned_until_ms)
    }

    /// Records a failure, and returns true when this failure bans the client.
    pub fn fail(&self, address: &str, now: u64) -> bool {
        if self.after == 0 {
            return false;
        }
        let mut guard = self.clients.lock().expect("bans mutex");
        let Clients {
            by_address: clients,
            swept_ms,
        } = &mut *guard;
        // Forget clients whose last failure is long past, so the map stays small.
        if clients.len() > 10_000 && now >= *swept_ms + 1000 {
            *swept_ms = now;
            let horizon = self.for_ms;
            clients.retain(|_, e| now < e.banned_until_ms || now < e.last_fail_ms + horizon);
        }
        // There can be very many addresses, since each IPv6 /64 is one. Past the cap, addresses
        // that are not banned are forgotten first, and while banned addresses fill the map, a new
        // address is not tracked at all.
        if clients.len() >= MAX_TRACKED && !clients.contains_key(address) {
            if now >= *swept_ms + 1000 {
                *swept_ms = now;
                clients.retain(|_, e| now < e.banned_until_ms);
            }
            if clients.len() >= MAX_TRACKED {
                return false;
            }
        }
        let e = clients.entry(address.to_string()).or_default();
        if e.fails > 0 && now < e.last_fail_ms + 1000 {
            return false;
        }
        if now >= e.last_fail_ms + self.for_ms {
            e.fails = 0;
        }
        e.fails += 1;
        e.last_fail_ms = now;
        if e.fails >= self.after && now >= e.banned_until_ms {
            e.banned_until_ms = now + self.for_ms;
            e.fails = 0;
            return true;
        }
        false
    }
}

/// The most addresses whose failures are counted, so that the memory anyone can make ferry use is
/// bounded.
pub const MAX_TRACKED: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_addresses_is_bounded() {
        let b = Bans::new(2, 900_000);
        for i in 0..(MAX_TRACKED as u64 * 3) {
            // Each address fails twice, a second apart, and is banned.
            let a = format!("2001:db8:{:x}:{:x}::/64", i >> 16, i & 0xffff);
            b.fail(&a, i);
            b.fail(&a, i + 1000);
        }
        assert!(b.tracked() <= MAX_TRACKED, "{} addresses tracked", b.tracked());
        // The first addresses are still banned, because a flood does not lift bans.
        assert!(b.is_banned("2001:db8:0:0::/64", 2000));
    }

    #[test]
    fn bans_after_spaced_failures_for_a_while() {
        let b = Bans::new(3, 60_000);
        assert!(!b.fail("a", 0));
        // A retry within the second does not count.
        assert!(!b.fail("a", 500));
        assert!(!b.fail("a", 1000));
        assert!(b.fail("a", 2000));
        assert!(b.is_banned("a", 2000) && b.is_banned("a", 61_999));
        assert!(!b.is_banned("a", 62_000));
        assert!(!b.is_banned("b", 2000));
    }

    #[test]
    fn old_failures_are_forgotten_and_zero_disables() {
        let b = Bans::new(2, 10_000);
        b.fail("a", 0);
        assert!(!b.fail("a", 20_000), "the first failure had expired");
        let off = Bans::new(0, 10_000);
        for t in 0..10 {
            assert!(!off.fail("a", t * 2000));
        }
    }
}
