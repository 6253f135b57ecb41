//! Failed authentications per client address, in a sliding window. Past the limit a request
//! is refused before its token is checked, so guessing costs the guesser, not the daemon.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const DEFAULT_MAX_FAILURES: usize = 10;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

pub struct FailedAuthLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Default for FailedAuthLimiter {
    fn default() -> Self {
        FailedAuthLimiter::new(DEFAULT_MAX_FAILURES, DEFAULT_WINDOW)
    }
}

impl FailedAuthLimiter {
    pub fn new(max_failures: usize, window: Duration) -> FailedAuthLimiter {
        FailedAuthLimiter {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn recent(
        map: &mut HashMap<IpAddr, VecDeque<Instant>>,
        addr: IpAddr,
        now: Instant,
        window: Duration,
    ) -> &mut VecDeque<Instant> {
        let times = map.entry(addr).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            times.pop_front();
        }
        times
    }

    /// Whether `addr` may try to authenticate now (false once it failed the limit's worth).
    pub fn allowed(&self, addr: IpAddr, now: Instant) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Self::recent(&mut map, addr, now, self.window).len() < self.max_failures
    }

    /// One failed authentication from `addr`.
    pub fn record_failure(&self, addr: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Self::recent(&mut map, addr, now, self.window).push_back(now);
        // Forget addresses whose failures are all old, so the map cannot grow without bound.
        if map.len() > 10_000 {
            let window = self.window;
            map.retain(|_, t| t.back().is_some_and(|l| now.duration_since(*l) < window));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_failure_in_a_minute_is_refused_and_the_window_slides() {
        let limiter = FailedAuthLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(limiter.allowed(a, t0), "attempt {}", i + 1);
            limiter.record_failure(a, t0 + Duration::from_secs(i));
        }
        assert!(!limiter.allowed(a, t0 + Duration::from_secs(10)));
        // Another address is not affected.
        assert!(limiter.allowed(b, t0 + Duration::from_secs(10)));
        // A minute after the first failure, one slot is free again.
        assert!(!limiter.allowed(a, t0 + Duration::from_millis(59_999)));
        assert!(limiter.allowed(a, t0 + Duration::from_secs(60)));
    }
}
