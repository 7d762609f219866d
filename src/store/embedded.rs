//! The embedded backend: redb, a pure-Rust ACID key-value store with copy-on-write B-trees and
//! checksummed commits, in one file in the state dir. Chosen for crash durability without a C
//! toolchain (SQLite) or a server; see ARCHITECTURE.md.
//!
//! Open links (and closed ones until their close is on disk) live in memory behind one mutex,
//! held only for the closure of an `update`, never across disk I/O: that mutex is what makes
//! `update` atomic, and reads of open links never touch the disk.
//!
//! Writes are group-committed. An `update` applies its change in memory and queues the record
//! (a link written several times before the next commit is written once, in its latest form).
//! A soft write (a request in flight, a socket sample) stops there: it goes out with the next
//! commit, or with `flush` within a second. For a durable write, whoever finds no commit under
//! way becomes the committer and writes everything queued in one transaction (one fsync),
//! looping while someone waits for what was queued meanwhile. A durable write returns only once
//! its transaction is on disk, and so does any result that depends on a durable write still in
//! flight (a second request made under a claim that is not yet on disk waits for it). With one
//! caller at a time this is a plain synchronous commit; with a hundred, one fsync serves them
//! all. An audit query, a purge and `persist` wait for the queue and for the batch being
//! committed, so they see every write made before them.
//!
//! A commit that fails (a full disk) leaves redb refusing every later write until the file is
//! opened again. So the next commit first reopens the file, and then writes every record held in
//! memory, with an fsync. What commits without an fsync had written since the last fsync is lost
//! with the old handle, as in a crash, but memory still holds every open link's latest record. Until
//! a commit succeeds again, [`Embedded::ping`] says the store is down; the sampler's `flush`
//! retries every second, so the store recovers by itself.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::audit::AuditRecord;
use super::backend::{StoreError, Updater, Write, blocking, decode, encode};
use crate::model::{Link, LinkState, TunnelId};

const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links");
const OPEN: TableDefinition<&str, ()> = TableDefinition::new("open");
const HISTORY: TableDefinition<(u64, &str), ()> = TableDefinition::new("history");
/// (time, sequence) → JSON audit record.
const AUDIT: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("audit");

/// redb's page cache.
const CACHE_BYTES: usize = 2 << 20;

/// How a batch's commit ended: `None` while it is under way.
type Outcome = Option<Result<(), String>>;

pub struct Embedded {
    /// The open file; `None` only while a reopen failed.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// Whether the last commit failed, in which case the next commit reopens the file first.
    broken: AtomicBool,
    state: Mutex<State>,
    /// Held by the one caller that is committing. It is never awaited, only tried.
    committer: Mutex<()>,
    audit_seq: std::sync::atomic::AtomicU64,
}

struct State {
    /// Links not closed, and closed ones whose close is not on disk yet.
    live: HashMap<TunnelId, Entry>,
    /// The writes waiting for the next commit.
    queue: Batch,
    /// The outcome of the batch being committed now, which was taken from the queue but is not on
    /// disk yet.
    writing: Option<watch::Receiver<Outcome>>,
    /// How many commits have dropped closed links from `live`: a record read from disk is only
    /// current if no commit dropped a newer one in the meantime.
    evictions: u64,
    /// Whether a commit without fsync was made (or is being made) since the last commit with
    /// fsync. redb keeps such commits only once a durable commit follows them.
    unsynced: bool,
    /// The batch of the latest commit with fsync: it and every batch before it are on disk.
    synced: u64,
}

struct Entry {
    /// The record. An update changes it in place, and copies it only while somebody else holds
    /// it (a reader, a commit under way); a read does not copy it.
    link: Arc<Link>,
    /// The batch of this link's latest durable write, until it is committed.
    durable: Option<(u64, watch::Receiver<Outcome>)>,
    /// The batch of this link's latest write of any kind.
    last_batch: u64,
}

struct Batch {
    seq: u64,
    /// The links written since the last commit. The commit writes their records as they are in
    /// `live` at the moment it takes the batch.
    dirty: HashSet<TunnelId>,
    audits: Vec<((u64, u64), Vec<u8>)>,
    durable: bool,
    /// Someone waits for this batch's commit (a durable write, `persist`, an audit query).
    waited: bool,
    done: watch::Sender<Outcome>,
}

