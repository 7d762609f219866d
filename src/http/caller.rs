//! Who made an admin request, and the rules for requests an agent made through MCP (SPEC §14).
//!
//! ferry's MCP tools call this API (from `ferry mcp` over HTTP, from `/mcp` in process) with the
//! header [`crate::mcp::VIA_HEADER`]. The guard turns it into [`ThroughMcp`] only on a request it
//! has authorised, and the handlers then apply the rules below, so they hold for both transports
//! and no tool can skip them: a path must lead into `FERRY_MCP_ROOT`, `notify_url` cannot be set
//! (see `json.rs`), and the audit names the action as made through MCP.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::error::ApiError;
use super::state::AppState;
use crate::data_dir::RelPath;

/// Marks an authorised request as made through MCP.
#[derive(Debug, Clone, Copy)]
pub struct ThroughMcp;

/// The client of an admin request.
pub struct Caller {
    pub address: Option<IpAddr>,
    pub through_mcp: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            address: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| peer.ip()),
            through_mcp: parts.extensions.get::<ThroughMcp>().is_some(),
        })
    }
}

impl Caller {
    /// Who the audit record names: the address, followed by `via MCP` for an agent.
    pub fn audit_name(&self) -> String {
        let address = self.address.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        if self.through_mcp {
            format!("{address} via MCP")
        } else {
            address
        }
    }

    /// The folder a listing shows when it names none: the data dir, or for an agent the folder
    /// it may reach.
    pub fn home(&self, s: &AppState) -> RelPath {
        if self.through_mcp {
            s.config.mcp_root.clone()
        } else {
            RelPath::root()
        }
    }

    /// For an agent, refuses a path (of the request's `field`) outside `FERRY_MCP_ROOT`: by
    /// its text, or by where its symlinks lead. A path that is not there passes, and the
    /// handler then says so as it would to anyone.
    pub fn confine(&self, s: &AppState, field: &str, path: &RelPath) -> Result<(), ApiError> {
        let root = &s.config.mcp_root;
        if !self.through_mcp || root.is_root() {
            return Ok(());
        }
        let outside = |how: &str| {
            ApiError::BadRequest(format!(
                "{field}: {how} outside the folder agents may reach ({root}, FERRY_MCP_ROOT)"
            ))
        };
        let (path_bytes, root_bytes) = (path.to_bytes(), root.to_bytes());
        let beneath = path_bytes
            .strip_prefix(root_bytes.as_slice())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"));
        if !beneath {
            return Err(outside("is"));
        }
        match s.links.data().lands_within(path, root) {
            Ok(false) => Err(outside("leads through a symlink")),
            _ => Ok(()),
        }
    }
}
