//! The link ledger ([`super::rules`]) under arbitrary sequences of events: requests from a few
//! clients (addresses of which two share an IPv6 /64, User-Agents odd, empty and non-ASCII, every
//! kind of `Range` and `If-Range`), the log lines nginx writes for them (completed or aborted,
//! with or without the socket's close notification, carrying what the check answered), lines
//! whose request a crash forgot, socket samples, connections reused, time passing, the
//! scheduler's and the sampler's rounds, and the owner ending the link.
//!
//! A model kept beside the link says, from the log alone, what every slot must cover and what
//! every byte was charged as. After every event the link must keep the promises of SPEC §2:
//!
//! - it only moves forward (open, downloading, completed, closed) and a closed link never reopens;
//!   a closed link, or any link from its deadline on, admits nothing and is left unchanged;
//! - every check is decided as §2 says: a client's active claim is reused, else a request that
//!   fits the reads' limits is a read, else it takes a free slot (a fresh one first, else the
//!   incomplete one with most coverage), else it is refused; a request that could overdraw the
//!   re-send budget is refused; a claim lasts while it has a request in flight plus the resume
//!   window after its last request ended, and not a moment longer or shorter;
//!   in the grace period only the completer's ranges are served, within the grace cap;
//! - every slot's coverage equals a byte bitmap of what the log proved delivered under it, and
//!   the slot completes exactly when its bitmap is full; at most `max_downloads` complete;
//! - every byte charged is one of: new coverage of a slot, a re-sent byte, a read, a grace byte
//!   (`bytes_served` = Σ coverage + `resent` + reads + grace, exactly);
//! - the bound: the bytes charged for requests the check admitted never pass `max_downloads` ×
//!   size + the re-send budget + the reads' cap + the grace cap, checked after every event and
//!   once more after every request still in flight has delivered all it may.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;

use super::rules::*;
use crate::model::coverage::{ByteRange, Coverage};
use crate::model::link::test_link;
use crate::model::*;
use crate::monitor::record::{AccessRecord, Completion};

const P: Policy = TEST_POLICY;

/// Response header bytes in the generated log lines (`$bytes_sent - $body_bytes_sent`).
const HEADER: u64 = 300;
/// The sampler settles a request whose connection vanished this long ago (as `sample_once`).
const UNLOGGED_AFTER_MS: u64 = 5_000;
/// The sampler waits this many times longer for a request a later one on its connection ended.
const ENDED_FACTOR: u64 = 12;

/// The last two addresses share a /64, so they count as one address for reads.
const ADDRESSES: [&str; 4] = ["127.0.0.1", "127.0.0.2", "2001:db8::1", "2001:db8::2"];
const AGENTS: [&str; 4] = [
    "curl/8.5.0",
    "Mozilla/5.0 (Ünïcödé; 日本語) ✓",
    "\u{1}\u{7f}bin\u{fffd}",
    "",
];

