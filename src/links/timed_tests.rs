//! Time-based rules end to end inside the link service, on tokio's paused clock: the scheduler,
//! the sampler and housekeeping see virtual time, so deadlines are checked to the millisecond
//! without sleeping. Real store, real files; no nginx (its part is tested in `tests/it`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::rules::{Admission, Method};
use super::*;
use crate::config::{Config, Source};
use crate::monitor::record::{AccessRecord, Completion};
use crate::store::embedded::Embedded;

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
        expires_in: Some(expires_in),
        max_downloads: None,
        note: None,
        rate_limit_bytes_per_second: None,
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
        content_range: Some(content_range.to_string()).filter(|s| !s.is_empty()),
        completion: Completion::Ok,
        client: "127.0.0.5".into(),
        user_agent: "curl".into(),
        preview: false,
    }
}

async fn download_range(f: &Fixture, created: &Created, rid: &str, range: &str, body: u64, cr: &str) {
    let admission = Admission {
        request_id: rid.into(),
        method: Method::Get,
        range: Some(range.into()),
        client: ClientKey::new("127.0.0.5", "curl").unwrap(),
        conn: None,
        first_on_connection: false,
    };
    f.links
        .check(created.tunnel_id.as_str(), &created.token, admission)
        .await
        .unwrap();
    let mut rec = record(rid, 206, body, cr);
    rec.tunnel_id = Some(created.tunnel_id.clone());
    f.links.apply_log(&rec).await.unwrap();
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
    let f = fixture(&[("GRACE_PERIOD_SECONDS", "60")]);
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
    tokio::time::advance(Duration::from_millis(1)).await;
    run_pending().await;
    let l = state_of(&f.links, &created.tunnel_id).await;
    assert_eq!(
        (l.state, l.close_reason, l.bytes_served),
        (LinkState::Closed, Some(CloseReason::Completed), 4_000_000)
    );
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
    tokio::time::advance(Duration::from_millis(299_999)).await;
    f.links.sample_once().await.unwrap();
    assert_eq!(
        state_of(&f.links, &created.tunnel_id).await.state,
        LinkState::Downloading
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    f.links.sample_once().await.unwrap();
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
    // Half the file, the other half (completing it), that line again (a replay), and a range
    // read again by the completer in the grace period.
    let lines = |id: &TunnelId| {
        [
            ("1", "bytes 0-1999999/4000000", 2_000_000),
            ("2", "bytes 2000000-3999999/4000000", 2_000_000),
            ("2", "bytes 2000000-3999999/4000000", 2_000_000),
            ("3", "bytes 0-99/4000000", 100),
        ]
        .map(|(n, cr, body)| {
            let mut rec = record(&format!("{n:0>32}"), 206, body, cr);
            rec.tunnel_id = Some(id.clone());
            rec
        })
    };
    for rec in lines(&one_by_one.tunnel_id) {
        f.links.apply_log(&rec).await.unwrap();
    }
    f.links.apply_logs(&lines(&together.tunnel_id)).await.unwrap();
    let (a, b) = (
        state_of(&f.links, &one_by_one.tunnel_id).await,
        state_of(&f.links, &together.tunnel_id).await,
    );
    assert_eq!(
        (a.state, a.downloads_completed, a.bytes_served, a.requests.len()),
        (LinkState::Completed, 1, 4_000_100, 3)
    );
    let summary = |l: &Link| {
        (
            l.state,
            l.downloads_completed,
            l.bytes_served,
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
