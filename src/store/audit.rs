//! Audit records: admin actions and public refusals, with time, client and link. Kept as long as
//! history (`FERRY_HISTORY_DAYS`). A record never carries a token.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time_ms: u64,
    /// `link.created`, `link.terminated`, `cleanup`, `login`, `login.failed`, `refused`, `banned`.
    pub event: String,
    pub client: Option<String>,
    pub tunnel_id: Option<String>,
    /// Why a request was refused, or what an action did.
    pub detail: Option<String>,
}
