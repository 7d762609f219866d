//! `Config` and the kinds of value it holds.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

pub(super) fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Local,
    Tailscale,
    Docker,
}

impl ProviderKind {
    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "local" => ProviderKind::Local,
            "tailscale" => ProviderKind::Tailscale,
            "docker" => ProviderKind::Docker,
            _ => return None,
        })
    }

    /// The value of `FERRY_PROVIDER` that picks this provider, as reports show it.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Tailscale => "tailscale",
            ProviderKind::Docker => "docker",
        }
    }

    /// Whether links go public through Tailscale Funnel, which ferry must keep in step with them.
    pub fn uses_funnel(self) -> bool {
        self != ProviderKind::Local
    }
}

/// The ports Funnel accepts (`FERRY_FUNNEL_PORT`).
pub const FUNNEL_PORTS: [u16; 3] = [443, 8443, 10000];

/// How a Funnel provider publishes links (`FERRY_FUNNEL_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunnelMode {
    /// One web handler `/s/<id>` per open link.
    Path,
    /// One TLS-terminated TCP forward with PROXY protocol v2 while any link is open.
    Tcp,
}

/// What a webhook receiver takes (`FERRY_WEBHOOK_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The event as JSON.
    Json,
    /// A plain-text sentence, as ntfy topics show it.
    Ntfy,
}

impl WebhookFormat {
    /// ntfy topics (`https://ntfy.sh/topic`, or a self-hosted `ntfy.` host) take plain text.
    pub fn detect(url: &str) -> WebhookFormat {
        let host = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split(['/', ':']).next())
            .unwrap_or("");
        if host == "ntfy.sh" || host.starts_with("ntfy.") {
            WebhookFormat::Ntfy
        } else {
            WebhookFormat::Json
        }
    }
}

/// How long one access-log file covers: nginx starts a new file when `$msec` enters a new slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSlot {
    Tenth,
    Second,
    Ten,
    Hundred,
    Thousand,
}

impl LogSlot {
    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "0.1s" => LogSlot::Tenth,
            "1s" => LogSlot::Second,
            "10s" => LogSlot::Ten,
            "100s" => LogSlot::Hundred,
            "1000s" => LogSlot::Thousand,
            _ => return None,
        })
    }

    pub fn millis(self) -> u64 {
        match self {
            LogSlot::Tenth => 100,
            LogSlot::Second => 1_000,
            LogSlot::Ten => 10_000,
            LogSlot::Hundred => 100_000,
            LogSlot::Thousand => 1_000_000,
        }
    }

    /// The nginx regex that cuts a slot out of `$msec` (`1700000000.123`).
    pub fn nginx_regex(self) -> &'static str {
        match self {
            LogSlot::Tenth => r"^(?<s>\d+\.\d)",
            LogSlot::Second => r"^(?<s>\d+)\.",
            LogSlot::Ten => r"^(?<s>\d+)\d\.",
            LogSlot::Hundred => r"^(?<s>\d+)\d\d\.",
            LogSlot::Thousand => r"^(?<s>\d+)\d\d\d\.",
        }
    }

    /// The start of the slot named `s` (as the regex above cut it), in ms since the epoch.
    pub fn start_ms(self, s: &str) -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return None;
        }
        match self {
            LogSlot::Tenth => {
                let (secs, tenth) = s.split_once('.')?;
                Some(secs.parse::<u64>().ok()? * 1000 + tenth.parse::<u64>().ok().filter(|t| *t < 10)? * 100)
            }
            _ => Some(s.parse::<u64>().ok()? * self.millis()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NginxMode {
    Managed,
    External,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub tunnels_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// The folder agents may reach through MCP (`FERRY_MCP_ROOT`), as a path in the data dir
    /// (the data dir itself unless set).
    pub mcp_root: crate::data_dir::RelPath,
    pub jwt_secret: Secret,
    pub max_tunnel: Duration,
    pub stall_timeout: Duration,
    pub grace_period: Duration,
    pub resume_window: Duration,
    pub preview_bytes: u64,
    /// What the completing client may fetch again in the grace period, in all.
    pub grace_bytes: u64,
    /// The re-send budget per download.
    pub refetch_bytes: u64,
    /// The most files one ZIP link may hold.
    pub zip_max_files: usize,
    /// A new link's expiry and downloads when the owner does not say, and the cap on downloads.
    pub default_expires: Duration,
    pub default_max_downloads: u32,
    pub max_downloads_limit: u32,
    pub redis_url: Option<Secret>,
    pub base_url: String,
    pub admin_addr: SocketAddr,
    pub admin_hosts: Vec<String>,
    pub public_addr: SocketAddr,
    pub upstream_url: String,
    pub provider: ProviderKind,
    /// The `tailscale` CLI (`FERRY_TAILSCALE_BIN`): a local path, or the name inside the sidecar.
    pub tailscale_bin: String,
    pub tailscale_socket: Option<PathBuf>,
    pub tailscale_container: String,
    pub funnel_port: u16,
    pub funnel_mode: FunnelMode,
    /// How long one `tailscale` command may run (`FERRY_TAILSCALE_TIMEOUT_SECONDS`).
    pub tailscale_timeout: Duration,
    pub nginx_mode: NginxMode,
    pub nginx_bin: Option<PathBuf>,
    pub trusted_proxies: Vec<String>,
    pub admin_token: Option<Secret>,
    pub history_days: u32,
    pub log_filter: String,
    pub log_slot: LogSlot,
    pub webhook_url: Option<Secret>,
    pub ban_after_fails: u32,
    pub ban: Duration,
    pub conn_per_client: u32,
    pub req_per_client: u32,
    /// `None`: detected from the URL.
    pub webhook_format: Option<WebhookFormat>,
    /// With Redis: how long an instance may stay silent before another takes over its links.
    pub instance_timeout: Duration,
}
