//! The retry budget: retries may add at most 20% to the requests of the
//! current second, plus a floor of 10 per second so that a quiet proxy can
//! still hide one dead endpoint. It stops retry storms when a whole
//! upstream is failing. Lock-free counters over one-second windows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const FLOOR_PER_SECOND: u64 = 10;
const PERCENT: u64 = 20;

#[derive(Debug)]
pub struct RetryBudget {
    epoch: Instant,
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }
}

impl RetryBudget {
    fn roll(&self) {
        let now = self.epoch.elapsed().as_secs();
        let seen = self.window.load(Ordering::Relaxed);
        if now != seen
            && self
                .window
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts one request (the deposit retries draw on).
    pub fn record_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is room.
    pub fn try_retry(&self) -> bool {
        self.roll();
        let allowed = FLOOR_PER_SECOND + self.requests.load(Ordering::Relaxed) * PERCENT / 100;
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_allows_a_few_retries_without_traffic() {
        let b = RetryBudget::default();
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted as u64, FLOOR_PER_SECOND);
    }

    #[test]
    fn budget_grows_with_requests() {
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.record_request();
        }
        let granted = (0..1000).filter(|_| b.try_retry()).count() as u64;
        assert_eq!(granted, FLOOR_PER_SECOND + 200);
    }
}
