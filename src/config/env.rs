//! Reading the configuration: where values come from (the process environment, then the optional
//! `FERRY_CONFIG` file), how each kind of value is parsed, and [`Config::load`], which checks every
//! variable and names the first bad one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::data_dir::RelPath;

use super::values::{
    Config, ConfigError, FUNNEL_PORTS, FunnelMode, LogSlot, NginxMode, ProviderKind, Secret, WebhookFormat, err,
};

/// Where configuration values come from: the process environment, then the optional file.
pub struct Source {
    env: HashMap<String, String>,
    file: HashMap<String, String>,
}

impl Source {
    pub fn from_process() -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let file = match env.get("FERRY_CONFIG") {
            Some(path) => parse_file(Path::new(path))?,
            None => HashMap::new(),
        };
        Ok(Source { env, file })
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let env = pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Source {
            env,
            file: HashMap::new(),
        }
    }

    /// A variable's value: the environment's, else the file's. An empty value counts as unset,
    /// so `KEY=` in the environment leaves the file's value in force.
    fn get(&self, var: &str) -> Option<&str> {
        let set = |v: &&String| !v.is_empty();
        self.env
            .get(var)
            .filter(set)
            .or_else(|| self.file.get(var).filter(set))
            .map(String::as_str)
    }
}

fn parse_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err("FERRY_CONFIG", format!("cannot read {}: {e}", path.display())))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(err("FERRY_CONFIG", format!("line {}: expected KEY = \"value\"", n + 1)));
        };
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

fn seconds(src: &Source, var: &'static str, default: u64, min: u64) -> Result<Duration, ConfigError> {
    let n = number(src, var, default)?;
    if n < min {
        return Err(err(var, format!("must be at least {min} seconds, got {n}")));
    }
    Ok(Duration::from_secs(n))
}

fn number(src: &Source, var: &'static str, default: u64) -> Result<u64, ConfigError> {
    match src.get(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| err(var, format!("expected a whole number, got {v:?}"))),
    }
}

fn addr(src: &Source, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    let v = src.get(var).unwrap_or(default);
    v.parse()
        .map_err(|_| err(var, format!("expected host:port with an IP address, got {v:?}")))
}

fn dir(src: &Source, var: &'static str, default: &str) -> Result<PathBuf, ConfigError> {
    let p = PathBuf::from(src.get(var).unwrap_or(default));
    std::path::absolute(&p).map_err(|e| err(var, format!("cannot resolve {}: {e}", p.display())))
}

impl Config {
    /// Reads and validates everything, but writes nothing. The variables are read in a fixed
    /// order, and the first bad one is the error.
    pub fn load(src: &Source) -> Result<Config, ConfigError> {
        let dirs = Dirs::load(src)?;
        let shared = SharedState::load(src)?;
        let limits = Limits::load(src)?;
        let listeners = Listeners::load(src)?;
        let tunnel = Tunnel::load(src)?;
        let nginx = Nginx::load(src, tunnel.provider)?;
        let admin_token = admin_token(src, listeners.admin_addr)?;
        let logging = Logging::load(src)?;
        let webhook_url = webhook_url(src)?;
        let abuse = Abuse::load(src)?;
        let webhook_format = webhook_format(src)?;
        let instance_timeout = seconds(src, "FERRY_INSTANCE_TIMEOUT_SECONDS", 30, 2)?;

        Ok(Config {
            data_dir: dirs.data_dir,
            state_dir: dirs.state_dir,
            tunnels_dir: dirs.tunnels_dir,
            logs_dir: dirs.logs_dir,
            mcp_root: dirs.mcp_root,
            jwt_secret: shared.jwt_secret,
            max_tunnel: limits.max_tunnel,
            stall_timeout: limits.stall_timeout,
            grace_period: limits.grace_period,
            resume_window: limits.resume_window,
            preview_bytes: limits.preview_bytes,
            grace_bytes: limits.grace_bytes,
            refetch_bytes: limits.refetch_bytes,
            zip_max_files: limits.zip_max_files,
            default_expires: limits.default_expires,
            default_max_downloads: limits.default_max_downloads,
            max_downloads_limit: limits.max_downloads_limit,
            redis_url: shared.redis_url,
            base_url: listeners.base_url,
            admin_addr: listeners.admin_addr,
            admin_hosts: listeners.admin_hosts,
            public_addr: listeners.public_addr,
            upstream_url: listeners.upstream_url,
            provider: tunnel.provider,
            tailscale_bin: tunnel.tailscale_bin,
            tailscale_socket: tunnel.tailscale_socket,
            tailscale_container: tunnel.tailscale_container,
            funnel_port: tunnel.funnel_port,
            funnel_mode: tunnel.funnel_mode,
            tailscale_timeout: tunnel.tailscale_timeout,
            nginx_mode: nginx.nginx_mode,
            nginx_bin: nginx.nginx_bin,
            trusted_proxies: nginx.trusted_proxies,
            admin_token,
            history_days: logging.history_days,
            log_filter: logging.log_filter,
            log_slot: logging.log_slot,
            webhook_url,
            ban_after_fails: abuse.ban_after_fails,
            ban: abuse.ban,
            conn_per_client: abuse.conn_per_client,
            req_per_client: abuse.req_per_client,
            webhook_format,
            instance_timeout,
        })
    }
}

