//! The admin surface: metrics, configuration, audit, bans, monitor status.

use std::time::Duration;

use crate::helpers::{EMPTY_REPLY, TestApp, curl};

/// The value of one sample line (`name{labels} value`) in Prometheus text, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(app: &TestApp) -> String {
    let r = app.http.get(format!("{}/metrics", app.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_as_links_are_created_downloaded_and_closed() {
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "0")]).await;
    app.data_file("a.bin", 5000);
    let before = metrics(&app).await;
    assert_eq!(sample(&before, "ferry_links_created_total"), 0.0);

    let done = app.link("a.bin").await;
    let ended = app.link("a.bin").await;
    let m = metrics(&app).await;
    assert_eq!(sample(&m, "ferry_links_created_total"), 2.0, "{m}");
    assert_eq!(sample(&m, "ferry_links_open"), 2.0);

    assert_eq!(curl(done["download_url"].as_str().unwrap(), &[]).await.exit, 0);
    let bad = curl(&format!("{}x", done["download_url"].as_str().unwrap()), &[]).await;
    assert_eq!(bad.exit, EMPTY_REPLY);
    app.closed(done["tunnel_id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    let id = ended["tunnel_id"].as_str().unwrap();
    app.terminate(id).await;

    let m = metrics(&app).await;
    assert_eq!(sample(&m, "ferry_links_open"), 0.0);
    assert_eq!(sample(&m, "ferry_bytes_served_total"), 5000.0, "{m}");
    assert_eq!(sample(&m, "ferry_downloads_completed_total"), 1.0);
    assert_eq!(sample(&m, "ferry_links_closed_total{reason=\"completed\"}"), 1.0, "{m}");
    assert_eq!(sample(&m, "ferry_links_closed_total{reason=\"terminated\"}"), 1.0);
    assert!(sample(&m, "ferry_refusals_total{reason=\"bad_token\"}") >= 1.0, "{m}");
    assert!(m.contains("ferry_monitor_lag_seconds"), "{m}");
    assert!(m.contains("ferry_provider_call_seconds"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_effective_config_is_shown_without_secrets() {
    let token = "config-test-admin-token";
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", token), ("STALL_TIMEOUT_SECONDS", "5")]).await;
    let (status, v) = app.get("/admin/config").await;
    assert_eq!(status, 200);
    assert_eq!(v["config"]["STALL_TIMEOUT_SECONDS"], 5);
    assert_eq!(v["config"]["FERRY_ADMIN_TOKEN"], "[set]");
    let secret = std::fs::read_to_string(app.path("state/jwt_secret")).unwrap();
    let text = v.to_string();
    assert!(!text.contains(token) && !text.contains(&secret));
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("STALL_TIMEOUT_SECONDS")),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_actions_and_refusals_are_audited_and_queryable() {
    let app = TestApp::spawn().await;
    app.data_file("a.bin", 100);
    let link = app.link("a.bin").await;
    let id = link["tunnel_id"].as_str().unwrap();
    let url = link["download_url"].as_str().unwrap();
    let bad = curl(&format!("{url}x"), &["--interface", "127.0.0.60"]).await;
    assert_eq!(bad.exit, EMPTY_REPLY);
    app.terminate(id).await;
    let closed = curl(url, &["--interface", "127.0.0.61"]).await;
    assert_eq!(closed.exit, EMPTY_REPLY);

    let (status, all) = app.get("/admin/audit").await;
    assert_eq!(status, 200);
    let events: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["refused", "link.terminated", "refused", "link.created"],
        "newest first: {all}"
    );
    let (_, refused) = app.get("/admin/audit?event=refused&limit=1").await;
    let r = &refused["events"].as_array().unwrap()[0];
    assert_eq!(
        (r["client"].as_str(), r["detail"].as_str(), r["tunnel_id"].as_str()),
        (Some("127.0.0.61"), Some("closed"), Some(id))
    );
    let (_, older) = app.get("/admin/audit?event=refused").await;
    assert_eq!(older["events"][1]["detail"], "bad_token");
    assert_eq!(older["events"][1]["client"], "127.0.0.60");
    assert!(!all.to_string().contains(link["token"].as_str().unwrap()));
    let (status, _) = app.get("/admin/audit?limit=0").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_show_the_requests_and_monitor_status_the_parts() {
    let app = TestApp::spawn().await;
    app.data_file("a.bin", 10_000);
    let link = app.link("a.bin").await;
    let id = link["tunnel_id"].as_str().unwrap();
    let url = link["download_url"].as_str().unwrap();
    assert_eq!(
        curl(url, &["-r", "0-999", "--interface", "127.0.0.70"]).await.status,
        206
    );
    assert_eq!(curl(url, &["-I", "--interface", "127.0.0.70"]).await.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let (status, stats) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
        assert_eq!(status, 200);
        let r = stats["requests"].as_array().unwrap();
        if r.len() == 2 && r.iter().all(|r| r["in_flight"] == false) {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = &stats["requests"][0];
    assert_eq!(
        (first["status"].as_u64(), first["bytes"].as_u64()),
        (Some(206), Some(1000)),
        "{stats}"
    );
    assert_eq!(first["client"], "127.0.0.70");
    assert_eq!(stats["requests"][1]["method"], "HEAD");
    assert_eq!(stats["tunnel"]["bytes_served"], 1000);

    let (status, s) = app.get("/admin/monitor/status").await;
    assert_eq!(status, 200);
    assert_eq!(s["nginx"]["running"], true);
    assert_eq!(s["store"]["status"], "ok");
    assert_eq!(s["store"]["open_links"], 1);
    assert_eq!(s["monitor"]["lines"], 2, "{s}");
    assert!(s["host"]["memory_total_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(s["host"]["data_dir_free_bytes"].as_u64().unwrap() > 0, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_on_another_port_of_the_same_host_cannot_drive_the_api() {
    let app = TestApp::spawn().await;
    let port = app.admin.rsplit(':').next().unwrap();
    let cleanup = |origin: String| {
        let req = app
            .http
            .post(format!("{}/admin/cleanup", app.admin))
            .header("origin", origin);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for other in [
        "http://localhost:1234".to_string(),
        "http://127.0.0.1".to_string(),
        format!("https://localhost:{port}"),
        format!("http://evil.example:{port}"),
    ] {
        assert_eq!(cleanup(other.clone()).await, 403, "{other}");
    }
    // The listener's own origin, under any of its names.
    for own in [format!("http://127.0.0.1:{port}"), format!("http://localhost:{port}")] {
        assert_eq!(cleanup(own.clone()).await, 200, "{own}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_flood_from_many_addresses_writes_a_bounded_audit() {
    // Behind a trusted proxy (loopback), each request names its own client.
    let app = TestApp::spawn_with(&[
        ("FERRY_TRUSTED_PROXIES", "127.0.0.1"),
        ("FERRY_REQ_PER_CLIENT", "100000"),
    ])
    .await;
    app.data_file("a.bin", 100);
    let link = app.link("a.bin").await;
    let url = link["download_url"].as_str().unwrap();
    let path = format!("{}x", url.strip_prefix(&app.public).unwrap());
    let addr = app.public.strip_prefix("http://").unwrap().to_string();
    const FLOOD: usize = 400;
    let started = std::time::Instant::now();
    let sent = tokio::task::spawn_blocking({
        let (addr, path) = (addr.clone(), path.clone());
        move || {
            (0..FLOOD)
                .filter(|i| {
                    let r = format!(
                        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.{}.{}\r\n\r\n",
                        i / 250,
                        i % 250
                    );
                    let e = crate::raw::exchange(&addr, r.as_bytes());
                    e.closed && e.got.is_empty()
                })
                .count()
        }
    })
    .await
    .unwrap();
    let seconds = started.elapsed().as_secs() + 1;
    assert_eq!(sent, FLOOD, "every forged request got 444");
    let refused = |v: &serde_json::Value| v["events"].as_array().unwrap().clone();
    let (_, v) = app.get("/admin/audit?event=refused&limit=10000").await;
    let recorded = refused(&v).len();
    // At most 20 a second (the whole flood would have been 400 records).
    assert!(
        recorded as u64 <= 20 * (seconds + 1) && recorded > 0,
        "{recorded} records in {seconds} s"
    );
    // The next refusal in a later second writes the summary of what was left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let last = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.2.0.1\r\n\r\n");
    assert!(crate::raw::exchange(&addr, last.as_bytes()).got.is_empty());
    let (_, v) = app.get("/admin/audit?event=refused.unrecorded&limit=10000").await;
    let left_out: u64 = refused(&v)
        .iter()
        .map(|e| {
            let d = e["detail"].as_str().unwrap();
            d.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(recorded as u64 + left_out, FLOOD as u64, "{v}");
    let m = metrics(&app).await;
    assert_eq!(
        sample(&m, "ferry_audit_refusals_unrecorded_total"),
        left_out as f64,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn event_streams_are_bounded_and_freed_when_a_client_leaves() {
    let app = TestApp::spawn().await;
    let url = format!("{}/admin/events", app.admin);
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut open = Vec::new();
    for i in 0..64 {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "stream {i}");
        open.push(r);
    }
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("too many event streams"),
        "{body}"
    );
    // Other admin routes still answer.
    assert_eq!(app.get("/admin/tunnels").await.0, 200);
    // A client that leaves gives its place back.
    drop(open.pop());
    let mut again = None;
    crate::helpers::eventually(Duration::from_secs(5), "a freed place is taken", async || {
        let r = client.get(&url).send().await.unwrap();
        let ok = r.status() == 200;
        if ok {
            again = Some(r);
        }
        ok
    })
    .await;
    drop(open);
}
