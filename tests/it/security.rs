//! Hostile paths and tampered tokens: refused, with nothing created and zero bytes sent.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::json;

use crate::helpers::{EMPTY_REPLY, TestApp, curl};

#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_are_refused_before_anything_is_created() {
    let app = TestApp::spawn().await;
    app.data_file("ok.txt", 10);
    app.data_file("dir/inner.txt", 10);
    let data = app.path("data");
    std::os::unix::fs::symlink("/etc/passwd", data.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc", data.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("missing.txt", data.join("dangling")).unwrap();
    std::os::unix::fs::symlink(app.path("state"), data.join("state-link")).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(data.join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    let long = "a".repeat(300);

    let table: &[(&str, u16)] = &[
        ("../etc/passwd", 400),
        ("dir/../../etc/passwd", 400),
        ("/etc/passwd", 400),
        ("%2e%2e/etc/passwd", 400),
        ("..%2fetc%2fpasswd", 400),
        ("dir\\..\\..\\etc\\passwd", 400),
        ("ok.txt\u{0}.jpg", 400),
        ("escape", 400),
        ("etc-link/passwd", 400),
        ("state-link/jwt_secret", 400),
        ("dangling", 404),
        ("fifo", 400),
        // The data dir itself (a folder inside it is shared as a ZIP: tests/it/zip.rs).
        ("", 400),
        (".", 400),
        (&long, 400),
        ("no-such-file", 404),
    ];
    for (path, want) in table {
        let (status, body) = app.create(json!({ "file_path": path })).await;
        assert_eq!(status, *want, "{path:?}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("file_path"),
            "{path:?}: {body}"
        );
    }
    assert!(app.open().await.is_empty(), "no link may exist");
    assert_eq!(
        std::fs::read_dir(app.path("tunnels")).unwrap().count(),
        0,
        "no tunnel dir may exist"
    );
    let (status, _) = app.create(json!({ "file_path": "dir/inner.txt" })).await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_tokens_get_444_and_zero_bytes() {
    let app = TestApp::spawn().await;
    let bytes = app.data_file("secret.pdf", 50_000);
    app.data_file("other.pdf", 10);
    let link = app.link("secret.pdf").await;
    let other = app.link("other.pdf").await;
    let base = link["download_url"]
        .as_str()
        .unwrap()
        .split("?t=")
        .next()
        .unwrap()
        .to_string();
    let token = link["token"].as_str().unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    let with = |c: serde_json::Value| B64.encode(c.to_string());
    let mut longer = claims.clone();
    longer["exp"] = json!(claims["exp"].as_u64().unwrap() + 86_400);
    let mut future = claims.clone();
    future["iat"] = json!(claims["iat"].as_u64().unwrap() + 3_600);
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut past = claims.clone();
    past["exp"] = json!(1_000_000_000);
    let flipped = {
        let mut s = parts[2].to_string();
        let c = if s.ends_with('A') { 'B' } else { 'A' };
        s.pop();
        s.push(c);
        s
    };

    let table: Vec<(&str, String)> = vec![
        ("changed claims", format!("{}.{}.{}", parts[0], with(longer), parts[2])),
        ("changed signature", format!("{}.{}.{}", parts[0], parts[1], flipped)),
        (
            "alg none",
            format!("{}.{}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]),
        ),
        (
            "alg HS512",
            format!(
                "{}.{}.{}",
                B64.encode(r#"{"alg":"HS512","typ":"JWT"}"#),
                parts[1],
                parts[2]
            ),
        ),
        (
            "alg RS256",
            format!(
                "{}.{}.{}",
                B64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
                parts[1],
                parts[2]
            ),
        ),
        ("another link's token", other["token"].as_str().unwrap().to_string()),
        ("missing exp", format!("{}.{}.{}", parts[0], with(no_exp), parts[2])),
        ("past exp", format!("{}.{}.{}", parts[0], with(past), parts[2])),
        (
            "iat in the future",
            format!("{}.{}.{}", parts[0], with(future), parts[2]),
        ),
        ("no token", String::new()),
        ("garbage", "not-a-token".into()),
    ];
    for (what, t) in &table {
        let r = curl(&format!("{base}?t={t}"), &[]).await;
        assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0), "{what} was served");
    }
    // Paths outside /s/ and mangled link paths: 444 too.
    for path in ["/", "/s/", "/etc/passwd", "/s/../tunnels", "/.ferry/check"] {
        let r = curl(&format!("{}{path}", app.public), &["--path-as-is"]).await;
        assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0), "{path} was answered");
    }
    // None of that used the link up.
    let r = curl(link["download_url"].as_str().unwrap(), &[]).await;
    assert_eq!(r.exit, 0);
    assert!(r.body == bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_swapped_after_the_link_was_made_is_refused_and_the_link_closed_as_error() {
    let app = TestApp::spawn().await;
    app.data_file("report.pdf", 1000);
    let link = app.link("report.pdf").await;
    let id = link["tunnel_id"].as_str().unwrap();
    let p = app.path("data/report.pdf");
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
    let r = curl(link["download_url"].as_str().unwrap(), &[]).await;
    assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0));
    let t = app.closed(id, Duration::from_secs(5)).await;
    assert_eq!(t["close_reason"], "error");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_token_bursts_ban_one_address_while_another_is_served() {
    let app = TestApp::spawn_with(&[("FERRY_BAN_AFTER_FAILS", "3"), ("FERRY_BAN_SECONDS", "600")]).await;
    let bytes = app.data_file("a.bin", 1000);
    let link = app.link("a.bin").await;
    let good = link["download_url"].as_str().unwrap();
    let bad = format!("{good}tampered");
    // A burst counts once a second (Funnel retries on its own), so three seconds of guessing.
    for _ in 0..3 {
        for _ in 0..5 {
            let r = curl(&bad, &["--interface", "127.0.0.50"]).await;
            assert_eq!(r.exit, EMPTY_REPLY);
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Banned: even the right token gets nothing from that address.
    let r = curl(good, &["--interface", "127.0.0.50"]).await;
    assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0), "a banned client was served");
    let r = curl(good, &["--interface", "127.0.0.51"]).await;
    assert!(r.exit == 0 && r.body == bytes, "another client is still served");
}

/// Retrying a link that expired is bad luck, not forgery: recipients behind one NAT retrying an
/// old link must not get their address banned from a new one.
#[tokio::test(flavor = "multi_thread")]
async fn retrying_an_expired_link_bans_nobody() {
    let app = TestApp::spawn_with(&[("FERRY_BAN_AFTER_FAILS", "3"), ("FERRY_BAN_SECONDS", "600")]).await;
    let bytes = app.data_file("a.bin", 1000);
    let (status, old) = app.create(json!({"file_path": "a.bin", "expires_in_seconds": 1})).await;
    assert_eq!(status, 201, "{old}");
    app.closed(old["tunnel_id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    for _ in 0..4 {
        let r = curl(old["download_url"].as_str().unwrap(), &["--interface", "127.0.0.60"]).await;
        assert_eq!(r.exit, EMPTY_REPLY, "an expired link was served");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let new = app.link("a.bin").await;
    let r = curl(new["download_url"].as_str().unwrap(), &["--interface", "127.0.0.60"]).await;
    assert!(
        r.exit == 0 && r.body == bytes,
        "the address was banned for retrying an expired link"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bandwidth_cap_slows_the_download_to_its_rate() {
    let app = TestApp::spawn().await;
    let bytes = app.data_file("capped.bin", 600_000);
    let (status, link) = app
        .create(json!({"file_path": "capped.bin", "rate_limit_bytes_per_second": 200_000}))
        .await;
    assert_eq!(status, 201, "{link}");
    let started = std::time::Instant::now();
    let r = curl(link["download_url"].as_str().unwrap(), &[]).await;
    assert!(r.exit == 0 && r.body == bytes);
    // 600 kB at 200 kB/s cannot arrive in under ~2 s (nginx lets the first burst through).
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "cap not applied: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_client_are_limited() {
    let app = TestApp::spawn_with(&[("FERRY_CONN_PER_CLIENT", "2")]).await;
    app.data_file("big.bin", 60_000_000);
    let link = app.link("big.bin").await;
    let url = link["download_url"].as_str().unwrap().to_string();
    let mut slow = Vec::new();
    for i in 0..2 {
        slow.push(
            tokio::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "--limit-rate",
                    "1M",
                    "-r",
                    // Two halves: asking for bytes the other request may still send would be
                    // refused as re-sent, which is not what this test is about.
                    &format!("{}-{}", i * 30_000_000, i * 30_000_000 + 29_999_999),
                    &url,
                ])
                .spawn()
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let third = curl(&url, &["-r", "5000-5999"]).await;
    assert_eq!(
        (third.exit, third.body.len()),
        (EMPTY_REPLY, 0),
        "a third connection was served"
    );
    for mut c in slow {
        c.start_kill().unwrap();
        c.wait().await.unwrap();
    }
}

/// A connection to the check socket, reading answers as nginx does: one after another from
/// one buffer (two answers may come in one read).
struct CheckConn {
    s: tokio::net::UnixStream,
    buf: Vec<u8>,
}

impl CheckConn {
    async fn open(sock: &std::path::Path) -> CheckConn {
        let s = tokio::net::UnixStream::connect(sock).await.unwrap();
        CheckConn { s, buf: Vec::new() }
    }

    async fn send(&mut self, raw: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(raw).await.unwrap();
    }

    /// The next answer's head, and its body unless it answers a HEAD.
    async fn answer(&mut self, head_only: bool) -> (String, String) {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                let len = match head_only {
                    true => 0,
                    false => head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |n| n.parse::<usize>().unwrap()),
                };
                while self.buf.len() < end + 4 + len {
                    assert_ne!(self.s.read_buf(&mut self.buf).await.unwrap(), 0, "closed inside a body");
                }
                let body = String::from_utf8(self.buf[end + 4..end + 4 + len].to_vec()).unwrap();
                self.buf.drain(..end + 4 + len);
                return (head, body);
            }
            let n = self.s.read_buf(&mut self.buf).await.unwrap();
            assert_ne!(
                n,
                0,
                "closed before an answer: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    async fn closed(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        self.buf.is_empty() && self.s.read(&mut [0u8; 16]).await.unwrap() == 0
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_check_socket_answers_nginx_on_one_connection_and_closes_on_anything_else() {
    let app = TestApp::spawn().await;
    app.data_file("q3 report.pdf", 1000);
    let link = app.link("q3 report.pdf").await;
    let (id, token) = (link["tunnel_id"].as_str().unwrap(), link["token"].as_str().unwrap());
    let sock = app.path("state/check.sock");
    let ask = |method: &str, path: &str, token: &str, rid: char| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: ferry_check\r\nX-Ferry-Tunnel: {id}\r\nX-Ferry-Token: {token}\r\n\
             X-Ferry-Method: HEAD\r\nX-Ferry-Request-Id: {}\r\nX-Ferry-Client: 127.0.0.1\r\n\
             X-Ferry-User-Agent: curl/8\r\n\r\n",
            rid.to_string().repeat(32)
        )
    };
    let mut s = CheckConn::open(&sock).await;
    // A HEAD is allowed (and claims nothing), with the file's name for nginx to send.
    s.send(ask("GET", "/check", token, 'a').as_bytes()).await;
    let (head, body) = s.answer(false).await;
    assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
    assert!(
        head.contains(
            "\r\nx-ferry-disposition: attachment; filename=\"q3 report.pdf\"; filename*=UTF-8''q3%20report.pdf"
        ),
        "{head}"
    );
    assert!(head.contains("\r\nx-ferry-rate: 0"), "{head}");
    assert_eq!(body, "");
    // The same connection: a tampered token is refused, and the connection stays.
    s.send(ask("GET", "/check", &format!("{token}x"), 'b').as_bytes()).await;
    assert!(s.answer(false).await.0.starts_with("HTTP/1.1 403 Forbidden\r\n"));
    // Two requests in one write are answered in order.
    let two = ask("GET", "/check", token, 'c') + &ask("GET", "/check", "", 'd');
    s.send(two.as_bytes()).await;
    assert!(s.answer(false).await.0.starts_with("HTTP/1.1 204 "));
    assert!(s.answer(false).await.0.starts_with("HTTP/1.1 403 "));
    // A previewer's request gets the preview page (HEAD: its headers alone).
    s.send(ask("GET", &format!("/s/{id}/q3%20report.pdf"), token, 'e').as_bytes())
        .await;
    let (head, body) = s.answer(false).await;
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("q3 report.pdf"), "{body}");
    s.send(ask("HEAD", &format!("/s/{id}/q3%20report.pdf"), token, 'f').as_bytes())
        .await;
    let (head, body) = s.answer(true).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && body.is_empty(), "{head}");
    // nginx sends no body: a request with one is refused and its connection closed.
    s.send(b"GET /check HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").await;
    let (head, _) = s.answer(false).await;
    assert!(
        head.starts_with("HTTP/1.1 400 ") && head.contains("\r\nconnection: close\r\n"),
        "{head}"
    );
    assert!(s.closed().await, "the connection is closed");
    // So is one that does not speak HTTP, and an unknown path is not found.
    let mut s = CheckConn::open(&sock).await;
    s.send(b"\x16\x03\x01 hello\r\n\r\n").await;
    assert!(s.answer(false).await.0.starts_with("HTTP/1.1 400 "));
    assert!(s.closed().await);
    let mut s = CheckConn::open(&sock).await;
    s.send(b"GET /admin/tunnels HTTP/1.1\r\n\r\n").await;
    assert!(s.answer(false).await.0.starts_with("HTTP/1.1 404 "));
    // Nothing of this claimed the link.
    let (_, stats) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
    assert_eq!(stats["tunnel"]["state"], "open", "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_nginx_rejects_itself_are_closed_without_a_response() {
    let app = TestApp::spawn().await;
    app.data_file("a.bin", 1000);
    let link = app.link("a.bin").await;
    let url = link["download_url"].as_str().unwrap();
    let path = url.strip_prefix(&app.public).unwrap();
    let addr = app.public.strip_prefix("http://").unwrap().to_string();
    let head = |method: &str, target: &str, extra: &str| {
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n").into_bytes()
    };
    let with_body = |method: &str| {
        let mut r = head(method, path, "Content-Length: 5000\r\n");
        r.extend(std::iter::repeat_n(b'a', 5000));
        r
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("TRACE", head("TRACE", path, "")),
        ("garbage request line", b"\x16\x03\x01\x00\xa5garbage\r\n\r\n".to_vec()),
        ("request line without a target", b"GET\r\n\r\n".to_vec()),
        ("`..` above the root", head("GET", "/s/../../etc/passwd", "")),
        ("OPTIONS *", head("OPTIONS", "*", "")),
        ("POST with a 5,000-byte body", with_body("POST")),
        ("POST elsewhere", {
            let mut r = head("POST", "/", "Content-Length: 5000\r\n");
            r.extend(std::iter::repeat_n(b'a', 5000));
            r
        }),
        ("GET with a body", with_body("GET")),
        ("PUT", with_body("PUT")),
        ("DELETE", head("DELETE", path, "")),
        ("OPTIONS", head("OPTIONS", path, "")),
        ("PATCH", head("PATCH", path, "Content-Length: 3\r\n")),
        ("chunked body", head("POST", path, "Transfer-Encoding: chunked\r\n")),
        (
            "unknown transfer coding",
            head("GET", path, "Transfer-Encoding: gzip\r\n"),
        ),
        ("bad Content-Length", head("GET", path, "Content-Length: abc\r\n")),
        (
            "oversized header",
            head("GET", path, &format!("X-Big: {}\r\n", "a".repeat(20_000))),
        ),
        (
            "oversized request line",
            head("GET", &format!("/s/{}", "a".repeat(20_000)), ""),
        ),
        ("malformed header", head("GET", path, "Bad Header\r\n")),
        (
            "bad Host",
            format!("GET {path} HTTP/1.1\r\nHost: ../evil\r\n\r\n").into_bytes(),
        ),
        ("two Hosts", head("GET", path, "Host: other\r\n")),
        ("no Host", format!("GET {path} HTTP/1.1\r\n\r\n").into_bytes()),
        (
            "HTTP/2.0 request line",
            format!("GET {path} HTTP/2.0\r\n\r\n").into_bytes(),
        ),
        ("the close location itself", head("GET", "/.ferry/close", "")),
    ];
    for (what, request) in &cases {
        let e = crate::raw::exchange(&addr, request);
        assert!(
            e.closed && e.got.is_empty(),
            "{what}: answered {:?} (closed: {})",
            e.text(),
            e.closed
        );
    }
    // curl's own way of sending a raw `..` path and TRACE.
    let r = curl(&format!("{}/s/../../etc/passwd", app.public), &["--path-as-is"]).await;
    assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0));
    let r = curl(url, &["-X", "TRACE"]).await;
    assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0));
    // None of that used the link up, and a plain GET is still served.
    let r = curl(url, &[]).await;
    assert_eq!((r.exit, r.status, r.body.len()), (0, 200, 1000));
}

