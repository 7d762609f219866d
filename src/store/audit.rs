//! Audit records: admin actions and public refusals, with time, client and link. Kept as long as
//! history (`FERRY_HISTORY_DAYS`). A record never carries a token.
//!
//! Anyone on the Internet can make ferry refuse a request, so what refusals write is bounded
//! ([`RefusalLimit`]): one record a second per address, at most [`REFUSALS_PER_SECOND`] in all,
//! and the rest summed up in one `refused.unrecorded` record per second in which some were left
//! out.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time_ms: u64,
    /// `link.created`, `link.terminated`, `cleanup`, `login`, `login.failed`, `refused`,
    /// `refused.unrecorded` (how many refusals the overall cap left out), `banned`.
    pub event: String,
    pub client: Option<String>,
    pub tunnel_id: Option<String>,
    /// Why a request was refused, or what an action did.
    pub detail: Option<String>,
}

/// The most refusal records written per second, from all addresses together.
pub const REFUSALS_PER_SECOND: u32 = 20;
/// The most addresses remembered for the per-address limit. Only recorded addresses are
/// remembered, and only for a second, so the cap above keeps the map far below this. The bound
/// holds whatever the clock does.
const MAX_ADDRESSES: usize = 4096;

/// What to write for one refusal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RefusalAdmit {
    /// Write its record.
    pub record: bool,
    /// It was left out by the overall cap (not by its address's own limit).
    pub over_cap: bool,
    /// Refusals left out by the cap before this second, to be written as one summary now.
    pub unrecorded: Option<u64>,
}

/// The bounds on refusal records (per process; with shared state, per instance).
#[derive(Debug, Default)]
pub struct RefusalLimit {
    /// When each address's last refusal was recorded (ms).
    last: HashMap<String, u64>,
    /// The second (ms / 1000) the count below is for.
    second: u64,
    recorded: u32,
    /// Refusals left out by the cap and not yet summarized.
    unrecorded: u64,
}

impl RefusalLimit {
    pub fn admit(&mut self, address: &str, now_ms: u64) -> RefusalAdmit {
        let mut out = RefusalAdmit::default();
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.recorded = 0;
            out.unrecorded = Some(std::mem::take(&mut self.unrecorded)).filter(|&n| n > 0);
        }
        if self.last.get(address).is_some_and(|&t| now_ms < t.saturating_add(1000)) {
            return out;
        }
        if self.recorded >= REFUSALS_PER_SECOND {
            self.unrecorded += 1;
            out.over_cap = true;
            return out;
        }
        if self.last.len() >= MAX_ADDRESSES {
            self.last.retain(|_, t| now_ms < t.saturating_add(1000));
            if self.last.len() >= MAX_ADDRESSES {
                // Only a clock that went backwards could get here. Forgetting the address errs
                // toward recording.
                self.last.clear();
            }
        }
        self.last.insert(address.to_string(), now_ms);
        self.recorded += 1;
        out.record = true;
        out
    }

    /// How many addresses are remembered now.
    pub fn addresses(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_a_second_per_address() {
        let mut l = RefusalLimit::default();
        assert!(l.admit("10.0.0.1", 5_000).record);
        let again = l.admit("10.0.0.1", 5_999);
        assert!(!again.record && !again.over_cap, "its own limit, not the cap");
        assert!(l.admit("10.0.0.1", 6_000).record);
    }

    #[test]
    fn a_flood_from_many_addresses_writes_the_cap_and_one_summary_a_second() {
        let mut l = RefusalLimit::default();
        let mut written = 0;
        let mut summarized = 0;
        let mut records = 0;
        // 10,000 addresses, each refused once, over 2.5 s.
        for i in 0..10_000u64 {
            let a = l.admit(
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                10_000 + i / 4,
            );
            if a.record {
                written += 1;
                records += 1;
            }
            if let Some(n) = a.unrecorded {
                summarized += n;
                records += 1;
            }
            assert!(l.addresses() <= 3 * REFUSALS_PER_SECOND as usize, "{}", l.addresses());
        }
        // In seconds 10, 11 and 12, each second records up to the cap, and a summary is written at
        // the start of seconds 11 and 12.
        assert_eq!(written, 3 * REFUSALS_PER_SECOND as u64);
        assert_eq!(records, 3 * REFUSALS_PER_SECOND as u64 + 2);
        // The third second's leftovers are summed up by the next refusal after it.
        let next = l.admit("10.99.99.99", 20_000);
        assert!(next.record);
        assert_eq!(summarized + next.unrecorded.unwrap(), 10_000 - written);
        assert_eq!(l.admit("10.99.99.98", 20_001).unrecorded, None, "one summary a second");
    }

    #[test]
    fn the_address_map_stays_bounded_whatever_the_clock_does() {
        let mut l = RefusalLimit::default();
        for i in 0..50_000u64 {
            // A clock that keeps going back resets the count every call.
            l.admit(&format!("a{i}"), 100_000_000 - i * 1000);
            assert!(l.addresses() <= MAX_ADDRESSES);
        }
    }
}
