//! The Redis backend: all state in one Redis, shared by every ferry instance that points at it
//! (one instance per nginx/Funnel node). Chosen with `REDIS_URL`.
//!
//! Key layout (documented in ARCHITECTURE.md, "Redis keys"):
//!
//! | key | type | what | expires |
//! |---|---|---|---|
//! | `ferry:link:<id>` | string | the link record (JSON) | never while open; `FERRY_HISTORY_DAYS` after it closed |
//! | `ferry:links:open` | zset | ids of links not closed, scored by creation time | members leave on close |
//! | `ferry:links:history` | zset | ids of closed links, scored by closing time | members purged with retention |
//! | `ferry:audit` | zset | audit records (`<iid>-<seq>:<json>`), scored by time | members purged with retention |
//! | `ferry:owners` | hash | link id → instance that owns its tunnel | field removed after teardown |
//! | `ferry:instance:<iid>` | string | an instance's heartbeat | the takeover timeout |
//! | `ferry:teardown:<iid>` | list | ids the instance must tear down on its node | `FERRY_HISTORY_DAYS` |
//! | `ferry:events` | pub/sub channel | every instance's link events, for the others' SSE clients | - |
//!
//! `update` is a compare-and-set: read the record, run the closure, and write it back with a Lua
//! script only if the record is still exactly what was read. A conflict is retried. Updates from
//! this process queue on a local lock first, so only other instances can conflict. The script
//! also moves the id between the open and history indexes, so a record and its indexes never
//! disagree. A durable write waits for the AOF fsync (`WAITAOF`) where the server has it; with
//! `appendfsync always` the reply itself already comes after the fsync.
//!
//! The backend never decides anything about a link; it only keeps it and says who owns it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;

use super::audit::AuditRecord;
use super::backend::{StoreError, Updater, Write, blocking, decode, encode};
use crate::model::{Link, LinkState, TunnelId};

const OPEN: &str = "ferry:links:open";
const HISTORY: &str = "ferry:links:history";
const AUDIT: &str = "ferry:audit";
/// Which instance owns each open link's tunnel (see `peers.rs`).
pub(crate) const OWNERS: &str = "ferry:owners";

fn link_key(id: &str) -> String {
    format!("ferry:link:{id}")
}

/// How many times a compare-and-set is retried before the store is called unavailable. Within
/// one process, updates of a link queue on a local lock first, so only other instances' writes
/// conflict. The limit allows one round per concurrent writer elsewhere, with a wide margin.
const CAS_ATTEMPTS: u32 = 500;

/// SET the record and keep the indexes in step, only if the record is what the caller read.
/// KEYS: link, open, history. ARGV: old, new, id, closed (0|1), closed_at, ttl_ms, created_at.
const CAS: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[6])
  if redis.call('ZREM', KEYS[2], ARGV[3]) == 1 then
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
  end
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[3])
end
return 1
";

/// A new link: record, open index, owner and audit record together. KEYS: link, open, owners,
/// audit. ARGV: json, id, created_at, closed (0|1), ttl_ms, instance, audit time, audit member
/// ('' for none).
const INSERT: &str = r"
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[6])
end
if ARGV[8] ~= '' then redis.call('ZADD', KEYS[4], ARGV[7], ARGV[8]) end
return 1
";

/// What the server promises about a write it acknowledged, probed at startup and then every
/// heartbeat (a server can be reconfigured or replaced while ferry runs).
#[derive(Debug, Clone, Serialize)]
pub struct Durability {
    /// An acknowledged durable write survives `kill -9` of the server.
    pub durable: bool,
    /// ferry confirms each durable write with `WAITAOF` (Redis ≥ 7.2 with AOF on).
    pub waitaof: bool,
    pub appendonly: Option<String>,
    pub appendfsync: Option<String>,
    pub version: Option<String>,
    /// One sentence for `/health`.
    pub detail: String,
}

impl Durability {
    fn unknown(why: String) -> Self {
        Durability {
            durable: false,
            waitaof: false,
            appendonly: None,
            appendfsync: None,
            version: None,
            detail: why,
        }
    }

