//! How the tools reach ferry: always through its admin API, so that what they may do, how input
//! is checked and what an error says are the API's. `ferry mcp` calls a running ferry over HTTP
//! with the CLI's client.
//!
//! Every call carries [`VIA_HEADER`], which marks it as made through MCP.

use axum::http::Method;
use rmcp::RoleServer;
use rmcp::service::RequestContext;
use serde_json::Value;

use crate::cli::Client;

/// The header that marks a call of the admin API as made through MCP, and its value.
pub const VIA_HEADER: &str = "x-ferry-via";
pub const VIA_MCP: &str = "mcp";

#[derive(Clone)]
pub enum Api {
    /// A running ferry at `FERRY_URL` (`ferry mcp`).
    Remote(std::sync::Arc<Client>),
}

impl Api {
    /// Calls `method path` with an optional JSON body for the tool call `ctx`; the answer's JSON,
    /// or the API's message as the failure.
    pub async fn call(
        &self,
        _ctx: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        match self {
            Api::Remote(client) => client.request(method, path, body).await,
        }
        .map_err(|f| f.message())
    }
}
