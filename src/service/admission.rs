//! Admission: a bounded line in front of the inference slots, entered before a request's
//! body is read or decoded.
//!
//! A request first takes a place in line ([`Admission::enter`], never waiting): the line
//! holds at most `slots + queue` requests, so the memory spent on bodies being read and
//! decoded is bounded, and a request is refused at once when the line is full or when
//! the expected wait (requests ahead of it times the recent service time, spread over the
//! slots) is longer than its remaining deadline. It then waits for a slot
//! ([`Ticket::slot`]) while its deadline allows, and holds the slot from decoding to the
//! answer. A slot given back records how long it was held, which is the service time the
//! next estimates use.
//!
//! This module knows semaphores and clocks; it knows nothing of requests, HTTP or the
//! model.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests that may wait for a slot beyond those holding one, unless configured: at a
/// millisecond or two per 100-candidate request on two slots, 32 waiting requests are
/// about 30 ms of queue, longer than an ad server's whole budget, so a longer line only
/// holds bodies in memory for requests that will miss their deadline anyway.
pub const DEFAULT_MAX_QUEUE: usize = 32;
/// Service time assumed before any request has been served: a 100-candidate request's
/// order of magnitude, so that the first estimates neither shed nor admit wildly.
const INITIAL_SERVICE_TIME: Duration = Duration::from_millis(2);
/// Weight of the newest service time in the moving average (1/8): smooths one slow
/// request away while following a change of load within tens of requests.
const SERVICE_TIME_WEIGHT: f64 = 0.125;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the admission queue is full")]
    QueueFull,
    #[error("the expected wait for a slot exceeds the request's deadline")]
    WaitTooLong,
    #[error("the request's deadline passed while it waited for a slot")]
    DeadlineExceeded,
}

/// The line and its slots; cheap to clone, every clone sharing them.
#[derive(Debug, Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Places in line: slots plus queue. Held by a [`Ticket`] and then by its [`Permit`].
    line: Arc<Semaphore>,
    /// Inference slots: held by a [`Permit`] from decoding to the answer.
    slots: Arc<Semaphore>,
    slot_count: usize,
    line_length: usize,
    /// Moving average of how long a slot is held, in nanoseconds (an `f64`'s bits).
    service_time: AtomicU64,
}

/// A place in line; the request has not got a slot yet.
#[derive(Debug)]
pub struct Ticket {
    place: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

/// An inference slot (and the place in line that led to it), given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _place: Option<OwnedSemaphorePermit>,
    _slot: OwnedSemaphorePermit,
    since: Instant,
    shared: Arc<Shared>,
}

impl Admission {
    /// `slots` inferences at once and up to `queue` requests waiting for one. Zero slots
    /// would refuse every request; the service refuses that configuration at start.
    pub fn new(slots: usize, queue: usize) -> Admission {
        let line_length = slots.saturating_add(queue).min(Semaphore::MAX_PERMITS);
        Admission {
            shared: Arc::new(Shared {
                line: Arc::new(Semaphore::new(line_length)),
                slots: Arc::new(Semaphore::new(slots.min(Semaphore::MAX_PERMITS))),
                slot_count: slots,
                line_length,
                service_time: AtomicU64::new(INITIAL_SERVICE_TIME.as_secs_f64().to_bits()),
            }),
        }
    }

    /// A place in line for a request due by `deadline`, without waiting: refused when the
    /// line is full, when the deadline has passed, or when the expected wait for a slot
    /// exceeds the time left.
    pub fn enter(&self, deadline: Instant) -> Result<Ticket, Refusal> {
        let place = Arc::clone(&self.shared.line)
            .try_acquire_owned()
            .map_err(|_| Refusal::QueueFull)?;
        let now = Instant::now();
        if now >= deadline {
            return Err(Refusal::DeadlineExceeded);
        }
        if now + self.shared.expected_wait() > deadline {
            return Err(Refusal::WaitTooLong);
        }
        Ok(Ticket {
            place,
            shared: Arc::clone(&self.shared),
        })
    }

