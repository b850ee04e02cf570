//! A circuit breaker for a networked store. After a run of failed lookups it opens: calls
//! fail at once, without touching the network, for a cool-down; then exactly one call goes
//! through as a probe, and its outcome closes the breaker or opens it again. A lookup cut
//! off by its deadline counts as a failure, so a store that answers too slowly is treated
//! like one that does not answer.
//!
//! Hand-written rather than taken from a crate: `failsafe`, the maintained Rust breaker,
//! lets every call through while half-open (a burst against a store that is coming back)
//! and cannot see a call abandoned by a timeout outside it; both matter here, and the
//! whole state machine is a few dozen lines.
//!
//! This module knows nothing of Redis, records or HTTP.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures in a row that open the breaker. One failure is noise (a dropped connection
/// that the client re-dials); five in a row, at hundreds of requests a second, is a store
/// that is down, and every further call would only add a timeout's worth of latency.
pub const DEFAULT_FAILURES_TO_OPEN: u32 = 5;
/// How long an open breaker refuses calls before it lets one probe through. A restarted
/// Redis answers within about a second; probing twice a second finds it back quickly and
/// costs one connection attempt per half second while it is down.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures_to_open: u32,
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failures_to_open: DEFAULT_FAILURES_TO_OPEN,
            cool_down: DEFAULT_COOL_DOWN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` is the current run of failures.
    Closed { failures: u32 },
    /// Calls are refused until `until`.
    Open { until: Instant },
    /// One probe is in flight; every other call is refused until it settles.
    Probing,
}

/// The breaker's state, shared by every lookup of one store.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    /// Held for a few instructions per transition, never across an `.await`: a plain mutex
    /// is cheaper than an async one and cannot deadlock here.
    state: Mutex<State>,
}

/// One admitted call. Report its outcome with [`Attempt::succeeded`] or
/// [`Attempt::failed`]; dropped unreported (its future cancelled by a deadline), it counts
/// as a failure.
#[derive(Debug)]
#[must_use = "an attempt dropped unreported counts as a failure"]
pub struct Attempt<'a> {
    breaker: &'a Breaker,
    settled: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// An attempt when calls may go through now; `None` while the breaker is open or a
    /// probe is in flight.
    pub fn admit(&self) -> Option<Attempt<'_>> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<Attempt<'_>> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => {}
            State::Open { until } if now >= until => *state = State::Probing,
            State::Open { .. } | State::Probing => return None,
        }
        Some(Attempt {
            breaker: self,
            settled: false,
        })
    }

    /// Whether calls are refused now (open, or waiting on a probe).
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    fn settle(&self, success: bool, now: Instant) {
        let mut state = self.lock();
        *state = match (*state, success) {
            (State::Probing, true) => {
                tracing::info!("circuit breaker closed: the probe succeeded");
                State::Closed { failures: 0 }
            }
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.config.failures_to_open => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            // The run reached the threshold, or the probe failed: open (again).
            (State::Closed { .. } | State::Probing, false) => {
                if matches!(*state, State::Closed { .. }) {
                    tracing::warn!(
                        cool_down = ?self.config.cool_down,
                        "circuit breaker open: calls refused, probing once per cool-down"
                    );
                }
                State::Open {
                    until: now + self.config.cool_down,
                }
            }
            // A call admitted before the breaker opened, finishing late: already open.
            (open @ State::Open { .. }, false) => open,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves a valid state behind; keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Attempt<'_> {
    pub fn succeeded(self) {
        self.finish(true, Instant::now());
    }

    pub fn failed(self) {
        self.finish(false, Instant::now());
    }

    fn finish(mut self, success: bool, now: Instant) {
        self.settled = true;
        self.breaker.settle(success, now);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(false, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures_to_open: 3,
            cool_down: Duration::from_millis(100),
        })
    }

    /// A run of failures opens the breaker; a success in between resets the run.
    #[test]
    fn opens_after_a_run_of_failures_only() {
        let breaker = breaker();
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().succeeded();
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().failed();
        assert!(!breaker.is_open());
        breaker.admit().unwrap().failed();
        assert!(breaker.is_open());
        assert!(breaker.admit().is_none());
    }

    /// After the cool-down exactly one probe goes through; its success closes the breaker,
    /// its failure opens it for another cool-down.
    #[test]
    fn one_probe_after_the_cool_down_decides() {
        let breaker = breaker();
        for _ in 0..3 {
            breaker.admit().unwrap().failed();
        }
        let later = Instant::now() + Duration::from_millis(150);
        let probe = breaker.admit_at(later).expect("probe after the cool-down");
        assert!(
            breaker.admit_at(later).is_none(),
            "only one probe at a time"
        );
        probe.finish(false, later);
        assert!(
            breaker.admit_at(later).is_none(),
            "open again after a failed probe"
        );
        let much_later = later + Duration::from_millis(250);
        breaker.admit_at(much_later).unwrap().succeeded();
        assert!(!breaker.is_open());
        assert!(breaker.admit().is_some());
    }

    /// An attempt dropped without an outcome (its lookup timed out) counts as a failure.
    #[test]
    fn an_abandoned_attempt_is_a_failure() {
        let breaker = breaker();
        for _ in 0..3 {
            drop(breaker.admit().unwrap());
        }
        assert!(breaker.is_open());
    }
}
