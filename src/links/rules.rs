//! The link state machine as pure functions of (link, fact, now): who may be served, what a log
//! line or a socket sample settles, when a link is due, when it has stalled. No I/O and no clock
//! here, so every rule is tested with explicit times.
//!
//! The ledger (SPEC §2): a link has `max_downloads` slots. A request that would send body bytes
//! is either a read (a few bytes a previewer or scanner takes, charged to its address at the
//! check) or runs under a claim on one slot. The check names what it admitted in the answer it
//! gives nginx (`Use::header`), nginx writes that into the request's log line, and the line is
//! credited by it: bytes are never attributed by reading a client's headers a second time.
//! Every body byte handed out is then one of: new coverage of a slot (at most the file's size per
//! slot), a re-sent byte drawn from the link's re-send budget, a read under the reads' cap, or a
//! grace byte under the grace cap. Each of these is reserved or checked before nginx may send it,
//! which is what bounds what any set of clients can take.

use std::sync::Arc;

use crate::model::Conn;
pub use crate::model::Use;
use crate::model::coverage::{ByteRange, Coverage};
use crate::model::{Claim, ClientKey, ClientSeen, CloseReason, InFlight, Link, LinkState, Read, RequestSeen};
use crate::monitor::record::{AccessRecord, Completion};

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
}

/// How many finished requests a link remembers for its stats.
pub const MAX_REQUESTS_KEPT: usize = 20;
/// How many clients a link's record lists; the rest are added up in the last entry.
pub const MAX_CLIENTS_KEPT: usize = 32;
/// How many addresses' reads a link keeps count of; a further address must claim.
pub const MAX_READERS_KEPT: usize = 64;
/// How many separate ranges a slot's coverage may hold. A download manager's segments stay far
/// below; a client asking for scattered bytes to bloat the record is refused past it.
pub const MAX_FRAGMENTS: usize = 256;

/// Response header bytes assumed when a request was never logged (so its body bytes are never
/// over-counted).
pub const HEADER_ALLOWANCE: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

impl Method {
    pub fn parse(s: &str) -> Self {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => Method::Other,
        }
    }
}

/// A public request as the check sees it, before any bytes are sent.
#[derive(Debug, Clone)]
pub struct Admission {
    pub request_id: Arc<str>,
    pub method: Method,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `If-Range` header, if any: one that does not match makes nginx send the whole file.
    pub if_range: Option<String>,
    pub client: ClientKey,
    /// The connection and what its peer had acknowledged before this request.
    pub conn: Option<(Conn, u64)>,
    /// The connection's first request (nginx's `$connection_requests` is 1): nothing was sent
    /// on it before, so what it had acknowledged is 0 without asking the kernel.
    pub first_on_connection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad token")]
    BadToken,
    #[error("unknown link")]
    Unknown,
    #[error("link is closed")]
    Closed,
    #[error("link has expired")]
    Expired,
    #[error("method not allowed")]
    Method,
    #[error("no downloads left for this client")]
    UsedUp,
    #[error("the request would re-send more than the link's re-send budget")]
    Refetch,
    #[error("only the completing client's range requests are served during the grace period")]
    Grace,
    #[error("the shared file changed")]
    FileChanged,
    #[error("malformed request")]
    Malformed,
    #[error("store unavailable")]
    Unavailable,
    #[error("client is banned")]
    Banned,
    #[error("the access log cannot be written")]
    LogUnwritable,
}

impl Refusal {
    /// A stable name for metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadToken => "bad_token",
            Refusal::Unknown => "unknown_link",
            Refusal::Closed => "closed",
            Refusal::Expired => "expired",
            Refusal::Method => "method",
            Refusal::UsedUp => "used_up",
            Refusal::Refetch => "refetch_budget",
            Refusal::Grace => "grace",
            Refusal::FileChanged => "file_changed",
            Refusal::Malformed => "malformed",
            Refusal::Unavailable => "store_unavailable",
            Refusal::Banned => "banned",
            Refusal::LogUnwritable => "log_unwritable",
        }
    }

    /// Refusals that suggest guessing: they count towards a ban. A well-signed token of a link
    /// that expired or closed is bad luck, not forgery.
    pub fn counts_against_client(&self) -> bool {
        matches!(self, Refusal::BadToken | Refusal::Unknown | Refusal::Malformed)
    }
}

/// What an allowed request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// It took a new claim: a download starts.
    pub new_claim: bool,
    pub what: Use,
}

/// nginx's strong ETag for a file: `"<mtime in hex>-<size in hex>"`.
pub fn etag(mtime_ns: i128, size: u64) -> String {
    format!("\"{:x}-{:x}\"", mtime_ns.div_euclid(1_000_000_000), size)
}

