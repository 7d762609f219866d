//! The store contract: one set of tests over `Store`, run against the embedded backend (redb in a
//! temp dir) and against a real `redis-server` on a free loopback port.

use std::sync::Arc;

use ferry::data_dir::{FileIdentity, RelPath};
use ferry::model::{ClientKey, Link, LinkState, TunnelId};
use ferry::store::audit::AuditRecord;
use ferry::store::{Store, Write};

use crate::helpers::RedisServer;

/// A store under test and whatever must live as long as it.
pub struct Subject {
    pub store: Arc<Store>,
    _dir: Option<tempfile::TempDir>,
    pub redis: Option<RedisServer>,
}

pub fn embedded() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let store = ferry::store::embedded::Embedded::open(&dir.path().join("ferry.redb")).unwrap();
    Subject {
        store: Arc::new(Store::Embedded(Box::new(store))),
        _dir: Some(dir),
        redis: None,
    }
}

pub async fn redis_store(url: &str, instance: &str) -> Store {
    let r = ferry::store::redis::Redis::connect(url, instance.into(), 86_400_000)
        .await
        .unwrap();
    Store::Redis(Box::new(r))
}

pub async fn redis() -> Subject {
    let server = RedisServer::start().await;
    let store = redis_store(&server.url(), "contract").await;
    Subject {
        store: Arc::new(store),
        _dir: None,
        redis: Some(server),
    }
}

/// A link created `created_at_ms` after now (times are real: Redis expires closed links from
/// their closing time).
pub fn link(created_at_ms: u64) -> Link {
    let created_at_ms = now() + created_at_ms;
    let identity = FileIdentity {
        dev: 1,
        ino: 2,
        size: 1000,
        mtime_ns: 3,
    };
    Link {
        note: Some("a note".into()),
        ..Link::new(
            TunnelId::random(),
            RelPath::parse("dir/f.bin").unwrap(),
            identity,
            created_at_ms,
            created_at_ms + 3_600_000,
            1,
        )
    }
}

fn now() -> u64 {
    // One base for the whole test binary run, so offsets compare.
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BASE.get_or_init(ferry::model::now_ms)
}

async fn close(store: &Store, id: &TunnelId, at: u64) -> bool {
    let at = now() + at;
    store
        .update(id, &mut |l| {
            if l.state == LinkState::Closed {
                return Write::No(false);
            }
            l.state = LinkState::Closed;
            l.close_reason = Some(ferry::model::CloseReason::Terminated);
            l.closed_at_ms = Some(at);
            Write::Durable(true)
        })
        .await
        .unwrap()
        .unwrap()
        .0
}

fn ids<L: std::borrow::Borrow<Link>>(links: &[L]) -> Vec<TunnelId> {
    links.iter().map(|l| l.borrow().id.clone()).collect()
}

async fn insert_then_get_returns_the_same_record(s: Subject) {
    let store = &s.store;
    let l = link(1_000);
    store.insert(&l).await.unwrap();
    assert_eq!(store.get(&l.id).await.unwrap().as_deref(), Some(&l));
    assert_eq!(store.get(&TunnelId::random()).await.unwrap(), None);
    assert!(store.ping().await.is_ok());
}

