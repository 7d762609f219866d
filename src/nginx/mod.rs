//! nginx, ferry's data plane: the config rendered from the template in `nginx/`, and (in managed
//! mode) the nginx child process, supervised and stopped with ferry. nginx's error log reaches
//! ferry on nginx's stderr in managed mode, and as syslog datagrams on a Unix socket in the state
//! dir in external mode. ferry reads it as bytes (nginx writes request lines raw, so a line need
//! not be UTF-8), passes each line to the access-log write watch, and redacts the line before it
//! is recorded. Creating or closing a link never touches nginx.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::monitor::logwrites::LogWrites;

pub const TEMPLATE: &str = include_str!("../../nginx/nginx.conf");
pub const PREVIEWERS: &str = include_str!("../../nginx/previewers.txt");

/// The previewer tokens as one nginx regex alternation (each token escaped).
pub fn previewer_regex(list: &str) -> String {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|t| {
            t.chars()
                .flat_map(|c| {
                    if c.is_ascii_alphanumeric() {
                        vec![c]
                    } else {
                        vec!['\\', c]
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Finds the nginx binary: `FERRY_NGINX_BIN`, else `PATH`, else `/usr/sbin/nginx`.
pub fn find_bin(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &config.nginx_bin {
        anyhow::ensure!(bin.is_file(), "FERRY_NGINX_BIN: {} does not exist", bin.display());
        return Ok(bin.clone());
    }
    crate::programs::find_program("nginx")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "FERRY_NGINX_BIN: nginx was not found on PATH or at /usr/sbin/nginx; install it or set FERRY_NGINX_BIN"
            )
        })
}

pub fn check_socket(config: &Config) -> PathBuf {
    config.state_dir.join("check.sock")
}

/// Where nginx fetches the bytes of ZIP links from ferry.
pub fn zip_socket(config: &Config) -> PathBuf {
    config.state_dir.join("zip.sock")
}

/// Where nginx passes what senders send to upload links.
pub fn upload_socket(config: &Config) -> PathBuf {
    config.state_dir.join("upload.sock")
}

pub fn prefix(config: &Config) -> PathBuf {
    config.state_dir.join("nginx")
}

/// Where nginx in another container sends its error log (external mode).
pub fn error_log_socket(config: &Config) -> PathBuf {
    config.state_dir.join("nginx-log.sock")
}

/// The `error_log` directives for this mode.
fn error_log(config: &Config) -> String {
    match config.nginx_mode {
        crate::config::NginxMode::Managed => "error_log stderr warn;".to_string(),
        // When a config's only error log is syslog, nginx also keeps its default error log (the
        // container's stderr, at level error, with tokens in clear text). A second log on stderr
        // that takes only emergencies (startup failures, never a request) replaces that default.
        crate::config::NginxMode::External => format!(
            "error_log syslog:server=unix:{},nohostname,tag=nginx warn;\nerror_log stderr emerg;",
            error_log_socket(config).display()
        ),
    }
}

/// Renders the template for this configuration.
pub fn render(template: &str, config: &Config) -> String {
    let user = if rustix::process::geteuid().is_root() {
        // Workers run as ferry's own user, who can read the NAS; nginx would otherwise drop them
        // to `nobody`.
        "user root root;".to_string()
    } else {
        String::new()
    };
    let realip = if config.trusted_proxies.is_empty() {
        String::new()
    } else {
        let mut s: String = config
            .trusted_proxies
            .iter()
            .map(|p| format!("        set_real_ip_from {p};\n"))
            .collect();
        // Behind a Funnel TCP forward, the real client's address arrives in the PROXY protocol
        // header. Otherwise it arrives in the proxy's X-Forwarded-For.
        let header = if tcp_funnel(config) {
            "proxy_protocol"
        } else {
            "X-Forwarded-For"
        };
        s.push_str(&format!(
            "        real_ip_header {header};\n        real_ip_recursive off;\n"
        ));
        s
    };
    let listen_options = if tcp_funnel(config) { " proxy_protocol" } else { "" };
    template
        .replace("{{user}}", &user)
        .replace("{{error_log}}", &error_log(config))
        .replace("{{prefix}}", &prefix(config).display().to_string())
        .replace("{{check_socket}}", &check_socket(config).display().to_string())
        .replace("{{zip_socket}}", &zip_socket(config).display().to_string())
        .replace("{{upload_socket}}", &upload_socket(config).display().to_string())
        .replace(
            "{{zip_read_timeout}}",
            &config.stall_timeout.as_secs().max(60).to_string(),
        )
        .replace("{{public_addr}}", &config.public_addr.to_string())
        .replace("{{tunnels}}", &config.tunnels_dir.display().to_string())
        .replace("{{logs}}", &config.logs_dir.display().to_string())
        .replace("{{realip}}", &realip)
        .replace("{{listen_options}}", listen_options)
        .replace("{{log_slot_regex}}", config.log_slot.nginx_regex())
        .replace("{{previewers}}", &previewer_regex(PREVIEWERS))
        .replace("{{conn_per_client}}", &config.conn_per_client.to_string())
        .replace(
            "{{conn_per_link}}",
            &(config.conn_per_client.saturating_mul(2)).to_string(),
        )
        .replace("{{req_per_client}}", &config.req_per_client.to_string())
        .replace(
            "{{req_per_link}}",
            &(config.req_per_client.saturating_mul(2)).to_string(),
        )
        .replace("{{req_burst}}", &(config.req_per_client.saturating_mul(4)).to_string())
}

/// Whether the public listener sits behind a Funnel TCP forward that speaks PROXY protocol.
fn tcp_funnel(config: &Config) -> bool {
    config.provider.uses_funnel() && config.funnel_mode == crate::config::FunnelMode::Tcp
}

/// Hides link tokens in a line nginx wrote (its error log quotes whole request lines).
pub fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("t=") {
        let boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b' ' | b'"');
        out.push_str(&rest[..i + 2]);
        rest = &rest[i + 2..];
        if boundary {
            let end = rest.find(['&', ' ', '"', ',']).unwrap_or(rest.len());
            out.push_str("[redacted]");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    // Also hide a JWT anywhere else in the line, such as in a header or a referrer.
    while let Some(i) = out.find("eyJ") {
        let end = out[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .map_or(out.len(), |e| i + e);
        out.replace_range(i..end, "[redacted]");
    }
    out
}

/// The longest error-log line that ferry reads in one piece. nginx's own lines are under 4 KB, and
/// a longer line is read in pieces instead of being held whole.
const MAX_ERROR_LINE: u64 = 16 << 10;

/// Where failed access-log writes are reported: the watch, and the logs dir it concerns.
pub type WriteWatch = (Arc<LogWrites>, PathBuf);

/// Handles one line of nginx's error log as nginx wrote it. The line is converted lossily (request
/// lines carry raw bytes), passed to the access-log write watch, and recorded with its tokens
/// redacted. Returns what was recorded.
pub fn error_line(raw: &[u8], writes: Option<&WriteWatch>) -> String {
    let text = String::from_utf8_lossy(raw);
    let line = text.trim_end_matches(['\r', '\n']);
    if let Some((writes, dir)) = writes {
        writes.error_line(line, dir, crate::model::now_ms());
    }
    let redacted = redact(line);
    tracing::warn!(target: "ferry::nginx", "{redacted}");
    redacted
}

/// Reads nginx's stderr line by line until it closes; a line that is not UTF-8 is read like any
/// other.
async fn read_stderr(stderr: impl tokio::io::AsyncRead + Unpin, writes: Option<WriteWatch>) {
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_ERROR_LINE).read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => {
                error_line(&line, writes.as_ref());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read nginx's error log");
                return;
            }
        }
    }
}

