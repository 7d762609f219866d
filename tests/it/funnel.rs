//! The Tailscale Funnel providers against the `tailscale` emulator (`tests/emulator/`): the same
//! suite runs with `FERRY_PROVIDER=tailscale` (ferry runs the emulator as a local process) and with
//! `FERRY_PROVIDER=docker` (the emulator runs as the sidecar container on the real Docker Engine,
//! from an image made here with `docker import`, and ferry execs the CLI in it through the API).
//! Recipients go through the emulator's Funnel front, as they would through Funnel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, curl, eventually, free_port, startup_error};

const EMULATOR: &str = env!("CARGO_BIN_EXE_tailscale-emulator");
const DNS: &str = "ferry-nas.tail0000.ts.net";
const IMAGE_REPO: &str = "ferry-test-tailscale";
/// The sidecar container's command. It runs tailscaled, and starts it again whenever it exits,
/// unless it was stopped.
const DAEMON_LOOP: &str =
    "while :; do [ -e /var/run/tailscale/stopped ] || /usr/local/bin/tailscale daemon \"$@\"; busybox sleep 0.1; done";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Process,
    Docker,
}

/// The emulated sidecar: tailscaled's state plus Funnel's public front on a loopback port.
pub struct Sidecar {
    kind: Kind,
    pub front: String,
    port: u16,
    extra: Vec<String>,
    dir: tempfile::TempDir,
    daemon: Option<std::process::Child>,
    container: Option<String>,
}

