//! State: where links live. [`Store`] is chosen at launch (embedded, or Redis with `REDIS_URL`)
//! and every backend offers the same operations with the same guarantees:
//!
//! - `update` is atomic per link: the closure sees the current record and its result is written
//!   before anyone else sees the link (claims and completions rely on this).
//! - A write marked [`Write::Durable`] survives `kill -9` once `update` returns.
//! - Live links never expire by themselves; only the teardown procedure closes them.
//!
//! - Each link has an owner: the instance whose node holds its tunnel and symlink. With the
//!   embedded store that is always this instance; with Redis, several instances share the state
//!   and a link's teardown runs on its owner ([`Owner`]).
//!
//! The store never decides anything about a link; it only keeps it.

pub mod audit;
pub mod embedded;
pub mod redis;

use std::sync::Arc;

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
    /// Nothing changed that must be written. The closure may still have tidied the record (a
    /// refusal lets lapsed claims go): the embedded store keeps that in memory, Redis drops it.
    No(R),
    /// Changed, but losing it in a crash is harmless (e.g. a request in flight). The embedded
    /// store keeps it in memory until the next commit or `flush`, within a second.
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

/// Runs blocking work (disk, or decoding many records) without stalling the async runtime's
/// other tasks: they move to another worker meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub enum Store {
    Embedded(Box<embedded::Embedded>),
    Redis(Box<redis::Redis>),
}

/// Where a link's tunnel lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// On this instance's node (or nobody's any more): tear it down here.
    Here,
    /// On another instance's node, which must be asked.
    Elsewhere(String),
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

    /// Makes every write acknowledged so far survive a crash (Redis: each write already does,
    /// as far as its AOF settings allow; see `Durability`).
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
    /// waiting for anything (Redis: always, as `persist`).
    pub fn is_durable(&self, mark: u64) -> bool {
        match self {
            Store::Embedded(s) => s.is_durable(mark),
            Store::Redis(_) => true,
        }
    }

    /// Writes out soft writes still held in memory (Redis: each write already went out).
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

    /// Whether other instances may share this state.
    pub fn shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// This instance's name in shared state.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Store::Embedded(_) => None,
            Store::Redis(s) => Some(s.instance()),
        }
    }

    pub async fn owner(&self, id: &TunnelId) -> Result<Owner, StoreError> {
        match self {
            Store::Embedded(_) => Ok(Owner::Here),
            Store::Redis(s) => Ok(match s.owner(id).await? {
                Some(o) if o != s.instance() => Owner::Elsewhere(o),
                _ => Owner::Here,
            }),
        }
    }

    /// The ids of open links whose tunnel is on this instance; `None`: all of them.
    pub async fn owned_here(&self) -> Result<Option<std::collections::HashSet<TunnelId>>, StoreError> {
        match self {
            Store::Embedded(_) => Ok(None),
            Store::Redis(s) => Ok(Some(
                s.owners()
                    .await?
                    .into_iter()
                    .filter(|(_, o)| o == s.instance())
                    .filter_map(|(id, _)| TunnelId::parse(&id).ok())
                    .collect(),
            )),
        }
    }

    /// The link's teardown is done on this instance; it owns it no more.
    pub async fn release(&self, id: &TunnelId) -> Result<(), StoreError> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Redis(s) => s.release(id).await,
        }
    }

    /// Makes this instance the owner of `id` (its tunnel is here); true if it was another's.
    pub async fn reclaim(&self, id: &TunnelId) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(_) => Ok(false),
            Store::Redis(s) => s.reclaim(id).await,
        }
    }

    /// Asks instance `owner` to tear down `id` on its node.
    pub async fn hand_over(&self, owner: &str, id: &TunnelId) -> Result<(), StoreError> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Redis(s) => s.hand_over(owner, id).await,
        }
    }

    /// The next link another instance asked this one to tear down, waiting up to `wait`.
    pub async fn next_teardown(&self, wait: std::time::Duration) -> Result<Option<TunnelId>, StoreError> {
        match self {
            Store::Embedded(_) => {
                tokio::time::sleep(wait).await;
                Ok(None)
            }
            Store::Redis(s) => s.next_teardown(wait).await,
        }
    }

    /// Says this instance is alive (and re-checks the store's durability).
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Redis(s) => {
                s.heartbeat().await?;
                s.probe_durability().await;
                Ok(())
            }
        }
    }

    /// Takes over the links of instances that stopped beating; returns their ids.
    pub async fn take_over(&self) -> Result<Vec<TunnelId>, StoreError> {
        match self {
            Store::Embedded(_) => Ok(vec![]),
            Store::Redis(s) => s.take_over().await,
        }
    }

    /// Sends one event to every instance (with shared state; nothing otherwise).
    pub async fn publish_event(&self, payload: &str) -> Result<(), StoreError> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Redis(s) => s.publish_event(payload).await,
        }
    }

    /// The events every instance publishes, as they come.
    pub async fn event_stream(
        &self,
    ) -> Result<std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>, StoreError> {
        match self {
            Store::Embedded(_) => Ok(Box::pin(futures_util::stream::pending())),
            Store::Redis(s) => s.event_stream().await,
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

/// A link record as both backends store it: JSON.
fn encode(link: &Link) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(link).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Link, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
