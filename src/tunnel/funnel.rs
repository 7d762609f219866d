//! The Funnel driver shared by the `tailscale` and `docker` providers. It runs the commands of
//! [`super::tailscale`] through a [`Runner`] one at a time, because the CLI's ETag check makes
//! concurrent writers fail. It retries the "Another client is changing the serve config" race with
//! backoff. It never trusts an exit status: after every change it reads `funnel status --json` and
//! checks the result.
//!
//! It keeps the placeholder handler while ferry runs, refuses a port where the owner serves other
//! things without Funnel, and puts the open links' handlers back when the sidecar lost them.
//! It never runs `reset`, and never runs `off` without `--set-path` (in tcp mode, it runs `off`
//! only for its own port).

use std::collections::BTreeSet;
use std::time::Duration;

use super::error::TunnelError;
use super::health::Health;
use super::runner::{Output, RunError, Runner};
use super::tailscale::{self as ts, Failure, ServeConfig};
use crate::config::FunnelMode;
use crate::model::TunnelId;

/// Attempts for one command when another writer keeps winning the ETag race.
const RACE_ATTEMPTS: u32 = 8;

pub struct Funnel {
    runner: Runner,
    mode: FunnelMode,
    port: u16,
    /// The public listener as the sidecar reaches it (`FERRY_UPSTREAM_URL`).
    upstream: String,
    timeout: Duration,
    /// Serializes every call, and holds what ferry knows about the node.
    state: tokio::sync::Mutex<State>,
    health: std::sync::Mutex<Health>,
    /// Why the last change was refused (Funnel not enabled, a permission, a setting). It is kept
    /// until a change succeeds, because a reconciliation that only reads must not report the
    /// provider as healthy.
    refusal: std::sync::Mutex<Option<String>>,
    dns_name: std::sync::Mutex<Option<String>>,
}

#[derive(Default)]
struct State {
    /// Whether the placeholder is in place and the port was found fit for ferry.
    ready: bool,
    /// Links ferry has opened and not closed.
    open: BTreeSet<TunnelId>,
    /// Links opened or closed since the last reconciliation began. The reconciliation read its
    /// list of open links before it could take the lock, so for these links `open` is more recent
    /// and wins.
    touched: BTreeSet<TunnelId>,
}

/// What one reconciliation did.
#[derive(Debug, Default, PartialEq)]
pub struct Reconciled {
    pub reasserted: Vec<TunnelId>,
    pub removed: Vec<String>,
}

impl Funnel {
    pub fn new(runner: Runner, mode: FunnelMode, port: u16, upstream: String, timeout: Duration) -> Self {
        Funnel {
            runner,
            mode,
            port,
            upstream,
            timeout,
            state: tokio::sync::Mutex::new(State::default()),
            health: std::sync::Mutex::new(Health::unknown()),
            refusal: std::sync::Mutex::new(None),
            dns_name: std::sync::Mutex::new(None),
        }
    }

    pub fn health(&self) -> Health {
        self.health.lock().expect("health mutex").clone()
    }

    fn set_health(&self, h: Health) {
        *self.health.lock().expect("health mutex") = h;
    }

    fn refusal(&self) -> Option<String> {
        self.refusal.lock().expect("refusal mutex").clone()
    }

    /// Records that a change went through and was seen in the serve config, so no refusal stands
    /// any more.
    fn accepted(&self) {
        *self.refusal.lock().expect("refusal mutex") = None;
    }

    /// Records a refusal only the owner can lift, and turns it into an error.
    fn refuse(&self, m: String, no_funnel: bool) -> TunnelError {
        self.set_health(Health::degraded(&m));
        *self.refusal.lock().expect("refusal mutex") = Some(m.clone());
        if no_funnel {
            TunnelError::NoFunnel(m)
        } else {
            TunnelError::Refused(m)
        }
    }

