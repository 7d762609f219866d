//! Upload links (SPEC §12): making one, and each file's way through it. A file takes one of the
//! link's places, its bytes go to a partial file beside the folder, and once complete it moves
//! into the folder under its cleaned name; otherwise its partial data is removed. The link closes
//! as `completed` when its last place is received.

use std::sync::Arc;

use serde::Serialize;

use super::error::LinkError;
use super::event::EventKind;
use super::guard::Terms;
use super::passwords::Visitor;
use super::rules::Refusal;
use super::service::Links;
use crate::data_dir::{FileIdentity, RelPath};
use crate::inbox::{Inbox, InboxError, names};
use crate::model::{
    CloseReason, Incoming, IncomingState, Link, LinkState, ReceivedFile, TunnelId, UploadInfo, random_token, rfc3339,
};
use crate::store::Write;

/// The most files one upload link may receive.
const MAX_FILES: u32 = 1000;
/// Room kept free on the data dir's file system, besides what uploads under way will need.
const SPACE_MARGIN: u64 = 64 << 20;

/// What the owner asked for.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub folder: RelPath,
    pub expires_in: Option<u64>,
    pub max_files: Option<u32>,
    pub max_bytes: u64,
    pub note: Option<String>,
    pub policy: super::edit::NewPolicy,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadCreated {
    /// What a sender opens (a page) or sends to (`curl -T file <upload_url>`, tus).
    pub upload_url: String,
    #[schema(value_type = String)]
    pub tunnel_id: TunnelId,
    pub folder: String,
    pub kind: &'static str,
    pub expires_in_seconds: u64,
    pub expires_at: String,
    pub max_files: u32,
    pub max_bytes: u64,
}

/// Why a file cannot begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginError {
    /// The declared length is over the link's `max_bytes` (413).
    TooLarge,
    /// The data dir has no room for it (507).
    NoRoom,
    /// Refused outright (444).
    Refused(Refusal),
}

/// The name of an upload's partial file: the link's id, a dot, the upload's id.
pub fn partial_key(link: &TunnelId, upload: &str) -> String {
    format!("{link}.{upload}")
}

impl Links {
    /// Makes an upload link into `req.folder`, which must be a folder ferry can write to.
    pub async fn create_upload(&self, req: NewUpload, by: Option<&str>) -> Result<(UploadCreated, Link), LinkError> {
        let expires_in = self.expiry(req.expires_in, req.note.as_deref())?;
        let max_files = req.max_files.unwrap_or(1);
        if !(1..=MAX_FILES).contains(&max_files) {
            let message = format!("must be between 1 and {MAX_FILES}");
            return Err(LinkError::Invalid {
                field: "max_files",
                message,
            });
        }
        if req.folder.is_root() {
            let message = "name a folder inside the data dir, not the data dir itself".into();
            return Err(LinkError::Invalid {
                field: "folder",
                message,
            });
        }
        if req.max_bytes == 0 {
            let message = "must be at least 1".into();
            return Err(LinkError::Invalid {
                field: "max_bytes",
                message,
            });
        }
        let inbox = Inbox::open(&self.data, &req.folder, None).map_err(|e| match e {
            InboxError::Path(p) => LinkError::FolderPath(p),
            e => LinkError::Conflict(format!("folder: {e}")),
        })?;
        inbox
            .writable()
            .map_err(|e| LinkError::Conflict(format!("folder: {e}")))?;
        let now = self.clock.now_ms();
        let exp_s = (now + expires_in * 1000).div_ceil(1000);
        let identity = FileIdentity {
            dev: inbox.id.0,
            ino: inbox.id.1,
            size: 0,
            mtime_ns: i128::from(now) * 1_000_000,
        };
        let info = UploadInfo {
            folder_id: inbox.id,
            max_files,
            max_bytes: req.max_bytes,
            files: Vec::new(),
        };
        let link = Link {
            note: req.note,
            upload: Some(Arc::new(info)),
            ceiling_s: self.ceiling_s(now),
            policy: Arc::new(self.new_policy(req.policy).await?),
            ..Link::new(TunnelId::random(), req.folder, identity, now, exp_s * 1000, max_files)
        };
        self.publish(&link, None, by).await?;
        let created = UploadCreated {
            upload_url: self.upload_url(&link),
            tunnel_id: link.id.clone(),
            folder: link.file_path.to_string(),
            kind: "upload",
            expires_in_seconds: expires_in,
            expires_at: rfc3339(link.expires_at_ms),
            max_files,
            max_bytes: req.max_bytes,
        };
        Ok((created, link))
    }

    /// The URL a sender gets: the link's public path and its token.
    pub fn upload_url(&self, link: &Link) -> String {
        format!("{}?t={}", self.public_url(link), self.token(link))
    }

