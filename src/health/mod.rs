//! Active health checks. `Counter` is the pure threshold state machine;
//! `probe` is the I/O shell that sends `GET {path}` to an endpoint and
//! feeds the result in. This module decides nothing about routing: it only
//! records state on the endpoint, which `upstream/` reads when picking.

pub mod probe;

/// What the proxy believes about an endpoint's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Never checked: gets no traffic.
    Unknown,
    Healthy,
    Unhealthy,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
        }
    }
}

/// Consecutive pass/fail counting with thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub state: State,
    /// Consecutive passes (reset by a failure).
    pub passes: u32,
    /// Consecutive failures (reset by a pass).
    pub failures: u32,
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            state: State::Unknown,
            passes: 0,
            failures: 0,
        }
    }
}

impl Counter {
    /// Records one result and returns the state after it.
    ///
    /// A never-checked endpoint is promoted by one pass and demoted by one
    /// failure (it was never healthy, so there is nothing to be patient
    /// about); after that `healthy_threshold` consecutive passes turn it
    /// healthy and `unhealthy_threshold` consecutive failures unhealthy.
    pub fn record(&mut self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> State {
        if ok {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
        }
        self.state = match (self.state, ok) {
            (State::Unknown, true) => State::Healthy,
            (State::Unknown, false) => State::Unhealthy,
            (State::Unhealthy, true) if self.passes >= healthy_threshold => State::Healthy,
            (State::Healthy, false) if self.failures >= unhealthy_threshold => State::Unhealthy,
            (state, _) => state,
        };
        self.state
    }

    /// A failure seen on live traffic (connect refused, reset): counts like a
    /// failed probe, so a dead endpoint is ejected before the next probe.
    pub fn record_passive_failure(&mut self, unhealthy_threshold: u32) -> State {
        self.record(false, u32::MAX, unhealthy_threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_promotes_a_never_checked_endpoint() {
        let mut c = Counter::default();
        assert_eq!(c.record(true, 3, 3), State::Healthy);
    }

    #[test]
    fn one_failure_marks_a_never_checked_endpoint_unhealthy() {
        let mut c = Counter::default();
        assert_eq!(c.record(false, 3, 3), State::Unhealthy);
    }

    #[test]
    fn healthy_turns_unhealthy_only_after_threshold_consecutive_failures() {
        let mut c = Counter::default();
        c.record(true, 2, 3);
        assert_eq!(c.record(false, 2, 3), State::Healthy);
        assert_eq!(c.record(false, 2, 3), State::Healthy);
        assert_eq!(c.record(false, 2, 3), State::Unhealthy);
    }

    #[test]
    fn a_pass_resets_the_failure_run() {
        let mut c = Counter::default();
        c.record(true, 2, 2);
        c.record(false, 2, 2);
        c.record(true, 2, 2);
        assert_eq!(c.record(false, 2, 2), State::Healthy);
        assert_eq!(c.record(false, 2, 2), State::Unhealthy);
    }

    #[test]
    fn unhealthy_recovers_after_threshold_consecutive_passes() {
        let mut c = Counter::default();
        c.record(false, 2, 2);
        assert_eq!(c.record(true, 2, 2), State::Unhealthy);
        assert_eq!(c.record(true, 2, 2), State::Healthy);
    }

    #[test]
    fn passive_failure_counts_toward_the_unhealthy_threshold() {
        let mut c = Counter::default();
        c.record(true, 1, 2);
        assert_eq!(c.record_passive_failure(2), State::Healthy);
        assert_eq!(c.record_passive_failure(2), State::Unhealthy);
    }
}
