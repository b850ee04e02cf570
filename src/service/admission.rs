//! Admission: the bound on inferences running at once. A permit is taken without
//! waiting: when none is left the request is shed (overloaded) rather than queued,
//! because a queued request only adds latency for an ad server that has a deadline of
//! its own.
//!
//! This module knows a semaphore; it knows nothing of requests, HTTP or the model.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The inference bound; cheap to clone, every clone sharing the same slots.
#[derive(Debug, Clone)]
pub struct Admission {
    semaphore: Arc<Semaphore>,
}

/// One inference slot, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(slots: usize) -> Admission {
        Admission {
            semaphore: Arc::new(Semaphore::new(slots)),
        }
    }

    /// A slot, held until the permit drops; `None` when all are taken.
    pub fn try_admit(&self) -> Option<Permit> {
        Arc::clone(&self.semaphore)
            .try_acquire_owned()
            .ok()
            .map(|permit| Permit { _permit: permit })
    }
}
