//! Raw HTTP/1.1 over TCP from a chosen loopback source address, so that a test controls every byte
//! of a request (a User-Agent may hold any bytes) and counts exactly the body bytes a client read.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A request: method GET or HEAD, optional `Range` and `If-Range`, and where to hang up.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    pub head: bool,
    pub range: Option<String>,
    pub if_range: Option<String>,
    /// Hang up after reading this many body bytes.
    pub abort_after: Option<u64>,
}

impl Ask {
    pub fn get() -> Ask {
        Ask::default()
    }

    pub fn range(r: impl Into<String>) -> Ask {
        Ask {
            range: Some(r.into()),
            ..Ask::default()
        }
    }

    pub fn describe(&self) -> String {
        let mut s = String::from(if self.head { "HEAD" } else { "GET" });
        if let Some(r) = &self.range {
            s += &format!(" Range: {r}");
        }
        if let Some(i) = &self.if_range {
            s += &format!(" If-Range: {i}");
        }
        if let Some(a) = self.abort_after {
            s += &format!(" (hang up after {a} body bytes)");
        }
        s
    }
}

/// What came back. `status` 0: the connection closed with no response (nginx's 444).
#[derive(Debug, Default)]
pub struct Got {
    pub status: u16,
    pub content_type: String,
    /// The file offset of the first body byte (0 for a 200, the `Content-Range` start for a 206).
    pub start: u64,
    /// The body bytes read (for 200 and 206; other statuses' bodies are counted in `other_bytes`).
    pub body: Vec<u8>,
    pub other_bytes: u64,
    pub content_length: Option<u64>,
    pub aborted: bool,
    /// Anything unusual: a connect failure, a timeout, a close in the middle of the headers.
    pub note: String,
}

impl Got {
    /// Whether the body is file bytes: a 200 or a 206 that is not a previewer's HTML page.
    pub fn file_bytes(&self, previewer: bool) -> u64 {
        let page = previewer && self.content_type.starts_with("text/html");
        if matches!(self.status, 200 | 206) && !page {
            self.body.len() as u64
        } else {
            0
        }
    }

    pub fn describe(&self) -> String {
        if self.status == 0 {
            return format!("closed without a response{}", note(&self.note));
        }
        format!(
            "{} {} body {} bytes at {}{}{}{}",
            self.status,
            self.content_type,
            self.body.len() as u64 + self.other_bytes,
            self.start,
            self.content_length
                .map(|l| format!(" of Content-Length {l}"))
                .unwrap_or_default(),
            if self.aborted { ", hung up" } else { "" },
            note(&self.note)
        )
    }
}

fn note(n: &str) -> String {
    if n.is_empty() { String::new() } else { format!(" ({n})") }
}

/// `http://host:port/path?query` → (the socket address, `/path?query`).
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, target) = rest.split_at(rest.find('/').unwrap());
    (host.parse().expect("a numeric host:port"), target.to_string())
}

/// Sends `ask` for `target` to `public` from the local address `from` with User-Agent `ua`
/// (`None`: no such header), reads the response (at most 30 s), and closes.
pub async fn fetch(public: SocketAddr, from: Ipv4Addr, target: &str, ua: Option<&[u8]>, ask: &Ask) -> Got {
    fetch_keep(public, from, target, ua, ask).await.1
}

/// As `fetch`, but a request that hung up after `abort_after` bytes hands back its still open
/// connection, so the caller decides when it closes (a download manager's first connection).
pub async fn fetch_keep(
    public: SocketAddr,
    from: Ipv4Addr,
    target: &str,
    ua: Option<&[u8]>,
    ask: &Ask,
) -> (Option<TcpStream>, Got) {
    let mut got = Got::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = match connect(public, from).await {
        Ok(s) => s,
        Err(e) => {
            got.note = format!("connect: {e}");
            return (None, got);
        }
    };
    if let Err(e) = s.write_all(&request(public, target, ua, ask)).await {
        got.note = format!("write: {e}");
        return (None, got);
    }
    let (head, body_start) = match read_head(&mut s, deadline).await {
        Ok(h) => h,
        Err(note) => {
            got.note = note;
            return (None, got);
        }
    };
    parse_head(&String::from_utf8_lossy(&head[..body_start]), &mut got);
    if ask.head || matches!(got.status, 204 | 304) {
        return (None, got);
    }
    let file = matches!(got.status, 200 | 206);
    let limit = if file { ask.abort_after } else { None };
    let body = read_body(&mut s, head[body_start..].to_vec(), limit, deadline, &mut got).await;
    if file {
        got.body = body;
    } else {
        got.other_bytes = body.len() as u64;
    }
    if got.aborted { (Some(s), got) } else { (None, got) }
}