/// The bytes nginx may send for a GET with these `Range` and `If-Range` headers, for a file of
/// `size` bytes. Whatever this cannot read exactly as one satisfiable range, nginx either
/// answers with the whole file or with no body at all, so the whole file is the answer: a
/// request is never thought to ask for less than it may get.
pub fn asked(range: Option<&str>, if_range: Option<&str>, etag: &str, size: u64) -> ByteRange {
    let whole = ByteRange { start: 0, end: size };
    let Some(range) = range else { return whole };
    if if_range.is_some_and(|v| v != etag) {
        return whole;
    }
    let Some(spec) = range
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| range[6..].trim())
    else {
        return whole;
    };
    if spec.contains(',') {
        return whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let parsed = if a.is_empty() {
        // A suffix: the last `b` bytes.
        digits(b)
            .then(|| b.parse::<u64>().ok())
            .flatten()
            .filter(|n| *n > 0)
            .and_then(|n| ByteRange::new(size.saturating_sub(n), size))
    } else if digits(a) && (b.is_empty() || digits(b)) {
        let start = a.parse::<u64>().ok();
        let last = if b.is_empty() {
            Some(size.saturating_sub(1))
        } else {
            b.parse::<u64>().ok()
        };
        match (start, last) {
            (Some(s), Some(l)) if s <= l && s < size => ByteRange::new(s, l.min(size - 1) + 1),
            _ => None,
        }
    } else {
        None
    };
    parsed.unwrap_or(whole)
}

/// Where a `Range: bytes=…` request starts in a file of `size` bytes (0 for anything else: nginx
/// answers those with the whole file).
pub fn range_start(range: Option<&str>, size: u64) -> u64 {
    asked(range, None, "", size).start
}

fn claim_active(inflight: &[InFlight], c: &Claim, now: u64, p: &Policy) -> bool {
    let in_flight = inflight
        .iter()
        .any(|r| matches!(&r.what, Use::Claim { id, .. } if *id == c.id));
    in_flight || now < c.last_end_ms.saturating_add(p.resume_ms)
}

/// The link's re-send budget in all.
pub fn refetch_budget(link: &Link, p: &Policy) -> u64 {
    p.refetch_bytes.saturating_mul(u64::from(link.max_downloads))
}

