//! What senders send to upload links (SPEC §12). nginx proxies `/s/<id>/up/...` to this Unix socket in
//! the state dir, without buffering the body, after applying its limits; everything refused here
//! is answered 403, which nginx turns into 444.
//!
//! Three ways in: tus 1.0 (core, creation, termination) for resumable uploads; one `PUT` of the
//! whole body for scripts (`curl -T file <upload_url>`); and, for a browser, the upload page,
//! which speaks tus itself. Bytes go to a partial file through the link's folder (see
//! `crate::inbox`), and move into the folder only when the file is whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use serde::Deserialize;
use sha2::Digest as _;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::links::{BeginError, Links, Visitor, partial_key};
use crate::model::{ClientKey, IncomingState, Link};

/// Bytes gathered from the body before each write to the partial file.
const WRITE_CHUNK: usize = 4 << 20;
/// Bytes per write and hash step within a chunk. Copying into the page cache in pieces this
/// size keeps them in the CPU's cache for the hash; see BENCHMARKS.md for the figures.
const WRITE_PIECE: usize = 256 << 10;
/// How often, in bytes written, the disk is asked to write out what it holds of a file.
const SYNC_EVERY: u64 = 64 << 20;
/// How often, in bytes written, the link's record hears of an upload's progress.
const REPORT_EVERY: u64 = 16 << 20;
const TUS_VERSION: &str = "1.0.0";

/// The socket's state: the links, and the SHA-256 of each upload so far, so that a file is
/// hashed as it arrives rather than read again at the end.
struct Receiver {
    links: Arc<Links>,
    hashers: Mutex<HashMap<String, (u64, sha2::Sha256)>>,
}

type Shared = State<Arc<Receiver>>;

/// Serves the socket until `shutdown` is cancelled.
pub async fn serve(listener: UnixListener, links: Arc<Links>, shutdown: CancellationToken) {
    let state = Arc::new(Receiver {
        links,
        hashers: Mutex::default(),
    });
    let app = Router::new()
        .route("/check", get(check))
        .route("/s/{id}/up/", get(page).post(create).options(options))
        .route(
            "/s/{id}/up/{item}",
            axum::routing::head(offset)
                .patch(append)
                .delete(terminate)
                .put(put_whole),
        )
        .fallback(|| async { refuse() })
        .with_state(state);
    tokio::select! {
        served = axum::serve(listener, app) => {
            if let Err(e) = served {
                tracing::error!(error = %e, "upload socket failed");
            }
        }
        _ = shutdown.cancelled() => {}
    }
}

#[derive(Deserialize)]
struct Token {
    t: Option<String>,
}

/// What nginx turns into 444: the connection closes with no response.
fn refuse() -> Response {
    StatusCode::FORBIDDEN.into_response()
}

/// A tus response: every one carries the protocol's version.
fn tus(status: StatusCode, headers: &[(&'static str, String)]) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(*name, v);
        }
    }
    r
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    let v = text(headers, name);
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse().ok())
        .flatten()
}

/// The open upload link `id`, if the request's token is its own; else the refusal, audited.
async fn authorize(r: &Receiver, id: &str, q: &Token, headers: &HeaderMap) -> Result<Arc<Link>, Response> {
    let address = ClientKey::new(text(headers, "x-ferry-client"), "")
        .map(|c| c.address)
        .unwrap_or_default();
    let now = r.links.now_ms();
    if r.links.bans.is_banned(&address, now) {
        return Err(refuse());
    }
    // The check subrequest carries the client's credentials in its own header; a request nginx
    // passes on carries them as the client sent them.
    let authorization = match text(headers, "x-ferry-authorization") {
        "" => text(headers, "authorization"),
        a => a,
    };
    let visitor = Visitor {
        ip: text(headers, "x-ferry-client").parse().ok(),
        authorization,
    };
    match r.links.upload_link(id, q.t.as_deref().unwrap_or(""), &visitor).await {
        Ok(link) => Ok(link),
        Err(refusal) => {
            metrics::counter!("ferry_refusals_total", "reason" => refusal.code()).increment(1);
            r.links.refused(&address, id, refusal, now).await;
            // nginx answers a 401 with the Basic challenge, whose realm names the link.
            match refusal.asks_for_password() {
                true => Err(StatusCode::UNAUTHORIZED.into_response()),
                false => Err(refuse()),
            }
        }
    }
}

