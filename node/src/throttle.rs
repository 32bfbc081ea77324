//! A client connection's rate of messages and bytes, as token buckets
//! (one second of burst). Past either, the connection's task stops reading
//! until the bucket refills: the client's own socket backs up (TCP or QUIC
//! flow control), so nothing is buffered without bound and nothing is
//! dropped — backpressure. Links between nodes are not throttled.

use std::time::{Duration, Instant};

/// Per-connection rates (0: no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    pub messages_per_second: u32,
    pub bytes_per_second: u64,
}

impl Default for Rates {
    fn default() -> Self {
        Self { messages_per_second: DEFAULT_MESSAGES_PER_SECOND, bytes_per_second: DEFAULT_BYTES_PER_SECOND }
    }
}

/// Default of [`Rates::messages_per_second`]: far above typing (a message
/// per keystroke and its acknowledgements).
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 1000;
/// Default of [`Rates::bytes_per_second`] (a 100 MB first upload takes
/// about three seconds).
pub const DEFAULT_BYTES_PER_SECOND: u64 = 32 << 20;

/// The buckets of one connection.
#[derive(Debug)]
pub struct Throttle {
    rates: Rates,
    messages: f64,
    bytes: f64,
    last: Instant,
}

impl Throttle {
    /// `None` when `rates` limit nothing.
    pub fn new(rates: Rates) -> Option<Self> {
        (rates.messages_per_second > 0 || rates.bytes_per_second > 0).then(|| Self {
            rates,
            messages: f64::from(rates.messages_per_second),
            bytes: rates.bytes_per_second as f64,
            last: Instant::now(),
        })
    }

    /// Counts a message of `len` bytes read now; how long to stop reading
    /// before the next one (`None`: go on).
    pub fn take(&mut self, len: usize) -> Option<Duration> {
        self.take_at(Instant::now(), len)
    }

    fn take_at(&mut self, now: Instant, len: usize) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let wait = |tokens: &mut f64, rate: f64, cost: f64| {
            if rate <= 0.0 {
                return 0.0;
            }
            *tokens = (*tokens + elapsed * rate).min(rate) - cost;
            if *tokens < 0.0 { -*tokens / rate } else { 0.0 }
        };
        let m = wait(&mut self.messages, f64::from(self.rates.messages_per_second), 1.0);
        let b = wait(&mut self.bytes, self.rates.bytes_per_second as f64, len as f64);
        let secs = m.max(b);
        (secs > 0.0).then(|| Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let rates = Rates { messages_per_second: 10, bytes_per_second: 0 };
        let mut t = Throttle::new(rates).unwrap();
        let start = t.last;
        for _ in 0..10 {
            assert_eq!(t.take_at(start, 1), None, "the burst");
        }
        let wait = t.take_at(start, 1).expect("past the burst");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // A second later the bucket is full again (not fuller).
        let later = start + Duration::from_secs(5);
        for _ in 0..10 {
            assert_eq!(t.take_at(later, 1), None);
        }
        assert!(t.take_at(later, 1).is_some());
    }

    #[test]
    fn bytes_are_limited_and_a_large_message_is_debt() {
        let rates = Rates { messages_per_second: 0, bytes_per_second: 1000 };
        let mut t = Throttle::new(rates).unwrap();
        let start = t.last;
        let wait = t.take_at(start, 3000).expect("3000 bytes at 1000/s");
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-9, "{wait:?}");
        assert!(Throttle::new(Rates { messages_per_second: 0, bytes_per_second: 0 }).is_none());
    }
}
