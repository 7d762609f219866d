//! A link as the store keeps it, and the parts of its ledger.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cidr::Cidr;
use super::client::ClientKey;
use super::conn::Conn;
use super::coverage::Coverage;
use super::id::TunnelId;
use crate::data_dir::{FileIdentity, RelPath, Stamp};

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
    /// Who completed it, and when: the client a grace period serves if the owner's edit makes
    /// this the allowance's last download.
    #[serde(default)]
    pub completed_by: Option<(ClientKey, u64)>,
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
    /// What those reads proved delivered. It is added to the slot this address claims next, so a
    /// client that began with small reads still completes when it holds every byte.
    #[serde(default)]
    pub coverage: Coverage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub request_id: Arc<str>,
    pub client: ClientKey,
    /// What the check admitted it as.
    pub what: Use,
    /// Re-sent bytes this request may send, held from the link's re-send budget until it settles.
    pub reserved: u64,
    pub since_ms: u64,
    /// The bytes of the file it may be sent: `[range_start, range_end)`.
    pub range_start: u64,
    pub range_end: u64,
    /// The connection, when ferry can see its socket.
    pub conn: Option<Conn>,
    /// What the peer had acknowledged on this connection before this request.
    pub baseline: u64,
    /// Acknowledged since the check (response header included).
    pub delivered: u64,
    /// When `delivered` last grew.
    pub progress_ms: u64,
    /// When the connection was first found gone.
    pub gone_ms: Option<u64>,
    /// Whether a later request arrived on the same connection. If so, this response is over (its
    /// log line is on its way), and what the connection carries from now on belongs to another
    /// request.
    #[serde(default)]
    pub ended: bool,
}

impl InFlight {
    /// A GET under a claim; HEAD, reads and grace fetches hold none.
    pub fn claims(&self) -> bool {
        matches!(self.what, Use::Claim { .. })
    }
}

/// One finished request, as the owner sees it in a link's stats (the last few are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSeen {
    /// nginx's `$request_id`, which makes sure that a line read twice (a replay after a crash) is
    /// applied once.
    #[serde(default)]
    pub request_id: Arc<str>,
    pub time_ms: u64,
    pub client: ClientKey,
    pub method: Arc<str>,
    pub status: u16,
    pub bytes: u64,
    /// Bytes read from the client (request line, headers and body), as nginx logged them.
    #[serde(default)]
    pub received: u64,
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
    /// Bytes handed out that added nothing to a slot. They are drawn from the re-send budget.
    pub resent: u64,
    /// Bytes admitted in the grace period.
    pub grace_sent: u64,
    pub inflight: Vec<InFlight>,
    pub clients: Vec<ClientSeen>,
    /// The last requests settled from the log, oldest first. Shared between copies of the
    /// record until a log line changes it. A check copies the record but never changes this list.
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
    /// For a ZIP link (SPEC §11), what the archive holds. A link without it shares one file.
    #[serde(default)]
    pub archive: Option<Arc<ArchiveInfo>>,
    /// For an upload link (SPEC §12), what it may receive and what it has received.
    #[serde(default)]
    pub upload: Option<Arc<UploadInfo>>,
    /// The latest `expires_at` an edit may set, in Unix seconds: the token's `exp`, so that the
    /// URL outlives any expiry the owner chooses. 0 in records made before links could be
    /// edited, whose tokens expire with the link.
    #[serde(default)]
    pub ceiling_s: u64,
    /// Bumped by each rotation; a token of an older generation is refused.
    #[serde(default)]
    pub generation: u32,
    #[serde(default)]
    pub policy: Arc<LinkPolicy>,
}

/// Who may use a link besides holding its token (SPEC §13), and whom it tells of its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkPolicy {
    /// The password's argon2 hash (a PHC string); never the password.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Wrong passwords given since the password was last set.
    #[serde(default)]
    pub password_fails: u32,
    /// Too many wrong passwords: everyone is refused until the owner edits the link.
    #[serde(default)]
    pub locked: bool,
    /// Empty: any address.
    #[serde(default)]
    pub allow_cidrs: Vec<Cidr>,
    /// This link's own ntfy topic or webhook.
    #[serde(default)]
    pub notify_url: Option<String>,
}

/// What an upload link receives into: its folder, its limits, and each file sent through it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The folder's (device, inode) when the link was made: it must still be that folder.
    pub folder_id: (u64, u64),
    pub max_files: u32,
    /// Per file.
    pub max_bytes: u64,
    pub files: Vec<Incoming>,
}