/// nginx's question before it reads a byte of a request's body (`auth_request`): 204 lets the
/// request through; 403 refuses it, with `X-Ferry-Deny: 413` or `507` when the declared length
/// is over the link's `max_bytes` or over the room left (else nginx answers 444). Deciding here,
/// before nginx tells the client to go on (`100 Continue`), means a refused body is never sent.
async fn check(State(r): Shared, headers: HeaderMap) -> Response {
    let q = Token {
        t: Some(text(&headers, "x-ferry-token").to_string()),
    };
    let link = match authorize(&r, text(&headers, "x-ferry-tunnel"), &q, &headers).await {
        Ok(link) => link,
        // A link with a password asks for it; nginx answers with the challenge.
        Err(asked) if asked.status() == StatusCode::UNAUTHORIZED => return asked,
        Err(_) => return deny(None),
    };
    let declared = match text(&headers, "x-ferry-method") {
        "POST" => number(&headers, "x-ferry-upload-length"),
        "PUT" => number(&headers, "x-ferry-content-length"),
        _ => None,
    };
    match r.links.upload_fits(&link, declared).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(BeginError::TooLarge) => deny(Some("413")),
        Err(BeginError::NoRoom) => deny(Some("507")),
        Err(BeginError::Refused(_)) => deny(None),
    }
}

fn deny(status: Option<&'static str>) -> Response {
    let mut r = StatusCode::FORBIDDEN.into_response();
    if let Some(s) = status {
        r.headers_mut().insert("x-ferry-deny", HeaderValue::from_static(s));
    }
    r
}

/// The file name in tus's `Upload-Metadata` (`filename`, else `name`), base64 in the header.
fn metadata_name(headers: &HeaderMap) -> String {
    use base64::Engine as _;
    let pairs: HashMap<&str, &str> = text(headers, "upload-metadata")
        .split(',')
        .filter_map(|pair| pair.trim().split_once(' '))
        .collect();
    ["filename", "name"]
        .iter()
        .find_map(|k| pairs.get(k))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.trim()).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// tus creation: takes a place for a file of `Upload-Length` bytes.
