//! Links: the model, the state machine's shell, and the one teardown procedure.
//!
//! [`Links`] is the control plane's heart: it creates links, answers nginx's check for every public
//! request, settles access-log lines, and closes links when they are due. Decisions are made by the
//! pure functions in [`rules`]; this module only loads, stores and acts on them. It never serves
//! file bytes (nginx does) and never runs a command (the tunnel provider does).

pub mod bans;
pub mod path;
pub mod rules;
pub mod token;

#[cfg(test)]
mod rules_props;
#[cfg(test)]
pub(crate) mod timed_tests;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::monitor::coverage::Coverage;
use crate::monitor::record::{AccessRecord, Completion};
use crate::store::{Owner, Store, StoreError, Write};
use crate::tunnel::Provider;
use path::{DataDir, FileIdentity, PathError, RelPath};
use rules::{Admission, Method, Policy, Refusal};

/// Random, URL-safe text of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    B64.encode(buf)
}

/// Where link time comes from: the system clock, or tokio's clock (which tests can pause and
/// advance) anchored to the wall time when the link service started.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Tokio { wall_ms: u64, start: tokio::time::Instant },
}

impl Clock {
    pub fn tokio() -> Self {
        Clock::Tokio {
            wall_ms: now_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => now_ms(),
            Clock::Tokio { wall_ms, start } => wall_ms + start.elapsed().as_millis() as u64,
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a connection had acknowledged before the request being checked: nothing on its first
/// request (most downloads come on a new connection), else what the kernel says now (`ask`; 0 if
/// it cannot tell).
fn baseline(first_on_connection: bool, ask: impl FnOnce() -> Option<u64>) -> u64 {
    if first_on_connection { 0 } else { ask().unwrap_or(0) }
}

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A link's identifier: 144 random bits, base64url. Parsing refuses anything else, so an id can be
/// used in a path or a file name safely.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TunnelId(Arc<str>);

impl Serialize for TunnelId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a tunnel id")]
pub struct BadTunnelId;

impl TunnelId {
    pub fn random() -> Self {
        TunnelId(random_token(18).into())
    }

    pub fn parse(s: &str) -> Result<Self, BadTunnelId> {
        let ok = (16..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok { Ok(TunnelId(s.into())) } else { Err(BadTunnelId) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TunnelId {
    type Error = BadTunnelId;
    fn try_from(s: String) -> Result<Self, BadTunnelId> {
        TunnelId::parse(&s)
    }
}

impl std::fmt::Display for TunnelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client: an IPv4 address or an IPv6 /64, with its User-Agent. The strings of a link record
/// are shared (`Arc<str>`): a record is copied on every update, and copying it must not
/// allocate once per string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientKey {
    pub address: Arc<str>,
    pub user_agent: Arc<str>,
}

impl ClientKey {
    pub fn new(addr: &str, user_agent: &str) -> Option<Self> {
        let address: Arc<str> = if addr.parse::<std::net::Ipv4Addr>().is_ok() {
            // std accepts only the normal dotted form (no leading zeros, no spaces): as it is.
            addr.into()
        } else {
            Self::normal_address(addr)?.into()
        };
        let user_agent: Arc<str> = match user_agent.char_indices().nth(512) {
            Some((end, _)) => user_agent[..end].into(),
            None => user_agent.into(),
        };
        Some(ClientKey { address, user_agent })
    }

    fn normal_address(addr: &str) -> Option<String> {
        Some(match addr.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    // The /64 in its one normal form (RFC 5952), so a client has one key.
                    let s = v6.segments();
                    let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                    format!("{net}/64")
                }
            },
        })
    }
}

/// Ordered as a link lives: it only ever moves to a greater state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Open,
    Downloading,
    Completed,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    Completed,
    Stalled,
    Expired,
    Terminated,
    Error,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::Stalled => "stalled",
            CloseReason::Expired => "expired",
            CloseReason::Terminated => "terminated",
            CloseReason::Error => "error",
        }
    }
}

/// One download's place: the bytes its claims have received so far (a union of ranges: a
/// resumed or segmented download counts once), and whether that is the whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub coverage: Coverage,
    pub complete: bool,
}

/// A client's right to receive body bytes into one slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// Handed to nginx with each request admitted under the claim, and read back from its log line.
    pub id: Arc<str>,
    pub slot: u32,
    pub client: ClientKey,
    pub last_end_ms: u64,
    /// Body bytes charged under this claim.
    pub bytes: u64,
}

/// What one address has read of a link without a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Read {
    pub address: Arc<str>,
    pub bytes: u64,
    /// What those reads proved delivered: given to the slot this address claims next, so a
    /// client that began with small reads still completes when it holds every byte.
    #[serde(default)]
    pub coverage: Coverage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub request_id: Arc<str>,
    pub client: ClientKey,
    /// What the check admitted it as.
    pub what: rules::Use,
    /// Re-sent bytes this request may send, held from the link's re-send budget until it settles.
    pub reserved: u64,
    pub since_ms: u64,
    /// The bytes of the file it may be sent: `[range_start, range_end)`.
    pub range_start: u64,
    pub range_end: u64,
    /// The connection, when ferry can see its socket.
    pub conn: Option<crate::monitor::sockdiag::Conn>,
    /// What the peer had acknowledged on this connection before this request.
    pub baseline: u64,
    /// Acknowledged since the check (response header included).
    pub delivered: u64,
    /// When `delivered` last grew.
    pub progress_ms: u64,
    /// When the connection was first found gone.
    pub gone_ms: Option<u64>,
    /// A later request arrived on the same connection: this response is over (its log line is
    /// on its way), and what the connection carries from now on is not this request's.
    #[serde(default)]
    pub ended: bool,
}

impl InFlight {
    /// A GET under a claim; HEAD, reads and grace fetches hold none.
    pub fn claims(&self) -> bool {
        matches!(self.what, rules::Use::Claim { .. })
    }
}

/// One finished request, as the owner sees it in a link's stats (the last few are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSeen {
    /// nginx's `$request_id`: a line read twice (a replay after a crash) is applied once.
    #[serde(default)]
    pub request_id: Arc<str>,
    pub time_ms: u64,
    pub client: ClientKey,
    pub method: Arc<str>,
    pub status: u16,
    pub bytes: u64,
    pub range: Option<Arc<str>>,
    pub completed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientSeen {
    pub client: ClientKey,
    pub bytes: u64,
}

