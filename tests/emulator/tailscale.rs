//! An emulator of the `tailscale` CLI and of Funnel's public front, for ferry's tests (which
//! cannot reach Tailscale). It keeps the argv grammar, the error texts and the JSON shapes of
//! Tailscale's own CLI for what ferry uses, and is as strict as the real CLI where ferry could go
//! wrong. The texts come from tailscale/tailscale (1.90 to 1.103): `cmd/tailscale/cli/serve_v2.go`,
//! `serve_legacy.go` and `ts.go`, `ipn/serve.go`, `ipn/ipnlocal/serve.go`, `ipn/localapi/serve.go`
//! and `client/local/local.go`; each place below names its source.
//!
//! ```text
//! tailscale-emulator [--socket=PATH] status --json
//! tailscale-emulator [--socket=PATH] {funnel|serve} status [--json]
//! tailscale-emulator [--socket=PATH] {funnel|serve} reset
//! tailscale-emulator [--socket=PATH] {funnel|serve} --bg [--yes] --https=PORT [--set-path=/p] <target>
//! tailscale-emulator [--socket=PATH] {funnel|serve} [--yes] --https=PORT [--set-path=/p] off
//! tailscale-emulator [--socket=PATH] funnel --bg --tls-terminated-tcp=PORT [--proxy-protocol=2] tcp://host:port
//! tailscale-emulator [--socket=PATH] funnel --tls-terminated-tcp=PORT off
//! ```
//!
//! Two commands are the emulator's own:
//! - `daemon --listen=ADDR --dns-name=NAME [--funnel-port=443] [--no-funnel] [--persist]` stands
//!   for tailscaled and Funnel's ingress: it listens on the socket path, keeps the node's state in
//!   a file beside it (a fresh, empty serve config unless `--persist`, as after a sidecar restart),
//!   and answers on ADDR as Funnel answers on `NAME:PORT`, in plain HTTP/TCP (no TLS). While the
//!   daemon is not running, every command fails as the CLI fails when tailscaled is stopped.
//! - `emulator-set KEY=VALUE...` turns the switches the tests set:
//!   - `version`: the tailscale version (`1.92.3` unless set); before 1.92 a proxy target must be
//!     localhost or 127.0.0.1 and `--proxy-protocol` does not exist.
//!   - `funnel`, `https` (`true`/`false`): the node's Funnel and HTTPS capabilities.
//!   - `funnel_enable`: what the CLI does when the node lacks them: `wait` (prints the enablement
//!     link and blocks until Funnel is enabled, at most `enable_wait_ms`), `text` (prints the
//!     control server's text and exits 0 having changed nothing), or `error` (the control query
//!     fails: "Funnel not available", no link).
//!   - `funnel_ports`: the node's funnel-ports attribute (`443,8443,10000` unless set; empty: none).
//!   - `denied`: serve-config writes are refused (neither root nor the operator). Without it, a
//!     client whose uid is neither 0 nor the daemon's is refused all the same, as by tailscaled.
//!   - `operator_admin` (`true` unless set): `false` is an operator that cannot `sudo`, whose writes
//!     are refused while the config holds a file-path handler.
//!   - `shields_up`: shields-up is on (Funnel cannot be switched on, nothing answers outside).
//!   - `foreground`: a port held by a foreground `tailscale funnel` session (`0`: none).
//!   - `etag_failures` (the next N writes lose the ETag race), `write_delay_ms`, and `hang_next`
//!     (the next N commands hang for a minute, as a wedged tailscaled makes them).
//!
//! Writes are guarded as tailscaled guards them: the CLI reads the config with its ETag, changes
//! it, and the write fails when the ETag moved in between ("Another client is changing the serve
//! config; please try again.").

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

const DEFAULT_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";
const DEFAULT_VERSION: &str = "1.92.3";
const DEFAULT_FUNNEL_PORTS: &str = "443,8443,10000";
const FUNNEL_PORTS_CAP: &str = "https://tailscale.com/cap/funnel-ports";
const SERVE_CONFIG_API: &str = "/localapi/v0/serve-config";
const FOREGROUND_SESSION: &str = "fg-emulator-session";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    // Global flags come before the subcommand.
    while let Some(a) = args.first().cloned() {
        if let Some(v) = a.strip_prefix("--socket=").or_else(|| a.strip_prefix("-socket=")) {
            socket = PathBuf::from(v);
            args.remove(0);
        } else if a == "--socket" || a == "-socket" {
            args.remove(0);
            if args.is_empty() {
                eprintln!("flag needs an argument: -socket");
                return ExitCode::from(2);
            }
            socket = PathBuf::from(args.remove(0));
        } else {
            break;
        }
    }
    let Some(cmd) = args.first().cloned() else {
        eprintln!("USAGE\n  tailscale [flags] <subcommand> [command flags]");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    if cmd != "daemon" && cmd != "emulator-set" {
        hang_if_asked(&socket);
    }
    let r = match cmd.as_str() {
        "daemon" => return daemon(&socket, rest),
        "emulator-set" => emulator_set(&socket, rest),
        "status" => status(&socket, rest),
        "funnel" | "serve" => serve_cmd(&socket, &cmd, rest),
        other => Err(Fail::usage(format!("tailscale: unknown subcommand: {other}"))),
    };
    match r {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            if !f.stdout.is_empty() {
                print!("{}", f.stdout);
            }
            if !f.stderr.is_empty() {
                eprintln!("{}", f.stderr);
            }
            ExitCode::from(f.code)
        }
    }
}