/// The `Range` header a request carries, relative to the file's size.
#[derive(Debug, Clone, Copy)]
enum RangeKind {
    None,
    /// `bytes=s-`
    From(Index),
    /// `bytes=s-e`, `e` possibly past the end.
    Span(Index, u64),
    /// `bytes=-n`
    Suffix(u64),
    /// Two ranges, for which nginx (with `max_ranges 1`) sends the whole file.
    Multi,
    /// Another unit, for which nginx ignores the header.
    OtherUnit,
    /// `bytes=x-1`, which nginx answers with 416.
    Garbage,
    /// A range that starts past the end, which nginx answers with 416.
    Past,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum IfRange {
    None,
    Matches,
    Stale,
}

/// What a log line of a request in flight says the check answered.
#[derive(Debug, Clone, Copy)]
enum LineClaim {
    Answered,
    Missing,
}

/// What a line whose request the link does not know says the check answered.
#[derive(Debug, Clone)]
enum StrayClaim {
    None,
    /// One of the link's current claims (a crash forgot a request under it).
    OfClaim(Index),
    Value(&'static str),
}

#[derive(Debug, Clone)]
enum Event {
    Wait(u64),
    /// Time runs to the link's next deadline (expiry or grace end), or to 1 ms before it.
    ToDeadline {
        early: bool,
    },
    /// A request reaches the check.
    Request {
        client: (u8, u8),
        method: Method,
        range: RangeKind,
        if_range: IfRange,
        baseline: u64,
    },
    /// nginx logs the end of one request in flight: completed, or aborted after some body bytes,
    /// with (`fin`, per mille of what it sent) or without the socket's close notification.
    Log {
        nth: Index,
        ok: bool,
        cut: u64,
        fin: Option<u64>,
        claim: LineClaim,
    },
    /// A log line for a request the link does not know in flight.
    Stray {
        client: (u8, u8),
        range: RangeKind,
        ok: bool,
        cut: u64,
        fin: Option<u64>,
        claim: StrayClaim,
    },
    /// The socket of one request in flight: what its peer acknowledged (per mille of what the
    /// request may send), or gone.
    Sample {
        nth: Index,
        acked: Option<u64>,
    },
    /// A later request arrived on the connection of one in flight.
    Reuse {
        nth: Index,
    },
    /// The scheduler's and the sampler's rounds.
    Tick,
    /// The owner ends the link.
    Terminate,
}

fn range_kind() -> impl Strategy<Value = RangeKind> {
    prop_oneof![
        3 => Just(RangeKind::None),
        3 => any::<Index>().prop_map(RangeKind::From),
        6 => (any::<Index>(), prop_oneof![1..130u64, 1..4_000u64]).prop_map(|(i, n)| RangeKind::Span(i, n)),
        2 => prop_oneof![0..130u64, 0..4_000u64].prop_map(RangeKind::Suffix),
        1 => Just(RangeKind::Multi),
        1 => Just(RangeKind::OtherUnit),
        1 => Just(RangeKind::Garbage),
        1 => Just(RangeKind::Past),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let method = prop_oneof![8 => Just(Method::Get), 2 => Just(Method::Head), 1 => Just(Method::Other)];
    // Mostly one or two clients, so that one client's requests meet.
    let client = prop_oneof![4 => Just((0u8, 0u8)), 2 => (0..2u8, 0..2u8), 2 => (0..4u8, 0..4u8)];
    let if_range = prop_oneof![6 => Just(IfRange::None), 1 => Just(IfRange::Matches), 1 => Just(IfRange::Stale)];
    let fin = prop::option::of(0..=1_000u64);
    let stray_claim = prop_oneof![
        2 => Just(StrayClaim::None),
        3 => any::<Index>().prop_map(StrayClaim::OfClaim),
        1 => prop::sample::select(vec!["read", "grace", "head", "c7.zz", "c0.nosuchclaim", "", "x"])
            .prop_map(StrayClaim::Value),
    ];
    prop_oneof![
        3 => prop_oneof![3 => 0..2_000u64, 2 => 4_000..40_000u64, 1 => 0..400_000u64].prop_map(Event::Wait),
        1 => any::<bool>().prop_map(|early| Event::ToDeadline { early }),
        8 => (client.clone(), method, range_kind(), if_range, prop_oneof![Just(0u64), 0..1_000_000u64]).prop_map(
            |(client, method, range, if_range, baseline)| Event::Request {
                client,
                method,
                range,
                if_range,
                baseline
            }
        ),
        6 => (
            any::<Index>(),
            any::<bool>(),
            any::<u64>(),
            fin.clone(),
            prop_oneof![9 => Just(LineClaim::Answered), 1 => Just(LineClaim::Missing)]
        )
            .prop_map(|(nth, ok, cut, fin, claim)| Event::Log { nth, ok, cut, fin, claim }),
        1 => (client, range_kind(), any::<bool>(), any::<u64>(), fin, stray_claim).prop_map(
            |(client, range, ok, cut, fin, claim)| Event::Stray {
                client,
                range,
                ok,
                cut,
                fin,
                claim
            }
        ),
        3 => (any::<Index>(), prop_oneof![3 => (0..=1_000u64).prop_map(Some), 1 => Just(None)])
            .prop_map(|(nth, acked)| Event::Sample { nth, acked }),
        1 => any::<Index>().prop_map(|nth| Event::Reuse { nth }),
        2 => Just(Event::Tick),
        1 => Just(Event::Terminate),
    ]
}

fn client_key(c: (u8, u8)) -> ClientKey {
    ClientKey::new(ADDRESSES[c.0 as usize], AGENTS[c.1 as usize]).expect("a valid address")
}

/// The headers of a request and what nginx answers them with: its status and the bytes of the
/// file it sends (`None`: no body).
struct Response {
    range: Option<String>,
    if_range: Option<String>,
    status: u16,
    sent: Option<ByteRange>,
}

/// nginx's answer to a GET, worked out from what the request is rather than from its headers.
fn respond(kind: RangeKind, if_range: IfRange, size: u64, etag: &str) -> Response {
    let whole = ByteRange::new(0, size);
    let at = |i: Index| if size == 0 { 0 } else { i.index(size as usize) as u64 };
    let (range, part) = match kind {
        RangeKind::None => (None, whole),
        RangeKind::From(i) => (Some(format!("bytes={}-", at(i))), ByteRange::new(at(i), size)),
        RangeKind::Span(i, n) => {
            let s = at(i);
            (
                Some(format!("bytes={}-{}", s, s + n - 1)),
                ByteRange::new(s, (s + n).min(size)),
            )
        }
        RangeKind::Suffix(n) => (Some(format!("bytes=-{n}")), ByteRange::new(size - n.min(size), size)),
        RangeKind::Multi => (Some("bytes=0-0,2-3".into()), whole),
        RangeKind::OtherUnit => (Some("items=0-1".into()), whole),
        RangeKind::Garbage => (Some("bytes=x-1".into()), None),
        RangeKind::Past => (Some(format!("bytes={}-", size + 5)), None),
    };
    let if_range = match if_range {
        IfRange::None => None,
        IfRange::Matches => Some(etag.to_string()),
        IfRange::Stale => Some("\"0-0\"".to_string()),
    };
    let ignored = matches!(kind, RangeKind::None | RangeKind::Multi | RangeKind::OtherUnit)
        || (range.is_some() && if_range.as_deref().is_some_and(|v| v != etag));
    let (status, sent) = if size == 0 {
        (200, None)
    } else if ignored {
        (200, whole)
    } else {
        match part {
            Some(r) => (206, Some(r)),
            None => (416, None),
        }
    };
    Response {
        range,
        if_range,
        status,
        sent,
    }
}

/// nginx never sends more than `asked` says a request may get, and answers 200 only with the
/// whole file.
fn check_response(resp: &Response, asked: ByteRange, size: u64) -> Result<(), TestCaseError> {
    if let Some(r) = resp.sent {
        prop_assert!(
            asked.start <= r.start && r.end <= asked.end,
            "nginx may send {:?} for {:?} / {:?}, more than asked() says ({:?})",
            r,
            resp.range,
            resp.if_range,
            asked
        );
    }
    if resp.status == 200 && size > 0 {
        prop_assert_eq!(asked, ByteRange { start: 0, end: size });
    }
    Ok(())
}

/// What the harness remembers of a request in flight.
struct Sent {
    client: (u8, u8),
    method: Method,
    what: Use,
    status: u16,
    sent: Option<ByteRange>,
    asked: ByteRange,
    baseline: u64,
    /// Acknowledged since the check, as the samples saw it.
    delivered: u64,
    ended: bool,
    gone: Option<u64>,
}

/// What the log says the link must be.
#[derive(Default)]
struct Model {
    /// What the log proved delivered under each slot.
    bits: Vec<Vec<bool>>,
    complete: Vec<bool>,
    served: u64,
    resent: u64,
    /// Charged as reads, grace fetches, or neither (a head), from any line; and the same for
    /// lines of requests the check admitted. Bytes for a slot that does not exist are re-sent.
    reads: u64,
    grace: u64,
    other: u64,
    admitted_reads: u64,
    admitted_grace: u64,
    /// Charged by lines whose request the link did not know (no check admitted them).
    stray: u64,
    stray_resent: u64,
    /// What reads proved delivered to each address that read, for its next claim.
    read_bits: HashMap<Arc<str>, Vec<bool>>,
    /// Bytes that claims' lines added to slots (reads add some too, charged as reads).
    claim_new: u64,
    /// Charged under claims (a stall needs a preview's worth).
    claim_bytes: u64,
    /// When each claim's last request ended (or when it was taken).
    last_end: HashMap<Arc<str>, u64>,
    /// What each address read, charged at the check.
    reads_by_address: HashMap<Arc<str>, u64>,
    reads_total: u64,
    /// Grace bytes the check let through.
    grace_admitted: u64,
}

impl Model {
    /// Adds proven bytes to a slot (a complete one takes none); returns how many were new.
    fn add(&mut self, slot: usize, r: ByteRange) -> u64 {
        let mut new = 0;
        if !self.complete[slot] {
            for b in &mut self.bits[slot][r.start as usize..r.end as usize] {
                new += u64::from(!*b);
                *b = true;
            }
        }
        new
    }

    /// Credits a read's charge. A read's bytes are in its address's hands: they go to the slot a
    /// client of the address claims, now or at its next claim. Returns that slot and its
    /// claimant, when there is one.
    fn credit_read(
        &mut self,
        client: &ClientKey,
        charged: u64,
        proven: Option<ByteRange>,
        stray: bool,
        claims: &[Claim],
    ) -> Option<(usize, ClientKey)> {
        self.reads += charged;
        if !stray {
            self.admitted_reads += charged;
        }
        match (proven, claims.iter().find(|c| c.client.address == client.address)) {
            (Some(r), Some(c)) => {
                self.add(c.slot as usize, r);
                Some((c.slot as usize, c.client.clone()))
            }
            (Some(r), None) => {
                if let Some(bits) = self.read_bits.get_mut(&client.address) {
                    bits[r.start as usize..r.end as usize].fill(true);
                }
                None
            }
            (None, _) => None,
        }
    }

    /// Credits a claim's charge at `now`. Returns its slot, or `None` when the line names a slot
    /// the link does not have (its bytes are then re-sent bytes).
    fn credit_claim(
        &mut self,
        slot: u32,
        id: &Arc<str>,
        charged: u64,
        proven: Option<ByteRange>,
        stray: bool,
        now: u64,
    ) -> Result<Option<usize>, TestCaseError> {
        if let Some(t) = self.last_end.get_mut(id) {
            *t = now;
        }
        self.claim_bytes += charged;
        let slot = slot as usize;
        if slot >= self.bits.len() {
            self.resent += charged;
            if stray {
                self.stray_resent += charged;
            }
            return Ok(None);
        }
        // What the line proved that its slot did not cover is new; the rest of its charge is
        // re-sent.
        let new = match proven {
            Some(r) => {
                let had = self.bits[slot][r.start as usize..r.end as usize]
                    .iter()
                    .filter(|b| **b)
                    .count();
                r.len() - had as u64
            }
            None => 0,
        };
        if let Some(r) = proven {
            self.add(slot, r);
        }
        prop_assert!(charged >= new, "proved more than was charged");
        self.resent += charged - new;
        self.claim_new += new;
        if stray {
            self.stray_resent += charged - new;
        }
        Ok(Some(slot))
    }
}

struct Run {
    link: Link,
    etag: String,
    now: u64,
    next_id: u64,
    sent: HashMap<String, Sent>,
    m: Model,
}

/// A request id as nginx makes them: 32 hex digits that differ from the first.
fn request_id(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    format!("{:016x}{:016x}", x.wrapping_mul(0xBF58_476D_1CE4_E5B9), n)
}

fn bound(l: &Link) -> u64 {
    u64::from(l.max_downloads) * l.file_size + refetch_budget(l, &P) + reads_cap(l, &P) + grace_cap(l, &P)
}

impl Run {
    fn new(size: u64, max_downloads: u32, lifetime_ms: u64) -> Self {
        let mut link = test_link(size, max_downloads);
        let now = 1_000;
        link.created_at_ms = now;
        link.expires_at_ms = now + lifetime_ms;
        Run {
            etag: etag(link.identity.mtime_ns, size),
            link,
            now,
            next_id: 0,
            sent: HashMap::new(),
            m: Model {
                bits: vec![vec![false; size as usize]; max_downloads as usize],
                complete: vec![false; max_downloads as usize],
                ..Model::default()
            },
        }
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        request_id(self.next_id)
    }

    fn claim_active(&self, c: &Claim) -> bool {
        let in_flight = self
            .sent
            .values()
            .any(|s| matches!(&s.what, Use::Claim { id, .. } if *id == c.id));
        in_flight || self.now < self.m.last_end[&c.id] + P.resume_ms
    }

    /// What SPEC §2 says the check must answer, from the model.
    fn expected(&self, c: (u8, u8), method: Method, asked: ByteRange, has_range: bool) -> Result<Expect, Refusal> {
        let l = &self.link;
        let size = l.file_size;
        if l.state == LinkState::Closed {
            return Err(Refusal::Closed);
        }
        if self.now >= l.expires_at_ms {
            return Err(Refusal::Expired);
        }
        let client = client_key(c);
        match method {
            Method::Other => Err(Refusal::Method),
            Method::Head if l.state == LinkState::Completed => Err(Refusal::Grace),
            Method::Head => Ok(Expect::Head),
            Method::Get if l.state == LinkState::Completed => {
                let left = grace_cap(l, &P) - self.m.grace_admitted;
                let ok =
                    l.completer.as_ref() == Some(&client) && has_range && asked.len() <= left && asked.len() < size;
                if ok { Ok(Expect::Grace) } else { Err(Refusal::Grace) }
            }
            Method::Get => {
                let active: Vec<&Claim> = l.claims.iter().filter(|c| self.claim_active(c)).collect();
                // What was re-sent and what requests in flight may still re-send, with what this
                // one would, stay within the budget.
                let budget = refetch_budget(l, &P);
                let committed = l.resent + self.held(l);
                // Once what ferry could not prove delivered has used the budget up, nothing more.
                let spent = l.resent >= budget;
                let fits = |slot: u32| committed + self.taken(l, slot).overlap(asked) <= budget && !spent;
                if let Some(mine) = active.iter().find(|x| x.client == client) {
                    return if fits(mine.slot) {
                        Ok(Expect::Claim(mine.slot))
                    } else {
                        Err(Refusal::Refetch)
                    };
                }
                let had = self.m.reads_by_address.get(&client.address).copied();
                let mine = had.unwrap_or(0) + asked.len();
                let read = !asked.is_empty()
                    && (had.is_some() || self.m.reads_by_address.len() < MAX_READERS_KEPT)
                    && mine < P.preview_bytes
                    && 2 * mine < size
                    && self.m.reads_total + asked.len() < reads_cap(l, &P);
                if read {
                    return Ok(Expect::Read);
                }
                let free: Vec<u32> = (0..l.max_downloads)
                    .filter(|i| !l.slots[*i as usize].complete && !active.iter().any(|c| c.slot == *i))
                    .collect();
                let covered = |i: &u32| l.slots[*i as usize].coverage.covered();
                let slot = match free.iter().find(|i| covered(i) == 0) {
                    Some(fresh) => *fresh,
                    None => *free.iter().max_by_key(|i| covered(i)).ok_or(Refusal::UsedUp)?,
                };
                if fits(slot) {
                    Ok(Expect::NewClaim(slot))
                } else {
                    Err(Refusal::Refetch)
                }
            }
        }
    }

    /// A slot's coverage with what its requests in flight may still send: what a new request
    /// asking for any of it would get a second time.
    fn taken(&self, l: &Link, slot: u32) -> Coverage {
        let mut taken = l.slots[slot as usize].coverage.clone();
        for x in self.sent.values() {
            if matches!(x.what, Use::Claim { slot: s, .. } if s == slot) {
                taken.insert(x.asked);
            }
        }
        taken
    }

    /// What the requests in flight may still re-send, however they end: on each slot, every
    /// byte they ask for that the slot covers, or that more than one of them asks for, counted
    /// once for each copy past the first.
    fn held(&self, l: &Link) -> u64 {
        let mut held = 0;
        for (i, slot) in l.slots.iter().enumerate() {
            let asked: Vec<ByteRange> = self
                .sent
                .values()
                .filter(|s| matches!(s.what, Use::Claim { slot, .. } if slot as usize == i))
                .map(|s| s.asked)
                .collect();
            let mut all = slot.coverage.clone();
            for r in &asked {
                all.insert(*r);
            }
            let copies = slot.coverage.covered() + asked.iter().map(|r| r.len()).sum::<u64>();
            held += copies - all.covered();
        }
        held
    }

    fn request(
        &mut self,
        c: (u8, u8),
        method: Method,
        kind: RangeKind,
        if_range: IfRange,
        baseline: u64,
    ) -> Result<(), TestCaseError> {
        let size = self.link.file_size;
        let resp = respond(kind, if_range, size, &self.etag);
        let asked = asked(resp.range.as_deref(), resp.if_range.as_deref(), &self.etag, size);
        check_response(&resp, asked, size)?;
        let rid = self.fresh_id();
        let conn = Conn {
            local: "127.0.0.1:8080".parse().unwrap(),
            peer: "127.0.0.9:40000".parse().unwrap(),
        };
        let a = Admission {
            request_id: rid.as_str().into(),
            method,
            range: resp.range.clone(),
            if_range: resp.if_range.clone(),
            client: client_key(c),
            conn: Some((conn, baseline)),
            first_on_connection: baseline == 0,
        };
        let expected = self.expected(c, method, asked, resp.range.is_some());
        let before = self.link.clone();
        let got = admit(&mut self.link, &a, self.now, &P);
        self.check_lapses(&before, method, got.is_ok())?;
        match got {
            Err(refusal) => {
                prop_assert_eq!(Err(refusal), expected.map(|_| ()), "the check refused what §2 admits");
                self.check_refused(&before, &rid, c, method, baseline, refusal)
            }
            Ok(admitted) => {
                let want = expected.map_err(|r| TestCaseError::fail(format!("admitted what §2 refuses ({r})")))?;
                self.check_admitted(&before, &a, want, &admitted, asked)?;
                self.sent.insert(
                    rid,
                    Sent {
                        client: c,
                        method,
                        what: admitted.what,
                        status: if method == Method::Head { 200 } else { resp.status },
                        sent: resp.sent.filter(|_| method == Method::Get),
                        asked,
                        baseline,
                        delivered: 0,
                        ended: false,
                        gone: None,
                    },
                );
                Ok(())
            }
        }
    }

    /// Claims end when they lapse, whatever the check answers, and no sooner.
    fn check_lapses(&self, before: &Link, method: Method, admitted: bool) -> Result<(), TestCaseError> {
        for c in &before.claims {
            let kept = self.link.claims.iter().any(|k| k.id == c.id);
            let lapses = matches!(method, Method::Get) && before.state < LinkState::Completed;
            prop_assert!(
                kept || (lapses && !self.claim_active(c)),
                "an active claim ended at a check ({:?}, last end {}, now {})",
                c,
                self.m.last_end[&c.id],
                self.now
            );
            if admitted && lapses {
                prop_assert_eq!(kept, self.claim_active(c), "a lapsed claim outlived a check");
            }
        }
        Ok(())
    }

    /// A refused request changes nothing but the lapsed claims, and neither does its log line.
    fn check_refused(
        &mut self,
        before: &Link,
        rid: &str,
        c: (u8, u8),
        method: Method,
        baseline: u64,
        refusal: Refusal,
    ) -> Result<(), TestCaseError> {
        // A refusal may have let lapsed claims go, and nothing else.
        let mut pruned = before.clone();
        pruned.claims.retain(|c| self.link.claims.contains(c));
        prop_assert_eq!(&self.link, &pruned, "a refusal ({}) changed the link", refusal);
        // nginx answers 444 and logs it with no claim; that line changes nothing.
        let mut line = self.line(rid, c, method, 444, None, true, 0);
        line.claim = Some(String::new()).filter(|_| baseline.is_multiple_of(2));
        let s = settle(&mut self.link, &line, client_key(c), None, self.now, &P);
        prop_assert!(!s.changed);
        prop_assert_eq!(&self.link, &pruned, "a refused request's log line changed the link");
        Ok(())
    }

    /// An admitted request got what §2 says, and the model takes in what the check charged.
    fn check_admitted(
        &mut self,
        before: &Link,
        a: &Admission,
        want: Expect,
        admitted: &Admitted,
        asked: ByteRange,
    ) -> Result<(), TestCaseError> {
        match (&want, &admitted.what) {
            (Expect::Head, Use::Head) | (Expect::Read, Use::Read) | (Expect::Grace, Use::Grace) => {}
            (Expect::Claim(s), Use::Claim { slot, id }) if s == slot => {
                let mine = before.claims.iter().find(|c| c.client == a.client);
                prop_assert_eq!(mine.map(|c| &c.id), Some(id), "the client's claim was not reused");
            }
            (Expect::NewClaim(s), Use::Claim { slot, id }) if s == slot => {
                prop_assert!(admitted.new_claim);
                prop_assert!(!before.claims.iter().any(|c| c.id == *id));
                self.m.last_end.insert(id.clone(), self.now);
                // What the address read is in the client's hands, so it is added to the
                // slot, unless that would make the slot whole. Only a claim's own bytes
                // complete a download, so such reads stay charged as reads.
                if let Some(read) = self.m.read_bits.get_mut(&a.client.address) {
                    let bits = &mut self.m.bits[*slot as usize];
                    let merged: Vec<bool> = bits.iter().zip(read.iter()).map(|(b, r)| *b || *r).collect();
                    read.fill(false);
                    if !merged.iter().all(|b| *b) {
                        *bits = merged;
                    }
                }
            }
            (w, u) => return Err(TestCaseError::fail(format!("§2 says {w:?}, the check answered {u:?}"))),
        }
        prop_assert_eq!(admitted.new_claim, matches!(want, Expect::NewClaim(_)));
        match &admitted.what {
            Use::Read => {
                let fresh = vec![false; self.link.file_size as usize];
                self.m.read_bits.entry(a.client.address.clone()).or_insert(fresh);
                *self.m.reads_by_address.entry(a.client.address.clone()).or_default() += asked.len();
                self.m.reads_total += asked.len();
            }
            Use::Grace => self.m.grace_admitted += asked.len(),
            Use::Claim { .. } => prop_assert!(self.link.state >= LinkState::Downloading),
            Use::Head => {}
        }
        prop_assert_eq!(self.link.reads_total, self.m.reads_total, "reads charged at the check");
        prop_assert_eq!(
            self.link.grace_sent,
            self.m.grace_admitted,
            "grace charged at the check"
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &self,
        id: &str,
        c: (u8, u8),
        method: Method,
        status: u16,
        sent: Option<ByteRange>,
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
            request_length: 0,
            content_range: sent
                .filter(|_| status == 206)
                .map(|r| format!("bytes {}-{}/{size}", r.start, r.end - 1)),
            completion: if ok { Completion::Ok } else { Completion::Aborted },
            client: ADDRESSES[c.0 as usize].into(),
            user_agent: AGENTS[c.1 as usize].into(),
            preview: false,
            claim: None,
        }
    }

    /// Credits the model with one request's charge to `client`: what the link must then hold.
    /// `claims` are the link's claims as the credit finds them (the claims of a completed slot are
    /// removed). Returns the client that completed a slot, if this request did.
    fn credit(
        &mut self,
        client: &ClientKey,
        what: Option<&Use>,
        charged: u64,
        proven: Option<ByteRange>,
        stray: bool,
        claims: &mut Vec<Claim>,
    ) -> Result<Option<ClientKey>, TestCaseError> {
        let size = self.link.file_size;
        let m = &mut self.m;
        m.served += charged;
        if stray {
            m.stray += charged;
        }
        let completed = match what {
            None => {
                m.resent += charged;
                m.stray_resent += charged;
                None
            }
            Some(Use::Read) => m.credit_read(client, charged, proven, stray, claims),
            Some(Use::Grace) => {
                m.grace += charged;
                if !stray {
                    m.admitted_grace += charged;
                }
                None
            }
            Some(Use::Head) => {
                m.other += charged;
                None
            }
            // The claim knows its slot; a line's own number counts only without a claim.
            Some(Use::Claim { slot, id }) => match m.credit_claim(
                claims.iter().find(|c| c.id == *id).map_or(*slot, |c| c.slot),
                id,
                charged,
                proven,
                stray,
                self.now,
            )? {
                Some(slot) => Some((slot, client.clone())),
                None => return Ok(None),
            },
        };
        let Some((slot, who)) = completed else {
            return Ok(None);
        };
        let full = m.bits[slot].iter().all(|b| *b) && (size > 0 || proven.is_none() && charged == 0);
        if full && !m.complete[slot] {
            m.complete[slot] = true;
            claims.retain(|c| c.slot as usize != slot);
            return Ok(Some(who));
        }
        Ok(None)
    }

    /// Writes the log line nginx would for a request, settles it, and credits the model.
    #[allow(clippy::too_many_arguments)]
    fn log(
        &mut self,
        id: &str,
        sent: Option<&Sent>,
        stray: Option<(RangeKind, Option<String>, (u8, u8))>,
        ok: bool,
        cut: u64,
        fin: Option<u64>,
        answered: bool,
    ) -> Result<(), TestCaseError> {
        let size = self.link.file_size;
        let (c, method, status, range, baseline, delivered, what, claim) = match (sent, stray) {
            (Some(s), _) => {
                let header = Some(s.what.header()).filter(|_| answered);
                (
                    s.client,
                    s.method,
                    s.status,
                    s.sent,
                    s.baseline,
                    s.delivered,
                    Some(s.what.clone()),
                    header,
                )
            }
            (None, Some((kind, claim, c))) => {
                let resp = respond(kind, IfRange::None, size, &self.etag);
                let what = claim.as_deref().and_then(Use::parse);
                (c, Method::Get, resp.status, resp.sent, 0, 0, what, claim)
            }
            (None, None) => unreachable!(),
        };
        let len = range.map_or(0, |r| r.len());
        // An aborted request sent at least what its peer was seen to acknowledge.
        let floor = delivered.saturating_sub(HEADER).min(len);
        let body = if ok { len } else { floor + cut % (len - floor + 1) };
        let fin = fin.map(|permille| baseline + (HEADER + body) * permille / 1_000);
        let mut line = self.line(id, c, method, status, range, ok, body);
        line.claim = claim;
        let before = self.link.clone();
        let s = settle(&mut self.link, &line, client_key(c), fin, self.now, &P);
        if what.is_none() && !matches!(status, 200 | 206) {
            // No check admitted it and it sent no part of the file: nothing to settle.
            prop_assert!(!s.changed);
            prop_assert_eq!(&self.link, &before, "a line with no file bytes changed the link");
            return Ok(());
        }
        prop_assert!(s.changed, "a log line of a served request changed nothing");

        // In the model, a completed line proves and charges what it sent. An aborted line proves
        // and charges what the close notification says the peer acknowledged beyond the header.
        // Without that notification, it charges what nginx handed to the socket and counts those
        // bytes as the recipient's.
        let (charged, proven) = match (ok, range) {
            (true, r) => (body, r),
            (false, None) => (body, None),
            (false, Some(r)) => {
                let got = fin
                    .map(|a| a.saturating_sub(baseline).saturating_sub(HEADER).min(body))
                    .unwrap_or(body);
                (got, ByteRange::new(r.start, r.start + got))
            }
        };
        // The line is credited to the client the check admitted. A line that the link does not
        // know is credited to the claim it names, or else to its own client.
        let client = match (&what, sent) {
            (_, Some(s)) => client_key(s.client),
            (Some(Use::Claim { id, .. }), None) => before
                .claims
                .iter()
                .find(|x| x.id == *id)
                .map_or(client_key(c), |x| x.client.clone()),
            _ => client_key(c),
        };
        let mut claims = before.claims.clone();
        let completer = self.credit(&client, what.as_ref(), charged, proven, sent.is_none(), &mut claims)?;
        prop_assert_eq!(
            s.download_completed,
            completer.is_some(),
            "completion disagrees with the bitmap"
        );
        if s.link_completed && before.state != LinkState::Closed {
            prop_assert_eq!(
                self.link.completer.as_ref(),
                completer.as_ref(),
                "the wrong client completed"
            );
        }
        Ok(())
    }

    fn nth_inflight(&self, nth: Index) -> Option<String> {
        (!self.link.inflight.is_empty()).then(|| {
            self.link.inflight[nth.index(self.link.inflight.len())]
                .request_id
                .to_string()
        })
    }

    /// The claim value a stray line carries.
    fn stray_claim(&self, claim: StrayClaim) -> Option<String> {
        match claim {
            StrayClaim::None => None,
            StrayClaim::OfClaim(i) if !self.link.claims.is_empty() => {
                let c = &self.link.claims[i.index(self.link.claims.len())];
                Some(
                    Use::Claim {
                        slot: c.slot,
                        id: c.id.clone(),
                    }
                    .header(),
                )
            }
            StrayClaim::OfClaim(_) => None,
            StrayClaim::Value(v) => Some(v.to_string()),
        }
    }

    /// A socket sample of the `nth` request in flight: what its peer acknowledged (per mille of
    /// what the request may send), or gone.
    fn sample(&mut self, nth: Index, acked: Option<u64>) {
        if let Some(id) = self.nth_inflight(nth) {
            let s = self.sent.get_mut(&id).expect("sent");
            let acked = acked.map(|permille| s.baseline + (HEADER + s.asked.len()) * permille / 1_000);
            sample(&mut self.link, &id, acked, self.now);
            match acked {
                Some(a) if !s.ended => s.delivered = s.delivered.max(a - s.baseline),
                Some(_) => {}
                None => s.gone = s.gone.or(Some(self.now)),
            }
        }
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
            Event::Request {
                client,
                method,
                range,
                if_range,
                baseline,
            } => self.request(client, method, range, if_range, baseline)?,
            Event::Log {
                nth,
                ok,
                cut,
                fin,
                claim,
            } => {
                if let Some(id) = self.nth_inflight(nth) {
                    let sent = self.sent.remove(&id).expect("every request in flight was sent");
                    self.log(
                        &id,
                        Some(&sent),
                        None,
                        ok,
                        cut,
                        fin,
                        matches!(claim, LineClaim::Answered),
                    )?;
                }
            }
            Event::Stray {
                client,
                range,
                ok,
                cut,
                fin,
                claim,
            } => {
                let claim = self.stray_claim(claim);
                let id = self.fresh_id();
                self.log(&id, None, Some((range, claim, client)), ok, cut, fin, true)?;
            }
            Event::Sample { nth, acked } => self.sample(nth, acked),
            Event::Reuse { nth } => {
                if let Some(id) = self.nth_inflight(nth) {
                    end_on_reuse(&mut self.link, &id);
                    self.sent.get_mut(&id).expect("sent").ended = true;
                }
            }
            Event::Tick => self.tick()?,
            Event::Terminate => {
                let was_closed = self.link.state == LinkState::Closed;
                prop_assert_eq!(close(&mut self.link, CloseReason::Terminated, self.now), !was_closed);
            }
        }
        Ok(())
    }

    /// The scheduler's and the sampler's rounds, as `run_scheduler` and `sample_once` do them.
    fn tick(&mut self) -> Result<(), TestCaseError> {
        let before = self.link.clone();
        if let Some((at, reason)) = due(&self.link).filter(|(at, _)| *at <= self.now) {
            prop_assert!(at <= self.now);
            close(&mut self.link, reason, self.now);
        }
        // For requests whose connection vanished long enough ago without a log line, the whole
        // range is charged, and what the samples saw (less a header's allowance) is proven.
        let now = self.now;
        let lost: Vec<String> = self
            .sent
            .iter()
            .filter(|(_, s)| {
                let wait = UNLOGGED_AFTER_MS * if s.ended { ENDED_FACTOR } else { 1 };
                s.gone.is_some_and(|g| now >= g + wait)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut claims = self.link.claims.clone();
        settle_unlogged(&mut self.link, self.now, UNLOGGED_AFTER_MS, &P);
        // In the order the link kept them.
        let mut lost = lost;
        lost.sort_by_key(|id| before.inflight.iter().position(|f| *f.request_id == **id));
        for id in &lost {
            prop_assert!(!self.link.inflight.iter().any(|f| *f.request_id == **id));
            let s = self.sent.remove(id).expect("sent");
            let (charged, proven) = match s.what {
                Use::Head => (0, None),
                _ => {
                    let proven = s.delivered.saturating_sub(HEADER_ALLOWANCE).min(s.asked.len());
                    (s.asked.len(), ByteRange::new(s.asked.start, s.asked.start + proven))
                }
            };
            self.credit(
                &client_key(s.client),
                Some(&s.what),
                charged,
                proven,
                false,
                &mut claims,
            )?;
        }
        prop_assert_eq!(
            self.link.inflight.len(),
            self.sent.len(),
            "a request settled unlogged too soon"
        );
        let held = self.link.clone();
        drop_stalled_claims(&mut self.link, self.now, &P);
        for c in &held.claims {
            if !self.link.claims.iter().any(|k| k.id == c.id) {
                let last = held
                    .inflight
                    .iter()
                    .filter(|f| matches!(&f.what, Use::Claim { id, .. } if *id == c.id))
                    .map(|f| f.progress_ms)
                    .fold(c.last_end_ms, u64::max);
                prop_assert!(held.max_downloads > 1, "a stall dropped the claim of a single download");
                prop_assert!(
                    c.bytes >= P.preview_bytes && self.now >= last + P.stall_ms,
                    "dropped a live claim"
                );
            }
        }
        if stalled(&self.link, self.now, &P) {
            close(&mut self.link, CloseReason::Stalled, self.now);
            prop_assert_eq!(before.max_downloads, 1);
            prop_assert_eq!(before.state, LinkState::Downloading);
            // Readers never stall a link: the claim's own transfer had a preview's worth.
            let in_flight: u64 = self
                .link
                .inflight
                .iter()
                .filter(|f| matches!(f.what, Use::Claim { .. }))
                .map(|f| f.delivered)
                .sum();
            prop_assert!(
                self.m.claim_bytes + in_flight >= P.preview_bytes,
                "stalled with {} bytes received under claims ({} read)",
                self.m.claim_bytes + in_flight,
                self.m.reads
            );
        }
        Ok(())
    }

    /// Every request still in flight delivers all it may and is logged: the most a set of
    /// clients can still take.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        let mut ids: Vec<String> = self.link.inflight.iter().map(|f| f.request_id.to_string()).collect();
        ids.retain(|id| self.sent.contains_key(id));
        for id in ids {
            let before = self.link.clone();
            let sent = self.sent.remove(&id).expect("sent");
            self.log(&id, Some(&sent), None, true, 0, None, true)?;
            self.invariants(&before)?;
        }
        Ok(())
    }

    /// What must hold between any two events, given the link before the last one.
    fn invariants(&self, before: &Link) -> Result<(), TestCaseError> {
        self.check_life(before)?;
        self.check_slots(before)?;
        self.check_claims()?;
        self.check_ledger(before)?;
        self.check_reads()?;
        let l = &self.link;
        let m = &self.m;
        prop_assert!(m.admitted_grace <= l.grace_sent && l.grace_sent <= grace_cap(l, &P));
        let held: u64 = l.inflight.iter().map(|f| f.reserved).sum();
        prop_assert_eq!(
            held,
            self.held(l),
            "requests in flight hold other than what they may still re-send"
        );
        // The bound, for what the checks admitted.
        prop_assert!(
            l.bytes_served - m.stray <= bound(l),
            "handed out {} bytes, bound {} (size {}, {} downloads; resent {}, reads {}, grace {})",
            l.bytes_served - m.stray,
            bound(l),
            l.file_size,
            l.max_downloads,
            l.resent,
            m.reads,
            m.grace
        );
        let p = progress(l);
        prop_assert!((0.0..=1.0).contains(&p), "progress {}", p);
        Ok(())
    }

    /// A link only moves forward, and a closed one keeps its reason and holds no claim.
    fn check_life(&self, before: &Link) -> Result<(), TestCaseError> {
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
        Ok(())
    }

    /// Slots: each covers what the log proved under it, and is complete when that is all.
    fn check_slots(&self, before: &Link) -> Result<(), TestCaseError> {
        let l = &self.link;
        let m = &self.m;
        prop_assert_eq!(l.slots.len(), l.max_downloads as usize);
        let size = l.file_size as usize;
        for (i, s) in l.slots.iter().enumerate() {
            let mut bits = vec![false; size];
            for r in s.coverage.ranges() {
                prop_assert!(r.end as usize <= size);
                bits[r.start as usize..r.end as usize].fill(true);
            }
            prop_assert_eq!(&bits, &m.bits[i], "slot {}'s coverage disagrees with the log", i);
            prop_assert_eq!(
                s.complete,
                m.complete[i],
                "slot {} complete: bitmap full is {}",
                i,
                m.complete[i]
            );
        }
        for (i, s) in l.slots.iter().enumerate() {
            // However its bytes came (claims, or reads its address made before it claimed).
            let full = m.bits[i].iter().all(|b| *b);
            prop_assert!(
                size == 0 || full == s.complete,
                "slot {} covers the file: {}, complete: {}",
                i,
                full,
                s.complete
            );
        }
        let complete = l.slots.iter().filter(|s| s.complete).count() as u32;
        prop_assert_eq!(l.downloads_completed, complete);
        prop_assert!(l.downloads_completed <= l.max_downloads);
        prop_assert!(l.downloads_completed >= before.downloads_completed);
        if complete == l.max_downloads && before.state < LinkState::Completed {
            prop_assert!(
                l.state >= LinkState::Completed,
                "the allowance is used up and the link serves on"
            );
        }
        Ok(())
    }

    /// Claims: one per client, one per slot, none on a complete slot.
    fn check_claims(&self) -> Result<(), TestCaseError> {
        let l = &self.link;
        prop_assert!(l.claims.len() <= l.max_downloads as usize);
        for (i, c) in l.claims.iter().enumerate() {
            prop_assert!(
                !l.claims[..i].iter().any(|d| d.client == c.client),
                "two claims for one client"
            );
            prop_assert!(
                !l.claims[..i].iter().any(|d| d.slot == c.slot),
                "two claims on one slot"
            );
            prop_assert!(!l.slots[c.slot as usize].complete, "a claim on a complete slot");
        }
        Ok(())
    }

    /// The ledger: every byte charged is new coverage, re-sent, read or grace.
    fn check_ledger(&self, before: &Link) -> Result<(), TestCaseError> {
        let l = &self.link;
        let m = &self.m;
        prop_assert!(l.bytes_served >= before.bytes_served);
        prop_assert_eq!(l.bytes_served, m.served, "bytes_served is not what the log charged");
        prop_assert_eq!(l.resent, m.resent, "re-sent bytes are not what the log says");
        let covered: u64 = l.slots.iter().map(|s| s.coverage.covered()).sum();
        prop_assert!(covered >= m.claim_new);
        prop_assert_eq!(
            l.bytes_served,
            m.claim_new + l.resent + m.reads + m.grace + m.other,
            "bytes charged as nothing"
        );
        Ok(())
    }

    /// Reads: what each address read equals what the log proved, and all reads stay under their
    /// caps.
    fn check_reads(&self) -> Result<(), TestCaseError> {
        let l = &self.link;
        let m = &self.m;
        let size = l.file_size as usize;
        for r in &l.reads {
            let mut bits = vec![false; size];
            for x in r.coverage.ranges() {
                bits[x.start as usize..x.end as usize].fill(true);
            }
            prop_assert_eq!(
                Some(&bits),
                m.read_bits.get(&r.address),
                "{}'s reads' coverage",
                r.address
            );
        }
        prop_assert_eq!(l.reads_total, m.reads_total);
        prop_assert!(
            m.admitted_reads <= l.reads_total,
            "reads delivered more than was charged at the check"
        );
        prop_assert!(
            l.reads_total == 0 || l.reads_total < reads_cap(l, &P),
            "reads past their cap"
        );
        for (address, n) in &m.reads_by_address {
            prop_assert!(*n < P.preview_bytes && 2 * n < l.file_size, "{} read {}", address, n);
        }
        Ok(())
    }
}

/// What §2 says a check must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Head,
    Read,
    Grace,
    /// Under the client's active claim, on this slot.
    Claim(u32),
    /// A new claim on this slot.
    NewClaim(u32),
}

fn scenario() -> impl Strategy<Value = (u64, u32, u64, Vec<Event>)> {
    (
        prop_oneof![1 => Just(0u64), 2 => 1..300u64, 8 => 1..3_000u64],
        1..=3u32,
        prop_oneof![1 => 10_000..200_000u64, 3 => 200_000..4_000_000u64],
        prop::collection::vec(event(), 1..100),
    )
}

fn run((size, max, lifetime, events): (u64, u32, u64, Vec<Event>)) -> Result<(), TestCaseError> {
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
                if_range: None,
                client: run.link.completer.clone().unwrap_or_else(|| client_key((0, 0))),
                conn: None,
                first_on_connection: false,
            };
            prop_assert!(admit(&mut probe, &a, run.now, &P).is_err());
            prop_assert_eq!(&probe, &run.link);
        }
    }
    run.drain()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_sequence_of_events_breaks_the_link_rules(s in scenario()) {
        run(s)?;
    }
}

