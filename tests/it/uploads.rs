//! Upload links (SPEC §12): files sent to the NAS through a link, with `curl -T`, with tus (the
//! tus project's own Python client, tuspy), and over raw HTTP for the cases no client makes on
//! purpose. Files land whole, under clean names, in the link's folder and nowhere else.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{EMPTY_REPLY, SmallDisk, TestApp, curl, eventually};

/// Makes an upload link; the status must be 201.
async fn upload_link(app: &TestApp, body: Value) -> Value {
    let (status, v) = upload_link_status(app, body).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["kind"], "upload", "{v}");
    v
}

async fn upload_link_status(app: &TestApp, body: Value) -> (u16, Value) {
    app.upload_link(body).await
}

fn url(link: &Value) -> String {
    link["upload_url"].as_str().unwrap().to_string()
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    crate::helpers::pseudo_random(len, seed)
}

/// `curl -T <file> <url>`: curl adds the file's name to a URL that ends with `/`.
async fn curl_t(file: &Path, url: &str) -> (i32, u16) {
    let r = curl(url, &["-T", file.to_str().unwrap()]).await;
    (r.exit, r.status)
}

/// The names in a folder of the data dir, sorted, hidden ones included.
fn names_in(app: &TestApp, folder: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(app.path("data").join(folder))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_t_lands_a_file_whole_and_a_second_of_the_same_name_beside_it() {
    let app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/inbox")).unwrap();
    let mut events = app.events().await;
    let link = upload_link(
        &app,
        json!({"folder": "inbox", "max_files": 2, "max_bytes": 100_000_000}),
    )
    .await;
    let u = url(&link);
    assert!(u.contains("/up/") && u.contains("/?t="), "{u}");
    let dir = tempfile::tempdir().unwrap();
    let scan = dir.path().join("scan.pdf");
    let first = bytes(50_000_000, 1);
    std::fs::write(&scan, &first).unwrap();
    assert_eq!(curl_t(&scan, &u).await, (0, 201), "{}", app.log());
    // The owner hears what arrived: its name, size and SHA-256.
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&first)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut heard = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(chunk)) = events.chunk().await {
            heard.push_str(&String::from_utf8_lossy(&chunk));
            if heard.contains(&digest) {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no received event with the file's SHA-256: {heard}");
    assert!(
        heard.contains("event: received") && heard.contains(r#""name":"scan.pdf","size":50000000"#),
        "{heard}"
    );
    let second = bytes(1_000, 2);
    std::fs::write(&scan, &second).unwrap();
    assert_eq!(curl_t(&scan, &u).await, (0, 201));
    assert_eq!(std::fs::read(app.path("data/inbox/scan.pdf")).unwrap(), first);
    assert_eq!(std::fs::read(app.path("data/inbox/scan (1).pdf")).unwrap(), second);
    // Its two places are used: the link closes as completed, and a third file gets 444.
    let id = link["tunnel_id"].as_str().unwrap();
    let t = app.closed(id, Duration::from_secs(10)).await;
    assert_eq!(t["close_reason"], "completed", "{t}");
    assert_eq!(t["kind"], "upload", "{t}");
    assert_eq!(t["file_count"], 2, "{t}");
    assert_eq!(t["bytes_received"], 50_001_000, "{t}");
    assert_eq!(curl_t(&scan, &u).await.0, EMPTY_REPLY);
    assert_eq!(
        names_in(&app, "inbox"),
        ["scan (1).pdf", "scan.pdf"],
        "no partial data is left"
    );
}

/// Runs a Python script with the upload URL and a file as arguments; it must succeed.
async fn python(script: &str, args: &[&str]) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python3 is installed");
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// tuspy uploads about half, stops, and a new uploader resumes from the server's offset.
const TUSPY: &str = r#"
import os, sys
from tusclient import client
url, path = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
c = client.TusClient(url)
first = c.uploader(path, chunk_size=8 << 20, metadata={"filename": "big.bin"})
while first.offset < size // 2:
    first.upload_chunk()
# As after a crash of the sender: only the upload's URL is kept.
again = c.uploader(path, url=first.url, chunk_size=8 << 20)
print("resumed at", again.get_offset(), "of", size)
again.upload()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn tuspy_resumes_from_the_servers_offset_and_the_file_lands_whole() {
    let app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/drop")).unwrap();
    let link = upload_link(&app, json!({"folder": "drop", "max_bytes": 200_000_000})).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.bin");
    let want = bytes(100_000_000, 3);
    std::fs::write(&file, &want).unwrap();
    let said = python(TUSPY, &[&url(&link), file.to_str().unwrap()]).await;
    let resumed_at: u64 = said.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((50_000_000..100_000_000).contains(&resumed_at), "{said}");
    assert_eq!(std::fs::read(app.path("data/drop/big.bin")).unwrap(), want);
    let id = link["tunnel_id"].as_str().unwrap();
    let t = app.closed(id, Duration::from_secs(10)).await;
    assert_eq!(
        (t["close_reason"].as_str(), t["bytes_received"].as_u64()),
        (Some("completed"), Some(100_000_000)),
        "{t}"
    );
    assert_eq!(names_in(&app, "drop"), ["big.bin"]);
    // nginx's access log saw the same bytes come in: the PATCH bodies add up to the file, with
    // no more than request lines and headers on top.
    let mut patched = (0, 0);
    eventually(Duration::from_secs(10), "every PATCH is logged", async || {
        let (_, stats) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
        let patches: Vec<u64> = stats["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["method"] == "PATCH" && r["status"] == 204)
            .map(|r| r["bytes_received"].as_u64().unwrap())
            .collect();
        patched = (patches.len() as u64, patches.iter().sum::<u64>());
        patched.1 >= 100_000_000
    })
    .await;
    let (requests, received) = patched;
    assert!(
        received - 100_000_000 <= requests * 1024,
        "{requests} PATCH requests read {received} bytes for a file of 100,000,000"
    );
}

/// A tus request over raw HTTP: (status, headers).
async fn tus(
    app: &TestApp,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap) {
    let url = if url.starts_with('/') {
        format!("{}{url}", app.public)
    } else {
        url.to_string()
    };
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .header("Tus-Resumable", "1.0.0")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    match req.send().await {
        Ok(r) => (r.status().as_u16(), r.headers().clone()),
        // 444: the connection closed with no response.
        Err(_) => (444, Default::default()),
    }
}

fn metadata(name: &str) -> String {
    use base64::Engine as _;
    format!("filename {}", base64::engine::general_purpose::STANDARD.encode(name))
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_answered_before_any_byte_is_stored() {
    let app = TestApp::spawn().await;
    let disk = SmallDisk::mount(app.path("data/small"), "100M");
    let link = upload_link(
        &app,
        json!({"folder": "small", "max_files": 3, "max_bytes": 1_000_000_000}),
    )
    .await;
    let u = url(&link);
    let create = |len: u64, name: &str| vec![("Upload-Length", len.to_string()), ("Upload-Metadata", metadata(name))];
    // Over max_bytes: 413. Over the free space (less a margin): 507.
    assert_eq!(
        tus(&app, "POST", &u, &create(2_000_000_000, "huge.bin"), vec![])
            .await
            .0,
        413
    );
    assert_eq!(
        tus(&app, "POST", &u, &create(60_000_000, "big.bin"), vec![]).await.0,
        507
    );
    // A hostile name is cleaned, and the file lands in the folder.
    let (status, h) = tus(&app, "POST", &u, &create(10, "../../evil\u{202E}txt.exe"), vec![]).await;
    assert_eq!(status, 201);
    let at = h["location"].to_str().unwrap().to_string();
    // A PATCH longer than the upload is refused (413) and nothing of it is kept.
    let patch = |offset: u64| {
        vec![
            ("Upload-Offset", offset.to_string()),
            ("Content-Type", "application/offset+octet-stream".to_string()),
        ]
    };
    assert_eq!(tus(&app, "PATCH", &at, &patch(0), vec![7; 20]).await.0, 413);
    let (status, h) = tus(&app, "HEAD", &at, &[], vec![]).await;
    assert_eq!((status, h["upload-offset"].to_str().unwrap()), (200, "0"));
    // A wrong offset: 409 with the right one.
    assert_eq!(tus(&app, "PATCH", &at, &patch(5), vec![7; 5]).await.0, 409);
    assert_eq!(tus(&app, "PATCH", &at, &patch(0), vec![7; 4]).await.0, 204);
    assert_eq!(tus(&app, "PATCH", &at, &patch(4), vec![7; 6]).await.0, 204);
    assert_eq!(names_in(&app, "small"), ["____evil_txt.exe"]);
    assert_eq!(std::fs::read(disk.0.join("____evil_txt.exe")).unwrap(), vec![7; 10]);
    // A token for another link, or none: 444.
    let other = u.replace("?t=", "?t=x");
    assert_eq!(tus(&app, "POST", &other, &create(10, "a"), vec![]).await.0, 444);
    let id = link["tunnel_id"].as_str().unwrap();
    assert_eq!(app.terminate(id).await, 204);
    assert_eq!(
        tus(&app, "POST", &u, &create(10, "late.bin"), vec![]).await.0,
        444,
        "after termination"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_upload_link_refuses_and_keeps_nothing() {
    let app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/late")).unwrap();
    let link = upload_link(
        &app,
        json!({"folder": "late", "max_bytes": 1000, "expires_in_seconds": 1}),
    )
    .await;
    // A link's expiry is rounded up to the whole second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let create = vec![
        ("Upload-Length", "10".to_string()),
        ("Upload-Metadata", metadata("late.txt")),
    ];
    assert_eq!(tus(&app, "POST", &url(&link), &create, vec![]).await.0, 444);
    let t = app
        .closed(link["tunnel_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(t["close_reason"], "expired", "{t}");
    assert_eq!(names_in(&app, "late"), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_past_max_bytes_is_cut_off_and_nothing_kept() {
    let app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/in")).unwrap();
    let link = upload_link(&app, json!({"folder": "in", "max_files": 2, "max_bytes": 1_000_000})).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("too-big.bin");
    std::fs::write(&file, bytes(3_000_000, 4)).unwrap();
    // Declared: 413 before the body is read.
    let r = curl(&url(&link), &["-T", file.to_str().unwrap()]).await;
    assert_eq!(r.status, 413);
    // Undeclared (chunked): the connection is cut when the body passes max_bytes.
    let r = curl(
        &url(&link),
        &["-T", file.to_str().unwrap(), "-H", "Transfer-Encoding: chunked"],
    )
    .await;
    assert_ne!(r.status, 201, "a chunked body over max_bytes must not be stored");
    assert_eq!(
        names_in(&app, "in"),
        Vec::<String>::new(),
        "nothing kept, no partial folder left"
    );
    // Neither took a place: two files still fit.
    for n in 0..2 {
        let small = dir.path().join(format!("ok{n}.txt"));
        std::fs::write(&small, b"fits").unwrap();
        assert_eq!(curl_t(&small, &url(&link)).await, (0, 201));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_resumes_after_ferry_is_killed_and_a_closed_link_leaves_no_partial_data() {
    let mut app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/kept")).unwrap();
    let link = upload_link(&app, json!({"folder": "kept", "max_files": 2, "max_bytes": 1_000_000})).await;
    let u = url(&link);
    let create = vec![
        ("Upload-Length", "1000".to_string()),
        ("Upload-Metadata", metadata("a.txt")),
    ];
    let (_, h) = tus(&app, "POST", &u, &create, vec![]).await;
    let at = h["location"].to_str().unwrap().to_string();
    let patch = |offset: u64| {
        vec![
            ("Upload-Offset", offset.to_string()),
            ("Content-Type", "application/offset+octet-stream".to_string()),
        ]
    };
    let content = bytes(1000, 5);
    assert_eq!(tus(&app, "PATCH", &at, &patch(0), content[..600].to_vec()).await.0, 204);
    app.kill9().await;
    app.start().await;
    let (status, h) = tus(&app, "HEAD", &at, &[], vec![]).await;
    assert_eq!((status, h["upload-offset"].to_str().unwrap()), (200, "600"));
    assert_eq!(
        names_in(&app, "kept"),
        [".ferry-partial"],
        "the folder never holds a partial file"
    );
    assert_eq!(
        tus(&app, "PATCH", &at, &patch(600), content[600..].to_vec()).await.0,
        204
    );
    assert_eq!(std::fs::read(app.path("data/kept/a.txt")).unwrap(), content);
    // A second upload, abandoned halfway; the link is ended: its partial data goes.
    let create = vec![
        ("Upload-Length", "1000".to_string()),
        ("Upload-Metadata", metadata("b.txt")),
    ];
    let (_, h) = tus(&app, "POST", &u, &create, vec![]).await;
    let at = h["location"].to_str().unwrap().to_string();
    assert_eq!(tus(&app, "PATCH", &at, &patch(0), content[..300].to_vec()).await.0, 204);
    assert_eq!(app.terminate(link["tunnel_id"].as_str().unwrap()).await, 204);
    assert_eq!(names_in(&app, "kept"), ["a.txt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_that_is_missing_symlinked_or_read_only_is_refused_at_creation() {
    let app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/real")).unwrap();
    std::os::unix::fs::symlink("real", app.path("data/alias")).unwrap();
    app.data_file("file.txt", 10);
    let ro = SmallDisk::mount(app.path("data/ro"), "1M");
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro.0)
        .status();
    assert!(remount.unwrap().success(), "remount read-only");
    for (body, status, words) in [
        (
            json!({"folder": "nowhere", "max_bytes": 10}),
            404,
            "folder: no such file",
        ),
        (json!({"folder": "alias", "max_bytes": 10}), 400, "symlink"),
        (json!({"folder": "file.txt", "max_bytes": 10}), 400, "not a folder"),
        (json!({"folder": "ro", "max_bytes": 10}), 409, "cannot write"),
        (json!({"folder": "real"}), 400, "max_bytes: required"),
        (
            json!({"folder": "real", "max_bytes": 0}),
            400,
            "max_bytes: must be at least 1",
        ),
        (
            json!({"folder": "real", "max_bytes": 10, "max_files": 0}),
            400,
            "max_files",
        ),
        (json!({"folder": "../etc", "max_bytes": 10}), 400, "folder"),
        (
            json!({"folder": "", "max_bytes": 10}),
            400,
            "folder: name a folder inside",
        ),
        (
            json!({"folder": "real", "max_bytes": 9_223_372_036_854_775_808_u64}),
            400,
            "max_bytes: too large",
        ),
    ] {
        let (got, v) = upload_link_status(&app, body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        assert!(v.to_string().contains(words), "{body}: {v} should say {words:?}");
    }
    let _ = std::process::Command::new("mount")
        .args(["-o", "remount,rw"])
        .arg(&ro.0)
        .status();
}

/// Every file under `dir`, as paths relative to it, hidden ones included.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                found.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

/// A `PUT` names its file by the URL's last segment, which a sender writes as they like: each
/// hostile name lands cleaned inside the folder, or is refused with nginx's 444. Nothing lands
/// anywhere else in the data dir.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_in_a_put_url_land_cleaned_in_the_folder_or_are_refused() {
    let app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/drop")).unwrap();
    std::fs::create_dir_all(app.path("data/private")).unwrap();
    let link = upload_link(&app, json!({"folder": "drop", "max_bytes": 1000, "max_files": 20})).await;
    let (base, query) = url(&link)
        .split_once('?')
        .map(|(b, q)| (b.to_string(), q.to_string()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, b"twelve bytes").unwrap();
    let long = "x".repeat(300);
    // (the raw last segment, the name it must land as, or None for a refusal)
    let cases: Vec<(&str, Option<&str>)> = vec![
        // nginx decodes these before it matches a location, so they never reach ferry.
        ("..%2F..%2Fprivate%2Fescaped.txt", None),
        ("%2E%2E%2Fup.txt", None),
        ("sub%2Fname.txt", None),
        ("%01bell%1B%5B31m.txt", Some("_bell_[31m.txt")),
        (".bashrc", Some("bashrc")),
        ("-rf", Some("rf")),
        ("report%E2%80%AEfdp.exe", Some("report_fdp.exe")),
        ("trailing.%20.%20", Some("trailing")),
        ("a%3Cb%3E%3A%22%7C%3F%2A%5Cc", Some("a_b_______c")),
        (&long, Some(&long[..255])),
        ("bad%FFutf8", None),
        ("nul%00byte", None),
    ];
    for (raw, want) in &cases {
        let before = names_in(&app, "drop");
        let r = curl(
            &format!("{base}{raw}?{query}"),
            &["--path-as-is", "-T", file.to_str().unwrap()],
        )
        .await;
        let after = names_in(&app, "drop");
        let new: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
        match want {
            Some(name) => {
                assert_eq!((r.exit, r.status), (0, 201), "{raw}");
                assert_eq!(new, [name], "{raw}");
                assert_eq!(
                    std::fs::read(app.path("data/drop").join(name)).unwrap(),
                    b"twelve bytes"
                );
            }
            None => {
                assert_eq!(r.exit, EMPTY_REPLY, "{raw} must be refused with 444, got {}", r.status);
                assert!(new.is_empty(), "{raw} left {new:?}");
            }
        }
    }
    let landed = cases.iter().filter(|c| c.1.is_some()).count();
    let everything = files_under(&app.path("data"));
    assert_eq!(everything.len(), landed, "only the folder gained files: {everything:?}");
    assert!(everything.iter().all(|p| p.starts_with("drop/")), "{everything:?}");
}

/// The folder is swapped for a symlink to a folder outside the data dir after the link was made:
/// nothing is written through it, and the link closes as `error`.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_folder_swapped_for_a_symlink_receives_nothing() {
    let app = TestApp::spawn().await;
    std::fs::create_dir_all(app.path("data/drop")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let link = upload_link(&app, json!({"folder": "drop", "max_bytes": 1000})).await;
    std::fs::rename(app.path("data/drop"), app.path("data/drop-was")).unwrap();
    std::os::unix::fs::symlink(outside.path(), app.path("data/drop")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("note.txt");
    std::fs::write(&file, b"twelve bytes").unwrap();
    let (exit, _) = curl_t(&file, &url(&link)).await;
    assert_eq!(exit, EMPTY_REPLY, "an upload through a swapped folder is refused");
    assert!(files_under(outside.path()).is_empty(), "nothing was written outside");
    assert!(
        files_under(&app.path("data/drop-was")).is_empty(),
        "{:?}",
        files_under(&app.path("data/drop-was"))
    );
    let t = app
        .closed(link["tunnel_id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    assert_eq!(t["close_reason"], "error", "{t}");
}
