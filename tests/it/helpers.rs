//! `TestApp`: a real `ferry serve` process with real nginx, in a temp dir, on free loopback ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub public: String,
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(env: &[(&str, &str)]) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let admin_port = free_port();
        let public_port = free_port();
        let mut all: Vec<(String, String)> = vec![
            ("NAS_MOUNT_PATH".into(), dir.path().join("data").display().to_string()),
            ("FERRY_STATE_DIR".into(), dir.path().join("state").display().to_string()),
            (
                "FERRY_TUNNELS_DIR".into(),
                dir.path().join("tunnels").display().to_string(),
            ),
            ("FERRY_LOGS_DIR".into(), dir.path().join("logs").display().to_string()),
            ("FERRY_ADMIN_ADDR".into(), format!("127.0.0.1:{admin_port}")),
            ("FERRY_PUBLIC_ADDR".into(), format!("127.0.0.1:{public_port}")),
            ("BASE_URL".into(), format!("http://127.0.0.1:{public_port}")),
            ("FERRY_LOG".into(), "info,ferry=debug".into()),
        ];
        for (k, v) in env {
            all.retain(|(kk, _)| kk != k);
            all.push((k.to_string(), v.to_string()));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some((_, token)) = all.iter().find(|(k, _)| k == "FERRY_ADMIN_TOKEN") {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
        }
        let mut app = TestApp {
            dir,
            admin: format!("http://127.0.0.1:{admin_port}"),
            public: format!("http://127.0.0.1:{public_port}"),
            http: reqwest::Client::builder().default_headers(headers).build().unwrap(),
            env: all,
            child: None,
        };
        app.start().await;
        app
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file of `size` pseudo-random bytes into the data dir and returns its bytes.
    pub fn data_file(&self, rel: &str, size: usize) -> Vec<u8> {
        let bytes = pseudo_random(size, size as u64);
        let p = self.path("data").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &bytes).unwrap();
        bytes
    }

    /// Makes an upload link through the API: the status and the response.
    pub async fn upload_link(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/uploads", self.admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("ferry.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ferry binary runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", self.admin)).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("ferry exited during startup ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "ferry did not become healthy:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// ferry's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).expect("ferry runs")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("ferry.log")).unwrap_or_default()
    }

    /// `kill -9` of ferry (its nginx lives on, as it would after a crash).
    pub async fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.start_kill().unwrap();
        c.wait().await.unwrap();
    }

    /// SIGTERM and wait: the graceful path.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().unwrap().to_string())
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(10), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }

    pub async fn create(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/links", self.admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn link(&self, file: &str) -> Value {
        let (status, v) = self.create(serde_json::json!({ "file_path": file })).await;
        assert_eq!(status, 201, "{v}");
        v
    }

    /// Ends a link through the API (`DELETE /admin/tunnels/<id>`); returns the status.
    pub async fn terminate(&self, id: &str) -> u16 {
        self.http
            .delete(format!("{}/admin/tunnels/{id}", self.admin))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.admin)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Subscribes to the Server-Sent Events stream (`GET /admin/events`).
    pub async fn events(&self) -> reqwest::Response {
        self.http
            .get(format!("{}/admin/events", self.admin))
            .send()
            .await
            .unwrap()
    }

    pub async fn history(&self) -> Vec<Value> {
        self.get("/admin/history").await.1["tunnels"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn open(&self) -> Vec<Value> {
        self.get("/admin/tunnels").await.1["tunnels"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the link is in history, and returns its record.
    pub async fn closed(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = self.history().await.into_iter().find(|t| t["tunnel_id"] == id) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "link {id} was not closed within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `tunnels/<id>` is gone (teardown removes it right after the gate closes).
    pub async fn tunnel_dir_gone(&self, id: &str) -> bool {
        for _ in 0..100 {
            if !self.path("tunnels").join(id).exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The master process of this app's managed nginx, from its pid file.
    pub fn nginx_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("state/nginx/nginx.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref().and_then(|c| c.id()) {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.to_string())
                .status();
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{c}")).exists()
                    || std::fs::read_to_string(format!("/proc/{c}/stat")).is_ok_and(|s| s.contains(") Z "))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // A killed ferry leaves its nginx behind; never leave it running after a test.
        if let Some(pid) = self.nginx_pid() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Runs `ferry serve` in a fresh directory (its own data dir, state dir and admin port) with
/// `env` on top, expects it to stop during startup, and returns the `ferry:` line it printed.
pub async fn startup_error(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("serve")
        .current_dir(dir.path())
        .env("NAS_MOUNT_PATH", dir.path())
        .env("FERRY_STATE_DIR", dir.path().join("state"))
        .env("FERRY_ADMIN_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "ferry started with {env:?}:\n{err}");
    let line = err.lines().find(|l| l.starts_with("ferry:"));
    line.unwrap_or_else(|| panic!("no `ferry:` line:\n{err}")).to_string()
}

/// What curl did: its exit code, the body it received, and the HTTP status (0 for none).
pub struct CurlResult {
    pub exit: i32,
    pub body: Vec<u8>,
    pub status: u16,
}

/// Runs curl with `args` against `url`, writing the body to a temp file.
pub async fn curl(url: &str, args: &[&str]) -> CurlResult {
    let out = tempfile::NamedTempFile::new().unwrap();
    let o = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(out.path())
        .args(["-w", "%{http_code}", "-A", "ferry-test"])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl is installed (script/test installs it)");
    CurlResult {
        exit: o.status.code().unwrap_or(-1),
        body: std::fs::read(out.path()).unwrap_or_default(),
        status: String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0),
    }
}

/// curl's exit code for "Empty reply from server": what nginx's 444 looks like to a client.
pub const EMPTY_REPLY: i32 = 52;

/// A GET that reads `n` body bytes and then hangs up: an interrupted download.
pub async fn interrupted_get(url: &str, n: usize) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferry-test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let mut body_at = None;
    while body_at.is_none_or(|b| got.len() < b + n) {
        let k = s.read(&mut buf).await.unwrap();
        assert!(k > 0, "server closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
        if body_at.is_none() {
            body_at = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
    }
    let b = body_at.unwrap();
    got[b..b + n].to_vec()
}

/// Polls `f` every 50 ms until it holds, for at most `within`.
pub async fn eventually(within: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clients on loopback addresses `127.0.0.<first>` to `127.0.0.<last>` race to download `url` at
/// once. Every winner got exactly `bytes`; every loser got 444 and zero bytes. Returns (winners,
/// losers).
pub async fn race(url: &str, first: u8, last: u8, bytes: &[u8]) -> (usize, usize) {
    let racers: Vec<_> = (first..=last)
        .map(|n| {
            let u = url.to_string();
            tokio::spawn(async move { curl(&u, &["--interface", &format!("127.0.0.{n}")]).await })
        })
        .collect();
    let (mut winners, mut losers) = (0, 0);
    for r in racers {
        let r = r.await.unwrap();
        if r.exit == 0 {
            winners += 1;
            assert_eq!(r.status, 200);
            assert!(r.body == bytes, "the winner got different bytes");
        } else {
            losers += 1;
            assert_eq!(
                (r.exit, r.body.len()),
                (EMPTY_REPLY, 0),
                "losers get 444 and zero bytes"
            );
        }
    }
    (winners, losers)
}

/// A real `redis-server` on a free loopback port, its data (AOF on, `appendfsync always`) in a
/// temp dir; killed when dropped. `restart` brings it back on the same port with the same data.
pub struct RedisServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    extra: Vec<String>,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Starts with extra `--name value` arguments (they win over the defaults).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        s.spawn().await;
        s
    }

    /// A port and a data dir for a server that is not started yet (`spawn` starts it).
    pub fn reserve() -> RedisServer {
        RedisServer {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            extra: vec![],
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .args(&self.extra)
            .stdout(std::fs::File::create(self.dir.path().join("redis.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (script/test installs it: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pong() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start:\n{}",
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the server answers PING (and has loaded its data: until then it says LOADING).
    pub fn pong(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        // With requirepass, NOAUTH is the answer of a server that is up.
        c.write_all(b"PING\r\n").is_ok()
            && c.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    }

    /// `kill -9`: no shutdown, no final fsync.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `size` pseudo-random bytes (xorshift), a different stream for each `seed`.
pub fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small tmpfs mounted for one test (a disk to fill, or a NAS mount to take away), unmounted
/// however the test ends.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(at: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).unwrap();
        let disk = SmallDisk(at);
        disk.mount_again(size);
        disk
    }

    /// Mounts a fresh tmpfs at the same place (after `unmount`).
    pub fn mount_again(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "this test mounts a small tmpfs: run it as root (CI does)");
    }

    /// A plain `umount`: it fails while anyone (ferry, nginx) keeps a file or folder open on it.
    pub fn unmount(&self) {
        let out = std::process::Command::new("umount").arg(&self.0).output().unwrap();
        assert!(
            out.status.success(),
            "umount {}: {}",
            self.0.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fills the disk to the last byte.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0]);
    }

    pub fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily, and as often as it was mounted over itself.
        for _ in 0..4 {
            let unmounted = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
            if !unmounted.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
}
