//! How well a part ferry depends on is working, as `/health` and `/admin/monitor/status` report
//! it. This module sits at the bottom: it uses nothing else of ferry, so every part can use it.

use serde::Serialize;
use utoipa::ToSchema;

/// How well a part works. In JSON: `"ok"`, `"degraded"` or `"down"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// It works as it should.
    Ok,
    /// It works, but less well or less safely than it should (ferry still serves).
    Degraded,
    /// It does not work at all.
    Down,
}

impl Health {
    /// `Ok` when `up`, else `Down`.
    pub fn up_or_down(up: bool) -> Health {
        if up { Health::Ok } else { Health::Down }
    }

    /// `Ok` when `fine`, else `Degraded`.
    pub fn ok_or_degraded(fine: bool) -> Health {
        if fine { Health::Ok } else { Health::Degraded }
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn health_is_written_in_lower_case() {
        for (h, text) in [
            (Health::Ok, "\"ok\""),
            (Health::Degraded, "\"degraded\""),
            (Health::Down, "\"down\""),
        ] {
            assert_eq!(serde_json::to_string(&h).unwrap(), text);
        }
    }
}