    /// The open upload link `id`, if `token` is its own.
    pub async fn upload_link(&self, id: &str, token: &str, visitor: &Visitor<'_>) -> Result<Arc<Link>, Refusal> {
        let link = self.live_link(id, token, visitor).await?;
        if !link.is_upload() {
            return Err(Refusal::Unknown);
        }
        Ok(link)
    }

    /// Starts a file called `name` (as the sender gave it) of `length` bytes (when declared):
    /// it takes one of the link's places, atomically.
    pub async fn begin_upload(&self, link: &Link, name: &str, length: Option<u64>) -> Result<Incoming, BeginError> {
        let inbox = self.upload_fits(link, length).await?;
        let now = self.clock.now_ms();
        let incoming = Incoming {
            id: random_token(12).into(),
            name: names::clean(name),
            length,
            received: 0,
            state: IncomingState::Receiving,
            started_ms: now,
            last_ms: now,
        };
        // The sender was let in under these terms; a rotation or a new password since then wins.
        let terms = Terms::of(link);
        let taken = self
            .store
            .update(&link.id, &mut |l| {
                if !terms.still(l) {
                    return Write::No(Err(Refusal::TermsChanged));
                }
                let open = l.state != LinkState::Closed && now < l.expires_at_ms;
                let Some(info) = l.upload.as_mut().filter(|_| open) else {
                    return Write::No(Err(Refusal::Closed));
                };
                if info.taken() >= info.max_files as usize {
                    return Write::No(Err(Refusal::UsedUp));
                }
                Arc::make_mut(info).files.push(incoming.clone());
                l.state = l.state.max(LinkState::Downloading);
                l.last_activity_ms = Some(now);
                Write::Durable(Ok(()))
            })
            .await
            .map_err(|_| BeginError::Refused(Refusal::Unavailable))?;
        let Some((taken, link)) = taken else {
            return Err(BeginError::Refused(Refusal::Unknown));
        };
        taken.map_err(BeginError::Refused)?;
        inbox
            .partial(&partial_key(&link.id, &incoming.id), true)
            .map_err(|_| BeginError::Refused(Refusal::Unavailable))?;
        self.emit(EventKind::UploadStarted, &link);
        Ok(incoming)
    }

    /// Whether a file of `length` bytes (when declared) may be sent to `link`: not over its
    /// `max_bytes`, and with room on the data dir's file system, less a margin and what uploads
    /// under way still need. Returns the link's folder.
    pub async fn upload_fits(&self, link: &Link, length: Option<u64>) -> Result<Inbox, BeginError> {
        let info = link.upload.as_ref().ok_or(BeginError::Refused(Refusal::Unknown))?;
        if length.is_some_and(|n| n > info.max_bytes) {
            return Err(BeginError::TooLarge);
        }
        let inbox = match self.inbox(link) {
            Ok(inbox) => inbox,
            Err(e) => {
                // As for a download link whose file changed: the link cannot do what it was made
                // for, so it closes rather than write anywhere else.
                let why = match self.data.available() {
                    Err(gone) => gone.to_string(),
                    Ok(()) => format!("the upload folder: {e}"),
                };
                tracing::warn!(tunnel_id = %link.id, reason = %why, "the upload folder is not the one the link was made for; closing the link");
                let _ = Box::pin(self.close_error(&link.id, why)).await;
                return Err(BeginError::Refused(Refusal::FileChanged));
            }
        };
        if let Some(n) = length {
            let reserved = self.reserved_for_uploads().await;
            let free = inbox.free_bytes().unwrap_or(u64::MAX);
            if free.saturating_sub(SPACE_MARGIN).saturating_sub(reserved) < n {
                return Err(BeginError::NoRoom);
            }
        }
        Ok(inbox)
    }

    /// The bytes that uploads under way on any link still need (declared less received).
    async fn reserved_for_uploads(&self) -> u64 {
        let Ok(open) = self.store.list_open().await else {
            return 0;
        };
        open.iter()
            .filter_map(|l| l.upload.as_ref())
            .flat_map(|u| &u.files)
            .filter(|f| f.state == IncomingState::Receiving)
            .map(|f| f.length.unwrap_or(0).saturating_sub(f.received))
            .sum()
    }

    /// The link's folder, checked to be the one it was made for.
    pub fn inbox(&self, link: &Link) -> Result<Inbox, InboxError> {
        let expect = link.upload.as_ref().map(|u| u.folder_id);
        Inbox::open(&self.data, &link.file_path, expect)
    }

