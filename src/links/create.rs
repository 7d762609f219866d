//! Creating a link: resolve the file safely, record it durably, expose it, hand out the URL.

use serde::Serialize;

use super::error::LinkError;
use super::event::EventKind;
use super::service::Links;
use crate::data_dir::RelPath;
use crate::model::{Link, TunnelId, rfc3339};

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

impl Links {
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
            if self.peers.is_none()
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
        self.emit(EventKind::Created, &link);
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

    pub(super) async fn link_dir(&self, id: &TunnelId, target: &std::path::Path) -> std::io::Result<()> {
        let dir = self.tunnels_dir.join(id.as_str());
        tokio::fs::create_dir(&dir).await?;
        tokio::fs::symlink(target, dir.join("file")).await
    }
}
