//! ferry's tools for AI agents over MCP (SPEC §14): `ferry mcp` on standard input and output.
//!
//! There is one implementation of the tools (`tools.rs`), and it never touches links itself: it
//! calls the admin API (`api.rs`) over HTTP, so that checks and error messages are the API's, and
//! the rules for agents (paths only in `FERRY_MCP_ROOT`, no `notify_url`, an audit that says MCP)
//! are the API's to enforce.
//! `shapes.rs` holds what the tools take and give; `untrusted.rs` escapes the text others chose.
//! Nothing here reads the data dir or the store.

mod api;
mod shapes;
mod stdio;
mod tools;
mod untrusted;

pub use api::{VIA_HEADER, VIA_MCP};
pub use stdio::run_stdio;
