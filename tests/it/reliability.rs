//! The promises under load and faults (SPEC §9): many links and clients at once, nginx killed,
//! ferry killed, the store killed while the log rotates, the log disk full. Every client is a
//! download manager that resumes what it has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{EMPTY_REPLY, RedisServer, SmallDisk, TestApp, curl};

/// Enough headroom that one address (every client here is 127.0.0.1) is never rate-limited.
const UNLIMITED: [(&str, &str); 3] = [
    ("FERRY_REQ_PER_CLIENT", "100000"),
    ("FERRY_CONN_PER_CLIENT", "4096"),
    ("FERRY_BAN_AFTER_FAILS", "0"),
];

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = UNLIMITED.to_vec();
    all.extend_from_slice(extra);
    all
}

/// Sizes of the shared files: small ones, odd ones, and some big enough to be in flight a while.
const SIZES: [usize; 8] = [1, 4096, 65_537, 200_000, 1 << 20, 3 << 20, 777, 100_000];

fn share_files(app: &TestApp) -> Vec<(String, Arc<Vec<u8>>)> {
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let name = format!("f{i}.bin");
            let bytes = app.data_file(&name, n);
            (name, Arc::new(bytes))
        })
        .collect()
}

async fn create_links(app: &TestApp, files: &[(String, Arc<Vec<u8>>)], n: usize) -> Vec<(String, String, usize)> {
    let made = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let (name, _) = &files[i % files.len()];
            let v = app.link(name).await;
            (
                v["tunnel_id"].as_str().unwrap().to_string(),
                v["download_url"].as_str().unwrap().to_string(),
                i % files.len(),
            )
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(made.len(), n);
    made
}

