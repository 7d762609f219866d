//! `ferry mcp`: the tools on standard input and output, for an agent that starts ferry as its
//! MCP server. It reaches a running ferry like the other client commands (`FERRY_URL`,
//! `FERRY_ADMIN_TOKEN`); without either, the session still starts and each tool call says what
//! is wrong.

use std::process::ExitCode;
use std::sync::Arc;

use rmcp::ServiceExt as _;

use super::api::{Api, VIA_HEADER, VIA_MCP};
use super::tools::Ferry;
use crate::cli::Client;

/// Serves one agent until it closes standard input.
pub fn run_stdio() -> ExitCode {
    let client = match Client::from_env() {
        Ok(c) => c.with_header(VIA_HEADER, VIA_MCP),
        Err(f) => return f.report(false),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let served = runtime.block_on(async {
        let server = Ferry::new(Api::Remote(Arc::new(client)))
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| e.to_string())?;
        server.waiting().await.map_err(|e| e.to_string())
    });
    match served {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            // Standard output belongs to the protocol.
            eprintln!("ferry: mcp: {e}");
            ExitCode::FAILURE
        }
    }
}
