//! The reconnect policy of `meridian_protocol::backoff`, drawing its
//! jitter from this process's RNG.

use std::time::Duration;

use rand::RngExt;

/// Exponential backoff with jitter ([`meridian_protocol::backoff::Backoff`]).
#[derive(Clone, Debug)]
pub struct Backoff(meridian_protocol::backoff::Backoff);

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self(meridian_protocol::backoff::Backoff::new(min, max))
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.0.next_delay(rand::rng().random_range(0.0..=1.0))
    }

    /// After a success: start again from the minimum.
    pub fn reset(&mut self) {
        self.0.reset();
    }
}
