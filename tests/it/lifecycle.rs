//! A link's life under real conditions: rotation, stalls, crashes, events, previewers.

use std::time::{Duration, Instant};

use crate::helpers::{TestApp, curl};

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_rotations_during_a_thousand_downloads_lose_no_line() {
    let app = TestApp::spawn_with(&[("FERRY_LOG_SLOT", "0.1s"), ("GRACE_PERIOD_SECONDS", "0")]).await;
    let bytes = app.data_file("small.bin", 4096);
    let mut urls = Vec::new();
    for _ in 0..1000 {
        urls.push(
            app.link("small.bin").await["download_url"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // 8 clients, paced so the downloads span well over 100 slots of 0.1 s.
    let started = Instant::now();
    let workers: Vec<_> = urls
        .chunks(125)
        .map(|chunk| {
            let (chunk, bytes) = (chunk.to_vec(), bytes.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for (i, u) in chunk.iter().enumerate() {
                    let body = http.get(u).send().await.unwrap().bytes().await.unwrap();
                    assert!(body == bytes[..], "download {i} differs");
                    tokio::time::sleep(Duration::from_millis(95)).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        started.elapsed() > Duration::from_secs(11),
        "downloads did not span 100 slots"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = app.get("/admin/history?limit=2000").await.1["tunnels"]
            .as_array()
            .cloned()
            .unwrap();
        let done = h
            .iter()
            .filter(|t| t["close_reason"] == "completed" && t["bytes_served"] == 4096)
            .count();
        if done == 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of 1000 completions seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every slot file read to its end and removed once finished.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, health) = app.get("/health").await;
        let m = &health["components"]["monitor"];
        assert_eq!(m["lines"], 1000, "every line seen exactly once: {m}");
        assert_eq!(m["bad_lines"], 0);
        let files = std::fs::read_dir(app.path("logs")).unwrap().count();
        if m["files_done"].as_u64().unwrap() >= 100 && files <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot files not retired: {m}, {files} files left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn previewers_and_head_never_claim_or_use_up_a_link() {
    let app = TestApp::spawn().await;
    let bytes = app.data_file("Party <Photos>.zip", 2_000_000);
    let link = app.link("Party <Photos>.zip").await;
    let url = link["download_url"].as_str().unwrap();
    let id = link["tunnel_id"].as_str().unwrap();

    for (i, ua) in [
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Mozilla/5.0 (compatible; Discordbot/2.0)",
    ]
    .iter()
    .enumerate()
    {
        let r = curl(url, &["-A", ua, "--interface", &format!("127.0.0.{}", 40 + i)]).await;
        assert_eq!(r.status, 200, "{ua}");
        let html = String::from_utf8(r.body).unwrap();
        assert!(
            html.contains(r#"<meta property="og:title" content="Party &lt;Photos&gt;.zip">"#),
            "{html}"
        );
        assert!(html.contains("2.0 MB") && !html.contains("http"), "{html}");
    }
    let prefetch = curl(url, &["-H", "Sec-Purpose: prefetch", "--interface", "127.0.0.42"]).await;
    assert_eq!(prefetch.status, 200);
    assert!(prefetch.body.len() < 1000, "a prefetch got the file");
    let head = curl(url, &["-I", "--interface", "127.0.0.43"]).await;
    assert_eq!(head.status, 200);
    // A previewer with a bad token learns nothing.
    let bad = curl(&url.replace("?t=", "?t=x"), &["-A", "Discordbot"]).await;
    assert_eq!((bad.exit, bad.body.len()), (crate::helpers::EMPTY_REPLY, 0));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = app
        .open()
        .await
        .into_iter()
        .find(|t| t["tunnel_id"] == id)
        .expect("still open");
    assert_eq!(t["state"], "open", "unclaimed: {t}");
    assert_eq!(
        (t["downloads_completed"].as_u64(), t["bytes_served"].as_u64()),
        (Some(0), Some(0))
    );
    // The recipient still gets the file, from yet another address.
    let r = curl(url, &["--interface", "127.0.0.44"]).await;
    assert!(r.exit == 0 && r.body == bytes);
}

/// A webhook receiver on loopback that records every body it gets, failing the first request so
/// that delivery has to retry.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let failed_once = Arc::new(AtomicBool::new(false));
    let (g, f) = (got.clone(), failed_once.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (g, f) = (g.clone(), f.clone());
            async move {
                if !f.swap(true, Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                g.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_and_webhooks_see_the_events_in_order() {
    let (hook, got) = webhook_receiver().await;
    let app = TestApp::spawn_with(&[("FERRY_WEBHOOK_URL", &hook), ("GRACE_PERIOD_SECONDS", "0")]).await;
    let bytes = app.data_file("report.pdf", 300_000);
    let sse_file = app.path("events.txt");
    let mut sse = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "20", "-o"])
        .arg(&sse_file)
        .arg(format!("{}/admin/events", app.admin))
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let link = app.link("report.pdf").await;
    let id = link["tunnel_id"].as_str().unwrap().to_string();
    let r = curl(link["download_url"].as_str().unwrap(), &[]).await;
    assert!(r.exit == 0 && r.body == bytes);
    app.closed(&id, Duration::from_secs(5)).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let hooks = loop {
        let v = got.lock().unwrap().clone();
        if v.len() >= 3 {
            break v;
        }
        assert!(Instant::now() < deadline, "webhook got {v:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = hooks.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["created", "completed", "closed"], "retried, in order");
    assert_eq!(hooks[2]["tunnel"]["close_reason"], "completed");
    assert_eq!(hooks[2]["tunnel"]["bytes_served"], 300_000);
    assert_eq!(hooks[0]["tunnel"]["tunnel_id"], id.as_str());

    sse.start_kill().unwrap();
    sse.wait().await.unwrap();
    let text = std::fs::read_to_string(&sse_file).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .filter(|e| *e != "progress")
        .collect();
    assert_eq!(events, ["created", "started", "completed", "closed"], "{text}");
    let token = link["token"].as_str().unwrap();
    assert!(
        !text.contains(token) && !hooks.iter().any(|h| h.to_string().contains(token)),
        "token in an event"
    );
    let closed_line = text.lines().rfind(|l| l.starts_with("data: ")).unwrap();
    let closed: serde_json::Value = serde_json::from_str(&closed_line["data: ".len()..]).unwrap();
    assert_eq!(closed["tunnel"]["close_reason"], "completed");
}

async fn open_link(app: &TestApp, id: &str) -> Option<serde_json::Value> {
    app.open().await.into_iter().find(|t| t["tunnel_id"] == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_moves_while_a_slow_download_runs_and_a_killed_client_stalls_the_link() {
    let app = TestApp::spawn_with(&[("STALL_TIMEOUT_SECONDS", "3")]).await;
    let size = 60_000_000u64;
    app.data_file("movie.mkv", size as usize);
    let link = app.link("movie.mkv").await;
    let id = link["tunnel_id"].as_str().unwrap();
    let (_, health) = app.get("/health").await;
    assert_eq!(health["components"]["monitor"]["progress"], "socket", "{health}");

    let mut slow = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--limit-rate",
            "4M",
            link["download_url"].as_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let p1 = open_link(&app, id).await.expect("open while bytes flow")["progress"]
        .as_f64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    // Past the stall timeout, still open: bytes are flowing.
    let Some(t) = open_link(&app, id).await else {
        panic!(
            "a slow but steady reader is not a stall: {:?}\n{}",
            app.history().await,
            app.log()
        );
    };
    let p2 = t["progress"].as_f64().unwrap();
    assert!(0.0 < p1 && p1 < p2 && p2 < 1.0, "progress {p1} -> {p2}");
    assert_eq!(t["state"], "downloading");

    slow.start_kill().unwrap();
    slow.wait().await.unwrap();
    let killed = Instant::now();
    let t = app.closed(id, Duration::from_secs(10)).await;
    assert_eq!(t["close_reason"], "stalled");
    assert!(
        killed.elapsed() >= Duration::from_secs(1),
        "closed before the stall timeout"
    );
    let served = t["bytes_served"].as_u64().unwrap();
    assert!(served > 0 && served < size, "bytes_served {served}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_range_then_silence_stalls_with_the_exact_bytes_and_a_resume_completes() {
    let app = TestApp::spawn_with(&[("STALL_TIMEOUT_SECONDS", "2"), ("GRACE_PERIOD_SECONDS", "0")]).await;
    let bytes = app.data_file("iso.img", 4_000_000);
    let quiet = app.link("iso.img").await;
    let resumed = app.link("iso.img").await;

    let r = curl(quiet["download_url"].as_str().unwrap(), &["-r", "0-2097151"]).await;
    assert_eq!(r.status, 206);
    let first = curl(resumed["download_url"].as_str().unwrap(), &["-r", "0-2097151"]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rest = curl(resumed["download_url"].as_str().unwrap(), &["-r", "2097152-"]).await;
    assert!([first.body, rest.body].concat() == bytes);

    let t = app
        .closed(quiet["tunnel_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(t["close_reason"], "stalled");
    assert_eq!(t["bytes_served"], 2_097_152);
    let t = app
        .closed(resumed["tunnel_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(t["close_reason"], "completed");
    assert_eq!(t["bytes_served"], 4_000_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_no_link_is_lost_the_overdue_one_closes_and_orphans_go() {
    let mut app = TestApp::spawn().await;
    let bytes = app.data_file("keep.bin", 100_000);
    app.data_file("soon.bin", 10);
    let keep = app.link("keep.bin").await;
    let (_, soon) = app
        .create(serde_json::json!({"file_path": "soon.bin", "expires_in_seconds": 2}))
        .await;
    let old_nginx = app.nginx_pid().unwrap();
    app.kill9().await;

    // While ferry is down: a stray tunnel directory appears, and `soon` passes its deadline.
    let orphan = app.path("tunnels").join("AAAAAAAAAAAAAAAAAAAAAAAA");
    std::fs::create_dir(&orphan).unwrap();
    std::os::unix::fs::symlink(app.path("data/keep.bin"), orphan.join("file")).unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let restarted = std::time::SystemTime::now();
    app.start().await;
    let t = app
        .closed(soon["tunnel_id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    assert_eq!(t["close_reason"], "expired");
    let closed_at = humantime::parse_rfc3339(t["closed_at"].as_str().unwrap()).unwrap();
    let delay = closed_at.duration_since(restarted).unwrap_or_default();
    assert!(
        delay < Duration::from_secs(1) + Duration::from_millis(500),
        "closed {delay:?} after the restart began\n{}",
        app.log()
    );
    assert!(!orphan.exists(), "orphan symlink directory removed");
    assert!(!app.path("tunnels").join(soon["tunnel_id"].as_str().unwrap()).exists());

    let open = app.open().await;
    assert_eq!(open.len(), 1, "the live link survived");
    assert_eq!(open[0]["tunnel_id"], keep["tunnel_id"]);
    // One nginx: the stale one is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{old_nginx}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "the stale nginx is still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = curl(keep["download_url"].as_str().unwrap(), &[]).await;
    assert!(r.exit == 0 && r.body == bytes);
}

/// What the log said stays said through `kill -9`: the follower moves its saved position past
/// lines only once their writes are durable. Two of three ranges are settled (soft writes riding
/// on the claim), ferry is killed, and the third range must complete the download.
#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_settled_ranges_stay_settled() {
    let mut app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "0")]).await;
    let bytes = app.data_file("three.bin", 300_000);
    let link = app.link("three.bin").await;
    let (id, url) = (
        link["tunnel_id"].as_str().unwrap(),
        link["download_url"].as_str().unwrap(),
    );
    for (range, part) in [("0-99999", 0..100_000), ("100000-199999", 100_000..200_000)] {
        let r = curl(url, &["-r", range]).await;
        assert_eq!((r.exit, r.body.as_slice()), (0, &bytes[part]));
    }
    let stats = format!("/admin/tunnels/{id}/stats");
    crate::helpers::eventually(Duration::from_secs(5), "both ranges settled", async || {
        app.get(&stats).await.1["tunnel"]["bytes_served"] == 200_000
    })
    .await;
    app.kill9().await;
    app.start().await;
    assert_eq!(
        app.get(&stats).await.1["tunnel"]["bytes_served"],
        200_000,
        "{}",
        app.log()
    );
    let r = curl(url, &["-r", "200000-299999"]).await;
    assert_eq!((r.exit, r.body.as_slice()), (0, &bytes[200_000..]));
    let t = app.closed(id, Duration::from_secs(10)).await;
    assert_eq!(
        (&t["close_reason"], &t["bytes_served"]),
        (&"completed".into(), &300_000.into())
    );
}

/// A log file deleted while nginx writes it: nginx makes it again by its name (its descriptor
/// cache is valid for 1 s), and the follower reads the new file instead of holding on to the old.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_file_deleted_under_nginx_is_followed_again() {
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "0")]).await;
    let bytes = app.data_file("f.bin", 10_000);
    let first = app.link("f.bin").await;
    let r = curl(first["download_url"].as_str().unwrap(), &[]).await;
    assert_eq!((r.exit, r.body.as_slice()), (0, bytes.as_slice()));
    app.closed(first["tunnel_id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    for entry in std::fs::read_dir(app.path("logs")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    // Past nginx's descriptor cache, so the next line goes to a new file.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = app.link("f.bin").await;
    let r = curl(second["download_url"].as_str().unwrap(), &[]).await;
    assert_eq!((r.exit, r.body.as_slice()), (0, bytes.as_slice()));
    let t = app
        .closed(second["tunnel_id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    assert_eq!(t["close_reason"], "completed");
}
