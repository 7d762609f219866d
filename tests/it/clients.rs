//! Real download clients, written by nobody here, each on a link of its own: plain curl, `curl
//! -C -` and `wget -c` after an interrupt, aria2c with 4 and 16 connections, axel, and Chromium's
//! own download. Each saves the file byte for byte and completes its link exactly once (SPEC §2,
//! §9); after that the link refuses (444).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{EMPTY_REPLY, TestApp, curl};
use crate::webdriver::Browser;

/// Large enough that an interrupted transfer really is cut short (loopback's socket buffers hold a
/// few MB), small enough to stay quick.
const SIZE: usize = 30_000_000;
/// `FERRY_REFETCH_BYTES`' default: what a client that aborts or splits may be sent twice.
const REFETCH_BYTES: u64 = 16 << 20;

/// How `bytes_served` may relate to the file's size for a client.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Served {
    /// One uninterrupted connection: exactly the size.
    Exact,
    /// A client that aborts or splits: the size, plus what its kernel acknowledged but it never
    /// saved, within the re-send budget.
    AtMostRefetch,
}

pub(crate) struct Shared {
    pub(crate) app: TestApp,
    /// What the client must end up with.
    pub(crate) bytes: Vec<u8>,
    pub(crate) id: String,
    pub(crate) url: String,
    name: &'static str,
    out: tempfile::TempDir,
}

