//! What the tools take and what they give back, with the JSON Schemas agents see.
//!
//! A result is read from the admin API's JSON answer. Fields that carry text someone other
//! than the owner chose are renamed on the way (`note` becomes `untrusted_note`) and escaped as
//! they are read (see [`super::untrusted`]); fields the tools do not describe are left out, so a
//! token never reaches an agent except inside the URL it asked for.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::untrusted::{UntrustedPath, UntrustedText};

/// `list_files`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesArgs {
    /// A folder, relative to the data dir, e.g. `photos/2024`. Default: the folder agents may
    /// reach (`FERRY_MCP_ROOT`).
    pub path: Option<String>,
    /// Find files and folders whose name contains this text (any case) anywhere below `path`,
    /// instead of listing `path`.
    pub query: Option<String>,
}

/// `share_file`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareFileArgs {
    /// What to share, relative to the data dir (as `list_files` gives it): one file; or a
    /// folder, or several files and folders, which the recipient gets as one ZIP.
    #[serde(skip_serializing)]
    #[schemars(length(min = 1))]
    pub paths: Vec<String>,
    /// How long the link works, in seconds (default and most: ferry's `MAX_TUNNEL_SECONDS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub expires_in_seconds: Option<u64>,
    /// How many complete downloads the link allows (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_downloads: Option<u32>,
    /// A note for the owner's lists; the recipient never sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub note: Option<String>,
    /// A password the recipient must also give (HTTP Basic, any user name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `link_status` and `revoke_link`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkIdArgs {
    /// The link's `tunnel_id`, as `share_file`, `create_upload_link` or `list_links` gave it.
    pub tunnel_id: String,
}

/// `edit_link`: the link's id and the fields to change; a field left out stays as it is.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditLinkArgs {
    /// The link's `tunnel_id`.
    #[serde(skip_serializing)]
    pub tunnel_id: String,
    /// A new deadline (RFC 3339), no later than the link's creation plus `MAX_TUNNEL_SECONDS`;
    /// now or earlier ends the link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A new download allowance, not below the downloads completed or under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_downloads: Option<u32>,
    /// The most bytes per second a recipient gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate_limit_bytes_per_second: Option<u64>,
    /// A new note for the owner's lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub note: Option<String>,
    /// A new password, or null to remove the password.
    #[serde(default, deserialize_with = "given", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub password: Option<Option<String>>,
    /// Only these client addresses (CIDR, e.g. `203.0.113.0/24`) may download.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_cidrs: Option<Vec<String>>,
}

/// A field that is there, even as null (`Some(None)`), as opposed to left out (`None`).
fn given<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `create_upload_link`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadLinkArgs {
    /// The folder, relative to the data dir, that received files go into.
    pub folder: String,
    /// The largest file the link accepts, in bytes.
    #[schemars(range(min = 1))]
    pub max_bytes: u64,
    /// How many files the link accepts before it closes (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_files: Option<u32>,
    /// How long the link works, in seconds (default and most: ferry's `MAX_TUNNEL_SECONDS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub expires_in_seconds: Option<u64>,
    /// A note for the owner's lists; the sender never sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub note: Option<String>,
    /// A password the sender must also give.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A folder's entries, or what a search found.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct FileListing {
    /// The folder listed or searched.
    #[serde(rename(deserialize = "path"))]
    pub untrusted_path: UntrustedPath,
    pub entries: Vec<FileEntry>,
    /// A listing: how many entries the folder has (a listing shows the first 1,000).
    #[serde(default)]
    pub total: Option<u64>,
    /// A search: whether it stopped at its limits (500 results, 10,000 folders, 2 s).
    #[serde(default)]
    pub truncated: Option<bool>,
}

/// A file or folder in the data dir.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    /// Its path, as `share_file` and `list_files` take it.
    #[serde(rename(deserialize = "path"))]
    pub untrusted_path: UntrustedPath,
    pub is_dir: bool,
    /// Bytes (0 for a folder).
    pub size: u64,
    /// Last change, RFC 3339.
    pub modified: String,
}

/// A new download link.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Shared {
    /// The public URL, token included: whoever has it can download until the link is used up
    /// or expires.
    pub download_url: String,
    pub tunnel_id: String,
    /// When the link stops working, RFC 3339.
    pub expires_at: String,
    pub expires_in_seconds: u64,
    pub kind: Kind,
    /// Bytes the recipient gets (the file, or the whole ZIP).
    pub file_size: u64,
    /// What is shared (for several paths, the data dir itself).
    #[serde(rename(deserialize = "file_path"))]
    pub untrusted_path: UntrustedPath,
    /// What a ZIP left out, and why.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

