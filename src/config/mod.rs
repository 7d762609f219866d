//! The one typed `Config`: read from the environment (and optionally `FERRY_CONFIG`, a TOML-like
//! `KEY = "value"` file), validated once at startup. Every error names the variable at fault.
//!
//! `values.rs` holds the types the values become, `env.rs` reads and checks them; this file makes
//! the runtime folders and the secret kept in the state dir, the redacted view for the owner, and
//! the warnings about risky values.
//!
//! Nothing here touches the network; the only file written is the generated `JWT_SECRET`.

use std::path::Path;
use std::time::Duration;

mod env;
mod values;

pub use env::Source;
pub use values::*;

impl Config {
    /// Creates the runtime folders and, when `JWT_SECRET` is unset, loads or generates the secret
    /// kept in the state dir (mode 0600).
    pub fn prepare_dirs(&mut self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for d in [&self.state_dir, &self.tunnels_dir, &self.logs_dir] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::set_permissions(&self.state_dir, std::fs::Permissions::from_mode(0o700))?;
        if !self.jwt_secret.expose().is_empty() {
            return Ok(());
        }
        let path = self.state_dir.join("jwt_secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 32 => {
                self.jwt_secret = Secret::new(s.trim());
                return Ok(());
            }
            Ok(_) => anyhow::bail!("JWT_SECRET: {} is shorter than 32 bytes", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("JWT_SECRET: cannot read {}: {e}", path.display()),
        }
        let secret = crate::model::random_token(48);
        write_durably(&path, secret.as_bytes(), 0o600)?;
        self.jwt_secret = Secret::new(secret);
        Ok(())
    }
}