/// A link as the store keeps it. It holds no token: the token is re-derived from `id`,
/// `issued_at_s` and the expiry when the owner asks for the URL again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub id: TunnelId,
    pub file_path: RelPath,
    pub file_size: u64,
    pub identity: FileIdentity,
    pub state: LinkState,
    pub created_at_ms: u64,
    pub issued_at_s: u64,
    pub expires_at_ms: u64,
    pub max_downloads: u32,
    pub downloads_completed: u32,
    pub bytes_served: u64,
    /// One per download allowed.
    pub slots: Vec<Slot>,
    pub claims: Vec<Claim>,
    /// Reads by address (at most `rules::MAX_READERS_KEPT`), and their sum.
    pub reads: Vec<Read>,
    pub reads_total: u64,
    /// Bytes handed out that added nothing to a slot: drawn from the re-send budget.
    pub resent: u64,
    /// Bytes admitted in the grace period.
    pub grace_sent: u64,
    pub inflight: Vec<InFlight>,
    pub clients: Vec<ClientSeen>,
    /// The last requests settled from the log, oldest first. Shared between copies of the
    /// record until a log line changes it (a check copies the record and never does).
    #[serde(default)]
    pub requests: Arc<Vec<RequestSeen>>,
    pub last_activity_ms: Option<u64>,
    /// When bytes last moved (or a claim was taken); stalls are measured from here.
    pub last_progress_ms: Option<u64>,
    pub completer: Option<ClientKey>,
    pub grace_until_ms: Option<u64>,
    pub close_reason: Option<CloseReason>,
    pub closed_at_ms: Option<u64>,
    pub note: Option<String>,
    pub rate_limit_bytes_per_second: Option<u64>,
    /// Why the link closed as `error`, in words for the owner.
    #[serde(default)]
    pub close_detail: Option<String>,
}

impl Link {
    /// A new open link to a file of `identity.size` bytes: nothing served, nothing claimed.
    pub fn new(
        id: TunnelId,
        file_path: RelPath,
        identity: FileIdentity,
        created_at_ms: u64,
        expires_at_ms: u64,
        max_downloads: u32,
    ) -> Link {
        Link {
            id,
            file_path,
            file_size: identity.size,
            identity,
            state: LinkState::Open,
            created_at_ms,
            issued_at_s: created_at_ms / 1000,
            expires_at_ms,
            max_downloads,
            downloads_completed: 0,
            bytes_served: 0,
            slots: vec![Slot::default(); max_downloads as usize],
            claims: vec![],
            reads: vec![],
            reads_total: 0,
            resent: 0,
            grace_sent: 0,
            inflight: vec![],
            clients: vec![],
            requests: Default::default(),
            last_activity_ms: None,
            last_progress_ms: None,
            completer: None,
            grace_until_ms: None,
            close_reason: None,
            closed_at_ms: None,
            note: None,
            rate_limit_bytes_per_second: None,
            close_detail: None,
        }
    }
}

#[cfg(test)]
pub(crate) fn test_link(size: u64, max_downloads: u32) -> Link {
    let identity = FileIdentity {
        dev: 1,
        ino: 2,
        size,
        mtime_ns: 3,
    };
    Link::new(
        TunnelId::random(),
        RelPath::parse("f.bin").unwrap(),
        identity,
        0,
        3_600_000,
        max_downloads,
    )
}

/// The JSON face of a link (SPEC §6 `Tunnel`): never the token, never the download URL.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TunnelView {
    #[schema(value_type = String)]
    pub tunnel_id: TunnelId,
    pub file_path: String,
    pub file_size: u64,
    pub state: LinkState,
    pub public_url: String,
    pub created_at: String,
    pub expires_at: String,
    pub max_downloads: u32,
    pub downloads_completed: u32,
    pub bytes_served: u64,
    pub progress: f64,
    pub last_activity: Option<String>,
    pub clients: Vec<ClientView>,
    pub close_reason: Option<CloseReason>,
    /// Why the link closed as `error` (the tunnel could not be opened, the data dir went away,
    /// the file changed).
    pub close_detail: Option<String>,
    pub closed_at: Option<String>,
    pub note: Option<String>,
    pub rate_limit_bytes_per_second: Option<u64>,
}