impl Sidecar {
    pub async fn start(kind: Kind, extra: &[&str]) -> Sidecar {
        let port = free_port();
        let mut s = Sidecar {
            kind,
            front: format!("http://127.0.0.1:{port}"),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::tempdir().unwrap(),
            daemon: None,
            container: None,
        };
        match kind {
            Kind::Process => s.spawn_daemon(),
            Kind::Docker => {
                let image = emulator_image();
                let name = format!("ferry-ts-{}-{}", std::process::id(), port);
                let mut args: Vec<String> = [
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--network",
                    "host",
                    "--tmpfs",
                    "/var/run/tailscale",
                    image,
                    // tailscaled runs under a shell, as in the real image, so that it can stop
                    // while the container runs on (`stop_daemon`).
                    "/bin/sh",
                    "-c",
                    DAEMON_LOOP,
                    "sh",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(s.daemon_args());
                // The container is named before it runs, so that Drop removes it even if `run`
                // half-failed.
                s.container = Some(name);
                let out = std::process::Command::new("docker").args(&args).output().unwrap();
                assert!(
                    out.status.success(),
                    "docker run: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        s.wait_ready().await;
        s
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tailscaled.sock")
    }

    fn daemon_args(&self) -> Vec<String> {
        let mut v = vec![format!("--listen=127.0.0.1:{}", self.port), format!("--dns-name={DNS}")];
        v.extend(self.extra.iter().cloned());
        v
    }

    fn spawn_daemon(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        let child = std::process::Command::new(EMULATOR)
            .arg(format!("--socket={}", self.socket().display()))
            .arg("daemon")
            .args(self.daemon_args())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, _, _) = self.cli(&["status", "--json"]);
            if code == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the emulated sidecar did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the emulated CLI where ferry runs it: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = match self.kind {
            Kind::Process => std::process::Command::new(EMULATOR)
                .arg(format!("--socket={}", self.socket().display()))
                .args(args)
                .output()
                .unwrap(),
            Kind::Docker => std::process::Command::new("docker")
                .args(["exec", self.container.as_ref().unwrap(), "tailscale"])
                .args(args)
                .output()
                .unwrap(),
        };
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn serve_config(&self) -> Value {
        let (code, out, err) = self.cli(&["funnel", "status", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// The mounts served on port 443.
    pub fn mounts(&self) -> Vec<String> {
        self.serve_config()["Web"][format!("{DNS}:443")]["Handlers"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A sidecar restart that loses the serve config.
    pub async fn restart(&mut self) {
        match self.kind {
            Kind::Process => {
                let mut c = self.daemon.take().unwrap();
                c.kill().unwrap();
                c.wait().unwrap();
                self.spawn_daemon();
            }
            Kind::Docker => {
                let out = std::process::Command::new("docker")
                    .args(["restart", "-t", "0", self.container.as_ref().unwrap()])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
        }
        self.wait_ready().await;
        assert!(self.mounts().is_empty(), "the restart kept the config");
    }

    /// The sidecar stops (tailscaled gone) and later comes back with its state.
    pub async fn stop(&mut self) {
        match self.kind {
            Kind::Process => {
                let mut c = self.daemon.take().unwrap();
                c.kill().unwrap();
                c.wait().unwrap();
            }
            Kind::Docker => docker(&["stop", "-t", "0", self.container.as_ref().unwrap()]),
        }
    }

    /// tailscaled stops; the sidecar (its container) stays up.
    pub async fn stop_daemon(&mut self) {
        match self.kind {
            Kind::Process => self.stop().await,
            Kind::Docker => docker(&[
                "exec",
                self.container.as_ref().unwrap(),
                "sh",
                "-c",
                "busybox touch /var/run/tailscale/stopped; busybox killall tailscale",
            ]),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["status", "--json"]).0 == 0 {
            assert!(Instant::now() < deadline, "tailscaled did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn start_daemon(&mut self) {
        match self.kind {
            Kind::Process => self.spawn_daemon(),
            Kind::Docker => docker(&[
                "exec",
                self.container.as_ref().unwrap(),
                "busybox",
                "rm",
                "/var/run/tailscale/stopped",
            ]),
        }
        self.wait_ready().await;
    }

    /// The command lines running in the sidecar container (docker provider).
    pub fn processes(&self) -> String {
        let out = std::process::Command::new("docker")
            .args(["exec", self.container.as_ref().unwrap(), "busybox", "ps", "-o", "args"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Turns the emulator's switches (`emulator-set`).
    pub fn set(&self, knobs: &[&str]) {
        let mut args = vec!["emulator-set"];
        args.extend_from_slice(knobs);
        let (code, _, err) = self.cli(&args);
        assert_eq!(code, 0, "emulator-set {knobs:?}: {err}");
    }

    pub async fn start_again(&mut self) {
        match self.kind {
            Kind::Process => self.spawn_daemon(),
            Kind::Docker => docker(&["start", self.container.as_ref().unwrap()]),
        }
        self.wait_ready().await;
    }

    /// What ferry needs to drive this sidecar.
    pub fn env(&self) -> Vec<(String, String)> {
        match self.kind {
            Kind::Process => vec![
                ("FERRY_PROVIDER".into(), "tailscale".into()),
                ("FERRY_TAILSCALE_BIN".into(), EMULATOR.into()),
                ("FERRY_TAILSCALE_SOCKET".into(), self.socket().display().to_string()),
            ],
            Kind::Docker => vec![
                ("FERRY_PROVIDER".into(), "docker".into()),
                ("FERRY_TAILSCALE_CONTAINER".into(), self.container.clone().unwrap()),
            ],
        }
    }

    /// The recipient's URL through the front (as DNS would resolve the Funnel host).
    pub fn via_front(&self, url: &str) -> String {
        let base = format!("https://{DNS}");
        assert!(url.starts_with(&base), "{url} is not on the Funnel host");
        url.replacen(&base, &self.front, 1)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(name) = &self.container {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn docker(args: &[&str]) {
    let out = std::process::Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sidecar image, made once per test run: busybox-static and the emulator (with the shared
/// libraries it links) in a rootfs, imported with `docker import` (nothing can be pulled here).
/// Its tag is the emulator's content hash, so test runs from different checkouts at the same time
/// never run each other's emulator; images of older emulators are removed when unused.
fn emulator_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let bin = std::fs::read(EMULATOR).unwrap();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bin.hash(&mut h);
        let image = format!("{IMAGE_REPO}:{:016x}", h.finish());
        if image_exists(&image) {
            return image;
        }
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in [
            "bin",
            "usr/local/bin",
            "var/run/tailscale",
            "tmp",
            "proc",
            "dev",
            "sys",
            "etc",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox is missing: install busybox-static (script/test does)");
        std::fs::copy(busybox, r.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
        std::fs::write(r.join("usr/local/bin/tailscale"), &bin).unwrap();
        std::fs::set_permissions(
            r.join("usr/local/bin/tailscale"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let ldd = std::process::Command::new("ldd").arg(EMULATOR).output().unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let dest = r.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        let mut tar = std::process::Command::new("tar")
            .arg("-C")
            .arg(r)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::process::Command::new("docker")
            .args(["import", "-", &image])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .expect("docker is missing (the docker provider is tested on the real engine)");
        assert!(tar.wait().unwrap().success(), "tar of the sidecar rootfs failed");
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Images of other emulator builds go, unless a container still uses them.
        let list = std::process::Command::new("docker")
            .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPO])
            .output()
            .unwrap();
        for old in String::from_utf8_lossy(&list.stdout).lines().filter(|t| *t != image) {
            let _ = std::process::Command::new("docker").args(["image", "rm", old]).output();
        }
        image
    })
}

fn image_exists(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub async fn app_with(sidecar: &Sidecar, env: &[(&str, &str)]) -> TestApp {
    let mut all: Vec<(String, String)> = sidecar.env();
    all.push(("GRACE_PERIOD_SECONDS".into(), "0".into()));
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestApp::spawn_with(&pairs).await
}

/// The handler at `mount` on port 443.
fn handler(sc: &Value, mount: &str) -> Value {
    sc["Web"][format!("{DNS}:443")]["Handlers"][mount].clone()
}

macro_rules! for_both_providers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn tailscale() {
                super::$name(super::Kind::Process).await
            }
            #[tokio::test]
            async fn docker() {
                super::$name(super::Kind::Docker).await
            }
        }
    )*};
}

for_both_providers!(
    a_link_downloads_through_funnel_and_then_answers_404,
    termination_and_expiry_leave_404,
    a_tampered_token_reaches_the_client_as_502,
    twenty_links_at_once_leave_twenty_handlers_despite_etag_races,
    a_sidecar_restart_gets_the_handlers_back,
    missing_funnel_capability_fails_creation_clearly,
);

async fn a_link_downloads_through_funnel_and_then_answers_404(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[]).await;
    let bytes = app.data_file("movies/holiday.mkv", 300_000);
    let v = app.link("movies/holiday.mkv").await;
    let id = v["tunnel_id"].as_str().unwrap();
    let url = v["download_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("https://{DNS}/s/{id}/holiday.mkv?t=")),
        "{url}"
    );

    // The handler proxies to the public listener, repeating the mount path; the placeholder
    // keeps Funnel on for the port.
    let sc = ts.serve_config();
    let public = app.public.clone();
    assert_eq!(
        handler(&sc, &format!("/s/{id}")),
        json!({"Proxy": format!("{public}/s/{id}")})
    );
    assert_eq!(handler(&sc, "/s/.ferry"), json!({"Text": "ferry"}));
    assert_eq!(sc["AllowFunnel"][format!("{DNS}:443")], json!(true));

    // From "the Internet" (another loopback address), through the front: the whole file.
    let got = curl(&ts.via_front(url), &["--interface", "127.0.0.5"]).await;
    assert_eq!(got.status, 200);
    assert!(got.body == bytes, "the body differs");

    let closed = app.closed(id, Duration::from_secs(15)).await;
    assert_eq!(closed["close_reason"], "completed");
    // The real client address came through X-Forwarded-For from the trusted front.
    assert_eq!(closed["clients"][0]["address"], "127.0.0.5", "{closed}");

    // The handler is gone at the provider, so Tailscale answers its own 404. The placeholder stays.
    let front = ts.via_front(url);
    eventually(Duration::from_secs(5), "the path answers 404", async || {
        let r = curl(&front, &[]).await;
        r.status == 404 && r.body == b"404 page not found\n"
    })
    .await;
    assert_eq!(ts.mounts(), vec!["/s/.ferry".to_string()]);
    let (_, health) = app.get("/health").await;
    assert_eq!(health["components"]["provider"]["status"], "ok", "{health}");

    // A graceful stop removes the placeholder too, so nothing of ferry's stays public.
    let mut app = app;
    app.stop().await;
    assert!(ts.mounts().is_empty(), "{}", ts.serve_config());
}

async fn termination_and_expiry_leave_404(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 10_000);
    let ended = app.link("a.bin").await;
    let (status, expiring) = app.create(json!({"file_path": "a.bin", "expires_in_seconds": 2})).await;
    assert_eq!(status, 201, "{expiring}");

    let id = ended["tunnel_id"].as_str().unwrap();
    let status = app.terminate(id).await;
    assert!((200..300).contains(&status), "{status}");
    let url = ts.via_front(ended["download_url"].as_str().unwrap());
    let r = curl(&url, &[]).await;
    assert_eq!(r.status, 404, "a terminated link's path is gone at once");

    let eid = expiring["tunnel_id"].as_str().unwrap();
    let eurl = ts.via_front(expiring["download_url"].as_str().unwrap());
    // Served until the deadline (HEAD claims nothing)...
    assert_eq!(curl(&eurl, &["-I"]).await.status, 200);
    let closed = app.closed(eid, Duration::from_secs(6)).await;
    assert_eq!(closed["close_reason"], "expired");
    // ...and the handler is gone within a second of it.
    eventually(Duration::from_secs(1), "the expired path answers 404", async || {
        curl(&eurl, &[]).await.status == 404
    })
    .await;
    assert_eq!(ts.mounts(), vec!["/s/.ferry".to_string()]);
}

async fn a_tampered_token_reaches_the_client_as_502(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 10_000);
    let v = app.link("a.bin").await;
    let url = ts.via_front(v["download_url"].as_str().unwrap());
    let (base, token) = url.split_once("?t=").unwrap();
    let mut t = token.as_bytes().to_vec();
    let last = t.len() - 3;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{base}?t={}", String::from_utf8(t).unwrap());
    // nginx closes with 444; Funnel's proxy retries once and answers 502 with no body.
    let r = curl(&tampered, &[]).await;
    assert_eq!(r.status, 502);
    assert!(r.body.is_empty());
    // The genuine link is untouched.
    let r = curl(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10_000);
}

async fn twenty_links_at_once_leave_twenty_handlers_despite_etag_races(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    // Another writer wins the next three ETag races.
    let (code, _, err) = ts.cli(&["emulator-set", "etag_failures=3"]);
    assert_eq!(code, 0, "{err}");
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let http = app.http.clone();
        let admin = app.admin.clone();
        set.spawn(async move {
            let r = http
                .post(format!("{admin}/api/links"))
                .json(&json!({"file_path": "a.bin"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        });
    }
    let mut ids = vec![];
    while let Some(r) = set.join_next().await {
        let (status, v) = r.unwrap();
        assert_eq!(status, 201, "{v}");
        ids.push(v["tunnel_id"].as_str().unwrap().to_string());
    }
    eprintln!("{kind:?}: 20 links created and verified in {:?}", started.elapsed());
    let sc = ts.serve_config();
    let mut mounts = ts.mounts();
    mounts.retain(|m| m != "/s/.ferry");
    assert_eq!(mounts.len(), 20, "{sc}");
    for id in &ids {
        assert!(mounts.contains(&format!("/s/{id}")), "{id} has no handler");
    }
    let log = app.log();
    assert!(log.contains("retrying"), "the races were not retried:\n{log}");
    // Each CLI call is timed apart from the provider's whole open.
    let m = metrics(&app).await;
    assert!(
        m.contains("ferry_tailscale_command_seconds_count{command=\"set\"}"),
        "{m}"
    );
    assert!(m.contains("ferry_provider_call_seconds_count{op=\"open\"} 20"), "{m}");

    let started = Instant::now();
    for id in &ids {
        assert!((200..300).contains(&app.terminate(id).await));
    }
    eprintln!("{kind:?}: 20 links closed and verified in {:?}", started.elapsed());
    assert_eq!(ts.mounts(), vec!["/s/.ferry".to_string()]);
}

async fn a_sidecar_restart_gets_the_handlers_back(kind: Kind) {
    let mut ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[]).await;
    let bytes = app.data_file("a.bin", 50_000);
    let v = app.link("a.bin").await;
    let id = v["tunnel_id"].as_str().unwrap();
    ts.restart().await;
    let url = ts.via_front(v["download_url"].as_str().unwrap());
    // With no config at all, Funnel is off for the port and nothing answers.
    assert_eq!(curl(&url, &["-I"]).await.status, 0, "the restart lost the handler");
    // ferry notices within its reconcile period and puts the link's handler (and the
    // placeholder) back.
    let mount = format!("/s/{id}");
    eventually(Duration::from_secs(15), "the handler is re-asserted", async || {
        let m = ts.mounts();
        m.contains(&mount) && m.contains(&"/s/.ferry".to_string())
    })
    .await;
    let r = curl(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == bytes);

    // A handler of ferry's for a link that is not open (left by a crash) is removed; the owner's
    // own handlers elsewhere are never touched.
    let stray = "/s/AAAAAAAAAAAAAAAAAAAAAAAA";
    for args in [
        vec![
            "funnel",
            "--bg",
            "--https=443",
            "--set-path",
            stray,
            "http://127.0.0.1:9/s/x",
        ],
        vec![
            "serve",
            "--bg",
            "--https=8443",
            "--set-path=/grafana",
            "http://127.0.0.1:3000",
        ],
    ] {
        // ferry may be writing the config at the same moment: the CLI then refuses with the ETag
        // race, and the owner, like ferry, tries again.
        let mut tries = 0;
        loop {
            let (code, _, err) = ts.cli(&args);
            if code == 0 {
                break;
            }
            tries += 1;
            assert!(
                tries < 20 && err.contains("Another client is changing the serve config"),
                "{err}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eventually(Duration::from_secs(15), "the stray handler is removed", async || {
        !ts.mounts().contains(&stray.to_string())
    })
    .await;
    let sc = ts.serve_config();
    assert_eq!(
        handler(&sc, "/s/.ferry"),
        json!({"Text": "ferry"}),
        "the placeholder stays: {sc}"
    );
    assert_eq!(
        sc["Web"][format!("{DNS}:8443")]["Handlers"]["/grafana"]["Proxy"],
        "http://127.0.0.1:3000"
    );
}

async fn missing_funnel_capability_fails_creation_clearly(kind: Kind) {
    // The CLI prints the enablement link and waits for the owner (30 s here); ferry reads the
    // link and stops waiting.
    let ts = Sidecar::start(kind, &["--no-funnel"]).await;
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    let started = Instant::now();
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 502, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "creation waited for the CLI"
    );
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("Funnel is not available") && msg.contains("https://login.tailscale.com/f/funnel"),
        "{msg}"
    );
    // The link is recorded as closed with `error`, nothing is exposed, and /health says why.
    let history = app.history().await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["close_reason"], "error");
    let (_, audit) = app.get("/admin/audit?event=link.error").await;
    let rec = &audit["events"][0];
    assert_eq!(rec["tunnel_id"], history[0]["tunnel_id"], "{audit}");
    assert!(
        rec["detail"].as_str().unwrap().contains("login.tailscale.com"),
        "{audit}"
    );
    assert!(ts.mounts().is_empty());
    let (code, health) = app.get("/health").await;
    assert_eq!(code, 200);
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["components"]["provider"]["status"], "degraded");
    assert!(
        health["components"]["provider"]["detail"]
            .as_str()
            .unwrap()
            .contains("login.tailscale.com"),
        "{health}"
    );
}

for_both_providers!(
    a_hung_cli_costs_one_link_its_timeout_and_no_more,
    after_kill_9_a_restart_leaves_exactly_the_open_links_public,
    tcp_mode_forwards_with_proxy_protocol_while_a_link_is_open,
    tcp_mode_gets_its_forward_back_after_a_sidecar_restart,
    a_port_serving_the_owners_handlers_without_funnel_is_refused,
    a_stopped_sidecar_takes_health_down_and_back,
);

async fn a_port_serving_the_owners_handlers_without_funnel_is_refused(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    // The owner serves Grafana to the tailnet on 443; Funnel is off for it.
    let (code, _, err) = ts.cli(&["serve", "--bg", "--https=443", "--set-path=/grafana", "3000"]);
    assert_eq!(code, 0, "{err}");
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 502, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("FERRY_FUNNEL_PORT") && msg.contains("/grafana"), "{msg}");
    let sc = ts.serve_config();
    assert!(sc["AllowFunnel"].is_null(), "Funnel was switched on: {sc}");
    assert_eq!(ts.mounts(), vec!["/grafana".to_string()]);
    assert_eq!(app.history().await[0]["close_reason"], "error");
    let (_, health) = app.get("/health").await;
    assert_eq!(health["components"]["provider"]["status"], "degraded", "{health}");

    // On another port ferry is fine.
    drop(app);
    let app = app_with(&ts, &[("FERRY_FUNNEL_PORT", "8443")]).await;
    app.data_file("a.bin", 1000);
    let v = app.link("a.bin").await;
    assert!(
        v["download_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("https://{DNS}:8443/s/")),
        "{v}"
    );
}

async fn a_stopped_sidecar_takes_health_down_and_back(kind: Kind) {
    let mut ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    let (code, health) = app.get("/health").await;
    assert_eq!(
        (code, &health["components"]["provider"]["status"]),
        (200, &json!("ok")),
        "{health}"
    );

    ts.stop().await;
    provider_down(&app).await;
    let started = Instant::now();
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 502, "{v}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(app.history().await[0]["close_reason"], "error");

    ts.start_again().await;
    eventually(Duration::from_secs(15), "/health recovers", async || {
        let (code, h) = app.get("/health").await;
        code == 200 && h["components"]["provider"]["status"] == "ok"
    })
    .await;
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 201, "{v}");
}

async fn tcp_mode_forwards_with_proxy_protocol_while_a_link_is_open(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[("FERRY_FUNNEL_MODE", "tcp")]).await;
    let bytes = app.data_file("a.bin", 200_000);
    assert!(ts.serve_config()["TCP"].is_null(), "no forward before the first link");

    let v = app.link("a.bin").await;
    let id = v["tunnel_id"].as_str().unwrap();
    let sc = ts.serve_config();
    let upstream = app.public.trim_start_matches("http://").to_string();
    assert_eq!(
        sc["TCP"]["443"],
        json!({"TCPForward": upstream, "TerminateTLS": DNS, "ProxyProtocol": 2}),
        "{sc}"
    );
    assert_eq!(sc["AllowFunnel"][format!("{DNS}:443")], json!(true));
    assert!(sc["Web"].is_null(), "tcp mode adds no web handlers: {sc}");

    let url = ts.via_front(v["download_url"].as_str().unwrap());
    // nginx gates every path itself; its 444 reaches the client as a silent close.
    let (base, _) = url.split_once("?t=").unwrap();
    let r = curl(&format!("{base}?t=nope"), &["--interface", "127.0.0.9"]).await;
    assert_eq!((r.status, r.exit), (0, crate::helpers::EMPTY_REPLY));

    let r = curl(&url, &["--interface", "127.0.0.7"]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == bytes);
    let closed = app.closed(id, Duration::from_secs(15)).await;
    assert_eq!(closed["close_reason"], "completed");
    // The address nginx logged is the recipient's, from the PROXY protocol header.
    let (_, stats) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
    let clients: Vec<&str> = stats["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["client"].as_str().unwrap())
        .collect();
    assert!(clients.contains(&"127.0.0.7"), "{stats}");
    assert_eq!(closed["clients"][0]["address"], "127.0.0.7", "{closed}");

    // Once the last link is closed, the forward is gone and nothing answers.
    let front = ts.front.clone();
    eventually(Duration::from_secs(5), "the forward is removed", async || {
        ts.serve_config()["TCP"].is_null()
    })
    .await;
    assert_eq!(curl(&format!("{front}/s/{id}/a.bin"), &[]).await.status, 0);
}

/// The emulator fails as the CLI does when tailscaled is stopped: each command in its own words
/// (`status` and `funnel` through the CLI's process check, LocalAPI calls through the client's).
#[tokio::test]
async fn the_emulator_speaks_for_a_stopped_tailscaled_as_the_cli_does() {
    let mut ts = Sidecar::start(Kind::Process, &[]).await;
    ts.stop_daemon().await;
    let socket = ts.socket().display().to_string();
    let localapi = format!(
        "Failed to connect to local Tailscale daemon for /localapi/v0/serve-config; not running? Error: dial unix {socket}: connect: connection refused"
    );
    let not_running = "failed to connect to local tailscaled; it doesn't appear to be running";
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["status", "--json"], not_running.into()),
        (
            vec!["funnel", "status", "--json"],
            format!("getting serve config: {localapi}"),
        ),
        (
            vec!["funnel", "--bg", "--yes", "--https=443", "--set-path=/s/x", "8080"],
            format!("getting client status: {not_running}"),
        ),
        (
            vec!["funnel", "--yes", "--https=443", "--set-path=/s/x", "off"],
            format!("getting client status: {not_running}"),
        ),
        (
            vec!["serve", "--yes", "--https=443", "--set-path=/s/x", "off"],
            format!("error getting serve config: getting serve config: {localapi}"),
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = ts.cli(&args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}");
        assert!(err.starts_with(&want), "{args:?}: {err}");
    }
}

/// The emulator is honest about concurrent writers: two CLIs that read the same config and write
/// it back collide on the ETag, and the loser gets tailscaled's error text (ferry serializes its
/// own calls for this reason).
#[tokio::test]
async fn the_emulator_fails_concurrent_writers_like_tailscaled() {
    let ts = Sidecar::start(Kind::Process, &[]).await;
    let (code, _, err) = ts.cli(&["emulator-set", "write_delay_ms=300"]);
    assert_eq!(code, 0, "{err}");
    let socket = format!("--socket={}", ts.socket().display());
    let writers: Vec<_> = ["/s/one", "/s/two"]
        .iter()
        .map(|m| {
            std::process::Command::new(EMULATOR)
                .args([socket.as_str(), "funnel", "--bg", "--https=443"])
                .arg(format!("--set-path={m}"))
                .arg("text:x")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outcomes: Vec<(bool, String)> = writers
        .into_iter()
        .map(|w| {
            let o = w.wait_with_output().unwrap();
            (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
        })
        .collect();
    let wins = outcomes.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(wins, 1, "{outcomes:?}");
    let (_, loser) = outcomes.iter().find(|(ok, _)| !ok).unwrap();
    assert!(
        loser.contains("Another client is changing the serve config; please try again."),
        "{loser}"
    );
    assert_eq!(ts.mounts().len(), 1);
}

async fn tcp_mode_gets_its_forward_back_after_a_sidecar_restart(kind: Kind) {
    let mut ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[("FERRY_FUNNEL_MODE", "tcp")]).await;
    let bytes = app.data_file("a.bin", 20_000);
    let v = app.link("a.bin").await;
    ts.restart().await;
    eventually(Duration::from_secs(15), "the TCP forward is re-asserted", async || {
        ts.serve_config()["TCP"]["443"]["ProxyProtocol"] == 2
    })
    .await;
    let r = curl(&ts.via_front(v["download_url"].as_str().unwrap()), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == bytes);
}

async fn after_kill_9_a_restart_leaves_exactly_the_open_links_public(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    let mut app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    let keep = app.link("a.bin").await;
    let (status, short) = app.create(json!({"file_path": "a.bin", "expires_in_seconds": 1})).await;
    assert_eq!(status, 201, "{short}");
    app.kill9().await;
    // While ferry is down the short link passes its deadline; its handler is still there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let short_mount = format!("/s/{}", short["tunnel_id"].as_str().unwrap());
    assert!(ts.mounts().contains(&short_mount));
    app.start().await;
    // Startup closed the overdue link and reconciled the provider before answering /health.
    let mounts = ts.mounts();
    let keep_mount = format!("/s/{}", keep["tunnel_id"].as_str().unwrap());
    assert!(!mounts.contains(&short_mount), "{mounts:?}");
    assert!(mounts.contains(&keep_mount), "{mounts:?}");
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    let r = curl(&ts.via_front(keep["download_url"].as_str().unwrap()), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_missing_tailscale_cli_stops_startup_naming_the_variable() {
    let line = startup_error(&[
        ("FERRY_PROVIDER", "tailscale"),
        ("FERRY_TAILSCALE_BIN", "/no/tailscale"),
    ])
    .await;
    assert!(line.contains("FERRY_TAILSCALE_BIN"), "{line}");
}

/// The front proxies as Funnel does: the mount point is stripped and the rest joined onto the
/// target's path, the query kept, and the client's address and Funnel's marker added.
#[tokio::test]
async fn the_front_rewrites_paths_and_sets_funnel_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ts = Sidecar::start(Kind::Process, &[]).await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/up", upstream.local_addr().unwrap());
    let (code, _, err) = ts.cli(&["funnel", "--bg", "--https=443", "--set-path=/s/probe", &target]);
    assert_eq!(code, 0, "{err}");
    let server = tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await
            .unwrap();
        String::from_utf8(head).unwrap()
    });
    let r = curl(
        &format!("{}/s/probe/dir/file.bin?t=abc", ts.front),
        &[
            "--interface",
            "127.0.0.6",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-Host: evil.example",
        ],
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    let head = server.await.unwrap();
    assert!(head.starts_with("GET /up/dir/file.bin?t=abc HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains("X-Forwarded-For: 127.0.0.6\r\n"),
        "a forged XFF must not pass: {head}"
    );
    assert!(!head.contains("6.6.6.6") && !head.contains("evil.example"), "{head}");
    let host = ts.front.trim_start_matches("http://");
    assert!(head.contains(&format!("X-Forwarded-Host: {host}\r\n")), "{head}");
    assert!(head.contains("Tailscale-Funnel-Request: ?1\r\n"), "{head}");
    // Handlers are found on the decoded, cleaned path, but the mount is taken off the path as
    // sent: a path that reaches a mount only once cleaned, or only once decoded, is a 404.
    for path in ["/s/other/../probe/x", "/s/pr%6Fbe/dir"] {
        let r = curl(&format!("{}{path}", ts.front), &["--path-as-is"]).await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (404, b"404 page not found\n".as_slice()),
            "{path}"
        );
    }
    let r = curl(&format!("{}/s/probe/%zz", ts.front), &["--path-as-is"]).await;
    assert_eq!(r.status, 400);
    // An upstream that closes without answering (nginx's 444) gets one retry on a fresh
    // connection, as Go's transport does for a GET, and then the front answers 502.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", silent.local_addr().unwrap());
    let (code, _, err) = ts.cli(&["funnel", "--bg", "--https=443", "--set-path=/s/silent", &target]);
    assert_eq!(code, 0, "{err}");
    let closer = tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_secs(2), silent.accept()).await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            accepted += 1;
        }
        accepted
    });
    let r = curl(&format!("{}/s/silent/f", ts.front), &[]).await;
    assert_eq!((r.status, r.body.len()), (502, 0));
    assert_eq!(closer.await.unwrap(), 2, "one request, one retry");

    // Without a handler, Tailscale answers its own 404.
    let r = curl(&format!("{}/s/other/x", ts.front), &[]).await;
    assert_eq!((r.status, r.body.as_slice()), (404, b"404 page not found\n".as_slice()));
}

async fn a_hung_cli_costs_one_link_its_timeout_and_no_more(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[("FERRY_TAILSCALE_TIMEOUT_SECONDS", "2")]).await;
    app.data_file("a.bin", 1000);
    // The next command (the first link's open) hangs.
    let (code, _, err) = ts.cli(&["emulator-set", "hang_next=1"]);
    assert_eq!(code, 0, "{err}");
    let started = Instant::now();
    let (first, second) = tokio::join!(app.create(json!({"file_path": "a.bin"})), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.create(json!({"file_path": "a.bin"})).await
    });
    let elapsed = started.elapsed();
    assert_eq!(first.0, 502, "{}", first.1);
    assert!(
        first.1["error"].as_str().unwrap().contains("did not finish within 2s"),
        "{}",
        first.1
    );
    assert_eq!(second.0, 201, "{}", second.1);
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    let id = second.1["tunnel_id"].as_str().unwrap();
    assert!(ts.mounts().contains(&format!("/s/{id}")));
    eprintln!("{kind:?}: both answers within {elapsed:?} of a hung command");
}

for_both_providers!(
    a_stopped_tailscaled_takes_health_down_and_back,
    funnel_not_enabled_fails_creation_clearly_in_each_of_its_ways,
    a_link_closes_while_funnel_cannot_be_enabled,
    permission_refusals_are_reported_as_such,
    the_funnel_ports_attribute_is_read,
    an_ipv6_upstream_verifies,
    an_old_tailscale_takes_a_localhost_upstream_and_refuses_another,
);

/// ferry's Prometheus exposition.
async fn metrics(app: &TestApp) -> String {
    let r = app.http.get(format!("{}/metrics", app.admin)).send().await.unwrap();
    r.text().await.unwrap()
}

/// How many `status` commands ferry has run (each reconciliation runs at least one).
async fn status_calls(app: &TestApp) -> u64 {
    let m = metrics(app).await;
    m.lines()
        .find_map(|l| l.strip_prefix("ferry_tailscale_command_seconds_count{command=\"status\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until ferry has reconciled with the provider twice more (the watch runs every 5 s).
async fn two_reconciliations(app: &TestApp) {
    let before = status_calls(app).await;
    eventually(Duration::from_secs(15), "two more reconciliations", async || {
        status_calls(app).await >= before + 2
    })
    .await;
}

/// Fails one link creation with the provider's refusal: 502, the link recorded closed as
/// `error`, no handler of it left, and `/health` degraded with the same reason.
async fn refused_creation(ts: &Sidecar, app: &TestApp, wants: &[&str]) -> String {
    let before = app.history().await.len();
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 502, "{v}");
    let msg = v["error"].as_str().unwrap().to_string();
    for w in wants {
        assert!(msg.contains(w), "{w:?} not in {msg}");
    }
    let history = app.history().await;
    assert_eq!(history.len(), before + 1);
    let id = history[0]["tunnel_id"].as_str().unwrap();
    assert_eq!(history[0]["close_reason"], "error");
    assert!(!ts.mounts().contains(&format!("/s/{id}")), "{:?}", ts.mounts());
    // The reason stands until it is fixed: the reconciliations that follow, which only read
    // when all is in place, do not call the provider healthy.
    two_reconciliations(app).await;
    let (code, health) = app.get("/health").await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["components"]["provider"]["status"], "degraded", "{health}");
    let detail = health["components"]["provider"]["detail"].as_str().unwrap();
    assert!(detail.contains(wants[0]), "{detail}");
    msg
}

/// Waits for `/health` to say (503) that the provider cannot be reached.
async fn provider_down(app: &TestApp) {
    eventually(
        Duration::from_secs(15),
        "/health says the provider is down",
        async || {
            let (code, h) = app.get("/health").await;
            code == 503 && h["components"]["provider"]["status"] == "down"
        },
    )
    .await;
}

/// Once the owner fixed what was refused, `/health` says so by itself.
async fn provider_ok_again(app: &TestApp) {
    eventually(Duration::from_secs(15), "the provider is ok again", async || {
        app.get("/health").await.1["components"]["provider"]["status"] == "ok"
    })
    .await;
}

async fn a_stopped_tailscaled_takes_health_down_and_back(kind: Kind) {
    // tailscaled stops while its container (or this machine) runs on: the CLI answers, with a
    // different text for each command ferry runs. It keeps its serve config, as a sidecar with
    // its state on a volume does (`a_sidecar_restart_gets_the_handlers_back` loses it).
    let mut ts = Sidecar::start(kind, &["--persist"]).await;
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    let open = app.link("a.bin").await;
    ts.stop_daemon().await;
    provider_down(&app).await;
    let (_, health) = app.get("/health").await;
    assert!(
        health["components"]["provider"]["detail"]
            .as_str()
            .unwrap()
            .contains("tailscaled is not reachable"),
        "{health}"
    );
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 502, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("tailscaled is not reachable"),
        "{v}"
    );

    ts.start_daemon().await;
    eventually(Duration::from_secs(15), "/health recovers by itself", async || {
        let (code, h) = app.get("/health").await;
        code == 200 && h["components"]["provider"]["status"] == "ok"
    })
    .await;
    let mount = format!("/s/{}", open["tunnel_id"].as_str().unwrap());
    assert!(ts.mounts().contains(&mount), "{:?}", ts.mounts());
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 201, "{v}");
}

async fn funnel_not_enabled_fails_creation_clearly_in_each_of_its_ways(kind: Kind) {
    // Funnel is taken away after ferry set the node up (a node that never had it is
    // `missing_funnel_capability_fails_creation_clearly`).
    let ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    let kept = app.link("a.bin").await;
    ts.set(&["funnel=false"]);

    // The control server says it cannot be enabled here: the CLI prints that and exits 0,
    // having changed nothing.
    ts.set(&["funnel_enable=text"]);
    refused_creation(
        &ts,
        &app,
        &[
            "Funnel is not available",
            "You don't have permission to enable this feature.",
            "https://tailscale.com/kb/1223/funnel",
        ],
    )
    .await;
    // When the control server cannot be asked, the CLI prints the old capability check's words
    // and no link.
    ts.set(&["funnel_enable=error"]);
    refused_creation(
        &ts,
        &app,
        &[
            "Funnel is not available",
            "node attribute not set",
            "https://tailscale.com/s/no-funnel",
        ],
    )
    .await;
    // The CLI prints the enablement link and waits for the owner: ferry takes the link and
    // stops waiting (the docker provider cannot end an exec: it goes on waiting in the sidecar).
    ts.set(&["funnel_enable=wait", "enable_wait_ms=30000"]);
    let started = Instant::now();
    refused_creation(
        &ts,
        &app,
        &["Funnel is not available", "https://login.tailscale.com/f/funnel"],
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(25), "{:?}", started.elapsed());
    let failed = format!("/s/{}", app.history().await[0]["tunnel_id"].as_str().unwrap());

    // The owner enables Funnel. A CLI still waiting in the sidecar now goes on: it makes its
    // change, for a link that failed, or loses the serve config's ETag race to ferry's own
    // changes. Either way the handler does not stay: nothing closed stays public.
    ts.set(&["funnel=true"]);
    if kind == Kind::Docker {
        eventually(Duration::from_secs(45), "the waiting CLI ends", async || {
            !ts.processes().contains(&format!("--set-path={failed}"))
        })
        .await;
    }
    eventually(Duration::from_secs(20), "only open links are served", async || {
        !ts.mounts().contains(&failed)
    })
    .await;
    provider_ok_again(&app).await;
    let v = app.link("a.bin").await;
    let mut want = vec![
        "/s/.ferry".to_string(),
        format!("/s/{}", kept["tunnel_id"].as_str().unwrap()),
        format!("/s/{}", v["tunnel_id"].as_str().unwrap()),
    ];
    want.sort();
    let mut mounts = ts.mounts();
    mounts.sort();
    assert_eq!(mounts, want);
}

async fn a_link_closes_while_funnel_cannot_be_enabled(kind: Kind) {
    // Funnel goes away under an open link (the admin revoked it). `tailscale funnel ... off`
    // then exits 0 without removing anything; `serve ... off` removes the handler.
    let ts = Sidecar::start(kind, &[]).await;
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    let v = app.link("a.bin").await;
    let id = v["tunnel_id"].as_str().unwrap();
    ts.set(&["funnel=false", "funnel_enable=text"]);
    assert_eq!(app.terminate(id).await, 204);
    assert!(!ts.mounts().contains(&format!("/s/{id}")), "{:?}", ts.mounts());
    // And while the control server cannot be asked at all.
    ts.set(&["funnel=true"]);
    let v = app.link("a.bin").await;
    let id = v["tunnel_id"].as_str().unwrap();
    ts.set(&["funnel=false", "funnel_enable=error"]);
    assert_eq!(app.terminate(id).await, 204);
    assert!(!ts.mounts().contains(&format!("/s/{id}")), "{:?}", ts.mounts());
}

async fn permission_refusals_are_reported_as_such(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    // A foreground `tailscale funnel` session held the port before ferry came.
    ts.set(&["foreground=443"]);
    let app = app_with(&ts, &[]).await;
    app.data_file("a.bin", 1000);
    refused_creation(&ts, &app, &["foreground", "FERRY_FUNNEL_PORT"]).await;
    ts.set(&["foreground=0"]);
    provider_ok_again(&app).await;
    app.link("a.bin").await;

    // When ferry's user is not the operator, tailscaled refuses every write.
    ts.set(&["denied=true"]);
    let msg = refused_creation(&ts, &app, &["may not change the serve config", "--operator"]).await;
    assert!(msg.contains("Access denied: serve config denied"), "{msg}");
    ts.set(&["denied=false"]);
    provider_ok_again(&app).await;
    app.link("a.bin").await;

    // The owner serves a directory on another port; an operator who cannot sudo may then
    // change nothing.
    let (code, _, err) = ts.cli(&["serve", "--bg", "--https=8443", "--set-path=/files", "/tmp"]);
    assert_eq!(code, 0, "{err}");
    ts.set(&["operator_admin=false"]);
    let msg = refused_creation(&ts, &app, &["file-path handler", "as root"]).await;
    assert!(msg.contains("must be root, or be an operator"), "{msg}");
    ts.set(&["operator_admin=true"]);
    provider_ok_again(&app).await;
    app.link("a.bin").await;

    ts.set(&["shields_up=true"]);
    refused_creation(&ts, &app, &["shields-up", "--shields-up=false"]).await;
    ts.set(&["shields_up=false"]);
    provider_ok_again(&app).await;
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 201, "{v}");
}

async fn the_funnel_ports_attribute_is_read(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    // Funnel may use 443 only: ferry will not open links on 8443 where nobody would reach them.
    ts.set(&["funnel_ports=443"]);
    let app = app_with(&ts, &[("FERRY_FUNNEL_PORT", "8443")]).await;
    app.data_file("a.bin", 1000);
    refused_creation(&ts, &app, &["FERRY_FUNNEL_PORT", "allows 443, not 8443"]).await;
    // 8443 allowed but 443 not: the CLI refuses every Funnel command (it checks 443).
    ts.set(&["funnel_ports=8443,10000"]);
    let msg = refused_creation(&ts, &app, &["funnel-ports"]).await;
    assert!(msg.contains("port 443 is not allowed for funnel"), "{msg}");
    ts.set(&["funnel_ports=443,8443"]);
    let v = app.link("a.bin").await;
    let mount = format!("/s/{}", v["tunnel_id"].as_str().unwrap());
    let sc = ts.serve_config();
    assert!(!sc["Web"][format!("{DNS}:8443")]["Handlers"][&mount].is_null(), "{sc}");
}

async fn an_ipv6_upstream_verifies(kind: Kind) {
    // Since 1.92 tailscale stores `http://[::1]:P/...` as `http://::1:P/...`; ferry must read it
    // as the target it asked for (nothing listens on ::1 here: only the config is checked).
    let ts = Sidecar::start(kind, &[]).await;
    let port = free_port();
    let upstream = format!("http://[::1]:{port}");
    let app = app_with(&ts, &[("FERRY_UPSTREAM_URL", upstream.as_str())]).await;
    app.data_file("a.bin", 1000);
    let v = app.link("a.bin").await;
    let id = v["tunnel_id"].as_str().unwrap();
    let h = handler(&ts.serve_config(), &format!("/s/{id}"));
    assert_eq!(h["Proxy"], format!("http://::1:{port}/s/{id}"), "{h}");
    // The reconciliation also reads it as ferry's handler, so nothing is put back and nothing is
    // removed.
    two_reconciliations(&app).await;
    assert!(!app.log().contains("tunnel provider reconciled"), "{}", app.log());
    assert_eq!(app.terminate(id).await, 204);
    assert!(!ts.mounts().contains(&format!("/s/{id}")));
}

async fn an_old_tailscale_takes_a_localhost_upstream_and_refuses_another(kind: Kind) {
    let ts = Sidecar::start(kind, &[]).await;
    ts.set(&["version=1.90.9"]);
    // Before 1.92 `localhost` is stored as 127.0.0.1, and the link works.
    let public_port = free_port();
    let upstream = format!("http://localhost:{public_port}");
    let public_addr = format!("127.0.0.1:{public_port}");
    let app = app_with(
        &ts,
        &[
            ("FERRY_UPSTREAM_URL", upstream.as_str()),
            ("FERRY_PUBLIC_ADDR", public_addr.as_str()),
        ],
    )
    .await;
    let bytes = app.data_file("a.bin", 5000);
    let v = app.link("a.bin").await;
    let id = v["tunnel_id"].as_str().unwrap();
    assert_eq!(
        handler(&ts.serve_config(), &format!("/s/{id}"))["Proxy"],
        format!("http://127.0.0.1:{public_port}/s/{id}")
    );
    let r = curl(&ts.via_front(v["download_url"].as_str().unwrap()), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == bytes);
    drop(app);

    // With another upstream, or in tcp mode, ferry does not start, and it says what to change.
    for (k, v, wants) in [
        (
            "FERRY_UPSTREAM_URL",
            "http://nginx.internal:8080",
            "FERRY_UPSTREAM_URL=http://nginx.internal:8080",
        ),
        ("FERRY_FUNNEL_MODE", "tcp", "FERRY_FUNNEL_MODE=tcp"),
    ] {
        let public = format!("127.0.0.1:{}", free_port());
        let mut env: Vec<(&str, &str)> = vec![("FERRY_PUBLIC_ADDR", public.as_str()), (k, v)];
        let sidecar = ts.env();
        env.extend(sidecar.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let line = startup_error(&env).await;
        assert!(line.contains(wants) && line.contains("1.92"), "{line}");
    }
}

/// tailscaled lets a client change the serve config only when it is root, the operator, or
/// tailscaled's own user, and the emulator does the same: a non-root ferry can drive a sidecar
/// only when tailscaled runs as ferry's user (as in `compose/`).
#[test]
fn only_root_or_tailscaleds_own_user_may_change_the_serve_config() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = format!("--socket={}", dir.path().join("tailscaled.sock").display());
    let as_user = |uid: Option<u32>, args: &[&str]| -> std::process::Command {
        let mut c = match uid {
            Some(u) => {
                let mut c = std::process::Command::new("setpriv");
                c.args([format!("--reuid={u}"), format!("--regid={u}"), "--clear-groups".into()])
                    .arg(EMULATOR);
                c
            }
            None => std::process::Command::new(EMULATOR),
        };
        c.arg(&socket).args(args);
        c
    };
    let open = |uid: Option<u32>| {
        let out = as_user(
            uid,
            &[
                "funnel",
                "--bg",
                "--yes",
                "--https=443",
                "--set-path=/s/a",
                "http://127.0.0.1:9/s/a",
            ],
        )
        .output()
        .expect("setpriv (util-linux) runs the CLI as another user");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for daemon_uid in [None, Some(NOBODY)] {
        let listen = format!("--listen=127.0.0.1:{}", free_port());
        let mut daemon = as_user(daemon_uid, &["daemon", &listen, &format!("--dns-name={DNS}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !as_user(None, &["status", "--json"]).output().unwrap().status.success() {
            assert!(Instant::now() < deadline, "the emulated tailscaled did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (ok, err) = open(Some(NOBODY));
        if daemon_uid.is_none() {
            assert!(!ok && err.contains("Access denied"), "{err}");
            let (ok, err) = open(None);
            assert!(ok, "root: {err}");
        } else {
            assert!(ok, "tailscaled's own user: {err}");
        }
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
}

const NOBODY: u32 = 65534;

/// An upload link lives under its own Funnel path: the page and a `curl -T` come through the
/// front, and the file lands.
#[tokio::test]
async fn an_upload_link_receives_through_its_funnel_path() {
    let ts = Sidecar::start(Kind::Process, &[]).await;
    let app = app_with(&ts, &[]).await;
    std::fs::create_dir_all(app.path("data/drop")).unwrap();
    let (status, v) = app.upload_link(json!({"folder": "drop", "max_bytes": 100_000})).await;
    assert_eq!(status, 201, "{v}");
    let id = v["tunnel_id"].as_str().unwrap();
    let url = v["upload_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("https://{DNS}/s/{id}/up/?t=")), "{url}");
    let page = curl(&ts.via_front(url), &[]).await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scan.pdf");
    let sent = crate::helpers::pseudo_random(50_000, 7);
    std::fs::write(&file, &sent).unwrap();
    let r = curl(&ts.via_front(url), &["-T", file.to_str().unwrap()]).await;
    assert_eq!(r.status, 201);
    assert!(std::fs::read(app.path("data/drop/scan.pdf")).unwrap() == sent);
    let closed = app.closed(id, Duration::from_secs(10)).await;
    assert_eq!(closed["close_reason"], "completed");
}
