//! ferry on Redis: one link raced by 100 clients, two instances sharing links, a Redis outage,
//! and `kill -9` of redis-server right after a redemption. Everything is real: redis-server,
//! two `ferry serve` processes, their nginx, curl.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{EMPTY_REPLY, RedisServer, TestApp, curl, eventually, race};
use crate::store::{link, race_updates, redis, redis_store};
use ferry::model::LinkState;
use ferry::store::Write;

const SECRET: &str = "a-shared-jwt-secret-of-at-least-32-bytes";

fn url(v: &Value) -> String {
    v["download_url"].as_str().unwrap().to_string()
}

async fn on_redis(server: &RedisServer, extra: &[(&str, &str)]) -> TestApp {
    let redis_url = server.url();
    let mut env = vec![("REDIS_URL", redis_url.as_str()), ("JWT_SECRET", SECRET)];
    env.extend_from_slice(extra);
    TestApp::spawn_with(&env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_write_survives_kill_9_of_redis_server() {
    let mut s = redis().await;
    let l = link(0);
    s.store.insert(&l).await.unwrap();
    s.store
        .update(&l.id, &mut |l| {
            l.downloads_completed = 1;
            l.state = LinkState::Completed;
            Write::Durable(())
        })
        .await
        .unwrap()
        .unwrap();
    let server = s.redis.as_mut().unwrap();
    server.kill9();
    assert!(s.store.ping().await.is_err(), "the store reports the outage");
    server.restart().await;
    // The connection manager reconnects by itself; the first command may still see the old one.
    let mut got = None;
    for _ in 0..50 {
        if let Ok(l) = s.store.get(&l.id).await {
            got = l;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.expect("the link survived the crash");
    assert_eq!((got.downloads_completed, got.state), (1, LinkState::Completed));
    assert_eq!(
        s.store.list_open().await.unwrap().len(),
        1,
        "the open index survived too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_clients_race_one_link_on_redis_and_exactly_one_wins() {
    let server = RedisServer::start().await;
    let app = on_redis(&server, &[("FERRY_CONN_PER_CLIENT", "200")]).await;
    let bytes = app.data_file("race.bin", 1_000_000);
    let link = app.link("race.bin").await;
    let u = url(&link);
    // 100 clients: 100 loopback addresses, so no per-address limit is what stops them.
    let (winners, losers) = race(&u, 2, 101, &bytes).await;
    assert_eq!((winners, losers), (1, 99), "exactly one client receives the file");
    // Redis itself holds one completed download.
    let id = link["tunnel_id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), "the completion is recorded", async || {
        ferry_link(&server, &id).await["downloads_completed"] == 1
    })
    .await;
}

/// The link's record as Redis holds it.
async fn ferry_link(server: &RedisServer, id: &str) -> Value {
    let json: String = raw(server, ::redis::cmd("GET").arg(format!("ferry:link:{id}"))).await;
    serde_json::from_str(&json).expect("the link is in Redis")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_links_and_teardown_runs_where_the_tunnel_is() {
    let server = RedisServer::start().await;
    let a = on_redis(&server, &[("GRACE_PERIOD_SECONDS", "0")]).await;
    let b = on_redis(&server, &[("GRACE_PERIOD_SECONDS", "0")]).await;
    let bytes = a.data_file("report.pdf", 200_000);
    b.data_file("report.pdf", 200_000);
    // B's live view (SSE) follows what happens on A too.
    let sse_file = b.path("events.txt");
    let mut sse = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "30", "-o"])
        .arg(&sse_file)
        .arg(format!("{}/admin/events", b.admin))
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Created on A: listed and reported on B.
    let link = a.link("report.pdf").await;
    let id = link["tunnel_id"].as_str().unwrap();
    assert!(b.open().await.iter().any(|t| t["tunnel_id"] == id), "B lists A's link");
    let (status, stats) = b.get(&format!("/admin/tunnels/{id}/stats")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["tunnel"]["file_path"], "report.pdf");
    let (_, sa) = a.get("/admin/monitor/status").await;
    let (_, sb) = b.get("/admin/monitor/status").await;
    assert_eq!(
        (sa["store"]["owned_links"].clone(), sb["store"]["owned_links"].clone()),
        (json!(1), json!(0))
    );
    assert_ne!(sa["store"]["instance"], sb["store"]["instance"]);

    // Terminated on B: A's public listener refuses at once, and A (which owns the tunnel)
    // removes its symlink directory.
    assert_eq!(b.terminate(id).await, 204);
    let r = curl(&url(&link), &[]).await;
    assert_eq!(
        (r.exit, r.body.len()),
        (EMPTY_REPLY, 0),
        "A refuses a link B terminated"
    );
    assert!(a.tunnel_dir_gone(id).await, "A tore the link down:\n{}", a.log());
    assert!(a.log().contains("tearing down a link closed by another instance"));
    let t = a.closed(id, Duration::from_secs(2)).await;
    assert_eq!(t["close_reason"], "terminated");
    assert_eq!(a.terminate(id).await, 404, "already closed for everyone");

    // Completed through A's nginx (seen in A's log): closed for B too.
    let link = a.link("report.pdf").await;
    let id = link["tunnel_id"].as_str().unwrap();
    let r = curl(&url(&link), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == bytes);
    let t = b.closed(id, Duration::from_secs(5)).await;
    assert_eq!(t["close_reason"], "completed");
    assert_eq!(t["bytes_served"], 200_000);
    assert!(!b.open().await.iter().any(|t| t["tunnel_id"] == id));

    // On B's event stream: the whole life of the link A served, in order, without its token.
    let mut seen = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&sse_file).unwrap_or_default();
        seen = sse_events(&text, id);
        if seen.last().map(String::as_str) == Some("closed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sse.start_kill().unwrap();
    sse.wait().await.unwrap();
    assert_eq!(seen, ["created", "started", "completed", "closed"]);
    let text = std::fs::read_to_string(&sse_file).unwrap();
    assert!(!text.contains(link["token"].as_str().unwrap()), "token in an event");
}

/// The names of the events about link `id` in an SSE transcript, `progress` left out.
fn sse_events(text: &str, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = Some(n.to_string());
        } else if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if let Some(n) = name.take()
                && v["tunnel"]["tunnel_id"] == id
                && n != "progress"
            {
                out.push(n);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_is_gone_has_its_links_taken_over() {
    let server = RedisServer::start().await;
    let fast = [("FERRY_INSTANCE_TIMEOUT_SECONDS", "2")];
    let mut a = on_redis(&server, &fast).await;
    let b = on_redis(&server, &fast).await;
    a.data_file("a.bin", 1000);
    let kept = a.link("a.bin").await;
    let kept = kept["tunnel_id"].as_str().unwrap().to_string();
    let back = a.link("a.bin").await;
    let back = back["tunnel_id"].as_str().unwrap().to_string();
    let orphaned = a.link("a.bin").await;
    let orphaned = orphaned["tunnel_id"].as_str().unwrap().to_string();
    let (_, expiring) = a.create(json!({"file_path": "a.bin", "expires_in_seconds": 3})).await;
    let expiring = expiring["tunnel_id"].as_str().unwrap().to_string();
    let owned = async |app: &TestApp| app.get("/admin/monitor/status").await.1["store"]["owned_links"].clone();
    assert_eq!(owned(&b).await, json!(0));

    a.kill9().await;
    // Closed while A is gone: its teardown waits in A's queue until someone takes A's links.
    assert_eq!(b.terminate(&orphaned).await, 204);
    // B stops waiting for A after its heartbeat lapses, and owns its links from then on.
    eventually(Duration::from_secs(8), "B takes over A's links", async || {
        b.log().contains("took over the links of an instance that is gone")
    })
    .await;
    // A deadline set on A is kept by B.
    let t = b.closed(&expiring, Duration::from_secs(5)).await;
    assert_eq!(t["close_reason"], "expired");
    // Terminated on B, the new owner, which tears it down itself.
    assert_eq!(b.terminate(&kept).await, 204);
    // What B tore down (the expired, the terminated, and the one closed before the takeover)
    // it no longer owns; `back` stays open.
    eventually(Duration::from_secs(3), "B releases what it tore down", async || {
        owned(&b).await == json!(1)
    })
    .await;

    // A comes back: the tunnel of `back` is on A's node, so A owns it again, and a termination
    // on B is torn down on A.
    a.start().await;
    assert_eq!((owned(&a).await, owned(&b).await), (json!(1), json!(0)));
    assert!(a.path("tunnels").join(&back).exists());
    assert_eq!(b.terminate(&back).await, 204);
    assert!(a.tunnel_dir_gone(&back).await, "A tore it down:\n{}", a.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_ferry_fails_closed_and_recovers_by_itself() {
    let mut server = RedisServer::start().await;
    let app = on_redis(&server, &[]).await;
    let bytes = app.data_file("movie.mkv", 500_000);
    let link = app.link("movie.mkv").await;
    let id = link["tunnel_id"].as_str().unwrap();
    let (status, health) = app.get("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    assert_eq!(health["components"]["store"]["kind"], "redis");

    server.kill9();
    let r = curl(&url(&link), &[]).await;
    assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0), "public requests fail closed");
    let (status, body) = app.get("/admin/tunnels").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "state store unavailable");
    assert_eq!(body["details"]["component"], "store");
    let (status, body) = app.create(json!({"file_path": "movie.mkv"})).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("state store unavailable")));
    let (status, health) = app.get("/health").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["components"]["store"]["status"], "down");

    server.restart().await;
    let back = Instant::now();
    eventually(Duration::from_secs(10), "/health recovers", async || {
        app.get("/health").await.0 == 200
    })
    .await;
    eventually(Duration::from_secs(5), "the API recovers", async || {
        app.get("/admin/tunnels").await.0 == 200
    })
    .await;
    println!(
        "recovered {} ms after redis-server was back",
        back.elapsed().as_millis()
    );
    assert!(
        app.open().await.iter().any(|t| t["tunnel_id"] == id),
        "the link was not lost"
    );
    let r = curl(&url(&link), &[]).await;
    assert_eq!(r.status, 200, "served again without a restart");
    assert!(r.body == bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redemption_survives_kill_9_of_redis_server() {
    let mut server = RedisServer::start().await;
    let app = on_redis(&server, &[("GRACE_PERIOD_SECONDS", "0")]).await;
    let bytes = app.data_file("big.iso", 3_000_000);
    // About three seconds of transfer: time to crash Redis while the winner downloads.
    let (status, link) = app
        .create(json!({"file_path": "big.iso", "rate_limit_bytes_per_second": 1_000_000}))
        .await;
    assert_eq!(status, 201, "{link}");
    let id = link["tunnel_id"].as_str().unwrap().to_string();
    let u = url(&link);
    let winner = tokio::spawn({
        let u = u.clone();
        async move { curl(&u, &["--interface", "127.0.0.2"]).await }
    });
    // The claim is taken at the check and confirmed durable before nginx sends a byte.
    eventually(Duration::from_secs(5), "the claim is in Redis", async || {
        ferry_link(&server, &id).await["claims"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    })
    .await;
    server.kill9();
    server.restart().await;
    let stored = ferry_link(&server, &id).await;
    assert_eq!(
        stored["claims"][0]["client"]["address"], "127.0.0.2",
        "the claim survived: {stored}"
    );
    let other = curl(&u, &["--interface", "127.0.0.3"]).await;
    assert_eq!(
        (other.exit, other.body.len()),
        (EMPTY_REPLY, 0),
        "another client cannot redeem it"
    );

    let w = winner.await.unwrap();
    assert_eq!(w.status, 200);
    assert!(w.body == bytes, "the winner got the whole file");
    let t = app.closed(&id, Duration::from_secs(10)).await;
    assert_eq!(t["close_reason"], "completed");
    // Right after the completion: crash Redis again. The used-up link stays used up.
    server.kill9();
    server.restart().await;
    let stored = ferry_link(&server, &id).await;
    assert_eq!(
        (stored["state"].as_str(), stored["downloads_completed"].as_u64()),
        (Some("closed"), Some(1))
    );
    for n in [2, 4] {
        let again = curl(&u, &["--interface", &format!("127.0.0.{n}")]).await;
        assert_eq!((again.exit, again.body.len()), (EMPTY_REPLY, 0), "never served again");
    }
}

/// One raw command against the test server.
async fn raw<T: ::redis::FromRedisValue>(server: &RedisServer, cmd: &mut ::redis::Cmd) -> T {
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_layout_is_the_documented_one() {
    let s = redis().await;
    let server = s.redis.as_ref().unwrap();
    let (open, closed) = (link(0), link(1));
    s.store.insert(&open).await.unwrap();
    s.store.insert(&closed).await.unwrap();
    s.store
        .update(&closed.id, &mut |l| {
            l.state = LinkState::Closed;
            l.closed_at_ms = Some(ferry::model::now_ms());
            Write::Durable(())
        })
        .await
        .unwrap();
    let key = |l: &ferry::model::Link| format!("ferry:link:{}", l.id);
    // A live link never expires by itself; a closed one is kept for FERRY_HISTORY_DAYS (1 here).
    let ttl_open: i64 = raw(server, ::redis::cmd("PTTL").arg(key(&open))).await;
    let ttl_closed: i64 = raw(server, ::redis::cmd("PTTL").arg(key(&closed))).await;
    assert_eq!(ttl_open, -1);
    assert!((86_000_000..=86_400_000).contains(&ttl_closed), "{ttl_closed}");
    let open_ids: Vec<String> = raw(server, ::redis::cmd("ZRANGE").arg("ferry:links:open").arg(0).arg(-1)).await;
    let history: Vec<String> = raw(server, ::redis::cmd("ZRANGE").arg("ferry:links:history").arg(0).arg(-1)).await;
    assert_eq!(
        (open_ids, history),
        (vec![open.id.to_string()], vec![closed.id.to_string()])
    );
    let owner: Option<String> = raw(server, ::redis::cmd("HGET").arg("ferry:owners").arg(open.id.as_str())).await;
    assert_eq!(owner.as_deref(), Some("contract"));
    let record: String = raw(server, ::redis::cmd("GET").arg(key(&open))).await;
    assert!(
        record.contains("\"note\":\"a note\""),
        "the record is the link as JSON: {record}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_degraded_when_redis_may_lose_a_redemption() {
    let server = RedisServer::start_with(&["--appendfsync", "everysec"]).await;
    let app = on_redis(&server, &[]).await;
    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200, "ferry runs: {health}");
    assert_eq!(health["status"], "degraded");
    let store = &health["components"]["store"];
    assert_eq!(
        (store["status"].as_str(), store["durable"].as_bool()),
        (Some("degraded"), Some(false))
    );
    assert!(
        store["durability"].as_str().unwrap().contains("appendfsync everysec"),
        "{store}"
    );
    assert!(app.log().contains("appendfsync everysec"), "said so at startup");
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("status")
        .env("FERRY_URL", &app.admin)
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("ferry: degraded") && out.contains("store     degraded (appendfsync everysec"),
        "ferry status says why: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ferry_starts_before_redis_and_works_once_it_is_there() {
    let mut server = RedisServer::reserve();
    let redis_url = server.url();
    let app =
        tokio::spawn(
            async move { TestApp::spawn_with(&[("REDIS_URL", redis_url.as_str()), ("JWT_SECRET", SECRET)]).await },
        );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!app.is_finished(), "ferry cannot be healthy without its store");
    server.spawn().await;
    let app = app.await.unwrap();
    assert!(
        app.log().contains("store unavailable at startup"),
        "ferry was running before Redis:\n{}",
        app.log()
    );
    let bytes = app.data_file("late.txt", 10_000);
    let link = app.link("late.txt").await;
    let r = curl(&url(&link), &[]).await;
    assert_eq!((r.status, r.body == bytes), (200, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_longer_than_the_timeout_takes_over_nothing() {
    let mut server = RedisServer::start().await;
    let fast = [("FERRY_INSTANCE_TIMEOUT_SECONDS", "2")];
    let a = on_redis(&server, &fast).await;
    let b = on_redis(&server, &fast).await;
    a.data_file("a.bin", 1000);
    a.link("a.bin").await;
    let owned = async |app: &TestApp| app.get("/admin/monitor/status").await.1["store"]["owned_links"].clone();
    // Every heartbeat lapses while Redis is away; both instances are alive all along.
    server.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart().await;
    eventually(Duration::from_secs(10), "both instances see Redis again", async || {
        a.get("/health").await.0 == 200 && b.get("/health").await.0 == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        (owned(&a).await, owned(&b).await),
        (json!(1), json!(0)),
        "A keeps its link"
    );
    assert!(!b.log().contains("took over"), "{}", b.log());
}

/// Updates from one process queue locally; between processes the compare-and-set decides. Two
/// stores on one server, 50 writers each, one record: nothing lost, one first claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_updating_one_link_lose_nothing() {
    let server = RedisServer::start().await;
    let a = std::sync::Arc::new(redis_store(&server.url(), "a").await);
    let b = std::sync::Arc::new(redis_store(&server.url(), "b").await);
    let l = link(0);
    a.insert(&l).await.unwrap();
    let (firsts, took) = race_updates(&[a, b.clone()], &l.id, 100).await;
    println!("100 updates of one link from two instances: {} ms", took.as_millis());
    assert_eq!(firsts, 1);
    assert_eq!(b.get(&l.id).await.unwrap().unwrap().bytes_served, 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_instance_loses_nothing_and_a_redis_password_never_shows() {
    let mut server = RedisServer::start_with(&["--requirepass", "redis-pass-9f3e1c"]).await;
    let redis_url = format!("redis://:redis-pass-9f3e1c@127.0.0.1:{}/0", server.port);
    let env = [("REDIS_URL", redis_url.as_str()), ("JWT_SECRET", SECRET)];
    let mut app = TestApp::spawn_with(&env).await;
    let bytes = app.data_file("keep.bin", 50_000);
    let first = app.link("keep.bin").await;
    let second = app.link("keep.bin").await;

    app.kill9().await;
    app.start().await;
    app.stop().await;
    app.start().await;
    let open: Vec<Value> = app.open().await;
    for l in [&first, &second] {
        assert!(open.iter().any(|t| t["tunnel_id"] == l["tunnel_id"]), "lost {l}");
    }
    let r = curl(&url(&first), &[]).await;
    assert_eq!((r.status, r.body == bytes), (200, true));
    let (_, config) = app.get("/admin/config").await;
    assert_eq!(config["config"]["REDIS_URL"], "[set]");

    // Errors while Redis is away name no password either.
    server.kill9();
    assert_eq!(app.get("/admin/tunnels").await.0, 503);
    server.restart().await;
    eventually(Duration::from_secs(10), "back", async || {
        app.get("/health").await.0 == 200
    })
    .await;
    assert!(app.log().contains("store unavailable") || app.log().contains("service unavailable"));
    assert!(
        !app.log().contains("redis-pass-9f3e1c"),
        "the Redis password leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_that_ends_while_redis_is_down_is_settled_when_it_returns() {
    let mut server = RedisServer::start().await;
    let app = on_redis(&server, &[("GRACE_PERIOD_SECONDS", "0")]).await;
    let bytes = app.data_file("film.mp4", 2_000_000);
    let (status, link) = app
        .create(json!({"file_path": "film.mp4", "rate_limit_bytes_per_second": 1_000_000}))
        .await;
    assert_eq!(status, 201, "{link}");
    let id = link["tunnel_id"].as_str().unwrap().to_string();
    let u = url(&link);
    let download = tokio::spawn(async move { curl(&u, &[]).await });
    eventually(Duration::from_secs(5), "the download started", async || {
        ferry_link(&server, &id).await["claims"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    })
    .await;
    server.kill9();
    // nginx serves on; its log line is written while ferry cannot store anything.
    let r = download.await.unwrap();
    assert_eq!((r.status, r.body == bytes), (200, true));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.get("/admin/tunnels").await.0, 503);
    server.restart().await;
    let t = app.closed(&id, Duration::from_secs(15)).await;
    assert_eq!(t["close_reason"], "completed");
    assert_eq!(t["bytes_served"], 2_000_000);
    assert_eq!(t["downloads_completed"], 1);
    assert!(app.log().contains("store unavailable; the access log waits"));
}

/// Two nodes, each with its own Funnel (the `tailscale` emulator) and nginx, on one Redis: a
/// link's Funnel handler exists only on the node that made it, and ending the link on the other
/// node removes it there.
#[tokio::test(flavor = "multi_thread")]
async fn funnel_handlers_live_only_on_the_node_that_owns_the_link() {
    use crate::funnel::{Kind, Sidecar, app_with};
    let server = RedisServer::start().await;
    let (side_a, side_b) = (
        Sidecar::start(Kind::Process, &[]).await,
        Sidecar::start(Kind::Process, &[]).await,
    );
    let redis_url = server.url();
    let env = [("REDIS_URL", redis_url.as_str()), ("JWT_SECRET", SECRET)];
    let a = app_with(&side_a, &env).await;
    let b = app_with(&side_b, &env).await;
    let bytes = a.data_file("photo.jpg", 100_000);
    let link = a.link("photo.jpg").await;
    let id = link["tunnel_id"].as_str().unwrap().to_string();
    let mount = format!("/s/{id}");
    assert!(side_a.mounts().contains(&mount));
    // B's tunnel watch runs every 5 s; after two rounds it still has not opened A's link.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        !side_b.mounts().contains(&mount),
        "B exposed A's link: {:?}",
        side_b.mounts()
    );
    assert!(
        side_a.mounts().contains(&mount),
        "A's handler survived B's reconciliation"
    );
    let r = curl(&side_a.via_front(&url(&link)), &[]).await;
    assert_eq!(
        (r.status, r.body.len()),
        (200, bytes.len()),
        "served through A's Funnel"
    );

    let link = a.link("photo.jpg").await;
    let id = link["tunnel_id"].as_str().unwrap().to_string();
    let mount = format!("/s/{id}");
    assert_eq!(b.terminate(&id).await, 204);
    eventually(Duration::from_secs(5), "A closes its Funnel handler", async || {
        !side_a.mounts().contains(&mount)
    })
    .await;
}