/// The message of one syslog datagram from nginx (`<PRI>Mmm dd hh:mm:ss nginx: message`): the
/// text after the tag. A datagram without that header is taken whole.
fn syslog_message(datagram: &[u8]) -> &[u8] {
    let header_ends = datagram
        .strip_prefix(b"<")
        .and_then(|rest| rest.iter().position(|&b| b == b'>'))
        .filter(|&i| i <= 3);
    let Some(pri_end) = header_ends else {
        return datagram;
    };
    let after = &datagram[pri_end + 2..];
    // The timestamp's colons are followed by digits; the first ": " ends the tag.
    match after.windows(2).position(|w| w == b": ") {
        Some(i) => &after[i + 2..],
        None => after,
    }
}

/// External mode: nginx runs in another container, and its error log comes as syslog datagrams
/// on a Unix socket in the state dir (mounted at the same path in both containers). The socket is
/// bound before the config that names it is written, so nginx finds it from its first line.
pub struct ErrorLogSocket {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl ErrorLogSocket {
    pub fn bind(config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        use std::os::unix::fs::PermissionsExt;
        let path = error_log_socket(config);
        let _ = std::fs::remove_file(&path);
        let socket =
            tokio::net::UnixDatagram::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
        // Like the check socket, this socket is open to nginx's user and no one else.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
        Ok(ErrorLogSocket { socket, path })
    }

