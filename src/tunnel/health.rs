//! How the tunnel provider is doing.

/// How the provider is doing, for `/health`: `Down` means it cannot be reached at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub status: crate::health::Health,
    pub detail: Option<String>,
}

impl Health {
    pub fn ok() -> Self {
        Health {
            status: crate::health::Health::Ok,
            detail: None,
        }
    }
    pub fn unknown() -> Self {
        Health {
            status: crate::health::Health::Ok,
            detail: Some("not contacted yet".into()),
        }
    }
    pub fn degraded(m: &str) -> Self {
        Health {
            status: crate::health::Health::Degraded,
            detail: Some(m.to_string()),
        }
    }
    pub fn down(m: &str) -> Self {
        Health {
            status: crate::health::Health::Down,
            detail: Some(m.to_string()),
        }
    }
}
