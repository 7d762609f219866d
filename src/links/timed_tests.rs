//! Time-based rules end to end inside the link service, on tokio's paused clock: the scheduler,
//! the sampler and housekeeping see virtual time, so deadlines are checked to the millisecond
//! without sleeping. Real store, real files; no nginx (its part is tested in `tests/it`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::rules::{Admission, Method, Refusal};
use super::*;
use crate::config::{Config, Source};
use crate::data_dir::RelPath;
use crate::model::{ClientKey, Clock, CloseReason, Link, LinkState, TunnelId, Use};
use crate::monitor::record::{AccessRecord, Completion};
use crate::store::Store;
use crate::store::embedded::Embedded;
use crate::tunnel::Provider;

pub(crate) struct Fixture {
    pub(crate) links: Arc<Links>,
    _dir: tempfile::TempDir,
}

pub(crate) fn fixture(extra: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/f.bin"), vec![1u8; 4_000_000]).unwrap();
    let (data, state, tunnels, logs) = (p("data"), p("state"), p("tunnels"), p("logs"));
    let mut pairs = vec![
        ("NAS_MOUNT_PATH", data.as_str()),
        ("FERRY_STATE_DIR", state.as_str()),
        ("FERRY_TUNNELS_DIR", tunnels.as_str()),
        ("FERRY_LOGS_DIR", logs.as_str()),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];
    pairs.extend_from_slice(extra);
    let mut config = Config::load(&Source::from_pairs(pairs)).unwrap();
    config.prepare_dirs().unwrap();
    let store = Store::Embedded(Box::new(Embedded::open(&config.state_dir.join("ferry.redb")).unwrap()));
    let links = Links::with_clock(
        &config,
        store,
        Provider::Local(crate::tunnel::local::Local),
        Clock::tokio(),
    )
    .unwrap();
    Fixture { links, _dir: dir }
}

pub(crate) fn new_link(expires_in: u64) -> NewLink {
    NewLink {
        file_path: RelPath::parse("f.bin").unwrap(),
        file_paths: None,
        expires_in: Some(expires_in),
        max_downloads: None,
        note: None,
        rate_limit_bytes_per_second: None,
        policy: Default::default(),
    }
}

/// Lets spawned tasks run until they wait again.
async fn run_pending() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn state_of(links: &Links, id: &TunnelId) -> Arc<Link> {
    links.store().get(id).await.unwrap().unwrap()
}

pub(crate) fn record(request_id: &str, status: u16, body: u64, content_range: &str) -> AccessRecord {
    AccessRecord {
        msec: 0.0,
        request_id: request_id.into(),
        tunnel_id: None,
        method: "GET".into(),
        status,
        bytes_sent: body + 300,
        body_bytes_sent: body,
        request_length: 0,
        content_range: Some(content_range.to_string()).filter(|s| !s.is_empty()),
        completion: Completion::Ok,
        client: "127.0.0.5".into(),
        user_agent: "curl".into(),
        preview: false,
        claim: None,
    }
}

fn admission(rid: &str, client: &str, range: Option<&str>) -> Admission {
    Admission {
        request_id: rid.into(),
        method: Method::Get,
        range: range.map(str::to_string),
        if_range: None,
        client: ClientKey::new(client, "curl").unwrap(),
        conn: None,
        first_on_connection: false,
    }
}

/// A request id whose first 12 digits (a claim's id) differ from every other's.
fn rid(n: u32) -> String {
    format!("{n:04}{:0>28}", "")
}

/// The check of a request from `client`, as nginx asks it.
async fn check(f: &Fixture, created: &Created, rid: &str, client: &str, range: Option<&str>) -> Result<Use, Refusal> {
    f.links
        .check(
            created.tunnel_id.as_str(),
            &created.token,
            &crate::links::Visitor::default(),
            admission(rid, client, range),
        )
        .await
        .map(|(_, what)| what)
}

