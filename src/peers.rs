//! Several ferry instances sharing one Redis, one per nginx/Funnel node. Each link's tunnel and
//! symlink live on the node of the instance that created it, its owner; the others must ask the
//! owner to tear it down, and take its links over when it is gone, so that deadlines and
//! teardowns still happen. Each instance says it is alive with a heartbeat, and relays its link
//! events to the others' live views.
//!
//! With the embedded store there are no peers: ferry holds `Option<Peers>`, and `None` means
//! this instance is alone and owns every link. The keys it uses are listed in `store/redis.rs`.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::model::TunnelId;
use crate::store::StoreError;
use crate::store::redis::{OWNERS, Redis, unavailable};

/// Pub/sub channel: every instance's link events, for the others' live views.
const EVENTS: &str = "ferry:events";

fn instance_key(iid: &str) -> String {
    format!("ferry:instance:{iid}")
}

fn queue_key(iid: &str) -> String {
    format!("ferry:teardown:{iid}")
}

/// Sets a hash field only if it still holds the expected value. KEYS: owners.
/// ARGV: id, expected, new ('' deletes).
const SWAP_OWNER: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
";

/// Where a link's tunnel lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// On this instance's node, or on no node any more, so tear it down here.
    Here,
    /// On another instance's node, which must be asked.
    Elsewhere(String),
}

/// A stream of the events every instance publishes.
pub type EventStream = Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

pub struct Peers {
    client: redis::Client,
    conn: ConnectionManager,
    /// A connection of its own for the blocking pop of the teardown queue, so that it never
    /// delays the checks' commands.
    queue: ConnectionManager,
    /// The connection for large reads, shared with the store.
    bulk: ConnectionManager,
    instance: String,
    /// How long a teardown request waits for its instance to come back.
    history_ms: u64,
    /// How long an instance may be silent before the others take its links over.
    instance_ttl: Duration,
    /// Since when this instance has seen each other instance's heartbeat missing.
    missing_since: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    swap_owner: redis::Script,
    /// This instance's events on their way to the others, in order.
    outbox: tokio::sync::mpsc::Sender<String>,
    outbox_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
}

impl Peers {
    /// The peers of the instance that uses `store`; `instance_ttl` is the takeover timeout.
    pub fn new(store: &Redis, instance_ttl: Duration) -> Result<Peers, StoreError> {
        let (outbox, outbox_rx) = tokio::sync::mpsc::channel(4096);
        Ok(Peers {
            client: store.client(),
            conn: store.conn(),
            queue: store.connection(Duration::from_secs(5))?,
            bulk: store.bulk(),
            instance: store.instance().to_string(),
            history_ms: store.history_ms(),
            instance_ttl,
            missing_since: Default::default(),
            swap_owner: redis::Script::new(SWAP_OWNER),
            outbox,
            outbox_rx: std::sync::Mutex::new(Some(outbox_rx)),
        })
    }

    /// This instance's name in shared state.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Which instance owns each open link's tunnel, read a few hundred at a time. HSCAN returns
    /// every entry that is present for the whole scan, and an entry added meanwhile may have to
    /// wait for the next scan.
    async fn owners(&self) -> Result<HashMap<String, String>, StoreError> {
        let mut out = HashMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(OWNERS)
                .arg(cursor)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut self.bulk.clone())
                .await
                .map_err(unavailable)?;
            out.extend(page);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Where the tunnel of `id` lives.
    pub async fn owner(&self, id: &TunnelId) -> Result<Owner, StoreError> {
        let owner: Option<String> = redis::cmd("HGET")
            .arg(OWNERS)
            .arg(id.as_str())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(match owner {
            Some(o) if o != self.instance => Owner::Elsewhere(o),
            _ => Owner::Here,
        })
    }

    /// The ids of open links whose tunnel is on this instance.
    pub async fn owned_here(&self) -> Result<HashSet<TunnelId>, StoreError> {
        Ok(self
            .owners()
            .await?
            .into_iter()
            .filter(|(_, o)| *o == self.instance)
            .filter_map(|(id, _)| TunnelId::parse(&id).ok())
            .collect())
    }

    /// Forgets that this instance owns `id` (its teardown is done here).
    pub async fn release(&self, id: &TunnelId) -> Result<(), StoreError> {
        self.swap(id, &self.instance, "").await.map(drop)
    }

    /// Takes `id` back from whichever instance holds it, because this node has its tunnel.
    /// Returns true if another instance held it.
    pub async fn reclaim(&self, id: &TunnelId) -> Result<bool, StoreError> {
        let Owner::Elsewhere(current) = self.owner(id).await? else {
            return Ok(false);
        };
        self.swap(id, &current, &self.instance).await
    }

