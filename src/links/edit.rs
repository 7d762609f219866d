//! Changing a live link (SPEC §13): its expiry within its ceiling, its downloads, rate, note,
//! password, allowed addresses and notification URL, and rotating its token.

use std::sync::Arc;

use super::error::LinkError;
use super::event::EventKind;
use super::passwords::{MAX_PASSWORD, hash_password};
use super::rules;
use super::service::Links;
use crate::model::{Cidr, Link, LinkPolicy, LinkState, TunnelId, rfc3339};
use crate::store::Write;

/// The most address ranges one link may allow.
const MAX_CIDRS: usize = 64;

/// What a new link may say about who uses it and whom it tells.
#[derive(Debug, Clone, Default)]
pub struct NewPolicy {
    pub password: Option<String>,
    pub allow_cidrs: Option<Vec<String>>,
    pub notify_url: Option<String>,
}

/// An owner's changes to a link. A field left `None` stays as it is; `Some(None)` removes it.
#[derive(Debug, Clone, Default)]
pub struct LinkEdit {
    pub expires_at_ms: Option<u64>,
    pub max_downloads: Option<u32>,
    pub rate_limit_bytes_per_second: Option<Option<u64>>,
    pub note: Option<Option<String>>,
    pub password: Option<Option<String>>,
    /// `Some(vec![])` allows every address again.
    pub allow_cidrs: Option<Vec<String>>,
    pub notify_url: Option<Option<String>>,
}

