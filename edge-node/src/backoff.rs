//! Exponential backoff with jitter for reconnects.

use std::time::Duration;

use rand::RngExt;

/// Doubles from `min` to `max`; each delay is drawn from the upper half of
/// the current step ("equal jitter"), so a fleet of edges that lost the hub
/// together does not reconnect in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), current: None }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = match self.current {
            None => self.min,
            Some(c) => (c * 2).min(self.max),
        };
        self.current = Some(step);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// After a success: start again from `min`.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[7] >= Duration::from_millis(500), "capped step is 1 s, jittered to at least half");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
