//! `--rate-limit`: a token bucket that holds the average source read rate.
//!
//! The capture loop calls [`RateLimiter::acquire`] before each read. Tokens
//! accrue at `rate` bytes per second up to a burst of one second's worth (at
//! least one chunk), so the average over any window longer than a few reads
//! stays within a percent or two of the target while short stalls (a slow
//! medium) are not "made up" by bursting far above it. The pacing is computed
//! by [`Bucket`], a pure function of time, so it is tested without sleeping.

use std::time::{Duration, Instant};

/// Token bucket state, independent of the clock.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

impl Bucket {
    /// A bucket refilled at `rate` bytes/s holding at most `burst` bytes; starts empty
    /// so the first second is not a free burst.
    pub fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            rate,
            burst: burst.max(1.0),
            tokens: 0.0,
            last: 0.0,
        }
    }

    /// Take `bytes` at time `now` (seconds since start); returns how long the
    /// caller must wait before doing the read.
    pub fn take(&mut self, bytes: u64, now: f64) -> f64 {
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last) * self.rate).min(self.burst);
            self.last = now;
        }
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / self.rate
        }
    }
}

/// A [`Bucket`] on the wall clock.
pub struct RateLimiter {
    bucket: Bucket,
    start: Instant,
}

impl RateLimiter {
    /// Limit to `rate` bytes/s; `chunk` is the usual read size (the burst is
    /// at least one chunk so a single read never waits forever).
    pub fn new(rate: f64, chunk: u64) -> Self {
        RateLimiter {
            bucket: Bucket::new(rate, rate.max(chunk as f64)),
            start: Instant::now(),
        }
    }

    /// Block until `bytes` may be read, or until a stop is requested (Ctrl-C): at a low rate
    /// one chunk's wait is minutes (1 MiB at 2 KiB/s: 512 s), and a stop must not wait them
    /// out; the caller then stops at its next checkpoint.
    pub fn acquire(&mut self, bytes: u64) {
        let now = self.start.elapsed().as_secs_f64();
        let wait = self.bucket.take(bytes, now);
        let until = Instant::now() + Duration::from_secs_f64(wait.max(0.0));
        while !crate::signals::stop_requested() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulate a reader that is infinitely fast apart from the waits the
    /// bucket imposes; the achieved average must be within 5% of the target.
    fn simulate(rate: f64, chunk: u64, total: u64, work_per_read: f64) -> f64 {
        let mut b = Bucket::new(rate, rate.max(chunk as f64));
        let mut now = 0.0;
        let mut done = 0;
        while done < total {
            now += b.take(chunk, now);
            now += work_per_read;
            done += chunk;
        }
        done as f64 / now
    }

    #[test]
    fn average_rate_within_five_percent() {
        for &(rate, chunk) in &[
            (50.0 * 1048576.0, 1u64 << 20),
            (1e6, 65536),
            (400e6 / 8.0, 4 << 20),
        ] {
            let achieved = simulate(rate, chunk, (rate * 20.0) as u64, 0.0);
            let err = (achieved - rate).abs() / rate;
            assert!(err < 0.05, "rate {rate}: achieved {achieved} ({err:.3})");
        }
    }

    #[test]
    fn slow_reader_is_not_limited_further() {
        // A reader that can only do half the limit is never made to wait.
        let mut b = Bucket::new(1e6, 1e6);
        let mut now = 0.0;
        let mut waited = 0.0;
        for _ in 0..100 {
            now += 0.1; // 100 KB every 0.1 s = 1 MB/s... at exactly the limit
            now += 0.1; // plus as much again: half the limit
            waited += b.take(100_000, now);
        }
        assert_eq!(waited, 0.0);
    }

    #[test]
    fn first_read_waits() {
        let mut b = Bucket::new(1000.0, 1000.0);
        assert!((b.take(500, 0.0) - 0.5).abs() < 1e-9);
    }
}
