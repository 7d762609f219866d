//! The floor any checked request pays: an axum handler on a Unix socket that allows everything
//! with 204, for nginx's `auth_request` in `script/bench`. Usage: `auth204 <socket path> [--ferry]`.
//! With `--ferry` the 204 carries the three headers ferry's nginx config reads from ferry's check (a
//! rate of 0, a claim and a disposition), so that config can run against a trivial check without logging an
//! error per request about an empty `limit_rate`. Without a path (as `cargo test --all-targets`
//! runs it) it answers one request to itself.

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() {
    // `cargo bench` adds `--bench`; the socket is the one argument that is not a flag.
    let path = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let (path, self_check) = match path {
        Some(p) => (std::path::PathBuf::from(p), false),
        None => (
            std::env::temp_dir().join(format!("auth204-{}.sock", std::process::id())),
            true,
        ),
    };
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind the socket");
    let app = if std::env::args().any(|a| a == "--ferry") {
        Router::new().fallback(any(|| async {
            let headers = [
                ("x-ferry-rate", "0"),
                ("x-ferry-claim", "c0.000000000000"),
                ("x-ferry-disposition", "attachment; filename*=UTF-8''ranges.bin"),
            ];
            (StatusCode::NO_CONTENT, headers).into_response()
        }))
    } else {
        Router::new().fallback(any(|| async { StatusCode::NO_CONTENT }))
    };
    let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    if !self_check {
        server.await.expect("server task");
        return;
    }
    let mut s = tokio::net::UnixStream::connect(&path).await.expect("connect");
    s.write_all(b"GET /check HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    let _ = std::fs::remove_file(&path);
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
}
