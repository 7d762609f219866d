//! The bytes of ZIP links, for nginx (SPEC §11). nginx cannot assemble an archive, so after the
//! check has admitted a request for a ZIP link, nginx proxies it to this Unix socket in the state
//! dir and still does the rest: limits, the access log, and a 444 for anything but an answer.
//!
//! The socket speaks the subset of HTTP/1.1 that nginx uses towards an upstream, like the check
//! socket. nginx sends the link's id and the client's `Range` and `If-Range` in headers of its
//! own; the answer is 200, 206 or 416 exactly as nginx would answer for a file (one range at
//! most), so the ledger, which predicted the request's bytes at the check, holds. Header bytes
//! go out as soon as they are known; member bytes go out block by block, each block checked
//! against its CRC-32 (see [`crate::zip`]), waiting for hashing where it has not got that far.
//! When a member turns out to have changed, the connection is dropped mid-body, so nginx cuts
//! the download short, and the link is closed as `error`.

use std::io::Write as _;
use std::ops::Range;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::check::{CheckRequest, accept_all, parse};
use crate::archive::Piece;
use crate::links::Links;
use crate::links::rules::etag;
use crate::model::LinkState;
use crate::zip::{Archive, BLOCK, ReadError};

const MAX_HEAD: usize = 32 * 1024;
const MAX_HEADERS: usize = 32;

/// Serves the socket until `shutdown` is cancelled.
pub async fn serve(listener: UnixListener, links: Arc<Links>, shutdown: CancellationToken) {
    let stop = shutdown.clone();
    accept_all(listener, "archive socket", shutdown, |stream| {
        connection(stream, links.clone(), stop.clone())
    })
    .await;
}

/// What one request is answered with.
struct Answer {
    head: Vec<u8>,
    /// The archive and the bytes of it to send after the head (none for HEAD, 416 or an error).
    body: Option<(Arc<Archive>, Range<u64>)>,
}

async fn connection(mut stream: UnixStream, links: Arc<Links>, shutdown: CancellationToken) {
    let mut input = Vec::with_capacity(2048);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (answer, used) = match parse(&input, &mut headers) {
            Ok(Some((req, used))) => (answer(&links, &req).await, used),
            Ok(None) if input.len() < MAX_HEAD => {
                let read = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    read = stream.read_buf(&mut input) => read,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            _ => return,
        };
        if stream.write_all(&answer.head).await.is_err() {
            return;
        }
        if let Some((archive, range)) = answer.body
            && let Err(e) = send(&mut stream, &links, &archive, range).await
        {
            if let Send::Read(ReadError::Changed(why)) = &e {
                links.archives().report(&archive.id, why.clone());
            }
            tracing::debug!(tunnel_id = %archive.id, error = %e, "archive body cut short");
            return;
        }
        input.drain(..used);
    }
}

/// The answer to one request: its head, and what its body is.
async fn answer(links: &Links, req: &CheckRequest<'_>) -> Answer {
    let not_found = || Answer {
        head: head(404, &[]),
        body: None,
    };
    let head_only = match req.method {
        "GET" => false,
        "HEAD" => true,
        _ => return not_found(),
    };
    let Ok(id) = crate::model::TunnelId::parse(req.header("x-ferry-tunnel")) else {
        return not_found();
    };
    let link = match links.store().get(&id).await {
        Ok(Some(l)) if l.state != LinkState::Closed => l,
        _ => return not_found(),
    };
    let Some(archive) = links.archive(&link) else {
        return not_found();
    };
    let size = link.file_size;
    let tag = etag(link.identity.mtime_ns, size);
    let range = wanted(
        Some(req.header_text("x-ferry-range"))
            .filter(|r| !r.is_empty())
            .as_deref(),
        Some(req.header_text("x-ferry-if-range"))
            .filter(|r| !r.is_empty())
            .as_deref(),
        &tag,
        size,
    );
    let common = [
        ("content-type", "application/zip"),
        ("accept-ranges", "bytes"),
        ("etag", &tag),
    ];
    let (head, range) = match range {
        Wanted::Whole => (head_with(200, &common, size, None), 0..size),
        Wanted::Part(r) => (head_with(206, &common, r.end - r.start, Some((&r, size))), r),
        Wanted::Unsatisfiable => {
            let unsatisfiable = format!("bytes */{size}");
            let head = head(416, &[("content-range", &unsatisfiable)]);
            return Answer { head, body: None };
        }
    };
    Answer {
        head,
        body: (!head_only && range.start < range.end).then_some((archive, range)),
    }
}

/// What a `Range` (with its `If-Range`) asks of a file of `size` bytes, decided as nginx decides
/// for a file with `max_ranges 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wanted {
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

fn wanted(range: Option<&str>, if_range: Option<&str>, etag: &str, size: u64) -> Wanted {
    let Some(range) = range else { return Wanted::Whole };
    if if_range.is_some_and(|v| v != etag) {
        return Wanted::Whole;
    }
    let Some(spec) = range
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| range[6..].trim())
    else {
        return Wanted::Whole;
    };
    // nginx with `max_ranges 1` sends the whole file for several ranges.
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Wanted::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let part = if a.is_empty() {
        number(b)
            .filter(|&n| n > 0 && size > 0)
            .map(|n| size.saturating_sub(n)..size)
    } else {
        match (number(a), if b.is_empty() { Some(u64::MAX) } else { number(b) }) {
            (Some(s), Some(l)) if s <= l && s < size => Some(s..l.min(size - 1) + 1),
            _ => None,
        }
    };
    part.map_or(Wanted::Unsatisfiable, Wanted::Part)
}

