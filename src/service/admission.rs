//! Admission: a bounded line in front of the inference slots, entered before a request's
//! body is read or decoded.
//!
//! A request first takes a place in line ([`Admission::enter`], never waiting): the
//! line holds at most `slots + queue` requests, so the memory spent on bodies being
//! read and decoded is bounded, and a request is refused at once when the line is full
//! or when it would wait and could not finish in time: the expected wait (requests
//! ahead of it times the recent service time, spread over the slots) plus its own
//! service time is longer than its remaining deadline. A request that finds a slot free
//! and nobody waiting is admitted whatever the estimate: it starts at once, and only
//! requests that run can correct an estimate a slow spell left too high. It then waits
//! for a slot ([`Ticket::slot`]) only until the latest start that can still finish by
//! the deadline (the deadline less one service time), and holds the slot from decoding
//! to the answer. A request that cannot start in time is refused as
//! [`Refusal::WaitTooLong`] (the service answers 503, the excess of an overload), not
//! left to run into its deadline (504). A slot given back records how long it was held,
//! which is the service time the next estimates use.
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
    /// Moving average of how long a slot is held, in seconds (an `f64`'s bits).
    service_time: AtomicU64,
    /// The clock every decision reads: `Instant::now` but in tests, which run the line
    /// on a clock they advance themselves.
    clock: fn() -> Instant,
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
        Admission::with_clock(slots, queue, Instant::now)
    }

    /// [`Admission::new`] reading `clock` for every decision and service time.
    fn with_clock(slots: usize, queue: usize, clock: fn() -> Instant) -> Admission {
        let line_length = slots.saturating_add(queue).min(Semaphore::MAX_PERMITS);
        Admission {
            shared: Arc::new(Shared {
                line: Arc::new(Semaphore::new(line_length)),
                slots: Arc::new(Semaphore::new(slots.min(Semaphore::MAX_PERMITS))),
                slot_count: slots,
                line_length,
                service_time: AtomicU64::new(INITIAL_SERVICE_TIME.as_secs_f64().to_bits()),
                clock,
            }),
        }
    }

    /// A place in line for a request due by `deadline`, without waiting: refused when the
    /// line is full, when the deadline has passed, or when it would wait and the expected
    /// wait for a slot plus the request's own service time exceeds the time left.
    pub fn enter(&self, deadline: Instant) -> Result<Ticket, Refusal> {
        let place = Arc::clone(&self.shared.line)
            .try_acquire_owned()
            .map_err(|_| Refusal::QueueFull)?;
        let now = (self.shared.clock)();
        if now >= deadline {
            return Err(Refusal::DeadlineExceeded);
        }
        // An idle line (a slot free, nobody waiting) admits whatever the estimate says:
        // the request starts at once, and only a request that runs can correct an
        // estimate a slow spell left too high. Refused on the estimate alone, a server
        // whose clients all send deadlines below it would never serve again (a fresh
        // server under 6 ms deadlines served 5 of 358,915 requests so).
        let wait = self.shared.expected_wait();
        if !wait.is_zero() && now + wait.saturating_add(self.shared.service_time()) > deadline {
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
            since: (self.shared.clock)(),
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
        expected_wait(waiting, free_now, self.slot_count, self.service_time())
    }

    /// The latest instant at which a request due by `deadline` can take a slot and still
    /// finish: one service time before the deadline.
    fn latest_start(&self, deadline: Instant) -> Instant {
        deadline
            .checked_sub(self.service_time())
            .unwrap_or(deadline)
    }

    fn record(&self, held: Duration) {
        let held = held.as_secs_f64();
        // A lost update under contention only skips one sample of an average.
        let old = f64::from_bits(self.service_time.load(Ordering::Relaxed));
        let new = old + SERVICE_TIME_WEIGHT * (held - old);
        self.service_time.store(new.to_bits(), Ordering::Relaxed);
    }
}

/// How long a new request waits for a slot: nothing when a slot is free and nobody waits;
/// otherwise one service time for the slots' current holders (their remaining time is not
/// known; a whole service time is the safe side) and one more per `slot_count` requests
/// waiting ahead of it.
fn expected_wait(
    waiting_ahead: usize,
    free_now: bool,
    slot_count: usize,
    service_time: Duration,
) -> Duration {
    if free_now && waiting_ahead == 0 {
        return Duration::ZERO;
    }
    let rounds = u32::try_from(waiting_ahead / slot_count.max(1))
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    service_time.saturating_mul(rounds)
}