async fn update_writes_only_what_the_closure_changed(s: Subject) {
    let store = &s.store;
    let l = link(1_000);
    store.insert(&l).await.unwrap();
    // Write::No: nothing to write, and the closure's answer and record come back.
    let r = store.update(&l.id, &mut |_| Write::No(7)).await.unwrap();
    let (r, seen) = r.unwrap();
    assert_eq!((r, seen.bytes_served), (7, 0));
    for (n, durable) in [(5u64, false), (6, true)] {
        store
            .update(&l.id, &mut |l| {
                l.bytes_served = n;
                if durable { Write::Durable(()) } else { Write::Soft(()) }
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.get(&l.id).await.unwrap().unwrap().bytes_served, n);
    }
    let missing = store
        .update(&TunnelId::random(), &mut |_| Write::Durable(1))
        .await
        .unwrap();
    assert_eq!(missing, None);
}

async fn open_and_history_are_listed_newest_first(s: Subject) {
    let store = &s.store;
    let links: Vec<Link> = (0..4).map(|i| link(10_000 + i * 1000)).collect();
    for l in &links {
        store.insert(l).await.unwrap();
    }
    let mut open = ids(&store.list_open().await.unwrap());
    open.sort();
    let mut all = ids(&links);
    all.sort();
    assert_eq!(open, all);
    assert_eq!(store.count_open().await.unwrap(), 4);

    // Closed in the order 2, 0, 3: history is newest first.
    assert!(close(store, &links[2].id, 50_000).await);
    assert!(close(store, &links[0].id, 51_000).await);
    assert!(close(store, &links[3].id, 52_000).await);
    // Closing again changes nothing and adds no second history row.
    assert!(!close(store, &links[0].id, 53_000).await);
    assert_eq!(ids(&store.list_open().await.unwrap()), vec![links[1].id.clone()]);
    assert_eq!(store.count_open().await.unwrap(), 1);
    let history = store.history(10).await.unwrap();
    assert_eq!(
        ids(&history),
        vec![links[3].id.clone(), links[0].id.clone(), links[2].id.clone()]
    );
    assert!(history.iter().all(|l| l.state == LinkState::Closed));
    assert_eq!(ids(&store.history(2).await.unwrap()).len(), 2);
    assert!(store.history(0).await.unwrap().is_empty());
    // A closed link is still readable by id (stats of a past link).
    assert_eq!(
        store.get(&links[2].id).await.unwrap().unwrap().closed_at_ms,
        Some(now() + 50_000)
    );
}

/// Listing reads the open index in pages (Redis): across page boundaries, creation times shared
/// by more links than a page holds, and links created and closed while it reads, every link open
/// throughout is listed, and once.
async fn every_open_link_is_listed_once(s: Subject) {
    let store = &s.store;
    // 3 links a millisecond, and 700 in one millisecond.
    let stable: Vec<Link> = (0..1300)
        .map(|i| link(20_000 + if i < 600 { i / 3 } else { 400 }))
        .collect();
    let churn: Vec<Link> = (0..200).map(|i| link(20_000 + i)).collect();
    for batch in stable.chunks(100).chain(churn.chunks(100)) {
        futures_util::future::join_all(batch.iter().map(|l| store.insert(l))).await;
    }
    let meanwhile = {
        let store = store.clone();
        let churn: Vec<TunnelId> = churn.iter().map(|l| l.id.clone()).collect();
        tokio::spawn(async move {
            for (i, id) in churn.iter().enumerate() {
                close(&store, id, 60_000).await;
                store.insert(&link(20_000 + i as u64 % 300)).await.unwrap();
            }
        })
    };
    for _ in 0..5 {
        let listed = ids(&store.list_open().await.unwrap());
        let unique: std::collections::HashSet<&TunnelId> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "a link listed twice");
        let missing = stable.iter().filter(|l| !unique.contains(&l.id)).count();
        assert_eq!(missing, 0, "open links missing from the list");
    }
    meanwhile.await.unwrap();
}

async fn retention_forgets_only_old_history(s: Subject) {
    let store = &s.store;
    let old = link(1_000);
    let recent = link(2_000);
    let open = link(3_000);
    for l in [&old, &recent, &open] {
        store.insert(l).await.unwrap();
    }
    close(store, &old.id, 10_000).await;
    close(store, &recent.id, 20_000).await;
    for (t, e) in [(5_000, "old"), (25_000, "new")] {
        store
            .audit(&AuditRecord {
                time_ms: now() + t,
                event: e.into(),
                client: None,
                tunnel_id: None,
                detail: None,
            })
            .await
            .unwrap();
    }
    assert_eq!(store.purge_history(now() + 15_000).await.unwrap(), 1);
    assert_eq!(store.get(&old.id).await.unwrap(), None);
    assert_eq!(ids(&store.history(10).await.unwrap()), vec![recent.id.clone()]);
    assert_eq!(ids(&store.list_open().await.unwrap()), vec![open.id.clone()]);
    let audit = store.audit_query(None, 10).await.unwrap();
    assert_eq!(audit.iter().map(|a| a.event.as_str()).collect::<Vec<_>>(), vec!["new"]);
}