/// Implements `hang_next`: while the switch still counts turns, this command takes one of them
/// and hangs.
fn hang_if_asked(socket: &Path) {
    let Ok(_guard) = lock(socket) else { return };
    let Ok(mut node) = Node::connect(socket) else { return };
    let n = node.state["hang_next"].as_u64().unwrap_or(0);
    if n == 0 {
        return;
    }
    node.state["hang_next"] = json!(n - 1);
    if node.save().is_ok() {
        drop(_guard);
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// How a command ends when it does not succeed: its exit status and what it printed.
struct Fail {
    code: u8,
    stdout: String,
    stderr: String,
}

impl Fail {
    fn new(stderr: impl Into<String>) -> Self {
        Fail {
            code: 1,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
    fn usage(stderr: impl Into<String>) -> Self {
        Fail {
            code: 2,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
    /// An error printed before `try ... --help`, as serve_v2.go does.
    fn help(sub: &str, msg: impl std::fmt::Display) -> Self {
        Fail::new(format!("error: {msg}\n\ntry `tailscale {sub} --help` for usage info"))
    }
    /// The CLI stops early, successfully, having printed `stdout` (serve_legacy.go
    /// enableFeatureInteractive calls `os.Exit(0)` when it should not wait).
    fn exit_ok(stdout: impl Into<String>) -> Self {
        Fail {
            code: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tailscaled unreachable: each call that fails first says so in its own words.

/// tailscaled is not running; `reason` is what connecting to its socket said.
struct Down {
    socket: PathBuf,
    reason: &'static str,
}

impl Down {
    /// `fixTailscaledConnectError` (cmd/tailscale/cli/ts.go), when no tailscaled process is found:
    /// what `status` prints, and what `funnel` prints after "getting client status: ".
    fn not_running() -> String {
        let systemd =
            std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("systemctl").exists()));
        let hint = if systemd {
            " (sudo systemctl start tailscaled ?)"
        } else {
            ""
        };
        format!("failed to connect to local tailscaled; it doesn't appear to be running{hint}")
    }

    /// `doLocalRequestNiceError` (client/local/local.go), for a LocalAPI call.
    fn localapi(&self, path: &str) -> String {
        format!(
            "Failed to connect to local Tailscale daemon for {path}; not running? Error: dial unix {}: connect: {}",
            self.socket.display(),
            self.reason
        )
    }

    /// `GetServeConfig` failed (client/local/local.go wraps it as "getting serve config").
    fn getting_serve_config(&self) -> String {
        format!("getting serve config: {}", self.localapi(SERVE_CONFIG_API))
    }

    /// `SetServeConfig` failed.
    fn sending_serve_config(&self) -> String {
        format!("sending serve config: {}", self.localapi(SERVE_CONFIG_API))
    }
}

// ---------------------------------------------------------------------------------------------
// State: tailscaled listens on its Unix socket and keeps the node's state in a file beside it
// (`tailscaled.state`), written under a lock and guarded by an ETag.

struct Node {
    socket: PathBuf,
    state: Value,
}

/// The effective uid of this process (what tailscaled reads from a client's socket with
/// SO_PEERCRED).
fn effective_uid() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            line.split_whitespace().nth(2)?.parse().ok()
        })
        .unwrap_or(0)
}

fn state_path(socket: &Path) -> PathBuf {
    socket.with_extension("state")
}

fn lock(path: &Path) -> Result<LockGuard, Fail> {
    let lock = path.with_extension("lock");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(_) => return Ok(LockGuard(lock)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A writer that died holding the lock must not block everyone forever.
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(10));
                if stale {
                    let _ = std::fs::remove_file(&lock);
                }
                if Instant::now() > deadline {
                    return Err(Fail::new("timeout waiting for the serve config lock"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(Fail::new(format!("lock {}: {e}", lock.display()))),
        }
    }
}

struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Node {
    /// Connects to tailscaled's socket, as the CLI does, and reads the node's state. A socket
    /// left by a daemon that died refuses the connection.
    fn connect(socket: &Path) -> Result<Node, Down> {
        let down = |reason| Down {
            socket: socket.to_path_buf(),
            reason,
        };
        if let Err(e) = std::os::unix::net::UnixStream::connect(socket) {
            return Err(down(match e.kind() {
                std::io::ErrorKind::NotFound => "no such file or directory",
                std::io::ErrorKind::PermissionDenied => "permission denied",
                _ => "connection refused",
            }));
        }
        let text = std::fs::read_to_string(state_path(socket)).map_err(|_| down("connection refused"))?;
        let state: Value = serde_json::from_str(&text).map_err(|_| down("connection refused"))?;
        Ok(Node {
            socket: socket.to_path_buf(),
            state,
        })
    }

    fn etag(&self) -> u64 {
        self.state["etag"].as_u64().unwrap_or(0)
    }

    fn dns_name(&self) -> String {
        self.state["dns_name"].as_str().unwrap_or_default().to_string()
    }

    /// A switch of the node's, `default` when the tests never set it.
    fn flag(&self, key: &str, default: bool) -> bool {
        self.state[key].as_bool().unwrap_or(default)
    }

    fn knob<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.state[key].as_str().unwrap_or(default)
    }

    /// The version as `(major, minor)`.
    fn version(&self) -> (u32, u32) {
        let v = self.knob("version", DEFAULT_VERSION);
        let mut parts = v.split(['.', '-']).map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    fn serve_config(&self) -> Value {
        match &self.state["serve"] {
            Value::Object(m) => Value::Object(m.clone()),
            _ => Value::Object(Map::new()),
        }
    }

    fn has_cap(&self, cap: &str) -> bool {
        self.caps().iter().any(|c| c == cap)
    }

    fn caps(&self) -> Vec<String> {
        let mut caps = vec![];
        if self.flag("https", true) {
            caps.push("https".to_string());
        }
        if self.flag("funnel", true) {
            caps.push("funnel".into());
        }
        let ports = self.knob("funnel_ports", DEFAULT_FUNNEL_PORTS);
        if !ports.is_empty() {
            caps.push(format!("{FUNNEL_PORTS_CAP}?ports={ports}"));
        }
        caps
    }

    /// The LocalAPI's serve-config POST (ipn/localapi/serve.go, then ipn/ipnlocal/serve.go
    /// setServeConfigLocked), as the CLI reports its failures (client/local/local.go). With
    /// `etag`, the write fails when the config changed since it was read (If-Match).
    fn set_serve_config(&self, etag: Option<u64>, sc: Value) -> Result<(), Fail> {
        let delay = self.state["write_delay_ms"].as_u64().unwrap_or(0);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        // tailscaled lets a client change the node only when it is root, tailscaled's own user,
        // or the operator (ipn/ipnauth IsReadonlyConn); anyone else gets 403, which the client
        // reports as "Access denied". The emulator knows no operator: `denied` stands for one
        // that is missing.
        let me = effective_uid();
        let daemon = self.state["daemon_uid"].as_u64().unwrap_or(0);
        if me != 0 && me != daemon {
            return Err(Fail::new("sending serve config: Access denied: serve config denied"));
        }
        let _guard = lock(&self.socket)?;
        let mut now = Node::connect(&self.socket).map_err(|d| Fail::new(d.sending_serve_config()))?;
        if now.flag("denied", false) {
            return Err(Fail::new("sending serve config: Access denied: serve config denied"));
        }
        // authorizeServeConfigForGOOSAndUserContext: a config holding a file-path handler needs
        // a local admin; 401 with a plain-text body.
        if !now.flag("operator_admin", true) && has_path_handler(&sc) {
            return Err(Fail::new(
                "sending serve config: 401 Unauthorized: must be root, or be an operator and able to run 'sudo tailscale' to serve a path",
            ));
        }
        if now.flag("shields_up", false) && funnel_on(&sc) {
            return Err(Fail::new(
                "sending serve config: updating config: Unable to turn on Funnel while shields-up is enabled",
            ));
        }
        // Since 1.92 tailscaled, not the CLI, refuses a background port a foreground session holds.
        if now.version() >= (1, 92) {
            let current = now.serve_config();
            let ports = sc["TCP"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>());
            for port in ports.unwrap_or_default() {
                if port.parse().is_ok_and(|p| foreground_for(&current, p).is_some()) {
                    return Err(Fail::new(format!(
                        "sending serve config: updating config: foreground listener already exists for port {port}"
                    )));
                }
            }
        }
        if let Some(etag) = etag {
            let injected = now.state["etag_failures"].as_u64().unwrap_or(0);
            if injected > 0 {
                now.state["etag_failures"] = json!(injected - 1);
                now.state["etag"] = json!(now.etag() + 1);
                now.save()?;
            }
            if injected > 0 || now.etag() != etag {
                // 412, reported as "Preconditions failed"; serve_v2.go prints its own line first.
                return Err(Fail::new(
                    "Another client is changing the serve config; please try again.\nsending serve config: Preconditions failed: etag mismatch",
                ));
            }
        }
        now.state["serve"] = sc;
        now.state["etag"] = json!(now.etag() + 1);
        now.save()
    }

    fn save(&self) -> Result<(), Fail> {
        let path = state_path(&self.socket);
        let tmp = self.socket.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state).unwrap())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Fail::new(format!("write {}: {e}", path.display())))
    }
}

/// The config and its foreground sessions' configs (`ipn.ServeConfig.Foreground`).
fn with_foreground(sc: &Value) -> Vec<&Value> {
    let mut all = vec![sc];
    if let Some(fg) = sc["Foreground"].as_object() {
        all.extend(fg.values());
    }
    all
}

/// `ServeConfig.HasPathHandler`.
fn has_path_handler(sc: &Value) -> bool {
    with_foreground(sc).into_iter().any(|c| {
        c["Web"].as_object().is_some_and(|web| {
            web.values().any(|w| {
                w["Handlers"]
                    .as_object()
                    .is_some_and(|h| h.values().any(|h| h["Path"].as_str().is_some_and(|p| !p.is_empty())))
            })
        })
    })
}

/// `ServeConfig.IsFunnelOn`.
fn funnel_on(sc: &Value) -> bool {
    with_foreground(sc).into_iter().any(|c| {
        c["AllowFunnel"]
            .as_object()
            .is_some_and(|m| m.values().any(|v| v.as_bool() == Some(true)))
    })
}

/// The foreground session's config serving `port`, if one does (`ServeConfig.FindConfig`).
fn foreground_for(sc: &Value, port: u16) -> Option<&Value> {
    sc["Foreground"]
        .as_object()?
        .values()
        .find(|c| !c["TCP"][port.to_string()].is_null())
}

fn emulator_set(socket: &Path, args: &[String]) -> Result<String, Fail> {
    let _guard = lock(socket)?;
    let mut node = Node::connect(socket).map_err(|_| Fail::new("emulator-set: the daemon is not running"))?;
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| Fail::usage(format!("emulator-set: expected KEY=VALUE, got {a:?}")))?;
        let number = || {
            v.parse::<u64>()
                .map_err(|_| Fail::usage(format!("emulator-set: {k} wants a number, got {v:?}")))
        };
        let boolean = || match v {
            "true" => Ok(json!(true)),
            "false" => Ok(json!(false)),
            _ => Err(Fail::usage(format!("emulator-set: {k} wants true or false, got {v:?}"))),
        };
        let value = match k {
            "etag_failures" | "enable_wait_ms" | "write_delay_ms" | "hang_next" => json!(number()?),
            "funnel" | "https" | "denied" | "operator_admin" | "shields_up" => boolean()?,
            "funnel_enable" if matches!(v, "wait" | "text" | "error") => json!(v),
            "funnel_enable" => {
                return Err(Fail::usage(format!(
                    "emulator-set: funnel_enable is wait, text or error, got {v:?}"
                )));
            }
            "version" if v.split('.').take(2).all(|p| p.parse::<u32>().is_ok()) => json!(v),
            "version" => return Err(Fail::usage(format!("emulator-set: version wants 1.NN.N, got {v:?}"))),
            "funnel_ports" => json!(v),
            "foreground" => {
                let port = number()?;
                set_foreground(&mut node, port);
                continue;
            }
            _ => return Err(Fail::usage(format!("emulator-set: unknown knob {k:?}"))),
        };
        node.state[k] = value;
    }
    node.save()?;
    Ok(String::new())
}