    /// `https://<node>[:port]`, once the node's name is known.
    pub fn public_base(&self) -> Option<String> {
        let dns = self.dns_name.lock().expect("dns mutex").clone()?;
        Some(ts::public_base(&dns, self.port))
    }

    fn target(&self, id: &TunnelId) -> String {
        format!("{}{}", self.upstream, ts::mount(id))
    }

    fn tcp_upstream(&self) -> Result<String, TunnelError> {
        ts::url_host_port(&self.upstream)
            .ok_or_else(|| TunnelError::Failed(format!("FERRY_UPSTREAM_URL: no host:port in {}", self.upstream)))
    }

    /// Runs one command, retries it when it loses the ETag race, and classifies failures.
    async fn cmd(&self, args: &[String]) -> Result<Output, Failed> {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=RACE_ATTEMPTS {
            let started = std::time::Instant::now();
            let out = self.runner.run(args, self.timeout).await;
            // This metric times one CLI call, while ferry_provider_call_seconds times a whole open
            // or close.
            let command = if args.iter().any(|a| a == "status") {
                "status"
            } else if args.last().is_some_and(|a| a == "off") {
                "off"
            } else {
                "set"
            };
            metrics::histogram!("ferry_tailscale_command_seconds", "command" => command)
                .record(started.elapsed().as_secs_f64());
            let out = out.map_err(Failed::Run)?;
            if out.code == 0 {
                return Ok(out);
            }
            match ts::classify(&out.stdout, &out.stderr, self.port) {
                Failure::Race if attempt < RACE_ATTEMPTS => {
                    tracing::debug!(attempt, "serve config changed under us; retrying");
                    // Jitter, so two writers that collided do not collide again in step.
                    let mut b = [0u8; 1];
                    getrandom::fill(&mut b).expect("the OS random source is available");
                    let jitter = Duration::from_millis(u64::from(b[0]) * 50 / 256);
                    tokio::time::sleep(delay + jitter).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                f => return Err(Failed::Cli(f)),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn serve_config(&self) -> Result<ServeConfig, TunnelError> {
        let out = self.cmd(&ts::serve_status_argv()).await.map_err(|f| self.fail(f))?;
        ts::parse_serve_config(&out.stdout).map_err(|e| self.fail(Failed::Parse(e.to_string())))
    }

    async fn node(&self) -> Result<ts::NodeStatus, TunnelError> {
        let out = self.cmd(&ts::status_argv()).await.map_err(|f| self.fail(f))?;
        let st = ts::parse_status(&out.stdout).map_err(|e| self.fail(Failed::Parse(e.to_string())))?;
        *self.dns_name.lock().expect("dns mutex") = Some(st.dns_name.clone());
        Ok(st)
    }

    /// Which of ferry's settings this node cannot serve: its tailscale may be too old for the mode
    /// or the upstream, or its funnel-ports attribute may not include the port.
    fn unfit(&self, st: &ts::NodeStatus) -> Option<String> {
        if let Some(m) = self.too_old(st) {
            return Some(m);
        }
        let ports = st.funnel_ports.as_deref()?;
        if !ts::funnel_port_allowed(ports, self.port) {
            return Some(format!(
                "FERRY_FUNNEL_PORT: the tailnet's funnel-ports node attribute allows {ports}, not {}",
                self.port
            ));
        }
        None
    }

    fn too_old(&self, st: &ts::NodeStatus) -> Option<String> {
        st.version.and_then(|v| ts::unsupported(v, self.mode, &self.upstream))
    }

    /// Runs before ferry serves, and refuses the settings that this node's tailscale can never
    /// serve because it is too old for the mode or the upstream. `Err` names the setting. A node
    /// that cannot be reached is no reason to stop, because the reconciliation keeps trying and
    /// checks again.
    pub async fn preflight(&self) -> Result<(), String> {
        match self.node().await {
            Ok(st) => self.too_old(&st).map_or(Ok(()), Err),
            Err(e) => {
                tracing::warn!(error = %e, "tailscale is not reachable yet");
                Ok(())
            }
        }
    }

    /// Records what a failure says about the provider's health, and turns it into an error.
    fn fail(&self, f: Failed) -> TunnelError {
        let (health, err) = match f {
            Failed::Cli(Failure::NoFunnel { enable_url, message }) => {
                let m = match enable_url {
                    Some(u) => format!("Funnel is not available on this node; enable it at {u} ({message})"),
                    None => format!(
                        "Funnel is not available on this node: {message} (a tailnet admin enables it: \
                         https://tailscale.com/kb/1223/funnel)"
                    ),
                };
                return self.refuse(m, true);
            }
            Failed::Cli(Failure::NoDaemon(m)) => {
                let m = format!("tailscaled is not reachable: {m}");
                (Health::down(&m), TunnelError::Failed(m))
            }
            Failed::Run(e @ RunError::Spawn { .. }) | Failed::Run(e @ RunError::Docker(_)) => {
                let m = e.to_string();
                (Health::down(&m), TunnelError::Failed(m))
            }
            Failed::Run(e @ RunError::Timeout { .. }) => {
                let m = e.to_string();
                (Health::degraded(&m), TunnelError::Failed(m))
            }
            Failed::Cli(Failure::Race) => {
                let m = "the serve config kept changing under ferry (another writer); gave up".to_string();
                (Health::degraded(&m), TunnelError::Failed(m))
            }
            Failed::Cli(Failure::NoHandler) => {
                let m = "handler does not exist".to_string();
                (Health::degraded(&m), TunnelError::Failed(m))
            }
            Failed::Cli(Failure::Refused { remedy, message }) => {
                return self.refuse(format!("{remedy} (tailscale said: {message})"), false);
            }
            Failed::Cli(Failure::Other(m)) => {
                let m = format!("tailscale failed: {m}");
                (Health::degraded(&m), TunnelError::Failed(m))
            }
            Failed::Parse(m) => (Health::degraded(&m), TunnelError::Failed(m)),
        };
        self.set_health(health);
        err
    }

    /// Prepares the node before the first link: learns the node's name, checks that the node and
    /// the port are fit for ferry, and puts the placeholder in place (in path mode). This is done
    /// again after the sidecar lost its config or a change was refused. `asked` is true when a
    /// link is being opened. Only then does a node without Funnel get a `tailscale funnel`
    /// command, whose output says how to enable Funnel. It is not run otherwise, because the CLI
    /// then waits for the owner, and an exec in the sidecar cannot be stopped.
    async fn ensure_ready(&self, st: &mut State, asked: bool) -> Result<(String, ServeConfig), TunnelError> {
        let host = self.fit_host(st, asked).await?;
        let mut sc = self.serve_config().await?;
        if st.ready && self.placeholder_ok(&host, &sc) && !sc.foreground_holds(self.port) {
            return Ok((host, sc));
        }
        // Something changed (first call, or the sidecar lost its config): check everything again.
        st.ready = false;
        if sc.foreground_holds(self.port) {
            return Err(self.refuse(
                format!("FERRY_FUNNEL_PORT: {}", ts::foreground_remedy(self.port)),
                false,
            ));
        }
        match self.mode {
            FunnelMode::Path => {
                let foreign = sc.foreign_mounts(&host, self.port);
                if !foreign.is_empty() && !sc.funnel_on(&host, self.port) {
                    let m = format!(
                        "FERRY_FUNNEL_PORT: port {} already serves {} to your tailnet without Funnel; ferry will not \
                         switch Funnel on and publish them. Choose another FERRY_FUNNEL_PORT (443, 8443 or 10000)",
                        self.port,
                        foreign.join(", ")
                    );
                    return Err(self.refuse(m, false));
                }
                if sc.tcp_forward(self.port).is_some() {
                    let m = format!(
                        "FERRY_FUNNEL_PORT: port {} is a TCP forward; path mode needs a web port",
                        self.port
                    );
                    return Err(self.refuse(m, false));
                }
                if !self.placeholder_ok(&host, &sc) {
                    let out = self
                        .cmd(&ts::open_path_argv(self.port, ts::PLACEHOLDER, ts::PLACEHOLDER_TARGET))
                        .await
                        .map_err(|f| self.fail(f))?;
                    sc = self.serve_config().await?;
                    if !self.placeholder_ok(&host, &sc) {
                        return Err(
                            self.not_applied(&out, "the placeholder handler /s/.ferry is not in the serve config")
                        );
                    }
                    self.accepted();
                }
            }
            FunnelMode::Tcp => {
                if sc.serves_web(self.port) {
                    let m = format!(
                        "FERRY_FUNNEL_PORT: port {} has web handlers; FERRY_FUNNEL_MODE=tcp needs a port without any",
                        self.port
                    );
                    return Err(self.refuse(m, false));
                }
            }
        }
        st.ready = true;
        if self.refusal().is_none() {
            self.set_health(Health::ok());
        }
        Ok((host, sc))
    }

    /// The node's DNS name: the one learned before while `st.ready`, or else asked of the node,
    /// which must then be fit for ferry (see [`Funnel::ensure_ready`] for `asked`).
    async fn fit_host(&self, st: &mut State, asked: bool) -> Result<String, TunnelError> {
        let known = self.dns_name.lock().expect("dns mutex").clone();
        if let Some(h) = known.filter(|_| st.ready) {
            return Ok(h);
        }
        st.ready = false;
        let node = self.node().await?;
        if let Some(m) = self.unfit(&node) {
            return Err(self.refuse(m, false));
        }
        if !node.can_funnel && !asked {
            let m = self.refusal().unwrap_or_else(|| {
                "Funnel is not enabled for this node (it lacks the funnel node attribute or HTTPS \
                 certificates; a tailnet admin enables them: https://tailscale.com/kb/1223/funnel)"
                    .into()
            });
            return Err(self.refuse(m, true));
        }
        Ok(node.dns_name)
    }

    fn placeholder_ok(&self, host: &str, sc: &ServeConfig) -> bool {
        match self.mode {
            FunnelMode::Path => {
                sc.funnel_on(host, self.port)
                    && sc
                        .handler(host, self.port, ts::PLACEHOLDER)
                        .is_some_and(|h| h.text == "ferry")
            }
            FunnelMode::Tcp => true,
        }
    }

    fn unverified(&self, what: &str) -> TunnelError {
        let m = format!("the command succeeded but {what}");
        self.set_health(Health::degraded(&m));
        TunnelError::Failed(m)
    }

    /// Builds the error for a command that exited 0 although the serve config shows it did
    /// nothing. What the command printed says why, when it can.
    fn not_applied(&self, out: &Output, what: &str) -> TunnelError {
        match ts::unapplied(&out.stdout) {
            Some(f) => self.fail(Failed::Cli(f)),
            None => self.unverified(what),
        }
    }

    /// Makes one link public and checks it is.
    pub async fn open(&self, id: &TunnelId) -> Result<(), TunnelError> {
        let mut st = self.state.lock().await;
        let known = self.dns_name.lock().expect("dns mutex").clone();
        let (host, sc) = match known {
            // In the usual case this takes one command and one check. Keeping the placeholder
            // is the reconciliation's job.
            Some(host) if st.ready => (host, ServeConfig::default()),
            _ => self.ensure_ready(&mut st, true).await?,
        };
        st.touched.insert(id.clone());
        self.open_one(&host, &sc, id).await?;
        st.open.insert(id.clone());
        self.set_health(Health::ok());
        Ok(())
    }

    async fn open_one(&self, host: &str, sc: &ServeConfig, id: &TunnelId) -> Result<(), TunnelError> {
        match self.mode {
            FunnelMode::Path => {
                let (mount, target) = (ts::mount(id), self.target(id));
                if sc.serves(host, self.port, &mount, &target) {
                    return Ok(());
                }
                let out = self
                    .cmd(&ts::open_path_argv(self.port, &mount, &target))
                    .await
                    .map_err(|f| self.fail(f))?;
                let sc = self.serve_config().await?;
                if !sc.serves(host, self.port, &mount, &target) {
                    return Err(self.not_applied(&out, &format!("{mount} is not served publicly")));
                }
                self.accepted();
            }
            FunnelMode::Tcp => {
                let up = self.tcp_upstream()?;
                if sc.forwards(self.port, &up) && sc.funnel_on(host, self.port) {
                    return Ok(());
                }
                let out = self
                    .cmd(&ts::open_tcp_argv(self.port, &up))
                    .await
                    .map_err(|f| self.fail(f))?;
                let sc = self.serve_config().await?;
                if !sc.forwards(self.port, &up) || !sc.funnel_on(host, self.port) {
                    return Err(
                        self.not_applied(&out, &format!("port {} does not forward to {up} publicly", self.port))
                    );
                }
                self.accepted();
            }
        }
        Ok(())
    }

    /// Removes one link's public path; a handler that is not there counts as closed.
    pub async fn close(&self, id: &TunnelId) -> Result<(), TunnelError> {
        let mut st = self.state.lock().await;
        st.touched.insert(id.clone());
        let was_open = st.open.remove(id);
        let r = match self.mode {
            FunnelMode::Path => self.close_mount(&ts::mount(id)).await,
            FunnelMode::Tcp if st.open.is_empty() => self.close_tcp().await,
            FunnelMode::Tcp => Ok(()),
        };
        match r {
            // This process never opened the link (its open failed, or the sidecar has been
            // unreachable since startup), and the sidecar cannot be reached now, so there is
            // nothing to wait for here. If the link has a handler, the reconciliation removes it
            // once the sidecar answers (the link is not open in the store), and nginx's gate
            // refuses the link meanwhile.
            Err(e) if !was_open && self.health().status == crate::health::Health::Down => {
                tracing::debug!(tunnel_id = %id, error = %e, "sidecar unreachable; the reconciliation will remove any handler");
                Ok(())
            }
            Err(e) => {
                if was_open {
                    // The link is still public, and a retry must know that ferry opened it.
                    st.open.insert(id.clone());
                }
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// `tailscale funnel ... off` removes the handler. But `funnel` first checks that the node may
    /// use Funnel, and it may fail at that check, or stop there with success without having changed
    /// anything. In that case `tailscale serve ... off`, which makes no such check, removes the
    /// same handler.
    async fn close_mount(&self, mount: &str) -> Result<(), TunnelError> {
        let known = self.dns_name.lock().expect("dns mutex").clone();
        let host = match known {
            Some(h) => h,
            None => self.node().await?.dns_name,
        };
        for sub in ["funnel", "serve"] {
            let mut argv = ts::close_path_argv(self.port, mount);
            argv[0] = sub.into();
            match self.cmd(&argv).await {
                Ok(_) | Err(Failed::Cli(Failure::NoHandler)) => {}
                Err(Failed::Cli(f)) if sub == "funnel" && f.is_funnel_check() => continue,
                Err(f) => return Err(self.fail(f)),
            }
            let sc = self.serve_config().await?;
            if sc.handler(&host, self.port, mount).is_none() {
                return Ok(());
            }
        }
        Err(self.unverified(&format!("{mount} is still in the serve config")))
    }

    async fn close_tcp(&self) -> Result<(), TunnelError> {
        let sc = self.serve_config().await?;
        if sc.tcp_forward(self.port).is_none() {
            return Ok(());
        }
        match self.cmd(&ts::close_tcp_argv(self.port)).await {
            Ok(_) => {}
            Err(Failed::Cli(Failure::Other(m))) if m.contains("serve config does not exist") => {}
            Err(f) => return Err(self.fail(f)),
        }
        let sc = self.serve_config().await?;
        if sc.tcp_forward(self.port).is_some() {
            return Err(self.unverified(&format!("port {} still forwards", self.port)));
        }
        Ok(())
    }

    /// Brings the node's serve config into agreement with the open links: handlers (or the TCP
    /// forward) that went missing (a sidecar restart can lose them) are put back, ferry's handlers
    /// for links that are not open are removed, and the placeholder is kept.
    pub async fn reconcile(&self, open: &[TunnelId]) -> Result<Reconciled, TunnelError> {
        let mut st = self.state.lock().await;
        let refused = self.refusal().is_some();
        if refused {
            // Check the node and the port again from the start: the owner may have fixed them.
            st.ready = false;
        }
        let (host, sc) = self.ensure_ready(&mut st, false).await?;
        let mut done = Reconciled::default();
        let touched = std::mem::take(&mut st.touched);
        let mut now_open: BTreeSet<TunnelId> = open.iter().filter(|id| !touched.contains(*id)).cloned().collect();
        now_open.extend(st.open.iter().filter(|id| touched.contains(*id)).cloned());
        st.open = now_open.clone();
        // Removals come first, and one failure does not stop the rest: a handler of a link that
        // is not open must go even when putting another back fails.
        let mut failed = None;
        match self.mode {
            FunnelMode::Path => {
                if refused && self.refusal().is_some() {
                    // Only a change shows whether changes are allowed again, and this one changes
                    // nothing that is already there. The node can use Funnel, because
                    // `ensure_ready` made sure of that, so the command does not stop early with
                    // success.
                    self.cmd(&ts::open_path_argv(self.port, ts::PLACEHOLDER, ts::PLACEHOLDER_TARGET))
                        .await
                        .map_err(|f| self.fail(f))?;
                    self.accepted();
                }
                let wanted: BTreeSet<String> = now_open.iter().chain(&touched).map(ts::mount).collect();
                for m in sc.link_mounts(&host, self.port) {
                    if !wanted.contains(&m) {
                        match self.close_mount(&m).await {
                            Ok(()) => done.removed.push(m),
                            Err(e) => failed = failed.or(Some(e)),
                        }
                    }
                }
                for id in now_open.iter().filter(|id| !touched.contains(*id)) {
                    if !sc.serves(&host, self.port, &ts::mount(id), &self.target(id)) {
                        match self.open_one(&host, &sc, id).await {
                            Ok(()) => done.reasserted.push(id.clone()),
                            Err(e) => failed = failed.or(Some(e)),
                        }
                    }
                }
            }
            FunnelMode::Tcp => {
                if let Some(first) = now_open.first() {
                    let up = self.tcp_upstream()?;
                    // After a refusal the forward is written again even when it is there (see
                    // above).
                    let nothing = ServeConfig::default();
                    let seen = if refused { &nothing } else { &sc };
                    if !seen.forwards(self.port, &up) || !seen.funnel_on(&host, self.port) {
                        self.open_one(&host, seen, first).await?;
                        done.reasserted.push(first.clone());
                    }
                } else {
                    if sc.tcp_forward(self.port).is_some() {
                        self.close_tcp().await?;
                        done.removed.push(format!("tcp:{}", self.port));
                    }
                    // Nothing is public and nothing needs changing: no refusal stands.
                    self.accepted();
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if self.refusal().is_none() {
            self.set_health(Health::ok());
        }
        Ok(done)
    }

    /// Removes the placeholder on shutdown. Links that stay open keep their handlers, and the next
    /// start reconciles them.
    pub async fn stop(&self) {
        if self.mode != FunnelMode::Path {
            return;
        }
        let _st = self.state.lock().await;
        if let Err(e) = self.close_mount(ts::PLACEHOLDER).await {
            tracing::warn!(error = %e, "could not remove the placeholder handler");
        }
    }
}

#[derive(Debug)]
enum Failed {
    Run(RunError),
    Cli(Failure),
    Parse(String),
}