    /// What a server with this configuration promises, worked out without any I/O.
    pub fn judge(appendonly: Option<&str>, appendfsync: Option<&str>, version: Option<&str>) -> Self {
        let waitaof_known = version.and_then(parse_version).map(|v| v >= (7, 2));
        let aof = appendonly == Some("yes");
        let waitaof = aof && waitaof_known == Some(true);
        let (durable, detail) = match (aof, appendfsync, waitaof) {
            (false, _, _) if appendonly.is_none() => (
                false,
                "CONFIG GET is not allowed; cannot tell whether redemptions survive a crash".to_string(),
            ),
            (false, _, _) => (
                false,
                "appendonly is off: a crash of Redis loses redemptions (set appendonly yes, appendfsync always)"
                    .to_string(),
            ),
            (true, Some("always"), _) => (true, "AOF with appendfsync always".to_string()),
            (true, _, true) => (
                true,
                "AOF; each redemption is confirmed on disk with WAITAOF".to_string(),
            ),
            (true, f, false) => (
                false,
                format!(
                    "appendfsync {}: a crash of Redis can lose the last second of redemptions (set appendfsync always, or use Redis >= 7.2)",
                    f.unwrap_or("unknown")
                ),
            ),
        };
        Durability {
            durable,
            waitaof,
            appendonly: appendonly.map(String::from),
            appendfsync: appendfsync.map(String::from),
            version: version.map(String::from),
            detail,
        }
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
    /// A second connection, for reads of many records at once (every open link, history), so that
    /// their large replies never hold up the checks and creations queued behind them.
    bulk: ConnectionManager,
    instance: String,
    history_ms: u64,
    durability: RwLock<Durability>,
    /// Updates of one link from this process queue here instead of colliding in Redis, so the
    /// compare-and-set only races other instances. The locks are striped by id, so there is no map
    /// to clean up.
    stripes: Vec<tokio::sync::Mutex<()>>,
    audit_seq: AtomicU64,
    cas: redis::Script,
    insert: redis::Script,
}

/// This instance's name in shared state, kept in the state dir so a restart keeps its links.
pub fn instance_id(state_dir: &std::path::Path) -> std::io::Result<String> {
    let path = state_dir.join("instance_id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = crate::model::random_token(9);
    crate::config::write_durably(&path, id.as_bytes(), 0o644)?;
    Ok(id)
}

pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// A connection whose replies may take up to `response`. It fails fast while Redis is unreachable,
/// because a check must answer (444) quickly instead of hanging, and the manager reconnects on the
/// next command.
fn connection(client: &redis::Client, response: Duration) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)
}