/// Downloads `url` like a download manager: on any failure (444, a cut connection, a refused
/// connect) it waits and resumes from the bytes it has, until `deadline`.
async fn fetch(http: &reqwest::Client, url: &str, deadline: Instant) -> Result<(Vec<u8>, u32), String> {
    let mut got = Vec::new();
    let mut attempts = 0u32;
    let mut last = String::new();
    while Instant::now() < deadline {
        attempts += 1;
        let mut req = http.get(url);
        if !got.is_empty() {
            req = req.header("Range", format!("bytes={}-", got.len()));
        }
        match req.send().await {
            Ok(r) if r.status() == 200 || r.status() == 206 => {
                if r.status() == 200 {
                    got.clear();
                }
                let mut r = r;
                let mut broken = false;
                loop {
                    match r.chunk().await {
                        Ok(Some(c)) => got.extend_from_slice(&c),
                        Ok(None) => break,
                        Err(e) => {
                            last = format!("cut after {} bytes: {e}", got.len());
                            broken = true;
                            break;
                        }
                    }
                }
                if !broken {
                    return Ok((got, attempts));
                }
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = format!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("gave up after {attempts} attempts: {last}"))
}

/// What each link's download brought: (tunnel id, bytes received, attempts it took).
type Outcome = (String, Result<(Vec<u8>, u32), String>, usize);

/// `clients` downloaders work through `links` at once.
async fn download_all(links: Vec<(String, String, usize)>, clients: usize, deadline: Instant) -> Vec<Outcome> {
    let queue = Arc::new(Mutex::new(links));
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (queue, out) = (queue.clone(), out.clone());
        tasks.spawn(async move {
            // One connection pool per client, as separate programs would have.
            let http = reqwest::Client::builder()
                .user_agent("ferry-load")
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            loop {
                let next = queue.lock().unwrap().pop();
                let Some((id, url, file)) = next else { return };
                let r = fetch(&http, &url, deadline).await;
                out.lock().unwrap().push((id, r, file));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}

/// Waits until every link is in history and returns their records by id.
async fn all_closed(app: &TestApp, ids: &[String], within: Duration) -> HashMap<String, Value> {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = app.get(&format!("/admin/history?limit={}", ids.len() + 100)).await;
        assert_eq!(status, 200, "{v}");
        let seen: HashMap<String, Value> = v["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["tunnel_id"].as_str().unwrap().to_string(), t.clone()))
            .collect();
        let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
        if missing == 0 {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} links not closed within {within:?}; open: {}",
            ids.len(),
            app.open().await.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ferry's heap and stacks in memory (RssAnon: the mapped binary's pages are not its state).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// ferry's warnings and errors, for a failure message.
fn warnings(app: &TestApp) -> String {
    let log = app.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    bad[bad.len().saturating_sub(20)..].join("\n")
}

fn tunnels_left(app: &TestApp) -> usize {
    std::fs::read_dir(app.path("tunnels")).map_or(0, |d| d.count())
}

/// Every client got its file byte for byte; every link closed exactly once, completed by one
/// download with its exact size.
fn assert_exact(files: &[(String, Arc<Vec<u8>>)], outcomes: &[Outcome], history: &HashMap<String, Value>) {
    for (id, r, file) in outcomes {
        let (bytes, _) = r.as_ref().unwrap_or_else(|e| panic!("link {id}: {e}"));
        assert!(
            bytes[..] == files[*file].1[..],
            "link {id}: {} bytes received, wrong content",
            bytes.len()
        );
        let t = &history[id];
        assert_eq!(t["close_reason"], "completed", "link {id}: {t}");
        assert_eq!(t["downloads_completed"], 1, "link {id}: {t}");
        assert_eq!(t["bytes_served"], files[*file].1.len(), "link {id}: {t}");
    }
}

/// After faults: every client got its file byte for byte, and every link closed once, as
/// completed by exactly one download of its exact size or, rarely, as stalled (a download cut by
/// a crash is settled from what its socket had acknowledged when it was last sampled: its resume
/// may leave a hole ferry never saw delivered). Never anything else, never for two clients.
/// Returns how many completed.
fn survived(files: &[(String, Arc<Vec<u8>>)], outcomes: &[Outcome], history: &HashMap<String, Value>) -> usize {
    let mut completed = 0;
    for (id, r, file) in outcomes {
        let (bytes, _) = r.as_ref().unwrap_or_else(|e| panic!("link {id}: {e}"));
        assert!(bytes[..] == files[*file].1[..], "link {id}: wrong bytes");
        let t = &history[id];
        match t["close_reason"].as_str() {
            Some("completed") => {
                completed += 1;
                assert_eq!(t["downloads_completed"], 1, "{t}");
                assert_eq!(t["bytes_served"], files[*file].1.len(), "{t}");
            }
            Some("stalled") => assert!(
                t["bytes_served"].as_u64().unwrap() <= files[*file].1.len() as u64,
                "{t}"
            ),
            other => panic!("link {id} closed as {other:?}: {t}"),
        }
        let clients = t["clients"].as_array().unwrap();
        assert!(clients.len() <= 1, "link {id} served more than one client: {t}");
    }
    completed
}

/// One round of load: `n` links created, then downloaded by `clients` at once; every one
/// checked byte for byte and in history. Returns how long it took.
async fn load_round(app: &TestApp, files: &[(String, Arc<Vec<u8>>)], n: usize, clients: usize) -> Duration {
    let started = Instant::now();
    let links = create_links(app, files, n).await;
    let ids: Vec<String> = links.iter().map(|l| l.0.clone()).collect();
    let outcomes = download_all(links, clients, Instant::now() + Duration::from_secs(180)).await;
    let history = all_closed(app, &ids, Duration::from_secs(60)).await;
    assert_exact(files, &outcomes, &history);
    // Nothing fails here, so a client needing a second attempt means ferry refused a rightful
    // request under load (a check slower than nginx's timeout, say). A rare one is tolerated
    // on a loaded 2-core machine; more is a defect.
    let retried = outcomes.iter().filter(|o| o.1.as_ref().is_ok_and(|r| r.1 > 1)).count();
    assert!(
        retried <= n / 100,
        "{retried} of {n} downloads needed a second attempt:\n{}",
        warnings(app)
    );
    assert!(app.open().await.is_empty());
    assert_eq!(tunnels_left(app), 0, "every link's tunnel dir is removed");
    started.elapsed()
}

/// ferry's RssAnon right after a burst, and once settled: the allocator's free pages go back
/// every 5 s and idle threads end after 10 s, so it is read until it is within `bound` kB and has
/// not moved for 11 s, or for 30 s.
async fn settled_rss(pid: u32, bound: u64) -> (u64, u64) {
    let right_after = rss_kb(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut now, mut since) = (right_after, Instant::now());
    while Instant::now() < deadline && (now > bound || since.elapsed() < Duration::from_secs(11)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let read = rss_kb(pid);
        if read != now {
            (now, since) = (read, Instant::now());
        }
    }
    (right_after, now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_links_by_a_hundred_clients_each_complete_exactly_once_three_times() {
    let app = TestApp::spawn_with(&env(&[("GRACE_PERIOD_SECONDS", "0")])).await;
    let files = share_files(&app);
    let idle = rss_kb(app.pid());
    // What a burst leaves: the store's page cache (2 MB), the token cache, buffers of the
    // connections nginx keeps to the check socket, what the allocator cannot give back between
    // live blocks (about 9 MB of this debug build's RSS in all, the same after every burst). A
    // leak of a few kB a link, or freed memory kept, would show.
    let bound = idle + 12 * 1024;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let took = load_round(&app, &files, 1000, 100).await;
        let (right_after, settled) = settled_rss(app.pid(), bound).await;
        rounds.push((took, right_after, settled));
    }
    let fmt = |f: &dyn Fn(&(Duration, u64, u64)) -> String| rounds.iter().map(f).collect::<Vec<_>>().join(", ");
    eprintln!(
        "1000 links × 100 clients, three times: {} s; ferry RSS (anon) {idle} kB idle; after each round \
         {} kB, settled to {} kB",
        fmt(&|r| format!("{:.1}", r.0.as_secs_f64())),
        fmt(&|r| r.1.to_string()),
        fmt(&|r| r.2.to_string()),
    );
    for (i, (_, _, settled)) in rounds.iter().enumerate() {
        assert!(
            *settled <= bound,
            "round {}: ferry's memory did not come back near idle ({idle} kB): {settled} kB",
            i + 1
        );
    }
    let (first, third) = (rounds[0].2, rounds[2].2);
    assert!(
        third <= first + 3 * 1024,
        "ferry's memory grows with each round: {first} kB after the first, {third} kB after the third"
    );
}

/// The pids of an nginx master and its workers.
fn nginx_family(master: u32) -> Vec<u32> {
    let mut pids = vec![master];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid: u32 = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if ppid == master {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_and_ferry_killed_during_load_lose_no_link_and_serve_none_twice() {
    let mut app = TestApp::spawn_with(&env(&[("GRACE_PERIOD_SECONDS", "0"), ("STALL_TIMEOUT_SECONDS", "3")])).await;
    let files = share_files(&app);
    let links = create_links(&app, &files, 300).await;
    let ids: Vec<String> = links.iter().map(|l| l.0.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let load = tokio::spawn(download_all(links, 30, deadline));

    // nginx dies outright, workers and all, while downloads run; ferry starts a new one.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let master = app.nginx_pid().expect("nginx runs");
    for pid in nginx_family(master) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let restarted = Instant::now();
    while app.nginx_pid().is_none_or(|p| p == master) {
        assert!(restarted.elapsed() < Duration::from_secs(10), "nginx was not restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Then ferry itself dies (kill -9) and comes back; clients retry through the gap.
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.kill9().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.start().await;

    let outcomes = load.await.unwrap();
    let history = all_closed(&app, &ids, Duration::from_secs(60)).await;
    let completed = survived(&files, &outcomes, &history);
    eprintln!("300 links through nginx kill -9 and ferry kill -9: {completed} completed, the rest stalled");
    assert!(completed >= 250, "only {completed} of 300 completed");
    assert!(app.open().await.is_empty());
    assert_eq!(tunnels_left(&app), 0);
    // One managed nginx, never two.
    let masters = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .filter(|c| c.contains("nginx: master") && c.contains(&*app.path("state").to_string_lossy()))
        .count();
    assert!(masters <= 1, "{masters} nginx masters for one ferry");
}

/// On Redis, with the access log rotating every 0.1 s: redis-server is killed (`kill -9`) during
/// the load and comes back 1.5 s later. Meanwhile ferry fails closed (new claims get 444 and the
/// clients retry), downloads in flight finish, and their lines wait for the store; once it is back,
/// everything settles, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_stopped_during_load_with_the_log_rotating_loses_nothing() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(&env(&[
        ("REDIS_URL", &url),
        ("JWT_SECRET", "a-shared-jwt-secret-of-at-least-32-bytes"),
        ("GRACE_PERIOD_SECONDS", "0"),
        ("STALL_TIMEOUT_SECONDS", "3"),
        ("FERRY_LOG_SLOT", "0.1s"),
    ]))
    .await;
    let files = share_files(&app);
    let links = create_links(&app, &files, 300).await;
    let ids: Vec<String> = links.iter().map(|l| l.0.clone()).collect();
    let load = tokio::spawn(download_all(links, 30, Instant::now() + Duration::from_secs(120)));

    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.get("/admin/tunnels").await.0, 503, "the API says the store is down");
    redis.restart().await;

    let outcomes = load.await.unwrap();
    let history = all_closed(&app, &ids, Duration::from_secs(60)).await;
    let completed = survived(&files, &outcomes, &history);
    // The outage fell inside the load: some clients were refused and came back.
    let retried = outcomes.iter().filter(|o| o.1.as_ref().is_ok_and(|r| r.1 > 1)).count();
    assert!(retried > 0, "no download met the outage");
    let (_, health) = app.get("/health").await;
    let monitor = &health["components"]["monitor"];
    eprintln!(
        "300 links on Redis through redis-server kill -9, log rotating every 0.1 s: {completed} completed, \
         the rest stalled; {retried} clients retried through the outage; {} slot files read",
        monitor["files_done"]
    );
    assert!(
        completed >= 290,
        "only {completed} of 300 completed:\n{}",
        warnings(&app)
    );
    assert_eq!(monitor["bad_lines"], 0, "{monitor}");
    assert!(
        monitor["files_done"].as_u64().unwrap() >= 5,
        "the log rotated: {monitor}"
    );
    assert!(app.open().await.is_empty());
    assert_eq!(tunnels_left(&app), 0);
}

async fn log_writes(app: &TestApp) -> (String, String) {
    let (_, h) = app.get("/health").await;
    (
        h["status"].as_str().unwrap().to_string(),
        h["components"]["monitor"]["log_writes"].as_str().unwrap().to_string(),
    )
}

async fn wait_log_writes(app: &TestApp, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_writes(app).await.1 != want {
        assert!(
            Instant::now() < deadline,
            "log_writes never became {want}:\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_full_log_disk_stops_new_claims_until_it_has_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("logdisk"), "1m");
    let logs = disk.0.join("logs");
    let app = TestApp::spawn_with(&[
        ("FERRY_LOGS_DIR", logs.to_str().unwrap()),
        ("GRACE_PERIOD_SECONDS", "0"),
    ])
    .await;
    let body = app.data_file("doc.bin", 50_000);
    assert_eq!(log_writes(&app).await, ("ok".into(), "ok".into()));
    let before = app.link("doc.bin").await;
    let r = curl(before["download_url"].as_str().unwrap(), &[]).await;
    assert_eq!(r.body, body);
    app.closed(before["tunnel_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;

    // The disk fills: no line could record a download, so none starts.
    let link = app.link("doc.bin").await;
    let url = link["download_url"].as_str().unwrap();
    disk.fill();
    wait_log_writes(&app, "failing").await;
    assert_eq!(log_writes(&app).await.0, "degraded");
    let r = curl(url, &[]).await;
    assert_eq!(
        (r.exit, r.body.len()),
        (EMPTY_REPLY, 0),
        "444 and zero bytes while the log disk is full"
    );
    // A HEAD sends no body and claims nothing: it is still answered.
    let r = curl(url, &["-I"]).await;
    assert_eq!(r.status, 200);
    let open = app.open().await;
    let open = open
        .iter()
        .find(|t| t["tunnel_id"] == link["tunnel_id"])
        .expect("the link is open");
    assert_eq!(open["state"], "open", "{open}");
    assert_eq!(
        (&open["bytes_served"], &open["downloads_completed"]),
        (&json!(0), &json!(0)),
        "{open}"
    );

    // Room again: ferry notices by itself and the link serves and completes, counted exactly.
    disk.free();
    wait_log_writes(&app, "ok").await;
    assert_eq!(log_writes(&app).await.0, "ok");
    let r = curl(url, &[]).await;
    assert_eq!(r.body, body);
    let t = app
        .closed(link["tunnel_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(
        (t["close_reason"].as_str(), t["bytes_served"].as_u64()),
        (Some("completed"), Some(50_000))
    );
    drop(app);
}
