//! Follows nginx's access log without ever losing a line, and without signalling nginx.
//!
//! nginx writes each line to `logs/access-<slot>.log`, where the slot is a prefix of `$msec` (see
//! `nginx/nginx.conf`). A new file begins when the clock enters a new slot, so rotation needs no
//! rename and no reopen signal, and it works even when nginx runs in another container. The
//! follower reads the files in slot order, each to its end. It leaves a file, and deletes it, only
//! once a later file exists and the file's slot ended long enough ago that no worker can still be
//! writing to it. While a file waits out that time (while it "settles"), the follower reads the next
//! file too, so that the next file's lines do not have to wait. The position (the file name and
//! offset, and the same for the file read ahead) is kept in the state dir, so a restart neither
//! loses nor repeats a line. The follower never decides anything about a link: it hands the lines
//! to a [`RecordSink`].
//!
//! The decisions of which file to read, from where, and what to do after a read are made in
//! [`super::steps`] without I/O. This module lists the files, reads them and does what it is told.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::record::AccessRecord;
use super::steps::{FileId, Forget, Look, Read, SlotFile, Spot, Step, Turn};
use crate::config::LogSlot;
use crate::model::now_ms;
use crate::store::StoreError;

/// How long to wait for more log when nothing tells ferry it was written.
const IDLE: Duration = Duration::from_millis(10);
/// With inotify, the longest the follower waits before it looks at the files anyway, so that a
/// missed event costs no more than this delay.
const IDLE_WATCHED: Duration = Duration::from_millis(200);
/// How long the follower pauses after a busy turn (see [`super::steps::BUSY_LINES`]).
const BATCH_PAUSE: Duration = Duration::from_millis(2);
/// How long a position may wait for another commit with fsync (from a claim, a completion or a
/// close) to make the lines before it durable, before the follower makes such a commit itself.
/// Waiting spares the follower an fsync on every read, which under load would cost a large share
/// of ferry's CPU.
pub(crate) const SAVE_WITHIN: Duration = Duration::from_secs(1);

/// The file being read (the current one, or the one after it, read ahead), the position it
/// moves, and where that position is saved.
struct Reading<'a> {
    open: &'a mut Open,
    spot: &'a mut Spot,
    ahead: bool,
    saved: &'a mut Position,
}

/// The receiver of the follower's lines. The follower also asks it whether the writes those lines
/// caused are durable.
pub trait RecordSink: Send + Sync {
    /// Applies lines of one link, in their order, in one update.
    fn apply(&self, recs: &[AccessRecord]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reports that a line which nginx wrote at `logged_ms` (milliseconds since the epoch) was
    /// read, which shows that nginx can write the log again.
    fn line_seen(&self, logged_ms: u64);

    /// Returns a mark for the writes made so far. Those writes are durable once
    /// [`Self::is_durable`] returns true for the mark.
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

/// Looks up which file `path` leads to now, and which file `open` is.
fn look(path: &Path, open: Option<&File>) -> Look {
    use std::os::unix::fs::MetadataExt;
    let id = |m: std::fs::Metadata| FileId {
        dev: m.dev(),
        ino: m.ino(),
    };
    Look {
        named: std::fs::metadata(path).ok().map(id),
        open: open.and_then(|f| f.metadata().ok()).map(id),
    }
}

async fn load_position(path: &Path) -> Option<Spot> {
    Spot::parse(&tokio::fs::read_to_string(path).await.ok()?)
}

/// The saved position: a [`Spot`] as text, rewritten in place with a `pwrite` at a fixed width
/// (padded with trailing spaces). A position is saved only once the store has made the writes of
/// the lines before it durable, so after a crash each line has either been applied or is read
/// again, and a line read again is recognised by its request id. A position is saved as soon as
/// its lines are durable, so after a crash the follower reads again only what was applied since
/// the last commit with fsync, plus at most one more read. The position file itself is not
/// fsynced, because losing the position with the machine only means that more lines are read
/// again.
pub(crate) struct Position {
    path: PathBuf,
    file: Option<File>,
    /// The length of the last record written.
    len: usize,
    warned: bool,
    /// Positions reached and not saved yet, oldest first.
    pending: VecDeque<Pending>,
}

/// A position such that the follower has applied all the lines before it.
struct Pending {
    /// The store's mark, taken once those lines were applied. The lines are durable once the
    /// store says that this mark is.
    mark: u64,
    spot: Spot,
    at: Instant,
}

impl Position {
    /// Room for two names and offsets, so that every record has the same length.
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

    /// Moves the saved position to `spot` now, after first making the writes of the lines before
    /// it durable. Returns false, and saves nothing, while the store cannot make them durable.
    async fn advance_now(&mut self, sink: &impl RecordSink, spot: &Spot) -> bool {
        if sink.persist().await.is_err() {
            return false;
        }
        self.pending.clear();
        self.save(spot);
        true
    }

    /// Records that the lines before `spot` are applied. The saved position moves there once
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

    /// Saves the latest position whose lines' writes are durable by now. Once the oldest pending
    /// position has waited `SAVE_WITHIN`, the writes are made durable instead, and the latest
    /// position reached is saved.
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

    /// Saves the latest position reached, after first making its lines' writes durable. When the
    /// store is unavailable, the position is kept for later, and after a restart its lines are
    /// read again.
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
            // A longer record written earlier (by an older run) would otherwise leave a tail.
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
            // `new` is deprecated because an arbitrary `T` could hand out a different fd later.
            // An `OwnedFd` cannot, and that is the promise the unsafe `register` would ask for.
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
        // The events only say that something was written, so drain them all and then go and
        // read the files.
        let mut buf = [0u8; 4096];
        while matches!(rustix::io::read(watch.get_ref(), &mut buf), Ok(n) if n > 0) {}
        ready.clear_ready();
    }
}

/// A log file the follower holds open, and the part of the file's last line that it has read so
/// far. Those bytes after the last newline are applied once the line is complete.
struct Open {
    file: File,
    partial: Vec<u8>,
}

/// What the follower carries from one turn to the next, besides the saved position.
struct Held {
    /// The follower's position. It is `None` on a first run until a file appears.
    position: Option<Spot>,
    /// The current file, by name.
    current: Option<(String, Open)>,
    /// The file after the current one, held open while the current one settles. Its name and
    /// offset are kept in the position.
    ahead: Option<Open>,
    /// The buffer that each read fills.
    chunk: Vec<u8>,
}

impl Follower {
    pub async fn run<S: RecordSink>(self, sink: Arc<S>, cancel: CancellationToken) {
        let mut saved = Position::new(&self.position_file);
        self.follow(&*sink, &cancel, &mut saved).await;
        // What was applied before the shutdown is not read again by the next run.
        saved.flush(&*sink).await;
    }

