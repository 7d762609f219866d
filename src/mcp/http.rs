//! `/mcp`: the tools over MCP's Streamable HTTP, served by the admin listener behind its usual
//! guard (Host, Origin, admin auth). Stateless, with JSON answers: each POST is one exchange and
//! nothing is kept between requests, so no client can make ferry hold sessions. A GET, which
//! would open a stream of messages from ferry, gets 405, as MCP allows a server that sends
//! none.

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

use super::api::Api;
use super::tools::Ferry;

/// The `/mcp` service; its tools call `api`, the admin router without `/mcp`.
pub fn service(api: axum::Router) -> StreamableHttpService<Ferry, NeverSessionManager> {
    let tools = Ferry::new(Api::InProcess(api));
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // The admin listener's guard has checked Host and Origin with ferry's own rules
        // (`FERRY_ADMIN_HOSTS` included) before a request gets here.
        .disable_allowed_hosts()
        .disable_allowed_origins();
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}
