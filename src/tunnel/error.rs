//! What can go wrong when a link's tunnel is opened or closed.

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{0}")]
    Failed(String),
    /// The node cannot use Funnel (capability missing); the message says how to enable it.
    #[error("{0}")]
    NoFunnel(String),
    /// The node refuses, or ferry will not use it as it is, for a reason only the owner can
    /// change (a permission, a setting, the port); the message says what to change.
    #[error("{0}")]
    Refused(String),
}
