//! The link state machine ([`super::rules`]) under arbitrary sequences of events: requests from a
//! few clients, log lines (completed, aborted, refused, and lines whose request a crash forgot),
//! socket samples, time passing, the scheduler's and the sampler's rounds, and the owner ending the
//! link. After every event the link must keep the promises of SPEC §2 and §9:
//!
//! - it only moves forward (open, downloading, completed, closed) and a closed link never reopens;
//! - a closed link, or any link from its deadline on, admits nothing and is left unchanged;
//! - a new claim is granted only while downloads are left, and never more than `max_downloads`
//!   downloads complete;
//! - during the grace period only the completing client's range requests are served;
//! - with one download, the link's coverage equals a byte bitmap of what the log proved delivered,
//!   and the download completes exactly when that bitmap is full.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::sample::Index;

use super::rules::*;
use super::*;
use crate::monitor::record::{AccessRecord, Completion};

const P: Policy = TEST_POLICY;

/// Response header bytes in the generated log lines (`$bytes_sent - $body_bytes_sent`).
const HEADER: u64 = 300;
/// The sampler settles a request whose connection vanished this long ago (as `sample_once`).
const UNLOGGED_AFTER_MS: u64 = 5_000;

#[derive(Debug, Clone)]
enum Event {
    Wait(u64),
    /// Time runs to the link's next deadline (expiry or grace end), or to 1 ms before it.
    ToDeadline {
        early: bool,
    },
    /// A request reaches the check; `range` picks a start inside the file.
    Request {
        client: u8,
        method: Method,
        range: Option<Index>,
    },
    /// nginx logs the end of one request in flight: completed, or aborted after `cut` body bytes.
    Log {
        nth: Index,
        ok: bool,
        cut: u64,
    },
    /// A log line for a request the link does not know in flight (its record was lost in a crash).
    Stray {
        client: u8,
        range: Option<Index>,
        ok: bool,
    },
    /// The socket of one request in flight: what its peer acknowledged, or gone.
    Sample {
        nth: Index,
        acked: Option<u64>,
    },
    /// The scheduler's and the sampler's rounds.
    Tick,
    /// The owner ends the link.
    Terminate,
}

fn event() -> impl Strategy<Value = Event> {
    let method = prop_oneof![6 => Just(Method::Get), 2 => Just(Method::Head), 1 => Just(Method::Other)];
    prop_oneof![
        3 => prop_oneof![0..2_000u64, 0..400_000u64].prop_map(Event::Wait),
        1 => any::<bool>().prop_map(|early| Event::ToDeadline { early }),
        5 => (0..4u8, method, prop::option::of(any::<Index>()))
            .prop_map(|(client, method, range)| Event::Request { client, method, range }),
        5 => (any::<Index>(), any::<bool>(), any::<u64>()).prop_map(|(nth, ok, cut)| Event::Log { nth, ok, cut }),
        1 => (0..4u8, prop::option::of(any::<Index>()), any::<bool>())
            .prop_map(|(client, range, ok)| Event::Stray { client, range, ok }),
        2 => (any::<Index>(), prop::option::of(0..5_000u64)).prop_map(|(nth, acked)| Event::Sample { nth, acked }),
        2 => Just(Event::Tick),
        1 => Just(Event::Terminate),
    ]
}

fn client(n: u8) -> ClientKey {
    ClientKey {
        address: format!("127.0.0.{n}").into(),
        user_agent: "curl/8".into(),
    }
}

/// What the harness remembers of a request it sent: enough to write nginx's log line for it.
struct Sent {
    client: u8,
    method: Method,
    range_start: Option<u64>,
    acked: u64,
}

struct Run {
    link: Link,
    now: u64,
    next_id: u64,
    sent: HashMap<String, Sent>,
    /// Bytes the log proved delivered since the last completed download (the model).
    proven: Vec<bool>,
}

impl Run {
    fn new(size: u64, max_downloads: u32, lifetime_ms: u64) -> Self {
        let mut link = test_link(size, max_downloads);
        let now = 1_000;
        link.created_at_ms = now;
        link.expires_at_ms = now + lifetime_ms;
        Run {
            link,
            now,
            next_id: 0,
            sent: HashMap::new(),
            proven: vec![false; size as usize],
        }
    }

    fn request_id(&mut self) -> String {
        self.next_id += 1;
        format!("{:032x}", self.next_id)
    }

    fn start(&self, range: Option<Index>) -> Option<u64> {
        let size = self.link.file_size;
        range.filter(|_| size > 0).map(|i| i.index(size as usize) as u64)
    }