/// The shared folder and the runtime folders.
struct Dirs {
    data_dir: PathBuf,
    state_dir: PathBuf,
    tunnels_dir: PathBuf,
    logs_dir: PathBuf,
    mcp_root: RelPath,
}

impl Dirs {
    fn load(src: &Source) -> Result<Self, ConfigError> {
        let data_dir = dir(src, "NAS_MOUNT_PATH", "./data")?;
        if !data_dir.is_dir() {
            return Err(err(
                "NAS_MOUNT_PATH",
                format!("{} is not a directory", data_dir.display()),
            ));
        }
        let mcp_root = mcp_root(src, &data_dir)?;
        Ok(Dirs {
            data_dir,
            mcp_root,
            state_dir: dir(src, "FERRY_STATE_DIR", "./state")?,
            tunnels_dir: dir(src, "FERRY_TUNNELS_DIR", "./tunnels")?,
            logs_dir: dir(src, "FERRY_LOGS_DIR", "./logs")?,
        })
    }
}

/// `FERRY_MCP_ROOT`: a folder inside the data dir, as a path from the data dir's real location
/// (symlinks on the way resolved, so the folder is the one an agent really reaches).
fn mcp_root(src: &Source, data_dir: &Path) -> Result<RelPath, ConfigError> {
    let var = "FERRY_MCP_ROOT";
    if src.get(var).is_none() {
        return Ok(RelPath::root());
    }
    let path = dir(src, var, ".")?;
    let real = std::fs::canonicalize(&path).map_err(|e| {
        err(
            var,
            format!("{} is not a directory inside the data dir: {e}", path.display()),
        )
    })?;
    if !real.is_dir() {
        return Err(err(var, format!("{} is not a directory", path.display())));
    }
    let data = std::fs::canonicalize(data_dir)
        .map_err(|e| err("NAS_MOUNT_PATH", format!("cannot resolve {}: {e}", data_dir.display())))?;
    let outside = || {
        err(
            var,
            format!(
                "{} is not inside the data dir {} (NAS_MOUNT_PATH)",
                path.display(),
                data.display()
            ),
        )
    };
    let rel = real.strip_prefix(&data).map_err(|_| outside())?;
    let mut out = RelPath::root();
    for name in rel.iter() {
        use std::os::unix::ffi::OsStrExt;
        out = out.child(name.as_bytes()).map_err(|e| err(var, e.to_string()))?;
    }
    Ok(out)
}

/// The token secret and the Redis store, which instances that share links must agree on.
struct SharedState {
    jwt_secret: Secret,
    redis_url: Option<Secret>,
}

impl SharedState {
    fn load(src: &Source) -> Result<Self, ConfigError> {
        let jwt_secret = match src.get("JWT_SECRET") {
            Some(s) if s.len() < 32 => {
                return Err(err("JWT_SECRET", format!("must be at least 32 bytes, got {}", s.len())));
            }
            Some(s) => Secret::new(s),
            None => Secret::new(""), // filled in by `prepare_dirs` once the state dir exists
        };
        let redis_url = src.get("REDIS_URL").map(Secret::new);
        if let Some(u) = &redis_url {
            let scheme = u.expose().split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("redis" | "redis+unix" | "unix")) {
                return Err(err(
                    "REDIS_URL",
                    "expected redis://host:port/db or unix:///path/to/socket",
                ));
            }
            if let Err(e) = redis::Client::open(u.expose()) {
                // The parser's message never repeats the URL (which may hold a password).
                return Err(err("REDIS_URL", format!("not a valid Redis URL ({:?})", e.kind())));
            }
        }
        if redis_url.is_some() && jwt_secret.expose().is_empty() {
            return Err(err("JWT_SECRET", "required with REDIS_URL (instances must share it)"));
        }
        Ok(SharedState { jwt_secret, redis_url })
    }
}

