//! ferry shares a file from a NAS through a link that works once, for a while, and then vanishes
//! together with its public tunnel.
//!
//! # Layout
//! From the ground floor up; a module imports only those above it in this list, never one below
//! (`script/cycles` checks that no file imports one that imports it back).
//! - [`model`]: what a link is, its ids, the clock and small formatting helpers. It imports
//!   nothing of ferry. [`data_dir`]: paths beneath the data dir, resolved safely. [`archive`]: a
//!   folder or several files as one ZIP, its member names and exact byte layout, without I/O.
//! - [`config`]: one typed configuration, from the environment, validated at startup.
//! - [`health`], [`programs`]: how a part is doing; finding the programs ferry runs.
//! - [`store`]: where links live (embedded redb, or Redis), behind one interface.
//! - [`peers`]: several instances sharing one Redis.
//! - [`tunnel`]: providers that make a link public: `local`, or Tailscale Funnel through the CLI
//!   or a Docker exec in the sidecar.
//! - [`monitor`]: the access-log follower and the kernel's socket counters.
//! - [`links`]: the link service, one file per activity, over the pure rules of
//!   [`links::rules`].
//! - [`nginx`], [`notify`]: the data plane's config and process; webhooks.
//! - [`cli`]: the command line. [`mcp`]: the tools agents use over MCP, which call the admin API.
//! - [`http`]: the admin API (`/mcp` included) and the check endpoint nginx calls.
//!
//! [`run`] wires them together; the caller binds the admin listener, so tests can use port 0.

#![deny(unsafe_code)]

pub mod archive;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod health;
pub mod http;
pub mod inbox;
pub mod links;
pub mod mcp;
pub mod model;
pub mod monitor;
pub mod nginx;
pub mod notify;
pub mod peers;
pub mod programs;
pub mod store;
pub mod tunnel;
pub mod zip;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::{Config, NginxMode};
use links::Links;
use store::Store;
use tunnel::Provider;

