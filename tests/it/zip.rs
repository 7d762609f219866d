//! ZIP links (SPEC §11): a folder, or several paths, shared as one stored ZIP whose length is known
//! at creation. Every archive tool nobody here wrote opens it, download managers split and resume
//! it like a file, and a member that changes mid-download closes the link without the recipient
//! ever getting a byte of the new version.

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::clients::{Served, Shared, aria2c, curl_resumes, run, wget_continues};
use crate::helpers::{EMPTY_REPLY, TestApp, curl};

/// Writes `bytes` at `rel` in the data dir.
fn put(app: &TestApp, rel: &str, bytes: &[u8]) {
    let p = app.path("data").join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A sparse file of `len` bytes (all zeros) at `rel` in the data dir: cheap however large.
fn sparse(app: &TestApp, rel: &str, len: u64) {
    let p = app.path("data").join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::File::create(p).unwrap().set_len(len).unwrap();
}

/// Creates a link and returns its response, which must be 201.
async fn created(app: &TestApp, body: Value) -> Value {
    let (status, link) = app.create(body).await;
    assert_eq!(status, 201, "{link}");
    assert_eq!(link["kind"], "zip", "{link}");
    link
}

fn url(link: &Value) -> String {
    link["download_url"].as_str().unwrap().to_string()
}

/// Downloads a whole link with curl, which must succeed.
async fn download(link: &Value) -> Vec<u8> {
    let got = curl(&url(link), &["-f"]).await;
    assert_eq!((got.exit, got.status), (0, 200), "{link}");
    assert_eq!(got.body.len() as u64, link["file_size"].as_u64().unwrap(), "{link}");
    got.body
}

/// Runs a tool on the archive at `zip`, which must succeed.
async fn tool(program: &str, package: &str, args: &[&str], zip: &Path) {
    let mut all = args.to_vec();
    all.push(zip.to_str().unwrap());
    run(program, package, &all, zip.parent().unwrap()).await;
}

/// Python's `zipfile`: `testzip()` finds no bad CRC, and every member is extracted under `out`
/// when there is one.
async fn python_extracts(zip: &Path, out: Option<&Path>) {
    let script = "import sys, zipfile\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        bad = z.testzip()\n\
        assert bad is None, bad\n\
        if len(sys.argv) > 2: z.extractall(sys.argv[2])\n";
    let mut args = vec!["-c", script, zip.to_str().unwrap()];
    args.extend(out.and_then(Path::to_str));
    let o = Command::new("python3")
        .args(args)
        .output()
        .await
        .expect("python3 is installed");
    assert!(o.status.success(), "zipfile: {}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_becomes_one_zip_that_every_tool_opens() {
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "1")]).await;
    let a = app.data_file("Album/a.jpg", 200_000);
    let b = app.data_file("Album/sub/b.txt", 1_000);
    let c = app.data_file("Album/Ünïcødé 日本.txt", 50_000);
    put(&app, "Album/empty.txt", b"");
    put(&app, "Album/.hidden", b"not shared");
    put(&app, "Private/secret.txt", b"the private secret");
    let data = app.path("data");
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(data.join("Album").join(latin1), b"latin-1 name").unwrap();
    symlink("sub/b.txt", data.join("Album/inside.txt")).unwrap();
    symlink("sub", data.join("Album/again")).unwrap();
    symlink("../Private", data.join("Album/out")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(data.join("Album/pipe"))
        .status();
    assert!(fifo.unwrap().success(), "mkfifo");

    let link = created(&app, json!({ "file_path": "Album" })).await;
    let u = url(&link);
    assert!(u.contains("/Album.zip?t="), "{u}");
    let skipped = link["skipped"].to_string();
    for (path, why) in [
        ("Album/out", "leads out of the shared folder"),
        ("Album/pipe", "not a regular file"),
        ("Album/again", "already included"),
        ("Album/.hidden", "hidden"),
    ] {
        let said = link["skipped"].as_array().unwrap().iter().find(|s| s["path"] == path);
        assert!(
            said.is_some_and(|s| s["reason"].as_str().unwrap().contains(why)),
            "{path}: {skipped}"
        );
    }

    // HEAD tells the archive's length before anything is sent.
    let head = curl(&u, &["-I"]).await;
    assert_eq!(head.status, 200);

    let zip = download(&link).await;
    assert!(
        !zip.windows(10).any(|w| w == b"the privat"),
        "a symlink out of the folder was followed"
    );
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("Album.zip");
    std::fs::write(&saved, &zip).unwrap();
    tool("unzip", "unzip", &["-tq"], &saved).await;
    tool("7z", "p7zip-full", &["t"], &saved).await;
    tool("bsdtar", "libarchive-tools", &["-tf"], &saved).await;
    let out = dir.path().join("out");
    python_extracts(&saved, Some(&out)).await;
    assert_eq!(std::fs::read(out.join("a.jpg")).unwrap(), a);
    assert_eq!(std::fs::read(out.join("sub/b.txt")).unwrap(), b);
    assert_eq!(
        std::fs::read(out.join("inside.txt")).unwrap(),
        b,
        "a symlink inside is followed"
    );
    assert_eq!(std::fs::read(out.join("Ünïcødé 日本.txt")).unwrap(), c);
    assert_eq!(std::fs::read(out.join("caf%E9.txt")).unwrap(), b"latin-1 name");
    assert_eq!(std::fs::read(out.join("empty.txt")).unwrap(), b"");
    for left_out in [".hidden", "out", "pipe", "again"] {
        assert!(!out.join(left_out).exists(), "{left_out} is in the archive");
    }

    let id = link["tunnel_id"].as_str().unwrap();
    let t = app.closed(id, Duration::from_secs(30)).await;
    assert_eq!(t["close_reason"], "completed", "{t}");
    assert_eq!(t["bytes_served"].as_u64(), link["file_size"].as_u64(), "{t}");
    assert_eq!(t["kind"], "zip", "{t}");
    assert_eq!(curl(&u, &[]).await.exit, EMPTY_REPLY, "a completed ZIP link gets 444");
}

