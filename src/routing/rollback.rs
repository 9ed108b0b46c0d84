//! A ramp's rollback guard: for each split member, the failed share of its
//! attempts over a sliding window (ten buckets of a tenth of the window
//! each). When a member whose weight the ramp raises has at least
//! `min_requests` attempts in the window and a failed share above
//! `max_error_rate`, the ramp is rolled back, once: the route goes back to
//! the weights the ramp started from. Pure state: the request path records
//! attempts and logs and counts what `record` returns.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Instant, SystemTime};

use crate::config::RollbackSpec;

const BUCKETS: u64 = 10;

#[derive(Debug)]
pub struct Guard {
    pub spec: RollbackSpec,
    /// Members (upstream names) whose share the ramp raises.
    raising: Vec<String>,
    origin: Instant,
    windows: Mutex<Vec<(String, Window)>>,
    rolled: OnceLock<RolledBack>,
}

/// What a rollback did, for the log, the metric and `/config`.
#[derive(Debug, Clone)]
pub struct RolledBack {
    pub at: SystemTime,
    /// The member that failed too often, and its figures in the window.
    pub member: String,
    pub attempts: u32,
    pub failures: u32,
    /// The weights restored, by upstream name.
    pub weights: Vec<(String, f64)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    index: u64,
    attempts: u32,
    failures: u32,
}

#[derive(Debug, Default)]
struct Window {
    buckets: [Bucket; BUCKETS as usize],
}

impl Window {
    fn record(&mut self, index: u64, failed: bool) {
        let b = &mut self.buckets[(index % BUCKETS) as usize];
        if b.index != index {
            *b = Bucket {
                index,
                attempts: 0,
                failures: 0,
            };
        }
        b.attempts += 1;
        b.failures += u32::from(failed);
    }

    /// Attempts and failures in the buckets of the window ending at `index`.
    fn totals(&self, index: u64) -> (u32, u32) {
        self.buckets
            .iter()
            .filter(|b| b.index <= index && index - b.index < BUCKETS)
            .fold((0, 0), |(a, f), b| (a + b.attempts, f + b.failures))
    }
}

impl Guard {
    /// A guard for a ramp that raises the members `raising`.
    pub fn new(spec: RollbackSpec, raising: Vec<String>) -> Guard {
        Guard {
            spec,
            raising,
            origin: Instant::now(),
            windows: Mutex::new(Vec::new()),
            rolled: OnceLock::new(),
        }
    }

    pub fn rolled_back(&self) -> Option<&RolledBack> {
        self.rolled.get()
    }

    /// Records one attempt on `member`. Returns the rollback when this
    /// attempt caused it (`restore` gives the weights it goes back to).
    pub fn record(
        &self,
        member: &str,
        failed: bool,
        now: Instant,
        restore: impl FnOnce() -> Vec<(String, f64)>,
    ) -> Option<RolledBack> {
        // Only the members the ramp raises are watched: the others' attempts
        // (most of the traffic early in a ramp) take no lock.
        if self.rolled.get().is_some() || !self.raising.iter().any(|m| m == member) {
            return None;
        }
        let bucket = (self.spec.window.as_nanos() / u128::from(BUCKETS)).max(1);
        let index = u64::try_from(now.saturating_duration_since(self.origin).as_nanos() / bucket)
            .unwrap_or(u64::MAX);
        let (attempts, failures) = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let at = match windows.iter().position(|(m, _)| m == member) {
                Some(i) => i,
                None => {
                    windows.push((member.to_owned(), Window::default()));
                    windows.len() - 1
                }
            };
            let window = &mut windows[at].1;
            window.record(index, failed);
            window.totals(index)
        };
        let over = attempts >= self.spec.min_requests
            && f64::from(failures) > self.spec.max_error_rate * f64::from(attempts);
        if !over {
            return None;
        }
        let rolled = RolledBack {
            at: SystemTime::now(),
            member: member.to_owned(),
            attempts,
            failures,
            weights: restore(),
        };
        self.rolled.set(rolled.clone()).ok().map(|()| rolled)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn guard() -> Guard {
        let spec = RollbackSpec {
            max_error_rate: 0.05,
            min_requests: 20,
            window: Duration::from_secs(10),
        };
        Guard::new(spec, vec!["green".to_owned()])
    }

    fn restore() -> Vec<(String, f64)> {
        vec![("blue".to_owned(), 1.0), ("green".to_owned(), 0.0)]
    }

    #[test]
    fn a_raised_member_that_fails_too_often_rolls_the_ramp_back_once() {
        let g = guard();
        let now = Instant::now();
        // 19 attempts, 5 failed: under min_requests.
        for i in 0..19 {
            assert!(g.record("green", i % 4 == 0, now, restore).is_none());
        }
        let rolled = g
            .record("green", false, now, restore)
            .expect("rolled back at 20");
        assert_eq!((rolled.attempts, rolled.failures), (20, 5));
        assert_eq!(rolled.weights, restore());
        assert!(g.record("green", true, now, restore).is_none(), "only once");
        assert!(g.rolled_back().is_some());
    }

    #[test]
    fn members_the_ramp_lowers_and_healthy_shares_do_not() {
        let g = guard();
        let now = Instant::now();
        for _ in 0..100 {
            assert!(g.record("blue", true, now, restore).is_none());
        }
        for i in 0..100 {
            assert!(
                g.record("green", i == 0, now, restore).is_none(),
                "1 % failed"
            );
        }
    }

    #[test]
    fn old_failures_leave_the_window() {
        let g = guard();
        let start = Instant::now();
        for _ in 0..10 {
            g.record("green", true, start, restore);
        }
        // Eleven seconds later the ten failures are out of the window.
        let later = start + Duration::from_secs(11);
        for _ in 0..30 {
            assert!(g.record("green", false, later, restore).is_none());
        }
    }
}