    /// Takes turns until cancelled. Each turn reads what nginx wrote since the last one, then
    /// does what [`Turn::step`] says; the decisions are all in [`super::steps`].
    async fn follow<S: RecordSink>(&self, sink: &S, cancel: &CancellationToken, saved: &mut Position) {
        let wake = Wake::new(&self.dir);
        let mut held = Held {
            position: load_position(&self.position_file).await,
            current: None,
            ahead: None,
            chunk: vec![0u8; 256 * 1024],
        };
        loop {
            if cancel.is_cancelled() {
                return;
            }
            saved.catch_up(sink).await;
            let files = slot_files(&self.dir, self.slot);
            let then = match Turn::begin(&files, held.position.as_ref(), now_ms()) {
                Some(turn) => {
                    let turn = self.read_turn(sink, cancel, saved, &mut held, turn).await;
                    if cancel.is_cancelled() {
                        // Lines left unapplied stay after the saved position, for the next run.
                        return;
                    }
                    self.settle(sink, saved, &mut held, turn).await
                }
                None => Step::Wait,
            };
            match then {
                Step::Wait => tokio::select! { _ = cancel.cancelled() => return, _ = wake.wait() => {} },
                Step::Pause => {
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(BATCH_PAUSE) => {} }
                }
                // Read again at once.
                _ => {}
            }
        }
    }