/// The log line nginx writes for a request the check answered with `what`.
fn line(created: &Created, rid: &str, client: &str, what: &Use, body: u64, cr: &str) -> AccessRecord {
    let mut rec = record(rid, if cr.is_empty() { 200 } else { 206 }, body, cr);
    rec.tunnel_id = Some(created.tunnel_id.clone());
    rec.client = client.into();
    rec.claim = Some(what.header());
    rec
}

/// A request from 127.0.0.5, checked, served and logged.
async fn download_range(f: &Fixture, created: &Created, rid: &str, range: &str, body: u64, cr: &str) -> Use {
    let what = check(f, created, rid, "127.0.0.5", Some(range)).await.unwrap();
    f.links
        .apply_log(&line(created, rid, "127.0.0.5", &what, body, cr))
        .await
        .unwrap();
    what
}

#[tokio::test(start_paused = true)]
async fn expiry_closes_the_link_at_its_deadline_to_the_millisecond() {
    let f = fixture(&[]);
    let cancel = CancellationToken::new();
    tokio::spawn(f.links.clone().run_scheduler(cancel.clone()));
    let (created, link) = f.links.create(new_link(5), None).await.unwrap();
    let left = link.expires_at_ms - f.links.clock.now_ms();
    tokio::time::advance(Duration::from_millis(left - 1)).await;
    run_pending().await;
    assert_eq!(state_of(&f.links, &created.tunnel_id).await.state, LinkState::Open);
    tokio::time::advance(Duration::from_millis(1)).await;
    run_pending().await;
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!(
        (l.state, l.close_reason),
        (LinkState::Closed, Some(CloseReason::Expired))
    );
    assert_eq!(l.closed_at_ms, Some(l.expires_at_ms));
    cancel.cancel();
}