async fn audit_is_newest_first_filtered_and_limited(s: Subject) {
    let store = &s.store;
    for i in 0..30u64 {
        let rec = AuditRecord {
            time_ms: 1_000 + i,
            event: if i % 3 == 0 { "refused" } else { "link.created" }.into(),
            client: Some("10.0.0.1".into()),
            tunnel_id: None,
            detail: Some(format!("n{i}")),
        };
        store.audit(&rec).await.unwrap();
        // The same record twice is kept twice.
        if i == 29 {
            store.audit(&rec).await.unwrap();
        }
    }
    let all = store.audit_query(None, 100).await.unwrap();
    assert_eq!(all.len(), 31);
    assert!(all.windows(2).all(|w| w[0].time_ms >= w[1].time_ms));
    let refused = store.audit_query(Some("refused"), 3).await.unwrap();
    assert_eq!(
        refused.iter().map(|r| r.detail.clone().unwrap()).collect::<Vec<_>>(),
        vec!["n27", "n24", "n21"]
    );
    assert!(store.audit_query(Some("nothing"), 10).await.unwrap().is_empty());
}

async fn a_new_link_and_its_audit_record_are_written_together(s: Subject) {
    let store = &s.store;
    let l = link(5_000);
    let rec = AuditRecord {
        time_ms: 5_000,
        event: "link.created".into(),
        client: Some("10.0.0.9".into()),
        tunnel_id: Some(l.id.to_string()),
        detail: Some("f.bin".into()),
    };
    store.insert_audited(&l, Some(&rec)).await.unwrap();
    assert_eq!(store.get(&l.id).await.unwrap().as_deref(), Some(&l));
    assert_eq!(store.audit_query(None, 10).await.unwrap(), vec![rec]);
}

/// `n` concurrent updates of link `id`, spread over `stores`, each adding a byte and the first
/// also taking the claim. Returns how many took it and how long it all took.
pub async fn race_updates(stores: &[Arc<Store>], id: &TunnelId, n: u32) -> (u32, std::time::Duration) {
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = stores[i as usize % stores.len()].clone();
        let id = id.clone();
        tasks.spawn(async move {
            store
                .update(&id, &mut |l| {
                    l.bytes_served += 1;
                    if l.completer.is_none() {
                        l.completer = ClientKey::new(&format!("10.0.{}.{}", i / 256, i % 256), "ua");
                        Write::Durable(true)
                    } else {
                        Write::Soft(false)
                    }
                })
                .await
                .unwrap()
                .unwrap()
                .0
        });
    }
    let mut winners = 0;
    while let Some(r) = tasks.join_next().await {
        winners += u32::from(r.unwrap());
    }
    (winners, started.elapsed())
}

/// 100 concurrent updates of one record: none is lost, and a first-come claim has one winner.
async fn concurrent_updates_are_atomic(s: Subject) {
    let l = link(1_000);
    s.store.insert(&l).await.unwrap();
    let (winners, took) = race_updates(std::slice::from_ref(&s.store), &l.id, 100).await;
    println!(
        "100 concurrent updates of one link on {}: {} ms",
        s.store.kind(),
        took.as_millis()
    );
    assert_eq!(winners, 1);
    let l = s.store.get(&l.id).await.unwrap().unwrap();
    assert_eq!(l.bytes_served, 100);
    assert!(l.completer.is_some());
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::embedded()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::redis().await).await;
                }
            )*
        }
    };
}

contract!(
    insert_then_get_returns_the_same_record,
    update_writes_only_what_the_closure_changed,
    open_and_history_are_listed_newest_first,
    every_open_link_is_listed_once,
    retention_forgets_only_old_history,
    audit_is_newest_first_filtered_and_limited,
    a_new_link_and_its_audit_record_are_written_together,
    concurrent_updates_are_atomic,
);
