//! Creating a link: resolve the file safely, record it durably, expose it, hand out the URL.

use std::sync::Arc;

use serde::Serialize;

use super::archive::Collected;
use super::edit::{NewPolicy, check_note};
use super::error::LinkError;
use super::event::EventKind;
use super::service::Links;
use crate::data_dir::{FileIdentity, PathError, RelPath, Skipped};
use crate::model::{Link, TunnelId, rfc3339};

/// What the owner asked for.
#[derive(Debug, Clone)]
pub struct NewLink {
    pub file_path: RelPath,
    /// Several files and folders to share as one ZIP; `file_path` is then unused.
    pub file_paths: Option<Vec<RelPath>>,
    pub expires_in: Option<u64>,
    pub max_downloads: Option<u32>,
    pub note: Option<String>,
    pub rate_limit_bytes_per_second: Option<u64>,
    /// The password, addresses and notification URL the link starts with.
    pub policy: NewPolicy,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    pub download_url: String,
    #[schema(value_type = String)]
    pub tunnel_id: TunnelId,
    pub token: String,
    pub file_path: String,
    /// `file` for one file, `zip` for a folder or several paths shared as one archive.
    pub kind: &'static str,
    /// The size of what the recipient gets: the file, or the whole archive.
    pub file_size: u64,
    pub expires_in_seconds: u64,
    pub expires_at: String,
    /// What a ZIP link left out, and why (empty for one file).
    pub skipped: Vec<Skipped>,
}

/// What a link shares, found when it is made.
enum Source {
    File(crate::data_dir::Resolved),
    Zip(Collected),
}

impl Links {
    /// Creates a link for `by` (the API client's address, for the audit record): resolve the
    /// file safely, record the link durably, expose it (symlink, then tunnel), and only then
    /// hand out the URL. If exposing fails, the link is closed as `error` and nothing stays
    /// reachable.
    pub async fn create(&self, req: NewLink, by: Option<&str>) -> Result<(Created, Link), LinkError> {
        let (expires_in, max_downloads) = self.validate(&req)?;
        let source = self.source(&req)?;
        let now = self.clock.now_ms();
        let exp_s = (now + expires_in * 1000).div_ceil(1000);
        let (path, identity) = match &source {
            Source::File(r) => (req.file_path.clone(), r.identity),
            // An archive is made when the link is: its ETag comes from that moment.
            Source::Zip(c) => (
                c.folder.clone(),
                FileIdentity {
                    dev: 0,
                    ino: 0,
                    size: c.total,
                    mtime_ns: i128::from(now) * 1_000_000,
                },
            ),
        };
        let mut link = Link {
            note: req.note,
            rate_limit_bytes_per_second: req.rate_limit_bytes_per_second,
            ceiling_s: self.ceiling_s(now),
            policy: Arc::new(self.new_policy(req.policy).await?),
            ..Link::new(TunnelId::random(), path, identity, now, exp_s * 1000, max_downloads)
        };
        let (target, skipped) = match source {
            Source::File(r) => (Some(r.real_path), Vec::new()),
            Source::Zip(c) => {
                link.archive = Some(Arc::new(c.info));
                (None, c.skipped)
            }
        };
        self.publish(&link, target.as_deref(), by).await?;
        let created = Created {
            download_url: self.download_url(&link),
            tunnel_id: link.id.clone(),
            token: self.token(&link),
            file_path: link.file_path.to_string(),
            kind: if link.is_zip() { "zip" } else { "file" },
            file_size: link.file_size,
            expires_in_seconds: expires_in,
            expires_at: rfc3339(link.expires_at_ms),
            skipped,
        };
        Ok((created, link))
    }

    /// What the request shares: one regular file, or a folder or several paths as one archive.
    fn source(&self, req: &NewLink) -> Result<Source, LinkError> {
        let whole = |field| LinkError::Invalid {
            field,
            message: "the data dir itself cannot be shared; name a file or a folder in it".into(),
        };
        if let Some(paths) = &req.file_paths {
            if paths.is_empty() {
                return Err(LinkError::Invalid {
                    field: "file_paths",
                    message: "must name at least one file or folder".into(),
                });
            }
            if paths.iter().any(RelPath::is_root) {
                return Err(whole("file_paths"));
            }
            return self.collect("file_paths", paths).map(Source::Zip);
        }
        if req.file_path.is_root() {
            return Err(whole("file_path"));
        }
        match self.data.resolve_file(&req.file_path) {
            Ok(r) => Ok(Source::File(r)),
            Err(PathError::Folder) => self
                .collect("file_path", std::slice::from_ref(&req.file_path))
                .map(Source::Zip),
            Err(e) => Err(LinkError::Path(e)),
        }
    }