/// What is left of the re-send budget once what was re-sent and what requests in flight may
/// still re-send are taken off, or `None` when those already pass it. They can: a request that
/// was never logged is charged its whole range as re-sent, on top of what others hold.
fn refetch_left(link: &Link, p: &Policy) -> Option<u64> {
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

/// Whether `n` more bytes read by `address` keep it, and the link, under the reads' limits.
fn fits_reads(link: &Link, address: &str, n: u64, p: &Policy) -> bool {
    let had = link.reads.iter().find(|r| *r.address == *address).map(|r| r.bytes);
    let mine = had.unwrap_or(0).saturating_add(n);
    n > 0
        && (had.is_some() || link.reads.len() < MAX_READERS_KEPT)
        && mine < p.preview_bytes
        && mine.saturating_mul(2) < link.file_size
        && link.reads_total.saturating_add(n) < reads_cap(link, p)
}

fn charge_read(link: &mut Link, address: &Arc<str>, n: u64) {
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
            // Grace repairs a tail: the completing client's ranges, never another copy.
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
    if let Use::Claim { .. } = what {
        // Reads of the address may have just joined the slot, so every hold is worked out again.
        hold_resends(link);
    }
    Ok(Admitted { new_claim, what })
}

/// Takes a new claim for the request's client on a free slot. Returns what the request is
/// admitted as and what it holds from the re-send budget.
fn take_claim(link: &mut Link, a: &Admission, want: ByteRange, now: u64, p: &Policy) -> Result<(Use, u64), Refusal> {
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

/// What an address already read is in its client's hands: when the client claims a slot, it
/// counts toward that slot, once. Only a claim's own bytes complete a download, so reads that
/// would make the slot whole (with what an abandoned claim left in it) stay charged as reads and
/// are not folded in.
fn fold_reads(link: &mut Link, address: &str, slot: u32) {
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

/// The slot a new claim takes: one nobody has received bytes in, else the incomplete one with
/// the most coverage, among those no active claim holds.
fn free_slot(link: &Link) -> Option<u32> {
    let free = |i: &usize| !link.slots[*i].complete && !link.claims.iter().any(|c| c.slot as usize == *i);
    let open = (0..link.slots.len()).filter(free);
    let fresh = open.clone().find(|i| link.slots[*i].coverage.covered() == 0);
    fresh
        .or_else(|| open.max_by_key(|i| link.slots[*i].coverage.covered()))
        .map(|i| i as u32)
}

/// The part of `want` its slot already covers is re-sent: it must fit what is left of the
/// budget, and is held for the request until its log line settles it.
fn reserve(link: &Link, slot: u32, want: ByteRange, p: &Policy) -> Result<u64, Refusal> {
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

/// How many bytes of `want` a slot already covers or one of `others` (the ranges of requests in
/// flight on the slot) may send too: two requests for the same bytes at once send them twice,
/// so those bytes go out again. Only the parts inside `want` are gathered: usually none, and
/// then nothing is allocated.
fn sent_again(covered: &Coverage, others: impl Iterator<Item = ByteRange>, want: ByteRange) -> u64 {
    let mut taken = Coverage::default();
    for r in covered.ranges().iter().copied().chain(others) {
        if let Some(x) = ByteRange::new(r.start.max(want.start), r.end.min(want.end)) {
            taken.insert(x);
        }
    }
    taken.covered()
}

fn on_slot(f: &InFlight, slot: u32) -> bool {
    matches!(f.what, Use::Claim { slot: s, .. } if s == slot)
}

fn asked_of(f: &InFlight) -> ByteRange {
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
fn hold_resends(link: &mut Link) {
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

/// Counts body bytes handed to `client`: the link's and the client's totals, and under a claim,
/// its slot's coverage and the re-send budget. The counts come from log lines and saturate: no
/// line, however odd, can wrap them around or panic the follower.
fn credit(
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
        // A read's bytes are in the client's hands: they count toward the slot its address
        // claims (now, or when it next does), once.
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
    if let Some(c) = link.claims.iter_mut().find(|c| c.id == *id) {
        c.last_end_ms = now;
        c.bytes = c.bytes.saturating_add(d.charged);
    }
    let Some(s) = link.slots.get_mut(*slot as usize) else {
        return;
    };
    let new = d.proven.map_or(0, |r| r.len() - s.coverage.overlap(r));
    link.resent = link.resent.saturating_add(d.charged.saturating_sub(new));
    let empty_file = link.file_size == 0 && d.proven.is_none() && d.charged == 0;
    match d.proven {
        Some(r) => add_to_slot(link, *slot, r, client, now, p, out),
        None if empty_file && !s.complete => complete_slot(link, *slot, client, now, p, out),
        None => {}
    }
}

/// Adds a proven range to a slot's coverage, and completes the slot once it covers the file.
fn add_to_slot(link: &mut Link, slot: u32, r: ByteRange, client: &ClientKey, now: u64, p: &Policy, out: &mut Settled) {
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

/// Keeps the per-client byte counts, at most `MAX_CLIENTS_KEPT` of them: what anyone can make a
/// record hold is bounded.
fn see_client(link: &mut Link, client: &ClientKey, bytes: u64) {
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

fn complete_slot(link: &mut Link, slot: u32, client: &ClientKey, now: u64, p: &Policy, out: &mut Settled) {
    link.slots[slot as usize].complete = true;
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
    // A refused request (444) or one that was never ours sends nothing worth settling.
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
        // A line that proves body bytes the check never admitted (it cannot happen while nginx
        // runs ferry's config): charged to the re-send budget, so it can only cost the client.
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
    remember(
        link,
        RequestSeen {
            request_id: rec.request_id.as_str().into(),
            time_ms: now,
            client,
            method: rec.method.as_str().into(),
            status: rec.status,
            bytes: d.charged,
            range: rec.content_range.as_deref().map(Arc::from),
            completed: rec.completion == Completion::Ok,
        },
    );
    hold_resends(link);
    out
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
const ENDED_WAIT_FACTOR: u64 = 12;

/// A later request arrived on `request_id`'s connection: its response is over. Returns whether
/// anything changed.
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

/// Requests whose connection vanished `after_ms` ago with no log line (an nginx worker was
/// killed) are settled from their last sample: that much is proven from where they started, and
/// their whole range is charged (ferry cannot know what they delivered).
pub fn settle_unlogged(link: &mut Link, now: u64, after_ms: u64, p: &Policy) -> bool {
    let (lost, kept): (Vec<InFlight>, Vec<InFlight>) = link
        .inflight
        .drain(..)
        // An ended request's log line is already written: wait for it far longer.
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
        // Should its log line turn up after all, it is not counted a second time.
        remember(
            link,
            RequestSeen {
                request_id: f.request_id.clone(),
                time_ms: now,
                client: f.client.clone(),
                method: "GET".into(),
                status: 0,
                bytes: d.charged,
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
fn remember(link: &mut Link, r: RequestSeen) {
    let requests = Arc::make_mut(&mut link.requests);
    if requests.len() >= MAX_REQUESTS_KEPT {
        requests.remove(0);
    }
    requests.push(r);
}

/// Body bytes delivered to this link so far, including requests still in flight.
pub fn delivered(link: &Link) -> u64 {
    link.inflight
        .iter()
        .filter(|f| f.claims())
        .fold(link.bytes_served, |sum, f| sum.saturating_add(f.delivered))
}

/// Body bytes received under claims (what readers took is not a download's).
fn claimed(link: &Link) -> u64 {
    let claims = link.claims.iter().fold(0u64, |s, c| s.saturating_add(c.bytes));
    link.inflight
        .iter()
        .filter(|f| f.claims())
        .fold(claims, |sum, f| sum.saturating_add(f.delivered))
}

/// Whether a single-download link has stalled: it received at least a preview's worth, is not
/// complete, and nothing moved for the stall timeout.
pub fn stalled(link: &Link, now: u64, p: &Policy) -> bool {
    link.max_downloads == 1
        && link.state == LinkState::Downloading
        && link.downloads_completed == 0
        && claimed(link) >= p.preview_bytes
        && link.last_progress_ms.is_some_and(|t| now >= t + p.stall_ms)
}

/// With downloads left over, a stall only drops the stalled claims. Returns whether any was.
pub fn drop_stalled_claims(link: &mut Link, now: u64, p: &Policy) -> bool {
    if link.max_downloads == 1 {
        return false;
    }
    let before = link.claims.len();
    let Link { claims, inflight, .. } = link;
    claims.retain(|c| {
        let last = inflight
            .iter()
            .filter(|f| matches!(&f.what, Use::Claim { id, .. } if *id == c.id))
            .map(|f| f.progress_ms)
            .max()
            .unwrap_or(c.last_end_ms);
        !(c.bytes >= p.preview_bytes && now >= last.max(c.last_end_ms) + p.stall_ms)
    });
    link.claims.len() != before
}

/// Closes the link for `reason`: the record is the gate, so from here on every check refuses it.
/// Returns false when it was already closed (teardown is idempotent; the first reason stays).
pub fn close(link: &mut Link, reason: CloseReason, now: u64) -> bool {
    if link.state == LinkState::Closed {
        return false;
    }
    link.state = LinkState::Closed;
    link.close_reason = Some(reason);
    link.closed_at_ms = Some(now);
    link.claims.clear();
    true
}

/// When the link must next be looked at, and why.
pub fn due(link: &Link) -> Option<(u64, CloseReason)> {
    match link.state {
        LinkState::Closed => None,
        LinkState::Completed => {
            let grace = link.grace_until_ms.unwrap_or(0);
            Some((grace.min(link.expires_at_ms), CloseReason::Completed))
        }
        _ => Some((link.expires_at_ms, CloseReason::Expired)),
    }
}

/// Share of the allowance used, between 0 and 1: the completed downloads and the covered share
/// (with bytes in flight) of the most advanced incomplete slot.
pub fn progress(link: &Link) -> f64 {
    let max = link.max_downloads.max(1) as f64;
    let size = link.file_size.max(1) as f64;
    let partial = if link.downloads_completed >= link.max_downloads || link.file_size == 0 {
        0.0
    } else {
        link.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.complete)
            .map(|(i, s)| {
                let live = link
                    .inflight
                    .iter()
                    .filter(|f| matches!(f.what, Use::Claim { slot, .. } if slot as usize == i))
                    .map(|f| f.delivered as f64)
                    .sum::<f64>();
                ((s.coverage.covered() as f64 + live) / size).min(0.999)
            })
            .fold(0.0, f64::max)
    };
    ((link.downloads_completed as f64 + partial) / max).min(1.0)
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
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::link::test_link;

    const P: Policy = TEST_POLICY;
    /// Header bytes of the lines `line` makes.
    const HEADER: u64 = 300;

    fn client(n: u8) -> ClientKey {
        ClientKey {
            address: format!("127.0.0.{n}").into(),
            user_agent: "curl".into(),
        }
    }

    fn req(id: &str, method: Method, range: Option<&str>, c: u8) -> Admission {
        Admission {
            request_id: format!("{id:0>32}").into(),
            method,
            range: range.map(String::from),
            if_range: None,
            client: client(c),
            conn: None,
            first_on_connection: false,
        }
    }

    fn get(id: &str, c: u8) -> Admission {
        req(id, Method::Get, None, c)
    }

    fn ranged(id: &str, range: &str, c: u8) -> Admission {
        req(id, Method::Get, Some(range), c)
    }

    /// The log line of request `id`, with what the check answered for it (from the link's
    /// requests in flight).
    fn line(l: &Link, id: &str, status: u16, body: u64, cr: Option<&str>, ok: bool) -> AccessRecord {
        let request_id = format!("{id:0>32}");
        let f = l.inflight.iter().find(|f| *f.request_id == *request_id);
        let method = match f.map(|f| &f.what) {
            Some(Use::Head) => "HEAD",
            _ => "GET",
        };
        AccessRecord {
            msec: 0.0,
            request_id,
            tunnel_id: None,
            method: method.into(),
            status,
            bytes_sent: body + HEADER,
            body_bytes_sent: body,
            content_range: cr.map(String::from),
            completion: if ok { Completion::Ok } else { Completion::Aborted },
            client: f.map_or("127.0.0.9".into(), |f| f.client.address.to_string()),
            user_agent: "whatever the line says".into(),
            preview: false,
            claim: f.map(|f| f.what.header()),
        }
    }

    fn done(l: &mut Link, id: &str, status: u16, body: u64, cr: Option<&str>, now: u64) -> Settled {
        let rec = line(l, id, status, body, cr, true);
        settle(l, &rec, client(9), None, now, &P)
    }

    fn new_claim(r: Result<Admitted, Refusal>) -> bool {
        matches!(
            r,
            Ok(Admitted {
                new_claim: true,
                what: Use::Claim { .. }
            })
        )
    }

    #[test]
    fn what_a_request_asks_for() {
        let tag = etag(5_000_000_000, 1000);
        assert_eq!(tag, "\"5-3e8\"");
        type Case<'a> = (Option<&'a str>, Option<&'a str>, (u64, u64));
        let table: &[Case] = &[
            (None, None, (0, 1000)),
            (Some("bytes=0-99"), None, (0, 100)),
            (Some("BYTES=10-"), None, (10, 1000)),
            (Some("bytes= 5 - 9"), None, (5, 10)),
            (Some("bytes=-100"), None, (900, 1000)),
            (Some("bytes=-5000"), None, (0, 1000)),
            (Some("bytes=990-5000"), None, (990, 1000)),
            // What nginx answers whole or with no body is taken as the whole file.
            (Some("bytes=0-1,5-6"), None, (0, 1000)),
            (Some("bytes=1000-"), None, (0, 1000)),
            (Some("bytes=9-5"), None, (0, 1000)),
            (Some("bytes=-0"), None, (0, 1000)),
            (Some("items=0-5"), None, (0, 1000)),
            (Some("bytes=0x1-5"), None, (0, 1000)),
            (Some("bytes=99999999999999999999999-"), None, (0, 1000)),
            // An If-Range that does not match makes nginx send everything.
            (Some("bytes=0-99"), Some("\"5-3e8\""), (0, 100)),
            (Some("bytes=0-99"), Some("\"old\""), (0, 1000)),
            (Some("bytes=0-99"), Some("Thu, 01 Jan 1970 00:00:05 GMT"), (0, 1000)),
        ];
        for (range, if_range, (a, b)) in table {
            let r = asked(*range, *if_range, &tag, 1000);
            assert_eq!((r.start, r.end), (*a, *b), "{range:?} {if_range:?}");
        }
    }

    #[test]
    fn claim_values_read_back() {
        for u in [
            Use::Head,
            Use::Read,
            Use::Grace,
            Use::Claim {
                slot: 3,
                id: "abc123".into(),
            },
        ] {
            assert_eq!(Use::parse(&u.header()), Some(u));
        }
        for bad in ["", "c", "c1", "c.x", "cx.y", "c1.", "c1.a-b", "claim", "READ"] {
            assert_eq!(Use::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn one_claim_at_a_time_for_a_single_download() {
        let mut l = test_link(1000, 1);
        assert!(new_claim(admit(&mut l, &get("a", 1), 10, &P)));
        assert_eq!(admit(&mut l, &get("b", 2), 11, &P), Err(Refusal::UsedUp));
        // The claiming client may open parallel requests, on the same claim.
        let c = admit(&mut l, &ranged("c", "bytes=500-799", 1), 12, &P).unwrap();
        assert!(!c.new_claim && c.what == l.inflight[0].what);
        // HEAD never claims, from anyone.
        assert_eq!(
            admit(&mut l, &req("d", Method::Head, None, 3), 13, &P).unwrap().what,
            Use::Head
        );
        assert_eq!(
            admit(&mut l, &req("e", Method::Other, None, 1), 13, &P),
            Err(Refusal::Method)
        );
        assert_eq!(l.claims.len(), 1);
        assert_eq!(l.inflight[1].range_start, 500);
    }

    #[test]
    fn a_claim_lapses_after_the_resume_window_and_its_slot_goes_on() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        let rec = line(&l, "a", 200, 1000, None, false);
        // The socket's close notification: 300 of header and 400 of body acknowledged.
        settle(&mut l, &rec, client(1), Some(HEADER + 400), 100, &P);
        assert_eq!((l.bytes_served, l.slots[0].coverage.covered()), (400, 400));
        assert_eq!(
            admit(&mut l, &get("b", 2), 100 + P.resume_ms - 1, &P),
            Err(Refusal::UsedUp)
        );
        // Another address resumes the slot (wget -c from a changed address).
        assert!(new_claim(admit(
            &mut l,
            &ranged("b", "bytes=400-", 2),
            100 + P.resume_ms,
            &P
        )));
        let s = done(&mut l, "b", 206, 600, Some("bytes 400-999/1000"), 200 + P.resume_ms);
        assert!(s.download_completed && s.link_completed);
        assert_eq!(l.completer, Some(client(2)));
    }

    #[test]
    fn small_pieces_by_any_address_are_reads_until_they_add_up() {
        // preview 100, size 1000: an address reads below 100 bytes, the link below 500 in all.
        let mut l = test_link(1000, 1);
        let a = admit(&mut l, &ranged("a", "bytes=0-98", 1), 0, &P).unwrap();
        assert_eq!(a.what, Use::Read);
        done(&mut l, "a", 206, 99, Some("bytes 0-98/1000"), 1);
        // One more byte reaches the preview size: no longer a read, so a claim.
        assert!(new_claim(admit(&mut l, &ranged("b", "bytes=99-99", 1), 2, &P)));
        // Another User-Agent of the same address reads nothing more: the address counts.
        let mut other = ranged("c", "bytes=100-150", 1);
        other.client.user_agent = "caf\u{e9}".into();
        assert_eq!(admit(&mut l, &other, 3, &P), Err(Refusal::UsedUp));
        // A whole GET is never a read, nor is a small file read whole.
        assert_eq!(admit(&mut l, &get("d", 2), 4, &P), Err(Refusal::UsedUp));
        let mut tiny = test_link(50, 1);
        assert!(new_claim(admit(&mut tiny, &get("t", 1), 0, &P)));
        // Other addresses read until the link's reads reach min(8 × 100, 500).
        let mut n = 0;
        for c in 2..=20u8 {
            match admit(&mut l, &ranged(&format!("r{c}"), "bytes=200-289", c), 5, &P) {
                Ok(a) => {
                    assert_eq!(a.what, Use::Read);
                    n += 1;
                }
                Err(e) => assert_eq!(e, Refusal::UsedUp),
            }
        }
        assert_eq!(l.reads_total, 99 + 90 * n);
        assert!(l.reads_total < reads_cap(&l, &P), "{} reads", l.reads_total);
        assert_eq!(n, 4);
    }

    #[test]
    fn re_sent_bytes_draw_on_the_budget() {
        // refetch 400 × 1 download.
        let mut l = test_link(1000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        let rec = line(&l, "a", 200, 1000, None, false);
        settle(&mut l, &rec, client(1), Some(HEADER + 900), 1, &P);
        assert_eq!(l.slots[0].coverage.covered(), 900);
        // Restarting from 0 would re-send 900 > 400: refused.
        assert_eq!(admit(&mut l, &get("b", 1), 2, &P), Err(Refusal::Refetch));
        // A range that re-sends 300 fits, and holds 300 while in flight.
        admit(&mut l, &ranged("c", "bytes=600-", 1), 3, &P).unwrap();
        assert_eq!(
            admit(&mut l, &ranged("d", "bytes=700-", 1), 3, &P),
            Err(Refusal::Refetch)
        );
        let s = done(&mut l, "c", 206, 400, Some("bytes 600-999/1000"), 4);
        assert!(s.link_completed);
        assert_eq!((l.bytes_served, l.resent), (1300, 300));
    }

    #[test]
    fn an_aborted_request_is_charged_what_nginx_sent_when_its_close_is_unknown() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        assert!(sample(&mut l, &format!("{:0>32}", "a"), Some(HEADER + 100), 1));
        let rec = line(&l, "a", 200, 900, None, false);
        settle(&mut l, &rec, client(1), None, 2, &P);
        // Without the socket's last word, what nginx sent is charged and counted as delivered.
        assert_eq!((l.bytes_served, l.slots[0].coverage.covered(), l.resent), (900, 900, 0));
    }

    #[test]
    fn the_line_is_credited_by_the_claim_not_its_headers() {
        let mut l = test_link(1000, 2);
        let mut a = get("a", 1);
        a.client.user_agent = "\u{fffd}\u{fffd}".into();
        admit(&mut l, &a, 0, &P).unwrap();
        // The line's client and User-Agent decode differently: it still counts, for the claim.
        let s = done(&mut l, "a", 200, 1000, None, 1);
        assert!(s.download_completed && !s.link_completed);
        assert_eq!(l.clients[0].client, a.client);
        // A line whose request the link forgot (a crash) is credited by its logged claim.
        assert!(new_claim(admit(&mut l, &get("b", 1), 2, &P)));
        let rec = line(&l, "b", 206, 500, Some("bytes 0-499/1000"), true);
        l.inflight.clear();
        settle(&mut l, &rec, client(7), None, 3, &P);
        assert_eq!(l.slots.iter().map(|s| s.coverage.covered()).sum::<u64>(), 1500);
    }

    #[test]
    fn n_downloads_never_more() {
        let mut l = test_link(100, 2);
        for c in 1..=2u8 {
            assert!(new_claim(admit(&mut l, &get(&format!("g{c}"), c), 0, &P)));
        }
        assert_eq!(admit(&mut l, &get("g3", 3), 0, &P), Err(Refusal::UsedUp));
        for c in 1..=2u8 {
            done(&mut l, &format!("g{c}"), 200, 100, None, 1);
        }
        assert_eq!((l.downloads_completed, l.state), (2, LinkState::Completed));
        assert_eq!(admit(&mut l, &get("g4", 4), 2, &P), Err(Refusal::Grace));
    }

    #[test]
    fn grace_repairs_a_tail_and_never_hands_out_a_copy() {
        // grace 300, size 1000.
        let mut l = test_link(1000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        done(&mut l, "a", 200, 1000, None, 1);
        assert_eq!(l.state, LinkState::Completed);
        assert_eq!(admit(&mut l, &get("b", 1), 2, &P), Err(Refusal::Grace));
        assert_eq!(admit(&mut l, &ranged("c", "bytes=0-", 1), 2, &P), Err(Refusal::Grace));
        assert_eq!(admit(&mut l, &ranged("d", "bytes=800-", 2), 2, &P), Err(Refusal::Grace));
        let mut stale = ranged("e", "bytes=800-", 1);
        stale.if_range = Some("\"other\"".into());
        assert_eq!(admit(&mut l, &stale, 2, &P), Err(Refusal::Grace));
        assert_eq!(
            admit(&mut l, &ranged("f", "bytes=800-", 1), 2, &P).unwrap().what,
            Use::Grace
        );
        assert_eq!(
            admit(&mut l, &ranged("g", "bytes=900-", 1), 2, &P).unwrap().what,
            Use::Grace
        );
        // One byte more would pass the 300 in all.
        assert_eq!(admit(&mut l, &ranged("h", "bytes=999-", 1), 2, &P), Err(Refusal::Grace));
        assert_eq!(l.grace_sent, 300);
        assert_eq!(due(&l), Some((1 + P.grace_ms, CloseReason::Completed)));
    }

    #[test]
    fn expiry_refuses_at_the_deadline_and_late_completion_is_recorded() {
        let mut l = test_link(100, 1);
        let deadline = l.expires_at_ms;
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        assert_eq!(admit(&mut l, &get("b", 1), deadline, &P), Err(Refusal::Expired));
        assert!(close(&mut l, CloseReason::Expired, deadline));
        let s = done(&mut l, "a", 200, 100, None, deadline + 5);
        assert!(s.link_completed);
        assert_eq!(l.close_reason, Some(CloseReason::Completed));
        assert!(
            !close(&mut l, CloseReason::Terminated, 0),
            "closing twice changes nothing"
        );
    }

    #[test]
    fn refused_and_preview_lines_change_nothing() {
        let mut l = test_link(100, 1);
        let mut rec = line(&l, "x", 444, 0, None, true);
        assert_eq!(settle(&mut l, &rec, client(1), None, 1, &P), Settled::default());
        rec.status = 200;
        rec.preview = true;
        assert_eq!(settle(&mut l, &rec, client(1), None, 1, &P), Settled::default());
    }

    #[test]
    fn stalls_follow_progress_not_the_clock_alone() {
        let mut l = test_link(10_000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        let rid = format!("{:0>32}", "a");
        sample(&mut l, &rid, Some(HEADER + 500), 1000);
        assert!(!stalled(&l, 1000 + P.stall_ms - 1, &P));
        sample(&mut l, &rid, Some(HEADER + 600), 2000);
        assert!(!stalled(&l, 1000 + P.stall_ms, &P));
        assert!(stalled(&l, 2000 + P.stall_ms, &P));
    }

    #[test]
    fn with_downloads_left_a_stall_drops_only_the_claim() {
        let mut l = test_link(10_000, 2);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        let rec = line(&l, "a", 200, 10_000, None, false);
        settle(&mut l, &rec, client(1), Some(HEADER + 500), 10, &P);
        assert!(!drop_stalled_claims(&mut l, 10 + P.stall_ms - 1, &P));
        assert!(drop_stalled_claims(&mut l, 10 + P.stall_ms, &P));
        assert!(l.claims.is_empty() && l.state == LinkState::Downloading);
        // Its coverage stays with its slot for whoever resumes it.
        assert_eq!(l.slots[0].coverage.covered(), 500);
    }

    #[test]
    fn a_later_request_on_the_connection_freezes_the_earlier_ones_count() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        let rid = format!("{:0>32}", "a");
        assert!(sample(&mut l, &rid, Some(400), 1));
        assert!(end_on_reuse(&mut l, &rid));
        assert!(
            !sample(&mut l, &rid, Some(900), 2),
            "bytes of the next request are not its own"
        );
        assert!(!end_on_reuse(&mut l, &rid));
    }

    #[test]
    fn a_line_read_twice_counts_once() {
        let mut l = test_link(1000, 2);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        let rec = line(&l, "a", 200, 1000, None, true);
        assert!(settle(&mut l, &rec, client(1), None, 1, &P).download_completed);
        assert_eq!(settle(&mut l, &rec, client(1), None, 2, &P), Settled::default());
        assert_eq!((l.bytes_served, l.downloads_completed), (1000, 1));
    }

    #[test]
    fn an_unlogged_request_is_charged_its_range_and_its_late_line_counts_once() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &ranged("a", "bytes=0-599", 1), 0, &P).unwrap();
        let rid = format!("{:0>32}", "a");
        sample(&mut l, &rid, Some(HEADER_ALLOWANCE + 200), 1);
        let rec = line(&l, "a", 206, 600, Some("bytes 0-599/1000"), true);
        sample(&mut l, &rid, None, 2);
        assert!(!settle_unlogged(&mut l, 2 + 4_999, 5_000, &P));
        assert!(settle_unlogged(&mut l, 2 + 5_000, 5_000, &P));
        assert_eq!(
            (l.bytes_served, l.slots[0].coverage.covered(), l.resent),
            (600, 200, 400)
        );
        assert_eq!(settle(&mut l, &rec, client(1), None, 6000, &P), Settled::default());
    }

    #[test]
    fn a_record_stays_bounded_whoever_comes() {
        let mut l = test_link(1 << 30, 1);
        for i in 0..500u32 {
            let mut a = req(&format!("h{i}"), Method::Head, None, (i % 250) as u8);
            a.client.user_agent = format!("agent {i}").into();
            admit(&mut l, &a, 0, &P).unwrap();
            let rec = line(&l, &format!("h{i}"), 200, 0, None, true);
            settle(&mut l, &rec, client(1), None, 1, &P);
        }
        assert!(l.clients.len() <= MAX_CLIENTS_KEPT, "{} clients kept", l.clients.len());
        assert!(l.requests.len() <= MAX_REQUESTS_KEPT);
        assert!(l.inflight.is_empty());
        // A claim asking for scattered bytes cannot grow its slot's coverage without end.
        admit(&mut l, &ranged("x", "bytes=0-0", 1), 0, &P).unwrap();
        for i in 1..2 * MAX_FRAGMENTS as u64 {
            let r = format!("bytes={}-{}", i * 2, i * 2);
            if admit(&mut l, &ranged(&format!("x{i}"), &r, 1), 0, &P).is_ok() {
                let cr = format!("bytes {}-{}/{}", i * 2, i * 2, 1u64 << 30);
                done(&mut l, &format!("x{i}"), 206, 1, Some(&cr), 1);
            }
        }
        assert!(l.slots[0].coverage.ranges().len() <= MAX_FRAGMENTS);
    }

    #[test]
    fn absurd_byte_counts_saturate() {
        let mut l = test_link(100, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        let mut rec = line(&l, "a", 200, 0, None, true);
        rec.body_bytes_sent = u64::MAX;
        rec.bytes_sent = u64::MAX;
        settle(&mut l, &rec, client(1), None, 1, &P);
        assert_eq!(l.bytes_served, u64::MAX);
    }

    #[test]
    fn range_starts() {
        assert_eq!(range_start(Some("bytes=10-20"), 100), 10);
        assert_eq!(range_start(Some("bytes=-10"), 100), 90);
        assert_eq!(range_start(Some("bytes=200-"), 100), 0);
        assert_eq!(range_start(None, 100), 0);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever the headers, what a request may get lies inside the file.
            #[test]
            fn asked_lies_inside_the_file(range in ".{0,40}", if_range in proptest::option::of(".{0,12}"), size in 0u64..10_000) {
                let r = asked(Some(&range), if_range.as_deref(), "\"1-2\"", size);
                prop_assert!(r.start <= r.end && r.end <= size);
            }
        }
    }
}