    /// Moves `id` from instance `from` to `to` ("" for nobody) if `from` still owns it.
    async fn swap(&self, id: &TunnelId, from: &str, to: &str) -> Result<bool, StoreError> {
        let swapped: i64 = self
            .swap_owner
            .key(OWNERS)
            .arg(id.as_str())
            .arg(from)
            .arg(to)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(swapped == 1)
    }

    /// Asks instance `owner` to tear `id` down on its node.
    pub async fn hand_over(&self, owner: &str, id: &TunnelId) -> Result<(), StoreError> {
        let key = queue_key(owner);
        redis::pipe()
            .cmd("RPUSH")
            .arg(&key)
            .arg(id.as_str())
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(self.history_ms.max(1))
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// The next link this instance was asked to tear down, waiting up to `wait` (whole seconds).
    pub async fn next_teardown(&self, wait: Duration) -> Result<Option<TunnelId>, StoreError> {
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(queue_key(&self.instance))
            .arg(wait.as_secs().max(1))
            .query_async(&mut self.queue.clone())
            .await
            .map_err(unavailable)?;
        Ok(popped.and_then(|(_, id)| TunnelId::parse(&id).ok()))
    }

    /// Queues one of this instance's events for the others. Their live views may miss an event
    /// while Redis is away or the queue is full; nothing else does.
    pub fn relay(&self, event: &str, data: &impl serde::Serialize) {
        let payload = serde_json::json!({"from": self.instance, "event": event, "data": data}).to_string();
        if self.outbox.try_send(payload).is_err() {
            tracing::debug!(event, "event not relayed to other instances (outbox full)");
        }
    }

    /// The queue `relay` fills, for the one task that publishes it (`None` after the first call).
    pub fn take_outbox(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        self.outbox_rx.lock().expect("outbox mutex").take()
    }

    /// Sends one event to every instance.
    pub async fn publish_event(&self, payload: &str) -> Result<(), StoreError> {
        redis::cmd("PUBLISH")
            .arg(EVENTS)
            .arg(payload)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// A subscription to every instance's events; it ends when the connection does.
    pub async fn event_stream(&self) -> Result<EventStream, StoreError> {
        use futures_util::StreamExt;
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(EVENTS).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| StoreError::Unavailable("redis: subscribing timed out".into()))?
            .map_err(unavailable)?;
        Ok(Box::pin(
            pubsub
                .into_on_message()
                .filter_map(|m| async move { m.get_payload::<String>().ok() }),
        ))
    }

    /// Says this instance is alive for the next takeover timeout.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(instance_key(&self.instance))
            .arg(crate::model::now_ms())
            .arg("PX")
            .arg(self.instance_ttl.as_millis() as u64)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// Takes over the links of instances whose heartbeat has lapsed; returns their ids.
    ///
    /// A lapsed heartbeat is not enough on its own: after an outage of Redis longer than the
    /// timeout every heartbeat has lapsed, and the first instance back would take everything.
    /// So this instance must also have seen the other's heartbeat missing for half the timeout
    /// on its own clock, longer than the heartbeat interval (a third of it): a live instance
    /// beats again within that.
    pub async fn take_over(&self) -> Result<Vec<TunnelId>, StoreError> {
        let owners = self.owners().await?;
        let dead = self.gone(&owners).await?;
        let mut taken = Vec::new();
        for (id, owner) in &owners {
            let Ok(id) = TunnelId::parse(id) else { continue };
            if dead.contains(owner) && self.swap(&id, owner, &self.instance).await? {
                taken.push(id);
            }
        }
        Ok(taken)
    }

    /// The instances among `owners` whose heartbeat has been missing for half the timeout.
    async fn gone(&self, owners: &HashMap<String, String>) -> Result<HashSet<String>, StoreError> {
        let distinct: HashSet<&String> = owners.values().filter(|o| **o != self.instance).collect();
        let mut missing = Vec::new();
        for o in distinct {
            let alive: bool = redis::cmd("EXISTS")
                .arg(instance_key(o))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            if !alive {
                missing.push(o.clone());
            }
        }
        let mut since = self.missing_since.lock().expect("missing mutex");
        since.retain(|o, _| missing.contains(o));
        let now = std::time::Instant::now();
        Ok(missing
            .into_iter()
            .filter(|o| now.duration_since(*since.entry(o.clone()).or_insert(now)) >= self.instance_ttl / 2)
            .collect())
    }
}
