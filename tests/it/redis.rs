//! ferry on Redis: one link raced by 100 clients, two instances sharing links, a Redis outage,
//! and `kill -9` of redis-server right after a redemption. Everything is real: redis-server,
//! two `ferry serve` processes, their nginx, curl.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{EMPTY_REPLY, RedisServer, TestApp, curl};
use crate::store::{link, redis, redis_store};
use ferry::links::LinkState;
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

/// Polls `f` every 50 ms until it holds, for at most `within`.
async fn eventually<F: AsyncFnMut() -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let racers: Vec<_> = (2..102)
        .map(|n| {
            let u = u.clone();
            tokio::spawn(async move { curl(&u, &["--interface", &format!("127.0.0.{n}")]).await })
        })
        .collect();
    let mut winners = 0;
    let mut losers = 0;
    for r in racers {
        let r = r.await.unwrap();
        if r.exit == 0 {
            winners += 1;
            assert_eq!(r.status, 200);
            assert!(r.body == bytes, "the winner got different bytes");
        } else {
            losers += 1;
            assert_eq!(
                (r.exit, r.body.len()),
                (EMPTY_REPLY, 0),
                "losers get 444 and zero bytes"
            );
        }
    }
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
    let store = redis_store(&server.url(), "probe").await;
    let l = store
        .get(&ferry::links::TunnelId::parse(id).unwrap())
        .await
        .unwrap()
        .expect("the link is in Redis");
    serde_json::to_value(l).unwrap()
}
