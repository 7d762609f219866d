//! Follows nginx's access log without ever losing a line, and without signalling nginx.
//!
//! nginx writes each line to `logs/access-<slot>.log`, the slot being a prefix of `$msec` (see
//! `nginx/nginx.conf`): a new file begins when the clock enters a new slot, so rotation needs no
//! rename and no reopen signal (it works when nginx runs in another container). The follower reads
//! the files in slot order, each to its end; it leaves a file only once a later one exists and the
//! file's slot ended long enough ago that no worker can still be writing to it, and then deletes it.
//! While a file settles so, the next file is read too, so that its lines do not wait for the
//! settling. The position (file name and offset, and the same for the file read ahead) is kept in
//! the state dir, so a restart neither loses nor repeats a line. It never decides anything about
//! a link: the lines go to a [`RecordSink`].

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::record::AccessRecord;
use crate::config::LogSlot;
use crate::links::now_ms;
use crate::store::StoreError;

/// How long to wait for more log when nothing tells ferry it was written.
const IDLE: Duration = Duration::from_millis(10);
/// With inotify, the longest wait before looking anyway (a missed event costs no more).
const IDLE_WATCHED: Duration = Duration::from_millis(200);
/// How long after a slot ends before no worker writes to its file any more (a worker reads the
/// clock once per turn of its event loop, and a write can be slow).
const SETTLE_MS: u64 = 1500;
/// After a read that found this many lines or more, the next read waits `BATCH_PAUSE`: under load
/// lines are read in batches (a few hundred a read) instead of one wake-up each, which is what
/// following the log costs nginx; an idle log is still read the moment a line arrives.
const BUSY_LINES: usize = 16;
const BATCH_PAUSE: Duration = Duration::from_millis(2);
/// How long the position may wait for somebody else's commit with fsync to cover the lines
/// before it (a claim, a completion, a close) before the follower makes one itself. Making one
/// per read, a few hundred a second under load, was a tenth of ferry's CPU.
pub(crate) const SAVE_WITHIN: Duration = Duration::from_secs(1);

/// The file being read (the current one, or the one after it, read ahead), what is left of its
/// last line, and the position it moves.
struct Reading<'a> {
    file: &'a File,
    partial: &'a mut Vec<u8>,
    spot: &'a mut Spot,
    ahead: bool,
    saved: &'a mut Position,
}

/// Where the follower is: the lines of `name` before `offset` are applied and, while that file
/// settles, those of a later file (the next one, read ahead) before its own offset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spot {
    pub(crate) name: String,
    pub(crate) offset: u64,
    pub(crate) ahead: Option<(String, u64)>,
}

impl Spot {
    pub(crate) fn start(name: &str) -> Spot {
        Spot {
            name: name.to_string(),
            offset: 0,
            ahead: None,
        }
    }

    /// The offset of the current file, or of the one read ahead (none before it is opened).
    fn offset_mut(&mut self, ahead: bool) -> Option<&mut u64> {
        match ahead {
            false => Some(&mut self.offset),
            true => self.ahead.as_mut().map(|(_, offset)| offset),
        }
    }

    /// "<name> <offset>", then "<name> <offset>" of the file read ahead, if any.
    fn parse(text: &str) -> Option<Spot> {
        let mut words = text.split_ascii_whitespace();
        let (name, offset) = (words.next()?, words.next()?.parse().ok()?);
        let ahead = match (words.next(), words.next()) {
            (None, _) => None,
            (Some(n), Some(o)) => Some((n.to_string(), o.parse().ok()?)),
            (Some(_), None) => return None,
        };
        words.next().is_none().then(|| Spot {
            name: name.to_string(),
            offset,
            ahead,
        })
    }
}

impl std::fmt::Display for Spot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.offset)?;
        match &self.ahead {
            Some((name, offset)) => write!(f, " {name} {offset}"),
            None => Ok(()),
        }
    }
}