/// Writes a small file that must survive a crash whole or not at all: a temp file, fsynced,
/// then renamed over `path`.
pub(crate) fn write_durably(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    std::io::Write::write_all(&mut f, contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Config {
    /// The effective configuration as the owner may see it: secrets only say whether they are set.
    pub fn redacted(&self) -> serde_json::Value {
        let set = |s: &Option<Secret>| if s.is_some() { "[set]" } else { "[unset]" };
        let mut all = serde_json::json!({
            "NAS_MOUNT_PATH": self.data_dir,
            "FERRY_STATE_DIR": self.state_dir,
            "FERRY_TUNNELS_DIR": self.tunnels_dir,
            "FERRY_LOGS_DIR": self.logs_dir,
            "FERRY_MCP_ROOT": if self.mcp_root.is_root() { self.data_dir.clone() } else { self.data_dir.join(self.mcp_root.as_str()) },
            "JWT_SECRET": "[set]",
            "MAX_TUNNEL_SECONDS": self.max_tunnel.as_secs(),
            "STALL_TIMEOUT_SECONDS": self.stall_timeout.as_secs(),
            "GRACE_PERIOD_SECONDS": self.grace_period.as_secs(),
            "RESUME_WINDOW_SECONDS": self.resume_window.as_secs(),
            "FERRY_PREVIEW_BYTES": self.preview_bytes,
            "FERRY_GRACE_BYTES": self.grace_bytes,
            "FERRY_REFETCH_BYTES": self.refetch_bytes,
            "FERRY_ZIP_MAX_FILES": self.zip_max_files,
            "FERRY_DEFAULT_EXPIRES_SECONDS": self.default_expires.as_secs(),
            "FERRY_DEFAULT_MAX_DOWNLOADS": self.default_max_downloads,
            "FERRY_MAX_DOWNLOADS_LIMIT": self.max_downloads_limit,
        });
        // Two objects, because one this large passes the macro's recursion limit.
        let rest = serde_json::json!({
            "REDIS_URL": set(&self.redis_url),
            "BASE_URL": self.base_url,
            "FERRY_ADMIN_ADDR": self.admin_addr.to_string(),
            "FERRY_ADMIN_HOSTS": self.admin_hosts,
            "FERRY_PUBLIC_ADDR": self.public_addr.to_string(),
            "FERRY_UPSTREAM_URL": self.upstream_url,
            "FERRY_PROVIDER": self.provider.name(),
            "FERRY_TAILSCALE_BIN": self.tailscale_bin,
            "FERRY_TAILSCALE_SOCKET": self.tailscale_socket,
            "FERRY_TAILSCALE_CONTAINER": self.tailscale_container,
            "FERRY_FUNNEL_PORT": self.funnel_port,
            "FERRY_FUNNEL_MODE": format!("{:?}", self.funnel_mode).to_lowercase(),
            "FERRY_TAILSCALE_TIMEOUT_SECONDS": self.tailscale_timeout.as_secs(),
            "FERRY_NGINX": format!("{:?}", self.nginx_mode).to_lowercase(),
            "FERRY_NGINX_BIN": self.nginx_bin,
            "FERRY_TRUSTED_PROXIES": self.trusted_proxies,
            "FERRY_ADMIN_TOKEN": set(&self.admin_token),
            "FERRY_BAN_AFTER_FAILS": self.ban_after_fails,
            "FERRY_BAN_SECONDS": self.ban.as_secs(),
            "FERRY_CONN_PER_CLIENT": self.conn_per_client,
            "FERRY_REQ_PER_CLIENT": self.req_per_client,
            "FERRY_WEBHOOK_URL": set(&self.webhook_url),
            "FERRY_HISTORY_DAYS": self.history_days,
            "FERRY_LOG": self.log_filter,
            "FERRY_LOG_SLOT": format!("{}s", self.log_slot.millis() as f64 / 1000.0),
            "FERRY_INSTANCE_TIMEOUT_SECONDS": self.instance_timeout.as_secs(),
        });
        if let (Some(all), serde_json::Value::Object(rest)) = (all.as_object_mut(), rest) {
            all.extend(rest);
        }
        all
    }

    /// Values that work but put something at risk, each as one sentence naming the variable.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.admin_addr.ip().is_loopback() {
            w.push(format!(
                "FERRY_ADMIN_ADDR: the admin listener ({}) is reachable from the network; keep FERRY_ADMIN_TOKEN long and secret",
                self.admin_addr
            ));
        }
        if self.admin_token.is_none() {
            w.push("FERRY_ADMIN_TOKEN: unset; anything on this machine can use the admin API".into());
        }
        if self.public_addr.ip().is_unspecified() && self.provider == ProviderKind::Local {
            w.push(
                "FERRY_PUBLIC_ADDR: listening on every interface with the local provider exposes links to the LAN"
                    .into(),
            );
        }
        if self.provider == ProviderKind::Docker {
            w.push(
                "FERRY_PROVIDER: docker uses the Docker socket, which is root on the host; put a socket proxy that allows only exec in front of it"
                    .into(),
            );
        }
        if self.max_tunnel > Duration::from_secs(7 * 86_400) {
            w.push("MAX_TUNNEL_SECONDS: links may stay public for more than a week".into());
        }
        if self.grace_period < Duration::from_secs(10) && self.provider != ProviderKind::Local {
            w.push(
                "GRACE_PERIOD_SECONDS: under 10 s, a recipient behind Funnel's buffering can lose the last bytes"
                    .into(),
            );
        }
        if self.stall_timeout < Duration::from_secs(30) {
            w.push("STALL_TIMEOUT_SECONDS: under 30 s, a slow network can close a download as stalled".into());
        }
        if self.trusted_proxies.iter().any(|p| p.ends_with("/0")) {
            w.push(
                "FERRY_TRUSTED_PROXIES: trusts X-Forwarded-For from everyone; client addresses can be forged".into(),
            );
        }
        if self.ban_after_fails == 0 {
            w.push("FERRY_BAN_AFTER_FAILS: 0 turns banning off; token guessing goes unpunished".into());
        }
        if self
            .redis_url
            .as_ref()
            .is_some_and(|u| u.expose().starts_with("redis://") && !is_local_url(u.expose()))
        {
            w.push("REDIS_URL: plain redis:// to another host; link state crosses the network unencrypted".into());
        }
        w
    }
}