/// A foreground `tailscale funnel --https=PORT 3000` session holds `port` (0: the session ends).
fn set_foreground(node: &mut Node, port: u64) {
    let mut sc = node.serve_config();
    let map = sc.as_object_mut().unwrap();
    if port == 0 {
        map.remove("Foreground");
    } else {
        let hp = format!("{}:{port}", node.dns_name());
        map.insert(
            "Foreground".into(),
            json!({ FOREGROUND_SESSION: {
                "TCP": { port.to_string(): {"HTTPS": true} },
                "Web": { hp.clone(): {"Handlers": {"/": {"Proxy": "http://127.0.0.1:3000"}}} },
                "AllowFunnel": { hp: true },
            }}),
        );
    }
    node.state["serve"] = sc;
    node.state["etag"] = json!(node.etag() + 1);
}

// ---------------------------------------------------------------------------------------------
// `tailscale status --json`

fn status(socket: &Path, args: &[String]) -> Result<String, Fail> {
    let node = Node::connect(socket).map_err(|_| Fail::new(Down::not_running()))?;
    if !args.iter().any(|a| a == "--json" || a == "-json" || a == "--json=true") {
        return Ok(format!("100.64.0.1  {}  emulator  linux  -", node.dns_name()));
    }
    let dns = node.dns_name();
    let host = dns.split('.').next().unwrap_or_default().to_string();
    let suffix = dns.split_once('.').map(|(_, s)| s.to_string()).unwrap_or_default();
    let cap_map: Map<String, Value> = node.caps().into_iter().map(|c| (c, Value::Null)).collect();
    let st = json!({
        "Version": format!("{}-t0e0m0u0l-g0a0t0o0r", node.knob("version", DEFAULT_VERSION)),
        "TUN": false,
        "BackendState": "Running",
        "HaveNodeKey": true,
        "AuthURL": "",
        "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
        "Self": {
            "ID": "nEMULATOR1",
            "PublicKey": "nodekey:0000000000000000000000000000000000000000000000000000000000000000",
            "HostName": host,
            "DNSName": format!("{dns}."),
            "OS": "linux",
            "UserID": 1,
            "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
            "Online": true,
            "Capabilities": node.caps(),
            "CapMap": cap_map,
        },
        "Health": [],
        "MagicDNSSuffix": suffix,
        "CurrentTailnet": {"Name": "emulated tailnet", "MagicDNSSuffix": suffix, "MagicDNSEnabled": true},
        "CertDomains": [dns],
        "Peer": {},
        "User": {},
    });
    Ok(serde_json::to_string_pretty(&st).unwrap())
}

// ---------------------------------------------------------------------------------------------
// `tailscale serve|funnel ...`

#[derive(Default)]
struct Flags {
    bg: bool,
    yes: bool,
    set_path: String,
    https: u16,
    http: u16,
    tcp: u16,
    tls_terminated_tcp: u16,
    proxy_protocol: u8,
    json: bool,
}

