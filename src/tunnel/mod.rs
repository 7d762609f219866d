//! Tunnel providers: what makes a link reachable from outside. The `local` provider exposes
//! nothing beyond nginx's own listener; the Tailscale providers (CLI or Docker exec) add one Funnel
//! path per link. Only this module may run a command.

pub mod local;

use crate::links::TunnelId;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{0}")]
    Failed(String),
}

pub enum Provider {
    Local(local::Local),
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Local(_) => "local",
        }
    }

    /// Opens the public path for a link and verifies it is there.
    pub async fn open(&self, id: &TunnelId) -> Result<(), TunnelError> {
        match self {
            Provider::Local(p) => p.open(id),
        }
    }

    /// Closes the public path; closing one that does not exist succeeds.
    pub async fn close(&self, id: &TunnelId) -> Result<(), TunnelError> {
        match self {
            Provider::Local(p) => p.close(id),
        }
    }
}