/// The first request in flight, logged as completed with what its check answered.
fn logged_whole() -> Event {
    Event::Log {
        nth: first(),
        ok: true,
        cut: 0,
        fin: None,
        claim: LineClaim::Answered,
    }
}

/// The first request in flight, as an `Index` picks it.
fn first() -> Index {
    index(0)
}

/// The `Index` that proptest prints as `Index(raw)`, so that a case it found can be written out
/// as a test that picks the same requests and offsets. `Index` has no constructor, so a
/// generated one is steered to `raw` by bisection: shrinking lowers it, complicating raises it.
fn index(raw: usize) -> Index {
    use proptest::strategy::ValueTree;
    let raw_of = |i: Index| -> usize {
        let debug = format!("{i:?}");
        debug["Index(".len()..debug.len() - 1]
            .parse()
            .expect("Index prints as Index(n)")
    };
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut tree = loop {
        let tree = any::<Index>().new_tree(&mut runner).unwrap();
        if raw_of(tree.current()) >= raw {
            break tree;
        }
    };
    while raw_of(tree.current()) != raw {
        let moved = if raw_of(tree.current()) > raw {
            tree.simplify()
        } else {
            tree.complicate()
        };
        assert!(moved, "bisection stopped short of Index({raw})");
    }
    tree.current()
}