/// Go's `flag` package: `-f`, `--f`, `--f=v`, `--f v`; parsing stops at the first non-flag.
/// `version` decides which flags exist: `--proxy-protocol` came with 1.92.
fn parse_flags(
    sub: &str,
    args: &[String],
    allowed: &[&str],
    version: (u32, u32),
) -> Result<(Flags, Vec<String>), Fail> {
    let mut f = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        let Some(name) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            break;
        };
        if name.is_empty() {
            break;
        }
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        if !allowed.contains(&name) || (name == "proxy-protocol" && version < (1, 92)) {
            return Err(Fail::usage(format!("flag provided but not defined: -{name}")));
        }
        let is_bool = matches!(name, "bg" | "yes" | "json");
        let value = match (inline, is_bool) {
            (Some(v), _) => v,
            (None, true) => "true".into(),
            (None, false) => {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| Fail::usage(format!("flag needs an argument: -{name}")))?
            }
        };
        let bad = |v: &str| Fail::usage(format!("invalid value {v:?} for flag -{name}: parse error"));
        let port = |v: &str| v.parse::<u16>().map_err(|_| bad(v));
        match name {
            "bg" | "yes" | "json" => {
                let b = match value.as_str() {
                    "true" | "1" | "t" | "T" | "TRUE" | "True" => true,
                    "false" | "0" | "f" | "F" | "FALSE" | "False" => false,
                    v => return Err(bad(v)),
                };
                match name {
                    "bg" => f.bg = b,
                    "yes" => f.yes = b,
                    _ => f.json = b,
                }
            }
            "set-path" => f.set_path = value,
            "https" => f.https = port(&value)?,
            "http" => f.http = port(&value)?,
            "tcp" => f.tcp = port(&value)?,
            "tls-terminated-tcp" => f.tls_terminated_tcp = port(&value)?,
            "proxy-protocol" => {
                f.proxy_protocol = match value.as_str() {
                    "1" => 1,
                    "2" => 2,
                    v => {
                        return Err(Fail::help(
                            sub,
                            format!("invalid PROXY protocol version {v:?}; must be 1 or 2"),
                        ));
                    }
                }
            }
            _ => unreachable!("checked against allowed"),
        }
        i += 1;
    }
    Ok((f, args[i..].to_vec()))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SrvType {
    Https,
    Http,
    Tcp,
    TlsTerminatedTcp,
}

impl SrvType {
    fn name(self) -> &'static str {
        match self {
            SrvType::Https => "https",
            SrvType::Http => "http",
            SrvType::Tcp => "tcp",
            SrvType::TlsTerminatedTcp => "tls-terminated-tcp",
        }
    }
}

fn clean_url_path(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Ok("/".into());
    }
    let p = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    // path.Clean: no empty, `.` or `..` segments, no doubled slashes.
    let body = p.trim_end_matches('/');
    let clean = body.is_empty() || body[1..].split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    if clean && !p.ends_with("//") {
        Ok(p)
    } else {
        Err(format!("invalid mount point {p:?}"))
    }
}

/// `ipn.ExpandProxyTargetValue` as the node's version has it: a port, `host:port`, or a URL with
/// one of the schemes. Since 1.92 any host may be proxied to (a non-localhost one needs a scheme),
/// and the port is joined on without brackets, so `[::1]:8080` is stored as `::1:8080`; before,
/// only localhost and 127.0.0.1 were allowed, stored as 127.0.0.1 (ipn/serve.go).
fn expand_target(target: &str, schemes: &[&str], default: &str, version: (u32, u32)) -> Result<String, String> {
    let legacy = version < (1, 92);
    if target.is_empty() && !legacy {
        return Err("empty target".into());
    }
    if let Ok(port) = target.parse::<u16>() {
        return Ok(format!("{default}://127.0.0.1:{port}"));
    }
    let has_scheme = target.contains("://");
    let full = if has_scheme {
        target.to_string()
    } else {
        format!("{default}://{target}")
    };
    let (scheme, rest) = full.split_once("://").unwrap();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("invalid URL parse {full:?}: invalid host"));
    }
    if !schemes.contains(&scheme) {
        return Err(format!(
            "must be a URL starting with one of the supported schemes: [{}]",
            schemes.join(" ")
        ));
    }
    // url.URL's Hostname and Port.
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (h, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("invalid URL parse {full:?}: missing ']' in host"))?;
        (h, after.strip_prefix(':').unwrap_or(""))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, ""),
        }
    };
    if legacy {
        if !matches!(host, "localhost" | "127.0.0.1") {
            return Err("only localhost or 127.0.0.1 proxies are currently supported".into());
        }
        return match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(format!("{scheme}://127.0.0.1:{p}{path}")),
            _ => Err(format!("invalid port {port:?}")),
        };
    }
    if matches!(host, "localhost" | "127.0.0.1" | "::1") {
        if port.is_empty() {
            return Err(format!("port required for localhost target {full:?}"));
        }
    } else {
        let valid_ip = host.parse::<IpAddr>().is_ok();
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_ip && !valid_name {
            return Err(format!("invalid hostname or IP address {host:?}"));
        }
        if !has_scheme {
            return Err(format!("non-localhost target {full:?} must include a scheme"));
        }
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("{scheme}://{host}:{p}{path}")),
        _ if port.is_empty() => Ok(full.clone()),
        _ => Err(format!("invalid port {port:?}")),
    }
}

fn serve_cmd(socket: &Path, sub: &str, args: &[String]) -> Result<String, Fail> {
    if let Some(out) = serve_subcommand(socket, sub, args)? {
        return Ok(out);
    }
    // Flags as the installed version defines them (--proxy-protocol is 1.92's).
    let version = Node::connect(socket).map_or((1, 92), |n| n.version());
    let (f, args) = serve_args(sub, args, version)?;
    let turn_off = args.last().is_some_and(|a| a == "off");
    // runServeCombined: Funnel's check comes first, for `off` too, and always for port 443.
    let funnel = sub == "funnel";
    if funnel {
        verify_funnel_enabled(socket, 443)?;
    }
    let mount = clean_url_path(&f.set_path).map_err(|e| Fail::new(format!("failed to clean the mount point: {e}")))?;
    let (srv, port) = serve_type(sub, &f)?;
    let node = Node::connect(socket)
        .map_err(|d| Fail::new(format!("error getting serve config: {}", d.getting_serve_config())))?;
    let etag = node.etag();
    let mut sc = node.serve_config();
    let dns = node.dns_name();
    let hp = format!("{dns}:{port}");
    if turn_off {
        unset_serve(&mut sc, &f, srv, port, &hp, &mount).map_err(|e| Fail::help(sub, e))?;
        node.set_serve_config(Some(etag), sc)?;
        return Ok(String::new());
    }
    if !f.bg {
        return Err(Fail::new(
            "the emulator only keeps background configurations; pass --bg (ferry always does)",
        ));
    }
    validate_config(&sc, port, srv, version)?;
    let change = Change {
        sub,
        flags: f,
        version,
        srv,
        port,
        dns,
        mount,
    };
    let target = &args[0];
    match srv {
        SrvType::Https | SrvType::Http => add_web_handler(&mut sc, &change, target)?,
        SrvType::Tcp | SrvType::TlsTerminatedTcp => add_tcp_forward(&mut sc, &change, target)?,
    }
    apply_funnel(&mut sc, funnel, &change.dns, &hp);
    node.set_serve_config(Some(etag), sc.clone())?;
    Ok(message_for_port(&sc, &change.dns, sub, srv, port, funnel))
}