    fn request(&mut self, c: u8, method: Method, range: Option<Index>) -> Result<(), TestCaseError> {
        let range_start = self.start(range);
        let a = Admission {
            request_id: self.request_id().into(),
            method,
            range: range_start.map(|s| format!("bytes={s}-")),
            client: client(c),
            conn: None,
            first_on_connection: false,
        };
        let before = self.link.clone();
        let got = admit(&mut self.link, &a, self.now, &P);
        match got {
            Err(refusal) => {
                // A refusal may have let lapsed claims go, and nothing else (`Write::No`: a
                // tidied record, nothing to write).
                let mut pruned = before.clone();
                pruned.claims.retain(|c| self.link.claims.contains(c));
                prop_assert_eq!(&self.link, &pruned, "a refusal ({}) changed the link", refusal);
                self.link = before.clone();
                // nginx answers 444 and logs it; that line changes nothing either.
                let line = self.line(&a.request_id, c, method, range_start, 444, true, 0);
                let s = settle(&mut self.link, &line, client(c), self.now, &P);
                prop_assert!(!s.changed);
                prop_assert_eq!(&self.link, &before, "a refused request's log line changed the link");
            }
            Ok(admitted) => {
                prop_assert!(before.state != LinkState::Closed, "a closed link admitted a request");
                prop_assert!(self.now < before.expires_at_ms, "admitted at or after the deadline");
                prop_assert!(method != Method::Other);
                if before.state == LinkState::Completed {
                    prop_assert_eq!(
                        before.completer.as_ref(),
                        Some(&a.client),
                        "grace served another client"
                    );
                    prop_assert!(
                        method == Method::Get && range_start.is_some(),
                        "grace served a non-range request"
                    );
                }
                if admitted == Admitted::NewClaim {
                    prop_assert_eq!(method, Method::Get, "only a GET takes a claim");
                    prop_assert!(before.state != LinkState::Completed);
                    let held = self.link.claims.len() as u32 + self.link.downloads_completed;
                    prop_assert!(held <= self.link.max_downloads, "claim granted with no download left");
                } else {
                    // Lapsed claims may end here, but none begins.
                    let new = self
                        .link
                        .claims
                        .iter()
                        .find(|c| !before.claims.iter().any(|b| b.client == c.client));
                    prop_assert!(new.is_none(), "a served request added a claim");
                }
                self.sent.insert(
                    a.request_id.to_string(),
                    Sent {
                        client: c,
                        method,
                        range_start,
                        acked: 0,
                    },
                );
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &self,
        id: &str,
        c: u8,
        method: Method,
        range_start: Option<u64>,
        status: u16,
        ok: bool,
        body: u64,
    ) -> AccessRecord {
        let size = self.link.file_size;
        AccessRecord {
            msec: self.now as f64 / 1000.0,
            request_id: id.into(),
            tunnel_id: Some(self.link.id.clone()),
            method: if method == Method::Head { "HEAD" } else { "GET" }.into(),
            status,
            bytes_sent: body + HEADER,
            body_bytes_sent: body,
            content_range: range_start
                .filter(|_| status == 206)
                .map(|s| format!("bytes {s}-{}/{size}", size - 1)),
            completion: if ok { Completion::Ok } else { Completion::Aborted },
            client: client(c).address.to_string(),
            user_agent: client(c).user_agent.to_string(),
            preview: false,
        }
    }

    /// Writes the log line nginx would for a request, settles it, and updates the model.
    fn log(&mut self, id: &str, sent: &Sent, ok: bool, cut: u64) -> Result<(), TestCaseError> {
        let size = self.link.file_size;
        let (status, start) = match (sent.method, sent.range_start) {
            (Method::Get, Some(s)) => (206, s),
            _ => (200, 0),
        };
        let len = if sent.method == Method::Get { size - start } else { 0 };
        let body = if ok { len } else { cut % (len + 1) };
        let line = self.line(id, sent.client, sent.method, sent.range_start, status, ok, body);
        let before = self.link.clone();
        let s = settle(&mut self.link, &line, client(sent.client), self.now, &P);
        prop_assert!(s.changed);
        prop_assert!(self.link.bytes_served >= before.bytes_served);

        if self.link.max_downloads != 1 || before.downloads_completed > 0 || sent.method != Method::Get {
            return Ok(());
        }
        // The model: a completed line proves its whole range, an aborted one what the socket
        // acknowledged beyond the header, never more than was sent.
        let proven = if ok {
            len
        } else {
            sent.acked.saturating_sub(HEADER).min(body)
        };
        self.proven[start as usize..(start + proven) as usize].fill(true);
        let full = self.proven.iter().all(|b| *b) && (size > 0 || (ok && status == 200));
        prop_assert_eq!(s.download_completed, full, "completion disagrees with the bitmap");
        if full {
            prop_assert_eq!(self.link.downloads_completed, 1);
            self.proven.fill(false);
        }
        let mut bits = vec![false; size as usize];
        for r in self.link.coverage.ranges() {
            bits[r.start as usize..r.end as usize].fill(true);
        }
        prop_assert_eq!(bits, self.proven.clone(), "coverage disagrees with the bitmap");
        Ok(())
    }

    fn nth_inflight(&self, nth: Index) -> Option<String> {
        (!self.link.inflight.is_empty()).then(|| {
            self.link.inflight[nth.index(self.link.inflight.len())]
                .request_id
                .to_string()
        })
    }

    fn step(&mut self, e: Event) -> Result<(), TestCaseError> {
        match e {
            Event::Wait(ms) => self.now += ms,
            Event::ToDeadline { early } => {
                let next = match self.link.grace_until_ms {
                    Some(g) if g > self.now => g.min(self.link.expires_at_ms),
                    _ => self.link.expires_at_ms,
                };
                self.now = self.now.max(next - u64::from(early));
            }
            Event::Request { client, method, range } => self.request(client, method, range)?,
            Event::Log { nth, ok, cut } => {
                if let Some(id) = self.nth_inflight(nth) {
                    let sent = self.sent.remove(&id).expect("every request in flight was sent");
                    self.log(&id, &sent, ok, cut)?;
                }
            }
            Event::Stray { client, range, ok } => {
                let id = self.request_id();
                let sent = Sent {
                    client,
                    method: Method::Get,
                    range_start: self.start(range),
                    acked: 0,
                };
                self.log(&id, &sent, ok, u64::MAX)?;
            }
            Event::Sample { nth, acked } => {
                if let Some(id) = self.nth_inflight(nth) {
                    sample(&mut self.link, &id, acked, self.now);
                    if let (Some(a), Some(s)) = (acked, self.sent.get_mut(&id)) {
                        s.acked = s.acked.max(a);
                    }
                }
            }
            Event::Tick => {
                // As `run_scheduler` and `sample_once` do, in one round.
                if let Some((at, reason)) = due(&self.link).filter(|(at, _)| *at <= self.now) {
                    prop_assert!(at <= self.now);
                    close(&mut self.link, reason, self.now);
                }
                settle_unlogged(&mut self.link, self.now, UNLOGGED_AFTER_MS);
                drop_stalled_claims(&mut self.link, self.now, &P);
                if stalled(&self.link, self.now, &P) {
                    close(&mut self.link, CloseReason::Stalled, self.now);
                }
                self.sent
                    .retain(|id, _| self.link.inflight.iter().any(|f| *f.request_id == **id));
            }
            Event::Terminate => {
                let was_closed = self.link.state == LinkState::Closed;
                prop_assert_eq!(close(&mut self.link, CloseReason::Terminated, self.now), !was_closed);
            }
        }
        Ok(())
    }

    /// What must hold between any two events, given the link before the last one.
    fn invariants(&self, before: &Link) -> Result<(), TestCaseError> {
        let l = &self.link;
        prop_assert!(l.state >= before.state, "{:?} went back to {:?}", before.state, l.state);
        prop_assert_eq!(l.state == LinkState::Closed, l.close_reason.is_some());
        prop_assert_eq!(l.state == LinkState::Closed, l.closed_at_ms.is_some());
        if before.state == LinkState::Closed {
            prop_assert_eq!(l.closed_at_ms, before.closed_at_ms);
            // The only change a closed link's reason may see: an expired link whose last request
            // finished the download is recorded as completed.
            let late_completion =
                before.close_reason == Some(CloseReason::Expired) && l.close_reason == Some(CloseReason::Completed);
            prop_assert!(l.close_reason == before.close_reason || late_completion);
            prop_assert!(l.claims.is_empty(), "a closed link holds a claim");
        }
        if l.state == LinkState::Completed {
            prop_assert!(l.completer.is_some() && l.grace_until_ms.is_some());
        }
        prop_assert!(l.downloads_completed <= l.max_downloads);
        prop_assert!(l.downloads_completed >= before.downloads_completed);
        prop_assert!(l.bytes_served >= before.bytes_served);
        prop_assert!(l.claims.len() <= l.max_downloads as usize);
        for (i, c) in l.claims.iter().enumerate() {
            prop_assert!(
                !l.claims[..i].iter().any(|d| d.client == c.client),
                "two claims for one client"
            );
        }
        let inside = |cov: &Coverage| cov.ranges().iter().all(|r| r.end <= l.file_size);
        prop_assert!(inside(&l.coverage) && l.claims.iter().all(|c| inside(&c.coverage)));
        let p = progress(l);
        prop_assert!((0.0..=1.0).contains(&p), "progress {}", p);
        Ok(())
    }
}

fn scenario() -> impl Strategy<Value = (u64, u32, u64, Vec<Event>)> {
    (
        prop_oneof![1 => Just(0u64), 8 => 1..3_000u64],
        1..=3u32,
        10_000..2_000_000u64,
        prop::collection::vec(event(), 1..80),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_sequence_of_events_breaks_the_link_rules((size, max, lifetime, events) in scenario()) {
        let mut run = Run::new(size, max, lifetime);
        for e in events {
            let before = run.link.clone();
            run.step(e)?;
            run.invariants(&before)?;
            // Whatever happened, a closed link or a link past its deadline admits nobody.
            if run.link.state == LinkState::Closed || run.now >= run.link.expires_at_ms {
                let mut probe = run.link.clone();
                let a = Admission {
                    request_id: "f".repeat(32).into(),
                    method: Method::Get,
                    range: Some("bytes=0-".into()),
                    client: run.link.completer.clone().unwrap_or_else(|| client(0)),
                    conn: None,
                    first_on_connection: false,
                };
                prop_assert!(admit(&mut probe, &a, run.now, &P).is_err());
                prop_assert_eq!(&probe, &run.link);
            }
        }
    }
}
