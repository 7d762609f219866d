//! The embedded backend: redb, a pure-Rust ACID key-value store with copy-on-write B-trees and
//! checksummed commits, in one file in the state dir. Chosen for crash durability without a C
//! toolchain (SQLite) or a server; see ARCHITECTURE.md.
//!
//! Open links are also kept in memory behind one mutex: that mutex is what makes `update` atomic,
//! and reads of open links never touch the disk. Every change is written through before the
//! mutex is released.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::audit::AuditRecord;
use super::{StoreError, Updater, Write};
use crate::links::{Link, LinkState, TunnelId};

const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links");
const OPEN: TableDefinition<&str, ()> = TableDefinition::new("open");
const HISTORY: TableDefinition<(u64, &str), ()> = TableDefinition::new("history");
/// (time, sequence) → JSON audit record.
const AUDIT: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("audit");

pub struct Embedded {
    db: Database,
    open: Mutex<HashMap<TunnelId, Link>>,
    audit_seq: std::sync::atomic::AtomicU64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode(bytes: &[u8]) -> Result<Link, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Runs blocking disk work without stalling the async runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(unavailable)?;
        let txn = db.begin_write().map_err(unavailable)?;
        let mut open = HashMap::new();
        {
            let links = txn.open_table(LINKS).map_err(unavailable)?;
            let ids = txn.open_table(OPEN).map_err(unavailable)?;
            txn.open_table(HISTORY).map_err(unavailable)?;
            txn.open_table(AUDIT).map_err(unavailable)?;
            for row in ids.iter().map_err(unavailable)? {
                let (id, _) = row.map_err(unavailable)?;
                let id = id.value().to_string();
                let bytes = links
                    .get(id.as_str())
                    .map_err(unavailable)?
                    .ok_or_else(|| StoreError::Corrupt(format!("open link {id} has no record")))?;
                let link = decode(bytes.value())?;
                open.insert(link.id.clone(), link);
            }
        }
        txn.commit().map_err(unavailable)?;
        // Sequence numbers only break ties within a millisecond; starting from the clock keeps
        // them unique across restarts.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Embedded {
            db,
            open: Mutex::new(open),
            audit_seq: seq.into(),
        })
    }

    fn write(&self, link: &Link, was_open: bool, durable: bool) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        blocking(|| {
            let mut txn = self.db.begin_write().map_err(unavailable)?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(unavailable)?;
            {
                let mut links = txn.open_table(LINKS).map_err(unavailable)?;
                links.insert(link.id.as_str(), bytes.as_slice()).map_err(unavailable)?;
                let mut open = txn.open_table(OPEN).map_err(unavailable)?;
                if link.state == LinkState::Closed {
                    if was_open {
                        open.remove(link.id.as_str()).map_err(unavailable)?;
                        let mut history = txn.open_table(HISTORY).map_err(unavailable)?;
                        history
                            .insert((link.closed_at_ms.unwrap_or(0), link.id.as_str()), ())
                            .map_err(unavailable)?;
                    }
                } else {
                    open.insert(link.id.as_str(), ()).map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)
        })
    }

    fn read(&self, id: &TunnelId) -> Result<Option<Link>, StoreError> {
        blocking(|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let links = txn.open_table(LINKS).map_err(unavailable)?;
            links
                .get(id.as_str())
                .map_err(unavailable)?
                .map(|b| decode(b.value()))
                .transpose()
        })
    }

    pub fn insert(&self, link: &Link) -> Result<(), StoreError> {
        let mut open = self.open.lock().expect("store mutex");
        self.write(link, false, true)?;
        if link.state != LinkState::Closed {
            open.insert(link.id.clone(), link.clone());
        }
        Ok(())
    }

    pub fn get(&self, id: &TunnelId) -> Result<Option<Link>, StoreError> {
        if let Some(l) = self.open.lock().expect("store mutex").get(id) {
            return Ok(Some(l.clone()));
        }
        self.read(id)
    }

    pub fn update<R>(&self, id: &TunnelId, f: &mut Updater<'_, R>) -> Result<Option<R>, StoreError> {
        let mut open = self.open.lock().expect("store mutex");
        let (mut link, was_open) = match open.get(id) {
            Some(l) => (l.clone(), true),
            None => match self.read(id)? {
                Some(l) => (l, false),
                None => return Ok(None),
            },
        };
        let result = f(&mut link);
        let durable = match &result {
            Write::No(_) => return Ok(Some(result.into_inner())),
            Write::Soft(_) => false,
            Write::Durable(_) => true,
        };
        self.write(&link, was_open, durable)?;
        if link.state == LinkState::Closed {
            open.remove(id);
        } else {
            open.insert(id.clone(), link);
        }
        Ok(Some(result.into_inner()))
    }

    pub fn list_open(&self) -> Result<Vec<Link>, StoreError> {
        Ok(self.open.lock().expect("store mutex").values().cloned().collect())
    }

    /// Appends an audit record. Not fsynced on its own: it reaches the disk with the next durable
    /// commit (a refusal flood must not turn into an fsync flood).
    pub fn audit(&self, rec: &AuditRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let seq = self.audit_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _guard = self.open.lock().expect("store mutex");
        blocking(|| {
            let mut txn = self.db.begin_write().map_err(unavailable)?;
            txn.set_durability(Durability::None).map_err(unavailable)?;
            txn.open_table(AUDIT)
                .map_err(unavailable)?
                .insert((rec.time_ms, seq), bytes.as_slice())
                .map_err(unavailable)?;
            txn.commit().map_err(unavailable)
        })
    }

    /// Newest first, optionally only one kind of event.
    pub fn audit_query(&self, event: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        blocking(|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(AUDIT).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(unavailable)?.rev() {
                let (_, v) = row.map_err(unavailable)?;
                let rec: AuditRecord =
                    serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if event.is_none_or(|e| rec.event == e) {
                    out.push(rec);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// Deletes closed links that closed before `before_ms`; returns how many.
    pub fn purge_history(&self, before_ms: u64) -> Result<usize, StoreError> {
        let _guard = self.open.lock().expect("store mutex");
        blocking(|| {
            let txn = self.db.begin_write().map_err(unavailable)?;
            let mut n = 0;
            {
                let mut history = txn.open_table(HISTORY).map_err(unavailable)?;
                let mut links = txn.open_table(LINKS).map_err(unavailable)?;
                let old: Vec<(u64, String)> = history
                    .range(..(before_ms, ""))
                    .map_err(unavailable)?
                    .filter_map(|row| row.ok().map(|(k, _)| (k.value().0, k.value().1.to_string())))
                    .collect();
                for (at, id) in old {
                    history.remove((at, id.as_str())).map_err(unavailable)?;
                    links.remove(id.as_str()).map_err(unavailable)?;
                    n += 1;
                }
                let mut audit = txn.open_table(AUDIT).map_err(unavailable)?;
                let old: Vec<(u64, u64)> = audit
                    .range(..(before_ms, 0))
                    .map_err(unavailable)?
                    .filter_map(|row| row.ok().map(|(k, _)| k.value()))
                    .collect();
                for key in old {
                    audit.remove(key).map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)?;
            Ok(n)
        })
    }

    pub fn history(&self, limit: usize) -> Result<Vec<Link>, StoreError> {
        blocking(|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let history = txn.open_table(HISTORY).map_err(unavailable)?;
            let links = txn.open_table(LINKS).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in history.iter().map_err(unavailable)?.rev().take(limit) {
                let (key, _) = row.map_err(unavailable)?;
                let (_, id) = key.value();
                if let Some(b) = links.get(id).map_err(unavailable)? {
                    out.push(decode(b.value())?);
                }
            }
            Ok(out)
        })
    }
}