#[tokio::test(flavor = "multi_thread")]
async fn several_paths_share_as_one_zip_and_bad_requests_name_the_field() {
    let app = TestApp::spawn_with(&[("FERRY_ZIP_MAX_FILES", "3")]).await;
    let a = app.data_file("Photos/a.jpg", 3_000);
    let x = app.data_file("Docs/x.txt", 2_000);
    std::fs::create_dir_all(app.path("data/Empty")).unwrap();
    for i in 0..4 {
        app.data_file(&format!("Many/{i}.txt"), 10 + i);
    }
    let link = created(&app, json!({ "file_paths": ["Photos/a.jpg", "Docs"] })).await;
    let u = url(&link);
    assert!(u.contains("/ferry-20") && u.contains(".zip?t="), "{u}");
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("several.zip");
    std::fs::write(&saved, download(&link).await).unwrap();
    let out = dir.path().join("out");
    python_extracts(&saved, Some(&out)).await;
    assert_eq!(std::fs::read(out.join("a.jpg")).unwrap(), a);
    assert_eq!(std::fs::read(out.join("Docs/x.txt")).unwrap(), x);

    for (body, status, words) in [
        (json!({ "file_path": "Empty" }), 400, "file_path: nothing to share"),
        (json!({ "file_paths": [] }), 400, "file_paths: must name at least one"),
        (json!({ "file_path": "Docs", "file_paths": ["Docs"] }), 400, "not both"),
        (json!({ "file_paths": ["Docs", "Nowhere"] }), 404, "file_paths: Nowhere"),
        (json!({ "file_paths": ["Docs", "../etc"] }), 400, "file_paths"),
        (json!({ "file_paths": "Docs" }), 400, "file_paths: must be a list"),
        (json!({ "file_path": "Many" }), 400, "more than 3 files"),
    ] {
        let (got, v) = app.create(body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        assert!(v.to_string().contains(words), "{body}: {v} should say {words:?}");
    }
}

/// A ZIP link of three files (30 MB in all) for a download client, and the bytes the client must
/// end with: those of a second link to the same folder, downloaded whole first. The archive's
/// bytes depend only on its members, so both links serve the same bytes.
async fn zip_for_client(name: &'static str) -> Shared {
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "1")]).await;
    for i in 0..3 {
        app.data_file(&format!("Set/part{i}.bin"), 10_000_000 + i);
    }
    let reference = created(&app, json!({ "file_path": "Set" })).await;
    let bytes = download(&reference).await;
    Shared::of(app, json!({ "file_path": "Set" }), bytes, name).await
}

