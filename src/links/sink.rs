//! The links as the receiver of the access-log follower's lines. Each run of one link's lines is
//! settled in one update, and the follower's saved position waits until the store has made those
//! writes durable. The follower knows nothing else about the links.

use super::service::Links;
use crate::monitor::follow::RecordSink;
use crate::monitor::record::AccessRecord;
use crate::store::StoreError;

impl RecordSink for Links {
    async fn apply(&self, recs: &[AccessRecord]) -> Result<(), StoreError> {
        self.apply_logs(recs).await
    }

    fn line_seen(&self, logged_ms: u64) {
        self.log_writes.line_seen(logged_ms);
    }

    fn mark(&self) -> u64 {
        self.store().mark()
    }

    fn is_durable(&self, mark: u64) -> bool {
        self.store().is_durable(mark)
    }

    async fn persist(&self) -> Result<(), StoreError> {
        self.store().persist().await
    }
}

/// The follower end to end over real links and a real store: what a line does to a link, and
/// what a restart reads again.
#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio_util::sync::CancellationToken;

    use crate::config::LogSlot;
    use crate::links::Links;
    use crate::links::timed_tests::{Fixture, fixture, new_link, record};
    use crate::model::{TunnelId, now_ms};
    use crate::monitor::follow::{Counters, Follower, Position, SAVE_WITHIN};
    use crate::monitor::steps::Spot;

    fn saved(path: &Path) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        Some(text.trim_end().to_string())
    }

    fn at(name: &str, offset: u64) -> Spot {
        Spot {
            offset,
            ..Spot::start(name)
        }
    }

    /// A link, a logs dir with one-second slots, and followers over it.
    struct Slots {
        f: Fixture,
        link: TunnelId,
        dir: tempfile::TempDir,
    }

    impl Slots {
        async fn new() -> Slots {
            let f = fixture(&[]);
            let (created, _) = f.links.create(new_link(3600), None).await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("logs")).unwrap();
            Slots {
                f,
                link: created.tunnel_id,
                dir,
            }
        }

        /// One line of the link for the 100 bytes at `start`, as nginx writes it.
        fn line(&self, n: usize, start: u64) -> String {
            format!(
                r#"{{"msec":"{}","request_id":"{n:0>32}","tunnel_id":"{}","method":"GET","status":206,"bytes_sent":400,"body_bytes_sent":100,"range":"","content_range":"bytes {start}-{}/4000000","completion":"OK","client":"127.0.0.5","user_agent":"curl","request_time":0.001,"preview":"0"}}"#,
                now_ms() as f64 / 1000.0,
                self.link.as_str(),
                start + 99
            ) + "\n"
        }

        fn file(&self, slot: u64) -> PathBuf {
            self.dir.path().join("logs").join(format!("access-{slot}.log"))
        }

        fn append(&self, slot: u64, text: &str) {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.file(slot))
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }

        fn saved(&self) -> Option<String> {
            saved(&self.dir.path().join("access.position"))
        }

        async fn served(&self) -> u64 {
            self.f
                .links
                .store()
                .get(&self.link)
                .await
                .unwrap()
                .unwrap()
                .bytes_served
        }

        /// Waits until the link has `bytes` served, for at most `within`.
        async fn until_served(&self, bytes: u64, within: Duration, what: &str) {
            let started = Instant::now();
            while self.served().await < bytes {
                assert!(started.elapsed() < within, "{what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        /// A follower running until the token is cancelled.
        fn follow(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
            let follower = Follower {
                dir: self.dir.path().join("logs"),
                slot: LogSlot::Second,
                position_file: self.dir.path().join("access.position"),
                counters: Arc::new(Counters::default()),
            };
            let cancel = CancellationToken::new();
            (cancel.clone(), tokio::spawn(follower.run(self.f.links.clone(), cancel)))
        }
    }

    /// Waits until the current second is young and returns it. The previous second's file is then
    /// still settling for a while.
    async fn early_in_a_second() -> u64 {
        while now_ms() % 1000 > 300 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        now_ms() / 1000
    }

    /// A worker that read the clock during an older slot can still create that slot's file after
    /// the next slot's file exists, if nothing was logged in the older slot before. The file
    /// before the late one is kept until that can no longer happen, and the late file is read
    /// rather than deleted unread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_of_an_older_slot_that_appears_late_is_read() {
        let t = Slots::new().await;
        let slot = early_in_a_second().await;
        t.append(slot - 2, &t.line(1, 0));
        t.append(slot, &t.line(2, 100));
        let (cancel, run) = t.follow();
        // Wait until 1.5 s after slot - 2 ended. A follower that waited only for that file's own
        // slot to settle would already have left the file by then.
        while now_ms() < slot * 1000 + 700 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(t.served().await, 200);
        t.append(slot - 1, &t.line(3, 200));
        t.until_served(300, Duration::from_secs(3), "the late file's line was lost")
            .await;
        cancel.cancel();
        run.await.unwrap();
    }

    /// While a slot's file settles, the next file's lines are applied at once. A restart in
    /// between applies none of them twice, and once the first file has settled the follower moves
    /// on to the next file at the place it had reached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_slots_lines_wait_for_no_settling_and_a_restart_applies_none_twice() {
        let t = Slots::new().await;
        let slot = early_in_a_second().await;
        let (before, after) = (slot - 1, slot);
        let first = t.line(1, 0);
        t.append(before, &first);
        // These are more lines than a link remembers request ids for, so reading them a second
        // time would count them again.
        let later: String = (0..30).map(|i| t.line(100 + i, 1000 + 100 * i as u64)).collect();
        t.append(after, &later);
        let name = |slot: u64| format!("access-{slot}.log");

        let (cancel, run) = t.follow();
        t.until_served(3_100, Duration::from_millis(500), "the next slot's lines waited")
            .await;
        assert!(t.file(before).exists(), "the settling file was left early");
        cancel.cancel();
        run.await.unwrap();
        assert_eq!(
            t.saved(),
            Some(format!(
                "{} {} {} {}",
                name(before),
                first.len(),
                name(after),
                later.len()
            ))
        );

        let (cancel, run) = t.follow();
        let started = Instant::now();
        while t.file(before).exists() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the settled file was never left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = t.line(200, 9000);
        t.append(after, &last);
        t.until_served(3_200, Duration::from_secs(2), "a line after the switch was missed")
            .await;
        cancel.cancel();
        run.await.unwrap();
        assert_eq!(t.served().await, 3_200, "a line was applied twice");
        assert_eq!(t.saved(), Some(format!("{} {}", name(after), later.len() + last.len())));
    }

    /// The saved position moves past lines only once their writes are durable. That happens at
    /// once when another commit with fsync covers them, within `SAVE_WITHIN` when nobody makes
    /// one, and at shutdown. A read that caused only soft writes makes no commit of its own.
    #[tokio::test]
    async fn the_position_waits_for_a_durable_commit_and_takes_none_per_read() {
        let f = fixture(&[]);
        let links: &Links = &f.links;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.position");
        let (created, _) = links.create(new_link(3600), None).await.unwrap();
        let mut rec = record(&format!("{:0>32}", 1), 206, 100, "bytes 0-99/4000000");
        rec.tunnel_id = Some(created.tunnel_id.clone());
        links.apply_logs(std::slice::from_ref(&rec)).await.unwrap();

        let mut position = Position::new(&path);
        position.advance(links, &at("access-1.log", 400)).await;
        assert_eq!(saved(&path), None, "saved past a soft write nobody made durable");
        // Creating another link makes a commit with fsync, which also makes the line's write
        // durable.
        links.create(new_link(3600), None).await.unwrap();
        position.catch_up(links).await;
        assert_eq!(saved(&path).as_deref(), Some("access-1.log 400"));

        rec.request_id = format!("{:0>32}", 2);
        rec.content_range = Some("bytes 100-199/4000000".into());
        links.apply_logs(std::slice::from_ref(&rec)).await.unwrap();
        position.advance(links, &at("access-1.log", 800)).await;
        assert_eq!(saved(&path).as_deref(), Some("access-1.log 400"));
        tokio::time::sleep(SAVE_WITHIN).await;
        position.catch_up(links).await;
        assert_eq!(saved(&path).as_deref(), Some("access-1.log 800"));
        assert!(links.store().is_durable(links.store().mark()));

        rec.request_id = format!("{:0>32}", 3);
        rec.content_range = Some("bytes 200-299/4000000".into());
        links.apply_logs(std::slice::from_ref(&rec)).await.unwrap();
        position.advance(links, &at("access-1.log", 1200)).await;
        position.flush(links).await;
        assert_eq!(
            saved(&path).as_deref(),
            Some("access-1.log 1200"),
            "a shutdown left the position behind"
        );
        let link = links.store().get(&created.tunnel_id).await.unwrap().unwrap();
        assert_eq!(link.bytes_served, 300);
    }
}
