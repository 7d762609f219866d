//! Follows `logs/access.log` line by line. Each complete line is parsed and handed to the links;
//! a partial line waits for its end. The position (inode and offset) is kept in the state dir, so a
//! restart resumes exactly where the last run stopped. If the file is replaced (a new inode) the
//! old one has already been read to its end, and the new one is read from its start; if it is
//! truncated, it is read again from its start.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use super::record::AccessRecord;
use crate::links::Links;

const IDLE: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct Counters {
    pub lines: AtomicU64,
    pub bad_lines: AtomicU64,
}

pub struct Follower {
    pub log: PathBuf,
    pub position_file: PathBuf,
    pub counters: Arc<Counters>,
}

async fn load_position(path: &Path) -> Option<(u64, u64)> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    let (ino, off) = text.trim().split_once(' ')?;
    Some((ino.parse().ok()?, off.parse().ok()?))
}

impl Follower {
    pub async fn run(self, links: Arc<Links>, cancel: CancellationToken) {
        let mut saved = load_position(&self.position_file).await;
        let mut buf = Vec::with_capacity(64 * 1024);
        'reopen: loop {
            let mut file = loop {
                match tokio::fs::File::open(&self.log).await {
                    Ok(f) => break f,
                    Err(_) => {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(IDLE) => {}
                        }
                    }
                }
            };
            let Ok(meta) = file.metadata().await else { continue };
            let ino = meta.ino();
            let mut offset = match saved.take() {
                Some((i, off)) if i == ino && off <= meta.len() => off,
                _ => 0,
            };
            if file.seek(SeekFrom::Start(offset)).await.is_err() {
                continue;
            }
            buf.clear();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match file.read(&mut chunk).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the access log failed; reopening");
                        continue 'reopen;
                    }
                };
                if n > 0 {
                    buf.extend_from_slice(&chunk[..n]);
                    let mut start = 0;
                    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                        let line = &buf[start..start + nl];
                        start += nl + 1;
                        self.handle(&links, line).await;
                    }
                    buf.drain(..start);
                    offset += start as u64;
                    let _ = tokio::fs::write(&self.position_file, format!("{ino} {offset}")).await;
                    continue;
                }
                // At the end: has the file been replaced or truncated?
                match tokio::fs::metadata(&self.log).await {
                    Ok(m) if m.ino() != ino => continue 'reopen,
                    Ok(m) if m.len() < offset + buf.len() as u64 => {
                        tracing::warn!("access log was truncated; reading it from its start");
                        saved = None;
                        continue 'reopen;
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(IDLE) => {}
                }
            }
        }
    }

    async fn handle(&self, links: &Links, line: &[u8]) {
        self.counters.lines.fetch_add(1, Ordering::Relaxed);
        let parsed = std::str::from_utf8(line)
            .map_err(|e| e.to_string())
            .and_then(|l| AccessRecord::parse(l).map_err(|e| e.to_string()));
        match parsed {
            Ok(rec) => {
                // The store may be briefly unavailable; a line is only dropped after retries.
                for attempt in 0..5u32 {
                    match links.apply_log(&rec).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, attempt, "could not apply an access log line");
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                    }
                }
                tracing::error!(request_id = %rec.request_id, "gave up on an access log line");
            }
            Err(e) => {
                self.counters.bad_lines.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "skipping a malformed access log line");
            }
        }
    }
}
