//! Clients that keep presenting bad tokens are banned (444 for everything) for a while, like the
//! `BlockAfterFails`/`BlockDuration` of the systems ferry replaces. A client is its address (an
//! IPv6 /64), not its User-Agent, which an attacker changes at will. At most one failure per
//! client per second counts: Funnel's proxy retries an idempotent request once on its own.

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
    clients: Mutex<HashMap<String, Entry>>,
}

impl Bans {
    pub fn new(after: u32, for_ms: u64) -> Self {
        Bans {
            after,
            for_ms,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_banned(&self, address: &str, now: u64) -> bool {
        self.clients
            .lock()
            .expect("bans mutex")
            .get(address)
            .is_some_and(|e| now < e.banned_until_ms)
    }

    /// Records a failure; returns true when it bans the client.
    pub fn fail(&self, address: &str, now: u64) -> bool {
        if self.after == 0 {
            return false;
        }
        let mut clients = self.clients.lock().expect("bans mutex");
        // Forget clients whose last failure is long past, so the map stays small.
        if clients.len() > 10_000 {
            let horizon = self.for_ms;
            clients.retain(|_, e| now < e.banned_until_ms || now < e.last_fail_ms + horizon);
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

#[cfg(test)]
mod tests {
    use super::*;

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