    /// A slot at once, skipping the line; `None` when every slot is taken. For callers
    /// that must not wait (tests holding a slot).
    pub fn try_admit(&self) -> Option<Permit> {
        let slot = Arc::clone(&self.shared.slots).try_acquire_owned().ok()?;
        Some(Permit {
            _place: None,
            _slot: slot,
            since: Instant::now(),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Requests in line now, waiting or holding a slot.
    pub fn in_line(&self) -> usize {
        self.shared.line_length - self.shared.line.available_permits()
    }

    /// The current estimate of how long a slot is held.
    pub fn service_time(&self) -> Duration {
        self.shared.service_time()
    }
}

impl Shared {
    fn service_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from_bits(self.service_time.load(Ordering::Relaxed)))
    }

    /// Requests ahead of a new one that are not holding a slot, times the service time,
    /// spread over the slots.
    fn expected_wait(&self) -> Duration {
        let in_line = self.line_length - self.line.available_permits();
        let holding = self.slot_count - self.slots.available_permits().min(self.slot_count);
        let waiting = in_line.saturating_sub(holding).saturating_sub(1);
        let free_now = self.slots.available_permits() > 0;
        if free_now && waiting == 0 {
            return Duration::ZERO;
        }
        let rounds = (waiting / self.slot_count.max(1)) as u32 + 1;
        self.service_time().saturating_mul(rounds)
    }

    fn record(&self, held: Duration) {
        let held = held.as_secs_f64();
        // A lost update under contention only skips one sample of an average.
        let old = f64::from_bits(self.service_time.load(Ordering::Relaxed));
        let new = old + SERVICE_TIME_WEIGHT * (held - old);
        self.service_time.store(new.to_bits(), Ordering::Relaxed);
    }
}

impl Ticket {
    /// Waits for a slot until `deadline`.
    pub async fn slot(self, deadline: Instant) -> Result<Permit, Refusal> {
        let Ticket { place, shared } = self;
        let waiting = Arc::clone(&shared.slots).acquire_owned();
        let slot = match tokio::time::timeout_at(deadline.into(), waiting).await {
            Ok(Ok(slot)) => slot,
            // The semaphore is never closed; a closed one can only mean shutting down.
            Ok(Err(_)) | Err(_) => return Err(Refusal::DeadlineExceeded),
        };
        Ok(Permit {
            _place: Some(place),
            _slot: slot,
            since: Instant::now(),
            shared,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.record(self.since.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// The line holds slots + queue requests; the next is refused at once as queue full.
    #[tokio::test]
    async fn the_line_is_bounded() {
        let admission = Admission::new(1, 2);
        let first = admission.enter(soon()).unwrap();
        let _held = first.slot(soon()).await.unwrap();
        let _second = admission.enter(soon()).unwrap();
        let _third = admission.enter(soon()).unwrap();
        assert_eq!(admission.enter(soon()).unwrap_err(), Refusal::QueueFull);
        assert_eq!(admission.in_line(), 3);
    }

    /// A request whose deadline is shorter than the expected wait is refused at once; one
    /// with time to wait gets the slot when it frees.
    #[tokio::test]
    async fn expected_wait_is_weighed_against_the_deadline() {
        let admission = Admission::new(1, 8);
        let held = admission.enter(soon()).unwrap().slot(soon()).await.unwrap();
        // Nobody waits yet, but the slot is taken: one service time (2 ms) ahead.
        let hurried = Instant::now() + Duration::from_micros(100);
        assert_eq!(admission.enter(hurried).unwrap_err(), Refusal::WaitTooLong);
        let patient = admission.enter(soon()).unwrap();
        let waiter = tokio::spawn(async move { patient.slot(soon()).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        waiter.await.unwrap().unwrap();
        assert!(admission.service_time() > INITIAL_SERVICE_TIME);
    }

    /// Waiting past the deadline gives the place in line back.
    #[tokio::test]
    async fn waiting_stops_at_the_deadline() {
        let admission = Admission::new(1, 1);
        let _held = admission.enter(soon()).unwrap().slot(soon()).await.unwrap();
        let ticket = admission.enter(soon()).unwrap();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert_eq!(
            ticket.slot(deadline).await.unwrap_err(),
            Refusal::DeadlineExceeded
        );
        assert_eq!(admission.in_line(), 1);
    }
}
