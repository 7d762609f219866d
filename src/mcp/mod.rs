//! ferry's tools for AI agents over MCP (SPEC §14): `ferry mcp` on standard input and output,
//! and MCP's Streamable HTTP at `/mcp` on the admin listener.
//!
//! There is one implementation of the tools (`tools.rs`), and it never touches links itself: it
//! calls the admin API (`api.rs`), over HTTP from `ferry mcp` and in process for `/mcp`, so that
//! checks and error messages are the API's, and the rules for agents (paths only in
//! `FERRY_MCP_ROOT`, no `notify_url`, an audit that says MCP) are enforced by the API for both.
//! `shapes.rs` holds what the tools take and give; `untrusted.rs` escapes the text others chose.
//! Nothing here reads the data dir or the store.

mod api;
mod http;
mod shapes;
mod stdio;
mod tools;
mod untrusted;

pub use api::{VIA_HEADER, VIA_MCP};
pub use http::service;
pub use stdio::run_stdio;
