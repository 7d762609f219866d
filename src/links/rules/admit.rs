//! The check's decision: may this request be served, and as what kind of use (a read, a claim on
//! a slot, or a grace fetch)? Any bytes the request may send a second time are first held from the
//! link's re-send budget.

use std::sync::Arc;

use super::policy::{
    MAX_FRAGMENTS, MAX_READERS_KEPT, Policy, claim_active, grace_cap, reads_cap, refetch_budget, refetch_left,
};
use super::request::{Admission, Admitted, Method, Refusal, asked, etag};
use crate::model::coverage::{ByteRange, Coverage};
use crate::model::{Claim, InFlight, Link, LinkState, Read, Use};

/// Whether `n` more bytes read by `address` keep it, and the link, under the reads' limits.
pub(super) fn fits_reads(link: &Link, address: &str, n: u64, p: &Policy) -> bool {
    let had = link.reads.iter().find(|r| *r.address == *address).map(|r| r.bytes);
    let mine = had.unwrap_or(0).saturating_add(n);
    n > 0
        && (had.is_some() || link.reads.len() < MAX_READERS_KEPT)
        && mine < p.preview_bytes
        && mine.saturating_mul(2) < link.file_size
        && link.reads_total.saturating_add(n) < reads_cap(link, p)
}

pub(super) fn charge_read(link: &mut Link, address: &Arc<str>, n: u64) {
    link.reads_total = link.reads_total.saturating_add(n);
    match link.reads.iter_mut().find(|r| r.address == *address) {
        Some(r) => r.bytes = r.bytes.saturating_add(n),
        None => link.reads.push(Read {
            address: address.clone(),
            bytes: n,
            coverage: Default::default(),
        }),
    }
}

/// Decides a request and, when it is allowed, records it as in flight (taking a claim, charging
/// a read or reserving budget as it needs). The caller persists the link afterwards; the whole
/// call is one atomic step.
pub fn admit(link: &mut Link, a: &Admission, now: u64, p: &Policy) -> Result<Admitted, Refusal> {
    if link.state == LinkState::Closed {
        return Err(Refusal::Closed);
    }
    if now >= link.expires_at_ms {
        return Err(Refusal::Expired);
    }
    // Only a request with `If-Range` needs the ETag it is compared with.
    let tag = match a.if_range {
        Some(_) => etag(link.identity.mtime_ns, link.file_size),
        None => String::new(),
    };
    let want = asked(a.range.as_deref(), a.if_range.as_deref(), &tag, link.file_size);
    let mut reserved = 0;
    let mut new_claim = false;
    let what = match a.method {
        Method::Other => return Err(Refusal::Method),
        // The grace period serves the completer's ranges and nothing else.
        Method::Head if link.state == LinkState::Completed => return Err(Refusal::Grace),
        Method::Head => Use::Head,
        Method::Get if link.state == LinkState::Completed => {
            // The grace period only lets the completing client fetch ranges to repair the end of
            // its download. It never hands out another copy.
            let completer = link.completer.as_ref() == Some(&a.client);
            let left = grace_cap(link, p).saturating_sub(link.grace_sent);
            if !(completer && a.range.is_some() && want.len() <= left && want.len() < link.file_size) {
                return Err(Refusal::Grace);
            }
            link.grace_sent += want.len();
            Use::Grace
        }
        Method::Get => {
            let Link { claims, inflight, .. } = link;
            claims.retain(|c| claim_active(inflight, c, now, p));
            if let Some(c) = link.claims.iter().find(|c| c.client == a.client) {
                let (slot, id) = (c.slot, c.id.clone());
                reserved = reserve(link, slot, want, p)?;
                Use::Claim { slot, id }
            } else if fits_reads(link, &a.client.address, want.len(), p) {
                charge_read(link, &a.client.address, want.len());
                Use::Read
            } else {
                let (claimed, held) = take_claim(link, a, want, now, p)?;
                reserved = held;
                new_claim = true;
                claimed
            }
        }
    };
    if let Use::Claim { .. } = what {
        link.last_progress_ms = Some(now);
    }
    let (conn, baseline) = match a.conn {
        Some((c, b)) => (Some(c), b),
        None => (None, 0),
    };
    link.inflight.push(InFlight {
        request_id: a.request_id.clone(),
        client: a.client.clone(),
        what: what.clone(),
        reserved,
        since_ms: now,
        range_start: want.start,
        range_end: want.end,
        conn,
        baseline,
        delivered: 0,
        progress_ms: now,
        gone_ms: None,
        ended: false,
    });
    if new_claim {
        // The address's earlier reads may have just been added to the slot, so every request's
        // hold on the re-send budget is worked out again. A request under an existing claim
        // changes no coverage, and `reserve` already gave it the hold this would.
        hold_resends(link);
    }
    Ok(Admitted { new_claim, what })
}