fn get(client: (u8, u8)) -> Event {
    Event::Request {
        client,
        method: Method::Get,
        range: RangeKind::None,
        if_range: IfRange::None,
        baseline: 0,
    }
}

/// A download manager's parallel requests under one claim, for the same bytes: the second copy
/// must be drawn from the re-send budget (or refused), not handed out for free.
#[test]
fn parallel_requests_of_one_claim_keep_the_bound() {
    let log = logged_whole();
    run((3_000, 1, 100_000, vec![get((0, 0)), get((0, 0)), log.clone(), log])).unwrap();
}

/// Requests lost with no log line are charged their whole range: repeating them must not hand
/// out copy after copy.
#[test]
fn requests_lost_again_and_again_keep_the_bound() {
    let mut events = vec![];
    for _ in 0..4 {
        events.extend([
            get((0, 0)),
            Event::Sample {
                nth: first(),
                acked: None,
            },
            Event::Wait(UNLOGGED_AFTER_MS),
            Event::Tick,
        ]);
    }
    run((3_000, 1, 1_000_000, events)).unwrap();
}

/// HEAD is no part of the grace period: only the completer's ranges are served in it.
#[test]
fn the_grace_period_refuses_a_head() {
    let log = logged_whole();
    let head = Event::Request {
        client: (1, 0),
        method: Method::Head,
        range: RangeKind::None,
        if_range: IfRange::None,
        baseline: 0,
    };
    run((3_000, 1, 100_000, vec![get((0, 0)), log, head])).unwrap();
}