/// Waits (in real time, at most a second) until the link is closed; tasks waiting on the
/// blocking pool (file operations) finish meanwhile, while the paused clock stands still.
async fn closes(links: &Links, id: &TunnelId) -> Arc<Link> {
    for _ in 0..1000 {
        run_pending().await;
        let l = state_of(links, id).await;
        if l.state == LinkState::Closed {
            return l;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("link {id} did not close");
}

#[tokio::test(start_paused = true)]
async fn links_created_while_the_scheduler_sleeps_close_at_their_own_deadlines() {
    let f = fixture(&[]);
    let cancel = CancellationToken::new();
    tokio::spawn(f.links.clone().run_scheduler(cancel.clone()));
    let (late, _) = f.links.create(new_link(60), None).await.unwrap();
    run_pending().await;
    // The scheduler now sleeps until the first link's deadline; an earlier one must wake it, a
    // later one need not (a missed wake-up would close the second link 55 s late).
    let (early, _) = f.links.create(new_link(5), None).await.unwrap();
    let (later, _) = f.links.create(new_link(90), None).await.unwrap();
    run_pending().await;
    for (c, next) in [(&early, Some(&late)), (&late, Some(&later)), (&later, None)] {
        let due = state_of(&f.links, &c.tunnel_id).await.expires_at_ms;
        tokio::time::advance(Duration::from_millis(due - f.links.clock.now_ms())).await;
        let l = closes(&f.links, &c.tunnel_id).await;
        assert_eq!(
            (l.close_reason, l.closed_at_ms),
            (Some(CloseReason::Expired), Some(due))
        );
        if let Some(next) = next {
            assert_eq!(state_of(&f.links, &next.tunnel_id).await.state, LinkState::Open);
        }
    }
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_completed_link_closes_when_its_grace_period_ends() {
    let f = fixture(&[("GRACE_PERIOD_SECONDS", "60"), ("FERRY_GRACE_BYTES", "1000")]);
    let cancel = CancellationToken::new();
    tokio::spawn(f.links.clone().run_scheduler(cancel.clone()));
    let (created, _) = f.links.create(new_link(3600), None).await.unwrap();
    download_range(
        &f,
        &created,
        "0123456789abcdef0123456789abcde1",
        "bytes=0-",
        4_000_000,
        "bytes 0-3999999/4000000",
    )
    .await;
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!(l.state, LinkState::Completed);
    tokio::time::advance(Duration::from_millis(59_999)).await;
    run_pending().await;
    assert_eq!(state_of(&f.links, &created.tunnel_id).await.state, LinkState::Completed);
    // To the last millisecond of the grace period the completer may fetch a tail again, within
    // the grace bytes; nobody else may, and nothing that would make another copy.
    let tail = check(&f, &created, &rid(2), "127.0.0.5", Some("bytes=3999500-")).await;
    assert_eq!(tail, Ok(Use::Grace));
    let other = check(&f, &created, &rid(3), "127.0.0.6", Some("bytes=3999500-")).await;
    assert_eq!(other, Err(Refusal::Grace));
    let whole = check(&f, &created, &rid(4), "127.0.0.5", None).await;
    assert_eq!(whole, Err(Refusal::Grace));
    let past_cap = check(&f, &created, &rid(5), "127.0.0.5", Some("bytes=3999000-")).await;
    assert_eq!(past_cap, Err(Refusal::Grace), "past the grace bytes");
    f.links
        .apply_log(&line(
            &created,
            &rid(2),
            "127.0.0.5",
            &Use::Grace,
            500,
            "bytes 3999500-3999999/4000000",
        ))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    run_pending().await;
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!(
        (l.state, l.close_reason, l.bytes_served, l.grace_sent),
        (LinkState::Closed, Some(CloseReason::Completed), 4_000_500, 500)
    );
    let late = check(&f, &created, &rid(6), "127.0.0.5", Some("bytes=3999900-")).await;
    assert_eq!(late, Err(Refusal::Closed));
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn silence_after_a_partial_download_stalls_after_the_timeout_and_not_before() {
    let f = fixture(&[("STALL_TIMEOUT_SECONDS", "300")]);
    let (created, _) = f.links.create(new_link(3600), None).await.unwrap();
    download_range(
        &f,
        &created,
        "0123456789abcdef0123456789abcde2",
        "bytes=0-1999999",
        2_000_000,
        "bytes 0-1999999/4000000",
    )
    .await;
    stalls_at_the_timeout(&f, &created.tunnel_id).await;
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!(
        (l.close_reason, l.bytes_served),
        (Some(CloseReason::Stalled), 2_000_000)
    );
}

#[tokio::test(start_paused = true)]
async fn history_is_forgotten_after_its_retention() {
    let f = fixture(&[("FERRY_HISTORY_DAYS", "1")]);
    let (created, _) = f.links.create(new_link(3600), None).await.unwrap();
    f.links.terminate(created.tunnel_id.as_str()).await.unwrap();
    tokio::time::advance(Duration::from_secs(86_399)).await;
    f.links.housekeeping().await.unwrap();
    assert_eq!(f.links.store().history(10).await.unwrap().len(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    f.links.housekeeping().await.unwrap();
    assert!(f.links.store().history(10).await.unwrap().is_empty());
    assert!(f.links.store().get(&created.tunnel_id).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn lines_applied_together_leave_the_link_as_lines_applied_one_by_one() {
    let f = fixture(&[]);
    let (one_by_one, _) = f.links.create(new_link(3600), None).await.unwrap();
    let (together, _) = f.links.create(new_link(3600), None).await.unwrap();
    // A download manager's two halves under one claim and a scanner's read are checked the same
    // way on both links. Then come their log lines: half the file, the other half (which
    // completes it), that line again (a replay), and the read.
    let requests = [
        (
            "1",
            "127.0.0.5",
            "bytes=0-1999999",
            "bytes 0-1999999/4000000",
            2_000_000,
        ),
        (
            "2",
            "127.0.0.5",
            "bytes=2000000-",
            "bytes 2000000-3999999/4000000",
            2_000_000,
        ),
        ("3", "127.0.0.7", "bytes=0-99", "bytes 0-99/4000000", 100),
    ];
    let mut lines: Vec<Vec<AccessRecord>> = vec![];
    for created in [&one_by_one, &together] {
        let mut recs = vec![];
        for (n, client, range, cr, body) in requests {
            let rid = format!("{n:0>32}");
            let what = check(&f, created, &rid, client, Some(range)).await.unwrap();
            recs.push(line(created, &rid, client, &what, body, cr));
        }
        assert!(matches!(recs[0].claim.as_deref(), Some(c) if c.starts_with("c0.")));
        assert_eq!(recs[1].claim, recs[0].claim, "the client's claim is reused");
        assert_eq!(recs[2].claim.as_deref(), Some("read"));
        recs.insert(2, recs[1].clone());
        lines.push(recs);
    }
    for rec in &lines[0] {
        f.links.apply_log(rec).await.unwrap();
    }
    f.links.apply_logs(&lines[1]).await.unwrap();
    let (a, b) = (
        state_of(&f.links, &one_by_one.tunnel_id).await,
        state_of(&f.links, &together.tunnel_id).await,
    );
    assert_eq!(
        (a.state, a.downloads_completed, a.bytes_served, a.requests.len()),
        (LinkState::Completed, 1, 4_000_100, 3)
    );
    assert_eq!((a.resent, a.reads_total), (0, 100));
    let summary = |l: &Link| {
        (
            l.state,
            l.downloads_completed,
            l.bytes_served,
            l.slots.clone(),
            l.resent,
            l.reads_total,
            l.completer.clone(),
            l.grace_until_ms,
            l.requests
                .iter()
                .map(|r| (r.request_id.clone(), r.bytes))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(summary(&a), summary(&b));
}

/// A claim lasts while its client has a request in flight, plus the resume window after its last
/// request ended: to the millisecond on the paused clock. Another client can then continue the
/// slot (a recipient whose address changed resumes with `curl -C -`).
#[tokio::test(start_paused = true)]
async fn a_claim_lasts_its_resume_window_after_its_last_request_and_then_the_slot_resumes() {
    let f = fixture(&[("RESUME_WINDOW_SECONDS", "30")]);
    let (created, _) = f.links.create(new_link(3600), None).await.unwrap();
    // Two million bytes is past the preview size, so this is a claim, not a read.
    let first = check(&f, &created, &rid(1), "127.0.0.5", Some("bytes=0-1999999"))
        .await
        .unwrap();
    assert!(matches!(first, Use::Claim { slot: 0, .. }));
    // The request stays in flight for ten minutes, and the claim holds however long it takes.
    tokio::time::advance(Duration::from_secs(600)).await;
    let other = check(&f, &created, &rid(2), "127.0.0.6", None).await;
    assert_eq!(other, Err(Refusal::UsedUp));
    f.links
        .apply_log(&line(
            &created,
            &rid(1),
            "127.0.0.5",
            &first,
            2_000_000,
            "bytes 0-1999999/4000000",
        ))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(29_999)).await;
    let other = check(&f, &created, &rid(3), "127.0.0.6", Some("bytes=2000000-")).await;
    assert_eq!(other, Err(Refusal::UsedUp), "the claim ended before its resume window");
    tokio::time::advance(Duration::from_millis(1)).await;
    let resumed = check(&f, &created, &rid(4), "127.0.0.6", Some("bytes=2000000-"))
        .await
        .unwrap();
    assert!(
        matches!(&resumed, Use::Claim { slot: 0, .. }) && resumed != first,
        "{resumed:?}"
    );
    f.links
        .apply_log(&line(
            &created,
            &rid(4),
            "127.0.0.6",
            &resumed,
            2_000_000,
            "bytes 2000000-3999999/4000000",
        ))
        .await
        .unwrap();
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!(
        (l.state, l.downloads_completed, l.bytes_served, l.resent),
        (LinkState::Completed, 1, 4_000_000, 0)
    );
}

/// A scanner's small range is a read: it takes no slot and never stalls a link, however long
/// the link then sits; the recipient still gets the download, and its stall is its own.
#[tokio::test(start_paused = true)]
async fn a_scanners_read_takes_no_slot_and_never_stalls_the_link() {
    let f = fixture(&[("STALL_TIMEOUT_SECONDS", "300"), ("FERRY_PREVIEW_BYTES", "65536")]);
    let (created, _) = f.links.create(new_link(3600), None).await.unwrap();
    // Two scanners read more than a preview's worth between them, each less on its own.
    for (n, client) in [(1, "127.0.0.7"), (2, "127.0.0.8")] {
        let what = check(&f, &created, &rid(n), client, Some("bytes=0-39999"))
            .await
            .unwrap();
        assert_eq!(what, Use::Read);
        f.links
            .apply_log(&line(&created, &rid(n), client, &what, 40_000, "bytes 0-39999/4000000"))
            .await
            .unwrap();
    }
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!(
        (l.state, l.claims.len(), l.reads_total, l.bytes_served),
        (LinkState::Open, 0, 80_000, 80_000)
    );
    tokio::time::advance(Duration::from_secs(3_000)).await;
    f.links.sample_once().await.unwrap();
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!((l.state, l.close_reason), (LinkState::Open, None));

    // The recipient's download takes the slot, and stalls only on what it received itself,
    // not on what the readers took.
    let what = check(&f, &created, &rid(3), "127.0.0.5", None).await.unwrap();
    assert!(matches!(what, Use::Claim { slot: 0, .. }));
    let mut rec = line(&created, &rid(3), "127.0.0.5", &what, 1_000, "");
    rec.completion = Completion::Aborted;
    f.links.apply_log(&rec).await.unwrap();
    tokio::time::advance(Duration::from_secs(600)).await;
    f.links.sample_once().await.unwrap();
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!(
        (l.state, l.bytes_served),
        (LinkState::Downloading, 81_000),
        "stalled on bytes the readers took"
    );
    // Once the claim itself has a preview's worth, silence stalls it at the timeout.
    let what = check(&f, &created, &rid(4), "127.0.0.5", Some("bytes=1000-"))
        .await
        .unwrap();
    assert!(matches!(what, Use::Claim { slot: 0, .. }));
    let mut rec = line(
        &created,
        &rid(4),
        "127.0.0.5",
        &what,
        99_000,
        "bytes 1000-3999999/4000000",
    );
    rec.completion = Completion::Aborted;
    f.links.apply_log(&rec).await.unwrap();
    stalls_at_the_timeout(&f, &created.tunnel_id).await;
    assert_eq!(
        state_of(&f.links, &created.tunnel_id).await.close_reason,
        Some(CloseReason::Stalled)
    );
}

/// The sampler finds no stall 1 ms before the stall timeout (300 s) has passed since the last
/// progress, and closes the link at it.
async fn stalls_at_the_timeout(f: &Fixture, id: &TunnelId) {
    tokio::time::advance(Duration::from_millis(299_999)).await;
    f.links.sample_once().await.unwrap();
    assert_eq!(state_of(&f.links, id).await.state, LinkState::Downloading);
    tokio::time::advance(Duration::from_millis(1)).await;
    f.links.sample_once().await.unwrap();
    assert_eq!(state_of(&f.links, id).await.state, LinkState::Closed);
}

/// The file watch closes a link whose file went away, saying why, and lets a link in its grace
/// period close as completed (an owner may delete a file once it was downloaded).
#[tokio::test(start_paused = true)]
async fn the_file_watch_closes_a_link_whose_file_changed_but_not_a_completed_one() {
    let f = fixture(&[("GRACE_PERIOD_SECONDS", "60")]);
    let (done, _) = f.links.create(new_link(3600), None).await.unwrap();
    download_range(&f, &done, &rid(1), "bytes=0-", 4_000_000, "bytes 0-3999999/4000000").await;
    let (open, _) = f.links.create(new_link(3600), None).await.unwrap();
    assert_eq!(f.links.watch_files_once().await.unwrap(), vec![]);

    std::fs::remove_file(f._dir.path().join("data/f.bin")).unwrap();
    assert_eq!(f.links.watch_files_once().await.unwrap(), vec![open.tunnel_id.clone()]);
    let l = state_of(&f.links, &open.tunnel_id).await;
    assert_eq!(
        (l.close_reason, l.close_detail.as_deref()),
        (
            Some(CloseReason::Error),
            Some("the shared file changed or was replaced")
        )
    );
    assert_eq!(state_of(&f.links, &done.tunnel_id).await.state, LinkState::Completed);
}