#[cfg(test)]
impl TunnelView {
    pub(crate) fn for_test(link: &Link) -> Self {
        TunnelView {
            tunnel_id: link.id.clone(),
            file_path: link.file_path.to_string(),
            file_size: link.file_size,
            state: link.state,
            public_url: String::new(),
            created_at: rfc3339(link.created_at_ms),
            expires_at: rfc3339(link.expires_at_ms),
            max_downloads: link.max_downloads,
            downloads_completed: link.downloads_completed,
            bytes_served: link.bytes_served,
            progress: rules::progress(link),
            last_activity: None,
            clients: vec![],
            close_reason: link.close_reason,
            close_detail: link.close_detail.clone(),
            closed_at: None,
            note: None,
            rate_limit_bytes_per_second: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientView {
    pub address: String,
    pub user_agent: String,
    pub bytes: u64,
}

/// What the owner asked for.
#[derive(Debug, Clone)]
pub struct NewLink {
    pub file_path: RelPath,
    pub expires_in: Option<u64>,
    pub max_downloads: Option<u32>,
    pub note: Option<String>,
    pub rate_limit_bytes_per_second: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    pub download_url: String,
    #[schema(value_type = String)]
    pub tunnel_id: TunnelId,
    pub token: String,
    pub file_path: String,
    pub expires_in_seconds: u64,
    pub expires_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("file_path: {0}")]
    Path(PathError),
    #[error("unknown tunnel id")]
    NotFound,
    #[error("tunnel could not be opened: {0}")]
    Tunnel(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// Something the owner's UI and webhooks hear about: `created`, `started`, `progress`,
/// `completed` (one download done) or `closed` (with its reason), with the link as it is then.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: &'static str,
    pub time: String,
    pub tunnel: TunnelView,
}

pub struct Links {
    clock: Clock,
    store: Store,
    provider: Provider,
    data: DataDir,
    keys: token::Keys,
    policy: Policy,
    diag: Option<crate::monitor::sockdiag::SockDiag>,
    /// The kernel's close notifications: what an aborted request's socket had delivered when it
    /// closed. Set once at startup (`listen_for_closes`); unset, an aborted request is charged
    /// what nginx sent, and those bytes count as the recipient's.
    closures: std::sync::OnceLock<crate::monitor::sockdiag::ClosedSockets>,
    pub bans: bans::Bans,
    /// What refusals may write to the audit: one record a second per client, a few a second in
    /// all.
    refusals_audited: std::sync::Mutex<crate::store::audit::RefusalLimit>,
    tunnels_dir: PathBuf,
    base_url: String,
    history_ms: u64,
    /// Wakes the scheduler when a deadline may have moved earlier.
    wake: Notify,
    /// When the scheduler looks next (`u64::MAX` while it is looking): a new deadline later than that
    /// needs no wake-up, so creating links does not make it scan them all each time.
    scheduled_at: std::sync::atomic::AtomicU64,
    /// When each link last had a `progress` event (they are limited to a few per second).
    progress_sent: std::sync::Mutex<std::collections::HashMap<TunnelId, u64>>,
    pub events: broadcast::Sender<Event>,
    /// Whether nginx can write the access log (no new claims while it cannot).
    pub log_writes: Arc<crate::monitor::logwrites::LogWrites>,
    /// The latest request admitted on each connection ferry can see (nginx reuses connections;
    /// a new request on one ends the previous).
    conns: std::sync::Mutex<std::collections::HashMap<crate::monitor::sockdiag::Conn, (TunnelId, Arc<str>)>>,
    /// Events other instances emitted (with shared state), for this instance's SSE clients.
    /// Webhooks never see them: each instance sends its own events' webhooks.
    pub peer_events: broadcast::Sender<PeerEvent>,
    /// This instance's events on their way to the others, in order.
    outbox: Option<tokio::sync::mpsc::Sender<String>>,
    outbox_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
}

/// An event another instance emitted: its name and its JSON, as that instance sent it.
#[derive(Debug, Clone)]
pub struct PeerEvent {
    pub event: String,
    pub json: String,
}

impl Links {
    pub fn new(config: &Config, store: Store, provider: Provider) -> anyhow::Result<Arc<Self>> {
        Self::with_clock(config, store, provider, Clock::System)
    }

    pub fn with_clock(config: &Config, store: Store, provider: Provider, clock: Clock) -> anyhow::Result<Arc<Self>> {
        let outbox = match store.shared() {
            true => {
                let (tx, rx) = tokio::sync::mpsc::channel(4096);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let data = DataDir::open(&config.data_dir).map_err(|e| anyhow::anyhow!("NAS_MOUNT_PATH: {e}"))?;
        Ok(Arc::new(Links {
            clock,
            store,
            provider,
            data,
            keys: token::Keys::new(&config.jwt_secret),
            policy: Policy {
                max_tunnel_s: config.max_tunnel.as_secs(),
                grace_ms: config.grace_period.as_millis() as u64,
                resume_ms: config.resume_window.as_millis() as u64,
                stall_ms: config.stall_timeout.as_millis() as u64,
                preview_bytes: config.preview_bytes,
                grace_bytes: config.grace_bytes,
                refetch_bytes: config.refetch_bytes,
            },
            refusals_audited: Default::default(),
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
            outbox: outbox.0,
            outbox_rx: std::sync::Mutex::new(outbox.1),
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

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn data(&self) -> &DataDir {
        &self.data
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    fn public_url(&self, link: &Link) -> String {
        // The name's bytes as they are: a URL is bytes, and `wget` saves what the path says.
        let bytes = link.file_path.file_name_bytes();
        let name = percent_encoding::percent_encode(&bytes, URL_SEGMENT);
        let base = self.provider.public_base();
        format!("{}/s/{}/{}", base.as_deref().unwrap_or(&self.base_url), link.id, name)
    }

    pub fn download_url(&self, link: &Link) -> String {
        let token = self.keys.issue(&link.id, link.issued_at_s, link.expires_at_ms / 1000);
        format!("{}?t={}", self.public_url(link), token)
    }

    pub fn view(&self, link: &Link) -> TunnelView {
        TunnelView {
            tunnel_id: link.id.clone(),
            file_path: link.file_path.to_string(),
            file_size: link.file_size,
            state: link.state,
            public_url: self.public_url(link),
            created_at: rfc3339(link.created_at_ms),
            expires_at: rfc3339(link.expires_at_ms),
            max_downloads: link.max_downloads,
            downloads_completed: link.downloads_completed,
            bytes_served: link.bytes_served,
            progress: rules::progress(link),
            last_activity: link.last_activity_ms.map(rfc3339),
            clients: link
                .clients
                .iter()
                .map(|c| ClientView {
                    address: c.client.address.to_string(),
                    user_agent: c.client.user_agent.to_string(),
                    bytes: c.bytes,
                })
                .collect(),
            close_reason: link.close_reason,
            close_detail: link.close_detail.clone(),
            closed_at: link.closed_at_ms.map(rfc3339),
            note: link.note.clone(),
            rate_limit_bytes_per_second: link.rate_limit_bytes_per_second,
        }
    }

    fn emit(&self, event: &'static str, link: &Link) {
        tracing::info!(tunnel_id = %link.id, event, bytes_served = link.bytes_served, reason = ?link.close_reason, "link");
        if self.events.receiver_count() == 0 && self.outbox.is_none() {
            return;
        }
        let e = Event {
            event,
            time: rfc3339(self.clock.now_ms()),
            tunnel: self.view(link),
        };
        if let (Some(outbox), Some(instance)) = (&self.outbox, self.store.instance()) {
            let payload = serde_json::json!({"from": instance, "event": event, "data": &e}).to_string();
            // Other instances' live views may miss an event while Redis is away; nothing else does.
            if outbox.try_send(payload).is_err() {
                tracing::debug!(event, "event not relayed to other instances (outbox full)");
            }
        }
        let _ = self.events.send(e);
    }

    /// With shared state: sends this instance's events to the others and hands theirs to this
    /// instance's SSE clients (Redis pub/sub, reconnected after an outage). Returns at once with
    /// the embedded store.
    pub async fn run_relay(self: Arc<Self>, cancel: CancellationToken) {
        let Some(mut outbox) = self.outbox_rx.lock().expect("outbox mutex").take() else {
            return;
        };
        let publish = async {
            while let Some(payload) = tokio::select! {
                p = outbox.recv() => p,
                _ = cancel.cancelled() => None,
            } {
                if let Err(e) = self.store.publish_event(&payload).await {
                    tracing::debug!(error = %e, "could not relay an event");
                }
            }
        };
        let subscribe = async {
            use futures_util::StreamExt;
            let me = self.store.instance().unwrap_or_default().to_string();
            while !cancel.is_cancelled() {
                match self.store.event_stream().await {
                    Ok(mut stream) => loop {
                        let msg = tokio::select! {
                            m = stream.next() => m,
                            _ = cancel.cancelled() => return,
                        };
                        let Some(payload) = msg else { break };
                        if self.peer_events.receiver_count() == 0 {
                            continue;
                        }
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(&payload) else {
                            continue;
                        };
                        if v["from"].as_str() == Some(me.as_str()) {
                            continue;
                        }
                        if let Some(event) = v["event"].as_str() {
                            let _ = self.peer_events.send(PeerEvent {
                                event: event.to_string(),
                                json: v["data"].to_string(),
                            });
                        }
                    },
                    Err(e) => tracing::debug!(error = %e, "event subscription failed; retrying"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        };
        tokio::join!(publish, subscribe);
    }

    /// Emits `progress` for a link at most every 250 ms.
    fn emit_progress(&self, link: &Link) {
        let now = self.clock.now_ms();
        let mut sent = self.progress_sent.lock().expect("progress mutex");
        // A late line or sample can follow a link's close, which removed its entry: entries older
        // than the interval change nothing, so dropping them keeps the map to the busy links.
        if sent.len() > 1024 {
            sent.retain(|_, t| now < *t + 250);
        }
        let last = sent.entry(link.id.clone()).or_insert(0);
        if now >= *last + 250 {
            *last = now;
            drop(sent);
            self.emit("progress", link);
        }
    }

    /// Creates a link: resolve the file safely, record it durably, expose it (symlink, then
    /// tunnel), and only then hand out the URL. If exposing fails, the link is closed as `error`
    /// and nothing stays reachable.
    /// Creates a link for `by` (the API client's address, for the audit record).
    pub async fn create(&self, req: NewLink, by: Option<&str>) -> Result<(Created, Link), LinkError> {
        let expires_in = req.expires_in.unwrap_or(self.policy.max_tunnel_s);
        if !(1..=self.policy.max_tunnel_s).contains(&expires_in) {
            return Err(LinkError::Invalid {
                field: "expires_in_seconds",
                message: format!(
                    "must be between 1 and {} (MAX_TUNNEL_SECONDS)",
                    self.policy.max_tunnel_s
                ),
            });
        }
        let max_downloads = req.max_downloads.unwrap_or(1);
        if max_downloads < 1 {
            return Err(LinkError::Invalid {
                field: "max_downloads",
                message: "must be at least 1".into(),
            });
        }
        if req.note.as_ref().is_some_and(|n| n.chars().count() > 500) {
            return Err(LinkError::Invalid {
                field: "note",
                message: "must be at most 500 characters".into(),
            });
        }
        if req.rate_limit_bytes_per_second == Some(0) {
            return Err(LinkError::Invalid {
                field: "rate_limit_bytes_per_second",
                message: "must be at least 1".into(),
            });
        }
        let resolved = self.data.resolve_file(&req.file_path).map_err(LinkError::Path)?;

        let now = self.clock.now_ms();
        let exp_s = (now + expires_in * 1000).div_ceil(1000);
        let id = TunnelId::random();
        let link = Link {
            note: req.note,
            rate_limit_bytes_per_second: req.rate_limit_bytes_per_second,
            ..Link::new(
                id.clone(),
                req.file_path.clone(),
                resolved.identity,
                now,
                exp_s * 1000,
                max_downloads,
            )
        };
        // The audit record goes with the link's own durable write.
        let audit = crate::store::audit::AuditRecord {
            time_ms: now,
            event: "link.created".into(),
            client: by.map(String::from),
            tunnel_id: Some(id.to_string()),
            detail: Some(link.file_path.to_string()),
        };
        if let Err(e) = self.store.insert_audited(&link, Some(&audit)).await {
            // The embedded store keeps the record in memory and writes it once it can: it must
            // then say that this link never got a URL, not stay open until it expires. (Redis
            // stores a link whole or not at all.)
            if !self.store.shared()
                && let Err(e) = self
                    .close_error(&id, format!("the link could not be stored: {e}"))
                    .await
            {
                tracing::debug!(tunnel_id = %id, error = %e, "the unstored link's close waits for the store");
            }
            return Err(e.into());
        }

        let exposed = async {
            self.link_dir(&id, &resolved.real_path)
                .await
                .map_err(|e| LinkError::Internal(format!("symlink: {e}")))?;
            let started = std::time::Instant::now();
            let opened = self.provider.open(&id).await;
            metrics::histogram!("ferry_provider_call_seconds", "op" => "open").record(started.elapsed().as_secs_f64());
            opened.map_err(|e| LinkError::Tunnel(e.to_string()))
        }
        .await;
        if let Err(e) = exposed {
            tracing::error!(tunnel_id = %id, error = %e, "could not expose link");
            self.close_error(&id, e.to_string()).await?;
            return Err(e);
        }
        self.remind(link.expires_at_ms);
        metrics::counter!("ferry_links_created_total").increment(1);
        self.emit("created", &link);
        let created = Created {
            download_url: self.download_url(&link),
            tunnel_id: id,
            token: self.keys.issue(&link.id, link.issued_at_s, exp_s),
            file_path: link.file_path.to_string(),
            expires_in_seconds: expires_in,
            expires_at: rfc3339(link.expires_at_ms),
        };
        Ok((created, link))
    }

    async fn link_dir(&self, id: &TunnelId, target: &std::path::Path) -> std::io::Result<()> {
        let dir = self.tunnels_dir.join(id.as_str());
        tokio::fs::create_dir(&dir).await?;
        tokio::fs::symlink(target, dir.join("file")).await
    }

    /// nginx's question for every public request: may this request be served?
    pub async fn check(
        &self,
        id: &str,
        token: &str,
        mut admission: Admission,
    ) -> Result<(Arc<Link>, rules::Use), Refusal> {
        let id = TunnelId::parse(id).map_err(|_| Refusal::Malformed)?;
        let now = self.clock.now_ms();
        self.keys.verify(token, &id, now / 1000).map_err(token_refusal)?;
        // A request whose log line cannot be written would deliver bytes nobody counts.
        if admission.method != Method::Head && self.log_writes.failing() {
            return Err(Refusal::LogUnwritable);
        }
        // The record is let go before the update, which then need not copy it.
        let same = {
            let link = self
                .store
                .get(&id)
                .await
                .map_err(|_| Refusal::Unavailable)?
                .ok_or(Refusal::Unknown)?;
            if link.state == LinkState::Closed {
                return Err(Refusal::Closed);
            }
            // The file must still be the one that was shared. What nginx is about to open is
            // the link's symlink: one stat answers; without the symlink (not made yet, or made
            // on another instance) the data dir does.
            match DataDir::identity_at(&self.tunnels_dir.join(id.as_str()).join("file")) {
                Some(served) => served == link.identity,
                None => self.data.identity(&link.file_path).ok() == Some(link.identity),
            }
        };
        if !same {
            let why = self.why_file_differs();
            tracing::warn!(tunnel_id = %id, reason = %why, "the shared file is not the one shared; closing the link");
            // Boxed: closing (the tunnel's teardown) is rare here, and its state is most of a
            // check's; every check would otherwise carry room for it.
            let _ = Box::pin(self.close_error(&id, why)).await;
            return Err(Refusal::FileChanged);
        }
        // The baseline: what this (possibly reused) connection had already acknowledged.
        if let (Some((conn, base)), Some(diag)) = (admission.conn.as_mut(), &self.diag) {
            *base = baseline(admission.first_on_connection, || diag.bytes_acked(*conn).ok().flatten());
        } else {
            admission.conn = None;
        }
        // The request before this one on a reused connection has ended: usually on this same
        // link, where this update marks it; on another link it takes an update of its own.
        let previous = admission.conn.and_then(|(conn, _)| {
            let conns = self.conns.lock().expect("conns mutex");
            conns
                .get(&conn)
                .filter(|(_, rid)| *rid != admission.request_id)
                .cloned()
        });
        let ended_here = previous
            .as_ref()
            .filter(|(prev_id, _)| *prev_id == id)
            .map(|(_, rid)| rid);
        let policy = self.policy;
        let outcome = self
            .store
            .update(&id, &mut |link| match rules::admit(link, &admission, now, &policy) {
                Ok(a) => {
                    if let Some(rid) = ended_here {
                        rules::end_on_reuse(link, rid);
                    }
                    // A new claim, and what a read or a grace fetch is charged, must survive a
                    // crash; a request riding on a claim need not.
                    if a.new_claim || matches!(a.what, rules::Use::Read | rules::Use::Grace) {
                        Write::Durable(Ok(a))
                    } else {
                        Write::Soft(Ok(a))
                    }
                }
                Err(r) => Write::No(Err(r)),
            })
            .await
            .map_err(|_| Refusal::Unavailable)?
            .ok_or(Refusal::Unknown)?;
        let (admitted, link) = (outcome.0?, outcome.1);
        if admitted.new_claim {
            self.emit("started", &link);
        }
        if let Some((conn, _)) = admission.conn {
            self.conns
                .lock()
                .expect("conns mutex")
                .insert(conn, (id.clone(), admission.request_id.clone()));
        }
        if let Some((prev_id, prev_rid)) = previous.filter(|(prev_id, _)| *prev_id != id) {
            let _ = self
                .store
                .update(&prev_id, &mut |l| match rules::end_on_reuse(l, &prev_rid) {
                    true => Write::Soft(()),
                    false => Write::No(()),
                })
                .await;
        }
        Ok((link, admitted.what))
    }

    /// A previewer's request: the token must be valid and the link open, but nothing is claimed.
    pub async fn preview(&self, id: &str, token: &str) -> Result<Arc<Link>, Refusal> {
        let id = TunnelId::parse(id).map_err(|_| Refusal::Malformed)?;
        let now = self.clock.now_ms();
        self.keys.verify(token, &id, now / 1000).map_err(token_refusal)?;
        let link = self
            .store
            .get(&id)
            .await
            .map_err(|_| Refusal::Unavailable)?
            .ok_or(Refusal::Unknown)?;
        if link.state == LinkState::Closed {
            return Err(Refusal::Closed);
        }
        if now >= link.expires_at_ms {
            return Err(Refusal::Expired);
        }
        Ok(link)
    }

    /// What the peer of `conn` had acknowledged when its socket closed, from the kernel's close
    /// notification for a socket closed after `since_ms` (waiting a moment for it to arrive);
    /// `None` when ferry cannot know.
    async fn final_acked(&self, conn: crate::monitor::sockdiag::Conn, since_ms: u64) -> Option<u64> {
        let closures = self.closures.get()?;
        // The request's check: its socket was open then, so a close heard since is its own.
        let age = Duration::from_millis(self.clock.now_ms().saturating_sub(since_ms));
        let since = std::time::Instant::now().checked_sub(age)?;
        closures.final_acked(conn, since, CLOSE_NOTICE_WAIT).await
    }

    /// Applies one access-log line.
    pub async fn apply_log(&self, rec: &AccessRecord) -> Result<(), StoreError> {
        self.apply_logs(std::slice::from_ref(rec)).await
    }

    /// Applies access-log lines of one link, in their order, in one atomic update: under load a
    /// read brings dozens of lines per link, and each update copies the link's record.
    pub async fn apply_logs(&self, recs: &[AccessRecord]) -> Result<(), StoreError> {
        let Some(id) = recs.first().and_then(|r| r.tunnel_id.as_ref()) else {
            return Ok(());
        };
        debug_assert!(recs.iter().all(|r| r.tunnel_id.as_ref() == Some(id)));
        let recs: Vec<(&AccessRecord, ClientKey)> = recs
            .iter()
            .filter_map(|rec| match ClientKey::new(&rec.client, &rec.user_agent) {
                Some(client) => Some((rec, client)),
                None => {
                    tracing::warn!(client = %rec.client, "access log line with an unparseable client address");
                    None
                }
            })
            .collect();
        let now = self.clock.now_ms();
        // An aborted request is credited with what its peer had acknowledged when the socket
        // closed: the kernel says so in its close notification, which may come a moment after
        // nginx wrote the line.
        // The notices of several aborted requests are awaited together, not one after another.
        let mut acked: Vec<Option<u64>> = vec![None; recs.len()];
        if recs.iter().any(|(r, _)| r.completion == Completion::Aborted)
            && let Some(link) = self.store.get(id).await?
        {
            acked = futures_util::future::join_all(recs.iter().map(|(rec, _)| {
                let flight = link
                    .inflight
                    .iter()
                    .find(|f| *f.request_id == *rec.request_id)
                    .filter(|_| rec.completion == Completion::Aborted);
                async move {
                    let f = flight?;
                    self.final_acked(f.conn?, f.since_ms).await
                }
            }))
            .await;
        }
        let policy = self.policy;
        let settled = self
            .store
            .update(id, &mut |link| {
                let before = link.bytes_served;
                let mut all = rules::Settled::default();
                let mut downloads = 0u32;
                for ((rec, client), acked) in recs.iter().zip(&acked) {
                    let s = rules::settle(link, rec, client.clone(), *acked, now, &policy);
                    all.changed |= s.changed;
                    all.link_completed |= s.link_completed;
                    downloads += u32::from(s.download_completed);
                }
                let v = (all, downloads, link.bytes_served - before);
                if downloads > 0 {
                    Write::Durable(v)
                } else if all.changed {
                    Write::Soft(v)
                } else {
                    Write::No(v)
                }
            })
            .await?;
        let Some(((s, downloads, bytes), link)) = settled else {
            return Ok(());
        };
        metrics::counter!("ferry_bytes_served_total").increment(bytes);
        if downloads > 0 {
            metrics::counter!("ferry_downloads_completed_total").increment(u64::from(downloads));
            for _ in 0..downloads {
                self.emit("completed", &link);
            }
        } else if s.changed {
            self.emit_progress(&link);
        }
        if s.link_completed && link.state != LinkState::Closed {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The one teardown procedure. Idempotent: closing a closed link changes nothing, and every
    /// step can be repeated after a crash. Order: gate (the record says closed, so every check
    /// refuses), provider, symlink directory, event.
    pub async fn close(&self, id: &TunnelId, reason: CloseReason) -> Result<bool, StoreError> {
        self.close_because(id, reason, None).await
    }

    /// Closes a link as `error`, saying why in the record and in the audit.
    pub async fn close_error(&self, id: &TunnelId, why: String) -> Result<bool, StoreError> {
        let closed = self.close_because(id, CloseReason::Error, Some(why.clone())).await?;
        if closed {
            self.audit("link.error", None, Some(id.as_str()), Some(why)).await;
        }
        Ok(closed)
    }

    /// Why a link's file is not the one it shared: its data dir is gone, or the file changed.
    fn why_file_differs(&self) -> String {
        match self.data.available() {
            Err(e) => e.to_string(),
            Ok(()) => "the shared file changed or was replaced".into(),
        }
    }

    /// The teardown, with the words that say why (see [`Self::close`]).
    async fn close_because(
        &self,
        id: &TunnelId,
        reason: CloseReason,
        detail: Option<String>,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let closed = self
            .store
            .update(id, &mut |link| {
                if rules::close(link, reason, now) {
                    link.close_detail.clone_from(&detail);
                    Write::Durable(true)
                } else {
                    Write::No(false)
                }
            })
            .await?
            .and_then(|(closed, link)| closed.then_some(link));
        self.teardown(id).await;
        self.progress_sent.lock().expect("progress mutex").remove(id);
        match closed {
            Some(link) => {
                let reason = link.close_reason.map_or("unknown", CloseReason::as_str);
                metrics::counter!("ferry_links_closed_total", "reason" => reason).increment(1);
                self.emit("closed", &link);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The exposure steps of the teardown, run where the link's tunnel lives: here, or on the
    /// instance that owns it (asked through the store; the gate is already closed for everyone).
    async fn teardown(&self, id: &TunnelId) {
        match self.store.owner(id).await {
            Ok(Owner::Elsewhere(owner)) => match self.store.hand_over(&owner, id).await {
                Ok(()) => tracing::debug!(tunnel_id = %id, %owner, "teardown handed to the owning instance"),
                Err(e) => {
                    tracing::warn!(tunnel_id = %id, %owner, error = %e, "could not hand the teardown over; the owner's reconciliation will remove it")
                }
            },
            _ => self.teardown_here(id).await,
        }
    }

    async fn teardown_here(&self, id: &TunnelId) {
        self.expose_nothing(id).await;
        if let Err(e) = self.store.release(id).await {
            tracing::warn!(tunnel_id = %id, error = %e, "could not release the link's ownership");
        }
    }

    /// With shared state (Redis): says this instance is alive, takes over the links of instances
    /// that are gone (so their deadlines and teardowns still happen), and tears down on this node
    /// the links other instances closed. Returns at once with the embedded store.
    pub async fn run_peers(self: Arc<Self>, heartbeat: Duration, cancel: CancellationToken) {
        if !self.store.shared() {
            return;
        }
        let mut beat_at = tokio::time::Instant::now();
        while !cancel.is_cancelled() {
            if tokio::time::Instant::now() >= beat_at {
                beat_at = tokio::time::Instant::now() + heartbeat;
                if let Err(e) = self.peers_once().await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
            // Not raced against `cancel`: a pop interrupted by a drop would lose its id.
            match self.store.next_teardown(Duration::from_secs(1)).await {
                Ok(Some(id)) => {
                    tracing::info!(tunnel_id = %id, "tearing down a link closed by another instance");
                    self.teardown_here(&id).await;
                }
                Ok(None) => {}
                Err(_) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// One heartbeat: alive, durability re-checked, dead instances' links taken over.
    pub async fn peers_once(&self) -> Result<Vec<TunnelId>, StoreError> {
        self.store.heartbeat().await?;
        let taken = self.store.take_over().await?;
        if !taken.is_empty() {
            tracing::warn!(count = taken.len(), ids = ?taken, "took over the links of an instance that is gone");
            self.wake.notify_one();
        }
        // A link closed while its owner was gone still waits for its teardown: do it here.
        for id in &taken {
            if !matches!(self.store.get(id).await?, Some(l) if l.state != LinkState::Closed) {
                self.teardown_here(id).await;
            }
        }
        Ok(taken)
    }

    /// Removes every public trace of a link: its tunnel and its symlink directory. Retried until
    /// done, since a link that is closed in the store must not stay reachable.
    async fn expose_nothing(&self, id: &TunnelId) {
        let mut delay = Duration::from_millis(50);
        for attempt in 0..8 {
            let started = std::time::Instant::now();
            let tunnel = self.provider.close(id).await;
            metrics::histogram!("ferry_provider_call_seconds", "op" => "close").record(started.elapsed().as_secs_f64());
            let dir = match tokio::fs::remove_dir_all(self.tunnels_dir.join(id.as_str())).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
            match (tunnel, dir) {
                (Ok(()), Ok(())) => return,
                (t, d) => {
                    tracing::warn!(tunnel_id = %id, attempt, tunnel = ?t.err(), dir = ?d.err(), "teardown step failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        tracing::error!(tunnel_id = %id, "teardown incomplete; reconciliation will retry");
    }

    /// Brings the runtime folders and the provider into agreement with the store: links past their
    /// deadline are closed, symlink directories and tunnels of links that are not open are removed.
    /// Returns the ids it closed.
    pub async fn reconcile(&self) -> Result<Vec<TunnelId>, StoreError> {
        let now = self.clock.now_ms();
        let open = self.store.list_open().await?;
        let mut closed = Vec::new();
        for link in &open {
            let due_now = rules::due(link).filter(|(at, _)| *at <= now);
            if let Some((_, reason)) = due_now
                && self.close(&link.id, reason).await?
            {
                closed.push(link.id.clone());
            }
        }
        let open_ids: std::collections::HashSet<_> = open
            .iter()
            .filter(|l| !closed.contains(&l.id))
            .map(|l| l.id.clone())
            .collect();
        if let Ok(mut dir) = tokio::fs::read_dir(&self.tunnels_dir).await {
            while let Ok(Some(entry)) = dir.next_entry().await {
                let name = entry.file_name();
                let orphan = match name.to_str().map(TunnelId::parse) {
                    Some(Ok(id)) if open_ids.contains(&id) => {
                        // Its tunnel is on this node: if another instance took the link over
                        // while this one was away, this one owns it again.
                        if let Ok(true) = self.store.reclaim(&id).await {
                            tracing::info!(tunnel_id = %id, "reclaimed a link whose tunnel is on this instance");
                        }
                        false
                    }
                    // Created after the listing above? Then it is no orphan.
                    Some(Ok(id)) => !matches!(self.store.get(&id).await, Ok(Some(l)) if l.state != LinkState::Closed),
                    _ => !name.to_string_lossy().starts_with('.'),
                };
                if orphan {
                    tracing::info!(entry = %name.to_string_lossy(), "removing orphan tunnel directory");
                    let _ = tokio::fs::remove_dir_all(entry.path()).await;
                    if let Some(Ok(id)) = name.to_str().map(TunnelId::parse) {
                        closed.push(id);
                    }
                }
            }
        }
        Ok(closed)
    }

    /// Reconciliation and retention, done every minute: agreement between store, folders and
    /// provider, and history older than `FERRY_HISTORY_DAYS` forgotten.
    pub async fn housekeeping(&self) -> Result<(), StoreError> {
        let closed = self.reconcile().await?;
        if !closed.is_empty() {
            tracing::info!(count = closed.len(), "reconciliation closed links or removed orphans");
        }
        let before = self.clock.now_ms().saturating_sub(self.history_ms);
        let purged = self.store.purge_history(before).await?;
        if purged > 0 {
            tracing::info!(purged, "forgot history past its retention");
        }
        Ok(())
    }

    /// Tells the scheduler a link falls due at `at`, waking it if it would look later than that.
    /// A link stored before its deadline is set here is seen either by the scan under way (which
    /// then sleeps no later than `at`) or by the next one, which this wakes.
    fn remind(&self, at: u64) {
        if at < self.scheduled_at.load(std::sync::atomic::Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Closes links when they fall due: at `expires_at`, or when a completed link's grace period
    /// ends. One loop for all links; it sleeps until the earliest deadline, and does the
    /// housekeeping every minute.
    pub async fn run_scheduler(self: Arc<Self>, cancel: CancellationToken) {
        let mut housekeeping_at = self.clock.now_ms() + 60_000;
        loop {
            // Looking: any deadline set from here on wakes the next round (see `remind`).
            self.scheduled_at.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
            let now = self.clock.now_ms();
            if now >= housekeeping_at {
                housekeeping_at = now + 60_000;
                if let Err(e) = self.housekeeping().await {
                    tracing::warn!(error = %e, "housekeeping failed");
                }
            }
            let mut next = housekeeping_at;
            if self.store.shared() {
                // Other instances create links this loop was not woken for; their deadlines
                // must hold even when the instance that made them is gone.
                next = next.min(now + 1000);
            }
            match self.store.list_open().await {
                Ok(open) => {
                    for link in open {
                        let Some((at, reason)) = rules::due(&link) else {
                            continue;
                        };
                        if at <= now {
                            if let Err(e) = self.close(&link.id, reason).await {
                                tracing::error!(tunnel_id = %link.id, error = %e, "could not close a due link");
                                next = next.min(now + 1000);
                            }
                        } else {
                            next = next.min(at);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "scheduler cannot read the store");
                    next = now + 1000;
                }
            }
            self.scheduled_at.store(next, std::sync::atomic::Ordering::SeqCst);
            let sleep = Duration::from_millis(next.saturating_sub(self.clock.now_ms()));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Makes the provider agree with the store: the open links' handlers are there (a sidecar
    /// restart can lose them), and no handler of ferry's serves a link that is not open.
    pub async fn reconcile_tunnels(&self) -> Result<(), LinkError> {
        let mut open: Vec<TunnelId> = self
            .store
            .list_open()
            .await?
            .into_iter()
            .map(|l| l.id.clone())
            .collect();
        if let Some(mine) = self.store.owned_here().await? {
            // With shared state, this node's provider serves only the links whose tunnel is
            // here: another instance's link must never get a handler on this node (nor one of
            // a gone instance taken over here: its symlink is on the other node).
            open.retain(|id| mine.contains(id) && self.tunnels_dir.join(id.as_str()).exists());
        }
        let done = self
            .provider
            .reconcile(&open)
            .await
            .map_err(|e| LinkError::Tunnel(e.to_string()))?;
        if !done.reasserted.is_empty() || !done.removed.is_empty() {
            tracing::info!(reasserted = ?done.reasserted, removed = ?done.removed, "tunnel provider reconciled");
        }
        Ok(())
    }

    /// Every few seconds, [`Self::reconcile_tunnels`]: one `status --json` when all is well.
    pub async fn run_tunnel_watch(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.reconcile_tunnels().await {
                tracing::warn!(error = %e, "tunnel reconciliation failed");
            }
        }
    }

    /// Every few seconds, [`Self::watch_files_once`].
    pub async fn run_file_watch(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let mut every = crate::Every::new(every, cancel);
        while every.tick().await {
            if let Err(e) = self.watch_files_once().await {
                tracing::warn!(error = %e, "could not look at the shared files");
            }
        }
    }

    /// Closes as `error` every open link whose file is no longer the one it shared (it grew, was
    /// replaced, or its data dir went away), without waiting for a request to find out. Only the
    /// links whose symlink is on this node are looked at. Returns the ids it closed.
    pub async fn watch_files_once(&self) -> Result<Vec<TunnelId>, StoreError> {
        let open = self.store.list_open().await?;
        let dir = self.tunnels_dir.clone();
        let differ = tokio::task::spawn_blocking(move || {
            open.iter()
                // A download that completed closes as completed at the end of its grace period,
                // whatever the owner does with the file meanwhile.
                .filter(|l| l.state != LinkState::Completed)
                .filter(|l| {
                    let file = dir.join(l.id.as_str()).join("file");
                    // No symlink: not made yet, or on another instance's node.
                    std::fs::symlink_metadata(&file).is_ok() && DataDir::identity_at(&file) != Some(l.identity)
                })
                .map(|l| l.id.clone())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut closed = Vec::new();
        if differ.is_empty() {
            return Ok(closed);
        }
        let why = self.why_file_differs();
        for id in differ {
            tracing::warn!(tunnel_id = %id, reason = %why, "the shared file is not the one shared; closing the link");
            if self.close_error(&id, why.clone()).await? {
                closed.push(id);
            }
        }
        Ok(closed)
    }

    /// Whether live progress comes from the sockets (else only from the access log).
    pub fn socket_progress(&self) -> bool {
        self.diag.is_some()
    }

    /// Starts hearing the kernel's close notifications (needs sock_diag, as socket progress does).
    pub async fn listen_for_closes(&self) {
        if self.diag.is_none() {
            return;
        }
        match crate::monitor::sockdiag::ClosedSockets::start().await {
            Ok(c) => {
                let _ = self.closures.set(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, "socket close notifications unavailable: aborted requests are charged what nginx sent")
            }
        }
    }

    /// Whether aborted requests are credited from the kernel's close notifications.
    pub fn close_notices(&self) -> bool {
        self.closures.get().is_some_and(|c| c.is_running())
    }

    /// Every second: sample the sockets of requests in flight, report progress, close stalled
    /// links, and settle requests whose connection vanished without a log line.
    pub async fn run_sampler(self: Arc<Self>, cancel: CancellationToken) {
        let mut every = crate::Every::new(Duration::from_secs(1), cancel);
        while every.tick().await {
            if let Err(e) = self.sample_once().await {
                tracing::warn!(error = %e, "progress sampling failed");
            }
            // The checks' soft writes of the last second go out together.
            self.store.flush();
        }
    }

    /// One round of the sampler (tests call it directly).
    pub async fn sample_once(&self) -> Result<(), StoreError> {
        const UNLOGGED_AFTER_MS: u64 = 5_000;
        let policy = self.policy;
        let open = self.store.list_open().await?;
        {
            // Connections whose request is settled need no entry any more.
            let live: std::collections::HashSet<&str> = open
                .iter()
                .flat_map(|l| l.inflight.iter().map(|f| &*f.request_id))
                .collect();
            self.conns
                .lock()
                .expect("conns mutex")
                .retain(|_, (_, rid)| live.contains(&**rid));
        }
        // Only the owner sees a link's sockets (another node's connections look vanished).
        let mine = self.store.owned_here().await?;
        for link in open {
            if mine.as_ref().is_some_and(|m| !m.contains(&link.id)) {
                continue;
            }
            // Never claimed and nothing in flight: nothing to sample, settle or find stalled.
            if link.state == LinkState::Open && link.inflight.is_empty() {
                continue;
            }
            let samples: Vec<(Arc<str>, Option<u64>)> = match &self.diag {
                Some(diag) => link
                    .inflight
                    .iter()
                    .filter_map(|f| Some((f.request_id.clone(), diag.bytes_acked(f.conn?).ok()?)))
                    .collect(),
                None => vec![],
            };
            let now = self.clock.now_ms();
            let outcome = self
                .store
                .update(&link.id, &mut |l| {
                    let mut moved = false;
                    for (rid, acked) in &samples {
                        moved |= rules::sample(l, rid, *acked, now);
                    }
                    let before = l.bytes_served;
                    let settled = rules::settle_unlogged(l, now, UNLOGGED_AFTER_MS, &policy);
                    // Counted once the write is kept (a shared store may run this closure again).
                    let credited = l.bytes_served - before;
                    let dropped = rules::drop_stalled_claims(l, now, &policy);
                    let stalled = rules::stalled(l, now, &policy);
                    let r = (moved, stalled, credited);
                    if settled || dropped {
                        Write::Durable(r)
                    } else if moved {
                        Write::Soft(r)
                    } else {
                        Write::No(r)
                    }
                })
                .await?;
            let Some(((moved, stalled, credited), l)) = outcome else {
                continue;
            };
            metrics::counter!("ferry_bytes_served_total").increment(credited);
            if stalled {
                tracing::info!(tunnel_id = %l.id, delivered = rules::delivered(&l), "no progress for the stall timeout");
                self.close(&l.id, CloseReason::Stalled).await?;
            } else if moved {
                self.emit_progress(&l);
            }
        }
        Ok(())
    }

    /// Listing helpers for the API.
    pub async fn open_links(&self) -> Result<Vec<Arc<Link>>, StoreError> {
        let mut v = self.store.list_open().await?;
        v.sort_by_key(|l| std::cmp::Reverse(l.created_at_ms));
        Ok(v)
    }

    pub async fn terminate(&self, id: &str) -> Result<(), LinkError> {
        let id = TunnelId::parse(id).map_err(|_| LinkError::NotFound)?;
        match self.store.get(&id).await? {
            None => Err(LinkError::NotFound),
            Some(l) if l.state == LinkState::Closed => Err(LinkError::NotFound),
            Some(_) => {
                self.close(&id, CloseReason::Terminated).await?;
                Ok(())
            }
        }
    }
}

/// The HTML a link previewer gets: the file's name and size, nothing external, no referrer.
pub fn preview_html(link: &Link) -> String {
    let name = html_escape(&link.file_path.display_name());
    let size = human_size(link.file_size);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta name=\"robots\" content=\"noindex\"><meta property=\"og:title\" content=\"{name}\">\
         <meta property=\"og:description\" content=\"{size}\"><title>{name}</title></head>\
         <body><h1>{name}</h1><p>{size}</p></body></html>\n"
    )
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

/// How often every open link's file is compared with the one it shared.
pub const FILE_WATCH: Duration = Duration::from_secs(5);

/// How long settling an aborted request waits for its socket's close notification.
const CLOSE_NOTICE_WAIT: Duration = Duration::from_millis(250);

/// A token's refusal. A token that was well signed for this link and has only expired is bad
/// luck (a recipient retrying an old link, perhaps one of many behind one NAT), not forgery: it is
/// refused as expired, which does not count toward a ban.
fn token_refusal(e: token::TokenError) -> Refusal {
    match e {
        token::TokenError::Expired => Refusal::Expired,
        _ => Refusal::BadToken,
    }
}

pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Characters escaped in a URL path segment.
pub const URL_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `Content-Disposition` for a file's name as its bytes are. A UTF-8 name goes out exactly as
/// `filename*=UTF-8''...`. Other bytes cannot be UTF-8 there (RFC 8187; browsers then drop the
/// parameter), so such a name's bytes go out percent-encoded as ISO-8859-1, the charset of most
/// names old Samba shares wrote, which maps every byte to one character: a Latin-1 `caf\xE9`
/// is saved as `café`. `filename` carries the readable form (`caf%E9`) for clients that read
/// only it.
pub fn content_disposition_bytes(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(text) => content_disposition(text),
        Err(_) => {
            let readable = path::display_bytes(name);
            let exact = percent_encoding::percent_encode(name, URL_SEGMENT);
            format!(
                "attachment; filename=\"{}\"; filename*=ISO-8859-1''{exact}",
                ascii_fallback(&readable)
            )
        }
    }
}

/// `Content-Disposition` for the file's real name: an ASCII fallback and the exact UTF-8 name.
pub fn content_disposition(name: &str) -> String {
    let exact = percent_encoding::utf8_percent_encode(name, URL_SEGMENT);
    format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{exact}",
        ascii_fallback(name)
    )
}

/// A name in printable ASCII for `filename="..."`: anything else, and quotes and backslashes,
/// as `_`.
fn ascii_fallback(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_first_request_has_a_baseline_of_0_without_asking_the_kernel() {
        assert_eq!(baseline(true, || panic!("the kernel was asked")), 0);
        assert_eq!(baseline(false, || Some(4_321)), 4_321);
        assert_eq!(baseline(false, || None), 0, "a socket the kernel cannot find");
    }

    #[test]
    fn ids_have_enough_entropy_and_parse() {
        let a = TunnelId::random();
        assert_eq!(a.as_str().len(), 24); // 18 bytes = 144 bits
        assert_ne!(a, TunnelId::random());
        assert!(TunnelId::parse(a.as_str()).is_ok());
        for bad in [
            "",
            "short",
            "../../../../etc/passwd",
            "a/b/c/d/e/f/g/h/i/j",
            &"a".repeat(65),
        ] {
            assert!(TunnelId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clients_group_ipv6_by_64() {
        let a = ClientKey::new("2001:db8:1:2:aaaa::1", "ua").unwrap();
        let b = ClientKey::new("2001:db8:1:2:bbbb::9", "ua").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.address.as_ref(), "2001:db8:1:2::/64");
        // Found by the `check_request` fuzz target: zero groups were written out (`2001:db8:a1ba:0::`).
        let z = ClientKey::new("2001:db8:a1ba::b:2:3:4", "ua").unwrap();
        assert_eq!(z.address.as_ref(), "2001:db8:a1ba::/64");
        assert_eq!(&*ClientKey::new("::1", "ua").unwrap().address, "::/64");
        assert_eq!(&*ClientKey::new("::ffff:10.0.0.1", "ua").unwrap().address, "10.0.0.1");
        assert!(ClientKey::new("nope", "ua").is_none());
        assert!(ClientKey::new("010.0.0.1", "ua").is_none());
        assert_eq!(&*ClientKey::new("10.0.0.1", "ua").unwrap().address, "10.0.0.1");
        // User-Agents are kept to 512 characters, cut between characters.
        let long = ClientKey::new("10.0.0.1", &"é".repeat(600)).unwrap();
        assert_eq!(long.user_agent.chars().count(), 512);
        assert_eq!(
            &*ClientKey::new("10.0.0.1", &"é".repeat(512)).unwrap().user_agent,
            "é".repeat(512)
        );
    }

    #[test]
    fn previews_escape_the_name() {
        let mut l = test_link(1_500_000, 1);
        l.file_path = RelPath::parse("<b>\"x\"&.txt").unwrap();
        let html = preview_html(&l);
        assert!(html.contains("content=\"&lt;b&gt;&quot;x&quot;&amp;.txt\""), "{html}");
        assert!(html.contains("1.5 MB"));
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn disposition_carries_a_name_that_is_not_utf8_as_its_bytes() {
        assert_eq!(
            content_disposition_bytes(b"men\xfc caf\xe9.pdf"),
            "attachment; filename=\"men%FC caf%E9.pdf\"; filename*=ISO-8859-1''men%FC%20caf%E9.pdf"
        );
        assert_eq!(
            content_disposition_bytes("café.pdf".as_bytes()),
            content_disposition("café.pdf")
        );
    }

    #[test]
    fn disposition_carries_the_real_name() {
        assert_eq!(
            content_disposition("résumé \"v2\".pdf"),
            "attachment; filename=\"r_sum_ _v2_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.pdf"
        );
    }
}