#[tokio::test(flavor = "multi_thread")]
async fn previewers_are_held_to_the_same_request_limits() {
    // 1 request a second per client (2 per link), bursts of 4.
    let app = TestApp::spawn_with(&[("FERRY_REQ_PER_CLIENT", "1")]).await;
    app.data_file("a.bin", 1000);
    let slack = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";
    let count = |results: &[crate::helpers::CurlResult]| {
        let served = results.iter().filter(|r| r.status == 200).count();
        let refused = results
            .iter()
            .filter(|r| (r.exit, r.body.len()) == (EMPTY_REPLY, 0))
            .count();
        (served, refused)
    };
    // One client floods one link's preview.
    let first = app.link("a.bin").await;
    let url = first["download_url"].as_str().unwrap();
    let mut results = Vec::new();
    for _ in 0..20 {
        results.push(curl(url, &["-A", slack, "--interface", "127.0.0.90"]).await);
    }
    let (served, refused) = count(&results);
    assert!((1..=7).contains(&served), "{served} previews served to one client");
    assert_eq!(served + refused, 20, "every other preview is refused with 444");
    // Many clients, one request each, flood another link's preview: the link's own limit.
    let link = app.link("a.bin").await;
    let url = link["download_url"].as_str().unwrap();
    let mut results = Vec::new();
    for n in 100..120 {
        let ip = format!("127.0.0.{n}");
        results.push(curl(url, &["-A", slack, "--interface", &ip]).await);
    }
    let (served, refused) = count(&results);
    assert!((1..=8).contains(&served), "{served} previews of one link served");
    assert_eq!(served + refused, 20);
    // Neither flood claimed anything.
    for link in [&first, &link] {
        let (_, stats) = app
            .get(&format!("/admin/tunnels/{}/stats", link["tunnel_id"].as_str().unwrap()))
            .await;
        assert_eq!(stats["tunnel"]["state"], "open", "{stats}");
    }
}

