//! The admin API's contract: shapes, validation errors that name the field, config errors.

use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_400_naming_the_field() {
    let app = TestApp::spawn_with(&[("MAX_TUNNEL_SECONDS", "600")]).await;
    app.data_file("a.txt", 10);
    let table = [
        (
            json!({"file_path": "a.txt", "expires_in_seconds": 0}),
            "expires_in_seconds",
        ),
        (
            json!({"file_path": "a.txt", "expires_in_seconds": 601}),
            "expires_in_seconds",
        ),
        (
            json!({"file_path": "a.txt", "expires_in_seconds": -5}),
            "expires_in_seconds",
        ),
        (
            json!({"file_path": "a.txt", "expires_in_seconds": "soon"}),
            "expires_in_seconds",
        ),
        (json!({"file_path": "a.txt", "max_downloads": 0}), "max_downloads"),
        (json!({"file_path": "a.txt", "surprise": 1}), "surprise"),
        (json!({"file_path": 7}), "file_path"),
        (json!({}), "file_path"),
    ];
    for (body, field) in table {
        let (status, v) = app.create(body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{body}: {v}");
    }
    let r = app
        .http
        .post(format!("{}/api/links", app.admin))
        .body("file_path=a.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let big = "x".repeat(100_000);
    let r = app
        .http
        .post(format!("{}/api/links", app.admin))
        .header("content-type", "application/json")
        .body(format!(r#"{{"file_path":"{big}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(app.terminate("AAAAAAAAAAAAAAAAAAAAAAAA").await, 404);
    assert!(app.open().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn links_are_listed_terminated_and_kept_in_history() {
    let app = TestApp::spawn().await;
    app.data_file("a.txt", 10);
    let (status, v) = app
        .create(json!({"file_path": "a.txt", "expires_in_seconds": 60, "note": "for mum"}))
        .await;
    assert_eq!(status, 201);
    for key in [
        "download_url",
        "tunnel_id",
        "token",
        "file_path",
        "expires_in_seconds",
        "expires_at",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["expires_in_seconds"], 60);
    // The legacy route is the same operation.
    let r = app
        .http
        .post(format!("{}/generate-link", app.admin))
        .json(&json!({"file_path": "a.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let open = app.open().await;
    assert_eq!(open.len(), 2);
    let t = open.iter().find(|t| t["tunnel_id"] == v["tunnel_id"]).unwrap();
    assert_eq!(t["state"], "open");
    assert_eq!(t["note"], "for mum");
    assert_eq!(t["file_size"], 10);
    assert!(t.get("token").is_none());

    let id = v["tunnel_id"].as_str().unwrap();
    let (status, stats) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
    assert_eq!(status, 200);
    assert_eq!(
        stats["download_url"], v["download_url"],
        "the owner can copy the link again"
    );

    assert_eq!(app.terminate(id).await, 204);
    assert_eq!(app.terminate(id).await, 404, "a closed link is no longer open");
    let h = app.history().await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["close_reason"], "terminated");
    assert!(app.tunnel_dir_gone(id).await);
    let (_, limited) = app.get("/admin/history?limit=0").await;
    assert!(limited["error"].as_str().unwrap().starts_with("limit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_listed_and_searched() {
    let app = TestApp::spawn().await;
    app.data_file("music/song.flac", 5);
    app.data_file("music/live/Encore Song.flac", 7);
    app.data_file("notes.txt", 3);
    let (status, v) = app.get("/api/files").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["music", "notes.txt"]);
    assert_eq!(v["entries"][0]["is_dir"], true);
    assert_eq!(v["entries"][1]["size"], 3);
    let (_, v) = app.get("/api/files?q=SONG").await;
    let paths: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["music/song.flac", "music/live/Encore Song.flac"]);
    let (status, _) = app.get("/api/files?path=../").await;
    assert_eq!(status, 400);
    let (status, _) = app.get("/api/files?path=nope").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_stops_startup_with_a_line_naming_the_variable() {
    let table = [
        ("MAX_TUNNEL_SECONDS", "an hour"),
        ("JWT_SECRET", "too-short"),
        ("FERRY_PUBLIC_ADDR", "everywhere"),
        ("NAS_MOUNT_PATH", "/definitely/not/here"),
        ("FERRY_NGINX_BIN", "/no/nginx"),
    ];
    for (var, value) in table {
        let line = crate::helpers::startup_error(&[(var, value)]).await;
        assert!(line.contains(var), "{var}={value}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_jwt_secret_is_private_and_survives_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let mut app = TestApp::spawn().await;
    app.data_file("a.txt", 10);
    let link = app.link("a.txt").await;
    let secret = app.path("state/jwt_secret");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read_to_string(&secret).unwrap();
    assert!(before.len() >= 32);
    assert!(!app.log().contains(&before), "the secret was logged");
    app.stop().await;
    app.start().await;
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), before);
    // Links made before the restart still verify.
    let r = crate::helpers::curl(link["download_url"].as_str().unwrap(), &["-I"]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn x_forwarded_for_is_ignored_from_untrusted_peers() {
    let app = TestApp::spawn().await;
    app.data_file("a.txt", 10);
    let link = app.link("a.txt").await;
    let r = crate::helpers::curl(
        link["download_url"].as_str().unwrap(),
        &["--interface", "127.0.0.7", "-H", "X-Forwarded-For: 203.0.113.9"],
    )
    .await;
    assert_eq!(r.exit, 0);
    let id = link["tunnel_id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let t = loop {
        let open = app.open().await;
        let t = open
            .into_iter()
            .find(|t| t["tunnel_id"] == id)
            .expect("in its grace period");
        if t["downloads_completed"] == 1 {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "download not settled: {t}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(t["state"], "completed");
    assert_eq!(t["clients"][0]["address"], "127.0.0.7", "{t}");
}
