//! The injectable wall clock.
//!
//! Durations and timers use `tokio::time` (so tests can pause them); wall-clock values
//! such as the SOA serial come from a [`Clock`], so a test can set them.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn unix_seconds(&self) -> u64;

    /// Milliseconds since the Unix epoch (liveness stamps).
    fn unix_millis(&self) -> u64 {
        self.unix_seconds().saturating_mul(1000)
    }
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_seconds(&self) -> u64 {
        self.unix_millis() / 1000
    }

    fn unix_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
