//! Editing a live link (SPEC §13): expiry within its ceiling, downloads, rotation, a password
//! asked through HTTP Basic, allowed addresses and the link's own notification URL, each checked
//! at nginx with real clients (curl, wget).

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{EMPTY_REPLY, TestApp, curl, eventually, startup_error};

fn url(link: &Value) -> String {
    link["download_url"].as_str().unwrap().to_string()
}

fn id(link: &Value) -> &str {
    link["tunnel_id"].as_str().unwrap()
}

/// `PATCH /admin/tunnels/<id>`: the status and the answer.
async fn patch(app: &TestApp, id: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .patch(format!("{}/admin/tunnels/{id}", app.admin))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn rotate(app: &TestApp, id: &str) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}/admin/tunnels/{id}/rotate", app.admin))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn in_secs(s: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(s)).to_string()
}

fn time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

async fn made(app: &TestApp, body: Value) -> Value {
    let (status, link) = app.create(body).await;
    assert_eq!(status, 201, "{link}");
    link
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extended_link_serves_past_its_old_deadline_and_closes_at_the_new_one() {
    let app = TestApp::spawn().await;
    let file = app.data_file("late.bin", 5000);
    let link = made(&app, json!({"file_path": "late.bin", "expires_in_seconds": 2})).await;
    let (status, t) = patch(&app, id(&link), json!({"expires_at": in_secs(4)})).await;
    assert_eq!(status, 200, "{t}");
    let new_deadline = time(&t["expires_at"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = curl(&url(&link), &[]).await;
    assert_eq!(
        (got.status, got.body == file),
        (200, true),
        "served after the old deadline"
    );
    let closed = app.closed(id(&link), Duration::from_secs(5)).await;
    let late = time(&closed["closed_at"])
        .duration_since(new_deadline)
        .expect("not closed early");
    assert!(late < Duration::from_secs(1), "closed {late:?} after the new deadline");
    // Served once already, so it closed as expired only if nobody completed it: it completed.
    assert!(
        matches!(closed["close_reason"].as_str(), Some("completed" | "expired")),
        "{closed}"
    );
    assert_eq!(
        curl(&url(&link), &[]).await.exit,
        EMPTY_REPLY,
        "444 after the new deadline"
    );

    // A time is read with its zone; one without a zone is refused.
    let (_, other) = app.create(json!({"file_path": "late.bin"})).await;
    let at = time(&other["expires_at"]) - Duration::from_secs(60);
    let in_paris = humantime::format_rfc3339(at + Duration::from_secs(3600))
        .to_string()
        .replace('Z', "+01:00");
    let (status, t) = patch(&app, id(&other), json!({"expires_at": in_paris})).await;
    assert_eq!(status, 200, "{t}");
    let moved = time(&t["expires_at"]).duration_since(at).unwrap_or_default();
    assert!(
        moved < Duration::from_secs(1),
        "{in_paris} is {at:?}, got {}",
        t["expires_at"]
    );
    let (status, e) = patch(&app, id(&other), json!({"expires_at": "2030-01-01T10:00:00"})).await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("with its zone"), "{e}");
    // Past the ceiling: refused, naming the field and the ceiling.
    let other = made(&app, json!({"file_path": "late.bin"})).await;
    let (status, e) = patch(&app, id(&other), json!({"expires_at": in_secs(7200)})).await;
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().starts_with("expires_at: must be at most"),
        "{e}"
    );
    // Shortened to now: closed as expired at once.
    let (status, _) = patch(&app, id(&other), json!({"expires_at": in_secs(0)})).await;
    assert_eq!(status, 200);
    let closed = app.closed(id(&other), Duration::from_secs(2)).await;
    assert_eq!(closed["close_reason"], "expired");
    assert_eq!(curl(&url(&other), &[]).await.exit, EMPTY_REPLY);
    // A closed link cannot be edited.
    let (status, e) = patch(&app, id(&other), json!({"note": "late"})).await;
    assert_eq!(status, 409, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_raised_let_one_more_client_complete_and_lowering_stops_at_what_is_used() {
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "1")]).await;
    let file = app.data_file("twice.bin", 20_000);
    let link = made(&app, json!({"file_path": "twice.bin", "max_downloads": 2})).await;
    assert_eq!(curl(&url(&link), &[]).await.body, file);
    eventually(Duration::from_secs(5), "the first download is counted", async || {
        app.get(&format!("/admin/tunnels/{}/stats", id(&link))).await.1["tunnel"]["downloads_completed"] == 1
    })
    .await;
    let (status, e) = patch(&app, id(&link), json!({"max_downloads": 0})).await;
    assert_eq!(status, 400, "{e}");
    let (status, t) = patch(&app, id(&link), json!({"max_downloads": 1})).await;
    assert_eq!((status, t["state"].as_str()), (200, Some("completed")), "{t}");
    // The link is used up: a second client is refused.
    assert_eq!(curl(&url(&link), &["--interface", "127.0.0.2"]).await.exit, EMPTY_REPLY);
    let (status, e) = patch(&app, id(&link), json!({"max_downloads": 101})).await;
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("FERRY_MAX_DOWNLOADS_LIMIT"),
        "{e}"
    );
    let (status, t) = patch(&app, id(&link), json!({"max_downloads": 2})).await;
    assert_eq!((status, t["state"].as_str()), (200, Some("downloading")), "{t}");
    let again = curl(&url(&link), &["--interface", "127.0.0.2"]).await;
    assert_eq!(again.body, file, "one more client completes");
    let closed = app.closed(id(&link), Duration::from_secs(10)).await;
    assert_eq!(
        (closed["downloads_completed"].as_u64(), closed["close_reason"].as_str()),
        (Some(2), Some("completed"))
    );
    let audit = app.get("/admin/audit?event=link.edited").await.1;
    let edits = audit["events"].as_array().unwrap();
    assert!(edits.iter().any(|e| e["detail"] == "max_downloads"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_link_keeps_its_path_and_only_the_new_token_works() {
    let app = TestApp::spawn().await;
    let file = app.data_file("leaked.pdf", 3000);
    let link = made(&app, json!({"file_path": "leaked.pdf"})).await;
    let (status, r) = rotate(&app, id(&link)).await;
    assert_eq!(status, 200, "{r}");
    let (old, new) = (url(&link), url(&r));
    assert_ne!(old, new);
    assert_eq!(old.split('?').next(), new.split('?').next(), "the path stays");
    assert_eq!(curl(&old, &[]).await.exit, EMPTY_REPLY, "the old URL gets 444");
    assert_eq!(curl(&new, &[]).await.body, file);
    let audit = app.get("/admin/audit?event=link.rotated").await.1;
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(rotate(&app, "nosuchlinkxxxxxxxxxxxxxx").await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_is_asked_through_basic_auth_and_kept_secret() {
    let pw = "correct horse battery";
    let app = TestApp::spawn_with(&[("FERRY_BAN_AFTER_FAILS", "3")]).await;
    let file = app.data_file("private/tax-2026.pdf", 40_000);
    let link = made(
        &app,
        json!({"file_path": "private/tax-2026.pdf", "password": pw, "max_downloads": 2}),
    )
    .await;
    let u = url(&link);
    let realm = format!("Basic realm=\"ferry {}\"", id(&link));
    // No password, HEAD, a previewer, a wrong password: 401 with the link's realm, and nothing
    // about the file.
    for args in [
        vec![],
        vec!["-I"],
        vec!["-A", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"],
        vec!["-u", ":wrong"],
    ] {
        let r = curl(&u, &args).await;
        assert_eq!(r.status, 401, "{args:?}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            !text.contains("tax-2026") && !text.contains("40000") && !text.contains("40.0"),
            "{args:?}: {text}"
        );
    }
    let head = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", &u])
        .output()
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.contains(&realm.to_lowercase()), "{head}");
    assert_eq!(head.matches("www-authenticate:").count(), 1, "{head}");
    // With the password: curl and wget get the file.
    let got = curl(&u, &["-u", &format!(":{pw}")]).await;
    assert_eq!((got.status, got.body == file), (200, true));
    let dir = tempfile::tempdir().unwrap();
    let w = tokio::process::Command::new("wget")
        .current_dir(dir.path())
        // wget sends credentials only with a user name; an empty one does.
        .args(["-q", "-O", "got.pdf", "--user=", &format!("--password={pw}"), &u])
        .status()
        .await
        .unwrap();
    assert!(w.success(), "wget with the password");
    assert_eq!(std::fs::read(dir.path().join("got.pdf")).unwrap(), file);
    // Wrong passwords count toward a ban (a burst within a second counts once): after three,
    // even the right one gets 444.
    let other = made(&app, json!({"file_path": "private/tax-2026.pdf", "password": pw})).await;
    for _ in 0..3 {
        let r = curl(&url(&other), &["--interface", "127.0.0.5", "-u", ":nope"]).await;
        assert_eq!(r.status, 401);
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }
    let banned = curl(&url(&other), &["--interface", "127.0.0.5", "-u", &format!(":{pw}")]).await;
    assert_eq!(banned.exit, EMPTY_REPLY, "banned after three wrong passwords");
    // The password is nowhere: not in the log, the Tunnel, the config, the audit or the store's
    // files.
    let t = app.get(&format!("/admin/tunnels/{}/stats", id(&other))).await.1;
    assert_eq!(t["tunnel"]["password"], true);
    for (what, text) in [
        ("log", app.log()),
        ("tunnel", t.to_string()),
        ("config", app.get("/admin/config").await.1.to_string()),
        ("audit", app.get("/admin/audit").await.1.to_string()),
        ("history", app.get("/admin/history").await.1.to_string()),
    ] {
        assert!(!text.contains("horse"), "the password appears in the {what}");
    }
    for e in walk(&app.path("state")) {
        let bytes = std::fs::read(&e).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains("horse"), "{}", e.display());
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type().unwrap().is_dir() {
                true => todo.push(e.path()),
                false => out.push(e.path()),
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_wrong_passwords_lock_a_link_until_its_owner_edits_it() {
    let app = TestApp::spawn_with(&[("FERRY_BAN_AFTER_FAILS", "0")]).await;
    let file = app.data_file("locked.bin", 2000);
    let link = made(
        &app,
        json!({"file_path": "locked.bin", "password": "pw", "max_downloads": 2}),
    )
    .await;
    let mut events = app.events().await;
    for i in 0..20 {
        let r = curl(&url(&link), &["-u", &format!(":guess{i}")]).await;
        assert_eq!(r.status, 401);
    }
    let r = curl(&url(&link), &["-u", ":pw"]).await;
    assert_eq!(r.exit, EMPTY_REPLY, "a locked link refuses even the right password");
    let t = app.get(&format!("/admin/tunnels/{}/stats", id(&link))).await.1;
    assert_eq!(t["tunnel"]["locked"], true, "{t}");
    let mut heard = String::new();
    while !heard.contains("event: locked") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk()).await;
        heard.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap().unwrap()));
    }
    let audit = app.get("/admin/audit?event=link.locked").await.1;
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
    let (status, _) = patch(&app, id(&link), json!({"note": "unlocked"})).await;
    assert_eq!(status, 200);
    assert_eq!(curl(&url(&link), &["-u", ":pw"]).await.body, file);
    // Clearing the password lets anyone with the token in.
    let (status, t) = patch(&app, id(&link), json!({"password": null})).await;
    assert_eq!((status, t["password"].as_bool()), (200, Some(false)));
    let r = curl(&url(&link), &["--interface", "127.0.0.2"]).await;
    assert_eq!(r.body, file);
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_addresses_decide_who_is_served() {
    let app = TestApp::spawn().await;
    let file = app.data_file("lan.bin", 3000);
    let link = made(&app, json!({"file_path": "lan.bin", "allow_cidrs": ["127.0.0.3/32"]})).await;
    assert_eq!(curl(&url(&link), &["--interface", "127.0.0.2"]).await.exit, EMPTY_REPLY);
    assert_eq!(curl(&url(&link), &["--interface", "127.0.0.3"]).await.body, file);
    for (bad, words) in [
        (json!(["2001:db8::1/64"]), "range starts at 2001:db8::/64"),
        (json!(["10.0.0.0/33"]), "0 to 32"),
        (json!(["lan"]), "not an IPv4 or IPv6"),
    ] {
        let (status, e) = patch(&app, id(&link), json!({"allow_cidrs": bad})).await;
        assert_eq!(status, 400, "{e}");
        let msg = e["error"].as_str().unwrap();
        assert!(msg.starts_with("allow_cidrs:") && msg.contains(words), "{msg}");
    }
    let other = made(&app, json!({"file_path": "lan.bin"})).await;
    let (status, t) = patch(
        &app,
        id(&other),
        json!({"allow_cidrs": ["2001:db8:1:2::/64", "127.0.0.4"]}),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["allow_cidrs"], json!(["2001:db8:1:2::/64", "127.0.0.4/32"]));
    assert_eq!(
        curl(&url(&other), &[]).await.exit,
        EMPTY_REPLY,
        "127.0.0.1 is not allowed"
    );
    let (status, _) = patch(&app, id(&other), json!({"allow_cidrs": null})).await;
    assert_eq!(status, 200);
    assert_eq!(curl(&url(&other), &[]).await.body, file);
}

/// A receiver of webhooks on a loopback port: the bodies it was sent, one per request.
async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Reads the head and a body of the declared length.
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(body.to_string());
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}/hook/secret-topic"), rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_links_own_notify_url_hears_its_events_and_is_never_shown() {
    let app = TestApp::spawn().await;
    let file = app.data_file("told.bin", 3000);
    let (hook, mut heard) = webhook_receiver().await;
    let link = made(&app, json!({"file_path": "told.bin", "notify_url": hook})).await;
    let quiet = made(&app, json!({"file_path": "told.bin"})).await;
    assert_eq!(curl(&url(&link), &[]).await.body, file);
    let mut events = Vec::new();
    while !events.iter().any(|e: &Value| e["event"] == "completed") {
        let body = tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .unwrap()
            .unwrap();
        events.push(serde_json::from_str(&body).unwrap());
    }
    assert_eq!(events[0]["event"], "created");
    assert!(
        events.iter().all(|e| e["tunnel"]["tunnel_id"] == id(&link)),
        "only this link's events"
    );
    assert!(events.iter().all(|e| !e.to_string().contains("secret-topic")));
    let t = app.get(&format!("/admin/tunnels/{}/stats", id(&link))).await.1;
    assert_eq!(t["tunnel"]["notify_url"], "[set]");
    assert_eq!(
        app.get(&format!("/admin/tunnels/{}/stats", id(&quiet))).await.1["tunnel"]["notify_url"],
        Value::Null
    );
    for text in [t.to_string(), app.log(), app.get("/admin/config").await.1.to_string()] {
        assert!(!text.contains("secret-topic"));
    }
    let (status, e) = patch(&app, id(&quiet), json!({"notify_url": "ftp://example/x"})).await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().starts_with("notify_url:"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_for_new_links_stay_under_their_caps() {
    let e = startup_error(&[("FERRY_DEFAULT_MAX_DOWNLOADS", "5"), ("FERRY_MAX_DOWNLOADS_LIMIT", "3")]).await;
    assert!(
        e.contains("FERRY_DEFAULT_MAX_DOWNLOADS") && e.contains("FERRY_MAX_DOWNLOADS_LIMIT"),
        "{e}"
    );
    let e = startup_error(&[("FERRY_DEFAULT_EXPIRES_SECONDS", "7200")]).await;
    assert!(
        e.contains("FERRY_DEFAULT_EXPIRES_SECONDS") && e.contains("MAX_TUNNEL_SECONDS"),
        "{e}"
    );
    let app = TestApp::spawn_with(&[
        ("FERRY_DEFAULT_EXPIRES_SECONDS", "600"),
        ("FERRY_DEFAULT_MAX_DOWNLOADS", "2"),
        ("FERRY_MAX_DOWNLOADS_LIMIT", "3"),
    ])
    .await;
    app.data_file("d.bin", 10);
    let link = made(&app, json!({"file_path": "d.bin"})).await;
    assert_eq!(link["expires_in_seconds"], 600);
    let t = app.get(&format!("/admin/tunnels/{}/stats", id(&link))).await.1;
    assert_eq!(t["tunnel"]["max_downloads"], 2);
    let (status, e) = app.create(json!({"file_path": "d.bin", "max_downloads": 4})).await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("at most 3"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_link_with_a_password_asks_senders_for_it() {
    let app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/drop")).unwrap();
    let (status, link) = app
        .upload_link(json!({"folder": "drop", "max_bytes": 1000, "password": "let me in"}))
        .await;
    assert_eq!(status, 201, "{link}");
    let u = link["upload_url"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scan.pdf");
    std::fs::write(&file, b"twelve bytes").unwrap();
    let page = curl(u, &[]).await;
    assert_eq!(page.status, 401, "the upload page asks for the password");
    let refused = curl(u, &["-T", file.to_str().unwrap()]).await;
    assert_eq!(refused.status, 401);
    assert!(!app.path("data/drop/scan.pdf").exists());
    let sent = curl(u, &["-T", file.to_str().unwrap(), "-u", ":let me in"]).await;
    assert_eq!(sent.status, 201);
    assert_eq!(std::fs::read(app.path("data/drop/scan.pdf")).unwrap(), b"twelve bytes");
}

/// In Chromium, a link with a password answers with the Basic challenge a browser prompts on
/// (headless Chromium waits on the prompt, so the challenge is read by a request that asks for
/// no prompt). With the password, as the browser sends it once the user typed it, the file
/// downloads whole.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_is_challenged_and_downloads_with_the_password() {
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "1")]).await;
    let file = app.data_file("holiday.mov", 300_000);
    let link = made(&app, json!({"file_path": "holiday.mov", "password": "s3a side"})).await;
    let b = crate::webdriver::Browser::start().await;
    let downloads = tempfile::tempdir().unwrap();
    b.cdp(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": downloads.path().display().to_string()}),
    )
    .await;
    // The public listener's only pages are links: an upload link's page gives a page on the same
    // origin, from which the challenge's headers can be read.
    std::fs::create_dir_all(app.path("data/drop")).unwrap();
    let (_, page) = app.upload_link(json!({"folder": "drop", "max_bytes": 10})).await;
    b.goto(page["upload_url"].as_str().unwrap()).await;
    let asked = b
        .script(&format!(
            "return fetch({:?}, {{credentials: 'omit'}}).then(r => [r.status, r.headers.get('www-authenticate')])",
            url(&link)
        ))
        .await;
    assert_eq!(asked[0], 401);
    let challenge = asked[1].as_str().unwrap();
    assert!(
        challenge.starts_with(&format!("Basic realm=\"ferry {}\"", id(&link))),
        "{challenge}"
    );
    // The credentials a user types into the prompt, given the way a URL can carry them.
    let with_password = url(&link).replacen("http://", "http://:s3a%20side@", 1);
    b.goto(&with_password).await;
    let saved = downloads.path().join("holiday.mov");
    eventually(Duration::from_secs(20), "the download finishes", async || {
        std::fs::read(&saved).is_ok_and(|got| got == file)
    })
    .await;
    let t = app.closed(id(&link), Duration::from_secs(10)).await;
    assert_eq!(t["close_reason"], "completed");
}
