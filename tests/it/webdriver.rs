//! A small W3C WebDriver client over HTTP, enough to drive headless Chromium through
//! chromedriver: sessions, navigation, elements, typing, clicking, choosing files, dialogs,
//! screenshots, a slower network.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Child,
    _profile: tempfile::TempDir,
}

#[derive(Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session.
    pub async fn start() -> Browser {
        let port = crate::helpers::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is installed (script/test installs chromium and chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1200,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sid = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        Browser {
            http,
            base: format!("{base}/session/{sid}"),
            _driver: driver,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if r["value"].get("error").is_some() {
            panic!("webdriver {path}: {}", r["value"]);
        }
        r["value"].clone()
    }

    async fn try_cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Option<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            req = req.json(&body);
        }
        let r: Value = req.send().await.ok()?.json().await.ok()?;
        if r["value"].get("error").is_some() {
            None
        } else {
            Some(r["value"].clone())
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Waits for a visible element matching the CSS selector.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self
                .try_cmd(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await
            {
                let e = Element(v[ELEMENT].as_str().unwrap_or_else(|| panic!("{v}")).to_string());
                if self.displayed(&e).await {
                    return e;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no visible element {css}\n{}",
                self.text_of_body().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn displayed(&self, e: &Element) -> bool {
        self.try_cmd(
            reqwest::Method::GET,
            &format!("/element/{}/displayed", e.0),
            Value::Null,
        )
        .await
        .is_some_and(|v| v == true)
    }

    pub async fn click(&self, e: &Element) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            Some(json!({})),
        )
        .await;
    }

    /// Finds and clicks `css`, finding it again when the page re-rendered it in between (a view
    /// that loads asynchronously replaces its elements).
    pub async fn click_css(&self, css: &str) {
        for _ in 0..20 {
            let e = self.find(css).await;
            let done = self
                .try_cmd(reqwest::Method::POST, &format!("/element/{}/click", e.0), json!({}))
                .await;
            if done.is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("could not click {css}: it kept being replaced");
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Chooses files in the `<input type="file">` matching `css`, as a person picking them in the
    /// browser's dialog would. The input may be out of sight (pages often hide it behind a styled
    /// drop zone), so it is not waited for like `find` waits.
    pub async fn choose_files(&self, css: &str, paths: &[&Path]) {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = v[ELEMENT].as_str().unwrap_or_else(|| panic!("{v}"));
        let text = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n");
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Makes the page's uploads no faster than `bytes_per_second` (Chromium's network emulation),
    /// so that a test can act while one is under way.
    pub async fn limit_uploads(&self, bytes_per_second: u64) {
        self.cdp("Network.enable", json!({})).await;
        self.cdp(
            "Network.emulateNetworkConditions",
            json!({"offline": false, "latency": 0, "downloadThroughput": -1, "uploadThroughput": bytes_per_second}),
        )
        .await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.cmd(reqwest::Method::GET, &format!("/element/{}/text", e.0), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub async fn property(&self, e: &Element, name: &str) -> Value {
        self.cmd(reqwest::Method::GET, &format!("/element/{}/property/{name}", e.0), None)
            .await
    }

    pub async fn script(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs a Chrome DevTools Protocol command through chromedriver (`goog/cdp/execute`).
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await
    }

    pub async fn text_of_body(&self) -> String {
        self.try_cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": "return document.body.innerText", "args": []}),
        )
        .await
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
    }

    /// Waits until `script` (a JS expression) is truthy.
    pub async fn wait_for(&self, what: &str, expr: &str) {
        self.wait_for_within(what, expr, Duration::from_secs(15)).await;
    }

    /// Waits until `script` (a JS expression) is truthy, for at most `within`.
    pub async fn wait_for_within(&self, what: &str, expr: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let v = self.script(&format!("return !!({expr})")).await;
            if v == true {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.text_of_body().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn accept_dialog(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .try_cmd(reqwest::Method::POST, "/alert/accept", json!({}))
            .await
            .is_none()
        {
            assert!(Instant::now() < deadline, "no dialog to accept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the page (an artifact for people to look at).
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (closing Chromium); chromedriver is killed with its handle.
        let url = self.base.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                reqwest::Client::new()
                    .delete(url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .ok()
            });
        })
        .join();
    }
}