/// serve_legacy.go runServeStatus and runServeReset: the subcommands, which come before any flag.
/// `None`: the command is not one of them.
fn serve_subcommand(socket: &Path, sub: &str, args: &[String]) -> Result<Option<String>, Fail> {
    match args.first().map(String::as_str) {
        Some("status") => {
            let (f, _) = parse_flags(sub, &args[1..], &["json"], (1, 92))?;
            let node = Node::connect(socket).map_err(|d| Fail::new(d.getting_serve_config()))?;
            let sc = node.serve_config();
            Ok(Some(if f.json {
                serde_json::to_string_pretty(&sc).unwrap()
            } else if sc.as_object().is_some_and(Map::is_empty) {
                "No serve config".into()
            } else {
                serde_json::to_string(&sc).unwrap()
            }))
        }
        Some("reset") => {
            let node = Node::connect(socket).map_err(|d| Fail::new(d.sending_serve_config()))?;
            node.set_serve_config(None, json!({}))?;
            Ok(Some(String::new()))
        }
        _ => Ok(None),
    }
}

/// The flags `version` defines, and the arguments after them, checked as serve_v2.go
/// validateArgs checks them.
fn serve_args(sub: &str, args: &[String], version: (u32, u32)) -> Result<(Flags, Vec<String>), Fail> {
    let mut allowed = vec![
        "bg",
        "set-path",
        "https",
        "tcp",
        "tls-terminated-tcp",
        "yes",
        "proxy-protocol",
    ];
    if sub == "serve" {
        allowed.push("http");
    }
    let (f, args) = parse_flags(sub, args, &allowed, version)?;
    if args.is_empty() {
        return Err(Fail::usage(format!(
            "USAGE\n  tailscale {sub} <target>\n  tailscale {sub} status [--json]\n  tailscale {sub} reset"
        )));
    }
    if args.len() > 2 {
        return Err(Fail::new(format!(
            "Error: invalid number of arguments ({})\ntry `tailscale {sub} --help` for usage info",
            args.len()
        )));
    }
    let turn_off = args.last().is_some_and(|a| a == "off");
    if args.len() == 2 && !turn_off {
        return Err(Fail::new(format!(
            "Error: invalid argument format\ntry `tailscale {sub} --help` for usage info"
        )));
    }
    Ok((f, args))
}

/// The one kind of handler the flags ask for, and its port (`--https=443` when none is given).
fn serve_type(sub: &str, f: &Flags) -> Result<(SrvType, u16), Fail> {
    let mut types = vec![];
    for (t, p) in [
        (SrvType::Http, f.http),
        (SrvType::Https, f.https),
        (SrvType::Tcp, f.tcp),
        (SrvType::TlsTerminatedTcp, f.tls_terminated_tcp),
    ] {
        if p != 0 {
            types.push((t, p));
        }
    }
    let (srv, port) = match types.as_slice() {
        [] => (SrvType::Https, 443),
        [one] => *one,
        _ => return Err(Fail::help(sub, "cannot serve multiple types for a single mount point")),
    };
    if f.proxy_protocol != 0 && !matches!(srv, SrvType::Tcp | SrvType::TlsTerminatedTcp) {
        return Err(Fail::help(sub, "PROXY protocol is only supported for TCP forwarders"));
    }
    Ok((srv, port))
}

/// A `serve` or `funnel` command that adds a handler, once its flags are checked.
struct Change<'a> {
    sub: &'a str,
    flags: Flags,
    version: (u32, u32),
    srv: SrvType,
    port: u16,
    /// The node's DNS name.
    dns: String,
    mount: String,
}

/// Adds a web handler (text, file path or proxy) at the change's mount.
fn add_web_handler(sc: &mut Value, c: &Change, target: &str) -> Result<(), Fail> {
    let handler = if let Some(text) = target.strip_prefix("text:") {
        if text.is_empty() {
            return Err(Fail::help(
                c.sub,
                "failed apply web serve: unable to serve; text cannot be an empty string",
            ));
        }
        json!({"Text": text})
    } else if target.starts_with('/') {
        json!({"Path": target})
    } else {
        let t = expand_target(target, &["http", "https", "https+insecure"], "http", c.version)
            .map_err(|e| Fail::help(c.sub, format!("failed apply web serve: {e}")))?;
        json!({"Proxy": t})
    };
    if tcp_forwarding(sc, c.port) {
        return Err(Fail::help(
            c.sub,
            "failed apply web serve: cannot serve web; already serving TCP",
        ));
    }
    let key = if c.srv == SrvType::Https { "HTTPS" } else { "HTTP" };
    sc["TCP"] = merge(&sc["TCP"], &c.port.to_string(), json!({ key: true }));
    let mut web = sc["Web"].as_object().cloned().unwrap_or_default();
    let hp = format!("{}:{}", c.dns, c.port);
    let entry = web.entry(hp).or_insert_with(|| json!({"Handlers": {}}));
    entry["Handlers"][c.mount.as_str()] = handler;
    sc["Web"] = Value::Object(web);
    Ok(())
}

/// Adds a TCP forward for the change's port, TLS-terminated or not.
fn add_tcp_forward(sc: &mut Value, c: &Change, target: &str) -> Result<(), Fail> {
    if !c.flags.set_path.is_empty() {
        return Err(Fail::help(c.sub, "cannot mount a path for TCP serve"));
    }
    let t = expand_target(target, &["tcp"], "tcp", c.version).map_err(|e| {
        Fail::help(
            c.sub,
            format!("failed to apply TCP serve: unable to expand target: {e}"),
        )
    })?;
    if serving_web(sc, c.port) {
        return Err(Fail::help(
            c.sub,
            format!(
                "failed to apply TCP serve: cannot serve TCP; already serving web on {} for {}",
                c.port, c.dns
            ),
        ));
    }
    let mut h = json!({"TCPForward": t.trim_start_matches("tcp://").split('/').next().unwrap()});
    if c.srv == SrvType::TlsTerminatedTcp {
        h["TerminateTLS"] = json!(c.dns);
    }
    if c.flags.proxy_protocol != 0 {
        h["ProxyProtocol"] = json!(c.flags.proxy_protocol);
    }
    let mut tcp = sc["TCP"].as_object().cloned().unwrap_or_default();
    tcp.insert(c.port.to_string(), h);
    sc["TCP"] = Value::Object(tcp);
    Ok(())
}

/// serve_v2.go applyFunnel: `funnel` switches Funnel on for the host and port, `serve` off.
fn apply_funnel(sc: &mut Value, funnel: bool, dns: &str, hp: &str) {
    let mut allow = sc["AllowFunnel"].as_object().cloned().unwrap_or_default();
    if funnel {
        allow.insert(hp.to_string(), json!(true));
    } else if allow.remove(hp).is_some() {
        eprintln!("Removing Funnel for {dns}:{hp}");
    }
    if allow.is_empty() {
        sc.as_object_mut().unwrap().remove("AllowFunnel");
    } else {
        sc["AllowFunnel"] = Value::Object(allow);
    }
}

fn merge(obj: &Value, key: &str, v: Value) -> Value {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    m.insert(key.to_string(), v);
    Value::Object(m)
}

