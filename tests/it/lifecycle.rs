//! A link's life under real conditions: rotation, stalls, crashes, events, previewers.

use std::time::{Duration, Instant};

use crate::helpers::TestApp;

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
