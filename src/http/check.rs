//! The check nginx makes before serving any public request (`auth_request` over the Unix socket
//! in the state dir). 204 allows, with the file's `Content-Disposition`; anything else makes nginx
//! answer 444. Only nginx can reach this router: it is never bound to TCP.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use crate::links::rules::{Admission, Method, Refusal};
use crate::links::{ClientKey, content_disposition};
use crate::monitor::sockdiag::Conn;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/check", get(check))
        .route("/s/{*rest}", get(preview))
        .with_state(state)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Refuses banned clients up front, and counts refusals that look like guessing.
async fn guarded<T>(s: &AppState, h: &HeaderMap, f: impl Future<Output = Result<T, Refusal>>) -> Result<T, Refusal> {
    let address = ClientKey::new(header(h, "x-ferry-client"), "")
        .map(|c| c.address)
        .unwrap_or_default();
    let now = s.links.now_ms();
    if s.links.bans.is_banned(&address, now) {
        s.links
            .audit_refusal(&address, header(h, "x-ferry-tunnel"), Refusal::Banned)
            .await;
        return Err(Refusal::Banned);
    }
    let out = f.await;
    if let Err(r) = &out {
        let tunnel = header(h, "x-ferry-tunnel");
        s.links.audit_refusal(&address, tunnel, *r).await;
        if r.counts_against_client() && s.links.bans.fail(&address, now) {
            tracing::warn!(client = %address, "banned after repeated bad tokens");
            metrics::counter!("ferry_bans_total").increment(1);
            s.links
                .audit("banned", Some(&address), Some(tunnel), Some(r.code().to_string()))
                .await;
        }
    }
    out
}

async fn check(State(s): State<AppState>, h: HeaderMap) -> Response {
    match guarded(&s, &h, decide(&s, &h)).await {
        Ok((disposition, rate)) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                r.headers_mut().insert("x-ferry-disposition", v);
            }
            // nginx's limit_rate: 0 is no cap.
            r.headers_mut().insert("x-ferry-rate", HeaderValue::from(rate));
            r
        }
        Err(refusal) => {
            metrics::counter!("ferry_refusals_total", "reason" => refusal.code()).increment(1);
            tracing::debug!(%refusal, tunnel = header(&h, "x-ferry-tunnel"), client = header(&h, "x-ferry-client"), "refused");
            StatusCode::FORBIDDEN.into_response()
        }
    }
}

/// A previewer's request, proxied as is by nginx: an HTML preview, or 403 (444 at nginx).
async fn preview(State(s): State<AppState>, h: HeaderMap) -> Response {
    match s
        .links
        .preview(header(&h, "x-ferry-tunnel"), header(&h, "x-ferry-token"))
        .await
    {
        Ok(link) => (
            [
                ("content-type", "text/html; charset=utf-8"),
                ("referrer-policy", "no-referrer"),
                ("cache-control", "private, no-store"),
                ("content-security-policy", "default-src 'none'"),
            ],
            crate::links::preview_html(&link),
        )
            .into_response(),
        Err(refusal) => {
            metrics::counter!("ferry_refusals_total", "reason" => refusal.code()).increment(1);
            tracing::debug!(%refusal, client = header(&h, "x-ferry-client"), "preview refused");
            StatusCode::FORBIDDEN.into_response()
        }
    }
}

/// The request as nginx describes it in the check's headers. A missing or unreadable request id
/// or client address is `Malformed`; the rest is optional.
pub fn admission(h: &HeaderMap) -> Result<Admission, Refusal> {
    let request_id = header(h, "x-ferry-request-id");
    let client =
        ClientKey::new(header(h, "x-ferry-client"), header(h, "x-ferry-user-agent")).ok_or(Refusal::Malformed)?;
    if request_id.len() != 32 {
        return Err(Refusal::Malformed);
    }
    Ok(Admission {
        request_id: request_id.into(),
        method: Method::parse(header(h, "x-ferry-method")),
        range: Some(header(h, "x-ferry-range"))
            .filter(|r| !r.is_empty())
            .map(String::from),
        client,
        // The baseline is filled in by the check itself.
        conn: Conn::parse(header(h, "x-ferry-local"), header(h, "x-ferry-peer")).map(|c| (c, 0)),
    })
}

async fn decide(s: &AppState, h: &HeaderMap) -> Result<(String, u64), Refusal> {
    let admission = admission(h)?;
    let link = s
        .links
        .check(header(h, "x-ferry-tunnel"), header(h, "x-ferry-token"), admission)
        .await?;
    Ok((
        content_disposition(link.file_path.file_name()),
        link.rate_limit_bytes_per_second.unwrap_or(0),
    ))
}
