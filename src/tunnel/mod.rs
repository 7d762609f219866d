//! Tunnel providers: what makes a link reachable from outside. The `local` provider exposes
//! nothing beyond nginx's own listener; the Tailscale providers (CLI or Docker exec) add one Funnel
//! path per link ([`funnel`] drives them, [`tailscale`] holds the command lines and output
//! parsing, [`runner`] runs a command locally or in the sidecar). Only this module may run a
//! command.

mod error;
pub mod funnel;
mod health;
pub mod local;
pub mod runner;
pub mod tailscale;

use crate::config::{Config, ProviderKind};
use crate::model::TunnelId;
pub use error::TunnelError;
pub use health::Health;

pub enum Provider {
    Local(local::Local),
    Tailscale(funnel::Funnel),
    Docker(funnel::Funnel),
}

impl Provider {
    /// The provider `FERRY_PROVIDER` names; refuses a `tailscale` CLI that is not there.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        if config.provider == ProviderKind::Tailscale && crate::programs::find_program(&config.tailscale_bin).is_none()
        {
            anyhow::bail!(
                "FERRY_TAILSCALE_BIN: {:?} was not found (install Tailscale, or set FERRY_TAILSCALE_BIN to the CLI)",
                config.tailscale_bin
            );
        }
        Ok(Self::build(config))
    }

    fn build(config: &Config) -> Self {
        let funnel = |runner| {
            funnel::Funnel::new(
                runner,
                config.funnel_mode,
                config.funnel_port,
                config.upstream_url.clone(),
                config.tailscale_timeout,
            )
        };
        match config.provider {
            ProviderKind::Local => Provider::Local(local::Local),
            ProviderKind::Tailscale => Provider::Tailscale(funnel(runner::Runner::process(
                config.tailscale_bin.clone().into(),
                config.tailscale_socket.clone(),
            ))),
            ProviderKind::Docker => Provider::Docker(funnel(runner::Runner::docker(
                config.tailscale_container.clone(),
                config.tailscale_bin.clone(),
                config.tailscale_socket.clone(),
            ))),
        }
    }

    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Local(_) => ProviderKind::Local,
            Provider::Tailscale(_) => ProviderKind::Tailscale,
            Provider::Docker(_) => ProviderKind::Docker,
        }
    }

    fn funnel(&self) -> Option<&funnel::Funnel> {
        match self {
            Provider::Local(_) => None,
            Provider::Tailscale(f) | Provider::Docker(f) => Some(f),
        }
    }

    /// Opens the public path for a link and verifies it is there.
    pub async fn open(&self, id: &TunnelId) -> Result<(), TunnelError> {
        match self {
            Provider::Local(p) => p.open(id),
            Provider::Tailscale(f) | Provider::Docker(f) => f.open(id).await,
        }
    }

    /// Closes the public path; closing one that does not exist succeeds.
    pub async fn close(&self, id: &TunnelId) -> Result<(), TunnelError> {
        match self {
            Provider::Local(p) => p.close(id),
            Provider::Tailscale(f) | Provider::Docker(f) => f.close(id).await,
        }
    }

    /// Puts back what the provider lost and removes what it should not have, given the open links.
    pub async fn reconcile(&self, open: &[TunnelId]) -> Result<funnel::Reconciled, TunnelError> {
        match self.funnel() {
            None => Ok(funnel::Reconciled::default()),
            Some(f) => f.reconcile(open).await,
        }
    }

    /// Where download URLs point: the Funnel host once known; `None` means `BASE_URL`.
    pub fn public_base(&self) -> Option<String> {
        self.funnel().and_then(funnel::Funnel::public_base)
    }

    /// Checks the settings against the node before ferry serves: `Err` names the setting that
    /// cannot work with it (a tailscale too old for `FERRY_UPSTREAM_URL`, say).
    pub async fn preflight(&self) -> Result<(), String> {
        match self.funnel() {
            None => Ok(()),
            Some(f) => f.preflight().await,
        }
    }

    pub fn health(&self) -> Health {
        self.funnel().map_or_else(Health::ok, funnel::Funnel::health)
    }

    pub async fn stop(&self) {
        if let Some(f) = self.funnel() {
            f.stop().await;
        }
    }
}
