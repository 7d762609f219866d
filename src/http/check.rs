//! The check that nginx makes before it serves any public request (an `auth_request` over the Unix
//! socket in the state dir), and the link previews that nginx hands over to the same socket. A 204
//! answer allows the request and carries the file's `Content-Disposition`; any other answer makes
//! nginx answer 444. Only nginx can reach this socket: the socket is never bound to TCP, and it
//! never serves a file's bytes.
//!
//! Every public request pays for this round trip, so the socket speaks only the subset of HTTP/1.1
//! that nginx uses towards an upstream, instead of going through hyper and axum. The request head
//! is read in place with httparse, the `x-ferry-*` headers are looked up without being copied, and
//! the answer is a single write on a connection that nginx keeps alive. A check carries twelve
//! headers, and for that many headers hyper's header map and axum's handler futures would cost more
//! CPU than the decision itself. nginx sends no body (`proxy_pass_request_body off`). A request
//! that has a body is refused and its connection is closed, and so is anything that does not parse.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::preview::{content_disposition_bytes, preview_html};
use crate::links::rules::{Admission, Method, Refusal};
use crate::links::{Links, Visitor};
use crate::model::{ClientKey, Conn, Use};

/// nginx limits each line of a request head to 8 KiB. The check's head repeats the client's
/// User-Agent and token, so this limit is more than twice that.
const MAX_HEAD: usize = 32 * 1024;
/// nginx sends twelve headers. The rest leaves room for the client's own headers, in case an older
/// nginx config passes them on.
const MAX_HEADERS: usize = 48;

/// Serves the check socket until `shutdown` is cancelled. Each open connection first finishes the
/// request it is answering.
pub async fn serve(listener: UnixListener, links: Arc<Links>, shutdown: CancellationToken) {
    let stop = shutdown.clone();
    accept_all(listener, "check socket", shutdown, |stream| {
        connection(stream, links.clone(), stop.clone())
    })
    .await;
}

/// Accepts connections on `listener` until `shutdown` is cancelled, running `each` on every one,
/// then waits for the open connections to finish. `what` names the socket in logs.
pub(super) async fn accept_all<F, Fut>(
    listener: UnixListener,
    what: &'static str,
    shutdown: CancellationToken,
    mut each: F,
) where
    F: FnMut(UnixStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(each(stream));
                }
                Err(e) => {
                    // The most likely cause is running out of file descriptors, so wait a little
                    // instead of retrying in a busy loop.
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Dropping the listener refuses new connections from now on, instead of leaving them to wait
    // while the open connections drain.
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn connection(mut stream: UnixStream, links: Arc<Links>, shutdown: CancellationToken) {
    let mut input = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(512);
    loop {
        out.clear();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (used, keep_alive) = match parse(&input, &mut headers) {
            Ok(Some((req, used))) => {
                let keep_alive = req.keep_alive && !req.has_body;
                if req.has_body {
                    respond(&mut out, 400, &[], "");
                } else {
                    // The answer is boxed so that the state of a check exists only while a request
                    // is being answered, and not in the task of every connection that nginx keeps
                    // open.
                    Box::pin(answer(&links, &req, &mut out)).await;
                }
                (used, keep_alive)
            }
            Ok(None) if input.len() < MAX_HEAD => {
                if input.len() == input.capacity() {
                    input.reserve(4096);
                }
                let read = tokio::select! {
                    // Shutdown is only noticed here, between requests, so a request that is being
                    // answered is always finished first.
                    biased;
                    _ = shutdown.cancelled() => return,
                    read = stream.read_buf(&mut input) => read,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            Ok(None) => {
                tracing::debug!(
                    bytes = input.len(),
                    "check socket: request head too large; answered 431"
                );
                respond(&mut out, 431, &[], "");
                (input.len(), false)
            }
            Err(BadHead) => {
                // nginx passes control bytes in a client's header on unchanged, and httparse
                // refuses them. Once they are written out as escapes, the same head parses and the
                // client is served like any other.
                if let Some(escaped) = escape_controls(&input) {
                    input = escaped;
                    continue;
                }
                tracing::debug!("check socket: {BadHead}; answered 400");
                respond(&mut out, 400, &[], "");
                (input.len(), false)
            }
        };
        if !keep_alive {
            // Tell nginx that this connection is about to close, so that nginx does not keep it
            // for reuse.
            close_after_status(&mut out);
        }
        if stream.write_all(&out).await.is_err() || !keep_alive {
            return;
        }
        input.drain(..used);
    }
}

/// One request head as nginx sent it, borrowed from the connection's buffer.
pub struct CheckRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    headers: &'a [httparse::Header<'a>],
    keep_alive: bool,
    has_body: bool,
}

/// The error for a head that the socket refuses to read: input that is not an HTTP/1.x request
/// head, or a head with too many headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an HTTP/1.x request head nginx would send")]
pub struct BadHead;

/// Reads one request head from the start of `buf` and returns it with the number of bytes it took.
/// Returns `Ok(None)` while the head is incomplete.
pub fn parse<'a>(
    buf: &'a [u8],
    headers: &'a mut [httparse::Header<'a>],
) -> Result<Option<(CheckRequest<'a>, usize)>, BadHead> {
    let mut req = httparse::Request::new(headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadHead),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(BadHead);
    };
    let mut r = CheckRequest {
        method,
        path,
        headers: req.headers,
        keep_alive: version == 1,
        has_body: false,
    };
    let connection = r.header("connection");
    if connection.eq_ignore_ascii_case("close") {
        r.keep_alive = false;
    } else if connection.eq_ignore_ascii_case("keep-alive") {
        r.keep_alive = true;
    }
    r.has_body = r.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0"
    });
    Ok(Some((r, used)))
}