fn is_local_url(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or("").rsplit('@').next().unwrap_or("");
    host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir();
        let d = dir.to_str().unwrap();
        let mut all = vec![("NAS_MOUNT_PATH", d)];
        all.extend_from_slice(pairs);
        Config::load(&Source::from_pairs(all))
    }

    #[test]
    fn defaults_are_valid() {
        let c = load(&[]).unwrap();
        assert_eq!(c.max_tunnel, Duration::from_secs(3600));
        assert_eq!(c.public_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.upstream_url, "http://127.0.0.1:8080");
        assert_eq!(c.provider, ProviderKind::Local);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&str, &str)] = &[
            ("MAX_TUNNEL_SECONDS", "soon"),
            ("MAX_TUNNEL_SECONDS", "0"),
            ("JWT_SECRET", "short"),
            ("FERRY_ADMIN_ADDR", "localhost"),
            ("FERRY_PUBLIC_ADDR", "1.2.3.4"),
            ("FERRY_PROVIDER", "ngrok"),
            ("FERRY_NGINX", "maybe"),
            ("BASE_URL", "ftp://x"),
            ("FERRY_TRUSTED_PROXIES", "10.0.0.0/99"),
            ("FERRY_LOG", "=="),
            ("STALL_TIMEOUT_SECONDS", "-1"),
            ("FERRY_LOG_SLOT", "5m"),
            ("FERRY_WEBHOOK_URL", "mailto:me"),
            ("FERRY_CONN_PER_CLIENT", "0"),
            ("FERRY_BAN_SECONDS", "0"),
            ("FERRY_FUNNEL_PORT", "8080"),
            ("FERRY_FUNNEL_MODE", "udp"),
            ("FERRY_TAILSCALE_SOCKET", "relative.sock"),
            ("REDIS_URL", "http://127.0.0.1:6379"),
            ("REDIS_URL", "redis://127.0.0.1:port"),
            ("FERRY_INSTANCE_TIMEOUT_SECONDS", "1"),
            ("FERRY_TAILSCALE_TIMEOUT_SECONDS", "0"),
        ];
        for (var, value) in cases {
            let e = load(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, *var, "{var}={value} blamed {e}");
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn the_mcp_root_is_a_folder_inside_the_data_dir() {
        let data = tempfile::tempdir().unwrap();
        let d = data.path();
        std::fs::create_dir_all(d.join("shared/agents")).unwrap();
        std::fs::write(d.join("file.txt"), b"x").unwrap();
        std::os::unix::fs::symlink(d.join("shared"), d.join("link")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let with = |root: &std::path::Path| {
            let (data, root) = (d.to_str().unwrap(), root.to_str().unwrap());
            Config::load(&Source::from_pairs([
                ("NAS_MOUNT_PATH", data),
                ("FERRY_MCP_ROOT", root),
            ]))
        };
        assert!(load(&[]).unwrap().mcp_root.is_root(), "the data dir by default");
        assert!(with(d).unwrap().mcp_root.is_root());
        assert_eq!(
            with(&d.join("shared/agents")).unwrap().mcp_root.as_str(),
            "shared/agents"
        );
        // A symlink on the way is resolved: the root is where an agent really lands.
        assert_eq!(with(&d.join("link/agents")).unwrap().mcp_root.as_str(), "shared/agents");
        for bad in [outside.path(), &d.join("file.txt"), &d.join("missing"), &d.join("..")] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.var, "FERRY_MCP_ROOT", "{bad:?}: {e}");
        }
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let e = load(&[("FERRY_ADMIN_ADDR", "0.0.0.0:8000")]).unwrap_err();
        assert_eq!(e.var, "FERRY_ADMIN_TOKEN");
        assert!(
            load(&[
                ("FERRY_ADMIN_ADDR", "0.0.0.0:8000"),
                ("FERRY_ADMIN_TOKEN", "0123456789abcdef0")
            ])
            .is_ok()
        );
    }

    #[test]
    fn log_slots_name_their_start() {
        assert_eq!(LogSlot::Tenth.start_ms("1700000000.4"), Some(1_700_000_000_400));
        assert_eq!(LogSlot::Second.start_ms("1700000000"), Some(1_700_000_000_000));
        assert_eq!(LogSlot::Hundred.start_ms("17000000"), Some(1_700_000_000_000));
        for bad in ["", "x", "1.2.3", "17000000.12", "-5"] {
            assert_eq!(LogSlot::Tenth.start_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_effective_config_hides_secrets_and_warns() {
        let c = load(&[
            ("FERRY_ADMIN_ADDR", "0.0.0.0:8000"),
            ("FERRY_ADMIN_TOKEN", "super-secret-admin-token"),
            ("JWT_SECRET", "an-extremely-secret-jwt-key-of-40-bytes!"),
            ("FERRY_TRUSTED_PROXIES", "0.0.0.0/0"),
        ])
        .unwrap();
        let text = c.redacted().to_string();
        assert!(
            !text.contains("super-secret") && !text.contains("extremely-secret"),
            "{text}"
        );
        assert!(text.contains("\"FERRY_ADMIN_TOKEN\":\"[set]\""));
        let w = c.warnings().join("\n");
        assert!(
            w.contains("FERRY_ADMIN_ADDR") && w.contains("FERRY_TRUSTED_PROXIES"),
            "{w}"
        );
        assert!(
            load(&[("FERRY_ADMIN_TOKEN", "0123456789abcdef")])
                .unwrap()
                .warnings()
                .len()
                <= 1
        );
    }

    #[test]
    fn ntfy_is_detected_by_host() {
        assert_eq!(WebhookFormat::detect("https://ntfy.sh/my-topic"), WebhookFormat::Ntfy);
        assert_eq!(
            WebhookFormat::detect("http://ntfy.home.lan:8080/t"),
            WebhookFormat::Ntfy
        );
        assert_eq!(
            WebhookFormat::detect("https://hooks.example/ntfy.sh"),
            WebhookFormat::Json
        );
        assert_eq!(WebhookFormat::detect("http://127.0.0.1:9/hook"), WebhookFormat::Json);
    }

    #[test]
    fn secrets_redact_themselves() {
        let s = Secret::new("hunter2hunter2hunter2hunter2hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
    }
}
