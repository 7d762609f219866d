//! The link service: what every activity of `links/` shares (the store, the provider, the data
//! dir, the keys, the policy), and the audit.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Notify, broadcast};

use super::bans;
use super::event::{Event, PeerEvent};
use super::rules::{Policy, Refusal};
use super::token;
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::model::{Clock, Link, TunnelId};
use crate::peers::Peers;
use crate::store::{Store, StoreError};
use crate::tunnel::Provider;

pub struct Links {
    pub(super) clock: Clock,
    pub(super) store: Store,
    pub(super) provider: Provider,
    pub(super) data: Arc<DataDir>,
    /// The archives of the open ZIP links this instance serves.
    pub(super) archives: crate::zip::Archives,
    /// Reports of ZIP members that changed, taken by `run_archive_failures`.
    pub(super) archive_failures: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(TunnelId, String)>>>,
    pub(super) zip_max_files: usize,
    /// Uploads a request is writing to right now.
    pub(super) uploads_busy: super::busy::Busy,
    pub(super) keys: token::Keys,
    pub(super) policy: Policy,
    pub(super) diag: Option<crate::monitor::sockdiag::SockDiag>,
    /// The kernel's close notifications, which tell what an aborted request's socket had delivered
    /// when it closed. This is set once at startup (`listen_for_closes`). While it is unset, an
    /// aborted request is charged what nginx sent, and those bytes count as the recipient's.
    pub(super) closures: std::sync::OnceLock<crate::monitor::sockdiag::ClosedSockets>,
    pub bans: bans::Bans,
    /// Checks link passwords, a few at a time, and remembers successes.
    pub(super) passwords: super::passwords::Passwords,
    /// Limits what refusals may write to the audit: one record a second per client, and a few a
    /// second in all.
    pub(super) refusals_audited: std::sync::Mutex<crate::store::audit::RefusalLimit>,
    pub(super) tunnels_dir: PathBuf,
    pub(super) base_url: String,
    pub(super) history_ms: u64,
    /// Wakes the scheduler when a deadline may have moved earlier.
    pub(super) wake: Notify,
    /// When the scheduler will look next (`u64::MAX` while it is looking). A new deadline later than
    /// that needs no wake-up, so creating links does not make the scheduler scan them all each time.
    pub(super) scheduled_at: std::sync::atomic::AtomicU64,
    /// When each link last had a `progress` event (they are limited to a few per second).
    pub(super) progress_sent: std::sync::Mutex<std::collections::HashMap<TunnelId, u64>>,
    pub events: broadcast::Sender<Event>,
    /// Whether nginx can write the access log (no new claims while it cannot).
    pub log_writes: Arc<crate::monitor::logwrites::LogWrites>,
    /// The latest request admitted on each connection that ferry can see. nginx reuses
    /// connections, and a new request on a connection ends the previous one.
    pub(super) conns: std::sync::Mutex<std::collections::HashMap<crate::model::Conn, (TunnelId, Arc<str>)>>,
    /// Events other instances emitted (with shared state), for this instance's SSE clients.
    /// Webhooks never see them: each instance sends its own events' webhooks.
    pub peer_events: broadcast::Sender<PeerEvent>,
    /// The other instances sharing the store; `None` when this one is alone.
    pub(super) peers: Option<Peers>,
}

impl Links {
    pub fn new(config: &Config, store: Store, provider: Provider) -> anyhow::Result<Arc<Self>> {
        Self::with_clock(config, store, provider, Clock::System)
    }

