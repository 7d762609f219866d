//! Time: where a link's clock comes from, how it is written for people, and periods for
//! background work.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// Where link time comes from: the system clock, or tokio's clock (which tests can pause and
/// advance) anchored to the wall time when the link service started.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Tokio { wall_ms: u64, start: tokio::time::Instant },
}

impl Clock {
    pub fn tokio() -> Self {
        Clock::Tokio {
            wall_ms: now_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => now_ms(),
            Clock::Tokio { wall_ms, start } => wall_ms + start.elapsed().as_millis() as u64,
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A period for background work. The first tick comes at once, a late tick is not made up, and no
/// tick comes after the token is cancelled.
pub struct Every {
    tick: tokio::time::Interval,
    cancel: CancellationToken,
}

impl Every {
    pub fn new(period: std::time::Duration, cancel: CancellationToken) -> Every {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { tick, cancel }
    }

    /// Waits for the next tick. Returns `false` once cancelled.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }
}

const HINT: &str = "an RFC 3339 time with its zone, such as 2025-06-01T18:00:00Z or 2025-06-01T20:00:00+02:00";

/// Parses an RFC 3339 time with its zone (`Z` or an offset such as `+02:00`). A time without a
/// zone is refused: taking it as UTC is rarely what a person at a clock means.
pub fn parse_zoned(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    let (local, east_of_utc) = split_zone(s).ok_or_else(|| format!("expected {HINT}"))?;
    if local.len() < "2025-06-01T18:00:00".len() {
        return Err(format!("expected {HINT}"));
    }
    let at = humantime::parse_rfc3339_weak(local).map_err(|e| format!("{e}: expected {HINT}"))?;
    let utc = if east_of_utc >= 0 {
        at.checked_sub(Duration::from_secs(east_of_utc.unsigned_abs()))
    } else {
        at.checked_add(Duration::from_secs(east_of_utc.unsigned_abs()))
    };
    utc.filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .ok_or_else(|| "before 1970".to_string())
}

/// The time without its zone, and the zone's offset east of UTC in seconds.
fn split_zone(s: &str) -> Option<(&str, i64)> {
    if let Some(local) = s.strip_suffix(['Z', 'z']) {
        return Some((local, 0));
    }
    let at = s.len().checked_sub("+02:00".len()).filter(|&i| s.is_char_boundary(i))?;
    let (local, zone) = s.split_at(at);
    let sign = match zone.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = zone[1..].split_once(':')?;
    let digits = |d: &str| d.len() == 2 && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 23 && m <= 59).then_some((local, sign * (h * 3600 + m * 60)))
}