impl Batch {
    fn new(seq: u64) -> Batch {
        Batch {
            seq,
            dirty: HashSet::new(),
            audits: Vec::new(),
            durable: false,
            waited: false,
            done: watch::channel(None).0,
        }
    }

    /// Whether there is nothing to write. A batch marked durable with nothing in it still commits,
    /// which is what `persist` relies on.
    fn is_empty(&self) -> bool {
        self.dirty.is_empty() && self.audits.is_empty() && !self.durable
    }
}

impl State {
    /// Takes the queued batch for a commit, with the records it writes, and queues an empty one.
    /// With `reopening`, the file is reopened before this batch, so every open link is written
    /// again.
    fn take_batch(&mut self, reopening: bool) -> (Batch, Vec<Arc<Link>>) {
        if reopening {
            // What commits without an fsync had written since the last commit with one is lost
            // with the old handle. Memory holds every open link's latest record, so each record is
            // written again, with an fsync.
            let all: Vec<TunnelId> = self.live.keys().cloned().collect();
            self.queue.dirty.extend(all);
            self.queue.durable = true;
        }
        let next = Batch::new(self.queue.seq + 1);
        let batch = std::mem::replace(&mut self.queue, next);
        self.unsynced |= !batch.durable;
        self.writing = Some(batch.done.subscribe());
        // Every queued link is in memory until a commit of it evicts it.
        let records: Vec<Arc<Link>> = batch
            .dirty
            .iter()
            .filter_map(|id| self.live.get(id).map(|e| e.link.clone()))
            .collect();
        debug_assert_eq!(records.len(), batch.dirty.len());
        (batch, records)
    }

    /// Called once `batch` is on disk. The closed links are on disk now, and from here on the disk
    /// answers for them.
    fn committed(&mut self, batch: &Batch) {
        if batch.durable {
            self.unsynced = false;
            self.synced = batch.seq;
        }
        // A link closes through a write, so each closed link is among the links this batch wrote,
        // or among those of a failed batch before it whose links this batch took over. Looking
        // only there, instead of through every open link, keeps a commit's cost in proportion to
        // its own size.
        let before = self.live.len();
        for id in &batch.dirty {
            if self
                .live
                .get(id)
                .is_some_and(|e| e.link.state == LinkState::Closed && e.last_batch <= batch.seq)
            {
                self.live.remove(id);
            }
        }
        if self.live.len() < before {
            self.evictions += 1;
        }
    }