/// Takes a new claim for the request's client on a free slot. Returns what the request is
/// admitted as and what it holds from the re-send budget.
pub(super) fn take_claim(
    link: &mut Link,
    a: &Admission,
    want: ByteRange,
    now: u64,
    p: &Policy,
) -> Result<(Use, u64), Refusal> {
    let slot = free_slot(link).ok_or(Refusal::UsedUp)?;
    let reserved = reserve(link, slot, want, p)?;
    fold_reads(link, &a.client.address, slot);
    let id: Arc<str> = a.request_id.get(..12).unwrap_or(&a.request_id).into();
    link.claims.push(Claim {
        id: id.clone(),
        slot,
        client: a.client.clone(),
        last_end_ms: now,
        bytes: 0,
    });
    link.state = LinkState::Downloading;
    Ok((Use::Claim { slot, id }, reserved))
}

/// The bytes that an address already read are in its client's hands, so when the client claims a
/// slot they count toward that slot, once. Only a claim's own bytes complete a download, so reads
/// that would make the slot whole (together with what an abandoned claim left in it) stay charged
/// as reads and are not added to the slot.
pub(super) fn fold_reads(link: &mut Link, address: &str, slot: u32) {
    let size = link.file_size;
    if let Some(r) = link.reads.iter_mut().find(|r| *r.address == *address) {
        let s = &mut link.slots[slot as usize];
        let mut merged = s.coverage.clone();
        for &x in std::mem::take(&mut r.coverage).ranges() {
            if merged.ranges().len() < MAX_FRAGMENTS {
                merged.insert(x);
            }
        }
        if !merged.covers(size) {
            s.coverage = merged;
        }
    }
}

/// The slot a new claim takes, among the slots that no active claim holds: one in which nobody has
/// received bytes yet, or else the incomplete one with the most coverage.
pub(super) fn free_slot(link: &Link) -> Option<u32> {
    let free = |i: &usize| !link.slots[*i].complete && !link.claims.iter().any(|c| c.slot as usize == *i);
    let open = (0..link.slots.len()).filter(free);
    let fresh = open.clone().find(|i| link.slots[*i].coverage.covered() == 0);
    fresh
        .or_else(|| open.max_by_key(|i| link.slots[*i].coverage.covered()))
        .map(|i| i as u32)
}

/// The part of `want` that its slot already covers would be sent again. That part must fit in what
/// is left of the re-send budget, and it is held for the request until its log line settles it.
pub(super) fn reserve(link: &Link, slot: u32, want: ByteRange, p: &Policy) -> Result<u64, Refusal> {
    let Some(s) = link.slots.get(slot as usize) else {
        return Err(Refusal::UsedUp);
    };
    if s.coverage.ranges().len() >= MAX_FRAGMENTS && s.coverage.would_fragment(want) {
        return Err(Refusal::Refetch);
    }
    let in_flight = link.inflight.iter().filter(|f| on_slot(f, slot)).map(asked_of);
    let again = sent_again(&s.coverage, in_flight, want);
    // Once what ferry could not prove delivered has used the budget up, or would with what the
    // requests in flight hold, nothing more is sent. That includes bytes the slot lacks: a
    // request that was never logged was charged for bytes it may not have delivered, and those
    // are among them.
    let fits = refetch_left(link, p).is_some_and(|left| again <= left);
    if !fits || link.resent >= refetch_budget(link, p) {
        return Err(Refusal::Refetch);
    }
    Ok(again)
}

/// How many bytes of `want` the slot already covers, or may also be sent by one of `others` (the
/// ranges of requests in flight on the slot). Two requests for the same bytes at the same time
/// send those bytes twice, so they go out again. Only the parts inside `want` are gathered. Usually
/// there are none, and then nothing is allocated.
pub(super) fn sent_again(covered: &Coverage, others: impl Iterator<Item = ByteRange>, want: ByteRange) -> u64 {
    let mut taken = Coverage::default();
    for r in covered.ranges().iter().copied().chain(others) {
        if let Some(x) = ByteRange::new(r.start.max(want.start), r.end.min(want.end)) {
            taken.insert(x);
        }
    }
    taken.covered()
}

pub(super) fn on_slot(f: &InFlight, slot: u32) -> bool {
    matches!(f.what, Use::Claim { slot: s, .. } if s == slot)
}

pub(super) fn asked_of(f: &InFlight) -> ByteRange {
    ByteRange {
        start: f.range_start,
        end: f.range_end,
    }
}

/// Shares out again what the requests in flight hold from the re-send budget, after a slot's
/// coverage or the requests in flight changed. Each request under a claim holds the bytes of its
/// range that its slot covers or that a request listed before it on the same slot may send too.
/// Together they then hold exactly what they may still re-send, whichever of them ends first:
/// when one of two overlapping requests settles, the bytes they share are covered, and the other
/// one, now holding them, sends them again.
pub(super) fn hold_resends(link: &mut Link) {
    let Link { slots, inflight, .. } = link;
    for i in 0..inflight.len() {
        let Use::Claim { slot, .. } = inflight[i].what else {
            continue;
        };
        let held = slots.get(slot as usize).map_or(0, |s| {
            let before = inflight[..i].iter().filter(|f| on_slot(f, slot)).map(asked_of);
            sent_again(&s.coverage, before, asked_of(&inflight[i]))
        });
        inflight[i].reserved = held;
    }
}