impl Shared {
    async fn new(name: &'static str) -> Shared {
        let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "1")]).await;
        let bytes = app.data_file(name, SIZE);
        Shared::of(app, json!({ "file_path": name }), bytes, name).await
    }

    /// A link made by `body` on `app`, whose client saves `bytes` under `name`.
    pub(crate) async fn of(app: TestApp, body: Value, bytes: Vec<u8>, name: &'static str) -> Shared {
        let (status, link) = app.create(body).await;
        assert_eq!(status, 201, "{link}");
        let url = link["download_url"].as_str().unwrap().to_string();
        assert!(url.starts_with(&app.public), "{url}");
        Shared {
            id: link["tunnel_id"].as_str().unwrap().to_string(),
            url,
            bytes,
            name,
            app,
            out: tempfile::tempdir().unwrap(),
        }
    }

    /// Where the client saves.
    pub(crate) fn out_path(&self) -> &Path {
        self.out.path()
    }

    fn saved(&self) -> PathBuf {
        self.out.path().join(self.name)
    }

    /// The file is saved whole, the link completes exactly once, a further request gets 444, and
    /// history has the right figures.
    pub(crate) async fn completes_once(&self, client: &str, served: Served) {
        let saved = std::fs::read(self.saved()).unwrap_or_default();
        assert!(
            saved.len() == self.bytes.len() && saved == self.bytes,
            "{client}: the saved file differs from the shared one ({} of {} bytes)",
            saved.len(),
            self.bytes.len()
        );
        // Once ferry has seen the download complete, nothing else is handed out: a whole GET
        // gets 444 in the grace period and after it.
        self.completed_seen(client).await;
        let again = curl(&self.url, &[]).await;
        assert_eq!(
            (again.exit, again.body.len()),
            (EMPTY_REPLY, 0),
            "{client}: a request after completion must get 444"
        );
        let t = self.app.closed(&self.id, Duration::from_secs(30)).await;
        assert_eq!(t["close_reason"], "completed", "{client}: {t}");
        assert_eq!(t["downloads_completed"], 1, "{client}: {t}");
        let got = t["bytes_served"].as_u64().unwrap_or_else(|| panic!("{client}: {t}"));
        let size = self.bytes.len() as u64;
        match served {
            Served::Exact => assert_eq!(got, size, "{client}: bytes_served of one connection is the size"),
            Served::AtMostRefetch => assert!(
                (size..=size + REFETCH_BYTES).contains(&got),
                "{client}: bytes_served {got} outside [{size}, {}]",
                size + REFETCH_BYTES
            ),
        }
        let after = curl(&self.url, &[]).await;
        assert_eq!(
            (after.exit, after.body.len()),
            (EMPTY_REPLY, 0),
            "{client}: a closed link must get 444"
        );
    }

    /// Waits until ferry counts the download complete (the open record, or history).
    async fn completed_seen(&self, client: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, v) = self.app.get(&format!("/admin/tunnels/{}/stats", self.id)).await;
            let t = if status == 200 {
                v["tunnel"].clone()
            } else {
                Value::Null
            };
            if t["downloads_completed"].as_u64() == Some(1) {
                return;
            }
            if let Some(h) = self.app.history().await.into_iter().find(|t| t["tunnel_id"] == self.id) {
                assert_eq!(h["downloads_completed"], 1, "{client}: {h}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{client}: ferry did not count the download complete within 20 s: {t}\n{}",
                self.app.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs `program` to the end (bounded), failing with the package to install when it is missing.
pub(crate) async fn run(program: &str, package: &str, args: &[&str], dir: &Path) -> std::process::Output {
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} is not runnable ({e}): install the `{package}` package (script/test does)")
        });
    let o = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within 120 s"))
        .unwrap();
    assert!(
        o.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Starts `program`, waits until it has written at least `at` bytes to `file`, and kills it: an
/// interrupted download of `whole` bytes. The client must be rate-limited so the cut lands
/// mid-file.
pub(crate) async fn interrupt(
    program: &str,
    package: &str,
    args: &[&str],
    dir: &Path,
    file: &Path,
    at: u64,
    whole: u64,
) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} is not runnable ({e}): install the `{package}` package (script/test does)")
        });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        if have >= at {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{program} ended ({status}) before it was interrupted, with {have} bytes written");
        }
        assert!(Instant::now() < deadline, "{program} wrote only {have} bytes in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let have = std::fs::metadata(file).unwrap().len();
    assert!(
        have < whole,
        "{program} had the whole file before it was interrupted: raise the file size or lower the rate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_downloads_once_with_bytes_served_equal_to_the_size() {
    let s = Shared::new("plain.bin").await;
    let saved = s.saved();
    run(
        "curl",
        "curl",
        &["-sS", "-f", "-o", saved.to_str().unwrap(), &s.url],
        s.out.path(),
    )
    .await;
    s.completes_once("curl", Served::Exact).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_resumes_with_dash_c_after_an_interrupt_and_completes_once() {
    curl_resumes(Shared::new("resumed.bin").await).await;
}

/// `curl -C -` after an interrupted curl.
pub(crate) async fn curl_resumes(s: Shared) {
    let saved = s.saved();
    let path = saved.to_str().unwrap();
    interrupt(
        "curl",
        "curl",
        &["-sS", "--limit-rate", "4M", "-o", path, &s.url],
        s.out.path(),
        &saved,
        10_000_000,
        s.bytes.len() as u64,
    )
    .await;
    run(
        "curl",
        "curl",
        &["-sS", "-f", "-C", "-", "-o", path, &s.url],
        s.out.path(),
    )
    .await;
    s.completes_once("curl -C -", Served::AtMostRefetch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wget_continues_with_dash_c_after_an_interrupt_and_completes_once() {
    wget_continues(Shared::new("continued.bin").await).await;
}

/// `wget -c` after an interrupted wget.
pub(crate) async fn wget_continues(s: Shared) {
    let saved = s.saved();
    let path = saved.to_str().unwrap();
    interrupt(
        "wget",
        "wget",
        &["-q", "--limit-rate=4m", "-O", path, &s.url],
        s.out.path(),
        &saved,
        10_000_000,
        s.bytes.len() as u64,
    )
    .await;
    run("wget", "wget", &["-q", "-c", "-O", path, &s.url], s.out.path()).await;
    s.completes_once("wget -c", Served::AtMostRefetch).await;
}

/// aria2c with `connections` connections, each fetching a part.
pub(crate) async fn aria2c(s: Shared, connections: &str) {
    let name = s.name;
    let dir = s.out.path().to_str().unwrap().to_string();
    run(
        "aria2c",
        "aria2",
        &[
            "-q",
            &format!("-x{connections}"),
            &format!("-s{connections}"),
            "-k1M",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "-d",
            &dir,
            "-o",
            name,
            &s.url,
        ],
        s.out.path(),
    )
    .await;
    s.completes_once(&format!("aria2c -x{connections}"), Served::AtMostRefetch)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aria2c_with_four_connections_completes_once() {
    aria2c(Shared::new("aria4.bin").await, "4").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aria2c_with_sixteen_connections_completes_once() {
    aria2c(Shared::new("aria16.bin").await, "16").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn axel_with_eight_connections_completes_once() {
    let s = Shared::new("axel.bin").await;
    let saved = s.saved();
    run(
        "axel",
        "axel",
        &["-q", "-n", "8", "-o", saved.to_str().unwrap(), &s.url],
        s.out.path(),
    )
    .await;
    s.completes_once("axel -n 8", Served::AtMostRefetch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_downloads_the_link_once() {
    let s = Shared::new("browser.bin").await;
    let b = Browser::start().await;
    let dir = s.out.path().to_str().unwrap().to_string();
    b.cdp(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": dir}),
    )
    .await;
    // A navigation that turns into a download leaves the page where it was; starting it from a
    // script keeps WebDriver from waiting on a page load that never comes.
    b.script(&format!(
        "setTimeout(() => {{ location.href = {}; }}, 0); return 0",
        json!(s.url)
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let names: Vec<String> = std::fs::read_dir(s.out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let partial = names.iter().any(|n| n.ends_with(".crdownload"));
        let done = std::fs::metadata(s.saved()).is_ok_and(|m| m.len() == SIZE as u64);
        if done && !partial {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium did not finish the download within 90 s: {names:?}\n{}",
            s.app.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.completes_once("Chromium", Served::Exact).await;
}