fn tcp_forwarding(sc: &Value, port: u16) -> bool {
    sc["TCP"][port.to_string()]["TCPForward"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
}

fn serving_web(sc: &Value, port: u16) -> bool {
    let h = &sc["TCP"][port.to_string()];
    h["HTTPS"].as_bool() == Some(true) || h["HTTP"].as_bool() == Some(true)
}

/// serve_v2.go verifyFunnelEnabled with serve_legacy.go enableFeatureInteractive: a node without
/// the `https` and `funnel` capabilities sends the owner through the control server's enablement
/// flow, whose answer decides (`funnel_enable`); then the port must be one the funnel-ports
/// attribute allows.
fn verify_funnel_enabled(socket: &Path, port: u16) -> Result<(), Fail> {
    let client_status =
        || Node::connect(socket).map_err(|_| Fail::new(format!("getting client status: {}", Down::not_running())));
    let node = client_status()?;
    let has_caps = |n: &Node| n.has_cap("https") && n.has_cap("funnel");
    let mut query_failed = false;
    if !has_caps(&node) {
        match node.knob("funnel_enable", "wait") {
            // QueryFeature answered ShouldWait=false: its text is printed and the CLI exits 0.
            "text" => return Err(Fail::exit_ok("\nYou don't have permission to enable this feature.\n")),
            // QueryFeature itself failed: the old capability check decides.
            "error" => query_failed = true,
            _ => {
                print!(
                    "\nFunnel is not enabled on your tailnet.\nTo enable, visit:\n\n         https://login.tailscale.com/f/funnel?node=nEMULATOR1\n\n"
                );
                let _ = std::io::stdout().flush();
                // The real CLI watches the IPN bus for ever; here the wait is bounded.
                let deadline =
                    Instant::now() + Duration::from_millis(node.state["enable_wait_ms"].as_u64().unwrap_or(60_000));
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    match Node::connect(socket) {
                        Ok(n) if has_caps(&n) => {
                            println!("Success.");
                            break;
                        }
                        Ok(_) if Instant::now() < deadline => {}
                        _ => return Err(Fail::new("lost connection to tailscaled: EOF")),
                    }
                }
            }
        }
    }
    let node = client_status()?;
    if query_failed {
        if !node.has_cap("https") {
            return Err(Fail::new(
                "Funnel not available; HTTPS must be enabled. See https://tailscale.com/s/https.",
            ));
        }
        if !node.has_cap("funnel") {
            return Err(Fail::new(
                "Funnel not available; \"funnel\" node attribute not set. See https://tailscale.com/s/no-funnel.",
            ));
        }
    }
    check_funnel_port(&node, port).map_err(Fail::new)
}

/// `ipn.CheckFunnelPort`: the funnel-ports attribute lists ports and ranges (`443,8000-8100`).
fn check_funnel_port(node: &Node, port: u16) -> Result<(), String> {
    let ports = node.knob("funnel_ports", DEFAULT_FUNNEL_PORTS);
    if ports.is_empty() {
        return Err(format!("port {port} is not allowed for funnel"));
    }
    let allowed = ports
        .split(',')
        .filter(|p| !p.is_empty())
        .any(|p| match p.split_once('-') {
            None => p == port.to_string(),
            Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) => (a..=b).contains(&port),
                _ => false,
            },
        });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "port {port} is not allowed for funnel; allowed ports are: {ports}"
        ))
    }
}

/// serve_v2.go validateConfig: a port serves one kind of thing, and (before 1.92, when the CLI
/// made the check) a foreground session holding the port wins.
fn validate_config(sc: &Value, port: u16, want: SrvType, version: (u32, u32)) -> Result<(), Fail> {
    if version < (1, 92) && foreground_for(sc, port).is_some() {
        return Err(Fail::new("foreground already exists under this port"));
    }
    let h = &sc["TCP"][port.to_string()];
    if h.is_null() {
        return Ok(());
    }
    let existing = if h["HTTP"].as_bool() == Some(true) {
        "http"
    } else if h["HTTPS"].as_bool() == Some(true) {
        "https"
    } else if h["TerminateTLS"].as_str().is_some_and(|s| !s.is_empty()) {
        "tls-terminated-tcp"
    } else if h["TCPForward"].as_str().is_some_and(|s| !s.is_empty()) {
        "tcp"
    } else {
        "unknownServeType"
    };
    if existing != want.name() {
        return Err(Fail::new(format!(
            "want to serve {:?} but port is already serving {existing:?} for \"machine\"",
            want.name()
        )));
    }
    Ok(())
}

fn unset_serve(sc: &mut Value, f: &Flags, srv: SrvType, port: u16, hp: &str, mount: &str) -> Result<(), String> {
    match srv {
        SrvType::Https | SrvType::Http => {
            if tcp_forwarding(sc, port) {
                return Err("failed to remove web serve: cannot remove web handler; currently serving TCP".into());
            }
            let handlers = sc["Web"][hp]["Handlers"].as_object().cloned().unwrap_or_default();
            let mounts: Vec<String> = if f.set_path.is_empty() {
                handlers.keys().cloned().collect()
            } else if handlers.contains_key(mount) {
                vec![mount.to_string()]
            } else {
                vec![]
            };
            if mounts.is_empty() {
                return Err("failed to remove web serve: handler does not exist".into());
            }
            if mounts.len() > 1 && !f.yes {
                return Err("refusing to delete several handlers without --yes (no terminal to ask)".into());
            }
            let mut handlers = handlers;
            for m in &mounts {
                handlers.remove(m);
            }
            if handlers.is_empty() {
                // RemoveWebHandler with cleanupFunnel: the port's web config and Funnel go too.
                for (key, k) in [
                    ("Web", hp.to_string()),
                    ("TCP", port.to_string()),
                    ("AllowFunnel", hp.to_string()),
                ] {
                    if let Some(m) = sc.get_mut(key).and_then(Value::as_object_mut) {
                        m.remove(&k);
                        if m.is_empty() {
                            sc.as_object_mut().unwrap().remove(key);
                        }
                    }
                }
            } else {
                sc["Web"][hp]["Handlers"] = Value::Object(handlers);
            }
        }
        SrvType::Tcp | SrvType::TlsTerminatedTcp => {
            if sc["TCP"][port.to_string()].is_null() {
                return Err("failed to remove TCP serve: serve config does not exist".into());
            }
            if serving_web(sc, port) {
                return Err(format!(
                    "failed to remove TCP serve: unable to remove; serving web, not TCP forwarding on serve port {port}"
                ));
            }
            let m = sc["TCP"].as_object_mut().unwrap();
            m.remove(&port.to_string());
            if m.is_empty() {
                sc.as_object_mut().unwrap().remove("TCP");
            }
        }
    }
    Ok(())
}

