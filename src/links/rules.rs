//! The link state machine as pure functions of (link, fact, now): who may be served, what a log
//! line or a socket sample settles, when a link is due, when it has stalled. No I/O and no clock
//! here, so every rule is tested with explicit times.

use std::sync::Arc;

use super::{Claim, ClientKey, CloseReason, InFlight, Link, LinkState};
use crate::monitor::coverage::ByteRange;
use crate::monitor::record::{AccessRecord, Completion};
use crate::monitor::sockdiag::Conn;

/// Timings and sizes the rules depend on (SPEC §2), from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_tunnel_s: u64,
    pub grace_ms: u64,
    pub resume_ms: u64,
    pub stall_ms: u64,
    pub preview_bytes: u64,
}

/// How many finished requests a link remembers for its stats.
pub const MAX_REQUESTS_KEPT: usize = 20;

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
            Refusal::Grace => "grace",
            Refusal::FileChanged => "file_changed",
            Refusal::Malformed => "malformed",
            Refusal::Unavailable => "store_unavailable",
            Refusal::Banned => "banned",
            Refusal::LogUnwritable => "log_unwritable",
        }
    }
}

impl Refusal {
    /// Refusals that suggest guessing: they count towards a ban.
    pub fn counts_against_client(&self) -> bool {
        matches!(self, Refusal::BadToken | Refusal::Unknown | Refusal::Malformed)
    }
}

/// What an allowed request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// It took a new claim: a download starts.
    NewClaim,
    /// It rides on an existing claim, or sends no body (HEAD), or resumes during grace.
    Served,
}

/// Where a `Range: bytes=…` request starts in a file of `size` bytes (0 for anything else: nginx
/// answers those with the whole file).
pub fn range_start(range: Option<&str>, size: u64) -> u64 {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return 0;
    };
    if spec.contains(',') {
        return 0; // max_ranges 1: served whole
    }
    match spec.split_once('-') {
        // `bytes=-0` asks for nothing: nginx answers 416 with no body, not a start at the end.
        Some(("", suffix)) => suffix
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map_or(0, |n| size.saturating_sub(n)),
        Some((start, _)) => start.trim().parse::<u64>().ok().filter(|s| *s < size).unwrap_or(0),
        None => 0,
    }
}

fn claim_active(inflight: &[InFlight], c: &Claim, now: u64, p: &Policy) -> bool {
    let in_flight = inflight.iter().any(|r| r.client == c.client && r.claims);
    // A claim that received less than a preview's worth ends with its request: a mail scanner
    // reading a few KB must not hold the link for the resume window.
    in_flight || (c.bytes >= p.preview_bytes && now < c.last_end_ms.saturating_add(p.resume_ms))
}