    pub fn with_clock(config: &Config, store: Store, provider: Provider, clock: Clock) -> anyhow::Result<Arc<Self>> {
        let peers = match &store {
            Store::Redis(redis) => Some(Peers::new(redis, config.instance_timeout)?),
            Store::Embedded(_) => None,
        };
        let data = Arc::new(DataDir::open(&config.data_dir).map_err(|e| anyhow::anyhow!("NAS_MOUNT_PATH: {e}"))?);
        let (archives, archive_failures) = crate::zip::Archives::new(data.clone());
        Ok(Arc::new(Links {
            clock,
            store,
            provider,
            data,
            archives,
            archive_failures: std::sync::Mutex::new(Some(archive_failures)),
            zip_max_files: config.zip_max_files,
            uploads_busy: Default::default(),
            keys: token::Keys::new(&config.jwt_secret),
            policy: Policy {
                max_tunnel_s: config.max_tunnel.as_secs(),
                grace_ms: config.grace_period.as_millis() as u64,
                resume_ms: config.resume_window.as_millis() as u64,
                stall_ms: config.stall_timeout.as_millis() as u64,
                preview_bytes: config.preview_bytes,
                grace_bytes: config.grace_bytes,
                refetch_bytes: config.refetch_bytes,
                default_expires_s: config.default_expires.as_secs(),
                default_max_downloads: config.default_max_downloads,
                max_downloads_limit: config.max_downloads_limit,
            },
            refusals_audited: Default::default(),
            passwords: Default::default(),
            bans: bans::Bans::new(config.ban_after_fails, config.ban.as_millis() as u64),
            diag: match crate::monitor::sockdiag::SockDiag::open() {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "sock_diag unavailable: progress comes from the access log only");
                    None
                }
            },
            closures: Default::default(),
            tunnels_dir: config.tunnels_dir.clone(),
            history_ms: u64::from(config.history_days) * 86_400_000,
            base_url: config.base_url.clone(),
            wake: Notify::new(),
            scheduled_at: u64::MAX.into(),
            progress_sent: Default::default(),
            events: broadcast::channel(1024).0,
            log_writes: Default::default(),
            conns: Default::default(),
            peer_events: broadcast::channel(1024).0,
            peers,
        }))
    }

    /// Records an audit event; a failure to record is logged, never fatal to the action.
    pub async fn audit(&self, event: &str, client: Option<&str>, tunnel_id: Option<&str>, detail: Option<String>) {
        let rec = crate::store::audit::AuditRecord {
            time_ms: self.clock.now_ms(),
            event: event.to_string(),
            client: client.map(String::from),
            tunnel_id: tunnel_id.filter(|t| TunnelId::parse(t).is_ok()).map(String::from),
            detail,
        };
        if let Err(e) = self.store.audit(&rec).await {
            tracing::warn!(error = %e, event, "could not record an audit event");
        }
    }

    /// Audits a public refusal, at most once a second per client and
    /// `REFUSALS_PER_SECOND` times a second in all: a flood from many addresses writes a bounded
    /// number of records, and what the cap left out is counted (metric) and summed up in one
    /// `refused.unrecorded` record, written with the first refusal of a later second.
    pub async fn audit_refusal(&self, address: &str, tunnel_id: &str, refusal: Refusal) {
        let now = self.clock.now_ms();
        let admit = self.refusals_audited.lock().expect("audit mutex").admit(address, now);
        if admit.over_cap {
            metrics::counter!("ferry_audit_refusals_unrecorded_total").increment(1);
        }
        if let Some(n) = admit.unrecorded {
            let detail = format!(
                "{n} refusals not recorded (over {} a second)",
                crate::store::audit::REFUSALS_PER_SECOND
            );
            self.audit("refused.unrecorded", None, None, Some(detail)).await;
        }
        if !admit.record {
            return;
        }
        self.audit(
            "refused",
            Some(address),
            Some(tunnel_id),
            Some(refusal.code().to_string()),
        )
        .await;
    }

    /// Audits a public refusal. One that looks like token guessing also counts toward banning the
    /// client.
    pub async fn refused(&self, address: &str, tunnel: &str, refusal: Refusal, now: u64) {
        self.audit_refusal(address, tunnel, refusal).await;
        if refusal.counts_against_client() && self.bans.fail(address, now) {
            tracing::warn!(client = %address, "banned after repeated bad tokens");
            metrics::counter!("ferry_bans_total").increment(1);
            self.audit("banned", Some(address), Some(tunnel), Some(refusal.code().to_string()))
                .await;
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn data(&self) -> &DataDir {
        &self.data
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The other instances sharing the store; `None` when this one is alone.
    pub fn peers(&self) -> Option<&Peers> {
        self.peers.as_ref()
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// Listing helpers for the API.
    pub async fn open_links(&self) -> Result<Vec<Arc<Link>>, StoreError> {
        let mut v = self.store.list_open().await?;
        v.sort_by_key(|l| std::cmp::Reverse(l.created_at_ms));
        Ok(v)
    }
}