impl<'a> CheckRequest<'a> {
    /// Builds a request from header lines alone. The fuzz target uses this to reach the check.
    pub fn from_headers(headers: &'a [httparse::Header<'a>]) -> Self {
        CheckRequest {
            method: "GET",
            path: "/check",
            headers,
            keep_alive: true,
            has_body: false,
        }
    }

    /// The first value of a header, or "" when it is missing or not visible ASCII.
    pub fn header(&self, name: &str) -> &'a str {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .filter(|h| visible(h.value))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .unwrap_or("")
    }

    /// The first value of a header as the client sent it, decoded lossily whatever its bytes are.
    /// A User-Agent may be Latin-1, binary or empty, and it still identifies one client.
    pub fn header_text(&self, name: &str) -> std::borrow::Cow<'a, str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map_or("".into(), |h| String::from_utf8_lossy(h.value))
    }
}

/// Writes control bytes in the header values of a request head as `\xNN`, so that the head parses.
/// nginx passes a client's header bytes on as they came, and httparse refuses control bytes that
/// nginx accepts. Returns `None` when the head has no control bytes, or when its end has not
/// arrived yet.
fn escape_controls(head: &[u8]) -> Option<Vec<u8>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let bad = |b: u8| (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f;
    if !head[..end].iter().any(|&b| bad(b)) {
        return None;
    }
    let mut out = Vec::with_capacity(head.len() + 16);
    for &b in &head[..end] {
        if bad(b) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&head[end..]);
    Some(out)
}

async fn answer(links: &Links, req: &CheckRequest<'_>, out: &mut Vec<u8>) {
    match (req.method, req.path) {
        // nginx's auth subrequest is a GET. A HEAD gets the same answer, because a 204 has no body
        // anyway.
        ("GET" | "HEAD", "/check") => check(links, req, out).await,
        ("GET" | "HEAD", path) if path.starts_with("/s/") => preview(links, req, req.method == "HEAD", out).await,
        _ => respond(out, 404, &[], ""),
    }
}

async fn check(links: &Links, req: &CheckRequest<'_>, out: &mut Vec<u8>) {
    let address = client_address(req);
    let now = links.now_ms();
    // Banned clients are refused up front.
    let decided = match links.bans.is_banned(&address, now) {
        true => Err(Refusal::Banned),
        false => decide(links, req).await,
    };
    match decided {
        Ok((disposition, rate, what)) => {
            // This becomes nginx's limit_rate, where 0 means no limit.
            let rate = rate.to_string();
            let claim = what.header();
            let headers = [
                ("x-ferry-rate", rate.as_str()),
                ("x-ferry-claim", claim.as_str()),
                ("x-ferry-disposition", &disposition),
            ];
            // `content_disposition_bytes` percent-encodes the file name. If the result is still not
            // a valid header value, the disposition header is left out.
            let sent = if visible(disposition.as_bytes()) { 3 } else { 2 };
            respond(out, 204, &headers[..sent], "");
        }
        Err(refusal) => {
            metrics::counter!("ferry_refusals_total", "reason" => refusal.code()).increment(1);
            tracing::debug!(%refusal, tunnel = req.header("x-ferry-tunnel"), client = req.header("x-ferry-client"), "refused");
            refused(links, req, &address, refusal, now).await;
            refuse(out, refusal);
        }
    }
}

/// Answers a refusal: 401 when the link wants a password (nginx adds the Basic challenge, with a
/// realm that names the link), else 403, which nginx turns into 444.
fn refuse(out: &mut Vec<u8>, refusal: Refusal) {
    match refusal.asks_for_password() {
        true => respond(out, 401, &[], ""),
        false => respond(out, 403, &[], ""),
    }
}