/// How long a link may live and wait, and how many bytes it may serve besides the file itself.
struct Limits {
    max_tunnel: Duration,
    stall_timeout: Duration,
    grace_period: Duration,
    resume_window: Duration,
    preview_bytes: u64,
    grace_bytes: u64,
    refetch_bytes: u64,
    zip_max_files: usize,
    default_expires: Duration,
    default_max_downloads: u32,
    max_downloads_limit: u32,
}

impl Limits {
    fn load(src: &Source) -> Result<Self, ConfigError> {
        let max_tunnel = seconds(src, "MAX_TUNNEL_SECONDS", 3600, 1)?;
        let default_expires = match src.get("FERRY_DEFAULT_EXPIRES_SECONDS") {
            None => max_tunnel,
            Some(_) => seconds(src, "FERRY_DEFAULT_EXPIRES_SECONDS", 0, 1)?,
        };
        if default_expires > max_tunnel {
            return Err(err(
                "FERRY_DEFAULT_EXPIRES_SECONDS",
                format!(
                    "{} is above MAX_TUNNEL_SECONDS ({})",
                    default_expires.as_secs(),
                    max_tunnel.as_secs()
                ),
            ));
        }
        let downloads = |name, default| -> Result<u32, ConfigError> {
            match number(src, name, default)? {
                0 => Err(err(name, "must be at least 1")),
                n => u32::try_from(n).map_err(|_| err(name, "must be at most 4294967295")),
            }
        };
        let max_downloads_limit = downloads("FERRY_MAX_DOWNLOADS_LIMIT", 100)?;
        let default_max_downloads = downloads("FERRY_DEFAULT_MAX_DOWNLOADS", 1)?;
        if default_max_downloads > max_downloads_limit {
            return Err(err(
                "FERRY_DEFAULT_MAX_DOWNLOADS",
                format!("{default_max_downloads} is above FERRY_MAX_DOWNLOADS_LIMIT ({max_downloads_limit})"),
            ));
        }
        Ok(Limits {
            max_tunnel,
            default_expires,
            default_max_downloads,
            max_downloads_limit,
            stall_timeout: seconds(src, "STALL_TIMEOUT_SECONDS", 300, 1)?,
            grace_period: seconds(src, "GRACE_PERIOD_SECONDS", 60, 0)?,
            resume_window: seconds(src, "RESUME_WINDOW_SECONDS", 30, 0)?,
            preview_bytes: number(src, "FERRY_PREVIEW_BYTES", 1 << 20)?,
            grace_bytes: number(src, "FERRY_GRACE_BYTES", 16 << 20)?,
            refetch_bytes: number(src, "FERRY_REFETCH_BYTES", 16 << 20)?,
            zip_max_files: match number(src, "FERRY_ZIP_MAX_FILES", 10_000)? {
                0 => return Err(err("FERRY_ZIP_MAX_FILES", "must be at least 1")),
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
        })
    }
}

/// Where ferry listens, and the URLs that lead to it.
struct Listeners {
    admin_addr: SocketAddr,
    public_addr: SocketAddr,
    admin_hosts: Vec<String>,
    base_url: String,
    upstream_url: String,
}

impl Listeners {
    fn load(src: &Source) -> Result<Self, ConfigError> {
        let admin_addr = addr(src, "FERRY_ADMIN_ADDR", "127.0.0.1:8000")?;
        let public_addr = addr(src, "FERRY_PUBLIC_ADDR", "127.0.0.1:8080")?;
        Ok(Listeners {
            admin_addr,
            public_addr,
            admin_hosts: list(src.get("FERRY_ADMIN_HOSTS")),
            base_url: url(src, "BASE_URL", "http://localhost:8080")?,
            upstream_url: url(src, "FERRY_UPSTREAM_URL", &format!("http://{public_addr}"))?,
        })
    }
}

/// The tunnel provider and how to reach Tailscale.
struct Tunnel {
    provider: ProviderKind,
    tailscale_bin: String,
    tailscale_socket: Option<PathBuf>,
    tailscale_container: String,
    funnel_port: u16,
    tailscale_timeout: Duration,
    funnel_mode: FunnelMode,
}

impl Tunnel {
    fn load(src: &Source) -> Result<Self, ConfigError> {
        let provider = src.get("FERRY_PROVIDER").unwrap_or("local");
        let provider = ProviderKind::parse(provider).ok_or_else(|| {
            err(
                "FERRY_PROVIDER",
                format!("expected local, tailscale or docker, got {provider:?}"),
            )
        })?;
        let tailscale_bin = src.get("FERRY_TAILSCALE_BIN").unwrap_or("tailscale").to_string();
        let tailscale_socket = src.get("FERRY_TAILSCALE_SOCKET").map(PathBuf::from);
        if tailscale_socket.as_ref().is_some_and(|s| !s.is_absolute()) {
            return Err(err("FERRY_TAILSCALE_SOCKET", "must be an absolute path"));
        }
        let tailscale_container = src.get("FERRY_TAILSCALE_CONTAINER").unwrap_or("tailscale").to_string();
        let funnel_port = src.get("FERRY_FUNNEL_PORT").unwrap_or("443");
        let funnel_port = FUNNEL_PORTS
            .into_iter()
            .find(|p| p.to_string() == funnel_port)
            .ok_or_else(|| {
                err(
                    "FERRY_FUNNEL_PORT",
                    format!("Funnel listens on 443, 8443 or 10000 only, got {funnel_port:?}"),
                )
            })?;
        let tailscale_timeout = seconds(src, "FERRY_TAILSCALE_TIMEOUT_SECONDS", 15, 1)?;
        let funnel_mode = match src.get("FERRY_FUNNEL_MODE").unwrap_or("path") {
            "path" => FunnelMode::Path,
            "tcp" => FunnelMode::Tcp,
            other => return Err(err("FERRY_FUNNEL_MODE", format!("expected path or tcp, got {other:?}"))),
        };
        Ok(Tunnel {
            provider,
            tailscale_bin,
            tailscale_socket,
            tailscale_container,
            funnel_port,
            tailscale_timeout,
            funnel_mode,
        })
    }
}

/// Which nginx serves the bytes, and whose `X-Forwarded-For` it believes.
struct Nginx {
    nginx_mode: NginxMode,
    nginx_bin: Option<PathBuf>,
    trusted_proxies: Vec<String>,
}

impl Nginx {
    fn load(src: &Source, provider: ProviderKind) -> Result<Self, ConfigError> {
        let nginx_mode = match src.get("FERRY_NGINX").unwrap_or("managed") {
            "managed" => NginxMode::Managed,
            "external" => NginxMode::External,
            other => {
                return Err(err(
                    "FERRY_NGINX",
                    format!("expected managed or external, got {other:?}"),
                ));
            }
        };
        let nginx_bin = src.get("FERRY_NGINX_BIN").map(PathBuf::from);
        // Behind a tunnel, the tunnel's own address (the sidecar on this host) is believed by
        // default. With the `local` provider, no address is believed.
        let trusted_proxies = match src.get("FERRY_TRUSTED_PROXIES") {
            Some(v) => list(Some(v)),
            None if provider == ProviderKind::Local => vec![],
            None => vec!["127.0.0.1".into(), "::1".into()],
        };
        for p in &trusted_proxies {
            if !valid_cidr(p) {
                return Err(err(
                    "FERRY_TRUSTED_PROXIES",
                    format!("{p:?} is not an IP address or CIDR"),
                ));
            }
        }
        Ok(Nginx {
            nginx_mode,
            nginx_bin,
            trusted_proxies,
        })
    }
}

/// The admin API's token: required when the admin listener is reachable from the network.
fn admin_token(src: &Source, admin_addr: SocketAddr) -> Result<Option<Secret>, ConfigError> {
    let admin_token = src.get("FERRY_ADMIN_TOKEN").map(Secret::new);
    if admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        return Err(err("FERRY_ADMIN_TOKEN", "must be at least 16 characters"));
    }
    if admin_token.is_none() && !admin_addr.ip().is_loopback() {
        return Err(err(
            "FERRY_ADMIN_TOKEN",
            format!("required when FERRY_ADMIN_ADDR ({admin_addr}) is not a loopback address"),
        ));
    }
    Ok(admin_token)
}

