//! The pure half of the Tailscale Funnel providers: the `tailscale` command lines ferry runs, and
//! what their output means (`funnel status --json` is the node's `ipn.ServeConfig`, `status --json`
//! is `ipnstate.Status`). Nothing here runs anything; [`super::funnel`] does, through a runner.
//!
//! Only paths under `/s/` are ferry's: nothing here builds `reset`, or `off` without `--set-path`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::FunnelMode;
use crate::model::TunnelId;

/// The handler ferry keeps while it runs, so Funnel for the port is never switched off and on
/// (a new Funnel host's DNS and certificate can take minutes).
pub const PLACEHOLDER: &str = "/s/.ferry";
pub const PLACEHOLDER_TARGET: &str = "text:ferry";

/// The mount point of a link's handler.
pub fn mount(id: &TunnelId) -> String {
    format!("/s/{id}")
}

/// `tailscale funnel --bg --yes --https=<port> --set-path=<mount> <target>`.
pub fn open_path_argv(port: u16, mount: &str, target: &str) -> Vec<String> {
    vec![
        "funnel".into(),
        "--bg".into(),
        "--yes".into(),
        format!("--https={port}"),
        format!("--set-path={mount}"),
        target.into(),
    ]
}

/// `tailscale funnel --yes --https=<port> --set-path=<mount> off`: removes exactly one handler.
pub fn close_path_argv(port: u16, mount: &str) -> Vec<String> {
    assert!(mount.starts_with("/s/"), "ferry only ever removes its own paths");
    vec![
        "funnel".into(),
        "--yes".into(),
        format!("--https={port}"),
        format!("--set-path={mount}"),
        "off".into(),
    ]
}

/// `tailscale funnel --bg --yes --tls-terminated-tcp=<port> --proxy-protocol=2 tcp://<upstream>`.
pub fn open_tcp_argv(port: u16, upstream: &str) -> Vec<String> {
    vec![
        "funnel".into(),
        "--bg".into(),
        "--yes".into(),
        format!("--tls-terminated-tcp={port}"),
        "--proxy-protocol=2".into(),
        format!("tcp://{upstream}"),
    ]
}

/// `tailscale funnel --yes --tls-terminated-tcp=<port> off`.
pub fn close_tcp_argv(port: u16) -> Vec<String> {
    vec![
        "funnel".into(),
        "--yes".into(),
        format!("--tls-terminated-tcp={port}"),
        "off".into(),
    ]
}

pub fn serve_status_argv() -> Vec<String> {
    vec!["funnel".into(), "status".into(), "--json".into()]
}

pub fn status_argv() -> Vec<String> {
    vec!["status".into(), "--json".into()]
}

