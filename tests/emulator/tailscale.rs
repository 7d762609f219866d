//! An emulator of the `tailscale` CLI and of Funnel's public front, for ferry's tests (which
//! cannot reach Tailscale). It keeps the argv grammar, the error texts and the JSON shapes of
//! Tailscale's own CLI (`cmd/tailscale/cli/serve_v2.go`, `ipn/serve.go`) for what ferry uses:
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
//!   for tailscaled and Funnel's ingress: it keeps the node's state in the file at the socket path
//!   (a fresh, empty serve config unless `--persist`, as after a sidecar restart) and answers on
//!   ADDR as Funnel answers on `NAME:PORT`, in plain HTTP/TCP (no TLS).
//! - `emulator-set KEY=VALUE...` changes a knob in the state: `etag_failures` (the next N writes
//!   lose the ETag race, as if another client changed the config), `funnel` (`true`/`false`: the
//!   node's Funnel capability), `enable_wait_ms` (how long the interactive enablement waits),
//!   `hang_next` (the next N commands hang for a minute, as a wedged tailscaled makes them).
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
const NOT_RUNNING: &str =
    "failed to connect to local tailscaled; it doesn't appear to be running (sudo systemctl start tailscaled ?)";

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
            eprintln!("{}", f.stderr);
            ExitCode::from(f.code)
        }
    }
}

/// `hang_next`: this command takes the knob's next turn and hangs.
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
}

// ---------------------------------------------------------------------------------------------
// State: the file at the socket path, written under a lock, guarded by an ETag.

struct Node {
    path: PathBuf,
    state: Value,
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

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

impl Node {
    /// "Connects" to tailscaled: its state file must exist and its process be alive.
    fn connect(path: &Path) -> Result<Node, Fail> {
        let text = std::fs::read_to_string(path).map_err(|_| Fail::new(NOT_RUNNING))?;
        let state: Value = serde_json::from_str(&text).map_err(|_| Fail::new(NOT_RUNNING))?;
        if !state["pid"].as_u64().is_some_and(pid_alive) {
            return Err(Fail::new(NOT_RUNNING));
        }
        Ok(Node {
            path: path.to_path_buf(),
            state,
        })
    }

    fn etag(&self) -> u64 {
        self.state["etag"].as_u64().unwrap_or(0)
    }

    fn dns_name(&self) -> String {
        self.state["dns_name"].as_str().unwrap_or_default().to_string()
    }

    fn serve_config(&self) -> Value {
        match &self.state["serve"] {
            Value::Object(m) => Value::Object(m.clone()),
            _ => Value::Object(Map::new()),
        }
    }

    fn caps(&self) -> Vec<String> {
        let mut caps = vec!["https".to_string()];
        if self.state["funnel"].as_bool().unwrap_or(true) {
            caps.push("funnel".into());
            caps.push("https://tailscale.com/cap/funnel-ports?ports=443,8443,10000".into());
        }
        caps
    }

    /// SetServeConfig with If-Match: fails when the config changed since `etag` was read.
    fn set_serve_config(&self, etag: u64, sc: Value) -> Result<(), Fail> {
        let delay = self.state["write_delay_ms"].as_u64().unwrap_or(0);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let _guard = lock(&self.path)?;
        let mut now = Node::connect(&self.path)?;
        let injected = now.state["etag_failures"].as_u64().unwrap_or(0);
        if injected > 0 {
            now.state["etag_failures"] = json!(injected - 1);
            now.state["etag"] = json!(now.etag() + 1);
            now.save()?;
        }
        if injected > 0 || now.etag() != etag {
            return Err(Fail::new(
                "Another client is changing the serve config; please try again.\n412 Precondition Failed: etag mismatch",
            ));
        }
        now.state["serve"] = sc;
        now.state["etag"] = json!(etag + 1);
        now.save()
    }

    fn save(&self) -> Result<(), Fail> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state).unwrap())
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| Fail::new(format!("write {}: {e}", self.path.display())))
    }
}

fn emulator_set(socket: &Path, args: &[String]) -> Result<String, Fail> {
    let _guard = lock(socket)?;
    let mut node = Node::connect(socket)?;
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| Fail::usage(format!("emulator-set: expected KEY=VALUE, got {a:?}")))?;
        let v: Value = match k {
            "etag_failures" | "enable_wait_ms" | "write_delay_ms" | "hang_next" => json!(
                v.parse::<u64>()
                    .map_err(|_| Fail::usage(format!("emulator-set: {k} wants a number, got {v:?}")))?
            ),
            "funnel" => json!(v == "true"),
            _ => return Err(Fail::usage(format!("emulator-set: unknown knob {k:?}"))),
        };
        node.state[k] = v;
    }
    node.save()?;
    Ok(String::new())
}