/// What the follower hands its lines to, and asks whether what it handed is kept for good.
pub trait RecordSink: Send + Sync {
    /// Applies lines of one link, in their order, in one update.
    fn apply(&self, recs: &[AccessRecord]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Tells that a line nginx wrote at `logged_ms` (milliseconds since the epoch) was read: the
    /// log can be written again.
    fn line_seen(&self, logged_ms: u64);

    /// A mark of the writes made so far: they are durable once [`Self::is_durable`] says so.
    fn mark(&self) -> u64;

    /// Whether the writes before `mark` are durable.
    fn is_durable(&self, mark: u64) -> bool;

    /// Makes every write so far durable.
    fn persist(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[derive(Default)]
pub struct Counters {
    pub lines: AtomicU64,
    pub bad_lines: AtomicU64,
    pub files_done: AtomicU64,
    /// Milliseconds between nginx writing the last line and ferry applying it.
    pub last_lag_ms: AtomicU64,
}

pub struct Follower {
    pub dir: PathBuf,
    pub slot: LogSlot,
    pub position_file: PathBuf,
    pub counters: Arc<Counters>,
}

/// A slot file: its name and its slot's start, in milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
struct SlotFile {
    name: String,
    start_ms: u64,
}

fn slot_files(dir: &Path, slot: LogSlot) -> Vec<SlotFile> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let mut v: Vec<SlotFile> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let start_ms = slot.start_ms(name.strip_prefix("access-")?.strip_suffix(".log")?)?;
            Some(SlotFile { name, start_ms })
        })
        .collect();
    v.sort_by_key(|f| f.start_ms);
    v
}

/// Whether `path` now names another file than the one open.
fn replaced(path: &Path, open: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), open.metadata()) {
        (Ok(now), Ok(was)) => (now.dev(), now.ino()) != (was.dev(), was.ino()),
        _ => false,
    }
}

async fn load_position(path: &Path) -> Option<Spot> {
    Spot::parse(&tokio::fs::read_to_string(path).await.ok()?)
}

/// The saved position: a [`Spot`] as text, rewritten in place at a fixed width (trailing
/// spaces) with a `pwrite`. It is saved only once the store has made the writes of the lines
/// before it durable, so after a crash a line is either applied or read again; a line read again
/// is recognised by its request id. It is saved as soon as it is durable, so what a crash reads
/// again is what was applied since the last commit with fsync, and at most one read more. Not
/// fsynced itself: a position lost with the machine only means more lines read again.
pub(crate) struct Position {
    path: PathBuf,
    file: Option<File>,
    /// The length of the last record written.
    len: usize,
    warned: bool,
    /// Positions reached and not saved yet, oldest first.
    pending: VecDeque<Pending>,
}

/// A position the follower has applied the lines before.
struct Pending {
    /// The store's mark once they were applied: durable from when the store says so.
    mark: u64,
    spot: Spot,
    at: Instant,
}

impl Position {
    /// Room for two names and offsets, so that the record keeps one length.
    const WIDTH: usize = 96;

    pub(crate) fn new(path: &Path) -> Position {
        Position {
            path: path.to_path_buf(),
            file: None,
            len: 0,
            warned: false,
            pending: VecDeque::new(),
        }
    }

    /// Moves the saved position to `spot` now, making the writes of the lines before it durable
    /// first; false, with nothing saved, while the store cannot.
    async fn advance_now(&mut self, sink: &impl RecordSink, spot: &Spot) -> bool {
        if sink.persist().await.is_err() {
            return false;
        }
        self.pending.clear();
        self.save(spot);
        true
    }

    /// Records that the lines before `spot` are applied: the saved position moves there once
    /// their writes are durable.
    pub(crate) async fn advance(&mut self, sink: &impl RecordSink, spot: &Spot) {
        let mark = sink.mark();
        match self.pending.back_mut() {
            Some(last) if last.mark == mark && last.spot.name == spot.name => last.spot.clone_from(spot),
            _ => self.pending.push_back(Pending {
                mark,
                spot: spot.clone(),
                at: Instant::now(),
            }),
        }
        self.catch_up(sink).await;
    }