    /// Reads what nginx wrote since the last turn and applies every complete line. It reads the
    /// current file to its end and, while the current file settles, the next file too.
    async fn read_turn<S: RecordSink>(
        &self,
        sink: &S,
        cancel: &CancellationToken,
        saved: &mut Position,
        held: &mut Held,
        mut turn: Turn,
    ) -> Turn {
        // Files before the position were read to their end by an earlier run.
        for name in &turn.stale {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        match turn.forget {
            Forget::Nothing => {}
            Forget::Ahead => held.ahead = None,
            Forget::Both => (held.current, held.ahead) = (None, None),
        }
        if held.current.as_ref().is_none_or(|(name, _)| *name != turn.current) {
            // If opening fails, it is tried again on the next turn, and the files after it (with
            // their lines) wait.
            held.current = self.open(&turn.current).map(|open| (turn.current.clone(), open));
        }
        turn.open = held.current.is_some();
        let Held {
            current, ahead, chunk, ..
        } = held;
        if let Some((_, open)) = current {
            let mut reading = Reading {
                open,
                spot: &mut turn.here,
                ahead: false,
                saved: &mut *saved,
            };
            turn.read = self.read_from(sink, &mut reading, chunk, cancel).await;
        }
        let Some(next) = turn.ahead().map(str::to_string) else {
            return turn;
        };
        if cancel.is_cancelled() {
            return turn;
        }
        if ahead.is_none() {
            *ahead = self.open(&next);
            if ahead.is_some() {
                turn.here.ahead.get_or_insert((next, 0));
            }
        }
        if let Some(open) = ahead {
            let mut reading = Reading {
                open,
                spot: &mut turn.here,
                ahead: true,
                saved,
            };
            turn.read_ahead = self.read_from(sink, &mut reading, chunk, cancel).await;
        }
        turn
    }

    fn open(&self, name: &str) -> Option<Open> {
        match File::open(self.dir.join(name)) {
            Ok(file) => Some(Open {
                file,
                partial: Vec::new(),
            }),
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "cannot open the access log file");
                None
            }
        }
    }

    /// Does what the turn's reading calls for: it leaves a finished file, or switches to a file
    /// that nginx created again under the current file's name. Returns what to do before the next
    /// turn: wait, pause, or read again at once.
    async fn settle<S: RecordSink>(&self, sink: &S, saved: &mut Position, held: &mut Held, mut turn: Turn) -> Step {
        loop {
            match turn.step() {
                Step::Leave { to, carry } => {
                    // What the file's lines wrote is made durable before the file goes.
                    if saved.advance_now(sink, &to).await {
                        self.leave(held, &turn.current, to, carry);
                        return Step::ReadMore;
                    }
                    turn.leave_failed = true;
                }
                Step::Look => {
                    let open = held.current.as_ref().map(|(_, open)| &open.file);
                    turn.looked = Some(look(&self.dir.join(&turn.current), open));
                }
                Step::Reopen { from } => {
                    if saved.advance_now(sink, &from).await {
                        tracing::warn!(file = %turn.current, "access log file was replaced; reading the new one");
                        held.current = None;
                        held.position = Some(from);
                        return Step::ReadMore;
                    }
                    turn.reopen_failed = true;
                }
                idle @ (Step::Wait | Step::Pause | Step::ReadMore) => {
                    held.position = Some(turn.here);
                    return idle;
                }
            }
        }
    }

    /// Deletes the finished file `name` and goes on at `to`, in the file read ahead when
    /// `carry`.
    fn leave(&self, held: &mut Held, name: &str, to: Spot, carry: bool) {
        if held.current.as_ref().is_some_and(|(_, open)| !open.partial.is_empty()) {
            tracing::warn!(file = %name, "access log file ended with an incomplete line; skipping it");
            self.counters.bad_lines.fetch_add(1, Ordering::Relaxed);
        }
        let _ = std::fs::remove_file(self.dir.join(name));
        self.counters.files_done.fetch_add(1, Ordering::Relaxed);
        held.current = match carry {
            true => held.ahead.take().map(|open| (to.name.clone(), open)),
            false => None,
        };
        held.position = Some(to);
    }

    /// Reads the file from the position to its current end, applying every complete line.
    /// Returns how many bytes and lines it read. The reads are plain `pread`s of a local file that
    /// the kernel has just written and still holds in its page cache, so they are cheaper to do
    /// inline than to hand to a thread.
    async fn read_from<S: RecordSink>(
        &self,
        sink: &S,
        r: &mut Reading<'_>,
        chunk: &mut [u8],
        cancel: &CancellationToken,
    ) -> Read {
        let mut read = Read::default();
        loop {
            let Some(offset) = r.spot.offset_mut(r.ahead).copied() else {
                return read;
            };
            let partial = &mut r.open.partial;
            let n = match r.open.file.read_at(chunk, offset + partial.len() as u64) {
                Ok(0) | Err(_) => return read,
                Ok(n) => n,
            };
            read.bytes += n;
            partial.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            let mut lines = Vec::new();
            while let Some(nl) = partial[start..].iter().position(|&b| b == b'\n') {
                lines.push(&partial[start..start + nl]);
                start += nl + 1;
            }
            read.lines += lines.len();
            if !self.handle_all(sink, &lines, cancel).await {
                // ferry is shutting down while the store is unavailable. These lines are read
                // again on the next run, and those already applied are recognised by their
                // request id.
                return read;
            }
            partial.drain(..start);
            if let Some(offset) = r.spot.offset_mut(r.ahead) {
                *offset += start as u64;
            }
            // The position is saved once the chunk's writes are durable, so a crash loses no line.
            r.saved.advance(sink, r.spot).await;
        }
    }

    /// Applies a run of lines. The lines of one link are applied in their order and in one update,
    /// and different links are applied concurrently, so that their store round trips (to Redis)
    /// overlap instead of queueing one behind another.
    /// Returns false only when cancelled before every line could be applied.
    async fn handle_all<S: RecordSink>(&self, sink: &S, lines: &[&[u8]], cancel: &CancellationToken) -> bool {
        let mut groups: Vec<Vec<AccessRecord>> = Vec::new();
        let mut by_link: std::collections::HashMap<Option<crate::model::TunnelId>, usize> = Default::default();
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
        // A line is never skipped because of its bytes, since nginx logs a User-Agent that is not
        // UTF-8 as raw bytes.
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

    /// Applies one link's lines in one update. Returns false only when cancelled before they could
    /// be applied.
    async fn apply<S: RecordSink>(&self, sink: &S, recs: &[AccessRecord], cancel: &CancellationToken) -> bool {
        // While the store is unavailable, these lines and the lines after them wait, however long
        // the outage lasts, because a completion must not be lost. A record that the store cannot
        // read is retried a few times and then given up.
        let mut corrupt = 0u32;
        let mut delay = Duration::from_millis(100);
        loop {
            match sink.apply(recs).await {
                Ok(()) => {
                    // The lag is the time from nginx writing each line to ferry having acted on it.
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