fn message_for_port(sc: &Value, dns: &str, sub: &str, srv: SrvType, port: u16, funnel: bool) -> String {
    let mut out = String::new();
    out.push_str(if funnel {
        "Available on the internet:\n\n"
    } else {
        "Available within your tailnet:\n\n"
    });
    let hp = format!("{dns}:{port}");
    let port_part = if port == 443 { String::new() } else { format!(":{port}") };
    if let Some(h) = sc["Web"][&hp]["Handlers"].as_object() {
        let mut mounts: Vec<&String> = h.keys().collect();
        mounts.sort_by_key(|m| m.len());
        for m in mounts {
            let v = &h[m.as_str()];
            let (t, d) = if let Some(p) = v["Proxy"].as_str() {
                ("proxy", p.to_string())
            } else if let Some(t) = v["Text"].as_str() {
                ("text", format!("{t:?}"))
            } else {
                ("path", v["Path"].as_str().unwrap_or_default().to_string())
            };
            out.push_str(&format!("https://{dns}{port_part}{m}\n|-- {t:<5} {d}\n\n"));
        }
    } else if let Some(fwd) = sc["TCP"][port.to_string()]["TCPForward"].as_str() {
        out.push_str(&format!(
            "|-- tcp://{dns}:{port} (TLS terminated)\n|--> tcp://{fwd}\n\n"
        ));
    }
    let upper = format!("{}{}", sub[..1].to_uppercase(), &sub[1..]);
    out.push_str(&format!(
        "{upper} started and running in the background.\nTo disable the proxy, run: tailscale {sub} --{}={port} off",
        srv.name()
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// `daemon`: tailscaled's state and Funnel's public front.

/// The `daemon` command's arguments.
struct DaemonArgs {
    listen: String,
    dns: String,
    funnel_port: u16,
    funnel: bool,
    persist: bool,
}

impl DaemonArgs {
    /// `Err`: what to print before exiting with status 2.
    fn parse(args: &[String]) -> Result<DaemonArgs, String> {
        let mut listen = None;
        let mut dns = "ferry-test.tail0000.ts.net".to_string();
        let mut funnel_port: u16 = 443;
        let mut funnel = true;
        let mut persist = false;
        for a in args {
            if let Some(v) = a.strip_prefix("--listen=") {
                listen = Some(v.to_string());
            } else if let Some(v) = a.strip_prefix("--dns-name=") {
                dns = v.to_string();
            } else if let Some(v) = a.strip_prefix("--funnel-port=") {
                funnel_port = v.parse().expect("--funnel-port is a port");
            } else if a == "--no-funnel" {
                funnel = false;
            } else if a == "--persist" {
                persist = true;
            } else {
                return Err(format!("daemon: unknown argument {a:?}"));
            }
        }
        let Some(listen) = listen else {
            return Err("daemon: --listen=ADDR is required".into());
        };
        Ok(DaemonArgs {
            listen,
            dns,
            funnel_port,
            funnel,
            persist,
        })
    }
}

/// The node's state as tailscaled starts: the switches the tests set outlive a restart, as a
/// node's version, prefs and capabilities do; what a restart resets is set here.
fn started_state(socket: &Path, a: &DaemonArgs) -> Value {
    let previous: Option<Value> = std::fs::read_to_string(state_path(socket))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    // A restarted tailscaled without persisted state starts with an empty serve config.
    let serve = match (&previous, a.persist) {
        (Some(p), true) => p["serve"].clone(),
        _ => json!({}),
    };
    let mut state = match previous.clone() {
        Some(Value::Object(m)) => Value::Object(m),
        _ => json!({}),
    };
    state["etag"] = json!(previous.as_ref().and_then(|p| p["etag"].as_u64()).unwrap_or(0) + 1);
    state["dns_name"] = json!(a.dns);
    state["funnel"] = json!(a.funnel);
    state["etag_failures"] = json!(0);
    state["hang_next"] = json!(0);
    state["daemon_uid"] = json!(effective_uid());
    state["serve"] = serve;
    state
}

fn daemon(socket: &Path, args: &[String]) -> ExitCode {
    let a = match DaemonArgs::parse(args) {
        Ok(a) => a,
        Err(m) => {
            eprintln!("{m}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&a.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("daemon: cannot listen on {}: {e}", a.listen);
            return ExitCode::from(1);
        }
    };
    if let Some(d) = socket.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let state = started_state(socket, &a);
    let node = Node {
        socket: socket.to_path_buf(),
        state,
    };
    if let Err(f) = node.save() {
        eprintln!("{}", f.stderr);
        return ExitCode::from(1);
    }
    // The socket the CLI connects to; a previous daemon's is stale.
    let _ = std::fs::remove_file(socket);
    let api = match std::os::unix::net::UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("daemon: cannot listen on {}: {e}", socket.display());
            return ExitCode::from(1);
        }
    };
    // tailscaled's socket is open to every local user; what each may do is decided per client.
    let _ = std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o666));
    std::thread::spawn(move || {
        for conn in api.incoming() {
            drop(conn);
        }
    });
    eprintln!(
        "emulated tailscaled: {}:{} answers on {}",
        a.dns, a.funnel_port, a.listen
    );
    let front = std::sync::Arc::new(Front {
        socket: socket.to_path_buf(),
        port: a.funnel_port,
        local: listener.local_addr().unwrap(),
    });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let front = front.clone();
        std::thread::spawn(move || {
            let _ = front.serve(conn);
        });
    }
    ExitCode::SUCCESS
}

struct Front {
    socket: PathBuf,
    port: u16,
    local: SocketAddr,
}

impl Front {
    fn serve(&self, client: TcpStream) -> std::io::Result<()> {
        let peer = client.peer_addr()?;
        let Ok(node) = Node::connect(&self.socket) else {
            return client.shutdown(Shutdown::Both);
        };
        // Shields-up refuses incoming connections; Funnel only takes the ports the node's
        // funnel-ports attribute lists.
        if node.flag("shields_up", false) || check_funnel_port(&node, self.port).is_err() {
            return client.shutdown(Shutdown::Both);
        }
        let sc = node.serve_config();
        let hp = format!("{}:{}", node.dns_name(), self.port);
        // A foreground session's config for the port comes before the background one
        // (ipn/serve.go FindTCP, FindWeb, HasFunnelForTarget).
        let conf = foreground_for(&sc, self.port).unwrap_or(&sc);
        let funnel = with_foreground(&sc)
            .iter()
            .any(|c| c["AllowFunnel"][&hp].as_bool() == Some(true));
        if !funnel {
            // Funnel is off for this host:port, so nothing answers from the Internet.
            return client.shutdown(Shutdown::Both);
        }
        let tcp = &conf["TCP"][self.port.to_string()];
        if let Some(fwd) = tcp["TCPForward"].as_str().filter(|s| !s.is_empty()) {
            return self.forward(client, peer, fwd, tcp["ProxyProtocol"].as_u64().unwrap_or(0));
        }
        if tcp["HTTPS"].as_bool() != Some(true) {
            return client.shutdown(Shutdown::Both);
        }
        let handlers = conf["Web"][&hp]["Handlers"].as_object().cloned().unwrap_or_default();
        serve_web(client, peer, &handlers)
    }

    /// A TLS-terminated TCP forward (TLS itself is not emulated), with the PROXY protocol header.
    fn forward(&self, mut client: TcpStream, peer: SocketAddr, target: &str, pp: u64) -> std::io::Result<()> {
        let mut up = TcpStream::connect(target)?;
        if pp == 2 {
            up.write_all(&proxy_v2(peer, self.local))?;
        } else if pp == 1 {
            let fam = if peer.is_ipv4() { "TCP4" } else { "TCP6" };
            up.write_all(
                format!(
                    "PROXY {fam} {} {} {} {}\r\n",
                    peer.ip(),
                    self.local.ip(),
                    peer.port(),
                    self.local.port()
                )
                .as_bytes(),
            )?;
        }
        let mut up2 = up.try_clone()?;
        let mut client2 = client.try_clone()?;
        let t = std::thread::spawn(move || {
            let _ = std::io::copy(&mut client2, &mut up2);
            let _ = up2.shutdown(Shutdown::Write);
        });
        let _ = std::io::copy(&mut up, &mut client);
        let _ = client.shutdown(Shutdown::Write);
        let _ = t.join();
        Ok(())
    }
}