    /// Records that upload `upload` of `link` has `received` bytes.
    pub async fn upload_progress(&self, link: &TunnelId, upload: &str, received: u64) {
        let now = self.clock.now_ms();
        let updated = self
            .store
            .update(link, &mut |l| match incoming_mut(l, upload) {
                Some(f) if f.state == IncomingState::Receiving => {
                    f.received = received;
                    f.last_ms = now;
                    l.last_activity_ms = Some(now);
                    l.last_progress_ms = Some(now);
                    Write::Soft(())
                }
                _ => Write::No(()),
            })
            .await;
        if let Ok(Some((_, l))) = updated {
            self.emit_progress(&l);
        }
    }

    /// Moves the complete upload `upload` into the folder, with the SHA-256 `sha256` of its
    /// bytes, and closes the link when this was its last place.
    pub async fn finish_upload(
        &self,
        link: &Link,
        upload: &str,
        size: u64,
        sha256: String,
    ) -> Result<ReceivedFile, LinkError> {
        // The caller's copy of the record may be older than the upload.
        let link = self.store.get(&link.id).await?.ok_or(LinkError::NotFound)?;
        let incoming = link
            .upload
            .as_ref()
            .and_then(|u| {
                u.files
                    .iter()
                    .find(|f| &*f.id == upload && f.state == IncomingState::Receiving)
            })
            .ok_or(LinkError::NotFound)?;
        let inbox = self.inbox(&link).map_err(|e| LinkError::Internal(e.to_string()))?;
        let key = partial_key(&link.id, upload);
        let name = incoming.name.clone();
        let name = tokio::task::spawn_blocking(move || inbox.finish(&key, &name))
            .await
            .map_err(|e| LinkError::Internal(e.to_string()))?
            .map_err(|e| LinkError::Internal(e.to_string()))?;
        let file = ReceivedFile { name, size, sha256 };
        let now = self.clock.now_ms();
        let done = self
            .store
            .update(&link.id, &mut |l| {
                if let Some(f) = incoming_mut(l, upload) {
                    f.received = size;
                    f.last_ms = now;
                    f.state = IncomingState::Received {
                        name: file.name.clone(),
                        sha256: file.sha256.clone(),
                    };
                }
                let info = l.upload.as_ref().expect("an upload link");
                l.downloads_completed = info.received() as u32;
                Write::Durable(info.received() >= info.max_files as usize)
            })
            .await?;
        if let Some((last, l)) = done {
            tracing::info!(tunnel_id = %l.id, name = %file.name, size, "file received");
            self.emit_received(&l, &file);
            if last {
                self.close(&l.id, CloseReason::Completed).await?;
            }
        }
        Ok(file)
    }

    /// Gives upload `upload` up: its place is freed and its partial data removed.
    pub async fn abandon_upload(&self, link: &Link, upload: &str) {
        let _ = self
            .store
            .update(&link.id, &mut |l| match incoming_mut(l, upload) {
                Some(f) if f.state == IncomingState::Receiving => {
                    f.state = IncomingState::Abandoned;
                    Write::Durable(())
                }
                _ => Write::No(()),
            })
            .await;
        if let Ok(inbox) = self.inbox(link) {
            let key = partial_key(&link.id, upload);
            let _ = tokio::task::spawn_blocking(move || inbox.remove_partials(&key)).await;
        }
    }

    /// Abandons the uploads that have been idle for the stall timeout.
    pub async fn sweep_uploads(&self) {
        let now = self.clock.now_ms();
        let Ok(open) = self.store.list_open().await else { return };
        for link in open.iter().filter(|l| l.is_upload()) {
            let idle: Vec<Arc<str>> = link
                .upload
                .iter()
                .flat_map(|u| &u.files)
                .filter(|f| f.state == IncomingState::Receiving && now >= f.last_ms + self.policy.stall_ms)
                .filter(|f| !self.uploads_busy.is_busy(&partial_key(&link.id, &f.id)))
                .map(|f| f.id.clone())
                .collect();
            for upload in idle {
                tracing::info!(tunnel_id = %link.id, upload = %upload, "abandoning an idle upload");
                self.abandon_upload(link, &upload).await;
            }
        }
    }

    /// Removes the partial data of every upload of a closed link.
    pub(super) async fn remove_partials_of(&self, link: &Link) {
        if let Ok(inbox) = self.inbox(link) {
            let prefix = format!("{}.", link.id);
            let _ = tokio::task::spawn_blocking(move || inbox.remove_partials(&prefix)).await;
        }
    }

    pub fn uploads_busy(&self) -> &super::busy::Busy {
        &self.uploads_busy
    }
}

fn incoming_mut<'a>(link: &'a mut Link, upload: &str) -> Option<&'a mut Incoming> {
    let info = Arc::make_mut(link.upload.as_mut()?);
    info.files.iter_mut().find(|f| &*f.id == upload)
}
