//! The `ferry` client commands against a running ferry: output, `--json`, `--wait`, exit codes.

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{EMPTY_REPLY, TestApp, curl};

const TOKEN: &str = "cli-test-admin-token";

fn ferry(app: &TestApp, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(args)
        .env("FERRY_URL", &app.admin)
        .env("FERRY_ADMIN_TOKEN", TOKEN);
    c
}

async fn run(app: &TestApp, args: &[&str]) -> Output {
    ferry(app, args).output().await.unwrap()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn share_ls_rm_history_round_trip() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    app.data_file("photos/beach.jpg", 2048);

    let o = run(
        &app,
        &[
            "share",
            "photos/beach.jpg",
            "--expires",
            "15m",
            "--max-downloads",
            "2",
            "--note",
            "mum",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let created = json(&o);
    let id = created["tunnel_id"].as_str().unwrap().to_string();
    assert_eq!(created["expires_in_seconds"], 900);
    let o = run(&app, &["share", "photos/beach.jpg"]).await;
    assert!(o.status.success());
    let human = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        human.starts_with("http://") && human.contains("/beach.jpg?t="),
        "{human}"
    );

    let o = run(&app, &["ls"]).await;
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.starts_with("ID") && table.contains(&id) && table.contains("photos/beach.jpg"),
        "{table}"
    );
    let o = run(&app, &["ls", "--json"]).await;
    assert_eq!(json(&o)["tunnels"].as_array().unwrap().len(), 2);

    let o = run(&app, &["rm", &id]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("terminated {id}")));
    let o = run(&app, &["history", "--json"]).await;
    let h = json(&o);
    assert_eq!(h["tunnels"][0]["tunnel_id"], id.as_str());
    assert_eq!(h["tunnels"][0]["close_reason"], "terminated");
    let o = run(&app, &["history"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("terminated"));

    let o = run(&app, &["files", "photos"]).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("photos/beach.jpg"),
        "{}",
        text(&o)
    );
    let o = run(&app, &["files", "--search", "BEACH", "--json"]).await;
    assert_eq!(json(&o)["entries"][0]["path"], "photos/beach.jpg");
    let o = run(&app, &["status"]).await;
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("nginx"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_unknown_ids_and_unreachable_servers_exit_as_documented() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    app.data_file("a.txt", 10);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["share", "../etc/passwd"], 1, "file_path"),
        (vec!["share", "missing.txt"], 1, "no such file"),
        (vec!["share", "a.txt", "--expires", "soon"], 2, "90s"),
        (vec!["share", "a.txt", "--expires", "10d"], 1, "expires_in_seconds"),
        (vec!["rm", "AAAAAAAAAAAAAAAAAAAAAAAA"], 1, "AAAAAAAAAAAAAAAAAAAAAAAA"),
        (vec!["frobnicate"], 2, "unrecognized"),
    ];
    for (args, code, needle) in cases {
        let o = run(&app, &args).await;
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    let o = ferry(&app, &["ls"])
        .env("FERRY_ADMIN_TOKEN", "wrong-token")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("FERRY_ADMIN_TOKEN"));
    let o = ferry(&app, &["ls"])
        .env("FERRY_URL", format!("http://127.0.0.1:{}", crate::helpers::free_port()))
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("cannot reach ferry"));
    let o = ferry(&app, &["rm", "AAAAAAAAAAAAAAAAAAAAAAAA", "--json"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(json(&o)["error"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn share_wait_follows_the_download_and_exits_by_how_the_link_closed() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    let bytes = app.data_file("video.mp4", 8_000_000);

    // Completed: exit 0.
    let mut waiting = ferry(&app, &["share", "video.mp4", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = read_url(&mut waiting).await;
    let r = curl(&url, &["--limit-rate", "4M"]).await;
    assert!(r.exit == 0 && r.body == bytes);
    let o = tokio::time::timeout(Duration::from_secs(20), waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("100%") && err.contains("link completed"), "{err}");

    // Terminated while waiting: exit 4.
    let mut waiting = ferry(&app, &["share", "video.mp4", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = read_url(&mut waiting).await;
    let id = url.split("/s/").nth(1).unwrap().split('/').next().unwrap().to_string();
    let o = run(&app, &["rm", &id]).await;
    assert!(o.status.success());
    let o = tokio::time::timeout(Duration::from_secs(20), waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("link terminated"));
}

/// Reads the first stdout line of a running `share` (its URL).
async fn read_url(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.as_mut().unwrap();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    line.trim().to_string()
}

/// `ferry files` shows a big folder a page at a time and says what is left.
#[tokio::test(flavor = "multi_thread")]
async fn files_come_a_page_at_a_time() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    for n in 0..5 {
        app.data_file(&format!("scans/page-{n}.pdf"), 10);
    }
    let o = run(&app, &["files", "scans", "--limit", "2"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("scans/page-0.pdf") && out.contains("scans/page-1.pdf"),
        "{out}"
    );
    assert!(!out.contains("page-2"), "{out}");
    assert!(out.contains("3 more of 5: --offset 2"), "{out}");
    let o = run(&app, &["files", "scans", "--offset", "4", "--limit", "2"]).await;
    let out = text(&o);
    assert!(out.contains("scans/page-4.pdf") && !out.contains("more of"), "{out}");
    let o = run(&app, &["files", "scans", "--limit", "0"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("limit:"), "{}", text(&o));
}

/// `ferry share a.jpg b.jpg photos/` shares all three as one ZIP that `unzip -t` accepts, and says
/// what it left out of it.
#[tokio::test(flavor = "multi_thread")]
async fn share_several_paths_as_one_zip() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    app.data_file("a.jpg", 3_000);
    app.data_file("b.jpg", 2_000);
    app.data_file("photos/beach.jpg", 50_000);
    app.data_file("photos/.thumbs", 10);

    let o = run(&app, &["share", "a.jpg", "b.jpg", "photos/", "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let created = json(&o);
    assert_eq!(created["kind"], "zip", "{created}");
    assert_eq!(created["skipped"][0]["path"], "photos/.thumbs", "{created}");
    let url = created["download_url"].as_str().unwrap();
    assert!(url.contains(".zip?t="), "{url}");

    let got = curl(url, &["-f"]).await;
    assert_eq!((got.exit, got.status), (0, 200));
    assert_eq!(got.body.len() as u64, created["file_size"].as_u64().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("shared.zip");
    std::fs::write(&saved, &got.body).unwrap();
    let listing = crate::clients::run("unzip", "unzip", &["-t", "shared.zip"], dir.path()).await;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for name in ["a.jpg", "b.jpg", "photos/beach.jpg", "No errors detected"] {
        assert!(listing.contains(name), "{name}: {listing}");
    }

    // A folder alone is one ZIP too; people read its size and what was left out.
    let o = run(&app, &["share", "photos/"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let human = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = human.lines().collect();
    assert!(lines[0].contains("/photos.zip?t="), "{human}");
    assert!(
        lines[1].starts_with("zip archive 50.") && lines[1].contains("expires"),
        "{human}"
    );
    assert!(human.contains("photos/.thumbs: hidden"), "{human}");
    let o = run(&app, &["share", "a.jpg", "missing.jpg"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("missing.jpg"), "{}", text(&o));
}

/// `ferry receive` makes an upload link: `--json` gives the server's answer, the link is an
/// upload link with the limits asked for, and a file sent with `curl -T` lands in the folder (one
/// over the limit is refused with 413). People get the URL first, then the limits.
#[tokio::test(flavor = "multi_thread")]
async fn receive_makes_an_upload_link_that_curl_can_fill() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    std::fs::create_dir(app.path("data/inbox")).unwrap();

    let o = run(&app, &["receive", "inbox", "--max-bytes", "10M", "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let created = json(&o);
    assert_eq!(created["folder"], "inbox", "{created}");
    assert_eq!(created["max_bytes"], 10 << 20, "{created}");
    assert_eq!(created["max_files"], 1, "{created}");
    let url = created["upload_url"].as_str().unwrap().to_string();
    assert!(url.contains("/up/") && url.contains("/?t="), "{url}");
    let id = created["tunnel_id"].as_str().unwrap().to_string();
    let stats = app.get(&format!("/admin/tunnels/{id}/stats")).await.1;
    let t = &stats["tunnel"];
    assert_eq!(
        (&t["kind"], &t["file_path"]),
        (&json!("upload"), &json!("inbox")),
        "{t}"
    );
    assert_eq!(t["upload"]["max_bytes"], 10 << 20, "{t}");
    assert_eq!(t["upload"]["max_files"], 1, "{t}");

    let sender = tempfile::tempdir().unwrap();
    let big = sender.path().join("too-big.bin");
    std::fs::File::create(&big).unwrap().set_len((10 << 20) + 1).unwrap();
    let r = curl(&url, &["-T", big.to_str().unwrap()]).await;
    assert_eq!(r.status, 413, "one byte over --max-bytes");
    let letter = sender.path().join("letter.txt");
    std::fs::write(&letter, "dear ferry, here it is\n").unwrap();
    let r = curl(&url, &["-T", letter.to_str().unwrap()]).await;
    assert_eq!((r.exit, r.status), (0, 201), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        std::fs::read_to_string(app.path("data/inbox/letter.txt")).unwrap(),
        "dear ferry, here it is\n"
    );
    assert!(!app.path("data/inbox/too-big.bin").exists());
    let closed = app.closed(&id, Duration::from_secs(10)).await;
    assert_eq!(closed["close_reason"], "completed", "{closed}");
    assert_eq!(closed["files"][0]["name"], "letter.txt", "{closed}");

    let o = run(
        &app,
        &[
            "receive",
            "inbox/",
            "--max-bytes",
            "2G",
            "--max-files",
            "3",
            "--expires",
            "15m",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let human = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = human.lines().collect();
    assert!(lines[0].starts_with("http://") && lines[0].contains("/up/"), "{human}");
    assert!(
        lines[1].starts_with("receives up to 3 files of at most 2 GiB each into inbox/ · expires "),
        "{human}"
    );
}

/// `ferry receive` fails as `share` does: bad sizes are usage errors, a folder the server refuses
/// is the server refusing.
#[tokio::test(flavor = "multi_thread")]
async fn receive_exits_as_documented() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    std::fs::create_dir(app.path("data/inbox")).unwrap();
    app.data_file("notes.txt", 10);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["receive", "inbox", "--max-bytes", "2X"], 2, "500M"),
        (vec!["receive", "inbox", "--max-bytes", "0"], 2, "at least 1 byte"),
        (vec!["receive", "inbox"], 2, "--max-bytes"),
        (vec!["receive", "nowhere", "--max-bytes", "1M"], 1, "folder"),
        (vec!["receive", "../etc", "--max-bytes", "1M"], 1, "folder"),
        (vec!["receive", "notes.txt", "--max-bytes", "1M"], 1, "folder"),
        (
            vec!["receive", "inbox", "--max-bytes", "1M", "--expires", "10d"],
            1,
            "expires_in_seconds",
        ),
    ];
    for (args, code, needle) in cases {
        let o = run(&app, &args).await;
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    let o = run(&app, &["receive", "nowhere", "--max-bytes", "1M", "--json"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(json(&o)["error"].as_str().unwrap().contains("folder"), "{}", text(&o));
}

/// `ferry share --password-file`, `ferry edit` and `ferry rotate` against a real ferry: curl needs
/// the password (`-u :PW`) exactly while one is set, an extended or explicit expiry and new limits
/// reach the link, the old URL gets 444 after a rotation and the new one works, and a closed or
/// unknown link makes `edit` and `rotate` exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn edit_rotate_and_passwords_end_to_end() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    let bytes = app.data_file("report.pdf", 50_000);
    let secret = app.path("pw.txt");
    std::fs::write(&secret, "open sesame\n").unwrap();

    let o = run(
        &app,
        &["share", "report.pdf", "--max-downloads", "5", "--expires", "15m"]
            .into_iter()
            .chain(["--password-file", secret.to_str().unwrap(), "--json"])
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let created = json(&o);
    let id = created["tunnel_id"].as_str().unwrap().to_string();
    let url = created["download_url"].as_str().unwrap().to_string();
    assert_eq!(curl(&url, &[]).await.status, 401, "no password");
    assert_eq!(curl(&url, &["-u", ":wrong"]).await.status, 401, "a wrong password");
    let got = curl(&url, &["-u", ":open sesame"]).await;
    assert!(got.status == 200 && got.body == bytes, "the password opens it");
    downloads_completed(&app, &id, 1).await;

    edit_the_link(&app, &id, &url, &created["expires_at"], &bytes).await;
    let new_url = rotate_the_link(&app, &id, &url, &bytes).await;

    assert!(run(&app, &["rm", &id]).await.status.success());
    for args in [
        vec!["edit", &id, "--max-downloads", "9"],
        vec!["edit", &id, "--extend", "1m"],
        vec!["rotate", &id],
    ] {
        let o = run(&app, &args).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("409") && text(&o).contains("closed"),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert_eq!(curl(&new_url, &["-u", ":second"]).await.exit, EMPTY_REPLY);
    let o = run(&app, &["edit", "AAAAAAAAAAAAAAAAAAAAAAAA", "--rate", "1M", "--json"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(json(&o)["error"].as_str().unwrap().contains("404"), "{}", text(&o));
}

/// Each `ferry edit` of the test above, and what curl and the API see afterwards.
async fn edit_the_link(app: &TestApp, id: &str, url: &str, expires_at: &Value, bytes: &[u8]) {
    let o = run(app, &["edit", id, "--no-password", "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["password"], false, "{}", text(&o));
    let got = curl(url, &[]).await;
    assert!(got.status == 200 && got.body == bytes, "no password any more");
    downloads_completed(app, id, 2).await;

    let mut set = ferry(app, &["edit", id, "--password-file", "-"]);
    let o = with_stdin(&mut set, b"second\n").await;
    assert!(o.status.success(), "{}", text(&o));
    let human = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        human.starts_with(&format!("edited {id}\n")) && human.contains("password   required"),
        "{human}"
    );
    assert_eq!(curl(url, &["-I"]).await.status, 401);
    assert_eq!(
        curl(url, &["-I", "-u", ":open sesame"]).await.status,
        401,
        "the old password"
    );
    assert_eq!(
        curl(url, &["-I", "-u", "anyone:second"]).await.status,
        200,
        "any user name"
    );

    let o = run(app, &["edit", id, "--extend", "10m", "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let t = json(&o);
    assert_eq!(millis(&t["expires_at"]) - millis(expires_at), 600_000, "{t}");
    let o = run(app, &["edit", id, "--extend", "2h"]).await;
    assert_eq!(o.status.code(), Some(1), "past the link's ceiling: {}", text(&o));
    assert!(text(&o).contains("expires_at: must be at most"), "{}", text(&o));

    let later = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(1800));
    let offset = shift_to_plus_two(&later.to_string());
    let o = run(
        app,
        &[
            "edit",
            id,
            "--expires-at",
            &offset,
            "--max-downloads",
            "7",
            "--rate",
            "2M",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let t = json(&o);
    assert_eq!(millis(&t["expires_at"]), millis(&json!(later.to_string())), "{t}");
    assert_eq!(
        (&t["max_downloads"], &t["rate_limit_bytes_per_second"]),
        (&json!(7), &json!(2 << 20))
    );

    let o = run(app, &["edit", id, "--max-downloads", "1"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("max_downloads: must be at least 2"), "{}", text(&o));
    let o = run(app, &["edit", id]).await;
    assert_eq!(o.status.code(), Some(2), "nothing to change: {}", text(&o));
    let o = run(app, &["edit", id, "--password", "a", "--no-password"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(app, &["edit", id, "--password-file", "/nonexistent/pw"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--password-file /nonexistent/pw"), "{}", text(&o));
}

/// `ferry rotate`, for people and with `--json`: the new URL, after checking that the old one is
/// refused with 444 and the new one serves the file (to wget, with the password).
async fn rotate_the_link(app: &TestApp, id: &str, url: &str, bytes: &[u8]) -> String {
    let o = run(app, &["rotate", id]).await;
    assert!(o.status.success(), "{}", text(&o));
    let human = String::from_utf8_lossy(&o.stdout).to_string();
    let first = human.lines().next().unwrap().to_string();
    assert!(
        first.contains(&format!("/s/{id}/report.pdf?t=")) && first != url,
        "{human}"
    );
    assert!(human.contains("the old URL no longer works"), "{human}");
    assert_eq!(curl(url, &["-u", ":second"]).await.exit, EMPTY_REPLY, "the old URL");
    // wget sends a password only with a user name (any will do).
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "-q",
        "--user=x",
        "--password=second",
        "-O",
        "report.pdf",
        first.as_str(),
    ];
    crate::clients::run("wget", "wget", &args, dir.path()).await;
    assert!(
        std::fs::read(dir.path().join("report.pdf")).unwrap() == bytes,
        "the new URL"
    );

    let o = run(app, &["rotate", id, "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["tunnel_id"], id);
    let newest = r["download_url"].as_str().unwrap().to_string();
    assert_ne!(newest, first);
    assert_eq!(curl(&first, &["-I", "-u", ":second"]).await.exit, EMPTY_REPLY);
    assert_eq!(curl(&newest, &["-I", "-u", ":second"]).await.status, 200);
    newest
}

/// `ferry receive --password`: a sender needs it too; without it, or with a wrong one, nothing is
/// stored.
#[tokio::test(flavor = "multi_thread")]
async fn receive_with_a_password() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    std::fs::create_dir(app.path("data/inbox")).unwrap();
    let o = run(
        &app,
        &["receive", "inbox", "--max-bytes", "1M", "--password", "drop it here"],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let human = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(human.contains("recipients are asked for the password"), "{human}");
    let url = human.lines().next().unwrap().to_string();
    let sender = tempfile::tempdir().unwrap();
    let letter = sender.path().join("letter.txt");
    std::fs::write(&letter, "hello\n").unwrap();
    for wrong in [&[][..], &["-u", ":guess"]] {
        let r = curl(&url, &[&["-T", letter.to_str().unwrap()], wrong].concat()).await;
        assert_eq!(r.status, 401, "{wrong:?}: the sender is asked for the password");
        assert!(!app.path("data/inbox/letter.txt").exists(), "{wrong:?}");
    }
    let r = curl(&url, &["-T", letter.to_str().unwrap(), "-u", ":drop it here"]).await;
    assert_eq!((r.exit, r.status), (0, 201), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        std::fs::read_to_string(app.path("data/inbox/letter.txt")).unwrap(),
        "hello\n"
    );
}

/// Waits until link `id` counts `n` complete downloads (its access-log lines are settled), so
/// that the next download takes a slot of its own.
async fn downloads_completed(app: &TestApp, id: &str, n: u64) {
    crate::helpers::eventually(Duration::from_secs(10), "the download is counted", async || {
        let stats = app.get(&format!("/admin/tunnels/{id}/stats")).await.1;
        stats["tunnel"]["downloads_completed"] == n
    })
    .await;
}

/// Runs a prepared `ferry` command with `input` on its standard input.
async fn with_stdin(c: &mut Command, input: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// `2025-06-01T18:00:00Z` written as the same moment at +02:00: `2025-06-01T20:00:00+02:00`.
fn shift_to_plus_two(utc: &str) -> String {
    let at = humantime::parse_rfc3339(utc).unwrap() + Duration::from_secs(7200);
    let local = humantime::format_rfc3339_seconds(at).to_string();
    format!("{}+02:00", local.trim_end_matches('Z'))
}

fn millis(t: &Value) -> u128 {
    let t = humantime::parse_rfc3339(t.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}