#[tokio::test(flavor = "multi_thread")]
async fn aria2c_with_four_connections_completes_a_zip_link_once() {
    aria2c(zip_for_client("aria4.zip").await, "4").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wget_continues_a_zip_link_after_an_interrupt_and_completes_it_once() {
    wget_continues(zip_for_client("wget.zip").await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_resumes_a_zip_link_after_an_interrupt_and_completes_it_once() {
    curl_resumes(zip_for_client("curl.zip").await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_completes_a_zip_link_with_bytes_served_equal_to_its_length() {
    let s = zip_for_client("one.zip").await;
    let got = curl(&s.url, &["-f"]).await;
    assert_eq!(got.body, s.bytes);
    std::fs::write(s.out_path().join("one.zip"), &got.body).unwrap();
    s.completes_once("curl", Served::Exact).await;
}

/// The CRC-32 of `len` zero bytes.
fn crc_of_zeros(len: u64) -> u32 {
    let block = vec![0u8; 1 << 20];
    let mut h = crc32fast::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        h.update(&block[..n]);
        left -= n as u64;
    }
    h.finalize()
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archives_last_bytes_wait_for_hashing_and_are_right() {
    let app = TestApp::spawn().await;
    const GIB: u64 = 1 << 30;
    for name in ["a.bin", "b.bin", "c.bin"] {
        sparse(&app, &format!("Large/{name}"), GIB);
    }
    let link = created(&app, json!({ "file_path": "Large" })).await;
    let size = link["file_size"].as_u64().unwrap();
    // Asked at once, before 3 GiB can have been hashed: the answer waits, and is right.
    let started = Instant::now();
    let tail = curl(&url(&link), &["-r", "-100"]).await;
    let waited = started.elapsed();
    assert_eq!((tail.status, tail.body.len()), (206, 100), "{}", app.log());
    let end = &tail.body[100 - 22..];
    assert_eq!(u32_at(end, 0), 0x0605_4b50, "end of central directory record");
    assert_eq!(u16_at(end, 10), 3, "members");
    assert_eq!(
        u32_at(end, 16) + u32_at(end, 12),
        size - 22,
        "the central directory ends at the end record"
    );
    let last = tail
        .body
        .windows(4)
        .rposition(|w| w == b"PK\x01\x02")
        .expect("the last central entry");
    let entry = &tail.body[last..];
    assert_eq!(&entry[46..51], b"c.bin");
    assert_eq!(
        u32_at(entry, 16),
        u64::from(crc_of_zeros(GIB)),
        "c.bin's CRC-32 (waited {waited:?})"
    );
    let id = link["tunnel_id"].as_str().unwrap();
    let (_, stats) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
    let hashing = &stats["tunnel"]["hashing"];
    assert_eq!(hashing["hashed_bytes"], hashing["total_bytes"], "{stats}");
    assert_eq!(hashing["total_bytes"], 3 * GIB, "{stats}");
    assert_eq!(stats["tunnel"]["file_count"], 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_over_4_gib_makes_a_valid_zip64_archive() {
    let app = TestApp::spawn().await;
    sparse(&app, "Big/huge.bin", (4 << 30) + 12_345);
    put(&app, "Big/z.txt", b"after the big one");
    let link = created(&app, json!({ "file_path": "Big" })).await;
    let size = link["file_size"].as_u64().unwrap();
    assert!(size > 4 << 30, "{link}");
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("Big.zip");
    run(
        "curl",
        "curl",
        &["-sS", "-f", "-o", saved.to_str().unwrap(), &url(&link)],
        dir.path(),
    )
    .await;
    assert_eq!(std::fs::metadata(&saved).unwrap().len(), size);
    tool("unzip", "unzip", &["-tq"], &saved).await;
    tool("7z", "p7zip-full", &["t"], &saved).await;
    tool("bsdtar", "libarchive-tools", &["-tf"], &saved).await;
    python_extracts(&saved, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_changed_mid_download_closes_the_link_and_no_new_byte_is_sent() {
    let app = TestApp::spawn().await;
    app.data_file("Live/clip.bin", 40_000_000);
    let reference = created(&app, json!({ "file_path": "Live" })).await;
    let whole = download(&reference).await;
    let link = created(&app, json!({ "file_path": "Live" })).await;
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("Live.zip");
    let mut client = Command::new("curl")
        .args(["-sS", "--limit-rate", "4M", "-o", saved.to_str().unwrap(), &url(&link)])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&saved).map_or(0, |m| m.len()) < 8_000_000 {
        assert!(Instant::now() < deadline, "curl got under 8 MB in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Rewrite the second half of the member in place.
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(app.path("data/Live/clip.bin"))
            .unwrap();
        f.write_all_at(&vec![0xAB; 20_000_000], 20_000_000).unwrap();
    }
    let status = tokio::time::timeout(Duration::from_secs(60), client.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the download must be cut short");
    let got = std::fs::read(&saved).unwrap();
    assert!(got.len() < whole.len(), "the whole archive went out");
    assert!(
        whole.starts_with(&got),
        "the recipient got bytes of neither version ({} bytes)",
        got.len()
    );
    let t = app
        .closed(link["tunnel_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(t["close_reason"], "error", "{t}");
    assert!(
        t["close_detail"].as_str().unwrap_or("").contains("Live/clip.bin"),
        "{t}"
    );
}
