//! How the tools reach ferry: always through its admin API, so that what they may do, how input
//! is checked and what an error says are the API's. `ferry mcp` calls a running ferry over HTTP
//! with the CLI's client; `/mcp` calls the admin router of its own process, with the
//! credentials, `Host` and client address of the MCP request it serves.
//!
//! Every call carries [`VIA_HEADER`]; the admin listener honours it only on a request it has
//! authorised, and then applies the rules for agents (SPEC §14) whichever way the call came.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, header};
use rmcp::RoleServer;
use rmcp::service::RequestContext;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::cli::{Client, Failure, outcome};

/// The header that marks a call of the admin API as made through MCP, and its value.
pub const VIA_HEADER: &str = "x-ferry-via";
pub const VIA_MCP: &str = "mcp";

/// The largest answer read from the in-process API (a long list of links).
const ANSWER_LIMIT: usize = 64 << 20;

#[derive(Clone)]
pub enum Api {
    /// A running ferry at `FERRY_URL` (`ferry mcp`).
    Remote(std::sync::Arc<Client>),
    /// This process's own admin router (`/mcp`).
    InProcess(axum::Router),
}

impl Api {
    /// Calls `method path` with an optional JSON body for the tool call `ctx`; the answer's JSON,
    /// or the API's message as the failure.
    pub async fn call(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        match self {
            Api::Remote(client) => client.request(method, path, body).await,
            Api::InProcess(router) => in_process(router, ctx, method, path, body).await,
        }
        .map_err(|f| f.message())
    }
}

/// Calls the admin router as the MCP request behind `ctx` would call it: with its
/// `Authorization`, session cookie and `Host`, from its address.
async fn in_process(
    router: &axum::Router,
    ctx: &RequestContext<RoleServer>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Failure> {
    let Some(mcp) = ctx.extensions.get::<axum::http::request::Parts>() else {
        return Err(Failure::Unreachable("no HTTP request behind this tool call".into()));
    };
    let mut req = Request::builder().method(method).uri(path).header(VIA_HEADER, VIA_MCP);
    for name in [header::AUTHORIZATION, header::COOKIE, header::HOST] {
        if let Some(v) = mcp.headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(serde_json::to_vec(b).map_err(|e| Failure::Unreachable(e.to_string()))?)
        }
        None => Body::empty(),
    };
    let mut req = req.body(body).map_err(|e| Failure::Unreachable(e.to_string()))?;
    if let Some(peer) = mcp.extensions.get::<ConnectInfo<SocketAddr>>() {
        req.extensions_mut().insert(*peer);
    }
    let answer = match router.clone().oneshot(req).await {
        Ok(a) => a,
        Err(never) => match never {},
    };
    let status = answer.status().as_u16();
    let bytes = axum::body::to_bytes(answer.into_body(), ANSWER_LIMIT)
        .await
        .map_err(|e| Failure::Unreachable(format!("reading ferry's answer: {e}")))?;
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    outcome(status, json, false)
}
