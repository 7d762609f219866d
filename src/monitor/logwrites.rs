//! Tracks whether nginx can write its access log. The log line is the ledger of every download
//! (SPEC §3), so a request served while its line cannot be written would deliver bytes that nobody
//! counts. While writes fail (most often because the disk is full), ferry therefore takes no new
//! claims and `/health` reports itself degraded.
//!
//! There are two sources of evidence, because neither sees everything. The first is nginx's error
//! log, which names each failed write. It arrives on nginx's stderr in managed mode and on the
//! error-log socket in external mode, where a message is lost if the socket's queue has no room
//! for it. The second is the free space of the logs dir, probed every second, which catches a disk
//! that is about to fill.
//! Writes count as working again once a line newer than the last failure arrives, or once the
//! disk has room and nginx has not complained for a while.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::model::now_ms;

/// Below this much free space the next lines may not fit, so ferry stops before the writes fail.
pub const LOW_SPACE: u64 = 256 << 10;
/// With no complaint from nginx for this long and room on the disk, writes work again.
const QUIET_MS: u64 = 3_000;

#[derive(Debug, Default)]
pub struct LogWrites {
    /// When writes started failing (ms since the epoch), 0 while they work.
    failing_since: AtomicU64,
    /// The last evidence of a failure.
    last_failure: AtomicU64,
    /// Whether the last probe found the disk nearly full. While it is, a line that still fitted
    /// does not prove that writes work.
    low_space: AtomicBool,
}

impl LogWrites {
    pub fn failing(&self) -> bool {
        self.failing_since.load(Ordering::SeqCst) != 0
    }

    fn fail(&self, now: u64) {
        self.last_failure.store(now, Ordering::SeqCst);
        if self
            .failing_since
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tracing::error!("nginx cannot write its access log: taking no new claims until it can");
        }
    }

    fn recover(&self) {
        if self.failing_since.swap(0, Ordering::SeqCst) != 0 {
            tracing::info!("nginx writes its access log again");
        }
    }

    /// Takes a line from nginx's error log. Returns true when the line reports a failed access-log
    /// write.
    pub fn error_line(&self, line: &str, logs_dir: &Path, now: u64) -> bool {
        let failed = is_write_failure(line, logs_dir);
        if failed {
            self.fail(now);
        }
        failed
    }

    /// Records that a line nginx wrote at `logged_ms` arrived, which shows that writes after the
    /// last failure work.
    pub fn line_seen(&self, logged_ms: u64) {
        if self.failing()
            && !self.low_space.load(Ordering::SeqCst)
            && logged_ms > self.last_failure.load(Ordering::SeqCst)
        {
            self.recover();
        }
    }

    /// Records that the logs dir has `free` bytes available to unprivileged writers.
    pub fn space(&self, free: u64, now: u64) {
        self.low_space.store(free < LOW_SPACE, Ordering::SeqCst);
        if free < LOW_SPACE {
            self.fail(now);
        } else if self.failing() && now.saturating_sub(self.last_failure.load(Ordering::SeqCst)) >= QUIET_MS {
            self.recover();
        }
    }
}

/// Whether `line` is nginx's message for a failed write to a file in the logs dir, either
/// `write() to "<file>" failed (28: No space left on device)` or `... was incomplete: 10 of 412`.
pub fn is_write_failure(line: &str, logs_dir: &Path) -> bool {
    let Some(at) = line.find("write() to \"") else {
        return false;
    };
    let rest = &line[at + "write() to \"".len()..];
    let Some(end) = rest.find('"') else {
        return false;
    };
    let (file, after) = (&rest[..end], &rest[end + 1..]);
    Path::new(file).starts_with(logs_dir) && (after.starts_with(" failed") || after.starts_with(" was incomplete"))
}

/// Probes the free space of `dir` every second until `cancel`.
pub async fn watch_space(writes: std::sync::Arc<LogWrites>, dir: PathBuf, cancel: CancellationToken) {
    let mut every = crate::model::Every::new(Duration::from_secs(1), cancel);
    while every.tick().await {
        match rustix::fs::statvfs(&dir) {
            Ok(s) => writes.space(s.f_bavail.saturating_mul(s.f_frsize), now_ms()),
            Err(e) => tracing::warn!(error = %e, dir = %dir.display(), "cannot read the logs dir's free space"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/srv/ferry/logs";

    #[test]
    fn nginx_write_failures_on_the_access_log_are_recognised() {
        let dir = Path::new(DIR);
        assert!(is_write_failure(
            r#"2026/11/23 10:00:00 [alert] 12#12: *5 write() to "/srv/ferry/logs/access-17.log" failed (28: No space left on device) while logging request, client: 127.0.0.1"#,
            dir
        ));
        assert!(is_write_failure(
            r#"2026/11/23 10:00:00 [alert] 12#12: *5 write() to "/srv/ferry/logs/access-17.log" was incomplete: 10 of 412 while logging request"#,
            dir
        ));
        // Another file, another message or a look-alike directory does not mean that the access
        // log is failing.
        assert!(!is_write_failure(
            r#"[alert] write() to "/var/log/other.log" failed (28: No space left on device)"#,
            dir
        ));
        assert!(!is_write_failure(
            r#"[alert] write() to "/srv/ferry/logs2/access-1.log" failed (28)"#,
            dir
        ));
        assert!(!is_write_failure(r#"[error] open() "/srv/ferry/logs/x" failed"#, dir));
        assert!(!is_write_failure(r#"write() to "/srv/ferry/logs/access-1.log"#, dir));
    }

    #[test]
    fn failing_until_a_newer_line_or_room_and_quiet() {
        let w = LogWrites::default();
        let dir = Path::new(DIR);
        assert!(!w.failing());
        assert!(w.error_line(r#"write() to "/srv/ferry/logs/a.log" failed (28)"#, dir, 1_000));
        assert!(w.failing());
        // A line written before the failure proves nothing.
        w.line_seen(999);
        assert!(w.failing());
        w.line_seen(1_001);
        assert!(!w.failing());

        // Low space counts as a failure at once, but room on the disk alone ends the failure only
        // after a quiet spell.
        w.space(LOW_SPACE - 1, 10_000);
        assert!(w.failing());
        // While the disk is nearly full, a line that still fitted does not end it.
        w.line_seen(10_500);
        assert!(w.failing());
        w.space(1 << 30, 10_000 + QUIET_MS - 1);
        assert!(w.failing());
        w.space(1 << 30, 10_000 + QUIET_MS);
        assert!(!w.failing());
        // nginx's complaint restarts the quiet spell even with room on the disk.
        w.error_line(r#"write() to "/srv/ferry/logs/a.log" failed (28)"#, dir, 20_000);
        w.space(1 << 30, 21_000);
        assert!(w.failing());
    }
}