/// An entry a ZIP left out.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Skipped {
    #[serde(rename(deserialize = "path"))]
    pub untrusted_path: UntrustedPath,
    pub reason: String,
}

/// A new upload link.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct UploadLink {
    /// The public URL, token included: whoever has it can send files into the folder until
    /// the link is used up or expires.
    pub upload_url: String,
    pub tunnel_id: String,
    #[serde(rename(deserialize = "folder"))]
    pub untrusted_folder: UntrustedPath,
    pub expires_at: String,
    pub expires_in_seconds: u64,
    pub max_files: u32,
    pub max_bytes: u64,
}

/// What a link shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One file.
    File,
    /// A folder or several paths as one ZIP.
    Zip,
    /// Files sent to the NAS.
    Upload,
}

/// Where a link is in its life; it only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Public, nothing served yet.
    Open,
    /// Public, a download is under way.
    Downloading,
    /// The allowance is used up; the last recipient may still finish.
    Completed,
    /// No longer public.
    Closed,
}

/// Why a link closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    Completed,
    Stalled,
    Expired,
    Terminated,
    Error,
}

/// A link, open or closed.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Link {
    pub tunnel_id: String,
    pub kind: Kind,
    pub state: State,
    /// What is shared; for an upload link, the folder files arrive in.
    #[serde(rename(deserialize = "file_path"))]
    pub untrusted_path: UntrustedPath,
    pub file_size: u64,
    /// The link's address without its token (it downloads nothing).
    pub public_url: String,
    pub created_at: String,
    pub expires_at: String,
    pub max_downloads: u32,
    pub downloads_completed: u32,
    pub bytes_served: u64,
    /// From 0 to 1: completed downloads plus the furthest one under way, over `max_downloads`.
    pub progress: f64,
    pub last_activity: Option<String>,
    pub close_reason: Option<CloseReason>,
    pub closed_at: Option<String>,
    /// Why it closed as `error`.
    #[serde(rename(deserialize = "close_detail"))]
    pub untrusted_close_detail: Option<UntrustedText>,
    #[serde(rename(deserialize = "note"))]
    pub untrusted_note: Option<UntrustedText>,
    pub rate_limit_bytes_per_second: Option<u64>,
    /// Who has downloaded from it (at most 32).
    #[serde(default)]
    pub clients: Vec<ClientSeen>,
    /// A ZIP's members, or the files an upload link received.
    #[serde(default)]
    pub files: Vec<FileSeen>,
    pub file_count: u64,
    /// An upload link: bytes received so far.
    #[serde(default)]
    pub bytes_received: u64,
    /// Whether recipients must give a password (never the password itself).
    #[serde(default)]
    pub password: bool,
    /// Locked after too many wrong passwords, until the owner edits it.
    #[serde(default)]
    pub locked: bool,
    /// The addresses allowed to use it; empty for any.
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// The latest deadline `edit_link` may set.
    #[serde(default)]
    pub max_expires_at: String,
}

/// A recipient: an address and the User-Agent it sent.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ClientSeen {
    pub address: String,
    #[serde(rename(deserialize = "user_agent"))]
    pub untrusted_user_agent: UntrustedText,
    pub bytes: u64,
}

/// A file in a ZIP, or one an upload link received.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct FileSeen {
    #[serde(rename(deserialize = "name"))]
    pub untrusted_name: UntrustedPath,
    pub size: u64,
}

/// Open links.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Links {
    #[serde(rename(deserialize = "tunnels"))]
    pub links: Vec<Link>,
}

/// A link and its latest requests.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct LinkStatus {
    #[serde(rename(deserialize = "tunnel"))]
    pub link: Link,
    /// Its last requests: those that ended, then those still running.
    pub requests: Vec<RequestSeen>,
}

/// One request for a link.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RequestSeen {
    pub time: String,
    pub client: String,
    #[serde(rename(deserialize = "user_agent"))]
    pub untrusted_user_agent: UntrustedText,
    pub method: String,
    /// Null while it runs.
    pub status: Option<u16>,
    pub bytes: u64,
    /// The `Range` it asked for.
    #[serde(rename(deserialize = "range"))]
    pub untrusted_range: Option<UntrustedText>,
    pub completed: bool,
    pub in_flight: bool,
}

/// A link ended by `revoke_link`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Revoked {
    pub tunnel_id: String,
    /// The link is closed: its URL no longer works.
    pub revoked: bool,
}