/// Decides a request and, when it is allowed, records it as in flight (taking a claim if it would
/// send body bytes). The caller persists the link afterwards; the whole call is one atomic step.
pub fn admit(link: &mut Link, a: &Admission, now: u64, p: &Policy) -> Result<Admitted, Refusal> {
    if link.state == LinkState::Closed {
        return Err(Refusal::Closed);
    }
    if now >= link.expires_at_ms {
        return Err(Refusal::Expired);
    }
    if a.method == Method::Other {
        return Err(Refusal::Method);
    }
    let claims_body = a.method == Method::Get;
    let mut admitted = Admitted::Served;
    if link.state == LinkState::Completed {
        let completer = link.completer.as_ref() == Some(&a.client);
        if !(completer && a.range.is_some() && claims_body) {
            return Err(Refusal::Grace);
        }
    } else if claims_body {
        // Claims whose time has passed end here; with one download their coverage lives on in
        // the link's own union.
        let Link { claims, inflight, .. } = link;
        claims.retain(|c| claim_active(inflight, c, now, p));
        if !link.claims.iter().any(|c| c.client == a.client) {
            let left = link.max_downloads.saturating_sub(link.downloads_completed) as usize;
            if link.claims.len() >= left {
                return Err(Refusal::UsedUp);
            }
            admitted = Admitted::NewClaim;
            link.claims.push(Claim {
                client: a.client.clone(),
                last_end_ms: now,
                coverage: Default::default(),
                bytes: 0,
            });
        }
        link.state = LinkState::Downloading;
        link.last_progress_ms = Some(now);
    }
    let (conn, baseline) = match a.conn {
        Some((c, b)) => (Some(c), b),
        None => (None, 0),
    };
    link.inflight.push(InFlight {
        request_id: a.request_id.clone(),
        client: a.client.clone(),
        claims: claims_body,
        since_ms: now,
        range_start: range_start(a.range.as_deref(), link.file_size),
        conn,
        baseline,
        delivered: 0,
        progress_ms: now,
        gone_ms: None,
        ended: false,
    });
    Ok(admitted)
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

/// Counts body bytes proven delivered to `client`, over `range` if known. The counts come from
/// log lines and saturate: no line, however odd, can wrap them around or panic the follower.
fn credit(link: &mut Link, client: &ClientKey, bytes: u64, range: Option<ByteRange>, now: u64) {
    if bytes > 0 {
        link.bytes_served = link.bytes_served.saturating_add(bytes);
        link.last_progress_ms = Some(now);
    }
    match link.clients.iter_mut().find(|c| &c.client == client) {
        Some(seen) => seen.bytes = seen.bytes.saturating_add(bytes),
        None => link.clients.push(super::ClientSeen {
            client: client.clone(),
            bytes,
        }),
    }
    if let Some(c) = link.claims.iter_mut().find(|c| &c.client == client) {
        c.last_end_ms = now;
        c.bytes = c.bytes.saturating_add(bytes);
        if let Some(r) = range {
            c.coverage.insert(r);
        }
    }
    if let Some(r) = range {
        link.coverage.insert(r);
    }
}

/// Applies one access-log line (the final ledger of one request) to its link.
pub fn settle(link: &mut Link, rec: &AccessRecord, client: ClientKey, now: u64, p: &Policy) -> Settled {
    if rec.preview || link.requests.iter().any(|r| *r.request_id == *rec.request_id) {
        return Settled::default();
    }
    let flight = link
        .inflight
        .iter()
        .position(|r| *r.request_id == *rec.request_id)
        .map(|i| link.inflight.swap_remove(i));
    // A refused request (444) or one that was never ours sends nothing worth settling.
    if flight.is_none() && !matches!(rec.status, 200 | 206) {
        return Settled::default();
    }
    let mut out = Settled {
        changed: true,
        ..Settled::default()
    };
    link.last_activity_ms = Some(now);
    let sent = match (rec.method.as_str(), rec.status) {
        ("GET", 200) => ByteRange::new(0, link.file_size),
        ("GET", 206) => rec
            .content_range
            .as_deref()
            .and_then(|v| ByteRange::from_content_range(v, link.file_size)),
        _ => None,
    };
    let (bytes, range) = match (&rec.completion, sent) {
        (Completion::Ok, r) => (rec.body_bytes_sent, r),
        // Aborted: only what the peer acknowledged counts, less the response header.
        (Completion::Aborted, Some(r)) => {
            let header = rec.bytes_sent.saturating_sub(rec.body_bytes_sent);
            let acked = flight.as_ref().map_or(0, |f| f.delivered.saturating_sub(header));
            let body = acked.min(rec.body_bytes_sent).min(r.len());
            (body, ByteRange::new(r.start, r.start + body))
        }
        (Completion::Aborted, None) => (0, None),
    };
    credit(link, &client, bytes, range, now);
    remember(
        link,
        super::RequestSeen {
            request_id: rec.request_id.as_str().into(),
            time_ms: now,
            client: client.clone(),
            method: rec.method.as_str().into(),
            status: rec.status,
            bytes,
            range: rec.content_range.as_deref().map(Arc::from),
            completed: rec.completion == Completion::Ok,
        },
    );
    let empty_ok = link.file_size == 0 && rec.method == "GET" && rec.status == 200 && rec.completion == Completion::Ok;
    if range.is_none() && !empty_ok {
        return out;
    }
    complete_if_covered(link, &client, empty_ok, now, p, &mut out);
    out
}

fn complete_if_covered(link: &mut Link, client: &ClientKey, empty_ok: bool, now: u64, p: &Policy, out: &mut Settled) {
    let single = link.max_downloads == 1;
    let idx = link.claims.iter().position(|c| &c.client == client);
    let done = empty_ok
        || if single {
            link.coverage.covers(link.file_size)
        } else {
            idx.is_some_and(|i| link.claims[i].coverage.covers(link.file_size))
        };
    if !done || link.downloads_completed >= link.max_downloads {
        return;
    }
    link.downloads_completed += 1;
    out.download_completed = true;
    if let Some(i) = idx {
        link.claims.remove(i);
    }
    if single {
        link.coverage = Default::default();
    }
    if link.downloads_completed >= link.max_downloads {
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
                if f.claims {
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
/// killed) are settled from their last sample: the bytes count, no range is proven.
pub fn settle_unlogged(link: &mut Link, now: u64, after_ms: u64) -> bool {
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
    for f in &lost {
        let bytes = f.delivered.saturating_sub(HEADER_ALLOWANCE);
        credit(link, &f.client, bytes, None, now);
        // Should its log line turn up after all, it is not counted a second time.
        remember(
            link,
            super::RequestSeen {
                request_id: f.request_id.clone(),
                time_ms: now,
                client: f.client.clone(),
                method: "GET".into(),
                status: 0,
                bytes,
                range: None,
                completed: false,
            },
        );
    }
    !lost.is_empty()
}

/// Keeps a settled request among the link's last `MAX_REQUESTS_KEPT`.
fn remember(link: &mut Link, r: super::RequestSeen) {
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
        .filter(|f| f.claims)
        .fold(link.bytes_served, |sum, f| sum.saturating_add(f.delivered))
}

/// Whether a single-download link has stalled: it received at least a preview's worth, is not
/// complete, and nothing moved for the stall timeout.
pub fn stalled(link: &Link, now: u64, p: &Policy) -> bool {
    link.max_downloads == 1
        && link.state == LinkState::Downloading
        && link.downloads_completed == 0
        && delivered(link) >= p.preview_bytes
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
            .filter(|f| f.client == c.client)
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

/// Share of the allowance used, between 0 and 1, counting bytes still in flight.
pub fn progress(link: &Link) -> f64 {
    let max = link.max_downloads.max(1) as f64;
    let size = link.file_size.max(1) as f64;
    let partial = if link.downloads_completed >= link.max_downloads {
        0.0
    } else if link.max_downloads == 1 {
        let live = link
            .inflight
            .iter()
            .filter(|f| f.claims)
            .map(|f| f.delivered as f64)
            .sum::<f64>();
        if link.file_size == 0 {
            0.0
        } else {
            ((link.coverage.covered() as f64 + live) / size).min(0.999)
        }
    } else {
        link.claims
            .iter()
            .map(|c| {
                let live = link
                    .inflight
                    .iter()
                    .filter(|f| f.claims && f.client == c.client)
                    .map(|f| f.delivered as f64)
                    .sum::<f64>();
                ((c.coverage.covered() as f64 + live) / size).min(0.999)
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
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::test_link;

    const P: Policy = TEST_POLICY;

    fn client(n: u8) -> ClientKey {
        ClientKey {
            address: format!("127.0.0.{n}").into(),
            user_agent: "curl".into(),
        }
    }

    fn req(id: &str, method: Method, range: Option<&str>, c: u8) -> Admission {
        Admission {
            request_id: id.into(),
            method,
            range: range.map(String::from),
            client: client(c),
            conn: None,
            first_on_connection: false,
        }
    }

    fn get(id: &str, c: u8) -> Admission {
        req(id, Method::Get, None, c)
    }

    fn line(id: &str, method: &str, status: u16, body: u64, cr: Option<&str>, ok: bool, c: u8) -> AccessRecord {
        AccessRecord {
            msec: 0.0,
            request_id: id.into(),
            tunnel_id: None,
            method: method.into(),
            status,
            bytes_sent: body + 300,
            body_bytes_sent: body,
            content_range: cr.map(String::from),
            completion: if ok { Completion::Ok } else { Completion::Aborted },
            client: client(c).address.to_string(),
            user_agent: "curl".into(),
            preview: false,
        }
    }

    #[test]
    fn one_claim_at_a_time_for_a_single_download() {
        let mut l = test_link(1000, 1);
        assert_eq!(admit(&mut l, &get("a", 1), 10, &P), Ok(Admitted::NewClaim));
        assert_eq!(admit(&mut l, &get("b", 2), 11, &P), Err(Refusal::UsedUp));
        // The claiming client may open parallel requests.
        assert_eq!(
            admit(&mut l, &req("c", Method::Get, Some("bytes=500-"), 1), 12, &P),
            Ok(Admitted::Served)
        );
        // HEAD never claims, from anyone.
        assert_eq!(
            admit(&mut l, &req("d", Method::Head, None, 3), 13, &P),
            Ok(Admitted::Served)
        );
        assert_eq!(
            admit(&mut l, &req("e", Method::Other, None, 1), 13, &P),
            Err(Refusal::Method)
        );
        assert_eq!(l.claims.len(), 1);
        assert_eq!(
            l.inflight.iter().find(|f| &*f.request_id == "c").unwrap().range_start,
            500
        );
    }

    #[test]
    fn a_claim_lapses_after_the_resume_window() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        settle(
            &mut l,
            &line("a", "GET", 206, 200, Some("bytes 0-199/1000"), true, 1),
            client(1),
            100,
            &P,
        );
        assert_eq!(
            admit(&mut l, &get("b", 2), 100 + P.resume_ms - 1, &P),
            Err(Refusal::UsedUp)
        );
        assert_eq!(
            admit(&mut l, &get("b", 2), 100 + P.resume_ms, &P),
            Ok(Admitted::NewClaim)
        );
    }

    #[test]
    fn a_previewer_sized_claim_ends_with_its_request() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &get("scan", 1), 0, &P).unwrap();
        // The scanner read 50 bytes (under the preview size) and went away.
        settle(
            &mut l,
            &line("scan", "GET", 206, 50, Some("bytes 0-49/1000"), true, 1),
            client(1),
            10,
            &P,
        );
        assert_eq!(admit(&mut l, &get("real", 2), 11, &P), Ok(Admitted::NewClaim));
        assert!(
            !stalled(&l, 11 + P.stall_ms * 2, &P),
            "a previewer's bytes never stall a link"
        );
    }

    #[test]
    fn coverage_completes_resumed_download_once() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &req("a", Method::Get, Some("bytes=0-399"), 1), 0, &P).unwrap();
        let s = settle(
            &mut l,
            &line("a", "GET", 206, 400, Some("bytes 0-399/1000"), true, 1),
            client(1),
            1,
            &P,
        );
        assert!(!s.download_completed);
        // An aborted request counts what its socket acknowledged, less the header.
        admit(&mut l, &req("b", Method::Get, Some("bytes=400-"), 1), 2, &P).unwrap();
        assert!(sample(&mut l, "b", Some(300 + 250), 3));
        let s = settle(
            &mut l,
            &line("b", "GET", 206, 600, Some("bytes 400-999/1000"), false, 1),
            client(1),
            3,
            &P,
        );
        assert!(!s.download_completed);
        assert_eq!(l.bytes_served, 650);
        assert_eq!(l.coverage.covered(), 650);
        admit(&mut l, &req("c", Method::Get, Some("bytes=650-"), 1), 4, &P).unwrap();
        let s = settle(
            &mut l,
            &line("c", "GET", 206, 350, Some("bytes 650-999/1000"), true, 1),
            client(1),
            5,
            &P,
        );
        assert!(s.download_completed && s.link_completed);
        assert_eq!(
            (l.bytes_served, l.downloads_completed, l.state),
            (1000, 1, LinkState::Completed)
        );
        assert_eq!(l.grace_until_ms, Some(5 + P.grace_ms));
        // Grace: only the completer's range requests.
        assert_eq!(admit(&mut l, &get("d", 1), 6, &P), Err(Refusal::Grace));
        assert_eq!(
            admit(&mut l, &req("e", Method::Get, Some("bytes=0-"), 2), 6, &P),
            Err(Refusal::Grace)
        );
        assert_eq!(
            admit(&mut l, &req("f", Method::Get, Some("bytes=0-"), 1), 6, &P),
            Ok(Admitted::Served)
        );
        assert_eq!(due(&l), Some((5 + P.grace_ms, CloseReason::Completed)));
    }

    #[test]
    fn an_aborted_request_without_socket_data_proves_nothing() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        settle(&mut l, &line("a", "GET", 200, 900, None, false, 1), client(1), 1, &P);
        assert_eq!((l.bytes_served, l.coverage.covered()), (0, 0));
    }

    #[test]
    fn head_and_small_range_do_not_complete() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &req("h", Method::Head, None, 1), 0, &P).unwrap();
        let s = settle(&mut l, &line("h", "HEAD", 200, 0, None, true, 1), client(1), 1, &P);
        assert!(!s.download_completed);
        assert!(l.claims.is_empty());
        admit(&mut l, &req("r", Method::Get, Some("bytes=0-9"), 1), 2, &P).unwrap();
        let s = settle(
            &mut l,
            &line("r", "GET", 206, 10, Some("bytes 0-9/1000"), true, 1),
            client(1),
            3,
            &P,
        );
        assert!(!s.download_completed);
        assert!((progress(&l) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn n_downloads_never_more() {
        let mut l = test_link(10, 2);
        for c in 1..=2 {
            admit(&mut l, &get(&format!("r{c}"), c), 0, &P).unwrap();
        }
        assert_eq!(admit(&mut l, &get("r3", 3), 0, &P), Err(Refusal::UsedUp));
        let s1 = settle(&mut l, &line("r1", "GET", 200, 10, None, true, 1), client(1), 1, &P);
        assert!(s1.download_completed && !s1.link_completed);
        // Client 1's download is done: a new request needs a new claim, and none is left.
        assert_eq!(admit(&mut l, &get("r4", 1), 2, &P), Err(Refusal::UsedUp));
        let s2 = settle(&mut l, &line("r2", "GET", 200, 10, None, true, 2), client(2), 3, &P);
        assert!(s2.link_completed);
        assert_eq!(l.downloads_completed, 2);
    }

    #[test]
    fn expiry_refuses_at_the_deadline_and_late_completion_is_recorded() {
        let mut l = test_link(10, 1);
        let exp = l.expires_at_ms;
        admit(&mut l, &get("a", 1), exp - 1, &P).unwrap();
        assert_eq!(admit(&mut l, &get("b", 1), exp, &P), Err(Refusal::Expired));
        assert_eq!(due(&l), Some((exp, CloseReason::Expired)));
        l.state = LinkState::Closed;
        l.close_reason = Some(CloseReason::Expired);
        let s = settle(
            &mut l,
            &line("a", "GET", 200, 10, None, true, 1),
            client(1),
            exp + 5,
            &P,
        );
        assert!(s.link_completed);
        assert_eq!(l.close_reason, Some(CloseReason::Completed));
        assert_eq!(admit(&mut l, &get("c", 1), exp - 1, &P), Err(Refusal::Closed));
    }

    #[test]
    fn refused_and_preview_lines_change_nothing() {
        let mut l = test_link(10, 1);
        let s = settle(&mut l, &line("x", "GET", 444, 0, None, true, 9), client(9), 5, &P);
        assert!(!s.changed);
        let mut pv = line("y", "GET", 200, 10, None, true, 9);
        pv.preview = true;
        assert!(!settle(&mut l, &pv, client(9), 5, &P).changed);
        assert_eq!(l.bytes_served, 0);
    }

    #[test]
    fn stalls_follow_progress_not_the_clock_alone() {
        let mut l = test_link(10_000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        // Bytes flow: each growth pushes the stall deadline.
        for t in 1..=5u64 {
            assert!(sample(&mut l, "a", Some(t * 1000), t * 100_000));
            assert!(!stalled(&l, t * 100_000 + P.stall_ms - 1, &P));
        }
        // The same count again is no progress.
        assert!(!sample(&mut l, "a", Some(5000), 600_000));
        assert!(stalled(&l, 500_000 + P.stall_ms, &P));
        // The connection goes away without a log line: settled from the last sample.
        assert!(sample(&mut l, "a", None, 600_000));
        assert!(!settle_unlogged(&mut l, 600_000 + 4_999, 5_000));
        assert!(settle_unlogged(&mut l, 605_000, 5_000));
        assert_eq!((l.inflight.len(), l.bytes_served), (0, 5000 - HEADER_ALLOWANCE));
        assert_eq!(l.coverage.covered(), 0, "unlogged bytes prove no range");
    }

    #[test]
    fn a_later_request_on_the_connection_freezes_the_earlier_ones_count() {
        let mut l = test_link(10_000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        assert!(sample(&mut l, "a", Some(3000), 10));
        // The client reuses the connection for another download: its bytes are not "a"'s.
        assert!(end_on_reuse(&mut l, "a"));
        assert!(!end_on_reuse(&mut l, "a"), "ending twice changes nothing");
        assert!(!sample(&mut l, "a", Some(9_000_000), 20));
        assert_eq!(l.inflight[0].delivered, 3000);
        // Its log line is on its way: a vanished connection waits far longer before guessing.
        assert!(sample(&mut l, "a", None, 1_000));
        assert!(!settle_unlogged(&mut l, 1_000 + 5_000, 5_000));
        let s = settle(
            &mut l,
            &line("a", "GET", 200, 10_000, None, true, 1),
            client(1),
            7_000,
            &P,
        );
        assert!(s.download_completed);
        assert_eq!(l.bytes_served, 10_000, "the log line's count, once");
    }

    #[test]
    fn a_line_read_twice_counts_once() {
        let mut l = test_link(10, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        let rec = line("a", "GET", 206, 5, Some("bytes 0-4/10"), true, 1);
        assert!(settle(&mut l, &rec, client(1), 5, &P).changed);
        // After a crash the follower reads the same line again.
        assert_eq!(settle(&mut l, &rec, client(1), 6, &P), Settled::default());
        assert_eq!((l.bytes_served, l.coverage.covered()), (5, 5));
    }

    #[test]
    fn a_late_line_after_an_unlogged_settlement_counts_once() {
        let mut l = test_link(10_000, 1);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        assert!(sample(&mut l, "a", Some(4000), 10));
        assert!(sample(&mut l, "a", None, 20));
        assert!(settle_unlogged(&mut l, 5_020, 5_000));
        let served = l.bytes_served;
        assert!(
            !settle(
                &mut l,
                &line("a", "GET", 200, 10_000, None, false, 1),
                client(1),
                6_000,
                &P
            )
            .changed
        );
        assert_eq!(l.bytes_served, served);
    }

    #[test]
    fn with_downloads_left_a_stall_drops_only_the_claim() {
        let mut l = test_link(10_000, 2);
        admit(&mut l, &get("a", 1), 0, &P).unwrap();
        settle(
            &mut l,
            &line("a", "GET", 206, 500, Some("bytes 0-499/10000"), true, 1),
            client(1),
            10,
            &P,
        );
        assert!(!stalled(&l, 10 + P.stall_ms, &P));
        assert!(!drop_stalled_claims(&mut l, 10 + P.stall_ms - 1, &P));
        assert!(drop_stalled_claims(&mut l, 10 + P.stall_ms, &P));
        assert!(l.claims.is_empty());
    }

    #[test]
    fn absurd_byte_counts_saturate() {
        // Found by the `access_log` fuzz target: two lines claiming u64::MAX body bytes.
        let mut l = test_link(1000, 2);
        for id in ["a", "b"] {
            admit(&mut l, &get(id, 1), 0, &P).unwrap();
            assert!(sample(&mut l, id, Some(u64::MAX), 1));
            let mut big = line(id, "GET", 200, 0, None, true, 1);
            (big.bytes_sent, big.body_bytes_sent) = (u64::MAX, u64::MAX);
            assert!(settle(&mut l, &big, client(1), 2, &P).changed);
        }
        assert_eq!(l.bytes_served, u64::MAX);
        assert_eq!(l.clients[0].bytes, u64::MAX);
        assert_eq!(delivered(&l), u64::MAX);
        assert!((0.0..=1.0).contains(&progress(&l)));
    }

    #[test]
    fn range_starts() {
        let table: &[(Option<&str>, u64)] = &[
            (None, 0),
            (Some("bytes=100-"), 100),
            (Some("bytes=100-199"), 100),
            (Some("bytes=-100"), 900),
            (Some("bytes=-5000"), 0),
            (Some("bytes=2000-"), 0),
            (Some("bytes=0-1,5-9"), 0),
            (Some("items=1-2"), 0),
            (Some("bytes=x-"), 0),
            // Found by the `range` fuzz target: the start must lie inside the file.
            (Some("bytes=-0"), 0),
            (Some("bytes=-1"), 999),
        ];
        for (r, want) in table {
            assert_eq!(range_start(*r, 1000), *want, "{r:?}");
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Whatever the `Range` header, the response starts inside the file (or at 0).
            #[test]
            fn a_range_starts_inside_the_file(
                size in prop_oneof![Just(0u64), 1..5_000u64, Just(u64::MAX)],
                a in prop::option::of(prop_oneof![Just(0u64), 1..6_000u64, any::<u64>()]),
                b in prop::option::of(prop_oneof![Just(0u64), 1..6_000u64, any::<u64>()]),
                junk in "[ ,=x-]{0,2}",
            ) {
                let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
                let header = format!("bytes={}-{}{junk}", opt(a), opt(b));
                let start = range_start(Some(&header), size);
                prop_assert!(start == 0 || start < size, "{:?} in {}: {}", header, size, start);
            }
        }
    }
}
