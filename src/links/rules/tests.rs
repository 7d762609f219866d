//! The rules, case by case.

use super::admit::*;
use super::settle::*;
use super::*;
use crate::model::link::test_link;
use crate::model::*;
use crate::monitor::record::{AccessRecord, Completion};

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
        request_length: 0,
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
    // The socket's close notification says that 300 bytes of header and 400 of body were
    // acknowledged.
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
    // With a preview size of 100 and a file of 1000 bytes, an address may read fewer than 100
    // bytes, and the link fewer than 500 in all.
    let mut l = test_link(1000, 1);
    let a = admit(&mut l, &ranged("a", "bytes=0-98", 1), 0, &P).unwrap();
    assert_eq!(a.what, Use::Read);
    done(&mut l, "a", 206, 99, Some("bytes 0-98/1000"), 1);
    // One more byte reaches the preview size, so the request is no longer a read but a claim.
    assert!(new_claim(admit(&mut l, &ranged("b", "bytes=99-99", 1), 2, &P)));
    // A different User-Agent from the same address reads nothing more, because reads are counted
    // per address.
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
    // Restarting from 0 would re-send 900 bytes, more than the 400 allowed, so it is refused.
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
    // Without the socket's close notification, what nginx sent is charged and counted as
    // delivered.
    assert_eq!((l.bytes_served, l.slots[0].coverage.covered(), l.resent), (900, 900, 0));
}

#[test]
fn the_line_is_credited_by_the_claim_not_its_headers() {
    let mut l = test_link(1000, 2);
    let mut a = get("a", 1);
    a.client.user_agent = "\u{fffd}\u{fffd}".into();
    admit(&mut l, &a, 0, &P).unwrap();
    // The line's client and User-Agent decode differently, and the line still counts for the
    // claim.
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
    // One more byte would pass the 300 bytes allowed in all.
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