/// What ferry records: how long link history is kept, its own log filter, and how long one
/// access-log file covers.
struct Logging {
    history_days: u32,
    log_filter: String,
    log_slot: LogSlot,
}

impl Logging {
    fn load(src: &Source) -> Result<Self, ConfigError> {
        let history_days = number(src, "FERRY_HISTORY_DAYS", 90)?;
        let history_days = u32::try_from(history_days).map_err(|_| err("FERRY_HISTORY_DAYS", "too large"))?;
        let log_filter = src.get("FERRY_LOG").unwrap_or("info").to_string();
        if log_filter.parse::<tracing_subscriber::filter::Targets>().is_err() {
            return Err(err("FERRY_LOG", format!("not a valid filter: {log_filter:?}")));
        }
        let log_slot = match src.get("FERRY_LOG_SLOT") {
            None => LogSlot::Hundred,
            Some(v) => LogSlot::parse(v).ok_or_else(|| {
                err(
                    "FERRY_LOG_SLOT",
                    format!("expected 0.1s, 1s, 10s, 100s or 1000s, got {v:?}"),
                )
            })?,
        };
        Ok(Logging {
            history_days,
            log_filter,
            log_slot,
        })
    }
}

/// How hard ferry pushes back on one client: bans for bad tokens, connection and request limits.
struct Abuse {
    ban_after_fails: u32,
    ban: Duration,
    conn_per_client: u32,
    req_per_client: u32,
}