fn head(status: u16, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    status_line(&mut out, status);
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"content-length: 0\r\n\r\n");
    out
}

fn head_with(status: u16, headers: &[(&str, &str)], len: u64, range: Option<(&Range<u64>, u64)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    status_line(&mut out, status);
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if let Some((r, size)) = range {
        let _ = write!(out, "content-range: bytes {}-{}/{size}\r\n", r.start, r.end - 1);
    }
    let _ = write!(out, "content-length: {len}\r\n\r\n");
    out
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "",
    };
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
}

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
enum Send {
    #[error(transparent)]
    Read(ReadError),
    #[error("writing to nginx: {0}")]
    Write(std::io::Error),
}

/// Sends `range` of the archive.
async fn send(stream: &mut UnixStream, links: &Links, archive: &Arc<Archive>, range: Range<u64>) -> Result<(), Send> {
    let mut at = range.start;
    let mut buf = Vec::with_capacity(BLOCK);
    while at < range.end {
        let piece = archive.piece(at, range.end).await.map_err(Send::Read)?;
        at += piece.len();
        match piece {
            Piece::Bytes(bytes) => stream.write_all(&bytes).await.map_err(Send::Write)?,
            Piece::File { member, offset, len } => {
                buf = send_member(stream, links, archive, member, offset..offset + len, buf).await?;
            }
        }
    }
    Ok(())
}

/// Sends bytes `range` of member `m`, block by block, each checked before it goes out.
async fn send_member(
    stream: &mut UnixStream,
    links: &Links,
    archive: &Arc<Archive>,
    m: usize,
    range: Range<u64>,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, Send> {
    let size = archive.info.members[m].stamp.size;
    let mut file = None;
    let mut pos = range.start;
    while pos < range.end {
        let block = pos / BLOCK as u64;
        let block_start = block * BLOCK as u64;
        archive
            .hashed_to(m, (block_start + BLOCK as u64).min(size))
            .await
            .map_err(Send::Read)?;
        let (a, data) = (archive.clone(), links.archives().data_dir());
        let opened = file.take();
        let (f, b, read) = tokio::task::spawn_blocking(move || {
            let f = match opened {
                Some(f) => f,
                None => match a.open(&data, m) {
                    Ok(f) => f,
                    Err(e) => return (None, buf, Err(e)),
                },
            };
            let read = a.read_block(&f, m, block, &mut buf);
            (Some(f), buf, read)
        })
        .await
        .map_err(|_| Send::Read(ReadError::Stopped))?;
        read.map_err(Send::Read)?;
        (file, buf) = (f, b);
        let from = (pos - block_start) as usize;
        let to = ((range.end - block_start) as usize).min(buf.len());
        stream.write_all(&buf[from..to]).await.map_err(Send::Write)?;
        pos = block_start + to as u64;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::rules::asked;
    use proptest::prelude::*;

    #[test]
    fn ranges_are_answered_as_nginx_answers_them() {
        let w = |r: &str| wanted(Some(r), None, "\"e\"", 1000);
        assert_eq!(wanted(None, None, "\"e\"", 1000), Wanted::Whole);
        assert_eq!(w("bytes=0-99"), Wanted::Part(0..100));
        assert_eq!(w("bytes=900-"), Wanted::Part(900..1000));
        assert_eq!(w("bytes=-100"), Wanted::Part(900..1000));
        assert_eq!(w("bytes=-5000"), Wanted::Part(0..1000));
        assert_eq!(w("bytes=990-5000"), Wanted::Part(990..1000));
        assert_eq!(w("bytes=1000-"), Wanted::Unsatisfiable, "curl -C - of a complete file");
        assert_eq!(w("bytes=5-1"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=abc"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=-0"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=0-1,5-6"), Wanted::Whole, "max_ranges 1");
        assert_eq!(w("items=0-1"), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-1"), Some("\"old\""), "\"e\"", 1000), Wanted::Whole);
        assert_eq!(
            wanted(Some("bytes=0-1"), Some("\"e\""), "\"e\"", 1000),
            Wanted::Part(0..2)
        );
    }

    proptest! {
        /// The check charged a request for what `asked` says; the socket never sends more.
        #[test]
        fn what_is_sent_lies_within_what_the_check_charged(
            range in "(bytes=|BYTES=|x=)?[-0-9, ]{0,12}",
            if_range in prop::option::of(prop_oneof![Just("\"e\"".to_string()), "[a-z\"]{0,4}"]),
            size in 0u64..2000,
        ) {
            let charged = asked(Some(&range), if_range.as_deref(), "\"e\"", size);
            match wanted(Some(&range), if_range.as_deref(), "\"e\"", size) {
                Wanted::Whole => prop_assert_eq!((charged.start, charged.end), (0, size)),
                Wanted::Part(r) => prop_assert!(charged.start <= r.start && r.end <= charged.end),
                Wanted::Unsatisfiable => {}
            }
        }
    }
}