async fn create(State(r): Shared, Path(id): Path<String>, Query(q): Query<Token>, headers: HeaderMap) -> Response {
    let link = match authorize(&r, &id, &q, &headers).await {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    let Some(length) = number(&headers, "upload-length") else {
        return refuse();
    };
    let incoming = match r
        .links
        .begin_upload(&link, &metadata_name(&headers), Some(length))
        .await
    {
        Ok(i) => i,
        Err(e) => return begin_refused(e),
    };
    if length == 0 {
        let digest = hex(sha2::Sha256::new());
        if r.links.finish_upload(&link, &incoming.id, 0, digest).await.is_err() {
            return refuse();
        }
    }
    let location = format!("/s/{}/up/{}?t={}", link.id, incoming.id, q.t.unwrap_or_default());
    tus(
        StatusCode::CREATED,
        &[("location", location), ("upload-offset", "0".into())],
    )
}

fn begin_refused(e: BeginError) -> Response {
    match e {
        BeginError::TooLarge => tus(StatusCode::PAYLOAD_TOO_LARGE, &[]),
        BeginError::NoRoom => tus(StatusCode::INSUFFICIENT_STORAGE, &[]),
        BeginError::Refused(_) => refuse(),
    }
}

fn hex(h: sha2::Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// tus `HEAD`: how much of the file the server holds.
async fn offset(
    State(r): Shared,
    Path((id, item)): Path<(String, String)>,
    Query(q): Query<Token>,
    headers: HeaderMap,
) -> Response {
    let link = match authorize(&r, &id, &q, &headers).await {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    let Some(f) = link.upload.iter().flat_map(|u| &u.files).find(|f| *f.id == *item) else {
        return refuse();
    };
    let at = match &f.state {
        IncomingState::Receiving => match r.links.inbox(&link) {
            Ok(inbox) => inbox.partial_len(&partial_key(&link.id, &item)),
            Err(_) => return refuse(),
        },
        IncomingState::Received { .. } => f.received,
        IncomingState::Abandoned => return refuse(),
    };
    let mut headers = vec![("upload-offset", at.to_string())];
    if let Some(n) = f.length {
        headers.push(("upload-length", n.to_string()));
    }
    tus(StatusCode::OK, &headers)
}

/// How a body's writing ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The body ended.
    Whole,
    /// The sender went away (or the body broke off) partway.
    Broken,
    /// The body was longer than it may be; nothing of it was kept.
    TooLong,
    /// The partial file could not be written.
    Failed(String),
}

/// Which upload a body's progress is reported for.
struct Report<'a> {
    links: &'a Links,
    link: &'a crate::model::TunnelId,
    upload: &'a str,
}

/// Where a body goes: the partial file from `start` on, at most `room` bytes.
struct Sink {
    file: Option<std::fs::File>,
    start: u64,
    room: u64,
    hasher: Option<sha2::Sha256>,
}

/// What the writer thread did: the file and hasher back, the bytes written, and any error.
type Written = (std::fs::File, Option<sha2::Sha256>, u64, Result<(), String>);

impl Sink {
    /// Starts the thread that writes (and hashes) the buffers sent to it, in order, from
    /// `self.start` on. Writing runs beside reading the body, so neither waits for the other.
    fn writer(&mut self, buffers: mpsc::Receiver<Vec<u8>>, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<Written> {
        use std::os::unix::fs::FileExt as _;
        let (file, mut hasher, start) = (
            self.file.take().expect("the sink's file"),
            self.hasher.take(),
            self.start,
        );
        let mut buffers = buffers;
        tokio::task::spawn_blocking(move || {
            // A second thread asks the disk to write out what is in the page cache every
            // SYNC_EVERY bytes, so that the sync before the file moves into place finds little
            // left to do, and the disk works while the body still arrives.
            let (sync, pending) = std::sync::mpsc::sync_channel::<()>(1);
            let (mut at, mut synced) = (start, start);
            let result = std::thread::scope(|scope| {
                let shared = &file;
                scope.spawn(move || {
                    while pending.recv().is_ok() {
                        let _ = shared.sync_data();
                    }
                });
                while let Some(buf) = buffers.blocking_recv() {
                    for piece in buf.chunks(WRITE_PIECE) {
                        file.write_all_at(piece, at).map_err(|e| e.to_string())?;
                        if let Some(h) = hasher.as_mut() {
                            h.update(piece);
                        }
                        at += piece.len() as u64;
                    }
                    done.store(at - start, Ordering::Relaxed);
                    if at - synced >= SYNC_EVERY {
                        synced = at;
                        let _ = sync.try_send(());
                    }
                }
                drop(sync);
                Ok(())
            });
            (file, hasher, at - start, result)
        })
    }

    /// Streams `body` into the file; returns the bytes written and how it ended. The link's
    /// record hears of the upload's progress now and then.
    async fn take(&mut self, body: Body, report: Report<'_>) -> (u64, End) {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(2);
        let done = Arc::new(AtomicU64::new(0));
        let writer = self.writer(rx, done.clone());
        let mut stream = body.into_data_stream();
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        let (mut sent, mut reported) = (0u64, 0u64);
        let end = loop {
            let end = match stream.next().await {
                Some(Ok(bytes)) if sent + (buf.len() + bytes.len()) as u64 > self.room => break End::TooLong,
                Some(Ok(bytes)) => {
                    buf.extend_from_slice(&bytes);
                    None
                }
                Some(Err(_)) => Some(End::Broken),
                None => Some(End::Whole),
            };
            if !buf.is_empty() && (end.is_some() || buf.len() >= WRITE_CHUNK) {
                sent += buf.len() as u64;
                let full = std::mem::replace(&mut buf, Vec::with_capacity(WRITE_CHUNK));
                if tx.send(full).await.is_err() {
                    // The writer stopped: its error says why.
                    break End::Whole;
                }
                let written = done.load(Ordering::Relaxed);
                if written - reported >= REPORT_EVERY {
                    reported = written;
                    report
                        .links
                        .upload_progress(report.link, report.upload, self.start + written)
                        .await;
                }
            }
            if let Some(end) = end {
                break end;
            }
        };
        drop(tx);
        let Ok((file, hasher, written, result)) = writer.await else {
            return (0, End::Failed("the writer thread failed".into()));
        };
        (self.file, self.hasher) = (Some(file), hasher);
        match (end, result) {
            (End::TooLong, _) => (written, End::TooLong),
            (_, Err(e)) => (written, End::Failed(e)),
            (end, Ok(())) => (written, end),
        }
    }
}

/// tus `PATCH`: bytes from `Upload-Offset` on.
async fn append(
    State(r): Shared,
    Path((id, item)): Path<(String, String)>,
    Query(q): Query<Token>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let link = match authorize(&r, &id, &q, &headers).await {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    let receiving = link
        .upload
        .iter()
        .flat_map(|u| &u.files)
        .find(|f| *f.id == *item && f.state == IncomingState::Receiving);
    let (Some(f), Some(at)) = (receiving, number(&headers, "upload-offset")) else {
        return refuse();
    };
    let Some(length) = f.length else { return refuse() };
    if text(&headers, "content-type") != "application/offset+octet-stream" {
        return tus(StatusCode::UNSUPPORTED_MEDIA_TYPE, &[]);
    }
    let key = partial_key(&link.id, &item);
    let Some(_busy) = r.links.uploads_busy().claim(&key) else {
        return tus(StatusCode::CONFLICT, &[]);
    };
    let Ok(inbox) = r.links.inbox(&link) else {
        return refuse();
    };
    let held = inbox.partial_len(&key);
    if at != held {
        return tus(StatusCode::CONFLICT, &[("upload-offset", held.to_string())]);
    }
    if number(&headers, "content-length").is_some_and(|n| n > length - at) {
        return tus(StatusCode::PAYLOAD_TOO_LARGE, &[]);
    }
    let Ok(file) = inbox.partial(&key, false) else {
        return refuse();
    };
    let hasher = r.hasher_at(&key, at);
    let mut sink = Sink {
        file: Some(file),
        start: at,
        room: length - at,
        hasher,
    };
    let report = Report {
        links: &r.links,
        link: &link.id,
        upload: &item,
    };
    let (written, end) = sink.take(body, report).await;
    if end == End::TooLong {
        // Nothing of a body that was too long is kept.
        let _ = sink.file.as_ref().map(|f| f.set_len(at));
        return refuse();
    }
    let now = at + written;
    r.links.upload_progress(&link.id, &item, now).await;
    if now < length {
        if let Some(h) = sink.hasher.take() {
            r.hashers.lock().expect("hashers mutex").insert(key, (now, h));
        }
        return match end {
            End::Failed(_) => refuse(),
            _ => tus(StatusCode::NO_CONTENT, &[("upload-offset", now.to_string())]),
        };
    }
    match r.complete(&link, &item, length, sink.hasher.take()).await {
        true => tus(StatusCode::NO_CONTENT, &[("upload-offset", now.to_string())]),
        false => refuse(),
    }
}

impl Receiver {
    /// The upload's running SHA-256 if it has hashed exactly the first `at` bytes; a fresh one
    /// at 0; else none (the file is read again when it is complete).
    fn hasher_at(&self, key: &str, at: u64) -> Option<sha2::Sha256> {
        match self.hashers.lock().expect("hashers mutex").remove(key) {
            Some((n, h)) if n == at => Some(h),
            _ => (at == 0).then(sha2::Sha256::new),
        }
    }

    /// Moves a whole file into the folder, with its SHA-256 (computed now if need be).
    async fn complete(&self, link: &Link, item: &str, length: u64, hasher: Option<sha2::Sha256>) -> bool {
        let key = partial_key(&link.id, item);
        self.hashers.lock().expect("hashers mutex").remove(&key);
        let digest = match hasher {
            Some(h) => hex(h),
            None => {
                let Ok(inbox) = self.links.inbox(link) else {
                    return false;
                };
                match tokio::task::spawn_blocking(move || inbox.sha256(&key)).await {
                    Ok(Ok(d)) => d,
                    _ => return false,
                }
            }
        };
        match self.links.finish_upload(link, item, length, digest).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(tunnel_id = %link.id, error = %e, "could not move a received file into place");
                false
            }
        }
    }
}

/// One `PUT` of a whole file, named by the URL's last segment (`curl -T file <upload_url>`).
async fn put_whole(
    State(r): Shared,
    Path((id, item)): Path<(String, String)>,
    Query(q): Query<Token>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let link = match authorize(&r, &id, &q, &headers).await {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    let Some(max) = link.upload.as_ref().map(|u| u.max_bytes) else {
        return refuse();
    };
    // The path segment arrives percent-decoded: it is the name as the sender's client sent it.
    let name = item;
    let declared = number(&headers, "content-length");
    let incoming = match r.links.begin_upload(&link, &name, declared).await {
        Ok(i) => i,
        Err(e) => return begin_refused(e),
    };
    let key = partial_key(&link.id, &incoming.id);
    let file = r.links.inbox(&link).and_then(|i| i.partial(&key, false));
    let Ok(file) = file else {
        r.links.abandon_upload(&link, &incoming.id).await;
        return refuse();
    };
    let mut sink = Sink {
        file: Some(file),
        start: 0,
        room: declared.unwrap_or(max),
        hasher: Some(sha2::Sha256::new()),
    };
    let report = Report {
        links: &r.links,
        link: &link.id,
        upload: &incoming.id,
    };
    let (written, end) = sink.take(body, report).await;
    let whole = end == End::Whole && declared.is_none_or(|n| n == written);
    if !whole || !r.complete(&link, &incoming.id, written, sink.hasher.take()).await {
        // A body cut short, or longer than allowed, leaves nothing behind.
        r.links.abandon_upload(&link, &incoming.id).await;
        return refuse();
    }
    StatusCode::CREATED.into_response()
}

/// tus termination: the upload is given up and its data removed.
async fn terminate(
    State(r): Shared,
    Path((id, item)): Path<(String, String)>,
    Query(q): Query<Token>,
    headers: HeaderMap,
) -> Response {
    let link = match authorize(&r, &id, &q, &headers).await {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    r.links.abandon_upload(&link, &item).await;
    tus(StatusCode::NO_CONTENT, &[])
}

/// tus discovery.
async fn options(State(r): Shared, Path(id): Path<String>, Query(q): Query<Token>, headers: HeaderMap) -> Response {
    let link = match authorize(&r, &id, &q, &headers).await {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    let max = link.upload.as_ref().map_or(0, |u| u.max_bytes);
    tus(
        StatusCode::NO_CONTENT,
        &[
            ("tus-version", TUS_VERSION.into()),
            ("tus-extension", "creation,termination".into()),
            ("tus-max-size", max.to_string()),
        ],
    )
}

/// The page a browser gets: web/upload.html with its script and style inlined, and a policy
/// that allows exactly those.
static PAGE: LazyLock<(String, String)> = LazyLock::new(|| {
    let html = include_str!("../../web/upload.html")
        .replace("/*{{style}}*/", include_str!("../../web/upload.css"))
        .replace("//{{script}}", include_str!("../../web/upload.js"));
    let hash = |open: &str, close: &str| -> String {
        use base64::Engine as _;
        let inner = html
            .split_once(open)
            .and_then(|(_, rest)| rest.split_once(close))
            .map_or("", |(inner, _)| inner);
        let digest = sha2::Sha256::digest(inner.as_bytes());
        format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
    };
    let csp = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script type=\"module\">", "</script>"),
        hash("<style>", "</style>"),
    );
    (html, csp)
});

async fn page(State(r): Shared, Path(id): Path<String>, Query(q): Query<Token>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&r, &id, &q, &headers).await {
        return refused;
    }
    let (html, csp) = &*PAGE;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp.as_str()),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html.clone(),
    )
        .into_response()
}
