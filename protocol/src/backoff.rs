//! Reconnect backoff: exponential with jitter, the one policy every Meridian
//! transport uses (edge uplink, edge-to-edge links, native and browser
//! clients). Sans-IO like the rest of this crate: the caller passes the
//! random draw, so the policy is deterministic under test.

use std::time::Duration;

/// Doubles from `min` to `max`; each delay is drawn from the upper half of
/// the current step ("equal jitter"), so a fleet of clients that lost a
/// server together does not reconnect in lockstep.
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

    /// The delay before the next attempt; `draw` is uniform in `[0, 1]`.
    pub fn next_delay(&mut self, draw: f64) -> Duration {
        let step = match self.current {
            None => self.min,
            Some(c) => (c * 2).min(self.max),
        };
        self.current = Some(step);
        step.mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
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
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.next_delay(1.0), ms(100));
        assert_eq!(b.next_delay(0.0), ms(100), "the second step is 200 ms, jittered down to half");
        assert_eq!(b.next_delay(1.0), ms(400));
        assert_eq!(b.next_delay(1.0), ms(800));
        assert_eq!(b.next_delay(1.0), ms(1000), "capped");
        assert_eq!(b.next_delay(0.5), ms(750));
        assert_eq!(b.next_delay(7.0), ms(1000), "a draw out of range is clamped");
        b.reset();
        assert_eq!(b.next_delay(0.0), ms(50));
    }

    #[test]
    fn max_below_min_means_min() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        b.next_delay(1.0);
        assert_eq!(b.next_delay(1.0), Duration::from_secs(2));
    }
}