/// The request's bytes: the request line, `Host`, the optional headers, `Connection: close`.
fn request(public: SocketAddr, target: &str, ua: Option<&[u8]>, ask: &Ask) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(
        format!(
            "{} {target} HTTP/1.1\r\nHost: {public}\r\n",
            if ask.head { "HEAD" } else { "GET" }
        )
        .as_bytes(),
    );
    if let Some(ua) = ua {
        req.extend_from_slice(b"User-Agent: ");
        req.extend_from_slice(ua);
        req.extend_from_slice(b"\r\n");
    }
    if let Some(r) = &ask.range {
        req.extend_from_slice(format!("Range: {r}\r\n").as_bytes());
    }
    if let Some(i) = &ask.if_range {
        req.extend_from_slice(format!("If-Range: {i}\r\n").as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    req
}

/// Reads up to the end of the headers, a few bytes at a time so that no more body than asked for
/// is read with them: the bytes read, and where the body starts in them. `Err` holds the note
/// for `Got` (empty when the connection closed before any byte came).
async fn read_head(s: &mut TcpStream, deadline: Instant) -> Result<(Vec<u8>, usize), String> {
    let mut head = Vec::new();
    let mut small = [0u8; 512];
    loop {
        match read(s, &mut small, deadline).await {
            Ok(0) if head.is_empty() => return Err(String::new()),
            Ok(0) => return Err(format!("closed within the headers after {} bytes", head.len())),
            Ok(n) => head.extend_from_slice(&small[..n]),
            Err(e) => return Err(e),
        }
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((head, p + 4));
        }
        if head.len() > 64 * 1024 {
            return Err("headers over 64 KiB".into());
        }
    }
}

/// Fills `got`'s status and the headers it keeps from the response's head.
fn parse_head(text: &str, got: &mut Got) {
    let mut lines = text.split("\r\n");
    got.status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(999);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "content-type" => got.content_type = v.to_string(),
            "content-length" => got.content_length = v.parse().ok(),
            "content-range" => {
                got.start = v
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
}

/// Reads the body after the `body` bytes that came with the headers, up to `Content-Length`,
/// or until the server closes; with a `limit`, hangs up once that many bytes are in
/// (`got.aborted`). A read error ends it with a note in `got`.
async fn read_body(
    s: &mut TcpStream,
    mut body: Vec<u8>,
    limit: Option<u64>,
    deadline: Instant,
    got: &mut Got,
) -> Vec<u8> {
    let want = got.content_length.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let have = body.len() as u64;
        if have >= want {
            break;
        }
        if let Some(l) = limit
            && have >= l
        {
            got.aborted = true;
            break;
        }
        let room = (buf.len() as u64)
            .min(want - have)
            .min(limit.map_or(u64::MAX, |l| l - have)) as usize;
        match read(s, &mut buf[..room], deadline).await {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => {
                got.note = e;
                break;
            }
        }
    }
    body
}

async fn connect(public: SocketAddr, from: Ipv4Addr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from.into(), 0))?;
    tokio::time::timeout(Duration::from_secs(5), sock.connect(public))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

async fn read(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, s.read(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("timed out after 30 s".into()),
    }
}

/// Which bytes of a file a client holds: sorted, disjoint, half-open ranges.
#[derive(Clone, Debug, Default)]
pub struct Cover(Vec<(u64, u64)>);

impl Cover {
    pub fn add(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.0.push((start, start + len));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.0 = merged;
    }

    /// The first byte below `size` not held, if any.
    pub fn first_missing(&self, size: u64) -> Option<u64> {
        let mut at = 0;
        for &(a, b) in &self.0 {
            if a > at {
                break;
            }
            at = at.max(b);
        }
        (at < size).then_some(at)
    }

    pub fn whole(&self, size: u64) -> bool {
        self.first_missing(size).is_none()
    }

    pub fn held(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }
}

/// A User-Agent for a trace: printable ASCII as is, anything else escaped.
pub fn show(ua: Option<&[u8]>) -> String {
    match ua {
        None => "(none)".into(),
        Some(b) => format!("\"{}\"", b.escape_ascii()),
    }
}
