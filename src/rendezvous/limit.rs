//! A token bucket over the caller's clock, for the relay's byte-rate limits.
//! Pure code: time is a parameter.

use std::time::Duration;

/// Bytes per second with a burst allowance; a rate of 0 means unlimited.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl Bucket {
    /// A full bucket of `rate` bytes per second holding at most one second's worth
    /// (and at least 64 KiB, so a single ordinary frame always fits).
    pub(crate) fn new(rate: u64, now: Duration) -> Bucket {
        let burst = (rate as f64).max(64.0 * 1024.0);
        Bucket {
            rate: rate as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// How long the caller must wait at `now` before `bytes` may pass
    /// (zero: at once). Nothing is taken yet.
    pub(crate) fn wait_for(&mut self, bytes: usize, now: Duration) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        self.refill(now);
        let short = bytes as f64 - self.tokens;
        if short <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(short / self.rate)
        }
    }

    /// Take `bytes` (the balance may go below zero: the debt is waited off).
    pub(crate) fn take(&mut self, bytes: usize, now: Duration) {
        if self.rate <= 0.0 {
            return;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn burst_then_rate() {
        let mut b = Bucket::new(100_000, s(0.0));
        assert_eq!(b.wait_for(100_000, s(0.0)), Duration::ZERO);
        b.take(100_000, s(0.0));
        // Empty: 50 kB need half a second.
        let w = b.wait_for(50_000, s(0.0));
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-9, "{w:?}");
        // After a quarter second, a quarter second more.
        let w = b.wait_for(50_000, s(0.25));
        assert!((w.as_secs_f64() - 0.25).abs() < 1e-9, "{w:?}");
        assert_eq!(b.wait_for(50_000, s(0.5)), Duration::ZERO);
    }

    #[test]
    fn never_holds_more_than_the_burst() {
        let mut b = Bucket::new(100_000, s(0.0));
        let w = b.wait_for(150_000, s(100.0));
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn small_rates_still_pass_a_frame() {
        let mut b = Bucket::new(10, s(0.0));
        assert_eq!(b.wait_for(60 * 1024, s(0.0)), Duration::ZERO);
    }

    #[test]
    fn zero_is_unlimited() {
        let mut b = Bucket::new(0, s(0.0));
        b.take(1 << 30, s(0.0));
        assert_eq!(b.wait_for(1 << 30, s(0.0)), Duration::ZERO);
    }

    #[test]
    fn a_clock_going_back_is_ignored() {
        let mut b = Bucket::new(1000, s(10.0));
        b.take(65 * 1024, s(10.0));
        let w1 = b.wait_for(1000, s(9.0));
        let w2 = b.wait_for(1000, s(10.0));
        assert_eq!(w1, w2);
    }
}
