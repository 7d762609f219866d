//! What the owner sees of a link: its JSON view, and the events that the UI and webhooks receive.

use serde::Serialize;

use super::rules;
use crate::model::{CloseReason, IncomingState, Link, LinkState, TunnelId, rfc3339};

/// The JSON view of a link (SPEC §6 `Tunnel`). It never includes the token or the download URL.
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
    /// `file`, or `zip` for a folder or several files shared as one archive.
    pub kind: &'static str,
    /// A ZIP link's members, in the archive's order (the first `FILES_SHOWN`); empty for a file.
    pub files: Vec<FileView>,
    /// How many members the archive has in all (1 for a file).
    pub file_count: usize,
    /// How far a ZIP link's CRC-32s are computed; absent for a file.
    pub hashing: Option<Hashing>,
    /// For an upload link: the bytes received so far, in all files.
    pub bytes_received: u64,
    /// For an upload link: its limits and the files on their way.
    pub upload: Option<UploadView>,
    /// Whether recipients must give a password (never the password itself).
    pub password: bool,
    /// Locked after too many wrong passwords, until the owner edits the link.
    pub locked: bool,
    /// The addresses allowed to use the link; empty for any.
    pub allow_cidrs: Vec<String>,
    /// `"[set]"` when the link has its own notification URL, which is a secret.
    pub notify_url: Option<&'static str>,
    /// The latest `expires_at` an edit may set.
    pub max_expires_at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadView {
    pub max_files: u32,
    pub max_bytes: u64,
    pub in_progress: Vec<UploadProgress>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadProgress {
    pub name: String,
    pub received: u64,
    pub length: Option<u64>,
}

/// The most members a Tunnel lists.
pub const FILES_SHOWN: usize = 200;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileView {
    pub name: String,
    pub size: u64,
}

/// Hashing progress: bytes of the members hashed so far, of `total_bytes`.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Hashing {
    pub hashed_bytes: u64,
    pub total_bytes: u64,
}

impl TunnelView {
    /// The view of `link`, which is reached at `public_url`.
    pub fn of(link: &Link, public_url: String) -> TunnelView {
        TunnelView {
            tunnel_id: link.id.clone(),
            file_path: link.file_path.to_string(),
            file_size: link.file_size,
            state: link.state,
            public_url,
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
            kind: link.kind(),
            files: link
                .archive
                .iter()
                .flat_map(|a| &a.members)
                .take(FILES_SHOWN)
                .map(|m| FileView {
                    name: m.name.clone(),
                    size: m.stamp.size,
                })
                .collect(),
            file_count: match (&link.archive, &link.upload) {
                (Some(a), _) => a.members.len(),
                (_, Some(u)) => u.received(),
                _ => 1,
            },
            hashing: link.archive.as_ref().map(|a| Hashing {
                hashed_bytes: 0,
                total_bytes: a.members.iter().map(|m| m.stamp.size).sum(),
            }),
            bytes_received: link.upload.iter().flat_map(|u| &u.files).map(|f| f.received).sum(),
            upload: link.upload.as_ref().map(|u| UploadView {
                max_files: u.max_files,
                max_bytes: u.max_bytes,
                in_progress: u
                    .files
                    .iter()
                    .filter(|f| f.state == IncomingState::Receiving)
                    .map(|f| UploadProgress {
                        name: f.name.clone(),
                        received: f.received,
                        length: f.length,
                    })
                    .collect(),
            }),
            password: link.policy.password_hash.is_some(),
            locked: link.policy.locked,
            allow_cidrs: link.policy.allow_cidrs.iter().map(ToString::to_string).collect(),
            notify_url: link.policy.notify_url.as_ref().map(|_| "[set]"),
            max_expires_at: rfc3339(link.token_exp_s() * 1000),
        }
        .with_received(link)
    }
}

impl TunnelView {
    /// Lists an upload link's received files (final names and sizes) as its `files`.
    fn with_received(mut self, link: &Link) -> TunnelView {
        if let Some(u) = &link.upload {
            self.files = u
                .files
                .iter()
                .filter_map(|f| match &f.state {
                    IncomingState::Received { name, .. } => Some(FileView {
                        name: name.clone(),
                        size: f.received,
                    }),
                    _ => None,
                })
                .take(FILES_SHOWN)
                .collect();
        }
        self
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientView {
    pub address: String,
    pub user_agent: String,
    pub bytes: u64,
}

/// What happened to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    /// A download began: a client took a claim.
    Started,
    /// Bytes moved (sent at most a few times a second per link).
    Progress,
    /// One download completed.
    Completed,
    /// The link closed, with its reason.
    Closed,
    /// An upload link began to receive a file.
    UploadStarted,
    /// An upload link received a whole file (the event's `file` says which).
    Received,
    /// The owner changed the link (expiry, downloads, password, ...) or rotated its token.
    Edited,
    /// Too many wrong passwords: the link refuses everyone until its owner edits it.
    Locked,
}

impl EventKind {
    /// The event's name, as SSE and webhooks carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Started => "started",
            EventKind::Progress => "progress",
            EventKind::Completed => "completed",
            EventKind::Closed => "closed",
            EventKind::UploadStarted => "upload_started",
            EventKind::Received => "received",
            EventKind::Edited => "edited",
            EventKind::Locked => "locked",
        }
    }
}

/// An event that the owner's UI and webhooks receive: `created`, `started`, `progress`,
/// `completed` (one download done) or `closed` (with its reason), together with the link as it is
/// at that moment.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub time: String,
    pub tunnel: TunnelView,
    /// For `received`: the file that arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<crate::model::ReceivedFile>,
    /// The link's own notification URL, for its notifier only: it is a secret, never shown.
    #[serde(skip)]
    pub notify_url: Option<String>,
}

/// An event another instance emitted: its name and its JSON, as that instance sent it.
#[derive(Debug, Clone)]
pub struct PeerEvent {
    pub event: String,
    pub json: String,
}