impl Abuse {
    fn load(src: &Source) -> Result<Self, ConfigError> {
        let ban_after_fails = u32::try_from(number(src, "FERRY_BAN_AFTER_FAILS", 10)?)
            .map_err(|_| err("FERRY_BAN_AFTER_FAILS", "too large"))?;
        let ban = seconds(src, "FERRY_BAN_SECONDS", 900, 1)?;
        let conn_per_client = u32::try_from(number(src, "FERRY_CONN_PER_CLIENT", 64)?)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| err("FERRY_CONN_PER_CLIENT", "must be between 1 and 4294967295"))?;
        let req_per_client = u32::try_from(number(src, "FERRY_REQ_PER_CLIENT", 200)?)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                err(
                    "FERRY_REQ_PER_CLIENT",
                    "must be a whole number of requests per second, at least 1",
                )
            })?;
        Ok(Abuse {
            ban_after_fails,
            ban,
            conn_per_client,
            req_per_client,
        })
    }
}

fn webhook_url(src: &Source) -> Result<Option<Secret>, ConfigError> {
    match src.get("FERRY_WEBHOOK_URL") {
        None => Ok(None),
        Some(_) => Ok(Some(Secret::new(url(src, "FERRY_WEBHOOK_URL", "")?))),
    }
}

/// `None` (unset or `auto`): the format is detected from the webhook's URL.
fn webhook_format(src: &Source) -> Result<Option<WebhookFormat>, ConfigError> {
    match src.get("FERRY_WEBHOOK_FORMAT") {
        None | Some("auto") => Ok(None),
        Some("json") => Ok(Some(WebhookFormat::Json)),
        Some("ntfy") => Ok(Some(WebhookFormat::Ntfy)),
        Some(v) => Err(err(
            "FERRY_WEBHOOK_FORMAT",
            format!("expected auto, json or ntfy, got {v:?}"),
        )),
    }
}

fn list(v: Option<&str>) -> Vec<String> {
    v.map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

fn url(src: &Source, var: &'static str, default: &str) -> Result<String, ConfigError> {
    let v = src.get(var).unwrap_or(default).trim_end_matches('/');
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| err(var, format!("expected an http:// or https:// URL, got {v:?}")))?;
    if rest.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(err(var, format!("expected a URL with a host and no query, got {v:?}")));
    }
    Ok(v.to_string())
}

fn valid_cidr(s: &str) -> bool {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (s, None),
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.is_none_or(|b| b.parse::<u8>().is_ok_and(|b| b <= max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(env: &[(&str, &str)], file: &[(&str, &str)]) -> Source {
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Source {
            env: map(env),
            file: map(file),
        }
    }

    #[test]
    fn the_environment_wins_and_an_empty_variable_leaves_the_files_value() {
        let file = [("JWT_SECRET", "from-the-file")];
        assert_eq!(
            source(&[("JWT_SECRET", "")], &file).get("JWT_SECRET"),
            Some("from-the-file")
        );
        assert_eq!(source(&[("JWT_SECRET", "env")], &file).get("JWT_SECRET"), Some("env"));
        assert_eq!(source(&[("JWT_SECRET", "")], &[]).get("JWT_SECRET"), None);
        assert_eq!(source(&[], &[("JWT_SECRET", "")]).get("JWT_SECRET"), None);
    }
}