/// What a request shows of its client besides its token. The check's own request carries the
/// client's `Authorization` in `X-Ferry-Authorization`; a previewer's request, handed over
/// unchanged, in `Authorization`.
fn visitor<'a>(req: &CheckRequest<'a>) -> Visitor<'a> {
    let authorization = match req.header("x-ferry-authorization") {
        "" => req.header("authorization"),
        a => a,
    };
    Visitor {
        ip: req.header("x-ferry-client").parse().ok(),
        authorization,
    }
}

/// Audits a refusal, and counts one that looks like token guessing toward banning the client.
async fn refused(links: &Links, req: &CheckRequest<'_>, address: &str, refusal: Refusal, now: u64) {
    links.refused(address, req.header("x-ferry-tunnel"), refusal, now).await;
}

/// Answers a previewer's request, which nginx hands over unchanged. The answer is an HTML preview,
/// or a 403 that nginx turns into 444.
async fn preview(links: &Links, req: &CheckRequest<'_>, head: bool, out: &mut Vec<u8>) {
    let address = client_address(req);
    if links.bans.is_banned(&address, links.now_ms()) {
        return respond(out, 403, &[], "");
    }
    match links
        .preview(req.header("x-ferry-tunnel"), req.header("x-ferry-token"), &visitor(req))
        .await
    {
        Ok(link) => {
            let html = preview_html(&link);
            let headers = [
                ("content-type", "text/html; charset=utf-8"),
                ("referrer-policy", "no-referrer"),
                ("cache-control", "private, no-store"),
                ("content-security-policy", "default-src 'none'"),
            ];
            respond(out, 200, &headers, &html);
            if head {
                out.truncate(out.len() - html.len());
            }
        }
        Err(refusal) => {
            metrics::counter!("ferry_refusals_total", "reason" => refusal.code()).increment(1);
            tracing::debug!(%refusal, client = req.header("x-ferry-client"), "preview refused");
            // The client chooses its own User-Agent, so a previewer's refusals are audited and
            // count toward a ban like any other refusal.
            refused(links, req, &address, refusal, links.now_ms()).await;
            refuse(out, refusal);
        }
    }
}

/// The client's address as bans and the audit count it (an IPv4 address or an IPv6 /64); empty
/// when nginx sent none that parses.
fn client_address(req: &CheckRequest<'_>) -> std::sync::Arc<str> {
    ClientKey::new(req.header("x-ferry-client"), "")
        .map(|c| c.address)
        .unwrap_or_default()
}

/// Whether `HeaderValue::to_str` would accept this header value, which must be visible ASCII and
/// tabs only.
fn visible(value: &[u8]) -> bool {
    value.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
}

/// Adds `connection: close` to the response in `out`, after its status line.
fn close_after_status(out: &mut Vec<u8>) {
    let at = out.windows(2).position(|w| w == b"\r\n").map_or(0, |i| i + 2);
    out.splice(at..at, *b"connection: close\r\n");
}