impl LinkEdit {
    /// The names of the fields the edit changes, for the audit record (never their values).
    fn fields(&self) -> Vec<&'static str> {
        [
            ("expires_at", self.expires_at_ms.is_some()),
            ("max_downloads", self.max_downloads.is_some()),
            (
                "rate_limit_bytes_per_second",
                self.rate_limit_bytes_per_second.is_some(),
            ),
            ("note", self.note.is_some()),
            ("password", self.password.is_some()),
            ("allow_cidrs", self.allow_cidrs.is_some()),
            ("notify_url", self.notify_url.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// A new token for a link; the old one stops working at once.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Rotated {
    #[schema(value_type = String)]
    pub tunnel_id: TunnelId,
    /// The link's URL with its new token (for an upload link, its upload URL).
    pub download_url: String,
    pub token: String,
    pub expires_at: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> LinkError {
    LinkError::Invalid {
        field,
        message: message.into(),
    }
}

fn password_hash(password: &str) -> Result<String, LinkError> {
    if password.is_empty() {
        return Err(invalid("password", "must not be empty (null removes the password)"));
    }
    if password.len() > MAX_PASSWORD {
        return Err(invalid("password", format!("must be at most {MAX_PASSWORD} bytes")));
    }
    Ok(hash_password(password))
}

fn cidrs(given: &[String]) -> Result<Vec<Cidr>, LinkError> {
    if given.len() > MAX_CIDRS {
        return Err(invalid("allow_cidrs", format!("at most {MAX_CIDRS} ranges")));
    }
    given
        .iter()
        .map(|s| Cidr::parse(s.trim()).map_err(|e| invalid("allow_cidrs", e)))
        .collect()
}

fn notify_url(url: &str) -> Result<String, LinkError> {
    let ok = reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    match ok && url.len() <= 2048 {
        true => Ok(url.to_string()),
        false => Err(invalid("notify_url", "must be an http:// or https:// URL")),
    }
}

/// A note is the owner's words about a link, at most 500 characters.
pub(super) fn check_note(note: Option<&str>) -> Result<(), LinkError> {
    match note.is_some_and(|n| n.chars().count() > 500) {
        true => Err(LinkError::Invalid {
            field: "note",
            message: "must be at most 500 characters".into(),
        }),
        false => Ok(()),
    }
}

/// Runs argon2 off the async threads: it takes tens of milliseconds on purpose.
async fn hashed(password: String) -> Result<String, LinkError> {
    tokio::task::spawn_blocking(move || password_hash(&password))
        .await
        .map_err(|e| LinkError::Internal(format!("password hashing: {e}")))?
}

impl Links {
    /// The latest `expires_at` a link made at `now_ms` may ever have, in Unix seconds.
    pub(super) fn ceiling_s(&self, now_ms: u64) -> u64 {
        (now_ms + self.policy.max_tunnel_s * 1000).div_ceil(1000)
    }

    pub(super) fn check_max_downloads(&self, n: u32) -> Result<(), LinkError> {
        let limit = self.policy.max_downloads_limit;
        match n {
            0 => Err(invalid("max_downloads", "must be at least 1")),
            n if n > limit => Err(invalid(
                "max_downloads",
                format!("must be at most {limit} (FERRY_MAX_DOWNLOADS_LIMIT)"),
            )),
            _ => Ok(()),
        }
    }

    /// Checks a new link's policy and hashes its password.
    pub(super) async fn new_policy(&self, p: NewPolicy) -> Result<LinkPolicy, LinkError> {
        Ok(LinkPolicy {
            allow_cidrs: cidrs(p.allow_cidrs.as_deref().unwrap_or_default())?,
            notify_url: p.notify_url.as_deref().map(notify_url).transpose()?,
            password_hash: match p.password {
                Some(pw) => Some(hashed(pw).await?),
                None => None,
            },
            ..LinkPolicy::default()
        })
    }

    /// Applies `edit` to the open link `id` for `by` (the API client, for the audit record).
    pub async fn edit(&self, id: &str, edit: LinkEdit, by: Option<&str>) -> Result<Arc<Link>, LinkError> {
        let id = TunnelId::parse(id).map_err(|_| LinkError::NotFound)?;
        let fields = edit.fields();
        if fields.is_empty() {
            return Err(invalid("body", "name at least one field to change"));
        }
        if let Some(n) = edit.max_downloads {
            self.check_max_downloads(n)?;
        }
        if edit.rate_limit_bytes_per_second == Some(Some(0)) {
            return Err(invalid(
                "rate_limit_bytes_per_second",
                "must be at least 1 (null removes the limit)",
            ));
        }
        if let Some(note) = &edit.note {
            check_note(note.as_deref())?;
        }
        let allow = edit.allow_cidrs.as_deref().map(cidrs).transpose()?;
        let notify = match &edit.notify_url {
            Some(Some(url)) => Some(Some(notify_url(url)?)),
            Some(None) => Some(None),
            None => None,
        };
        let password = match edit.password.clone() {
            Some(Some(pw)) => Some(Some(hashed(pw).await?)),
            Some(None) => Some(None),
            None => None,
        };
        let now = self.clock.now_ms();
        let p = self.policy;
        let mut refused = None;
        let updated = self
            .store
            .update(&id, &mut |link| {
                if link.state == LinkState::Closed {
                    refused = Some(LinkError::Conflict("the link is closed".into()));
                    return Write::No(());
                }
                if let Err(e) = apply(link, &edit, now, &p) {
                    refused = Some(e);
                    return Write::No(());
                }
                let policy = Arc::make_mut(&mut link.policy);
                if let Some(a) = &allow {
                    policy.allow_cidrs.clone_from(a);
                }
                if let Some(n) = &notify {
                    policy.notify_url.clone_from(n);
                }
                if let Some(pw) = &password {
                    policy.password_hash.clone_from(pw);
                }
                // Any edit by the owner lifts a lock that wrong passwords set.
                policy.locked = false;
                policy.password_fails = 0;
                Write::Durable(())
            })
            .await?;
        if let Some(e) = refused {
            return Err(e);
        }
        let Some(((), link)) = updated else {
            return Err(LinkError::NotFound);
        };
        self.audit("link.edited", by, Some(id.as_str()), Some(fields.join(", ")))
            .await;
        if link.expires_at_ms <= now {
            // `expired`, or `completed` for a link whose downloads were all done.
            self.close_if_due(&id).await?;
        } else {
            self.remind(link.expires_at_ms);
            self.emit(EventKind::Edited, &link);
        }
        // A change to downloads may have completed the link (its grace period now runs).
        self.wake.notify_one();
        Ok(self.store.get(&id).await?.unwrap_or(link))
    }

    /// Gives the open link `id` a new token; every earlier token of it stops working at once.
    pub async fn rotate(&self, id: &str, by: Option<&str>) -> Result<Rotated, LinkError> {
        let id = TunnelId::parse(id).map_err(|_| LinkError::NotFound)?;
        let updated = self
            .store
            .update(&id, &mut |link| {
                if link.state == LinkState::Closed {
                    return Write::No(false);
                }
                link.generation += 1;
                Write::Durable(true)
            })
            .await?;
        let link = match updated {
            None => return Err(LinkError::NotFound),
            Some((false, _)) => return Err(LinkError::Conflict("the link is closed".into())),
            Some((true, link)) => link,
        };
        self.audit("link.rotated", by, Some(id.as_str()), None).await;
        self.emit(EventKind::Edited, &link);
        Ok(Rotated {
            tunnel_id: id,
            download_url: match link.is_upload() {
                true => self.upload_url(&link),
                false => self.download_url(&link),
            },
            token: self.token(&link),
            expires_at: rfc3339(link.expires_at_ms),
        })
    }
}

/// The changes of `edit` that concern the link's life: expiry, downloads, rate and note.
fn apply(link: &mut Link, edit: &LinkEdit, now: u64, p: &rules::Policy) -> Result<(), LinkError> {
    if let Some(at) = edit.expires_at_ms {
        let ceiling = link.token_exp_s() * 1000;
        if at > ceiling {
            let message = format!(
                "must be at most {} (the link's creation plus MAX_TUNNEL_SECONDS)",
                rfc3339(ceiling)
            );
            return Err(invalid("expires_at", message));
        }
        link.expires_at_ms = at;
    }
    if let Some(n) = edit.max_downloads {
        if link.is_upload() {
            return Err(invalid(
                "max_downloads",
                "an upload link takes files (max_files), not downloads",
            ));
        }
        rules::set_max_downloads(link, n, now, p).map_err(|m| invalid("max_downloads", m))?;
    }
    if let Some(rate) = edit.rate_limit_bytes_per_second {
        link.rate_limit_bytes_per_second = rate;
    }
    if let Some(note) = &edit.note {
        link.note.clone_from(note);
    }
    Ok(())
}