impl Ticket {
    /// Waits for a slot while the request can still finish by `deadline`: until the latest
    /// start (the deadline less one service time). A request that gets no slot by then is
    /// refused as [`Refusal::WaitTooLong`], the same 503 as one refused at the door;
    /// [`Refusal::DeadlineExceeded`] only when the deadline itself has passed.
    pub async fn slot(self, deadline: Instant) -> Result<Permit, Refusal> {
        let Ticket { place, shared } = self;
        let latest_start = shared.latest_start(deadline);
        // A free slot is taken at once, even past the latest start (an idle line's
        // request, admitted whatever the estimate).
        let slot = match Arc::clone(&shared.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let waiting = Arc::clone(&shared.slots).acquire_owned();
                match tokio::time::timeout_at(latest_start.into(), waiting).await {
                    Ok(Ok(slot)) => slot,
                    Err(_) if (shared.clock)() < deadline => return Err(Refusal::WaitTooLong),
                    // The semaphore is never closed; a closed one can only mean shutting
                    // down.
                    Ok(Err(_)) | Err(_) => return Err(Refusal::DeadlineExceeded),
                }
            }
        };
        Ok(Permit {
            _place: Some(place),
            _slot: slot,
            since: (shared.clock)(),
            shared,
        })
    }

    /// A slot at once if one is free and the request can still finish by `deadline`,
    /// without waiting: the line as a discrete-event test drives it.
    #[cfg(test)]
    fn try_slot(self, deadline: Instant) -> Result<Permit, Result<Ticket, Refusal>> {
        let now = (self.shared.clock)();
        if now > self.shared.latest_start(deadline) {
            return Err(Err(Refusal::WaitTooLong));
        }
        match Arc::clone(&self.shared.slots).try_acquire_owned() {
            Ok(slot) => Ok(Permit {
                _place: Some(self.place),
                _slot: slot,
                since: now,
                shared: self.shared,
            }),
            Err(_) => Err(Ok(self)),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = (self.shared.clock)();
        self.shared
            .record(now.saturating_duration_since(self.since));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::sync::OnceLock;

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

    /// Waiting stops at the latest start that could still finish (the deadline less one
    /// service time), refused as a wait too long (503), and gives the place in line back.
    /// The service time (1 s) leaves the timer a second of slack before the deadline, so
    /// a busy machine waking the test late does not turn the answer into a 504.
    #[tokio::test]
    async fn waiting_stops_at_the_latest_start() {
        let admission = Admission::new(1, 1);
        let _held = admission.enter(soon()).unwrap().slot(soon()).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(1_200);
        let ticket = admission.enter(deadline).unwrap();
        // Measured since: the latest start is now 200 ms after entering.
        admission
            .shared
            .service_time
            .store(1.0_f64.to_bits(), Ordering::Relaxed);
        assert_eq!(
            ticket.slot(deadline).await.unwrap_err(),
            Refusal::WaitTooLong
        );
        assert!(Instant::now() < deadline);
        assert_eq!(admission.in_line(), 1);
    }

    /// Milliseconds on the virtual clock.
    fn ms(millis: f64) -> Duration {
        Duration::from_secs_f64(millis / 1000.0)
    }

    static CLOCK_BASE: OnceLock<Instant> = OnceLock::new();
    thread_local! {
        /// Each test thread's own virtual time since [`CLOCK_BASE`].
        static CLOCK: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    }

    /// The virtual clock the deterministic tests run the line on.
    fn virtual_now() -> Instant {
        *CLOCK_BASE.get_or_init(Instant::now) + CLOCK.get()
    }

    fn set_clock(at: Duration) {
        CLOCK.set(at);
    }

    /// A line on the virtual clock (at zero) whose service time is `service`.
    fn virtual_line(slots: usize, queue: usize, service: Duration) -> Admission {
        set_clock(Duration::ZERO);
        let admission = Admission::with_clock(slots, queue, virtual_now);
        admission
            .shared
            .service_time
            .store(service.as_secs_f64().to_bits(), Ordering::Relaxed);
        admission
    }

    /// A request that would wait is admitted only if the wait ahead of it plus its own
    /// service time fits its deadline; the old estimate left its own service time out and
    /// admitted the 19 ms one below, which then finished at 20 ms: a 504.
    #[test]
    fn admission_counts_the_requests_own_service_time() {
        let admission = virtual_line(1, 8, ms(10.0));
        let start = virtual_now();
        let first = admission.enter(start + ms(10.0)).unwrap();
        let _held = first.try_slot(start + ms(10.0)).unwrap();
        // The holder's service time ahead, then its own: 20 ms.
        assert_eq!(
            admission.enter(start + ms(19.0)).unwrap_err(),
            Refusal::WaitTooLong
        );
        assert!(admission.enter(start + ms(20.0)).is_ok());
    }

    /// An idle line admits a request whatever the estimate: a slow spell left it (10 s)
    /// far above the request's deadline (1 s), and refusing on it alone would refuse
    /// every such request from then on, since no request would run to correct it. The
    /// request takes the free slot at once, and its hold brings the estimate down.
    #[tokio::test]
    async fn an_idle_line_admits_whatever_the_estimate() {
        let admission = Admission::new(2, 8);
        admission
            .shared
            .service_time
            .store(10.0_f64.to_bits(), Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(1);
        let permit = admission
            .enter(deadline)
            .expect("a slot is free and nobody waits")
            .slot(deadline)
            .await
            .expect("the free slot is taken at once");
        // One slot still free, nobody waiting: idle for the next request too.
        let second = admission
            .enter(deadline)
            .expect("still a free slot")
            .slot(deadline)
            .await
            .expect("the second slot");
        // Both slots held: now the estimate counts, and 10 s do not fit in 1 s.
        assert_eq!(admission.enter(deadline).unwrap_err(), Refusal::WaitTooLong);
        drop(permit);
        drop(second);
        assert!(admission.service_time() < Duration::from_secs(8));
    }

    /// A waiting request takes a free slot up to its latest start (deadline less one
    /// service time) and is refused as a wait too long after it, even before its deadline.
    #[test]
    fn a_slot_is_taken_only_while_the_request_can_finish() {
        let admission = virtual_line(1, 8, ms(10.0));
        let start = virtual_now();
        let held = admission
            .enter(start + ms(100.0))
            .unwrap()
            .try_slot(start + ms(100.0))
            .unwrap();
        let deadline = start + ms(25.0);
        let ticket = admission.enter(deadline).unwrap();
        set_clock(ms(14.0));
        let ticket = ticket.try_slot(deadline).unwrap_err().unwrap();
        set_clock(ms(15.0));
        drop(held);
        // 10 ms + (15 - 10) ms / 8.
        assert!(admission.service_time().abs_diff(ms(10.625)) < Duration::from_micros(1));
        // The estimate grew: the latest start is now 25 - 10.625 = 14.375 ms, passed.
        assert_eq!(
            ticket.try_slot(deadline).unwrap_err().unwrap_err(),
            Refusal::WaitTooLong
        );
        assert_eq!(admission.in_line(), 0);
    }

    /// The regression of the 8x-load run (`tests/load.sh`, 21 ms deadlines: 20% of the
    /// answers were 504): 2 slots, 32 waiting places, every request due 21 ms after it
    /// arrives, arriving at 8x what the slots serve, at service times around the measured
    /// one. Run as discrete events on the virtual clock: no admitted request finishes
    /// after its deadline (no 504), the excess is refused (503), and the slots still serve
    /// at capacity.
    #[test]
    fn overload_with_deadlines_is_refused_not_timed_out() {
        const SLOTS: usize = 2;
        const LOAD: u32 = 8;
        const ARRIVALS: u32 = 4_000;
        for service_ms in [1.0, 2.6, 5.0, 6.5, 10.0] {
            let service = ms(service_ms);
            let admission = virtual_line(SLOTS, DEFAULT_MAX_QUEUE, service);
            let start = virtual_now();
            let interval = service / (SLOTS as u32 * LOAD);
            let mut waiting: VecDeque<(Ticket, Instant)> = VecDeque::new();
            let mut running: Vec<(Duration, Permit, Instant)> = Vec::new();
            let (mut in_time, mut late, mut refused) = (0u32, 0u32, 0u32);
            let mut arrived = 0u32;
            loop {
                let next_arrival = (arrived < ARRIVALS).then(|| interval * arrived);
                let next_finish = running.iter().map(|(at, ..)| *at).min();
                let now = match (next_arrival, next_finish) {
                    (None, None) => break,
                    (Some(arrival), Some(finish)) => arrival.min(finish),
                    (arrival, finish) => arrival.or(finish).unwrap(),
                };
                set_clock(now);
                if next_finish == Some(now) {
                    let done = running.iter().position(|(at, ..)| *at == now).unwrap();
                    let (_, permit, deadline) = running.swap_remove(done);
                    drop(permit);
                    if start + now > deadline {
                        late += 1;
                    } else {
                        in_time += 1;
                    }
                } else {
                    arrived += 1;
                    match admission.enter(start + now + ms(21.0)) {
                        Ok(ticket) => waiting.push_back((ticket, start + now + ms(21.0))),
                        Err(_) => refused += 1,
                    }
                }
                // Every waiting request whose latest start has passed gives up (as
                // `Ticket::slot`'s timer does), then the head of the line takes free slots.
                let before = waiting.len();
                waiting.retain(|(_, deadline)| {
                    start + now <= admission.shared.latest_start(*deadline)
                });
                refused += (before - waiting.len()) as u32;
                while let Some((ticket, deadline)) = waiting.pop_front() {
                    match ticket.try_slot(deadline) {
                        Ok(permit) => running.push((now + service, permit, deadline)),
                        Err(Err(_)) => refused += 1,
                        Err(Ok(ticket)) => {
                            waiting.push_front((ticket, deadline));
                            break;
                        }
                    }
                }
            }
            assert_eq!(in_time + late + refused, ARRIVALS);
            assert_eq!(late, 0, "{service_ms} ms: admitted requests finished late");
            // The slots stayed busy: they served what they can in the time the run took.
            let capacity = (interval * ARRIVALS).as_secs_f64() / service.as_secs_f64();
            let capacity = capacity * SLOTS as f64;
            assert!(
                f64::from(in_time) >= 0.95 * capacity,
                "{service_ms} ms: {in_time} answered in time, capacity {capacity:.0}"
            );
            assert!(
                refused > ARRIVALS / 2,
                "{service_ms} ms: the excess is refused"
            );
        }
    }
}