    /// Saves the latest position whose lines' writes are durable by now; one that has waited
    /// `SAVE_WITHIN` is made durable (with all after it).
    pub(crate) async fn catch_up(&mut self, sink: &impl RecordSink) {
        if self.pending.front().is_some_and(|p| p.at.elapsed() >= SAVE_WITHIN) {
            self.flush(sink).await;
            return;
        }
        let mut latest = None;
        while self.pending.front().is_some_and(|p| sink.is_durable(p.mark)) {
            latest = self.pending.pop_front();
        }
        if let Some(p) = latest {
            self.save(&p.spot);
        }
    }

    /// Saves the latest position reached, making its lines' writes durable first (a store that
    /// is away: kept for later, and read again after a restart).
    pub(crate) async fn flush(&mut self, sink: &impl RecordSink) {
        if let Some(p) = self.pending.pop_back()
            && !self.advance_now(sink, &p.spot).await
        {
            self.pending.push_back(p);
        }
    }

    fn save(&mut self, spot: &Spot) {
        if self.file.is_none() {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.path);
            match opened {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    if !std::mem::replace(&mut self.warned, true) {
                        tracing::warn!(error = %e, path = %self.path.display(), "cannot save the access log position");
                    }
                    return;
                }
            }
        }
        let Some(file) = &self.file else { return };
        let text = spot.to_string();
        let record = format!("{text:<width$}\n", width = Self::WIDTH.max(text.len()));
        let mut done = file.write_all_at(record.as_bytes(), 0);
        if done.is_ok() && record.len() != self.len {
            // A longer record before (an older run's) would leave a tail.
            done = file.set_len(record.len() as u64);
            self.len = record.len();
        }
        match done {
            Ok(()) => self.warned = false,
            Err(e) => {
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(error = %e, "cannot save the access log position");
                }
            }
        }
    }
}

/// Wakes the follower when nginx writes to the logs dir (inotify), so a line is read the moment it
/// is written instead of at the next poll; without inotify it polls every 10 ms.
struct Wake {
    watch: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl Wake {
    fn new(dir: &Path) -> Wake {
        use rustix::fs::inotify;
        let watch = (|| {
            let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
            inotify::add_watch(
                &fd,
                dir,
                inotify::WatchFlags::MODIFY | inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
            )?;
            // `new` is deprecated because an arbitrary `T` could hand out a different fd later;
            // an `OwnedFd` cannot, which is what the unsafe `register` would have us promise.
            #[allow(deprecated)]
            tokio::io::unix::AsyncFd::new(fd)
        })();
        match watch {
            Ok(w) => Wake { watch: Some(w) },
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the logs dir; polling it");
                Wake { watch: None }
            }
        }
    }

    async fn wait(&self) {
        let Some(watch) = &self.watch else {
            return tokio::time::sleep(IDLE).await;
        };
        let Ok(Ok(mut ready)) = tokio::time::timeout(IDLE_WATCHED, watch.readable()).await else {
            return;
        };
        // The events only say "something was written": drain them all, then go and read.
        let mut buf = [0u8; 4096];
        while matches!(rustix::io::read(watch.get_ref(), &mut buf), Ok(n) if n > 0) {}
        ready.clear_ready();
    }
}

impl Follower {
    pub async fn run<S: RecordSink>(self, sink: Arc<S>, cancel: CancellationToken) {
        let mut saved = Position::new(&self.position_file);
        self.follow(&*sink, &cancel, &mut saved).await;
        // What was applied before the shutdown is not read again by the next run.
        saved.flush(&*sink).await;
    }

