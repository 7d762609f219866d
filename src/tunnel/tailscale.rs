//! The pure half of the Tailscale Funnel providers: the `tailscale` command lines ferry runs, and
//! what their output means (`funnel status --json` is the node's `ipn.ServeConfig`, `status --json`
//! is `ipnstate.Status`). Nothing here runs anything; [`super::funnel`] does, through a runner.
//!
//! Only paths under `/s/` are ferry's: nothing here builds `reset`, or `off` without `--set-path`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::links::TunnelId;

/// The handler ferry keeps while it runs, so Funnel for the port is never switched off and on
/// (a new Funnel host's DNS and certificate can take minutes).
pub const PLACEHOLDER: &str = "/s/.ferry";
pub const PLACEHOLDER_TARGET: &str = "text:ferry";

/// Ports Funnel accepts.
pub const FUNNEL_PORTS: [u16; 3] = [443, 8443, 10000];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunnelMode {
    /// One web handler `/s/<id>` per open link.
    Path,
    /// One TLS-terminated TCP forward with PROXY protocol v2 while any link is open.
    Tcp,
}

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

    /// Whether `mount` proxies to `target` publicly.
    pub fn serves(&self, host: &str, port: u16, mount: &str, target: &str) -> bool {
        self.funnel_on(host, port) && self.handler(host, port, mount).is_some_and(|h| h.proxy == target)
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
}

#[derive(Deserialize)]
struct RawStatus {
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
    Ok(NodeStatus {
        dns_name,
        backend_state: raw.backend_state,
        can_funnel: has("https") && has("funnel"),
    })
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
    /// `off` for a handler that is not there: already closed.
    NoHandler,
    /// The node cannot use Funnel; the owner must enable it (the URL, when the CLI printed one).
    NoFunnel {
        enable_url: Option<String>,
        message: String,
    },
    /// tailscaled is not reachable (not running, wrong socket).
    NoDaemon(String),
    Other(String),
}

/// Classifies a failed command from its stdout and stderr.
pub fn classify(stdout: &str, stderr: &str) -> Failure {
    let all = format!("{stdout}\n{stderr}");
    if all.contains("Another client is changing the serve config") {
        return Failure::Race;
    }
    if all.contains("handler does not exist") {
        return Failure::NoHandler;
    }
    if all.contains("Funnel not available") || all.contains("Funnel is not enabled") {
        let enable_url = all
            .split_whitespace()
            .find(|w| w.starts_with("https://login.tailscale.com/") || w.starts_with("https://tailscale.com/s/"))
            .map(|w| w.trim_end_matches(['.', ',']).to_string());
        return Failure::NoFunnel {
            enable_url,
            message: summary(&all),
        };
    }
    if all.contains("failed to connect to local tailscaled") || all.contains("doesn't appear to be running") {
        return Failure::NoDaemon(summary(&all));
    }
    Failure::Other(summary(&all))
}

/// The output's meaningful lines, joined, bounded.
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
        // Found by the `tailscale_status` fuzz target (corpus/crash-number-beyond-f64): JSON
        // allows 9e440; a CapMap value is never read, so it cannot make ferry refuse the node.
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

    #[test]
    fn failures_are_recognised() {
        let cases: &[(&str, &str, Failure)] = &[
            (
                "",
                "Another client is changing the serve config; please try again.\netag mismatch",
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
            assert_eq!(&classify(out, err), want, "{err}");
        }
        let f = classify(
            "Funnel is not enabled on your tailnet.\nTo enable, visit:\n\n         https://login.tailscale.com/f/funnel?node=nABC\n",
            "Funnel not available; \"funnel\" node attribute not set. See https://tailscale.com/s/no-funnel.",
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
        assert!(matches!(classify("", "boom"), Failure::Other(m) if m == "boom"));
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
