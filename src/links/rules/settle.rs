//! What a log line or a socket sample settles: which bytes reached the client, which slot they
//! cover, and when a download is complete.

use std::sync::Arc;

use super::admit::hold_resends;
use super::policy::{HEADER_ALLOWANCE, MAX_CLIENTS_KEPT, MAX_FRAGMENTS, MAX_REQUESTS_KEPT, Policy};
use crate::model::coverage::ByteRange;
use crate::model::{ClientKey, ClientSeen, CloseReason, InFlight, Link, LinkState, RequestSeen, Use};
use crate::monitor::record::{AccessRecord, Completion};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settled {
    /// The log line belonged to this link and changed it.
    pub changed: bool,
    /// This line completed one download.
    pub download_completed: bool,
    /// This line used up the allowance: the link enters its grace period.
    pub link_completed: bool,
}

/// What one request handed out, as far as ferry can prove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Body bytes charged against the link: what was delivered, or when that cannot be known,
    /// what nginx handed to the socket.
    pub charged: u64,
    /// The range counted as the recipient's: what a completed request sent, what an aborted
    /// one's socket acknowledged, or (when that is unknown) what nginx handed to the socket.
    pub proven: Option<ByteRange>,
}

/// Counts body bytes handed to `client` in the link's and the client's totals and, for a request
/// under a claim, in its slot's coverage and the re-send budget. The counts come from log lines and
/// saturate, so no line, however odd, can make them wrap around or make the follower panic.
pub(super) fn credit(
    link: &mut Link,
    client: &ClientKey,
    what: Option<&Use>,
    d: Delivery,
    now: u64,
    p: &Policy,
    out: &mut Settled,
) {
    if d.charged > 0 {
        link.bytes_served = link.bytes_served.saturating_add(d.charged);
        link.last_progress_ms = Some(now);
    }
    see_client(link, client, d.charged);
    if let (Some(Use::Read), Some(r)) = (what, d.proven) {
        // A read's bytes are in the client's hands, so they count once toward the slot that the
        // client's address claims, now or at its next claim.
        match link.claims.iter().find(|c| c.client.address == client.address) {
            Some(c) => {
                let (slot, owner) = (c.slot, c.client.clone());
                add_to_slot(link, slot, r, &owner, now, p, out);
            }
            None => {
                if let Some(read) = link.reads.iter_mut().find(|x| x.address == client.address)
                    && read.coverage.ranges().len() < MAX_FRAGMENTS
                {
                    read.coverage.insert(r);
                }
            }
        }
        return;
    }
    let Some(Use::Claim { slot, id }) = what else {
        return;
    };
    // The claim knows its slot's place now; the logged one may be from before an owner changed
    // `max_downloads` (see `allowance.rs`).
    let mut slot = slot;
    if let Some(c) = link.claims.iter_mut().find(|c| c.id == *id) {
        c.last_end_ms = now;
        c.bytes = c.bytes.saturating_add(d.charged);
        slot = &c.slot;
    }
    let slot = *slot;
    let Some(s) = link.slots.get_mut(slot as usize) else {
        // A slot that is gone adds nothing: its bytes are re-sent bytes.
        link.resent = link.resent.saturating_add(d.charged);
        return;
    };
    let new = d.proven.map_or(0, |r| r.len() - s.coverage.overlap(r));
    link.resent = link.resent.saturating_add(d.charged.saturating_sub(new));
    let empty_file = link.file_size == 0 && d.proven.is_none() && d.charged == 0;
    match d.proven {
        Some(r) => add_to_slot(link, slot, r, client, now, p, out),
        None if empty_file && !s.complete => complete_slot(link, slot, client, now, p, out),
        None => {}
    }
}

/// Adds a proven range to a slot's coverage, and completes the slot once it covers the file.
pub(super) fn add_to_slot(
    link: &mut Link,
    slot: u32,
    r: ByteRange,
    client: &ClientKey,
    now: u64,
    p: &Policy,
    out: &mut Settled,
) {
    let Some(s) = link.slots.get_mut(slot as usize) else {
        return;
    };
    if s.complete {
        return;
    }
    s.coverage.insert(r);
    if s.coverage.covers(link.file_size) {
        complete_slot(link, slot, client, now, p, out);
    }
}

/// Keeps the per-client byte counts, at most `MAX_CLIENTS_KEPT` of them, so that what anyone can
/// make a record hold is bounded.
pub(super) fn see_client(link: &mut Link, client: &ClientKey, bytes: u64) {
    if let Some(seen) = link.clients.iter_mut().find(|c| &c.client == client) {
        seen.bytes = seen.bytes.saturating_add(bytes);
    } else if link.clients.len() < MAX_CLIENTS_KEPT - 1 {
        link.clients.push(ClientSeen {
            client: client.clone(),
            bytes,
        });
    } else {
        let others = ClientKey {
            address: "others".into(),
            user_agent: "".into(),
        };
        match link.clients.iter_mut().find(|c| c.client == others) {
            Some(o) => o.bytes = o.bytes.saturating_add(bytes),
            None => link.clients.push(ClientSeen { client: others, bytes }),
        }
    }
}

