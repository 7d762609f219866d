//! The link state machine as pure functions of (link, fact, now): who may be served, what a log
//! line settles, when a link is due. No I/O and no clock here, so every rule is tested with explicit
//! times.

use super::{Claim, ClientKey, CloseReason, InFlight, Link, LinkState};
use crate::monitor::coverage::ByteRange;
use crate::monitor::record::{AccessRecord, Completion};

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
    pub request_id: String,
    pub method: Method,
    pub has_range: bool,
    pub client: ClientKey,
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
}

fn claim_active(link: &Link, c: &Claim, now: u64, resume_ms: u64) -> bool {
    now < c.last_end_ms.saturating_add(resume_ms) || link.inflight.iter().any(|r| r.client == c.client && r.claims)
}

/// What an allowed request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// It took a new claim: a download starts.
    NewClaim,
    /// It rides on an existing claim, or sends no body (HEAD), or resumes during grace.
    Served,
}

/// Decides a request and, when it is allowed, records it as in flight (taking a claim if it would
/// send body bytes). The caller persists the link afterwards; the whole call is one atomic step.
pub fn admit(link: &mut Link, a: &Admission, now: u64, resume_ms: u64) -> Result<Admitted, Refusal> {
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
        if !(completer && a.has_range && claims_body) {
            return Err(Refusal::Grace);
        }
    } else if claims_body {
        // Claims whose window has passed end here; with one download their coverage lives on in
        // the link's own union.
        let snapshot = link.clone();
        link.claims.retain(|c| claim_active(&snapshot, c, now, resume_ms));
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
            });
        }
        link.state = LinkState::Downloading;
    }
    link.inflight.push(InFlight {
        request_id: a.request_id.clone(),
        client: a.client.clone(),
        claims: claims_body,
        since_ms: now,
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

/// Applies one access-log line (the final ledger of one request) to its link.
pub fn settle(link: &mut Link, rec: &AccessRecord, client: ClientKey, now: u64, grace_ms: u64) -> Settled {
    if rec.preview {
        return Settled::default();
    }
    let was_inflight = match link.inflight.iter().position(|r| r.request_id == rec.request_id) {
        Some(i) => {
            link.inflight.swap_remove(i);
            true
        }
        None => false,
    };
    // A refused request (444) or one that was never ours sends nothing worth settling.
    if !was_inflight && !matches!(rec.status, 200 | 206) {
        return Settled::default();
    }
    let mut out = Settled {
        changed: true,
        ..Settled::default()
    };
    link.last_activity_ms = Some(now);
    if let Some(c) = link.claims.iter_mut().find(|c| c.client == client) {
        c.last_end_ms = now;
    }
    let served = match (rec.method.as_str(), rec.status, &rec.completion) {
        ("GET", 200, Completion::Ok) => ByteRange::new(0, link.file_size),
        ("GET", 206, Completion::Ok) => rec
            .content_range
            .as_deref()
            .and_then(|v| ByteRange::from_content_range(v, link.file_size)),
        _ => None,
    };
    // Only a completed request proves delivery; an aborted one proves nothing without socket data.
    let counted = if rec.completion == Completion::Ok {
        rec.body_bytes_sent
    } else {
        0
    };
    if counted > 0 {
        link.bytes_served += counted;
        match link.clients.iter_mut().find(|c| c.client == client) {
            Some(seen) => seen.bytes += counted,
            None => link.clients.push(super::ClientSeen {
                client: client.clone(),
                bytes: counted,
            }),
        }
    } else if !link.clients.iter().any(|c| c.client == client) {
        link.clients.push(super::ClientSeen {
            client: client.clone(),
            bytes: 0,
        });
    }
    let empty_ok = link.file_size == 0 && rec.method == "GET" && rec.status == 200 && rec.completion == Completion::Ok;
    if served.is_none() && !empty_ok {
        return out;
    }
    let single = link.max_downloads == 1;
    let idx = link.claims.iter().position(|c| c.client == client);
    if let Some(r) = served {
        link.coverage.insert(r);
        if let Some(i) = idx {
            link.claims[i].coverage.insert(r);
        }
    }
    let done = empty_ok
        || if single {
            link.coverage.covers(link.file_size)
        } else {
            idx.is_some_and(|i| link.claims[i].coverage.covers(link.file_size))
        };
    if !done || link.downloads_completed >= link.max_downloads {
        return out;
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
                link.completer = Some(client);
                link.grace_until_ms = Some(now + grace_ms);
            }
        }
    }
    out
}

