//! What every handler of the admin listener can reach.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::admin_auth::AdminAuth;
use super::host::Host;
use crate::links::Links;
use crate::monitor::follow::Counters;

#[derive(Clone)]
pub struct AppState {
    pub links: Arc<Links>,
    pub nginx_running: Arc<AtomicBool>,
    pub monitor: Arc<Counters>,
    pub provider: &'static str,
    pub auth: Arc<AdminAuth>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub config: Arc<crate::config::Config>,
    pub host: Arc<Host>,
    /// Permits for `/admin/events` streams (a bounded number open at once).
    pub sse: Arc<tokio::sync::Semaphore>,
}