/// A link whose token the tests below send in requests nginx refuses for their rate, so that
/// nginx's error log quotes them.
async fn limited_link(app: &TestApp) -> (String, String, String) {
    app.data_file("a.bin", 1000);
    let link = app.link("a.bin").await;
    let url = link["download_url"].as_str().unwrap();
    let path = url.strip_prefix(&app.public).unwrap().to_string();
    (
        path,
        link["token"].as_str().unwrap().to_string(),
        app.public.strip_prefix("http://").unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_error_log_is_read_past_lines_that_are_not_utf8() {
    // One request a second per client, bursts of 4: a flood gets `limiting requests` lines.
    let app = TestApp::spawn_with(&[("FERRY_REQ_PER_CLIENT", "1")]).await;
    let (path, token, addr) = limited_link(&app).await;
    // The request line, raw bytes and all, is quoted in nginx's error log.
    let raw = [
        format!("GET {path}&x=").as_bytes(),
        b"\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    .concat();
    crate::raw::flood(&addr, &raw, 8);
    let high = format!("{path}&x=\u{FFFD}\u{FFFD}");
    let after = format!("GET {path}&marker=after-high-bytes HTTP/1.1\r\nHost: x\r\n\r\n");
    crate::raw::flood(&addr, after.as_bytes(), 8);
    crate::helpers::eventually(
        Duration::from_secs(5),
        "later error-log lines are recorded",
        async || app.log().contains("marker=after-high-bytes"),
    )
    .await;
    let log = app.log();
    let redacted = path.replace(&token, "[redacted]");
    assert!(
        log.contains(&high.replace(&token, "[redacted]")),
        "the line that is not UTF-8 is recorded"
    );
    assert!(log.contains(&format!("{redacted}&marker=after-high-bytes")));
    assert!(!log.contains(&token), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_external_mode_the_error_log_comes_to_ferry_redacted() {
    let app = TestApp::spawn_with(&[("FERRY_NGINX", "external"), ("FERRY_REQ_PER_CLIENT", "1")]).await;
    let (path, token, addr) = limited_link(&app).await;
    // nginx in "another container": the config ferry rendered, run as compose runs it.
    let nginx = crate::raw::ExternalNginx::start(&app.path("state/nginx/nginx.conf"), &addr);
    let served = curl(&format!("{}{path}", app.public), &["-r", "0-9"]).await;
    assert_eq!(served.status, 206, "external nginx serves through ferry's check");
    let raw = [format!("GET {path}&x=").as_bytes(), b"\xff HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
    crate::raw::flood(&addr, &raw, 8);
    let after = format!("GET {path}&marker=external HTTP/1.1\r\nHost: x\r\n\r\n");
    crate::raw::flood(&addr, after.as_bytes(), 8);
    crate::helpers::eventually(Duration::from_secs(5), "nginx's error lines reach ferry", async || {
        app.log().contains("marker=external")
    })
    .await;
    let log = app.log();
    assert!(log.contains("limiting requests"), "{log}");
    assert!(log.contains(&format!("{}&marker=external", path.replace(&token, "[redacted]"))));
    assert!(!log.contains(&token), "a token reached ferry's log");
    let stderr = nginx.stderr_text();
    assert!(
        !stderr.contains(&token) && !stderr.contains("limiting"),
        "nginx's own stderr: {stderr}"
    );
}
