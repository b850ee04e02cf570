//! The service layer: everything between a decoded request and its answer. Every front
//! end (the HTTP API, `podscore score`) calls the one pipeline, [`Service::score`]:
//!
//! ```text
//! decode (the front end) -> validate -> look up -> assemble + infer -> respond
//! ```
//!
//! each stage in its own file returning the type the next requires: [`validate`]
//! ([`validate::ValidatedRequest`]), [`lookup`] ([`lookup::Features`], within the store's
//! deadline), [`infer`] ([`infer::Inferred`], on a blocking thread behind [`admission`]),
//! [`respond`] ([`request::ScoreResponse`]). Beside it, [`tensors`]: the raw-tensor path
//! of the Open Inference Protocol, [`Service::infer_tensors`], behind the same admission
//! and deadline. Around them: the served [`models`], their [`reload`] and [`golden`]
//! checks, and the [`metrics`].
//!
//! This module knows nothing of HTTP: no routes, status codes or headers. Failures are a
//! [`ServiceError`]; each front end maps them to its own codes in one table.

pub mod admission;
pub mod golden;
pub mod infer;
pub mod lookup;
pub mod metrics;
pub mod models;
pub mod reload;
pub mod request;
pub mod respond;
pub mod tensors;
pub mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::store::FeatureStore;

pub use admission::{Admission, Permit, Refusal, Ticket};
pub use models::{Model, ModelError, ServedModels};
pub use reload::{Reloader, Rollback, RollbackError};

use metrics::{Metrics, ShedReason, Stage};
use request::{ScoreRequest, ScoreResponse};
use validate::{InvalidField, Limits};

/// The feature store's share of a request: a Redis `MGET` answers in about a
/// millisecond; past 20 ms it is unwell, and scoring cold beats answering late.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 20;

/// The service's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// What validation enforces beyond types.
    pub limits: Limits,
    /// How long a store look-up may take before the request goes on cold.
    pub store_timeout: Duration,
    /// Requests holding an inference slot at once (decoding to answer); at least one.
    pub max_inflight: usize,
    /// Requests that may wait for a slot beyond those holding one.
    pub max_queue: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            store_timeout: Duration::from_millis(DEFAULT_STORE_TIMEOUT_MS),
            max_inflight: default_max_inflight(),
            max_queue: admission::DEFAULT_MAX_QUEUE,
        }
    }
}

/// One inference per CPU: inference is CPU-bound, so more in flight only queues.
pub fn default_max_inflight() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Why a request was not scored.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A field of the request, or a value the store supplied for it, is invalid.
    #[error("{0}")]
    Invalid(InvalidField),
    /// A raw tensor (the Open Inference Protocol's path) the model cannot take.
    #[error("{0}")]
    InvalidTensor(#[from] tensors::InvalidTensor),
    #[error("no model named `{0}` is served")]
    UnknownModel(String),
    #[error("no model is loaded yet; retry shortly")]
    NotReady,
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    #[error("the expected wait for a slot exceeds the request's deadline; retry shortly")]
    QueueWait,
    #[error("the request's deadline passed before scoring finished")]
    DeadlineExceeded,
    /// A bug or a broken model, not a client error.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<InvalidField> for ServiceError {
    fn from(invalid: InvalidField) -> ServiceError {
        ServiceError::Invalid(invalid)
    }
}

/// A request as a front end hands it over: decoded, with the time decoding took (counted
/// in the `decode` stage), the instant by which it must be answered, and the slot it was
/// admitted to before its body was decoded ([`Service::enter`], [`Service::wait_for_slot`]).
#[derive(Debug)]
pub struct Incoming {
    pub request: ScoreRequest,
    pub decode: Duration,
    pub deadline: Instant,
    pub permit: Permit,
}

/// What `/readyz` reports when the service can score. The store's health is never part
/// of it: a store that is down means cold-start (degraded) scores, not an unready fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub models: usize,
    pub store: &'static str,
}

/// A configuration the service cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("max inflight must be at least 1: with no inference slot every request is shed")]
    NoSlots,
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The scoring service. Cheap to clone: every clone shares the same models, store,
/// admission and metrics.
#[derive(Debug, Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Loaded once per request (`load_full`), so one request sees one model set even if
    /// a reload swaps it meanwhile.
    models: ArcSwap<ServedModels>,
    store: Arc<dyn FeatureStore>,
    metrics: Metrics,
    admission: Admission,
    config: Config,
    /// Set once on shutdown: `/readyz` answers 503 from then on, so that load balancers
    /// stop routing here while requests in flight finish.
    draining: AtomicBool,
}