/// Writes a whole response: status line, headers, `content-length` (except for 204), body.
fn respond(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], body: &str) {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "",
    };
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status != 204 {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// The request as nginx describes it in the check's headers. A missing or unreadable request id
/// or client address is `Malformed`; the rest is optional.
pub fn admission(req: &CheckRequest<'_>) -> Result<Admission, Refusal> {
    let request_id = req.header("x-ferry-request-id");
    let client = ClientKey::new(req.header("x-ferry-client"), &req.header_text("x-ferry-user-agent"))
        .ok_or(Refusal::Malformed)?;
    if request_id.len() != 32 {
        return Err(Refusal::Malformed);
    }
    Ok(Admission {
        request_id: request_id.into(),
        method: Method::parse(req.header("x-ferry-method")),
        range: Some(req.header_text("x-ferry-range"))
            .filter(|r| !r.is_empty())
            .map(String::from),
        if_range: Some(req.header_text("x-ferry-if-range"))
            .filter(|r| !r.is_empty())
            .map(String::from),
        client,
        // The baseline is filled in by the check itself.
        conn: Conn::parse(req.header("x-ferry-local"), req.header("x-ferry-peer")).map(|c| (c, 0)),
        first_on_connection: req.header("x-ferry-connection-requests") == "1",
    })
}

async fn decide(links: &Links, req: &CheckRequest<'_>) -> Result<(String, u64, Use), Refusal> {
    let admission = admission(req)?;
    let (link, what) = links
        .check(
            req.header("x-ferry-tunnel"),
            req.header("x-ferry-token"),
            &visitor(req),
            admission,
        )
        .await?;
    Ok((
        content_disposition_bytes(&link.download_name()),
        link.rate_limit_bytes_per_second.unwrap_or(0),
        what,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the socket reads of a head: (method, tunnel header, keep-alive, has a body, length).
    #[derive(Debug, PartialEq)]
    struct Head(String, String, bool, bool, usize);

    fn head(raw: &str) -> Result<Option<Head>, BadHead> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        Ok(parse(raw.as_bytes(), &mut headers)?.map(|(req, used)| {
            Head(
                req.method.into(),
                req.header("x-ferry-tunnel").into(),
                req.keep_alive,
                req.has_body,
                used,
            )
        }))
    }

    fn complete(raw: &str) -> Head {
        head(raw).unwrap().unwrap()
    }

    /// nginx keeps up to 128 idle connections to the socket per worker, and each one is a task
    /// waiting for its next request. A waiting task must not hold the state of a whole check.
    #[tokio::test]
    async fn an_idle_connection_holds_little() {
        let f = crate::links::timed_tests::fixture(&[]);
        let (socket, _nginx) = UnixStream::pair().unwrap();
        let task = connection(socket, f.links.clone(), CancellationToken::new());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 4096, "an idle check connection's task takes {size} bytes");
    }

    /// Every check allocates its state and moves it onto the heap. Work that is large and rare,
    /// such as closing a link whose file changed, is boxed where it happens, so that every check
    /// does not have to carry room for it.
    #[tokio::test]
    async fn a_check_carries_little() {
        let f = crate::links::timed_tests::fixture(&[]);
        let raw = "GET /check HTTP/1.1\r\nX-Ferry-Tunnel: abc\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (req, _) = parse(raw.as_bytes(), &mut headers).unwrap().unwrap();
        let mut out = Vec::new();
        let size = std::mem::size_of_val(&answer(&f.links, &req, &mut out));
        assert!(size <= 4096, "a check's state takes {size} bytes");
    }

    #[test]
    fn request_heads_are_read_in_place() {
        let one = "GET /check HTTP/1.1\r\nHost: ferry_check\r\nX-Ferry-Tunnel: abc\r\nx-ferry-tunnel: b\r\n\r\n";
        // Names are case-insensitive; the first of two values counts, as in nginx.
        assert_eq!(complete(one), Head("GET".into(), "abc".into(), true, false, one.len()));
        // A pipelined second request stays in the buffer.
        assert_eq!(complete(&format!("{one}GET /check HTTP/1.1\r\n")).4, one.len());
        assert_eq!(head("GET /check HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert!(!complete("GET /check HTTP/1.0\r\n\r\n").2);
        assert!(complete("GET /check HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").2);
        assert!(!complete("GET /check HTTP/1.1\r\nConnection: close\r\n\r\n").2);
        assert!(complete("GET /check HTTP/1.1\r\nContent-Length: 5\r\n\r\n").3);
        assert!(!complete("GET /check HTTP/1.1\r\nContent-Length: 0\r\n\r\n").3);
        assert!(complete("GET /check HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").3);
        assert_eq!(head("\x16\x03\x01 not http\r\n\r\n"), Err(BadHead));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(head(&format!("GET /check HTTP/1.1\r\n{many}\r\n")), Err(BadHead));
    }

    #[test]
    fn header_values_must_be_visible_ascii() {
        let raw = "GET /check HTTP/1.1\r\nX-Ferry-User-Agent: caf\u{e9}\r\nX-Ferry-Range: bytes=0-1\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (req, _) = parse(raw.as_bytes(), &mut headers).unwrap().unwrap();
        assert_eq!(req.header("x-ferry-user-agent"), "");
        assert_eq!(req.header("x-ferry-range"), "bytes=0-1");
        assert_eq!(req.header("x-ferry-missing"), "");
    }

    #[test]
    fn only_a_connections_first_request_skips_the_socket_baseline() {
        let first = |value: &str| {
            let raw = format!(
                "GET /check HTTP/1.1\r\nX-Ferry-Request-Id: {}\r\nX-Ferry-Client: 127.0.0.1\r\n\
                 X-Ferry-Local: 127.0.0.1:8080\r\nX-Ferry-Peer: 127.0.0.1:40000\r\n\
                 X-Ferry-Connection-Requests: {value}\r\n\r\n",
                "a".repeat(32)
            );
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let (req, _) = parse(raw.as_bytes(), &mut headers).unwrap().unwrap();
            let a = admission(&req).unwrap();
            assert!(a.conn.is_some(), "the connection is known");
            a.first_on_connection
        };
        assert!(first("1"));
        for later in ["2", "10", "", "01", "one"] {
            assert!(!first(later), "{later:?}");
        }
    }

    #[test]
    fn responses_are_whole() {
        let mut out = Vec::new();
        respond(&mut out, 204, &[("x-ferry-rate", "0")], "");
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nx-ferry-rate: 0\r\n\r\n");
        out.clear();
        respond(&mut out, 403, &[], "");
        assert_eq!(out, b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
        out.clear();
        respond(&mut out, 200, &[("content-type", "text/html")], "<p>");
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 3\r\n\r\n<p>"
        );
    }
}