// ---------------------------------------------------------------------------------------------
// `tailscale status --json`

fn status(socket: &Path, args: &[String]) -> Result<String, Fail> {
    let node = Node::connect(socket)?;
    if !args.iter().any(|a| a == "--json" || a == "-json" || a == "--json=true") {
        return Ok(format!("100.64.0.1  {}  emulator  linux  -", node.dns_name()));
    }
    let dns = node.dns_name();
    let host = dns.split('.').next().unwrap_or_default().to_string();
    let suffix = dns.split_once('.').map(|(_, s)| s.to_string()).unwrap_or_default();
    let cap_map: Map<String, Value> = node.caps().into_iter().map(|c| (c, Value::Null)).collect();
    let st = json!({
        "Version": "1.92.3-emulator",
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
fn parse_flags(sub: &str, args: &[String], allowed: &[&str]) -> Result<(Flags, Vec<String>), Fail> {
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
        if !allowed.contains(&name) {
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

/// ExpandProxyTargetValue: a port, `host:port`, or a URL with one of the schemes.
fn expand_target(target: &str, schemes: &[&str], default: &str) -> Result<String, String> {
    if target.is_empty() {
        return Err("empty target".into());
    }
    if let Ok(port) = target.parse::<u16>() {
        return Ok(format!("{default}://127.0.0.1:{port}"));
    }
    let full = if target.contains("://") {
        target.to_string()
    } else {
        format!("{default}://{target}")
    };
    let (scheme, rest) = full.split_once("://").unwrap();
    if !schemes.contains(&scheme) {
        return Err(format!(
            "must be a URL starting with one of the supported schemes: [{}]",
            schemes.join(" ")
        ));
    }
    let hostport = rest.split(['/', '?']).next().unwrap_or_default();
    if hostport.is_empty() {
        return Err(format!("invalid URL parse {full:?}: missing host"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, Some(p)),
        _ => (hostport, None),
    };
    if matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
        match port.map(str::parse::<u16>) {
            Some(Ok(p)) if p > 0 => {}
            _ => return Err("invalid port".into()),
        }
    }
    Ok(full)
}

fn serve_cmd(socket: &Path, sub: &str, args: &[String]) -> Result<String, Fail> {
    // Subcommands first.
    match args.first().map(String::as_str) {
        Some("status") => {
            let (f, _) = parse_flags(sub, &args[1..], &["json"])?;
            let node = Node::connect(socket)?;
            let sc = node.serve_config();
            return Ok(if f.json {
                serde_json::to_string_pretty(&sc).unwrap()
            } else if sc.as_object().is_some_and(Map::is_empty) {
                "No serve config".into()
            } else {
                serde_json::to_string(&sc).unwrap()
            });
        }
        Some("reset") => {
            let node = Node::connect(socket)?;
            node.set_serve_config(node.etag(), json!({}))?;
            return Ok(String::new());
        }
        _ => {}
    }
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
    let (f, args) = parse_flags(sub, args, &allowed)?;
    // validateArgs
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
    let node = Node::connect(socket)?;
    let funnel = sub == "funnel";
    if funnel {
        verify_funnel_enabled(&node)?;
    }
    let mount = clean_url_path(&f.set_path).map_err(|e| Fail::new(format!("failed to clean the mount point: {e}")))?;
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
    if funnel && !turn_off && ![443, 8443, 10000].contains(&port) {
        return Err(Fail::new(format!(
            "port {port} is not allowed for funnel; allowed ports are: 443,8443,10000"
        )));
    }
    if f.proxy_protocol != 0 && !matches!(srv, SrvType::Tcp | SrvType::TlsTerminatedTcp) {
        return Err(Fail::help(sub, "PROXY protocol is only supported for TCP forwarders"));
    }
    let etag = node.etag();
    let mut sc = node.serve_config();
    let dns = node.dns_name();
    let hp = format!("{dns}:{port}");
    if turn_off {
        unset_serve(&mut sc, &f, srv, port, &hp, &mount).map_err(|e| Fail::help(sub, e))?;
        node.set_serve_config(etag, sc)?;
        return Ok(String::new());
    }
    if !f.bg {
        return Err(Fail::new(
            "the emulator only keeps background configurations; pass --bg (ferry always does)",
        ));
    }
    validate_config(&sc, port, srv)?;
    let target = &args[0];
    match srv {
        SrvType::Https | SrvType::Http => {
            let handler = if let Some(text) = target.strip_prefix("text:") {
                if text.is_empty() {
                    return Err(Fail::help(
                        sub,
                        "failed apply web serve: unable to serve; text cannot be an empty string",
                    ));
                }
                json!({"Text": text})
            } else if target.starts_with('/') {
                json!({"Path": target})
            } else {
                let t = expand_target(target, &["http", "https", "https+insecure"], "http")
                    .map_err(|e| Fail::help(sub, format!("failed apply web serve: {e}")))?;
                json!({"Proxy": t})
            };
            if tcp_forwarding(&sc, port) {
                return Err(Fail::help(
                    sub,
                    "failed apply web serve: cannot serve web; already serving TCP",
                ));
            }
            let key = if srv == SrvType::Https { "HTTPS" } else { "HTTP" };
            sc["TCP"] = merge(&sc["TCP"], &port.to_string(), json!({ key: true }));
            let mut web = sc["Web"].as_object().cloned().unwrap_or_default();
            let entry = web.entry(hp.clone()).or_insert_with(|| json!({"Handlers": {}}));
            entry["Handlers"][mount.as_str()] = handler;
            sc["Web"] = Value::Object(web);
        }
        SrvType::Tcp | SrvType::TlsTerminatedTcp => {
            if !f.set_path.is_empty() {
                return Err(Fail::help(sub, "cannot mount a path for TCP serve"));
            }
            let t = expand_target(target, &["tcp"], "tcp")
                .map_err(|e| Fail::help(sub, format!("failed to apply TCP serve: unable to expand target: {e}")))?;
            if serving_web(&sc, port) {
                return Err(Fail::help(
                    sub,
                    format!("failed to apply TCP serve: cannot serve TCP; already serving web on {port} for {dns}"),
                ));
            }
            let mut h = json!({"TCPForward": t.trim_start_matches("tcp://").split('/').next().unwrap()});
            if srv == SrvType::TlsTerminatedTcp {
                h["TerminateTLS"] = json!(dns);
            }
            if f.proxy_protocol != 0 {
                h["ProxyProtocol"] = json!(f.proxy_protocol);
            }
            let mut tcp = sc["TCP"].as_object().cloned().unwrap_or_default();
            tcp.insert(port.to_string(), h);
            sc["TCP"] = Value::Object(tcp);
        }
    }
    // applyFunnel
    let mut allow = sc["AllowFunnel"].as_object().cloned().unwrap_or_default();
    if funnel {
        allow.insert(hp.clone(), json!(true));
    } else if allow.remove(&hp).is_some() {
        eprintln!("Removing Funnel for {dns}:{hp}");
    }
    if allow.is_empty() {
        sc.as_object_mut().unwrap().remove("AllowFunnel");
    } else {
        sc["AllowFunnel"] = Value::Object(allow);
    }
    node.set_serve_config(etag, sc.clone())?;
    Ok(message_for_port(&sc, &dns, sub, srv, port, funnel))
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

fn verify_funnel_enabled(node: &Node) -> Result<(), Fail> {
    if node.caps().iter().any(|c| c == "funnel") {
        return Ok(());
    }
    // enableFeatureInteractive: prints the link, waits for the owner, then falls back to
    // CheckFunnelAccess's error.
    let stdout = "Funnel is not enabled on your tailnet.\nTo enable, visit:\n\n         https://login.tailscale.com/f/funnel?node=nEMULATOR1\n\n".to_string();
    print!("{stdout}");
    let _ = std::io::stdout().flush();
    let wait = node.state["enable_wait_ms"].as_u64().unwrap_or(30_000);
    std::thread::sleep(Duration::from_millis(wait));
    Err(Fail::new(
        "Funnel not available; \"funnel\" node attribute not set. See https://tailscale.com/s/no-funnel.",
    ))
}

fn validate_config(sc: &Value, port: u16, want: SrvType) -> Result<(), Fail> {
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

fn daemon(socket: &Path, args: &[String]) -> ExitCode {
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
            eprintln!("daemon: unknown argument {a:?}");
            return ExitCode::from(2);
        }
    }
    let Some(listen) = listen else {
        eprintln!("daemon: --listen=ADDR is required");
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("daemon: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(d) = socket.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let previous: Option<Value> = std::fs::read_to_string(socket)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    // A restarted tailscaled without persisted state starts with an empty serve config.
    let serve = match (&previous, persist) {
        (Some(p), true) => p["serve"].clone(),
        _ => json!({}),
    };
    let state = json!({
        "pid": std::process::id(),
        "etag": previous.as_ref().and_then(|p| p["etag"].as_u64()).unwrap_or(0) + 1,
        "dns_name": dns,
        "funnel": funnel,
        "enable_wait_ms": 30_000,
        "etag_failures": 0,
        "serve": serve,
    });
    let node = Node {
        path: socket.to_path_buf(),
        state,
    };
    if let Err(f) = node.save() {
        eprintln!("{}", f.stderr);
        return ExitCode::from(1);
    }
    eprintln!("emulated tailscaled: {dns}:{funnel_port} answers on {listen}");
    let front = std::sync::Arc::new(Front {
        socket: socket.to_path_buf(),
        port: funnel_port,
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
    fn serve(&self, mut client: TcpStream) -> std::io::Result<()> {
        let peer = client.peer_addr()?;
        let Ok(node) = Node::connect(&self.socket) else {
            return client.shutdown(Shutdown::Both);
        };
        let sc = node.serve_config();
        let hp = format!("{}:{}", node.dns_name(), self.port);
        if sc["AllowFunnel"][&hp].as_bool() != Some(true) {
            // Funnel is off for this host:port: nothing answers from the Internet.
            return client.shutdown(Shutdown::Both);
        }
        let tcp = &sc["TCP"][self.port.to_string()];
        if let Some(fwd) = tcp["TCPForward"].as_str().filter(|s| !s.is_empty()) {
            return self.forward(client, peer, fwd, tcp["ProxyProtocol"].as_u64().unwrap_or(0));
        }
        if tcp["HTTPS"].as_bool() != Some(true) {
            return client.shutdown(Shutdown::Both);
        }
        client.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::new(client.try_clone()?);
        let Some(req) = read_head(&mut reader)? else {
            return Ok(());
        };
        let handlers = sc["Web"][&hp]["Handlers"].as_object().cloned().unwrap_or_default();
        let (path, query) = match req.target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (req.target.clone(), None),
        };
        let Some((mount, handler)) = find_handler(&handlers, &path) else {
            return respond(
                &mut client,
                "404 Not Found",
                "text/plain; charset=utf-8",
                b"404 page not found\n",
            );
        };
        if let Some(text) = handler["Text"].as_str() {
            return respond(&mut client, "200 OK", "text/plain; charset=utf-8", text.as_bytes());
        }
        let Some(proxy) = handler["Proxy"].as_str() else {
            return respond(
                &mut client,
                "404 Not Found",
                "text/plain; charset=utf-8",
                b"404 page not found\n",
            );
        };
        let mut body = vec![0u8; req.content_length.min(1 << 20)];
        reader.read_exact(&mut body)?;
        // Funnel strips the mount point and joins the rest onto the target's path.
        let rest = path.strip_prefix(mount.trim_end_matches('/')).unwrap_or(&path);
        let (upstream, base) = split_url(proxy);
        let mut out_path = join_slash(&base, rest);
        if let Some(q) = query {
            out_path = format!("{out_path}?{q}");
        }
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
                    | "x-forwarded-for"
                    | "tailscale-funnel-request"
            ) {
                continue;
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "X-Forwarded-For: {}\r\nX-Forwarded-Proto: https\r\nTailscale-Funnel-Request: ?1\r\nConnection: close\r\n\r\n",
            peer.ip()
        ));
        let idempotent = matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS");
        // Go's transport retries an idempotent request once on a new connection when the first
        // closed without a response.
        for attempt in 0..2 {
            let Ok(mut up) = TcpStream::connect(&upstream) else {
                return respond(&mut client, "502 Bad Gateway", "text/plain", b"");
            };
            up.write_all(head.as_bytes())?;
            up.write_all(&body)?;
            let mut buf = vec![0u8; 64 * 1024];
            let n = up.read(&mut buf).unwrap_or(0);
            if n == 0 {
                if attempt == 0 && idempotent {
                    continue;
                }
                return respond(&mut client, "502 Bad Gateway", "text/plain", b"");
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
        respond(&mut client, "502 Bad Gateway", "text/plain", b"")
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

/// The handler for a path: the longest mount that is the path itself or one of its parents
/// (a mount ending in `/` covers everything below it).
fn find_handler<'a>(handlers: &'a Map<String, Value>, path: &str) -> Option<(&'a str, &'a Value)> {
    handlers
        .iter()
        .filter(|(m, _)| {
            let m = m.as_str();
            path == m
                || (m.ends_with('/') && path.starts_with(m))
                || (path.starts_with(m) && path.as_bytes().get(m.len()) == Some(&b'/'))
        })
        .max_by_key(|(m, _)| m.len())
        .map(|(m, v)| (m.as_str(), v))
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
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
