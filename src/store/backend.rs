//! What both backends share: their error, how an update says what to keep, and the record's
//! encoding.

use crate::model::Link;

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
    /// refusal releases lapsed claims). The embedded store keeps such a change in memory, and
    /// Redis drops it.
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
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A link record as both backends store it: JSON.
pub(super) fn encode(link: &Link) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(link).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn decode(bytes: &[u8]) -> Result<Link, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