    /// Called after `batch` failed. Memory still holds the current records, so the batch's writes
    /// join the queued batch and go out again with the next commit.
    fn requeue(&mut self, batch: &mut Batch) {
        let mut next = std::mem::replace(&mut self.queue, Batch::new(0));
        // Memory has each link's latest record: the next commit writes it.
        next.dirty.extend(batch.dirty.drain());
        batch.audits.append(&mut next.audits);
        next.audits = std::mem::take(&mut batch.audits);
        next.durable |= batch.durable;
        next.waited |= batch.waited;
        // Anyone who depends on the failed writes now waits for the next attempt to write them.
        let retry = (next.seq, next.done.subscribe());
        for e in self.live.values_mut() {
            if e.durable.as_ref().is_some_and(|(seq, _)| *seq == batch.seq) {
                e.durable = Some(retry.clone());
            }
        }
        self.queue = next;
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Opens (or creates) the file, repairing it if a commit was cut short.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    // redb caches up to 1 GiB of pages by default, and keeps them for the life of the process.
    // Open links live in memory anyway, history reads are rare, and the kernel caches the file,
    // so a bigger cache would only make ferry's memory grow with its history.
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(unavailable)
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_db(path)?;
        let txn = db.begin_write().map_err(unavailable)?;
        let mut live = HashMap::new();
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
                let link: Link = decode(bytes.value())?;
                let entry = Entry {
                    link: Arc::new(link),
                    durable: None,
                    last_batch: 0,
                };
                live.insert(entry.link.id.clone(), entry);
            }
        }
        txn.commit().map_err(unavailable)?;
        // Sequence numbers only break ties within a millisecond; starting from the clock keeps
        // them unique across restarts.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Embedded {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            broken: AtomicBool::new(false),
            state: Mutex::new(State {
                live,
                queue: Batch::new(1),
                writing: None,
                evictions: 0,
                unsynced: false,
                synced: 0,
            }),
            committer: Mutex::new(()),
            audit_seq: seq.into(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("store mutex")
    }

    /// Runs `f` with the open file.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.db.read().expect("store file lock");
        match db.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Unavailable(
                "the store's file could not be opened again".into(),
            )),
        }
    }

    /// Closes the file and opens it again. After a failed commit, redb refuses every write until
    /// the file is reopened ("Previous I/O error occurred").
    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().expect("store file lock");
        // Only one handle may be open per file, so the old one is closed first.
        *db = None;
        *db = Some(open_db(&self.path)?);
        tracing::info!(path = %self.path.display(), "the store opened its file again after a failed write");
        Ok(())
    }

    /// Whether the store can write. It cannot while its last commit has failed.
    pub fn ping(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the store's last write failed".into()));
        }
        Ok(())
    }

    /// Commits everything queued, unless another caller is already doing it. In that case the
    /// other caller also commits our batch when anyone waits for it: it loops while someone waits
    /// for the queued batch, and it gives up the committer role only while holding the state lock,
    /// so a waited-for batch queued before a failed `try_lock` is always picked up. Soft writes
    /// alone do not keep it looping, because under load they never stop coming; they wait for the
    /// next commit.
    fn commit_queued(&self) {
        let Ok(role) = self.committer.try_lock() else {
            return;
        };
        let mut first = true;
        loop {
            let (mut batch, records) = {
                let mut st = self.state();
                if st.queue.is_empty() || !(first || st.queue.waited) {
                    drop(role);
                    return;
                }
                first = false;
                st.take_batch(self.broken.load(Ordering::SeqCst))
            };
            let result = blocking(|| {
                if self.broken.load(Ordering::SeqCst) {
                    self.reopen()?;
                }
                self.write_batch(&batch, &records)
            });
            self.broken.store(result.is_err(), Ordering::SeqCst);
            drop(records);
            let mut st = self.state();
            st.writing = None;
            match &result {
                Ok(()) => st.committed(&batch),
                Err(e) => {
                    tracing::error!(error = %e, "the store could not commit; will retry with the next write");
                    st.requeue(&mut batch);
                }
            }
            let failed = result.is_err();
            batch.done.send_replace(Some(result.map_err(|e| e.to_string())));
            if failed {
                drop(role);
                return;
            }
        }
    }

    fn write_batch(&self, batch: &Batch, records: &[Arc<Link>]) -> Result<(), StoreError> {
        self.with_db(|db| self.write_batch_to(db, batch, records))
    }

    fn write_batch_to(&self, db: &Database, batch: &Batch, records: &[Arc<Link>]) -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(unavailable)?;
        txn.set_durability(if batch.durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(unavailable)?;
        {
            let mut links = txn.open_table(LINKS).map_err(unavailable)?;
            let mut open = txn.open_table(OPEN).map_err(unavailable)?;
            let mut history = txn.open_table(HISTORY).map_err(unavailable)?;
            for link in records {
                links
                    .insert(link.id.as_str(), encode(link)?.as_slice())
                    .map_err(unavailable)?;
                if link.state == LinkState::Closed {
                    // Both writes are idempotent, because a link is closed only once, at one time.
                    open.remove(link.id.as_str()).map_err(unavailable)?;
                    history
                        .insert((link.closed_at_ms.unwrap_or(0), link.id.as_str()), ())
                        .map_err(unavailable)?;
                } else {
                    open.insert(link.id.as_str(), ()).map_err(unavailable)?;
                }
            }
            let mut audit = txn.open_table(AUDIT).map_err(unavailable)?;
            for (key, bytes) in &batch.audits {
                audit.insert(*key, bytes.as_slice()).map_err(unavailable)?;
            }
        }
        txn.commit().map_err(unavailable)
    }

    /// Waits until the batch behind `done` is committed, committing it ourselves when nobody is.
    async fn settled(&self, mut done: watch::Receiver<Outcome>) -> Result<(), StoreError> {
        loop {
            if let Some(outcome) = done.borrow_and_update().clone() {
                return outcome.map_err(StoreError::Unavailable);
            }
            self.commit_queued();
            if let Some(outcome) = done.borrow_and_update().clone() {
                return outcome.map_err(StoreError::Unavailable);
            }
            // Someone else is committing our batch. A committer whose commit failed stops, and
            // leaves the writes queued after it to their own callers, so look again shortly.
            let wait = tokio::time::timeout(std::time::Duration::from_millis(100), done.changed());
            if let Ok(Err(_)) = wait.await {
                return Err(StoreError::Unavailable("store commit abandoned".into()));
            }
        }
    }

    fn read(&self, id: &TunnelId) -> Result<Option<Arc<Link>>, StoreError> {
        blocking(|| {
            let txn = self.with_db(|db| db.begin_read().map_err(unavailable))?;
            let links = txn.open_table(LINKS).map_err(unavailable)?;
            links
                .get(id.as_str())
                .map_err(unavailable)?
                .map(|b| decode(b.value()).map(Arc::new))
                .transpose()
        })
    }

    /// Makes `link` the record in memory and queues a write of it. Returns the batch's receiver
    /// when the write must be durable.
    fn queue(st: &mut State, link: Arc<Link>, durable: bool) -> Option<(u64, watch::Receiver<Outcome>)> {
        let id = link.id.clone();
        match st.live.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().link = link,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Entry {
                    link,
                    durable: None,
                    last_batch: 0,
                });
            }
        }
        Self::queue_live(st, &id, durable)
    }

    /// Queues a write of the record in memory of `id`.
    fn queue_live(st: &mut State, id: &TunnelId, durable: bool) -> Option<(u64, watch::Receiver<Outcome>)> {
        st.queue.dirty.insert(id.clone());
        st.queue.durable |= durable;
        st.queue.waited |= durable;
        let seq = st.queue.seq;
        let wait = durable.then(|| (seq, st.queue.done.subscribe()));
        if let Some(e) = st.live.get_mut(id) {
            e.last_batch = seq;
            if wait.is_some() {
                e.durable.clone_from(&wait);
            }
        }
        wait
    }

    /// Writes a new link durably, with its audit record in the same commit.
    pub async fn insert(&self, link: &Link, audit: Option<&AuditRecord>) -> Result<(), StoreError> {
        let audit = audit.map(|a| self.audit_entry(a)).transpose()?;
        let wait = {
            let mut st = self.state();
            st.queue.audits.extend(audit);
            Self::queue(&mut st, Arc::new(link.clone()), true)
        };
        match wait {
            Some((_, rx)) => self.settled(rx).await,
            None => Ok(()),
        }
    }

    pub fn get(&self, id: &TunnelId) -> Result<Option<Arc<Link>>, StoreError> {
        if let Some(e) = self.state().live.get(id) {
            return Ok(Some(e.link.clone()));
        }
        self.read(id)
    }

    /// Runs `f` on a copy of the latest record and keeps the copy as `f` says; returns `f`'s
    /// result and the record as `f` left it.
    pub async fn update<R>(&self, id: &TunnelId, f: &mut Updater<'_, R>) -> Result<Option<(R, Arc<Link>)>, StoreError> {
        // A link not in memory is closed and on disk; it is read before taking the lock, and read
        // again if a commit dropped a newer version from memory meanwhile.
        let (result, link, wait) = loop {
            let (cached, evictions) = {
                let st = self.state();
                (st.live.contains_key(id), st.evictions)
            };
            let from_disk = if cached { None } else { self.read(id)? };
            let mut st = self.state();
            if let Some(e) = st.live.get_mut(id) {
                let result = f(Arc::make_mut(&mut e.link));
                let (link, pending) = (e.link.clone(), e.durable.clone());
                let wait = match &result {
                    Write::No(_) => pending,
                    Write::Soft(_) => {
                        Self::queue_live(&mut st, id, false);
                        pending
                    }
                    Write::Durable(_) => Self::queue_live(&mut st, id, true),
                };
                break (result, link, wait);
            }
            if st.evictions != evictions {
                continue;
            }
            let Some(link) = from_disk else {
                return Ok(None);
            };
            let mut link = Arc::unwrap_or_clone(link);
            let result = f(&mut link);
            let link = Arc::new(link);
            let wait = match &result {
                Write::No(_) => None,
                Write::Soft(_) => {
                    Self::queue(&mut st, link.clone(), false);
                    None
                }
                Write::Durable(_) => Self::queue(&mut st, link.clone(), true),
            };
            break (result, link, wait);
        };
        // Soft writes go out with the next commit, or with the commit that `flush` makes.
        if let Some((_, rx)) = wait {
            self.settled(rx).await?;
        }
        Ok(Some((result.into_inner(), link)))
    }

    /// Commits the writes queued so far, without waiting for the disk. Soft writes wait for this
    /// commit (or any other) instead of each making a commit of its own.
    pub fn flush(&self) {
        self.commit_queued();
    }

    /// A mark for the writes made so far: the batch they are queued in, or were committed with.
    /// They are all on disk once `is_durable` returns true for the mark.
    pub fn mark(&self) -> u64 {
        let st = self.state();
        if st.queue.is_empty() {
            // The writes are in the last batch taken off the queue, which is being written or has
            // been written.
            st.queue.seq - 1
        } else {
            st.queue.seq
        }
    }

    /// Whether every write made before `mark` was taken has been committed with fsync (by
    /// whoever committed it).
    pub fn is_durable(&self, mark: u64) -> bool {
        self.state().synced >= mark
    }

    /// Makes every write so far survive a crash. It commits with an fsync when a commit without
    /// fsync was made since the last durable one, or when writes are queued. The follower calls it
    /// when the lines it applied have waited too long for somebody else's durable commit.
    pub async fn persist(&self) -> Result<(), StoreError> {
        let rx = {
            let mut st = self.state();
            if st.unsynced || !st.queue.is_empty() {
                // The queue commits after any batch under way, and its fsync covers that too.
                st.queue.durable = true;
                st.queue.waited = true;
                st.queue.done.subscribe()
            } else {
                // Only a durable batch can be under way here (a soft one sets `unsynced`).
                match &st.writing {
                    Some(rx) => rx.clone(),
                    None => return Ok(()),
                }
            }
        };
        self.settled(rx).await
    }

    /// Commits what is queued (without fsync, unless a durable write is among it) and waits for
    /// the commit. Callers run this before they read from the disk what may still be queued.
    async fn written(&self) -> Result<(), StoreError> {
        let rx = {
            let mut st = self.state();
            if !st.queue.is_empty() {
                // The queue commits after any batch under way.
                st.queue.waited = true;
                st.queue.done.subscribe()
            } else {
                match &st.writing {
                    Some(rx) => rx.clone(),
                    None => return Ok(()),
                }
            }
        };
        self.settled(rx).await
    }

    pub fn count_open(&self) -> usize {
        self.state()
            .live
            .values()
            .filter(|e| e.link.state != LinkState::Closed)
            .count()
    }

    pub fn list_open(&self) -> Result<Vec<Arc<Link>>, StoreError> {
        Ok(self
            .state()
            .live
            .values()
            .filter(|e| e.link.state != LinkState::Closed)
            .map(|e| e.link.clone())
            .collect())
    }

    fn audit_entry(&self, rec: &AuditRecord) -> Result<((u64, u64), Vec<u8>), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let seq = self.audit_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(((rec.time_ms, seq), bytes))
    }

    /// Appends an audit record. It goes out with the next commit, as a soft write does: a
    /// refusal flood must turn neither into an fsync flood nor into a commit per refusal.
    pub fn audit(&self, rec: &AuditRecord) -> Result<(), StoreError> {
        let entry = self.audit_entry(rec)?;
        self.state().queue.audits.push(entry);
        Ok(())
    }

    /// Lists audit records newest first, optionally only those of one kind of event.
    pub async fn audit_query(&self, event: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.written().await?;
        blocking(|| {
            let txn = self.with_db(|db| db.begin_read().map_err(unavailable))?;
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

    /// Deletes closed links that closed before `before_ms`, and audit records that are as old,
    /// including those still queued. Returns how many links were deleted.
    pub async fn purge_history(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.written().await?;
        blocking(|| {
            let txn = self.with_db(|db| db.begin_write().map_err(unavailable))?;
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
        // Closes still on their way to the disk come first: they are the newest.
        let mut out: Vec<Link> = self
            .state()
            .live
            .values()
            .filter(|e| e.link.state == LinkState::Closed)
            .map(|e| Link::clone(&e.link))
            .collect();
        out.sort_by_key(|l| std::cmp::Reverse(l.closed_at_ms));
        out.truncate(limit);
        let recent: std::collections::HashSet<TunnelId> = out.iter().map(|l| l.id.clone()).collect();
        blocking(|| {
            let txn = self.with_db(|db| db.begin_read().map_err(unavailable))?;
            let history = txn.open_table(HISTORY).map_err(unavailable)?;
            let links = txn.open_table(LINKS).map_err(unavailable)?;
            for row in history.iter().map_err(unavailable)?.rev() {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = row.map_err(unavailable)?;
                let (_, id) = key.value();
                if let Some(b) = links.get(id).map_err(unavailable)? {
                    let link = decode(b.value())?;
                    if !recent.contains(&link.id) {
                        out.push(link);
                    }
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::Write;

    fn soft(store: &Embedded, id: &TunnelId, n: u64) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(store.update(id, &mut |l| {
            l.bytes_served = n;
            Write::Soft(())
        }))
        .unwrap()
        .unwrap();
    }

    /// Under load soft writes never stop coming: a commit takes what was queued and returns,
    /// instead of chasing the queue for as long as the load lasts.
    #[test]
    fn a_flush_returns_while_soft_writes_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("s.redb")).unwrap();
        let link = crate::model::link::test_link(10, 1);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(store.insert(&link, None)).unwrap();
        let (writer_done, stop) = (AtomicBool::new(false), AtomicBool::new(false));
        std::thread::scope(|s| {
            s.spawn(|| {
                let until = Instant::now() + Duration::from_secs(5);
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        let mut soft = |l: &mut Link| {
                            l.bytes_served += 1;
                            Write::Soft(())
                        };
                        store.update(&link.id, &mut soft).await.unwrap().unwrap();
                    }
                });
                writer_done.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            for _ in 0..20 {
                store.flush();
            }
            let chased = writer_done.load(Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
            assert!(!chased, "flush returned only once the writes stopped");
        });
    }

    /// A closed link leaves memory with the commit that writes it (the disk answers for it
    /// from then on), whether its close was durable or soft; open links stay.
    #[test]
    fn a_closed_link_leaves_memory_with_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("s.redb")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let links: Vec<Link> = (0..3).map(|_| crate::model::link::test_link(10, 1)).collect();
        for link in &links {
            rt.block_on(store.insert(link, None)).unwrap();
        }
        let close = |id: &TunnelId, durable: bool| {
            rt.block_on(store.update(id, &mut |l| {
                l.state = LinkState::Closed;
                if durable { Write::Durable(()) } else { Write::Soft(()) }
            }))
            .unwrap()
            .unwrap();
        };
        close(&links[0].id, true);
        close(&links[1].id, false);
        store.flush();
        let live = |id: &TunnelId| store.state().live.contains_key(id);
        assert!(
            !live(&links[0].id) && !live(&links[1].id),
            "closed links are still in memory"
        );
        assert!(live(&links[2].id), "an open link left memory");
        for link in &links[..2] {
            let on_disk = store.get(&link.id).unwrap().unwrap();
            assert_eq!(on_disk.state, LinkState::Closed);
        }
    }

    /// A query reads the disk only once everything written before it is there, including a
    /// batch another caller took from the queue and is committing right now.
    #[test]
    fn a_query_sees_records_a_commit_under_way_is_still_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("s.redb")).unwrap();
        let link = crate::model::link::test_link(10, 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(store.insert(&link, None)).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let until = Instant::now() + Duration::from_secs(20);
                let mut n = 0;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    n += 1;
                    soft(&store, &link.id, n);
                    store.flush();
                }
            });
            for i in 0..1000 {
                let rec = AuditRecord {
                    time_ms: 1_000_000 + i,
                    event: format!("e{i}"),
                    client: None,
                    tunnel_id: None,
                    detail: None,
                };
                store.audit(&rec).unwrap();
                // Gives the other thread's commit time to take the record from the queue.
                std::thread::sleep(Duration::from_micros(i % 200));
                let newest = rt.block_on(store.audit_query(None, 1)).unwrap();
                if newest.first() != Some(&rec) {
                    stop.store(true, Ordering::SeqCst);
                    panic!("record {i} written, then not found: {newest:?}");
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }

    /// Soft writes wait in memory for a commit; `flush` and `persist` write them out.
    #[test]
    fn soft_writes_reach_the_disk_with_flush_or_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let link = crate::model::link::test_link(10, 1);
        let store = Embedded::open(&path).unwrap();
        rt.block_on(store.insert(&link, None)).unwrap();
        soft(&store, &link.id, 7);
        assert!(!store.state().queue.is_empty(), "a soft write took a commit of its own");
        store.flush();
        assert!(store.state().queue.is_empty());
        soft(&store, &link.id, 8);
        rt.block_on(store.persist()).unwrap();
        drop(store);
        let store = Embedded::open(&path).unwrap();
        assert_eq!(store.get(&link.id).unwrap().unwrap().bytes_served, 8);
    }

    /// A write's mark is durable once a commit with fsync covers it, whoever makes that commit.
    #[test]
    fn a_mark_is_durable_once_a_commit_with_fsync_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("s.redb")).unwrap();
        assert!(store.is_durable(store.mark()), "nothing written is durable");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (a, b) = (
            crate::model::link::test_link(10, 1),
            crate::model::link::test_link(10, 1),
        );
        rt.block_on(store.insert(&a, None)).unwrap();
        assert!(store.is_durable(store.mark()), "an insert returns once it is on disk");
        soft(&store, &a.id, 1);
        let m = store.mark();
        assert!(!store.is_durable(m), "a soft write is durable before any commit");
        store.flush();
        assert!(!store.is_durable(m), "a commit without fsync made a soft write durable");
        soft(&store, &a.id, 2);
        let later = store.mark();
        // Another link's durable write also makes the soft writes before it durable.
        rt.block_on(store.insert(&b, None)).unwrap();
        assert!(store.is_durable(m) && store.is_durable(later));
    }

    /// An update changes the record in place: nobody else holds it, so nothing is copied.
    #[test]
    fn an_update_copies_the_record_only_while_someone_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("s.redb")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let link = crate::model::link::test_link(10, 1);
        rt.block_on(store.insert(&link, None)).unwrap();
        let update = |n: u64| {
            let (_, l) = rt
                .block_on(store.update(&link.id, &mut |l| {
                    l.bytes_served = n;
                    Write::Soft(())
                }))
                .unwrap()
                .unwrap();
            l
        };
        let first = Arc::as_ptr(&update(1));
        assert_eq!(Arc::as_ptr(&update(2)), first, "a record nobody held was copied");
        let held = store.get(&link.id).unwrap().unwrap();
        let copy = update(3);
        assert_ne!(Arc::as_ptr(&copy), first, "a record held by a reader changed under it");
        assert_eq!((held.bytes_served, copy.bytes_served), (2, 3));
        // The commit writes the latest record, and the queued ones are not copies of their own.
        store.flush();
        drop((held, copy));
        assert_eq!(store.get(&link.id).unwrap().unwrap().bytes_served, 3);
        assert_eq!(store.read(&link.id).unwrap().unwrap().bytes_served, 3);
        // What a closure answering `Write::No` tidied stays in memory, and is not written.
        rt.block_on(store.update(&link.id, &mut |l| {
            l.bytes_served = 4;
            Write::No(())
        }))
        .unwrap();
        store.flush();
        assert_eq!(store.get(&link.id).unwrap().unwrap().bytes_served, 4);
        assert_eq!(store.read(&link.id).unwrap().unwrap().bytes_served, 3);
    }
}
