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