impl Redis {
    /// Prepares the connections without waiting for Redis: ferry starts (and `/health` says the
    /// store is down) when Redis is not there yet, and connects when it comes.
    pub async fn connect(url: &str, instance: String, history_ms: u64) -> Result<Self, StoreError> {
        // Report only the kind of parse error, because the URL may hold a password.
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("REDIS_URL is not a valid Redis URL ({:?})", e.kind())))?;
        let conn = connection(&client, Duration::from_secs(2))?;
        let bulk = connection(&client, Duration::from_secs(5))?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let store = Redis {
            client,
            conn,
            bulk,
            instance,
            history_ms,
            durability: RwLock::new(Durability::unknown("not checked yet".into())),
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            audit_seq: seq.into(),
            cas: redis::Script::new(CAS),
            insert: redis::Script::new(INSERT),
        };
        store.probe_durability().await;
        Ok(store)
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub(crate) fn bulk(&self) -> ConnectionManager {
        self.bulk.clone()
    }

    pub(crate) fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// A further connection to the same server, whose replies may take up to `response`.
    pub(crate) fn connection(&self, response: Duration) -> Result<ConnectionManager, StoreError> {
        connection(&self.client, response)
    }

    pub(crate) fn history_ms(&self) -> u64 {
        self.history_ms
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn durability(&self) -> Durability {
        self.durability.read().expect("durability lock").clone()
    }

    /// Asks the server how it keeps writes (`CONFIG GET appendonly`/`appendfsync`, its version).
    pub async fn probe_durability(&self) -> Durability {
        let mut c = self.conn();
        let version: Result<redis::InfoDict, _> = redis::cmd("INFO").arg("server").query_async(&mut c).await;
        let version = match version {
            Ok(info) => info.get::<String>("redis_version"),
            Err(e) => {
                let d = Durability::unknown(format!("cannot reach Redis: {e}"));
                *self.durability.write().expect("durability lock") = d.clone();
                return d;
            }
        };
        let config = |name: &'static str| {
            let mut c = self.conn();
            async move {
                let v: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut c).await;
                v.ok().and_then(|v| v.into_iter().nth(1))
            }
        };
        let appendonly = config("appendonly").await;
        let appendfsync = config("appendfsync").await;
        let d = Durability::judge(appendonly.as_deref(), appendfsync.as_deref(), version.as_deref());
        let before = std::mem::replace(&mut *self.durability.write().expect("durability lock"), d.clone());
        if before.detail != d.detail {
            if d.durable {
                tracing::info!(detail = %d.detail, "redis durability");
            } else {
                tracing::warn!(detail = %d.detail, "redis durability");
            }
        }
        d
    }

    /// Waits until Redis has the last writes of this connection on disk.
    async fn confirm_durable(&self) -> Result<(), StoreError> {
        if !self.durability.read().expect("durability lock").waitaof {
            return Ok(());
        }
        let mut c = self.conn();
        let (local, _replicas): (u64, u64) = redis::cmd("WAITAOF")
            .arg(1)
            .arg(0)
            .arg(1500)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if local < 1 {
            return Err(StoreError::Unavailable(
                "redis did not confirm the write on disk in time".into(),
            ));
        }
        Ok(())
    }

    fn ttl_after_close(&self, link: &Link, now: u64) -> u64 {
        (link.closed_at_ms.unwrap_or(now) + self.history_ms)
            .saturating_sub(now)
            .max(1)
    }

    /// Writes a new link, and its audit record in the same script (one write for Redis to make
    /// durable, not two).
    pub async fn insert(&self, link: &Link, audit: Option<&AuditRecord>) -> Result<(), StoreError> {
        let json = encode(link)?;
        let (audit_time, audit_member) = match audit {
            Some(rec) => (rec.time_ms, self.audit_member(rec)?),
            None => (0, String::new()),
        };
        let closed = link.state == LinkState::Closed;
        let now = crate::model::now_ms();
        let _: i64 = self
            .insert
            .key(link_key(link.id.as_str()))
            .key(OPEN)
            .key(OWNERS)
            .key(AUDIT)
            .arg(json)
            .arg(link.id.as_str())
            .arg(link.created_at_ms)
            .arg(if closed { "1" } else { "0" })
            .arg(self.ttl_after_close(link, now))
            .arg(&self.instance)
            .arg(audit_time)
            .arg(audit_member)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.confirm_durable().await
    }

    async fn read_raw(&self, id: &TunnelId) -> Result<Option<Vec<u8>>, StoreError> {
        redis::cmd("GET")
            .arg(link_key(id.as_str()))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    pub async fn get(&self, id: &TunnelId) -> Result<Option<Arc<Link>>, StoreError> {
        self.read_raw(id).await?.map(|b| decode(&b).map(Arc::new)).transpose()
    }

    pub async fn update<R>(&self, id: &TunnelId, f: &mut Updater<'_, R>) -> Result<Option<(R, Arc<Link>)>, StoreError> {
        let stripe = {
            use std::hash::{Hash, Hasher};
            // Fixed keys: the same id always lands on the same stripe.
            let mut h = std::hash::DefaultHasher::new();
            id.hash(&mut h);
            h.finish() as usize % self.stripes.len()
        };
        let _serial = self.stripes[stripe].lock().await;
        for attempt in 0..CAS_ATTEMPTS {
            let Some(old) = self.read_raw(id).await? else {
                return Ok(None);
            };
            let mut link = decode(&old)?;
            let result = f(&mut link);
            let durable = match &result {
                Write::No(_) => return Ok(Some((result.into_inner(), Arc::new(link)))),
                Write::Soft(_) => false,
                Write::Durable(_) => true,
            };
            let new = encode(&link)?;
            let now = crate::model::now_ms();
            let closed = link.state == LinkState::Closed;
            let swapped: i64 = self
                .cas
                .key(link_key(id.as_str()))
                .key(OPEN)
                .key(HISTORY)
                .arg(old)
                .arg(new)
                .arg(id.as_str())
                .arg(if closed { "1" } else { "0" })
                .arg(link.closed_at_ms.unwrap_or(now))
                .arg(self.ttl_after_close(&link, now))
                .arg(link.created_at_ms)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if swapped == 1 {
                if durable {
                    self.confirm_durable().await?;
                }
                return Ok(Some((result.into_inner(), Arc::new(link))));
            }
            // Someone else wrote the record in between. Read it again after a short random pause,
            // so that many contenders spread out instead of colliding again.
            let mut b = [0u8; 1];
            getrandom::fill(&mut b).expect("the OS random source is available");
            let pause = u64::from(b[0] % 8) * u64::from(attempt.min(8) + 1) * 50;
            tokio::time::sleep(Duration::from_micros(pause)).await;
        }
        Err(StoreError::Unavailable(format!(
            "link {id} changed {CAS_ATTEMPTS} times while being updated"
        )))
    }

    async fn load(&self, ids: Vec<String>) -> Result<Vec<Link>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        // Read in small batches, because Redis runs one command at a time, and a creation or a
        // check queued behind a read of hundreds of records would wait for all of it.
        for chunk in ids.chunks(100) {
            let keys: Vec<String> = chunk.iter().map(|id| link_key(id)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(keys)
                .query_async(&mut self.bulk.clone())
                .await
                .map_err(unavailable)?;
            // A record that is missing although its index lists it was purged meanwhile, so skip
            // it.
            blocking(|| {
                for v in values.into_iter().flatten() {
                    out.push(decode(&v)?);
                }
                Ok::<_, StoreError>(())
            })?;
        }
        Ok(out)
    }

    /// Reads the open index newest first, a page at a time, because a single read of thousands of
    /// entries would hold Redis up. Each page covers a whole range of creation times. A page stops
    /// short of its oldest time, and all entries with that time (links created in the same
    /// millisecond) are then read in full in one read, however many there are. So no entry that is
    /// present throughout is skipped, whatever is added or removed meanwhile.
    async fn open_ids(&self) -> Result<Vec<String>, StoreError> {
        const PAGE: usize = 500;
        let mut c = self.bulk.clone();
        let mut ids = Vec::new();
        let mut below = "+inf".to_string();
        loop {
            let page: Vec<(String, u64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(OPEN)
                .arg(&below)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(PAGE)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let full = page.len() == PAGE;
            let Some(&(_, last)) = page.last() else { break };
            ids.extend(page.into_iter().filter(|(_, t)| !full || *t != last).map(|(id, _)| id));
            if !full {
                break;
            }
            let at_last: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(OPEN)
                .arg(last)
                .arg(last)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            ids.extend(at_last);
            below = format!("({last}");
        }
        Ok(ids)
    }

    pub async fn list_open(&self) -> Result<Vec<Arc<Link>>, StoreError> {
        let ids = self.open_ids().await?;
        let links = self.load(ids).await?;
        Ok(links
            .into_iter()
            .filter(|l| l.state != LinkState::Closed)
            .map(Arc::new)
            .collect())
    }

    /// The open index moves with each record in one script, so its size is the count.
    pub async fn count_open(&self) -> Result<usize, StoreError> {
        redis::cmd("ZCARD")
            .arg(OPEN)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    pub async fn history(&self, limit: usize) -> Result<Vec<Link>, StoreError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(HISTORY)
            .arg(0)
            .arg(limit as i64 - 1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.load(ids).await
    }

    pub async fn purge_history(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut c = self.conn();
        let old: Vec<String> = redis::cmd("ZRANGE")
            .arg(HISTORY)
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .arg("BYSCORE")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        for chunk in old.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| link_key(id)).collect();
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(keys)
                .ignore()
                .cmd("ZREM")
                .arg(HISTORY)
                .arg(chunk)
                .ignore()
                .query_async::<()>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(AUDIT)
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(old.len())
    }

    /// An audit record as a member of the audit zset. The prefix keeps two identical records from
    /// the same millisecond distinct, because a zset holds each member only once.
    fn audit_member(&self, rec: &AuditRecord) -> Result<String, StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let seq = self.audit_seq.fetch_add(1, Ordering::Relaxed);
        Ok(format!("{}-{seq}:{json}", self.instance))
    }

    pub async fn audit(&self, rec: &AuditRecord) -> Result<(), StoreError> {
        let member = self.audit_member(rec)?;
        redis::cmd("ZADD")
            .arg(AUDIT)
            .arg(rec.time_ms)
            .arg(member)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    pub async fn audit_query(&self, event: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        const PAGE: usize = 500;
        let mut c = self.conn();
        let total: usize = redis::cmd("ZCARD")
            .arg(AUDIT)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        let mut offset = 0;
        while out.len() < limit && offset < total {
            let page: Vec<String> = redis::cmd("ZRANGE")
                .arg(AUDIT)
                .arg(offset)
                .arg(offset + PAGE - 1)
                .arg("REV")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if page.is_empty() {
                break;
            }
            offset += PAGE;
            for member in page {
                let json = member.split_once(':').map_or(member.as_str(), |(_, j)| j);
                let rec: AuditRecord = serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if event.is_none_or(|e| rec.event == e) {
                    out.push(rec);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_is_judged_from_the_config() {
        let always = Durability::judge(Some("yes"), Some("always"), Some("7.0.15"));
        assert!(always.durable && !always.waitaof);
        let everysec_old = Durability::judge(Some("yes"), Some("everysec"), Some("7.0.15"));
        assert!(!everysec_old.durable);
        assert!(
            everysec_old.detail.contains("appendfsync everysec"),
            "{}",
            everysec_old.detail
        );
        let everysec_new = Durability::judge(Some("yes"), Some("everysec"), Some("7.2.4"));
        assert!(everysec_new.durable && everysec_new.waitaof);
        let off = Durability::judge(Some("no"), Some("always"), Some("7.4.0"));
        assert!(!off.durable && !off.waitaof);
        assert!(off.detail.contains("appendonly is off"));
        let hidden = Durability::judge(None, None, Some("7.4.0"));
        assert!(!hidden.durable && hidden.detail.contains("CONFIG GET"));
        assert_eq!(parse_version("10.1.2"), Some((10, 1)));
        assert_eq!(parse_version("x"), None);
    }
}