/// When the link must next be looked at, and why.
pub fn due(link: &Link) -> Option<(u64, CloseReason)> {
    match link.state {
        LinkState::Closed => None,
        LinkState::Completed => {
            let grace = link.grace_until_ms.unwrap_or(0);
            Some(if grace < link.expires_at_ms {
                (grace, CloseReason::Completed)
            } else {
                (link.expires_at_ms, CloseReason::Completed)
            })
        }
        _ => Some((link.expires_at_ms, CloseReason::Expired)),
    }
}

/// Share of the allowance used, between 0 and 1.
pub fn progress(link: &Link) -> f64 {
    let max = link.max_downloads.max(1) as f64;
    let partial = if link.downloads_completed >= link.max_downloads {
        0.0
    } else if link.max_downloads == 1 {
        link.coverage.fraction(link.file_size)
    } else {
        link.claims
            .iter()
            .map(|c| c.coverage.fraction(link.file_size))
            .fold(0.0, f64::max)
    };
    ((link.downloads_completed as f64 + partial) / max).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::{TunnelId, test_link};

    const RESUME: u64 = 30_000;

    fn client(n: u8) -> ClientKey {
        ClientKey {
            address: format!("127.0.0.{n}"),
            user_agent: "curl".into(),
        }
    }

    fn req(id: &str, method: Method, has_range: bool, c: u8) -> Admission {
        Admission {
            request_id: id.into(),
            method,
            has_range,
            client: client(c),
        }
    }

    fn line(id: &str, method: &str, status: u16, body: u64, cr: Option<&str>, ok: bool, c: u8) -> AccessRecord {
        AccessRecord {
            msec: 0.0,
            request_id: id.into(),
            tunnel_id: None,
            method: method.into(),
            status,
            body_bytes_sent: body,
            content_range: cr.map(String::from),
            completion: if ok { Completion::Ok } else { Completion::Aborted },
            client: client(c).address,
            user_agent: "curl".into(),
            preview: false,
        }
    }

    #[test]
    fn one_claim_at_a_time_for_a_single_download() {
        let mut l = test_link(1000, 1);
        assert_eq!(
            admit(&mut l, &req("a", Method::Get, false, 1), 10, RESUME),
            Ok(Admitted::NewClaim)
        );
        assert_eq!(
            admit(&mut l, &req("b", Method::Get, false, 2), 11, RESUME),
            Err(Refusal::UsedUp)
        );
        // The claiming client may open parallel requests.
        assert_eq!(
            admit(&mut l, &req("c", Method::Get, true, 1), 12, RESUME),
            Ok(Admitted::Served)
        );
        // HEAD never claims, from anyone.
        assert_eq!(
            admit(&mut l, &req("d", Method::Head, false, 3), 13, RESUME),
            Ok(Admitted::Served)
        );
        assert_eq!(
            admit(&mut l, &req("e", Method::Other, false, 1), 13, RESUME),
            Err(Refusal::Method)
        );
        assert_eq!(l.claims.len(), 1);
    }

    #[test]
    fn a_claim_lapses_after_the_resume_window() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &req("a", Method::Get, true, 1), 0, RESUME).unwrap();
        settle(
            &mut l,
            &line("a", "GET", 206, 100, Some("bytes 0-99/1000"), true, 1),
            client(1),
            100,
            0,
        );
        assert_eq!(
            admit(&mut l, &req("b", Method::Get, false, 2), 100 + RESUME - 1, RESUME),
            Err(Refusal::UsedUp)
        );
        assert_eq!(
            admit(&mut l, &req("b", Method::Get, false, 2), 100 + RESUME, RESUME),
            Ok(Admitted::NewClaim)
        );
    }

    #[test]
    fn coverage_completes_resumed_download_once() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &req("a", Method::Get, true, 1), 0, RESUME).unwrap();
        let s = settle(
            &mut l,
            &line("a", "GET", 206, 400, Some("bytes 0-399/1000"), true, 1),
            client(1),
            1,
            0,
        );
        assert!(!s.download_completed);
        // An aborted full request proves nothing.
        admit(&mut l, &req("b", Method::Get, false, 1), 2, RESUME).unwrap();
        let s = settle(&mut l, &line("b", "GET", 200, 900, None, false, 1), client(1), 3, 0);
        assert!(!s.download_completed);
        assert_eq!(l.bytes_served, 400);
        admit(&mut l, &req("c", Method::Get, true, 1), 4, RESUME).unwrap();
        let s = settle(
            &mut l,
            &line("c", "GET", 206, 600, Some("bytes 400-999/1000"), true, 1),
            client(1),
            5,
            60_000,
        );
        assert!(s.download_completed && s.link_completed);
        assert_eq!(
            (l.bytes_served, l.downloads_completed, l.state),
            (1000, 1, LinkState::Completed)
        );
        assert_eq!(l.grace_until_ms, Some(60_005));
        // Grace: only the completer's range requests.
        assert_eq!(
            admit(&mut l, &req("d", Method::Get, false, 1), 6, RESUME),
            Err(Refusal::Grace)
        );
        assert_eq!(
            admit(&mut l, &req("e", Method::Get, true, 2), 6, RESUME),
            Err(Refusal::Grace)
        );
        assert_eq!(
            admit(&mut l, &req("f", Method::Get, true, 1), 6, RESUME),
            Ok(Admitted::Served)
        );
        assert_eq!(due(&l), Some((60_005, CloseReason::Completed)));
    }

    #[test]
    fn head_and_small_range_do_not_complete() {
        let mut l = test_link(1000, 1);
        admit(&mut l, &req("h", Method::Head, false, 1), 0, RESUME).unwrap();
        let s = settle(&mut l, &line("h", "HEAD", 200, 0, None, true, 1), client(1), 1, 0);
        assert!(!s.download_completed);
        assert!(l.claims.is_empty());
        admit(&mut l, &req("r", Method::Get, true, 1), 2, RESUME).unwrap();
        let s = settle(
            &mut l,
            &line("r", "GET", 206, 10, Some("bytes 0-9/1000"), true, 1),
            client(1),
            3,
            0,
        );
        assert!(!s.download_completed);
        assert!((progress(&l) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn n_downloads_never_more() {
        let mut l = test_link(10, 2);
        for c in 1..=2 {
            admit(&mut l, &req(&format!("r{c}"), Method::Get, false, c), 0, RESUME).unwrap();
        }
        assert_eq!(
            admit(&mut l, &req("r3", Method::Get, false, 3), 0, RESUME),
            Err(Refusal::UsedUp)
        );
        let s1 = settle(&mut l, &line("r1", "GET", 200, 10, None, true, 1), client(1), 1, 0);
        assert!(s1.download_completed && !s1.link_completed);
        // Client 1's allowance was one download: a new request needs a new claim, and none is left.
        assert_eq!(
            admit(&mut l, &req("r4", Method::Get, false, 1), 2, RESUME),
            Err(Refusal::UsedUp)
        );
        let s2 = settle(&mut l, &line("r2", "GET", 200, 10, None, true, 2), client(2), 3, 0);
        assert!(s2.link_completed);
        assert_eq!(l.downloads_completed, 2);
    }

    #[test]
    fn expiry_refuses_at_the_deadline_and_late_completion_is_recorded() {
        let mut l = test_link(10, 1);
        let exp = l.expires_at_ms;
        admit(&mut l, &req("a", Method::Get, false, 1), exp - 1, RESUME).unwrap();
        assert_eq!(
            admit(&mut l, &req("b", Method::Get, false, 1), exp, RESUME),
            Err(Refusal::Expired)
        );
        assert_eq!(due(&l), Some((exp, CloseReason::Expired)));
        l.state = LinkState::Closed;
        l.close_reason = Some(CloseReason::Expired);
        let s = settle(&mut l, &line("a", "GET", 200, 10, None, true, 1), client(1), exp + 5, 0);
        assert!(s.link_completed);
        assert_eq!(l.close_reason, Some(CloseReason::Completed));
        assert_eq!(
            admit(&mut l, &req("c", Method::Get, false, 1), exp - 1, RESUME),
            Err(Refusal::Closed)
        );
    }

    #[test]
    fn refused_lines_change_nothing() {
        let mut l = test_link(10, 1);
        let before = l.clone();
        let s = settle(&mut l, &line("x", "GET", 444, 0, None, true, 9), client(9), 5, 0);
        assert!(!s.changed);
        assert_eq!(l.bytes_served, before.bytes_served);
        let _ = TunnelId::random();
    }
}
