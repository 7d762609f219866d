//! The timings, sizes and budgets the rules work within (SPEC §2).

use crate::model::{Claim, InFlight, Link, Use};

/// Timings and sizes the rules depend on (SPEC §2), from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_tunnel_s: u64,
    pub grace_ms: u64,
    pub resume_ms: u64,
    pub stall_ms: u64,
    pub preview_bytes: u64,
    /// What the completing client may still fetch in the grace period, in all.
    pub grace_bytes: u64,
    /// The re-send budget per download.
    pub refetch_bytes: u64,
    /// A new link's expiry and downloads when the owner does not say.
    pub default_expires_s: u64,
    pub default_max_downloads: u32,
    /// The most downloads one link may allow.
    pub max_downloads_limit: u32,
}

/// How many finished requests a link remembers for its stats.
pub const MAX_REQUESTS_KEPT: usize = 20;

/// How many clients a link's record lists; the rest are added up in the last entry.
pub const MAX_CLIENTS_KEPT: usize = 32;

/// How many addresses' reads a link keeps count of. Any further address must take a claim.
pub const MAX_READERS_KEPT: usize = 64;

/// How many separate ranges a slot's coverage may hold. A download manager's segments stay far
/// below this limit. A client that asks for scattered bytes to bloat the record is refused past it.
pub const MAX_FRAGMENTS: usize = 256;

/// Response header bytes assumed when a request was never logged (so its body bytes are never
/// over-counted).
pub const HEADER_ALLOWANCE: u64 = 1024;

pub(super) fn claim_active(inflight: &[InFlight], c: &Claim, now: u64, p: &Policy) -> bool {
    let in_flight = inflight
        .iter()
        .any(|r| matches!(&r.what, Use::Claim { id, .. } if *id == c.id));
    in_flight || now < c.last_end_ms.saturating_add(p.resume_ms)
}

/// The link's re-send budget in all.
pub fn refetch_budget(link: &Link, p: &Policy) -> u64 {
    p.refetch_bytes.saturating_mul(u64::from(link.max_downloads))
}

/// What is left of the re-send budget once what was re-sent and what requests in flight may still
/// re-send are taken off, or `None` when those already exceed it. That can happen, because a
/// request that was never logged is charged its whole range as re-sent, on top of what the others
/// hold.
pub(super) fn refetch_left(link: &Link, p: &Policy) -> Option<u64> {
    let reserved = link.inflight.iter().fold(0u64, |s, f| s.saturating_add(f.reserved));
    refetch_budget(link, p).checked_sub(link.resent.saturating_add(reserved))
}

/// The reads' cap for the link in all: min(8 × the preview size, half the file).
pub fn reads_cap(link: &Link, p: &Policy) -> u64 {
    p.preview_bytes.saturating_mul(8).min(link.file_size / 2)
}

/// The grace period's cap: min(`FERRY_GRACE_BYTES`, size − 1).
pub fn grace_cap(link: &Link, p: &Policy) -> u64 {
    p.grace_bytes.min(link.file_size.saturating_sub(1))
}

/// The policy the unit and property tests run under.
#[cfg(test)]
pub(crate) const TEST_POLICY: Policy = Policy {
    max_tunnel_s: 3600,
    grace_ms: 60_000,
    resume_ms: 30_000,
    stall_ms: 300_000,
    preview_bytes: 100,
    grace_bytes: 300,
    refetch_bytes: 400,
    default_expires_s: 3600,
    default_max_downloads: 1,
    max_downloads_limit: 100,
};
