//! The admin listener's guard: token, session cookie, Host and Origin checks, no secret in logs.

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;

const TOKEN: &str = "s3cret-admin-token-for-tests";

/// Every admin route with a request that would succeed when authorised.
fn routes() -> Vec<(Method, &'static str)> {
    vec![
        (Method::GET, "/api/files"),
        (Method::POST, "/api/links"),
        (Method::POST, "/generate-link"),
        (Method::GET, "/admin/tunnels"),
        (Method::GET, "/admin/history"),
        (Method::POST, "/admin/cleanup"),
        (Method::DELETE, "/admin/tunnels/AAAAAAAAAAAAAAAAAAAAAAAA"),
        (Method::GET, "/admin/tunnels/AAAAAAAAAAAAAAAAAAAAAAAA/stats"),
        (Method::GET, "/admin/events"),
        (Method::GET, "/metrics"),
        (Method::GET, "/admin/config"),
        (Method::GET, "/admin/monitor/status"),
        (Method::GET, "/admin/audit"),
        (Method::GET, "/api/openapi.json"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_route_needs_the_token_but_health() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    app.data_file("a.txt", 10);
    let anon = reqwest::Client::new();
    for (method, path) in routes() {
        for auth in [None, Some("Bearer wrong-token-wrong-token"), Some("Basic czNjcmV0")] {
            let mut r = anon.request(method.clone(), format!("{}{path}", app.admin));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            let r = r.json(&json!({"file_path": "a.txt"})).send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("FERRY_ADMIN_TOKEN"));
        }
        // With the token: anything but 401/403/421.
        let r = app
            .http
            .request(method.clone(), format!("{}{path}", app.admin))
            .json(&json!({"file_path": "a.txt"}))
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await;
        if let Ok(r) = r {
            assert!(
                ![401, 403, 421].contains(&r.status().as_u16()),
                "{method} {path}: {}",
                r.status()
            );
        }
    }
    let r = anon.get(format!("{}/health", app.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = anon.get(format!("{}/", app.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200, "the UI's page loads so the owner can log in");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_sets_a_strict_http_only_session() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    let anon = reqwest::Client::new();
    let r = anon
        .post(format!("{}/login", app.admin))
        .json(&json!({"token": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .post(format!("{}/login", app.admin))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN));
    let session = cookie.split(';').next().unwrap();
    let r = anon
        .get(format!("{}/admin/tunnels", app.admin))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_hosts_and_cross_site_origins_are_refused() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN), ("FERRY_ADMIN_HOSTS", "nas.lan")]).await;
    app.data_file("a.txt", 10);
    // DNS rebinding: the attacker's name in Host.
    let r = app
        .http
        .get(format!("{}/admin/tunnels", app.admin))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    let r = app
        .http
        .get(format!("{}/admin/tunnels", app.admin))
        .header("host", "nas.lan:8000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A page elsewhere posting to the API.
    let r = app
        .http
        .post(format!("{}/api/links", app.admin))
        .header("origin", "https://evil.example")
        .json(&json!({"file_path": "a.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(app.open().await.is_empty());
    let r = app
        .http
        .post(format!("{}/api/links", app.admin))
        .header("origin", &app.admin)
        .json(&json!({"file_path": "a.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_ferry_will_not_listen_beyond_loopback_and_secrets_stay_out_of_logs() {
    let dir = tempfile::tempdir().unwrap();
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("serve")
        .current_dir(dir.path())
        .env("NAS_MOUNT_PATH", dir.path())
        .env("FERRY_ADMIN_ADDR", "0.0.0.0:0")
        .env_remove("FERRY_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("FERRY_ADMIN_TOKEN"));

    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN), ("FERRY_LOG", "debug")]).await;
    app.data_file("a.txt", 10);
    let link = app.link("a.txt").await;
    let url = link["download_url"].as_str().unwrap();
    crate::helpers::curl(url, &[]).await;
    crate::helpers::curl(&format!("{url}x"), &[]).await;
    let anon = reqwest::Client::new();
    anon.get(format!("{}/admin/tunnels", app.admin))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    anon.post(format!("{}/login", app.admin))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    let jwt_secret = std::fs::read_to_string(app.path("state/jwt_secret")).unwrap();
    let logs: String = std::fs::read_dir(app.path("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .chain([app.log()])
        .collect();
    for secret in [TOKEN, jwt_secret.as_str(), link["token"].as_str().unwrap()] {
        assert!(!logs.contains(secret), "a secret reached a log");
    }
}
