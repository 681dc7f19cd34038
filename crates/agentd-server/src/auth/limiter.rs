//! Repeated authentication failures from one address are refused for a
//! while (429 `AUTH_RATE_LIMITED`), which makes guessing secrets slow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `[auth]` settings: at most `max_failures` in `window`.
#[derive(Clone, Copy, Debug)]
pub struct FailureLimit {
    pub max_failures: u32,
    pub window: Duration,
}

impl Default for FailureLimit {
    fn default() -> Self {
        FailureLimit {
            max_failures: 20,
            window: Duration::from_secs(60),
        }
    }
}

/// Addresses tracked before expired windows are swept, bounding memory
/// under a spray of addresses.
const SWEEP_AT: usize = 10_000;

pub(crate) struct FailureLimiter {
    limit: FailureLimit,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

struct Window {
    started: Instant,
    failures: u32,
}

impl FailureLimiter {
    pub fn new(limit: FailureLimit) -> Self {
        FailureLimiter {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `ip` is over its limit.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        match windows.get(&ip) {
            Some(w) if w.failures >= self.limit.max_failures => {
                let ends = w.started + self.limit.window;
                match ends.checked_duration_since(now) {
                    Some(left) if !left.is_zero() => Err(left),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let window = self.limit.window;
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, w| now.duration_since(w.started) < window);
        }
        let w = windows.entry(ip).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= window {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_until_the_window_ends() {
        let limiter = FailureLimiter::new(FailureLimit {
            max_failures: 3,
            window: Duration::from_secs(60),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(a, t0).is_ok());
            limiter.record_failure(a, t0);
        }
        let retry = limiter.check(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(retry, Duration::from_secs(50));
        assert!(limiter.check(b, t0).is_ok());
        assert!(limiter.check(a, t0 + Duration::from_secs(61)).is_ok());
        limiter.record_failure(a, t0 + Duration::from_secs(61));
        assert!(limiter.check(a, t0 + Duration::from_secs(62)).is_ok());
    }
}