    /// Stores a new link durably, exposes it (its directory, with `target` as its file, then its
    /// tunnel), and announces it. If exposing fails, the link is closed as `error` and nothing
    /// stays reachable.
    pub(super) async fn publish(
        &self,
        link: &Link,
        target: Option<&std::path::Path>,
        by: Option<&str>,
    ) -> Result<(), LinkError> {
        self.store_new(link, by).await?;
        // A ZIP link's hashing starts at once, so that the archive is ready by the time a
        // recipient asks.
        self.archive(link);
        if let Err(e) = self.expose(&link.id, target).await {
            tracing::error!(tunnel_id = %link.id, error = %e, "could not expose link");
            self.close_error(&link.id, e.to_string()).await?;
            return Err(e);
        }
        self.remind(link.expires_at_ms);
        metrics::counter!("ferry_links_created_total").increment(1);
        self.emit(EventKind::Created, link);
        Ok(())
    }

    /// The request's expiry (seconds from now) and number of downloads, or what is wrong with it.
    fn validate(&self, req: &NewLink) -> Result<(u64, u32), LinkError> {
        let invalid = |field, message: String| Err(LinkError::Invalid { field, message });
        let expires_in = self.expiry(req.expires_in, req.note.as_deref())?;
        let max_downloads = req.max_downloads.unwrap_or(self.policy.default_max_downloads);
        self.check_max_downloads(max_downloads)?;
        if req.rate_limit_bytes_per_second == Some(0) {
            return invalid("rate_limit_bytes_per_second", "must be at least 1".into());
        }
        Ok((expires_in, max_downloads))
    }

    /// A new link's expiry in seconds from now (`MAX_TUNNEL_SECONDS` unless asked), after checking
    /// it and the note that every kind of link may carry.
    pub(super) fn expiry(&self, asked: Option<u64>, note: Option<&str>) -> Result<u64, LinkError> {
        let expires_in = asked.unwrap_or(self.policy.default_expires_s);
        if !(1..=self.policy.max_tunnel_s).contains(&expires_in) {
            let max = self.policy.max_tunnel_s;
            return Err(LinkError::Invalid {
                field: "expires_in_seconds",
                message: format!("must be between 1 and {max} (MAX_TUNNEL_SECONDS)"),
            });
        }
        check_note(note)?;
        Ok(expires_in)
    }

    /// Writes a new link with its audit record, in one durable write.
    async fn store_new(&self, link: &Link, by: Option<&str>) -> Result<(), LinkError> {
        let audit = crate::store::audit::AuditRecord {
            time_ms: link.created_at_ms,
            event: "link.created".into(),
            client: by.map(String::from),
            tunnel_id: Some(link.id.to_string()),
            detail: Some(link.file_path.to_string()),
        };
        let Err(e) = self.store.insert_audited(link, Some(&audit)).await else {
            return Ok(());
        };
        // When the write fails, the embedded store keeps the record in memory and writes it once
        // it can. The record must then say that this link never got a URL, instead of staying
        // open until it expires. Redis stores a link whole or not at all, so it needs no close.
        if self.peers.is_none()
            && let Err(e) = self
                .close_error(&link.id, format!("the link could not be stored: {e}"))
                .await
        {
            tracing::debug!(tunnel_id = %link.id, error = %e, "the unstored link's close waits for the store");
        }
        Err(e.into())
    }

    /// Makes a stored link reachable: its directory (with the symlink to its file, unless it is an
    /// archive, which nginx asks ferry for), then its tunnel.
    async fn expose(&self, id: &TunnelId, target: Option<&std::path::Path>) -> Result<(), LinkError> {
        self.link_dir(id, target)
            .await
            .map_err(|e| LinkError::Internal(format!("symlink: {e}")))?;
        let started = std::time::Instant::now();
        let opened = self.provider.open(id).await;
        metrics::histogram!("ferry_provider_call_seconds", "op" => "open").record(started.elapsed().as_secs_f64());
        opened.map_err(|e| LinkError::Tunnel(e.to_string()))
    }

    pub(super) async fn link_dir(&self, id: &TunnelId, target: Option<&std::path::Path>) -> std::io::Result<()> {
        let dir = self.tunnels_dir.join(id.as_str());
        tokio::fs::create_dir(&dir).await?;
        match target {
            Some(target) => tokio::fs::symlink(target, dir.join("file")).await,
            None => Ok(()),
        }
    }
}