    async fn follow<S: RecordSink>(&self, sink: &S, cancel: &CancellationToken, saved: &mut Position) {
        let wake = Wake::new(&self.dir);
        let mut position = load_position(&self.position_file).await;
        let mut open: Option<(String, File)> = None;
        let mut partial = Vec::new();
        // The file after the current one while the current one settles: open, with the rest of
        // its last line (its name and offset are in the position).
        let mut ahead: Option<(File, Vec<u8>)> = None;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            if cancel.is_cancelled() {
                return;
            }
            saved.catch_up(sink).await;
            let files = slot_files(&self.dir, self.slot);
            let Some(current) = (match &position {
                Some(p) => files.iter().find(|f| f.name == p.name).or(files.first()),
                None => files.first(),
            }) else {
                tokio::select! { _ = cancel.cancelled() => return, _ = wake.wait() => {} }
                continue;
            };
            let current = current.clone();
            // Files before the position were read to their end by an earlier run.
            for f in files.iter().take_while(|f| f.start_ms < current.start_ms) {
                let _ = std::fs::remove_file(self.dir.join(&f.name));
            }
            let mut here = match position.take() {
                Some(p) if p.name == current.name => p,
                // Its file gone (or none): what was read ahead stays read, and may be this file.
                other => {
                    partial.clear();
                    ahead = None;
                    match other.and_then(|p| p.ahead) {
                        Some((name, offset)) if name == current.name => Spot {
                            name,
                            offset,
                            ahead: None,
                        },
                        read => Spot {
                            ahead: read,
                            ..Spot::start(&current.name)
                        },
                    }
                }
            };
            let next = files.iter().find(|f| f.start_ms > current.start_ms).cloned();
            // What was read ahead stays read while its file is there (a file of an older slot can
            // still appear before it: a worker whose clock was read before the slot changed).
            if here
                .ahead
                .as_ref()
                .is_some_and(|(name, _)| !files.iter().any(|f| f.name == *name && f.start_ms > current.start_ms))
            {
                here.ahead = None;
                ahead = None;
            }
            // Finished once no worker can still write to it, nor start the file of a slot between it
            // and the next one (a slot nobody logged in yet): the next one's slot began `SETTLE_MS`
            // ago. The next one is read meanwhile, so this costs no lag.
            let finished = next.as_ref().is_some_and(|n| now_ms() >= n.start_ms + SETTLE_MS);
            if open.as_ref().is_none_or(|(name, _)| *name != current.name) {
                open = match File::open(self.dir.join(&current.name)) {
                    Ok(f) => Some((current.name.clone(), f)),
                    Err(e) => {
                        // Retried at each wake-up; the files after it wait (their lines too).
                        tracing::warn!(file = %current.name, error = %e, "cannot open the access log file");
                        None
                    }
                };
            }
            let (read, lines) = match &open {
                Some((_, file)) => {
                    let mut reading = Reading {
                        file,
                        partial: &mut partial,
                        spot: &mut here,
                        ahead: false,
                        saved: &mut *saved,
                    };
                    self.read_from(sink, &mut reading, &mut chunk, cancel).await
                }
                None => (0, 0),
            };
            // While this file settles, the next one is read too, so its lines do not wait for that.
            let (mut read_ahead, mut lines_ahead) = (0, 0);
            let reads_ahead = !finished && open.is_some() && !cancel.is_cancelled();
            if let Some(n) = next
                .as_ref()
                .filter(|n| reads_ahead && here.ahead.as_ref().is_none_or(|(name, _)| *name == n.name))
            {
                if ahead.is_none() {
                    match File::open(self.dir.join(&n.name)) {
                        Ok(f) => {
                            ahead = Some((f, Vec::new()));
                            here.ahead.get_or_insert_with(|| (n.name.clone(), 0));
                        }
                        Err(e) => tracing::warn!(file = %n.name, error = %e, "cannot open the access log file"),
                    }
                }
                if let Some((file, part)) = &mut ahead {
                    let mut reading = Reading {
                        file,
                        partial: part,
                        spot: &mut here,
                        ahead: true,
                        saved: &mut *saved,
                    };
                    (read_ahead, lines_ahead) = self.read_from(sink, &mut reading, &mut chunk, cancel).await;
                }
            }
            if cancel.is_cancelled() {
                // Lines left unapplied stay after the saved position, for the next run.
                return;
            }
            // A file is left only once it was read to its end, and what its lines wrote is durable.
            if finished
                && open.is_some()
                && let Some(next) = next
            {
                // The next file goes on from where it was read ahead, on the same descriptor; a
                // file read ahead that is not the next one (a late file came between) stays ahead.
                let (to, carried) = match here.ahead.clone() {
                    Some((name, offset)) if name == next.name => (
                        Spot {
                            name,
                            offset,
                            ahead: None,
                        },
                        ahead.take(),
                    ),
                    other => (
                        Spot {
                            ahead: other,
                            ..Spot::start(&next.name)
                        },
                        None,
                    ),
                };
                if saved.advance_now(sink, &to).await {
                    if !partial.is_empty() {
                        tracing::warn!(file = %current.name, "access log file ended with an incomplete line; skipping it");
                        self.counters.bad_lines.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = std::fs::remove_file(self.dir.join(&current.name));
                    self.counters.files_done.fetch_add(1, Ordering::Relaxed);
                    (open, partial) = match carried {
                        Some((file, part)) => (Some((next.name.clone(), file)), part),
                        None => (None, Vec::new()),
                    };
                    position = Some(to);
                    continue;
                }
                if carried.is_some() {
                    ahead = carried;
                }
            }
            // Deleted under nginx, which made it again by its name: the old file is read to its
            // end, the new one is read from its start.
            if read == 0
                && open
                    .as_ref()
                    .is_some_and(|(name, file)| replaced(&self.dir.join(name), file))
            {
                let from_start = Spot {
                    offset: 0,
                    ..here.clone()
                };
                if saved.advance_now(sink, &from_start).await {
                    tracing::warn!(file = %current.name, "access log file was replaced; reading the new one");
                    open = None;
                    partial.clear();
                    position = Some(from_start);
                    continue;
                }
            }
            position = Some(here);
            if read + read_ahead == 0 {
                tokio::select! { _ = cancel.cancelled() => return, _ = wake.wait() => {} }
            } else if lines + lines_ahead >= BUSY_LINES {
                tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(BATCH_PAUSE) => {} }
            }
        }
    }

    /// Reads the file from the position to its current end, applying every complete line.
    /// Returns the number of bytes and of lines read. The reads are plain `pread`s of a local
    /// file the kernel has just written (page cache): cheaper inline than handed to a thread.
    async fn read_from<S: RecordSink>(
        &self,
        sink: &S,
        r: &mut Reading<'_>,
        chunk: &mut [u8],
        cancel: &CancellationToken,
    ) -> (usize, usize) {
        let (mut bytes, mut count) = (0, 0);
        loop {
            let Some(offset) = r.spot.offset_mut(r.ahead).copied() else {
                return (bytes, count);
            };
            let n = match r.file.read_at(chunk, offset + r.partial.len() as u64) {
                Ok(0) | Err(_) => return (bytes, count),
                Ok(n) => n,
            };
            bytes += n;
            r.partial.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            let mut lines = Vec::new();
            while let Some(nl) = r.partial[start..].iter().position(|&b| b == b'\n') {
                lines.push(&r.partial[start..start + nl]);
                start += nl + 1;
            }
            count += lines.len();
            if !self.handle_all(sink, &lines, cancel).await {
                // Shutting down while the store is away: these lines are read again next run
                // (those already applied are recognised by their request id).
                return (bytes, count);
            }
            r.partial.drain(..start);
            if let Some(offset) = r.spot.offset_mut(r.ahead) {
                *offset += start as u64;
            }
            // Saved once the chunk's writes are durable, so a crash loses no line.
            r.saved.advance(sink, r.spot).await;
        }
    }

    /// Applies a run of lines: the lines of one link in their order and in one update, different
    /// links side by side, so that their store round trips (Redis) overlap instead of queueing
    /// one behind another.
    /// False only when cancelled before every line could be applied.
    async fn handle_all<S: RecordSink>(&self, sink: &S, lines: &[&[u8]], cancel: &CancellationToken) -> bool {
        let mut groups: Vec<Vec<AccessRecord>> = Vec::new();
        let mut by_link: std::collections::HashMap<Option<crate::links::TunnelId>, usize> = Default::default();
        for line in lines {
            let Some(rec) = self.parse(line) else { continue };
            sink.line_seen((rec.msec * 1000.0) as u64);
            let i = *by_link.entry(rec.tunnel_id.clone()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[i].push(rec);
        }
        let applied = futures_util::future::join_all(groups.iter().map(|recs| self.apply(sink, recs, cancel))).await;
        applied.into_iter().all(|a| a)
    }

    fn parse(&self, line: &[u8]) -> Option<AccessRecord> {
        self.counters.lines.fetch_add(1, Ordering::Relaxed);
        // Never skipped for its bytes: a User-Agent that is not UTF-8 is logged raw by nginx.
        let parsed = AccessRecord::parse(&String::from_utf8_lossy(line)).map_err(|e| e.to_string());
        match parsed {
            Ok(rec) => Some(rec),
            Err(e) => {
                self.counters.bad_lines.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "skipping a malformed access log line");
                None
            }
        }
    }

    /// Applies one link's lines, in one update; false only when cancelled before they could be.
    async fn apply<S: RecordSink>(&self, sink: &S, recs: &[AccessRecord], cancel: &CancellationToken) -> bool {
        // While the store is unavailable the lines wait (and the lines after them), however long
        // the outage: a completion must not be lost. A record the store cannot read is retried a
        // few times, then given up.
        let mut corrupt = 0u32;
        let mut delay = Duration::from_millis(100);
        loop {
            match sink.apply(recs).await {
                Ok(()) => {
                    // Lag: from nginx writing each line to ferry having acted on it.
                    let now = now_ms();
                    for rec in recs {
                        let lag = now.saturating_sub((rec.msec * 1000.0) as u64);
                        self.counters.last_lag_ms.store(lag, Ordering::Relaxed);
                        metrics::histogram!("ferry_monitor_lag_seconds").record(lag as f64 / 1000.0);
                    }
                    return true;
                }
                Err(e @ StoreError::Corrupt(_)) => {
                    corrupt += 1;
                    tracing::warn!(error = %e, attempt = corrupt, "could not apply an access log line");
                    if corrupt >= 6 {
                        let ids: Vec<&str> = recs.iter().map(|r| r.request_id.as_str()).collect();
                        tracing::error!(request_ids = ?ids, "gave up on access log lines");
                        return true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "store unavailable; the access log waits"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, offset: u64) -> Spot {
        Spot {
            offset,
            ..Spot::start(name)
        }
    }

    #[test]
    fn a_position_reads_back_as_written_with_or_without_a_file_read_ahead() {
        let ahead = Spot {
            ahead: Some(("access-17964749.log".into(), 81_920)),
            ..at("access-17964748.log", 4_096)
        };
        for spot in [at("access-17964748.log", 0), ahead] {
            let text = spot.to_string();
            assert!(text.len() <= Position::WIDTH, "{text}");
            assert_eq!(Spot::parse(&format!("{text:<96}\n")), Some(spot));
        }
        for bad in ["", "access-1.log", "access-1.log x", "a 1 b", "a 1 b x", "a 1 b 2 c"] {
            assert_eq!(Spot::parse(bad), None, "{bad:?}");
        }
    }
}