    /// Records every datagram (see [`error_line`]) until `cancel`, then removes the socket.
    pub async fn serve(self, writes: Option<WriteWatch>, cancel: CancellationToken) {
        // nginx's syslog messages are at most about 2 KB. A longer datagram is cut short, not
        // lost.
        let mut buf = vec![0u8; 8 << 10];
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.socket.recv(&mut buf) => match r {
                    Ok(n) => {
                        error_line(syslog_message(&buf[..n]), writes.as_ref());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read nginx's error log socket");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// External mode (compose): nginx runs in its own container and reads the config ferry renders
/// into the shared state dir (`<state>/nginx/nginx.conf`); the paths in it are the same in both.
pub async fn write_external(config: &Config) -> anyhow::Result<PathBuf> {
    write_conf(&prefix(config), config).await
}

/// Renders the config into `<prefix>/nginx.conf`, with the dirs nginx needs beside it. The file is
/// replaced whole or not at all, so an nginx that reads it meanwhile sees the old config.
async fn write_conf(prefix: &Path, config: &Config) -> anyhow::Result<PathBuf> {
    for d in ["tmp", "logs", "html"] {
        tokio::fs::create_dir_all(prefix.join(d)).await?;
    }
    let conf = prefix.join("nginx.conf");
    let tmp = prefix.join("nginx.conf.tmp");
    tokio::fs::write(&tmp, render(TEMPLATE, config)).await?;
    tokio::fs::rename(&tmp, &conf).await?;
    Ok(conf)
}

pub struct Managed {
    bin: PathBuf,
    prefix: PathBuf,
    conf: PathBuf,
    pub running: Arc<AtomicBool>,
    /// Where to report that nginx failed to write to the access log in this dir.
    log_writes: Option<WriteWatch>,
}

impl Managed {
    /// Writes the config, checks it with `nginx -t`, and stops a stale nginx left by a killed
    /// ferry (found through the pid file), so that two never run at once.
    pub async fn prepare(config: &Config) -> anyhow::Result<Self> {
        let bin = find_bin(config)?;
        let prefix = prefix(config);
        let conf = write_conf(&prefix, config).await?;
        let m = Managed {
            bin,
            prefix,
            conf,
            running: Arc::new(AtomicBool::new(false)),
            log_writes: None,
        };
        m.stop_stale().await;
        let out = m.command().arg("-t").output().await?;
        anyhow::ensure!(
            out.status.success(),
            "nginx rejected its configuration: {}",
            redact(&String::from_utf8_lossy(&out.stderr))
        );
        Ok(m)
    }

    /// Reports nginx's failed writes to access logs in `logs_dir` to `writes`.
    pub fn watch_log_writes(mut self, writes: Arc<LogWrites>, logs_dir: PathBuf) -> Self {
        self.log_writes = Some((writes, logs_dir));
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg("stderr");
        c
    }

    fn pid_file(&self) -> PathBuf {
        self.prefix.join("nginx.pid")
    }

    async fn stop_stale(&self) {
        let Ok(text) = tokio::fs::read_to_string(self.pid_file()).await else {
            return;
        };
        let Some(pid) = text.trim().parse::<i32>().ok().and_then(rustix::process::Pid::from_raw) else {
            return;
        };
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.conf.to_string_lossy());
        if !ours {
            return;
        }
        tracing::warn!(
            pid = pid.as_raw_nonzero().get(),
            "stopping a stale nginx left by an earlier ferry"
        );
        // A fast shutdown is enough, because the stale nginx serves nothing that ferry still
        // answers for.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        for i in 0..100 {
            if !Path::new(&format!("/proc/{}", pid.as_raw_nonzero())).exists() {
                return;
            }
            if i == 50 {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(read_stderr(stderr, self.log_writes.clone()));
        }
        Ok(child)
    }

    /// Runs nginx until `cancel`, restarting it whenever it dies.
    pub async fn supervise(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut child = match self.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start nginx");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // nginx writes its pid file once its listeners are bound, and only then is it up.
            let pid = child.id().unwrap_or(0).to_string();
            for _ in 0..200 {
                let written = tokio::fs::read_to_string(self.pid_file()).await.unwrap_or_default();
                if written.trim() == pid || child.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.running.store(true, Ordering::SeqCst);
            tokio::select! {
                status = child.wait() => {
                    self.running.store(false, Ordering::SeqCst);
                    tracing::error!(?status, "nginx exited; restarting");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                _ = cancel.cancelled() => {
                    if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
                    }
                    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    self.running.store(false, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previewer_tokens_become_one_escaped_alternation() {
        assert_eq!(
            previewer_regex("# c\nSlackbot-LinkExpanding\n\nDiscordbot\n"),
            "Slackbot\\-LinkExpanding|Discordbot"
        );
        assert!(previewer_regex(PREVIEWERS).contains("facebookexternalhit"));
    }

    #[test]
    fn behind_funnel_the_real_client_comes_from_the_tunnel_only() {
        let dir = std::env::temp_dir();
        let load = |pairs: &[(&str, &str)]| {
            let mut all = vec![("NAS_MOUNT_PATH", dir.to_str().unwrap())];
            all.extend_from_slice(pairs);
            Config::load(&crate::config::Source::from_pairs(all)).unwrap()
        };
        let local = render(TEMPLATE, &load(&[]));
        assert!(!local.contains("real_ip_header") && !local.contains("proxy_protocol"));
        let path = render(TEMPLATE, &load(&[("FERRY_PROVIDER", "tailscale")]));
        assert!(path.contains("set_real_ip_from 127.0.0.1;") && path.contains("real_ip_header X-Forwarded-For;"));
        assert!(!path.contains("proxy_protocol"));
        let tcp = render(
            TEMPLATE,
            &load(&[("FERRY_PROVIDER", "docker"), ("FERRY_FUNNEL_MODE", "tcp")]),
        );
        assert!(tcp.contains("listen 127.0.0.1:8080 proxy_protocol;"), "{tcp}");
        assert!(tcp.contains("real_ip_header proxy_protocol;"));
    }

    fn config(pairs: &[(&str, &str)]) -> Config {
        let dir = std::env::temp_dir();
        let mut all = vec![("NAS_MOUNT_PATH", dir.to_str().unwrap())];
        all.extend_from_slice(pairs);
        Config::load(&crate::config::Source::from_pairs(all)).unwrap()
    }

    #[test]
    fn the_error_log_goes_to_stderr_managed_and_to_the_socket_external() {
        let managed = render(TEMPLATE, &config(&[("FERRY_STATE_DIR", "/srv/ferry/state")]));
        assert!(managed.contains("\nerror_log stderr warn;\n"), "{managed}");
        assert!(!managed.contains("syslog"));
        let external = render(
            TEMPLATE,
            &config(&[("FERRY_STATE_DIR", "/srv/ferry/state"), ("FERRY_NGINX", "external")]),
        );
        assert!(
            external.contains(
                "\nerror_log syslog:server=unix:/srv/ferry/state/nginx-log.sock,nohostname,tag=nginx warn;\n"
            ),
            "{external}"
        );
        // Nothing but emergencies stays on the other container's stderr.
        assert!(external.contains("\nerror_log stderr emerg;\n"));
        assert!(!external.contains("error_log stderr warn"));
    }

    #[test]
    fn syslog_datagrams_lose_their_header_only() {
        let d = b"<187>Dec  5 22:04:56 nginx: 2026/12/05 22:04:56 [error] 1#1: *2 limiting requests";
        assert_eq!(
            syslog_message(d),
            b"2026/12/05 22:04:56 [error] 1#1: *2 limiting requests"
        );
        assert_eq!(syslog_message(b"no header: here"), b"no header: here");
        assert_eq!(syslog_message(b"<1>"), b"");
        assert_eq!(syslog_message(b"<12345>x: y"), b"<12345>x: y");
    }

    #[test]
    fn lines_that_are_not_utf8_are_recorded_redacted_and_watched() {
        let writes: WriteWatch = (Arc::new(LogWrites::default()), PathBuf::from("/srv/ferry/logs"));
        let got = error_line(
            b"[error] 1#1: *2 limiting requests, request: \"GET /s/abc/f?t=eyJh.eyJ0.sig&x=\xff\xfe HTTP/1.1\"\n",
            Some(&writes),
        );
        assert!(got.contains("t=[redacted]&x=\u{FFFD}\u{FFFD} HTTP/1.1"), "{got}");
        assert!(!got.contains("eyJ") && !got.ends_with('\n'), "{got}");
        assert!(!writes.0.failing());
        error_line(
            b"[alert] 1#1: *3 write() to \"/srv/ferry/logs/access-1.log\" failed (28: No space left on device) \
              while logging request, request: \"GET /s/\xc3\x28 HTTP/1.1\"",
            Some(&writes),
        );
        assert!(writes.0.failing(), "a failed write is seen in a line that is not UTF-8");
    }

    #[tokio::test]
    async fn stderr_is_read_past_lines_that_are_not_utf8() {
        let writes: WriteWatch = (Arc::new(LogWrites::default()), PathBuf::from("/srv/ferry/logs"));
        let stderr: &[u8] = b"[error] request: \"GET /\xff\xfe HTTP/1.1\"\n\
            [alert] write() to \"/srv/ferry/logs/access-1.log\" failed (28)\n";
        read_stderr(stderr, Some(writes.clone())).await;
        assert!(writes.0.failing(), "the line after the one that is not UTF-8 was read");
    }

    #[tokio::test]
    async fn the_error_log_socket_records_what_nginx_sends() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().display().to_string();
        let config = config(&[("FERRY_STATE_DIR", &state), ("FERRY_NGINX", "external")]);
        let sock = ErrorLogSocket::bind(&config).unwrap();
        let writes: WriteWatch = (Arc::new(LogWrites::default()), PathBuf::from("/srv/ferry/logs"));
        let cancel = CancellationToken::new();
        let served = tokio::spawn(sock.serve(Some(writes.clone()), cancel.clone()));
        let nginx = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let path = error_log_socket(&config);
        nginx
            .send_to(
                b"<187>Dec  5 22:04:56 nginx: [error] request: \"GET /?t=x\xff HTTP/1.1\"",
                &path,
            )
            .unwrap();
        nginx
            .send_to(
                b"<185>Dec  5 22:04:57 nginx: [alert] write() to \"/srv/ferry/logs/access-9.log\" failed (28)",
                &path,
            )
            .unwrap();
        for _ in 0..200 {
            if writes.0.failing() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(writes.0.failing(), "the failed write that came on the socket was seen");
        cancel.cancel();
        served.await.unwrap();
        assert!(!path.exists(), "the socket is removed when ferry stops");
    }

    #[test]
    fn redacts_tokens() {
        let line = r#"limiting requests, request: "GET /s/abc/f.iso?t=eyJhbGciOi.eyJ0aWQ.sig&x=1 HTTP/1.1", referrer: "https://h/?t=secret""#;
        let r = redact(line);
        assert!(!r.contains("eyJ"), "{r}");
        assert!(!r.contains("secret"), "{r}");
        assert!(r.contains("t=[redacted]&x=1"), "{r}");
        assert_eq!(redact("no secrets here: a=b"), "no secrets here: a=b");
        assert_eq!(redact("Bearer eyJabc.def.ghi rest"), "Bearer [redacted] rest");
    }
}