pub(super) fn complete_slot(link: &mut Link, slot: u32, client: &ClientKey, now: u64, p: &Policy, out: &mut Settled) {
    link.slots[slot as usize].complete = true;
    link.slots[slot as usize].completed_by = Some((client.clone(), now));
    link.claims.retain(|c| c.slot != slot);
    link.downloads_completed = link.slots.iter().filter(|s| s.complete).count() as u32;
    out.download_completed = true;
    if link.downloads_completed < link.max_downloads {
        return;
    }
    out.link_completed = true;
    match link.state {
        LinkState::Closed => {
            // An in-flight request outlived the deadline and finished the download.
            if link.close_reason == Some(CloseReason::Expired) {
                link.close_reason = Some(CloseReason::Completed);
            }
        }
        _ => {
            link.state = LinkState::Completed;
            link.completer = Some(client.clone());
            link.grace_until_ms = Some(now + p.grace_ms);
        }
    }
}

/// What a logged request delivered. `final_acked` is what its connection's peer had acknowledged
/// when the socket closed (the kernel's close notification), when ferry has it.
pub fn delivery(link: &Link, rec: &AccessRecord, flight: Option<&InFlight>, final_acked: Option<u64>) -> Delivery {
    let sent = match (rec.method.as_str(), rec.status) {
        ("GET", 200) => ByteRange::new(0, link.file_size),
        ("GET", 206) => rec
            .content_range
            .as_deref()
            .and_then(|v| ByteRange::from_content_range(v, link.file_size)),
        _ => None,
    };
    let body_sent = match sent {
        Some(r) => rec.body_bytes_sent.min(r.len()),
        None => 0,
    };
    match (&rec.completion, sent) {
        (Completion::Ok, r) => Delivery {
            charged: rec.body_bytes_sent,
            proven: r,
        },
        (Completion::Aborted, None) => Delivery {
            charged: rec.body_bytes_sent,
            proven: None,
        },
        // Aborted: only what the peer acknowledged is proven, less the response header.
        (Completion::Aborted, Some(r)) => {
            let header = rec.bytes_sent.saturating_sub(rec.body_bytes_sent);
            let baseline = flight.map_or(0, |f| f.baseline);
            // Without the close notification ferry cannot know what arrived: what nginx handed
            // to the socket is charged and counted as the recipient's, so uncertainty costs the
            // recipient (who may have to fetch those bytes again) and never the owner.
            let delivered = final_acked
                .map(|a| a.saturating_sub(baseline).saturating_sub(header).min(body_sent))
                .unwrap_or(body_sent);
            Delivery {
                charged: delivered,
                proven: ByteRange::new(r.start, r.start + delivered),
            }
        }
    }
}

/// Applies one access-log line (the final ledger of one request) to its link. `client` is the
/// line's own client, used only when the link has no record of the request.
pub fn settle(
    link: &mut Link,
    rec: &AccessRecord,
    client: ClientKey,
    final_acked: Option<u64>,
    now: u64,
    p: &Policy,
) -> Settled {
    if rec.preview || link.requests.iter().any(|r| *r.request_id == *rec.request_id) {
        return Settled::default();
    }
    // An upload link's requests carry no file bytes out, and what they bring in is counted as it
    // is written. Their lines are kept only to show what nginx read from each client.
    if link.is_upload() {
        remember(link, seen(rec, client, now, rec.body_bytes_sent));
        return Settled {
            changed: true,
            ..Settled::default()
        };
    }
    let flight = link
        .inflight
        .iter()
        .position(|r| *r.request_id == *rec.request_id)
        .map(|i| link.inflight.swap_remove(i));
    // The check's answer, as nginx logged it, says what the request was admitted as.
    let what = flight
        .as_ref()
        .map(|f| f.what.clone())
        .or_else(|| rec.claim.as_deref().and_then(Use::parse));
    // A refused request (444), or one that this link never admitted, sent nothing worth settling.
    if what.is_none() && !matches!(rec.status, 200 | 206) {
        return Settled::default();
    }
    let mut out = Settled {
        changed: true,
        ..Settled::default()
    };
    link.last_activity_ms = Some(now);
    let d = delivery(link, rec, flight.as_ref(), final_acked);
    // Credited to the client the check admitted, not to whatever the log line's bytes decode to.
    let client = match (&flight, &what) {
        (Some(f), _) => f.client.clone(),
        (None, Some(Use::Claim { id, .. })) => link
            .claims
            .iter()
            .find(|c| c.id == *id)
            .map_or(client, |c| c.client.clone()),
        _ => client,
    };
    match &what {
        // A line may prove body bytes that the check never admitted, although that cannot happen
        // while nginx runs ferry's config. Such bytes are charged to the re-send budget, so they
        // can only cost the client.
        None => {
            link.resent = link.resent.saturating_add(d.charged);
            see_client(link, &client, d.charged);
            link.bytes_served = link.bytes_served.saturating_add(d.charged);
        }
        Some(u) => {
            let empty_ok =
                link.file_size == 0 && rec.method == "GET" && rec.status == 200 && rec.completion == Completion::Ok;
            let d = if empty_ok {
                Delivery {
                    charged: 0,
                    proven: None,
                }
            } else {
                d
            };
            credit(link, &client, Some(u), d, now, p, &mut out);
        }
    }
    remember(link, seen(rec, client, now, d.charged));
    hold_resends(link);
    out
}