/// Runs ferry until `shutdown` is cancelled.
pub async fn run(config: Config, admin: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let links = open_links(&config).await?;
    start_webhook(&config, &links, &shutdown);
    recover(&links).await?;

    let tasks = TaskTracker::new();
    spawn_link_upkeep(&tasks, &config, &links, &shutdown);
    let managed = start_nginx(&tasks, &config, &links, &shutdown).await?;
    let nginx_running = managed
        .as_ref()
        .map_or_else(|| Arc::new(AtomicBool::new(true)), |m| m.running.clone());
    let monitor = Arc::new(monitor::follow::Counters::default());
    let metrics = install_metrics();
    tasks.spawn(metrics_upkeep(metrics.clone(), shutdown.clone()));
    let state = http::AppState {
        links: links.clone(),
        nginx_running,
        monitor: monitor.clone(),
        provider: links.provider().kind().name(),
        metrics,
        config: Arc::new(config.clone()),
        host: http::host::Host::new(),
        sse: http::events::subscribers(),
        auth: Arc::new(http::admin_auth::AdminAuth::new(
            config.admin_token.clone(),
            admin.local_addr()?,
            &config.admin_hosts,
        )),
    };

    let sock = serve_checks(&tasks, &config, &links, &shutdown)?;
    if let Some(managed) = managed {
        tasks.spawn(managed.supervise(shutdown.clone()));
    }
    spawn_monitor(&tasks, &config, &links, monitor, &shutdown);

    tracing::info!(admin = %admin.local_addr()?, public = %config.public_addr, data = %config.data_dir.display(), "ferry is running");
    let app = http::admin_router(state);
    axum::serve(admin, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    stop(&shutdown, tasks, &links, &sock).await;
    Ok(())
}

/// Once the admin API has stopped: ends every task, makes the store's last writes durable, and
/// lets the provider and the check socket go.
async fn stop(shutdown: &CancellationToken, tasks: TaskTracker, links: &Links, sock: &std::path::Path) {
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    if let Err(e) = links.store().persist().await {
        tracing::warn!(error = %e, "the store could not make its last writes durable");
    }
    links.provider().stop().await;
    let _ = std::fs::remove_file(sock);
}

/// The links with their store and tunnel provider, once the provider accepts the settings.
async fn open_links(config: &Config) -> anyhow::Result<Arc<Links>> {
    let store = open_store(config).await?;
    let provider = Provider::from_config(config)?;
    provider.preflight().await.map_err(anyhow::Error::msg)?;
    let links = Links::new(config, store, provider)?;
    links.listen_for_closes().await;
    Ok(links)
}

/// Posts link events to `FERRY_WEBHOOK_URL`, when it is set, and to each link's `notify_url`.
fn start_webhook(config: &Config, links: &Links, shutdown: &CancellationToken) {
    if let Some(url) = &config.webhook_url {
        let url = url.expose().to_string();
        let format = match config.webhook_format {
            Some(f) => f,
            None => config::WebhookFormat::detect(&url),
        };
        let target = notify::Target::Everything { url, format };
        notify::spawn(target, links.events.subscribe(), shutdown.clone());
    }
    notify::spawn(notify::Target::EachLink, links.events.subscribe(), shutdown.clone());
}

/// Puts the state right after a stop or a crash: closes overdue links, removes orphans, and
/// brings the tunnels in line with the open links.
async fn recover(links: &Links) -> anyhow::Result<()> {
    // With shared state: alive before anything else, so that no other instance takes this
    // one's links over while it starts (and its reconciliation reclaims them).
    if let Some(peers) = links.peers()
        && let Err(e) = peers.heartbeat().await
    {
        tracing::warn!(error = %e, "first heartbeat failed");
    }
    match links.reconcile().await {
        Ok(closed) if !closed.is_empty() => {
            tracing::info!(
                count = closed.len(),
                "closed overdue links and removed orphans at startup"
            );
        }
        Ok(_) => {}
        // Redis may come up after ferry (compose): run, report the store down, and reconcile
        // with the housekeeping once it is there.
        Err(e @ store::StoreError::Unavailable(_)) => {
            tracing::error!(error = %e, "store unavailable at startup; reconciliation will be retried");
        }
        Err(e) => return Err(e.into()),
    }

    if links.provider().kind().uses_funnel() {
        // The sidecar may not be up yet; the tunnel watch keeps trying.
        if let Err(e) = links.reconcile_tunnels().await {
            tracing::warn!(error = %e, "the tunnel provider is not ready");
        }
    }
    Ok(())
}

/// The loops that keep links in step with time, tunnels, files and other instances.
fn spawn_link_upkeep(tasks: &TaskTracker, config: &Config, links: &Arc<Links>, shutdown: &CancellationToken) {
    if links.provider().kind().uses_funnel() {
        tasks.spawn(
            links
                .clone()
                .run_tunnel_watch(std::time::Duration::from_secs(5), shutdown.clone()),
        );
    }
    // Deadlines are enforced from the first moment, before nginx is (re)started.
    tasks.spawn(links.clone().run_scheduler(shutdown.clone()));
    // A shared file that changes, or a data dir that goes away, closes its links within seconds
    // even when nobody asks for them.
    tasks.spawn(links.clone().run_file_watch(links::FILE_WATCH, shutdown.clone()));
    tasks.spawn(links.clone().run_archive_failures(shutdown.clone()));
    tasks.spawn(links.clone().run_peers(config.instance_timeout / 3, shutdown.clone()));
}

/// Prepares the nginx ferry manages, which the caller then supervises; or, with
/// `FERRY_NGINX=external`, writes the config for the nginx that runs elsewhere and listens for its
/// error log.
async fn start_nginx(
    tasks: &TaskTracker,
    config: &Config,
    links: &Links,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<nginx::Managed>> {
    match config.nginx_mode {
        NginxMode::Managed => Ok(Some(
            nginx::Managed::prepare(config)
                .await?
                .watch_log_writes(links.log_writes.clone(), config.logs_dir.clone()),
        )),
        NginxMode::External => {
            let errors = nginx::ErrorLogSocket::bind(config)?;
            let writes = (links.log_writes.clone(), config.logs_dir.clone());
            tasks.spawn(errors.serve(Some(writes), shutdown.clone()));
            let conf = nginx::write_external(config).await?;
            tracing::info!(config = %conf.display(), "nginx runs elsewhere (FERRY_NGINX=external) from this config");
            Ok(None)
        }
    }
}

/// Binds the check socket and answers on it; returns its path, to remove at the end.
fn serve_checks(
    tasks: &TaskTracker,
    config: &Config,
    links: &Arc<Links>,
    shutdown: &CancellationToken,
) -> anyhow::Result<std::path::PathBuf> {
    // The check socket: nginx's only way to ask. Owner and group only.
    let sock = nginx::check_socket(config);
    let _ = std::fs::remove_file(&sock);
    let check = UnixListener::bind(&sock).with_context(|| format!("cannot bind {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660))?;
    tasks.spawn(http::check::serve(check, links.clone(), shutdown.clone()));
    // The archive socket: where nginx fetches the bytes of ZIP links, after the check.
    let zip_sock = nginx::zip_socket(config);
    let _ = std::fs::remove_file(&zip_sock);
    let zip = UnixListener::bind(&zip_sock).with_context(|| format!("cannot bind {}", zip_sock.display()))?;
    std::fs::set_permissions(&zip_sock, std::fs::Permissions::from_mode(0o660))?;
    tasks.spawn(http::zip::serve(zip, links.clone(), shutdown.clone()));
    // The upload socket: where nginx passes what senders send to upload links.
    let upload_sock = nginx::upload_socket(config);
    let _ = std::fs::remove_file(&upload_sock);
    let upload = UnixListener::bind(&upload_sock).with_context(|| format!("cannot bind {}", upload_sock.display()))?;
    std::fs::set_permissions(&upload_sock, std::fs::Permissions::from_mode(0o660))?;
    tasks.spawn(http::receive::serve(upload, links.clone(), shutdown.clone()));
    Ok(sock)
}

/// The loops that follow downloads and report on them: the access-log follower, the socket
/// sampler, the watch on the logs' free space, and the relay that passes events between instances.
fn spawn_monitor(
    tasks: &TaskTracker,
    config: &Config,
    links: &Arc<Links>,
    counters: Arc<monitor::follow::Counters>,
    shutdown: &CancellationToken,
) {
    let follower = monitor::follow::Follower {
        dir: config.logs_dir.clone(),
        slot: config.log_slot,
        position_file: config.state_dir.join("access.position"),
        counters,
    };
    tasks.spawn(follower.run(links.clone(), shutdown.clone()));
    tasks.spawn(links.clone().run_sampler(shutdown.clone()));
    tasks.spawn(monitor::logwrites::watch_space(
        links.log_writes.clone(),
        config.logs_dir.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(links.clone().run_relay(shutdown.clone()));
}

/// The embedded store in the state dir, or Redis when `REDIS_URL` is set.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    match &config.redis_url {
        None => Ok(Store::Embedded(Box::new(
            store::embedded::Embedded::open(&config.state_dir.join("ferry.redb"))
                .context("FERRY_STATE_DIR: cannot open the store")?,
        ))),
        Some(url) => {
            let instance = store::redis::instance_id(&config.state_dir).context("FERRY_STATE_DIR: instance id")?;
            let redis = store::redis::Redis::connect(
                url.expose(),
                instance.clone(),
                u64::from(config.history_days) * 86_400_000,
            )
            .await
            .context("REDIS_URL")?;
            tracing::info!(%instance, durability = %redis.durability().detail, "state in Redis");
            Ok(Store::Redis(Box::new(redis)))
        }
    }
}

/// The process-wide metrics recorder (the `metrics` facade is global by design); a second
/// `run` in one process reuses nothing and records into its own, unexported recorder.
fn install_metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        .expect("static buckets are valid")
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed in this process");
    }
    handle
}

/// Folds the histograms' pending samples into their buckets every few seconds. The recorder keeps
/// every sample until the next scrape or upkeep, so without this a ferry nobody scrapes grows by a
/// few samples a request.
async fn metrics_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle, shutdown: CancellationToken) {
    let mut every = model::Every::new(std::time::Duration::from_secs(5), shutdown);
    while every.tick().await {
        handle.run_upkeep();
    }
}