/// A plain GET of `range` by `client`, on a new connection.
fn get_of(client: (u8, u8), range: RangeKind) -> Event {
    Event::Request {
        client,
        method: Method::Get,
        range,
        if_range: IfRange::None,
        baseline: 0,
    }
}

/// Two requests of one claim ask for overlapping bytes, and the later one, which held the
/// overlap from the re-send budget, settles first. The earlier one then sends those bytes a
/// second time, so the budget must go on holding them until it settles too.
#[test]
fn an_overlap_stays_held_when_the_later_request_settles_first() {
    let log = |nth| Event::Log {
        nth: index(nth),
        ok: true,
        cut: 0,
        fin: None,
        claim: LineClaim::Answered,
    };
    let events = vec![
        get_of((0, 0), RangeKind::From(index(25_691_844_113_801_604))),
        get_of((1, 0), RangeKind::Suffix(679)),
        get_of((1, 0), RangeKind::Span(index(0), 699)),
        log(12_297_829_382_473_034_411),
        get_of((0, 0), RangeKind::Span(index(25_691_844_113_801_604), 83)),
        log(0),
        Event::Wait(0),
        get_of((0, 0), RangeKind::Multi),
        Event::Wait(0),
        Event::Wait(0),
    ];
    run((718, 2, 10_000, events)).unwrap();
}

/// One claim's two requests for the same bytes hold one copy from the re-send budget; another
/// claim's request is lost with no log line and charged as re-sent, so the two together pass the
/// budget. From then on a request must be refused even for bytes its slot lacks: the lost
/// request was charged for bytes it may never have delivered, its slot still lacks them, and
/// sending them again on top of the held copy would pass the bound.
#[test]
fn nothing_more_is_sent_while_held_and_lost_bytes_pass_the_budget() {
    let events = vec![
        get_of((0, 0), RangeKind::Span(index(0), 1200)),
        get_of((0, 0), RangeKind::Span(index(0), 1200)),
        get_of((1, 0), RangeKind::Span(index(0), 1199)),
        Event::Sample {
            nth: index(12_297_829_382_473_034_411),
            acked: None,
        },
        Event::Wait(UNLOGGED_AFTER_MS),
        Event::Tick,
        get_of((0, 0), RangeKind::From(index(7_378_697_629_483_820_647))),
        get_of((1, 0), RangeKind::None),
        get_of((2, 0), RangeKind::None),
    ];
    run((3_000, 3, 1_000_000, events)).unwrap();
}
