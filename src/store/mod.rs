//! State: where links live. [`Store`] is chosen at launch (embedded today; Redis later) and every
//! backend offers the same operations with the same guarantees:
//!
//! - `update` is atomic per link: the closure sees the current record and its result is written
//!   before anyone else sees the link (claims and completions rely on this).
//! - A write marked [`Write::Durable`] survives `kill -9` once `update` returns.
//! - Live links never expire by themselves; only the teardown procedure closes them.
//!
//! The store never decides anything about a link; it only keeps it.

pub mod audit;
pub mod embedded;

use crate::links::{Link, TunnelId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// How an `update` closure wants its change kept.
pub enum Write<R> {
    /// Nothing changed.
    No(R),
    /// Changed, but losing it in a crash is harmless (e.g. a request in flight).
    Soft(R),
    /// Changed and must survive a crash (claims, completions, closes).
    Durable(R),
}

impl<R> Write<R> {
    pub fn into_inner(self) -> R {
        match self {
            Write::No(r) | Write::Soft(r) | Write::Durable(r) => r,
        }
    }
}

pub type Updater<'a, R> = dyn FnMut(&mut Link) -> Write<R> + Send + 'a;

pub enum Store {
    Embedded(embedded::Embedded),
}

impl Store {
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Embedded(_) => "embedded",
        }
    }

    pub async fn insert(&self, link: &Link) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.insert(link).await,
        }
    }

    pub async fn get(&self, id: &TunnelId) -> Result<Option<Link>, StoreError> {
        match self {
            Store::Embedded(s) => s.get(id),
        }
    }

    /// Runs `f` atomically on the link; `None` when there is no such link.
    pub async fn update<R>(&self, id: &TunnelId, f: &mut Updater<'_, R>) -> Result<Option<R>, StoreError> {
        match self {
            Store::Embedded(s) => s.update(id, f).await,
        }
    }

    /// Links not yet closed.
    pub async fn list_open(&self) -> Result<Vec<Link>, StoreError> {
        match self {
            Store::Embedded(s) => s.list_open(),
        }
    }

    /// Closed links, newest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<Link>, StoreError> {
        match self {
            Store::Embedded(s) => s.history(limit),
        }
    }

    /// Forgets closed links that closed before `before_ms`, and audit records as old (retention).
    pub async fn purge_history(&self, before_ms: u64) -> Result<usize, StoreError> {
        match self {
            Store::Embedded(s) => s.purge_history(before_ms),
        }
    }

    pub async fn audit(&self, rec: &audit::AuditRecord) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.audit(rec),
        }
    }

    pub async fn audit_query(&self, event: Option<&str>, limit: usize) -> Result<Vec<audit::AuditRecord>, StoreError> {
        match self {
            Store::Embedded(s) => s.audit_query(event, limit),
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(_) => Ok(()),
        }
    }
}