impl UploadInfo {
    /// Files that hold one of the link's `max_files` places: received, or on their way.
    pub fn taken(&self) -> usize {
        self.files
            .iter()
            .filter(|f| f.state != IncomingState::Abandoned)
            .count()
    }

    pub fn received(&self) -> usize {
        self.files
            .iter()
            .filter(|f| matches!(f.state, IncomingState::Received { .. }))
            .count()
    }
}

/// A file an upload link received whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceivedFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// One file an upload link is receiving or has received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incoming {
    /// The upload's id, in its tus URL.
    pub id: Arc<str>,
    /// The name the sender gave, cleaned.
    pub name: String,
    /// The length the sender declared (a `PUT` may declare none).
    pub length: Option<u64>,
    /// Bytes written so far.
    pub received: u64,
    pub state: IncomingState,
    pub started_ms: u64,
    /// When bytes last arrived; an upload idle for the stall timeout is abandoned.
    pub last_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingState {
    Receiving,
    /// In the folder under `name`, with this SHA-256.
    Received {
        name: String,
        sha256: String,
    },
    /// Given up (terminated, cut off, idle, or the link closed): its partial data is removed.
    Abandoned,
}

/// What a ZIP link shares: the archive's name and its members, in the archive's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// The file name the recipient gets, ending in `.zip`.
    pub name: String,
    pub members: Vec<ArchiveMember>,
}

/// One file of a ZIP link, as it was when the link was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveMember {
    /// Where the file is, beneath the data dir.
    pub path: RelPath,
    /// Its name in the archive (already cleaned and unique).
    pub name: String,
    pub stamp: Stamp,
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
            archive: None,
            upload: None,
            ceiling_s: 0,
            generation: 0,
            policy: Arc::default(),
        }
    }

    /// The name the recipient's download gets, in exact bytes: the file's, or the archive's.
    pub fn download_name(&self) -> Vec<u8> {
        match &self.archive {
            Some(a) => a.name.as_bytes().to_vec(),
            None => self.file_path.file_name_bytes(),
        }
    }

    /// The same name for people (`%XX` for bytes that are not UTF-8 text).
    pub fn display_name(&self) -> String {
        match &self.archive {
            Some(a) => a.name.clone(),
            None => self.file_path.display_name(),
        }
    }

    /// Whether the link receives files rather than shares them.
    pub fn is_upload(&self) -> bool {
        self.upload.is_some()
    }

    /// The token's `exp`: the ceiling, or the expiry itself for records made before it existed.
    pub fn token_exp_s(&self) -> u64 {
        match self.ceiling_s {
            0 => self.expires_at_ms / 1000,
            c => c,
        }
    }

    /// `file`, `zip` or `upload`.
    pub fn kind(&self) -> &'static str {
        match (&self.archive, &self.upload) {
            (_, Some(_)) => "upload",
            (Some(_), _) => "zip",
            _ => "file",
        }
    }

    /// Whether the link shares a ZIP archive rather than one file.
    pub fn is_zip(&self) -> bool {
        self.archive.is_some()
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

/// What an admitted request may do, as the check tells nginx and nginx writes into the
/// request's log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Use {
    /// No body (HEAD).
    Head,
    /// A read: charged to its address at the check, takes no slot.
    Read,
    /// Under the claim of this id, on this slot.
    Claim { slot: u32, id: Arc<str> },
    /// A range the completing client fetches again in the grace period.
    Grace,
}

impl Use {
    /// The value nginx logs for this request: `head`, `read`, `grace` or `c<slot>.<claim>`.
    pub fn header(&self) -> String {
        match self {
            Use::Head => "head".into(),
            Use::Read => "read".into(),
            Use::Grace => "grace".into(),
            Use::Claim { slot, id } => format!("c{slot}.{id}"),
        }
    }

    /// Reads a logged value back; anything else (a refused request logs "") is `None`.
    pub fn parse(v: &str) -> Option<Use> {
        match v {
            "head" => Some(Use::Head),
            "read" => Some(Use::Read),
            "grace" => Some(Use::Grace),
            _ => {
                let (slot, id) = v.strip_prefix('c')?.split_once('.')?;
                let ok = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric());
                Some(Use::Claim {
                    slot: slot.parse().ok().filter(|_| ok)?,
                    id: id.into(),
                })
            }
        }
    }
}