/// The node's serve configuration (`ipn.ServeConfig`), the parts ferry reads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ServeConfig {
    #[serde(rename = "TCP", default)]
    pub tcp: BTreeMap<String, TcpPortHandler>,
    #[serde(rename = "Web", default)]
    pub web: BTreeMap<String, WebServerConfig>,
    #[serde(rename = "AllowFunnel", default)]
    pub allow_funnel: BTreeMap<String, bool>,
    /// The configs of foreground `tailscale serve`/`funnel` sessions, by session.
    #[serde(rename = "Foreground", default)]
    pub foreground: BTreeMap<String, ServeConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct TcpPortHandler {
    #[serde(rename = "HTTPS", default)]
    pub https: bool,
    #[serde(rename = "HTTP", default)]
    pub http: bool,
    #[serde(rename = "TCPForward", default)]
    pub tcp_forward: String,
    #[serde(rename = "TerminateTLS", default)]
    pub terminate_tls: String,
    #[serde(rename = "ProxyProtocol", default)]
    pub proxy_protocol: u8,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct WebServerConfig {
    #[serde(rename = "Handlers", default)]
    pub handlers: BTreeMap<String, HttpHandler>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HttpHandler {
    #[serde(rename = "Proxy", default)]
    pub proxy: String,
    #[serde(rename = "Text", default)]
    pub text: String,
    #[serde(rename = "Path", default)]
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unexpected output from `tailscale {command}`: {reason}")]
pub struct ParseError {
    pub command: &'static str,
    pub reason: String,
}

/// Parses `tailscale funnel status --json` (`null` or `{}` when nothing is served).
pub fn parse_serve_config(out: &str) -> Result<ServeConfig, ParseError> {
    let t = out.trim();
    if t.is_empty() || t == "null" {
        return Ok(ServeConfig::default());
    }
    serde_json::from_str(t).map_err(|e| ParseError {
        command: "funnel status --json",
        reason: e.to_string(),
    })
}

impl ServeConfig {
    fn host_port(host: &str, port: u16) -> String {
        format!("{host}:{port}")
    }

    pub fn handlers(&self, host: &str, port: u16) -> Option<&BTreeMap<String, HttpHandler>> {
        self.web.get(&Self::host_port(host, port)).map(|w| &w.handlers)
    }

    pub fn handler(&self, host: &str, port: u16, mount: &str) -> Option<&HttpHandler> {
        self.handlers(host, port)?.get(mount)
    }

    pub fn funnel_on(&self, host: &str, port: u16) -> bool {
        self.allow_funnel.get(&Self::host_port(host, port)) == Some(&true)
    }

    /// Whether `mount` proxies to `target` publicly (the target as tailscaled stores it: see
    /// [`same_target`]).
    pub fn serves(&self, host: &str, port: u16, mount: &str, target: &str) -> bool {
        self.funnel_on(host, port)
            && self
                .handler(host, port, mount)
                .is_some_and(|h| same_target(&h.proxy, target))
    }

    /// Whether a foreground session holds `port` (its config comes first on the port, and the
    /// CLI refuses background changes to it).
    pub fn foreground_holds(&self, port: u16) -> bool {
        self.foreground.values().any(|c| c.tcp.contains_key(&port.to_string()))
    }

    /// ferry's handlers on the port (mounts under `/s/`, the placeholder excluded).
    pub fn link_mounts(&self, host: &str, port: u16) -> Vec<String> {
        self.handlers(host, port)
            .map(|h| {
                h.keys()
                    .filter(|m| m.starts_with("/s/") && m.as_str() != PLACEHOLDER)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The owner's own web handlers on the port (anything outside `/s/`).
    pub fn foreign_mounts(&self, host: &str, port: u16) -> Vec<String> {
        self.handlers(host, port)
            .map(|h| h.keys().filter(|m| !is_ferry_mount(m)).cloned().collect())
            .unwrap_or_default()
    }

    /// The TLS-terminated forward on `port`, if any: (target, PROXY protocol version).
    pub fn tcp_forward(&self, port: u16) -> Option<(&str, u8)> {
        let h = self.tcp.get(&port.to_string())?;
        (!h.tcp_forward.is_empty()).then_some((h.tcp_forward.as_str(), h.proxy_protocol))
    }

    /// Whether `port` forwards to `upstream` (`host:port`) with PROXY protocol v2.
    pub fn forwards(&self, port: u16, upstream: &str) -> bool {
        self.tcp_forward(port)
            .is_some_and(|(to, pp)| pp == 2 && same_target(&format!("tcp://{to}"), &format!("tcp://{upstream}")))
    }

    pub fn serves_web(&self, port: u16) -> bool {
        self.tcp.get(&port.to_string()).is_some_and(|h| h.https || h.http)
    }
}

fn is_ferry_mount(m: &str) -> bool {
    m == "/s" || m == "/s/" || m.starts_with("/s/")
}

/// What ferry needs from `tailscale status --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// `Self.DNSName` without the trailing dot.
    pub dns_name: String,
    pub backend_state: String,
    /// Whether the node has the `https` and `funnel` capabilities.
    pub can_funnel: bool,
    /// The node's tailscale version, when `Version` reads as one.
    pub version: Option<Version>,
    /// The ports of the node's funnel-ports attribute (`443,8443,10000`), if it has one.
    pub funnel_ports: Option<String>,
}

/// A tailscale version's major and minor number (`1.92.3-t…` is 1.92).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32);

impl Version {
    /// The oldest CLI with the commands ferry runs (`--bg`, `--set-path`).
    pub const MINIMUM: Version = Version(1, 52);
    /// The first CLI that proxies to hosts other than localhost and has `--proxy-protocol`.
    pub const ANY_UPSTREAM: Version = Version(1, 92);

    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split(['.', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Version(major, minor))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(rename = "Version", default)]
    version: String,
    #[serde(rename = "BackendState", default)]
    backend_state: String,
    #[serde(rename = "Self")]
    self_: Option<RawPeer>,
}

#[derive(Deserialize)]
struct RawPeer {
    #[serde(rename = "DNSName", default)]
    dns_name: String,
    #[serde(rename = "Capabilities", default)]
    capabilities: Option<Vec<String>>,
    /// Only the names count; the values are skipped unread, whatever JSON they hold.
    #[serde(rename = "CapMap", default)]
    cap_map: Option<BTreeMap<String, serde::de::IgnoredAny>>,
}

pub fn parse_status(out: &str) -> Result<NodeStatus, ParseError> {
    let bad = |reason: String| ParseError {
        command: "status --json",
        reason,
    };
    let raw: RawStatus = serde_json::from_str(out.trim()).map_err(|e| bad(e.to_string()))?;
    let node = raw.self_.ok_or_else(|| bad("no Self".into()))?;
    let dns_name = node.dns_name.trim_end_matches('.').to_string();
    if dns_name.is_empty() {
        return Err(bad(format!(
            "Self.DNSName is empty (BackendState {:?}; is the node logged in?)",
            raw.backend_state
        )));
    }
    let caps: Vec<String> = node
        .capabilities
        .unwrap_or_default()
        .into_iter()
        .chain(node.cap_map.unwrap_or_default().into_keys())
        .collect();
    let has = |c: &str| caps.iter().any(|x| x == c);
    let funnel_ports = caps
        .iter()
        .find_map(|c| c.strip_prefix(FUNNEL_PORTS_CAP)?.strip_prefix("?ports="))
        .map(str::to_string);
    Ok(NodeStatus {
        dns_name,
        backend_state: raw.backend_state,
        can_funnel: has("https") && has("funnel"),
        version: Version::parse(&raw.version),
        funnel_ports,
    })
}

/// The node attribute that lists the ports Funnel may use.
const FUNNEL_PORTS_CAP: &str = "https://tailscale.com/cap/funnel-ports";

/// Whether a funnel-ports attribute (`443,8443,10000`, ranges as `8000-8100`) allows `port`.
pub fn funnel_port_allowed(ports: &str, port: u16) -> bool {
    ports.split(',').any(|p| match p.split_once('-') {
        None => p.parse() == Ok(port),
        Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
            (Ok(a), Ok(b)) => (a..=b).contains(&port),
            _ => false,
        },
    })
}

/// What in ferry's settings this node's tailscale cannot do, said with the setting's name.
pub fn unsupported(version: Version, mode: FunnelMode, upstream: &str) -> Option<String> {
    if version < Version::MINIMUM {
        return Some(format!(
            "the tailscale CLI is {version}; ferry needs Tailscale {} or later",
            Version::MINIMUM
        ));
    }
    if mode == FunnelMode::Tcp && version < Version::ANY_UPSTREAM {
        return Some(format!(
            "FERRY_FUNNEL_MODE=tcp needs Tailscale {} or later (--proxy-protocol); the tailscale CLI is {version}",
            Version::ANY_UPSTREAM
        ));
    }
    let host = canonical_target(upstream).map(|t| t.host);
    if mode == FunnelMode::Tcp && host.as_deref().is_some_and(|h| h.contains(':')) {
        // tailscale stores an IPv6 forward without brackets, and tailscaled cannot dial that.
        return Some(format!(
            "FERRY_UPSTREAM_URL={upstream}: FERRY_FUNNEL_MODE=tcp cannot forward to an IPv6 address; use an \
             IPv4 address or a name"
        ));
    }
    if version < Version::ANY_UPSTREAM && host.as_deref() != Some("127.0.0.1") {
        return Some(format!(
            "FERRY_UPSTREAM_URL={upstream}: Tailscale {version} proxies only to localhost or 127.0.0.1; \
             another upstream needs Tailscale {} or later (upgrade the sidecar, or use a loopback upstream)",
            Version::ANY_UPSTREAM
        ));
    }
    None
}

/// A proxy target in the form in which tailscaled tells targets apart: the host without brackets
/// (versions 1.92 and later store `[::1]:8080` as `::1:8080`), and `localhost` as 127.0.0.1
/// (earlier versions store it that way).
#[derive(Debug, PartialEq, Eq)]
struct Target {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

fn canonical_target(url: &str) -> Option<Target> {
    let (scheme, rest) = url.split_once("://")?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let (host, port) = if let Some(b) = authority.strip_prefix('[') {
        let (h, after) = b.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse().ok()?),
    };
    let host = host.to_ascii_lowercase();
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    (!host.is_empty()).then(|| Target {
        scheme: scheme.to_ascii_lowercase(),
        host,
        port,
        path: if path.is_empty() { "/".into() } else { path.to_string() },
    })
}

/// Whether a handler's stored proxy target is the target ferry asked for.
pub fn same_target(stored: &str, wanted: &str) -> bool {
    stored == wanted
        || match (canonical_target(stored), canonical_target(wanted)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
}

/// The public base of download URLs: `https://<DNSName><:port unless 443>`.
pub fn public_base(dns_name: &str, port: u16) -> String {
    if port == 443 {
        format!("https://{dns_name}")
    } else {
        format!("https://{dns_name}:{port}")
    }
}

/// What a failed command's output says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The ETag check failed: another writer changed the serve config. Retry.
    Race,
    /// `off` for a handler that is not there, which means the link is already closed.
    NoHandler,
    /// The node cannot use Funnel; the owner must enable it (the URL, when the CLI printed one).
    NoFunnel {
        enable_url: Option<String>,
        message: String,
    },
    /// tailscaled is not reachable (stopped, or another socket).
    NoDaemon(String),
    /// tailscaled or the CLI refused for a reason only the owner can change; `remedy` says
    /// what to change, `message` is what tailscale said.
    Refused {
        remedy: String,
        message: String,
    },
    Other(String),
}

impl Failure {
    /// Whether the failure came from `tailscale funnel`'s check that the node may use Funnel,
    /// which `tailscale serve` does not make.
    pub fn is_funnel_check(&self) -> bool {
        match self {
            Failure::NoFunnel { .. } => true,
            Failure::Refused { message, .. } => message.contains("is not allowed for funnel"),
            _ => false,
        }
    }
}

/// Classifies a failed command from its stdout and stderr. `port` is `FERRY_FUNNEL_PORT`.
pub fn classify(stdout: &str, stderr: &str, port: u16) -> Failure {
    let all = format!("{stdout}\n{stderr}");
    let message = summary(&all);
    if all.contains("Another client is changing the serve config") {
        return Failure::Race;
    }
    if all.contains("handler does not exist") {
        return Failure::NoHandler;
    }
    if all.contains("Funnel not available") || all.contains("Funnel is not enabled") {
        return Failure::NoFunnel {
            enable_url: enable_url(&all),
            message,
        };
    }
    let refused = |remedy: String| Failure::Refused {
        remedy,
        message: message.clone(),
    };
    // `status` and `funnel` say "failed to connect to local tailscaled"; a LocalAPI call
    // (`funnel status`, `serve`) says "Failed to connect to local Tailscale daemon". A socket
    // that is there but may not be opened is a permission, not a stopped daemon.
    let lower = all.to_ascii_lowercase();
    if lower.contains("failed to connect to local tailscale") {
        if lower.contains("permission denied") {
            return refused(
                "the user ferry runs the tailscale CLI as may not open tailscaled's socket (FERRY_TAILSCALE_SOCKET): \
                 give it access, or run the CLI as root"
                    .into(),
            );
        }
        return Failure::NoDaemon(message);
    }
    if all.contains("serve config denied") || all.contains("Access denied") {
        return refused(
            "the user ferry runs the tailscale CLI as may not change the serve config: make it tailscaled's \
             operator (sudo tailscale set --operator=<user>) or run the CLI as root"
                .into(),
        );
    }
    if all.contains("must be root, or be an operator") {
        return refused(
            "the node's serve config holds a file-path handler, so tailscaled lets only root, or an operator \
             allowed to run `sudo tailscale`, change it: remove that handler, or run the tailscale CLI as root"
                .into(),
        );
    }
    if all.contains("shields-up") {
        return refused("shields-up is on and Funnel cannot work with it: run tailscale set --shields-up=false".into());
    }
    // The first message comes from the CLI's own check (before 1.92), the second from
    // tailscaled's.
    if all.contains("foreground already exists") || all.contains("foreground listener already exists") {
        return refused(foreground_remedy(port));
    }
    if all.contains("is not allowed for funnel") {
        return refused(
            "the tailnet's funnel-ports node attribute leaves out a port the tailscale CLI needs (it checks 443 \
             for every Funnel command, whatever FERRY_FUNNEL_PORT is): allow it in the tailnet policy file"
                .into(),
        );
    }
    if all.contains("only localhost or 127.0.0.1 proxies") {
        return refused(format!(
            "FERRY_UPSTREAM_URL must be a localhost or 127.0.0.1 address with this tailscale (another upstream needs \
             Tailscale {} or later)",
            Version::ANY_UPSTREAM
        ));
    }
    Failure::Other(message)
}

/// What to do when a foreground `tailscale serve` or `funnel` session holds the port.
pub fn foreground_remedy(port: u16) -> String {
    format!(
        "a foreground tailscale serve or funnel session holds port {port}: end it, or set FERRY_FUNNEL_PORT to another port"
    )
}

/// A command that exited 0 without doing what was asked: `tailscale funnel` stops early, with
/// success, when the control server says Funnel cannot be enabled here ("You don't have
/// permission to enable this feature."). `None` when its output is the usual one.
pub fn unapplied(stdout: &str) -> Option<Failure> {
    let said = summary(stdout);
    if said.is_empty() || stdout.contains("Available on the internet") || stdout.contains("Available within") {
        return None;
    }
    Some(Failure::NoFunnel {
        enable_url: enable_url(stdout),
        message: said,
    })
}

fn enable_url(all: &str) -> Option<String> {
    all.split_whitespace()
        .find(|w| w.starts_with("https://login.tailscale.com/") || w.starts_with("https://tailscale.com/s/"))
        .map(|w| w.trim_end_matches(['.', ',']).to_string())
}

/// The output's non-empty lines, joined and cut to a bounded length.
fn summary(all: &str) -> String {
    let s: Vec<&str> = all.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let s = s.join(" ");
    s.chars().take(400).collect()
}

/// The `host:port` of an http(s) URL (for the TCP forward's target).
pub fn url_host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let hostport = rest.split('/').next()?;
    if hostport.is_empty() {
        return None;
    }
    if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !hostport.ends_with(']') {
        return Some(hostport.to_string());
    }
    let port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    Some(format!("{hostport}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "nas.tail1234.ts.net";

    #[test]
    fn argv_has_the_documented_grammar() {
        let id = TunnelId::parse("AAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let m = mount(&id);
        assert_eq!(
            open_path_argv(443, &m, "http://127.0.0.1:8080/s/AAAAAAAAAAAAAAAAAAAAAAAA").join(" "),
            "funnel --bg --yes --https=443 --set-path=/s/AAAAAAAAAAAAAAAAAAAAAAAA http://127.0.0.1:8080/s/AAAAAAAAAAAAAAAAAAAAAAAA"
        );
        assert_eq!(
            close_path_argv(8443, &m).join(" "),
            "funnel --yes --https=8443 --set-path=/s/AAAAAAAAAAAAAAAAAAAAAAAA off"
        );
        assert_eq!(
            open_tcp_argv(10000, "nginx:8080").join(" "),
            "funnel --bg --yes --tls-terminated-tcp=10000 --proxy-protocol=2 tcp://nginx:8080"
        );
        assert_eq!(
            close_tcp_argv(443).join(" "),
            "funnel --yes --tls-terminated-tcp=443 off"
        );
        assert_eq!(serve_status_argv().join(" "), "funnel status --json");
        assert_eq!(status_argv().join(" "), "status --json");
    }

    #[test]
    fn status_reads_past_a_number_beyond_f64_in_what_it_skips() {
        // The `tailscale_status` fuzz target found this (corpus/crash-number-beyond-f64). JSON
        // allows 9e440, and a CapMap value is never read, so such a value cannot make ferry
        // refuse the node.
        let out = std::fs::read_to_string("fuzz/corpus/tailscale_status/crash-number-beyond-f64").unwrap();
        let st = parse_status(&out).unwrap();
        assert_eq!((st.dns_name.as_str(), st.can_funnel), (HOST, true));
    }

    #[test]
    #[should_panic(expected = "own paths")]
    fn close_never_leaves_s() {
        close_path_argv(443, "/");
    }

    #[test]
    fn serve_config_in_the_real_shape() {
        let json = r#"{
          "TCP": {"443": {"HTTPS": true}, "10000": {"TCPForward": "127.0.0.1:8080", "TerminateTLS": "nas.tail1234.ts.net", "ProxyProtocol": 2}},
          "Web": {"nas.tail1234.ts.net:443": {"Handlers": {
              "/s/.ferry": {"Text": "ferry"},
              "/s/AAAAAAAAAAAAAAAAAAAAAAAA": {"Proxy": "http://127.0.0.1:8080/s/AAAAAAAAAAAAAAAAAAAAAAAA"},
              "/grafana": {"Proxy": "http://127.0.0.1:3000"}
          }}},
          "AllowFunnel": {"nas.tail1234.ts.net:443": true}
        }"#;
        let sc = parse_serve_config(json).unwrap();
        assert!(sc.funnel_on(HOST, 443));
        assert!(!sc.funnel_on(HOST, 8443));
        assert!(sc.serves(
            HOST,
            443,
            "/s/AAAAAAAAAAAAAAAAAAAAAAAA",
            "http://127.0.0.1:8080/s/AAAAAAAAAAAAAAAAAAAAAAAA"
        ));
        assert!(!sc.serves(HOST, 443, "/s/AAAAAAAAAAAAAAAAAAAAAAAA", "http://other"));
        assert_eq!(sc.link_mounts(HOST, 443), vec!["/s/AAAAAAAAAAAAAAAAAAAAAAAA"]);
        assert_eq!(sc.foreign_mounts(HOST, 443), vec!["/grafana"]);
        assert_eq!(sc.tcp_forward(10000), Some(("127.0.0.1:8080", 2)));
        assert_eq!(sc.tcp_forward(443), None);
        assert!(sc.serves_web(443) && !sc.serves_web(10000));
        assert_eq!(parse_serve_config("{}\n").unwrap(), ServeConfig::default());
        assert_eq!(parse_serve_config("null").unwrap(), ServeConfig::default());
        assert!(parse_serve_config("Available on the internet:").is_err());
    }

    #[test]
    fn status_gives_the_dns_name_and_capabilities() {
        let json = r#"{"Version":"1.92.1","BackendState":"Running",
          "Self":{"ID":"n1","HostName":"nas","DNSName":"nas.tail1234.ts.net.","TailscaleIPs":["100.64.0.1"],
                  "CapMap":{"https":null,"funnel":null,"funnel-ports?ports=443,8443,10000":null}},
          "MagicDNSSuffix":"tail1234.ts.net","Peer":{}}"#;
        let st = parse_status(json).unwrap();
        assert_eq!(st.dns_name, HOST);
        assert!(st.can_funnel);
        let no = r#"{"BackendState":"Running","Self":{"DNSName":"nas.tail1234.ts.net.","Capabilities":["https"]}}"#;
        assert!(!parse_status(no).unwrap().can_funnel);
        let logged_out = r#"{"BackendState":"NeedsLogin","Self":{"DNSName":""}}"#;
        assert!(parse_status(logged_out).unwrap_err().reason.contains("NeedsLogin"));
        assert!(parse_status("garbage").is_err());
    }

    #[test]
    fn public_base_omits_443() {
        assert_eq!(public_base(HOST, 443), "https://nas.tail1234.ts.net");
        assert_eq!(public_base(HOST, 8443), "https://nas.tail1234.ts.net:8443");
    }

    /// Each text is what the real CLI prints (the emulator under tests/emulator cites where each
    /// comes from).
    #[test]
    fn failures_are_recognised() {
        let cases: &[(&str, &str, Failure)] = &[
            (
                "",
                "Another client is changing the serve config; please try again.\nsending serve config: Preconditions failed: etag mismatch",
                Failure::Race,
            ),
            (
                "",
                "error: failed to remove web serve: handler does not exist\n\ntry `tailscale funnel --help` for usage info",
                Failure::NoHandler,
            ),
            (
                "",
                "failed to connect to local tailscaled; it doesn't appear to be running (sudo systemctl start tailscaled ?)",
                Failure::NoDaemon(
                    "failed to connect to local tailscaled; it doesn't appear to be running (sudo systemctl start tailscaled ?)"
                        .into(),
                ),
            ),
        ];
        for (out, err, want) in cases {
            assert_eq!(&classify(out, err, 443), want, "{err}");
        }
        // A stopped tailscaled, in the words of each command ferry runs.
        for err in [
            "getting client status: failed to connect to local tailscaled; it doesn't appear to be running",
            "getting serve config: Failed to connect to local Tailscale daemon for /localapi/v0/serve-config; not running? Error: dial unix /var/run/tailscale/tailscaled.sock: connect: no such file or directory",
            "error getting serve config: getting serve config: Failed to connect to local Tailscale daemon for /localapi/v0/serve-config; not running? Error: dial unix /tmp/ts.sock: connect: connection refused",
            "failed to connect to local tailscaled (which appears to be running as tailscaled, pid 94512). Got error: Failed to connect to local Tailscale daemon for /localapi/v0/status; not running?",
        ] {
            assert!(matches!(classify("", err, 443), Failure::NoDaemon(_)), "{err}");
        }
        let f = classify(
            "Funnel is not enabled on your tailnet.\nTo enable, visit:\n\n         https://login.tailscale.com/f/funnel?node=nABC\n",
            "Funnel not available; \"funnel\" node attribute not set. See https://tailscale.com/s/no-funnel.",
            443,
        );
        match f {
            Failure::NoFunnel { enable_url, message } => {
                assert_eq!(
                    enable_url.as_deref(),
                    Some("https://login.tailscale.com/f/funnel?node=nABC")
                );
                assert!(message.contains("node attribute not set"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify("", "boom", 443), Failure::Other(m) if m == "boom"));
    }

    #[test]
    fn refusals_say_what_to_change() {
        let cases = [
            ("sending serve config: Access denied: serve config denied", "--operator"),
            (
                "sending serve config: 401 Unauthorized: must be root, or be an operator and able to run 'sudo tailscale' to serve a path",
                "file-path handler",
            ),
            (
                "sending serve config: updating config: Unable to turn on Funnel while shields-up is enabled",
                "--shields-up=false",
            ),
            ("foreground already exists under this port", "FERRY_FUNNEL_PORT"),
            (
                "sending serve config: updating config: foreground listener already exists for port 443",
                "FERRY_FUNNEL_PORT",
            ),
            (
                "getting serve config: Failed to connect to local Tailscale daemon for /localapi/v0/serve-config; not running? Error: dial unix /var/run/tailscale/tailscaled.sock: connect: permission denied",
                "FERRY_TAILSCALE_SOCKET",
            ),
            (
                "port 443 is not allowed for funnel; allowed ports are: 8443",
                "funnel-ports",
            ),
            (
                "error: failed apply web serve: only localhost or 127.0.0.1 proxies are currently supported\n\ntry `tailscale funnel --help` for usage info",
                "FERRY_UPSTREAM_URL",
            ),
        ];
        for (err, hint) in cases {
            match classify("", err, 8443) {
                Failure::Refused { remedy, message } => {
                    assert!(remedy.contains(hint), "{err}: {remedy}");
                    assert!(err.contains(message.split(' ').next().unwrap()), "{message}");
                }
                other => panic!("{err}: {other:?}"),
            }
        }
        let port = classify("", "port 443 is not allowed for funnel", 443);
        assert!(port.is_funnel_check(), "{port:?}");
        assert!(!classify("", "serve config denied", 443).is_funnel_check());
    }

    #[test]
    fn an_early_successful_exit_is_read_for_its_reason() {
        let f = unapplied("\nYou don't have permission to enable this feature.\n").unwrap();
        assert_eq!(
            f,
            Failure::NoFunnel {
                enable_url: None,
                message: "You don't have permission to enable this feature.".into()
            }
        );
        let usual = "Available on the internet:\n\nhttps://x.ts.net/s/a\n|-- proxy http://127.0.0.1:8080/s/a\n";
        assert_eq!(unapplied(usual), None);
        assert_eq!(unapplied(""), None);
    }

    #[test]
    fn targets_compare_as_tailscaled_stores_them() {
        // 1.92 and later drop the brackets of an IPv6 host; earlier ones store localhost as
        // 127.0.0.1.
        assert!(same_target("http://::1:8080/s/A", "http://[::1]:8080/s/A"));
        assert!(same_target("http://127.0.0.1:8080/s/A", "http://localhost:8080/s/A"));
        assert!(same_target("http://nginx:8080/s/A", "http://nginx:8080/s/A"));
        assert!(same_target("http://fd00::5:80/s/A", "http://[fd00::5]:80/s/A"));
        assert!(!same_target("http://::1:8080/s/A", "http://[::1]:8081/s/A"));
        assert!(!same_target("http://127.0.0.1:8080/s/A", "http://127.0.0.1:8080/s/B"));
        assert!(!same_target("https://127.0.0.1:8080/s/A", "http://127.0.0.1:8080/s/A"));
        assert!(!same_target("", "http://127.0.0.1:8080/s/A"));
        // Found by the `tailscale_status` fuzz target: a target that does not read as a URL is
        // still itself.
        assert!(same_target("http:/o127.0.0.1:8081/s/A", "http:/o127.0.0.1:8081/s/A"));
    }

    #[test]
    fn versions_decide_what_the_upstream_may_be() {
        assert_eq!(Version::parse("1.90.9-t1234abcd-g5678"), Some(Version(1, 90)));
        assert_eq!(Version::parse("1.92.3"), Some(Version(1, 92)));
        assert_eq!(Version::parse("unknown"), None);
        let old = Version(1, 90);
        assert_eq!(unsupported(old, FunnelMode::Path, "http://127.0.0.1:8080"), None);
        assert_eq!(unsupported(old, FunnelMode::Path, "http://localhost:8080"), None);
        for upstream in ["http://nginx:8080", "http://[::1]:8080", "http://192.168.1.5:8080"] {
            let m = unsupported(old, FunnelMode::Path, upstream).unwrap();
            assert!(m.contains("FERRY_UPSTREAM_URL") && m.contains("1.92"), "{m}");
        }
        let m = unsupported(old, FunnelMode::Tcp, "http://127.0.0.1:8080").unwrap();
        assert!(m.contains("FERRY_FUNNEL_MODE=tcp") && m.contains("1.92"), "{m}");
        let m = unsupported(Version(1, 50), FunnelMode::Path, "http://127.0.0.1:8080").unwrap();
        assert!(m.contains("1.52"), "{m}");
        let new = Version(1, 92);
        assert_eq!(unsupported(new, FunnelMode::Tcp, "http://nginx:8080"), None);
        assert_eq!(unsupported(new, FunnelMode::Path, "http://[::1]:8080"), None);
        let m = unsupported(new, FunnelMode::Tcp, "http://[::1]:8080").unwrap();
        assert!(m.contains("IPv6"), "{m}");
    }

    #[test]
    fn funnel_ports_read_lists_and_ranges() {
        assert!(funnel_port_allowed("443,8443,10000", 8443));
        assert!(!funnel_port_allowed("443,8443,10000", 8080));
        assert!(funnel_port_allowed("80,443,8080-8090", 8085));
        assert!(!funnel_port_allowed("8080-x,", 8080));
        let json = r#"{"Version":"1.94.1-tabc","BackendState":"Running","Self":{"DNSName":"nas.tail1234.ts.net.",
          "CapMap":{"https":null,"funnel":null,"https://tailscale.com/cap/funnel-ports?ports=8443,10000":null}}}"#;
        let st = parse_status(json).unwrap();
        assert_eq!(st.funnel_ports.as_deref(), Some("8443,10000"));
        assert_eq!(st.version, Some(Version(1, 94)));
    }

    #[test]
    fn a_foreground_session_is_seen_on_its_port() {
        let json = r#"{"TCP":{"443":{"HTTPS":true}},"Foreground":{"s1":{"TCP":{"8443":{"HTTPS":true}},
          "Web":{"nas.tail1234.ts.net:8443":{"Handlers":{"/":{"Proxy":"http://127.0.0.1:3000"}}}}}}}"#;
        let sc = parse_serve_config(json).unwrap();
        assert!(sc.foreground_holds(8443));
        assert!(!sc.foreground_holds(443));
    }

    #[test]
    fn upstream_host_port() {
        assert_eq!(
            url_host_port("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(url_host_port("http://nginx").as_deref(), Some("nginx:80"));
        assert_eq!(url_host_port("https://[::1]").as_deref(), Some("[::1]:443"));
        assert_eq!(url_host_port("http://[::1]:81/x").as_deref(), Some("[::1]:81"));
        assert_eq!(url_host_port("nope"), None);
    }
}