/// Answers one request on a web port as Funnel does: the handler whose mount matches the path
/// answers with its text, or as a reverse proxy to its target.
fn serve_web(mut client: TcpStream, peer: SocketAddr, handlers: &Map<String, Value>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let Some(req) = read_head(&mut reader)? else {
        return Ok(());
    };
    let not_found = |client: &mut TcpStream| {
        respond(
            client,
            "404 Not Found",
            "text/plain; charset=utf-8",
            b"404 page not found\n",
        )
    };
    let (raw_path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (req.target.clone(), None),
    };
    // Go's server decodes the path (and answers 400 to a bad escape); handlers are looked up
    // on the decoded path, then on its cleaned form and its parents.
    let Some(path) = percent_decode(&raw_path).filter(|p| p.starts_with('/')) else {
        return respond(
            &mut client,
            "400 Bad Request",
            "text/plain; charset=utf-8",
            b"400 Bad Request",
        );
    };
    let Some((mount, handler)) = serve_handler(handlers, &path) else {
        return not_found(&mut client);
    };
    if let Some(text) = handler["Text"].as_str() {
        return respond(&mut client, "200 OK", "text/plain; charset=utf-8", text.as_bytes());
    }
    let Some(proxy) = handler["Proxy"].as_str() else {
        return not_found(&mut client);
    };
    // http.StripPrefix takes the mount off the path as sent, both decoded and raw. A path that
    // reached the mount only once cleaned (`/s/a/../b`) does not start with it, so it gets 404.
    let rest = if path == "/" {
        Some(raw_path.clone())
    } else {
        let prefix = mount.trim_end_matches('/');
        match (path.strip_prefix(prefix), raw_path.strip_prefix(prefix)) {
            (Some(_), Some(raw_rest)) => Some(raw_rest.to_string()),
            _ => None,
        }
    };
    let Some(rest) = rest else {
        return not_found(&mut client);
    };
    let mut body = vec![0u8; req.content_length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    // httputil.ReverseProxy joins the rest onto the target's path; an exact match of the
    // mount goes to the target's path itself.
    let (upstream, base) = split_url(proxy);
    let mut out_path = if rest.is_empty() && base != "/" {
        base.clone()
    } else {
        join_slash(&base, &rest)
    };
    if let Some(q) = query {
        out_path = format!("{out_path}?{q}");
    }
    let head = proxied_head(&req, &out_path, peer);
    let idempotent = matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    relay(&mut client, &upstream, &head, &body, idempotent)
}

/// The request head the reverse proxy sends upstream: the client's headers without hop-by-hop
/// and forwarding ones, then those Funnel adds.
fn proxied_head(req: &Head, out_path: &str, peer: SocketAddr) -> String {
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, out_path);
    for (k, v) in &req.headers {
        let lk = k.to_ascii_lowercase();
        if matches!(
            lk.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "forwarded"
                | "x-forwarded-for"
                | "x-forwarded-host"
                | "x-forwarded-proto"
                | "tailscale-user-login"
                | "tailscale-user-name"
                | "tailscale-user-profile-pic"
                | "tailscale-funnel-request"
                | "tailscale-headers-info"
        ) {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    // ipnlocal addProxyForwardedHeaders and addTailscaleIdentityHeaders.
    let host = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map_or("", |(_, v)| v.as_str());
    head.push_str(&format!(
        "X-Forwarded-Host: {host}\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: {}\r\nTailscale-Funnel-Request: ?1\r\nConnection: close\r\n\r\n",
        peer.ip()
    ));
    head
}

/// Sends the request upstream and copies the answer back to the client; 502 when upstream
/// cannot be reached or closes without answering.
fn relay(client: &mut TcpStream, upstream: &str, head: &str, body: &[u8], idempotent: bool) -> std::io::Result<()> {
    // Go's transport retries an idempotent request once on a new connection when the first
    // closed without a response.
    for attempt in 0..2 {
        let Ok(mut up) = TcpStream::connect(upstream) else {
            return respond(client, "502 Bad Gateway", "text/plain", b"");
        };
        up.write_all(head.as_bytes())?;
        up.write_all(body)?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = up.read(&mut buf).unwrap_or(0);
        if n == 0 {
            if attempt == 0 && idempotent {
                continue;
            }
            return respond(client, "502 Bad Gateway", "text/plain", b"");
        }
        client.write_all(&buf[..n])?;
        loop {
            let n = match up.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    respond(client, "502 Bad Gateway", "text/plain", b"")
}

fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut v = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    v.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            v.push(0x11); // TCP over IPv4
            v.extend_from_slice(&12u16.to_be_bytes());
            v.extend_from_slice(&s.octets());
            v.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let six = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            v.push(0x21); // TCP over IPv6
            v.extend_from_slice(&36u16.to_be_bytes());
            v.extend_from_slice(&six(s));
            v.extend_from_slice(&six(d));
        }
    }
    v.extend_from_slice(&src.port().to_be_bytes());
    v.extend_from_slice(&dst.port().to_be_bytes());
    v
}

/// `getServeHandler` (ipn/ipnlocal/serve.go): the handler at the path itself; else, from the
/// cleaned path upwards, the first directory mount (`/p/`) or mount (`/p`) that exists.
fn serve_handler<'a>(handlers: &'a Map<String, Value>, path: &str) -> Option<(&'a str, &'a Value)> {
    if let Some((m, h)) = handlers.get_key_value(path) {
        return Some((m.as_str(), h));
    }
    let mut p = clean_path(path);
    loop {
        for candidate in [format!("{p}/"), p.clone()] {
            if let Some((m, h)) = handlers.get_key_value(candidate.as_str()) {
                return Some((m.as_str(), h));
            }
        }
        if p == "/" {
            return None;
        }
        p = match p.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => p[..i].to_string(),
        };
    }
}

/// Go's `path.Clean` for an absolute path: no empty, `.` or `..` segments.
fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = vec![];
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Percent-decoding of a request path as Go's `url.PathUnescape`; `None` for a bad escape.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// `http://host:port/path` → (`host:port` to dial, `/path`). Since 1.92 an IPv6 target is stored
/// without brackets (`http://::1:8080`); Go's transport dials it all the same.
fn split_url(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let dial = match authority.rsplit_once(':') {
        Some((h, p)) if !h.starts_with('[') && h.contains(':') => format!("[{h}]:{p}"),
        _ => authority.to_string(),
    };
    (dial, path)
}

/// httputil's singleJoiningSlash.
fn join_slash(a: &str, b: &str) -> String {
    match (a.ends_with('/'), b.starts_with('/')) {
        (true, true) => format!("{a}{}", &b[1..]),
        (false, false) if !b.is_empty() => format!("{a}/{b}"),
        _ => format!("{a}{b}"),
    }
}

struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    content_length: usize,
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = vec![];
    let mut content_length = 0;
    for _ in 0..200 {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        method,
        target,
        headers,
        content_length,
    }))
}

fn respond(client: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes())?;
    client.write_all(body)?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
