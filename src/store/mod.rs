//! State: where links live. [`Store`] is chosen at launch (embedded, or Redis with `REDIS_URL`)
//! and every backend offers the same operations with the same guarantees:
//!
//! - `update` is atomic per link: the closure sees the current record and its result is written
//!   before anyone else sees the link (claims and completions rely on this).
//! - A write marked [`Write::Durable`] survives `kill -9` once `update` returns.
//! - Live links never expire by themselves; only the teardown procedure closes them.
//!
//! With Redis several instances share the state; who owns which link is `peers.rs`'s business.
//!
//! The store never decides anything about a link; it only keeps it.

pub mod audit;
mod backend;
pub mod embedded;
pub mod redis;

use std::sync::Arc;

use crate::model::{Link, TunnelId};
pub use backend::{StoreError, Updater, Write};

pub enum Store {
    Embedded(Box<embedded::Embedded>),
    Redis(Box<redis::Redis>),
}

impl Store {
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Embedded(_) => "embedded",
            Store::Redis(_) => "redis",
        }
    }

    pub async fn insert(&self, link: &Link) -> Result<(), StoreError> {
        self.insert_audited(link, None).await
    }

    /// Writes a new link together with its audit record: one durable write, not two.
    pub async fn insert_audited(&self, link: &Link, audit: Option<&audit::AuditRecord>) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.insert(link, audit).await,
            Store::Redis(s) => s.insert(link, audit).await,
        }
    }

    pub async fn get(&self, id: &TunnelId) -> Result<Option<Arc<Link>>, StoreError> {
        match self {
            Store::Embedded(s) => s.get(id),
            Store::Redis(s) => s.get(id).await,
        }
    }

    /// Runs `f` atomically on the link; `None` when there is no such link. Returns `f`'s result
    /// and the record as `f` left it (with `Write::No`, changes that were not kept).
    pub async fn update<R>(&self, id: &TunnelId, f: &mut Updater<'_, R>) -> Result<Option<(R, Arc<Link>)>, StoreError> {
        match self {
            Store::Embedded(s) => s.update(id, f).await,
            Store::Redis(s) => s.update(id, f).await,
        }
    }

    /// Makes every write acknowledged so far survive a crash. With Redis, each write already does,
    /// as far as the server's AOF settings allow (see `Durability`).
    pub async fn persist(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.persist().await,
            Store::Redis(_) => Ok(()),
        }
    }

    /// Where the writes acknowledged so far stand, for `is_durable`.
    pub fn mark(&self) -> u64 {
        match self {
            Store::Embedded(s) => s.mark(),
            Store::Redis(_) => 0,
        }
    }

    /// Whether every write acknowledged before `mark` was taken survives a crash now, without
    /// waiting for anything. With Redis this is always true, as for `persist`.
    pub fn is_durable(&self, mark: u64) -> bool {
        match self {
            Store::Embedded(s) => s.is_durable(mark),
            Store::Redis(_) => true,
        }
    }

    /// Writes out soft writes still held in memory. With Redis, each write has already gone out.
    pub fn flush(&self) {
        if let Store::Embedded(s) = self {
            s.flush();
        }
    }

    /// Links not yet closed.
    pub async fn list_open(&self) -> Result<Vec<Arc<Link>>, StoreError> {
        match self {
            Store::Embedded(s) => s.list_open(),
            Store::Redis(s) => s.list_open().await,
        }
    }

    /// How many links are not closed (without loading them).
    pub async fn count_open(&self) -> Result<usize, StoreError> {
        match self {
            Store::Embedded(s) => Ok(s.count_open()),
            Store::Redis(s) => s.count_open().await,
        }
    }

    /// Closed links, newest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<Link>, StoreError> {
        match self {
            Store::Embedded(s) => s.history(limit),
            Store::Redis(s) => s.history(limit).await,
        }
    }

    /// Forgets closed links that closed before `before_ms`, and audit records as old (retention).
    pub async fn purge_history(&self, before_ms: u64) -> Result<usize, StoreError> {
        match self {
            Store::Embedded(s) => s.purge_history(before_ms).await,
            Store::Redis(s) => s.purge_history(before_ms).await,
        }
    }

    pub async fn audit(&self, rec: &audit::AuditRecord) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.audit(rec),
            Store::Redis(s) => s.audit(rec).await,
        }
    }

    pub async fn audit_query(&self, event: Option<&str>, limit: usize) -> Result<Vec<audit::AuditRecord>, StoreError> {
        match self {
            Store::Embedded(s) => s.audit_query(event, limit).await,
            Store::Redis(s) => s.audit_query(event, limit).await,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.ping(),
            Store::Redis(s) => s.ping().await,
        }
    }

    /// Re-reads what the store promises about durability (a Redis server can be reconfigured
    /// or replaced while ferry runs).
    pub async fn recheck_durability(&self) {
        if let Store::Redis(s) = self {
            s.probe_durability().await;
        }
    }

    /// Whether acknowledged durable writes survive a crash of the store, and why (for `/health`).
    pub fn durability(&self) -> (bool, String) {
        match self {
            Store::Embedded(_) => (true, "redb, fsynced commits".into()),
            Store::Redis(s) => {
                let d = s.durability();
                (d.durable, d.detail)
            }
        }
    }
}