impl Service {
    /// A service serving no model yet (not ready), looking features up in `store`.
    /// Refuses a configuration without inference slots.
    pub fn new(config: Config, store: Arc<dyn FeatureStore>) -> Result<Service, BuildError> {
        if config.max_inflight == 0 {
            return Err(BuildError::NoSlots);
        }
        let metrics = Metrics::new()?;
        metrics.initialize_series();
        Ok(Service {
            shared: Arc::new(Shared {
                models: ArcSwap::from_pointee(ServedModels::default()),
                store,
                metrics,
                admission: Admission::new(config.max_inflight, config.max_queue),
                config,
                draining: AtomicBool::new(false),
            }),
        })
    }

    /// Scores one request: validate -> look up -> assemble + infer -> respond. The
    /// response's `timings_us.encode` is left for the front end that encodes it.
    pub async fn score(&self, incoming: Incoming) -> Result<ScoreResponse, ServiceError> {
        let Incoming {
            request,
            decode,
            deadline,
            permit,
        } = incoming;
        let metrics = self.metrics();
        let validating = Instant::now();
        let request = validate::validate(request, &self.config().limits)?;
        let decode = decode + validating.elapsed();
        metrics.observe_stage(Stage::Decode, decode);
        check_deadline(deadline)?;

        let models = self.models();
        if models.is_empty() {
            metrics.observe_shed(ShedReason::NotReady);
            return Err(ServiceError::NotReady);
        }
        let model = match models.get(request.model.as_deref()) {
            Some(model) => Arc::clone(model),
            None => {
                let name = request.model.clone().unwrap_or_default();
                return Err(ServiceError::UnknownModel(name));
            }
        };

        let store_timeout = self
            .config()
            .store_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let features = lookup::look_up(self.store(), request, store_timeout, metrics).await;
        check_deadline(deadline)?;

        let (features, inferred) =
            infer::on_blocking_thread(Arc::clone(&model), features, permit, deadline).await?;
        let timings = respond::Timings {
            decode,
            features: features.took + inferred.assembly,
            inference: inferred.inference,
        };
        metrics.observe_stage(Stage::Features, timings.features);
        metrics.observe_stage(Stage::Inference, timings.inference);
        Ok(respond::respond(
            &features.request,
            features.degraded,
            &model,
            inferred,
            timings,
            metrics,
        ))
    }

    /// The models being served now; one load per request, see [`Shared::models`].
    pub fn models(&self) -> Arc<ServedModels> {
        self.shared.models.load_full()
    }

    /// Serves `models` from now on and updates the model-info metric.
    pub fn publish(&self, models: ServedModels) {
        self.metrics().set_models(
            models
                .models
                .values()
                .map(|model| (model.name(), model.version())),
        );
        self.shared.models.store(Arc::new(models));
    }

    /// A place in line for a request due by `deadline`, taken before its body is read or
    /// decoded; refused at once (and counted as shed) when the line is full or the
    /// expected wait exceeds the deadline. Every front end calls this, then
    /// [`Service::wait_for_slot`], then decodes and calls [`Service::score`].
    pub fn enter(&self, deadline: Instant) -> Result<Ticket, ServiceError> {
        self.admission()
            .enter(deadline)
            .map_err(|refusal| self.refused(refusal))
    }

    /// Waits for an inference slot while `deadline` allows.
    pub async fn wait_for_slot(
        &self,
        ticket: Ticket,
        deadline: Instant,
    ) -> Result<Permit, ServiceError> {
        ticket
            .slot(deadline)
            .await
            .map_err(|refusal| self.refused(refusal))
    }

    fn refused(&self, refusal: Refusal) -> ServiceError {
        match refusal {
            Refusal::QueueFull => {
                self.metrics().observe_shed(ShedReason::Overloaded);
                ServiceError::Overloaded
            }
            Refusal::WaitTooLong => {
                self.metrics().observe_shed(ShedReason::QueueWait);
                ServiceError::QueueWait
            }
            Refusal::DeadlineExceeded => ServiceError::DeadlineExceeded,
        }
    }

    /// Whether the service can score: a model is loaded and the server is not draining.
    /// The store is never consulted (see [`Readiness`]).
    pub fn readiness(&self) -> Result<Readiness, ServiceError> {
        let models = self.models();
        if models.is_empty() || self.is_draining() {
            return Err(ServiceError::NotReady);
        }
        Ok(Readiness {
            models: models.models.len(),
            store: self.store().backend(),
        })
    }

    /// From now on `/readyz` answers 503; scoring goes on for the requests that still
    /// arrive while load balancers notice.
    pub fn start_draining(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &dyn FeatureStore {
        self.shared.store.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn admission(&self) -> &Admission {
        &self.shared.admission
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }
}

fn check_deadline(deadline: Instant) -> Result<(), ServiceError> {
    if Instant::now() >= deadline {
        Err(ServiceError::DeadlineExceeded)
    } else {
        Ok(())
    }
}