/// A logged request as the link keeps it, with `bytes` of body counted for it.
fn seen(rec: &AccessRecord, client: ClientKey, now: u64, bytes: u64) -> RequestSeen {
    RequestSeen {
        request_id: rec.request_id.as_str().into(),
        time_ms: now,
        client,
        method: rec.method.as_str().into(),
        status: rec.status,
        bytes,
        received: rec.request_length,
        range: rec.content_range.as_deref().map(Arc::from),
        completed: rec.completion == Completion::Ok,
    }
}

/// A socket sample for one request in flight: `Some(acked)` or `None` when the connection is gone.
/// Returns whether anything changed.
pub fn sample(link: &mut Link, request_id: &str, acked: Option<u64>, now: u64) -> bool {
    let Some(f) = link.inflight.iter_mut().find(|r| &*r.request_id == request_id) else {
        return false;
    };
    match acked {
        // Bytes now on the connection belong to a later request.
        Some(_) if f.ended => false,
        Some(a) => {
            let d = a.saturating_sub(f.baseline);
            if d > f.delivered {
                f.delivered = d;
                f.progress_ms = now;
                if f.claims() {
                    link.last_progress_ms = Some(now);
                }
                return true;
            }
            false
        }
        None if f.gone_ms.is_none() => {
            f.gone_ms = Some(now);
            true
        }
        None => false,
    }
}

/// A request ended by a later one on its connection is settled unlogged only this many times
/// later than one whose connection simply vanished.
pub(super) const ENDED_WAIT_FACTOR: u64 = 12;

/// Records that a later request arrived on `request_id`'s connection, which means that its
/// response is over. Returns whether anything changed.
pub fn end_on_reuse(link: &mut Link, request_id: &str) -> bool {
    match link
        .inflight
        .iter_mut()
        .find(|f| &*f.request_id == request_id && !f.ended)
    {
        Some(f) => {
            f.ended = true;
            true
        }
        None => false,
    }
}

/// Settles the requests whose connection vanished `after_ms` ago without a log line (for example
/// because an nginx worker was killed), using their last sample. What that sample acknowledged
/// counts as proven from where the request started, and the request's whole range is charged,
/// because ferry cannot know what it delivered.
pub fn settle_unlogged(link: &mut Link, now: u64, after_ms: u64, p: &Policy) -> bool {
    let (lost, kept): (Vec<InFlight>, Vec<InFlight>) = link
        .inflight
        .drain(..)
        // An ended request's log line has already been written, so wait far longer for it.
        .partition(|f| {
            let wait = if f.ended {
                after_ms * ENDED_WAIT_FACTOR
            } else {
                after_ms
            };
            f.gone_ms.is_some_and(|g| now >= g + wait)
        });
    link.inflight = kept;
    let mut out = Settled::default();
    for f in &lost {
        let proven = f.delivered.saturating_sub(HEADER_ALLOWANCE);
        let d = match f.what {
            Use::Head => Delivery {
                charged: 0,
                proven: None,
            },
            _ => Delivery {
                charged: f.range_end.saturating_sub(f.range_start),
                proven: ByteRange::new(f.range_start, (f.range_start + proven).min(f.range_end)),
            },
        };
        credit(link, &f.client, Some(&f.what), d, now, p, &mut out);
        // If the request's log line turns up after all, it is not counted a second time.
        remember(
            link,
            RequestSeen {
                request_id: f.request_id.clone(),
                time_ms: now,
                client: f.client.clone(),
                method: "GET".into(),
                status: 0,
                bytes: d.charged,
                received: 0,
                range: None,
                completed: false,
            },
        );
    }
    if !lost.is_empty() {
        hold_resends(link);
    }
    !lost.is_empty()
}

/// Keeps a settled request among the link's last `MAX_REQUESTS_KEPT`.
pub(super) fn remember(link: &mut Link, r: RequestSeen) {
    let requests = Arc::make_mut(&mut link.requests);
    if requests.len() >= MAX_REQUESTS_KEPT {
        requests.remove(0);
    }
    requests.push(r);
}
