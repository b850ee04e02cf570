//! The service's Prometheus metrics, prefix `podscore_`, base units.
//!
//! [`Metrics`] owns its own [`Registry`] (no global statics), so that every test server
//! starts from zero. Label values come from closed sets only (routes as declared, status
//! codes, stage, entity, kind, response field) or from the bundles being served (model
//! name and version): never ids from requests.
//!
//! One registry holds every family, so that `/metrics` renders them all: the pipeline's
//! (stages, look-ups, cold starts, probabilities, shedding, models) are fed by the service,
//! the request families (by route and status, latency, in flight) by the HTTP front end,
//! which alone knows routes and statuses.
//!
//! This module knows nothing of HTTP or the model; callers say what happened.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::bundle::ResponseField;
use crate::entities::CandidateKind;
use crate::service::request::CandidateScores;
use crate::store::{Fallback, LookupKeys, StoreRecords};

/// Latency buckets, 50 µs to 1 s: a snapshot lookup or a small batch takes tens of
/// microseconds, a large batch under load tens of milliseconds, and past a second an ad
/// server has long given up.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];
/// Candidates per request, up to the default maximum of 1000.
pub const CANDIDATE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0, 1000.0,
];
/// Probabilities: engagement rates are small, so the low end is finer.
pub const PROBABILITY_BUCKETS: [f64; 12] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0,
];

/// A stage of `POST /score`, as the stage histogram labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decoding and validating the body.
    Decode,
    /// Feature look-up and assembly.
    Features,
    Inference,
    /// Encoding the response.
    Encode,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Features => "features",
            Stage::Inference => "inference",
            Stage::Encode => "encode",
        }
    }
}

/// Why a request was answered at once without scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The admission line (slots and queue) was full.
    Overloaded,
    /// The expected wait for a slot was longer than the request's deadline.
    QueueWait,
    /// No model is loaded.
    NotReady,
}

impl ShedReason {
    pub const ALL: [ShedReason; 3] = [
        ShedReason::Overloaded,
        ShedReason::QueueWait,
        ShedReason::NotReady,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::Overloaded => "overloaded",
            ShedReason::QueueWait => "queue_wait",
            ShedReason::NotReady => "not_ready",
        }
    }
}

/// Outcome of loading one bundle at start or on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new version now serves.
    Loaded,
    /// The bundle failed to load or its golden check; the served one stays.
    Failed,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Loaded => "loaded",
            ReloadOutcome::Failed => "failed",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// By `route` (the declared pattern, `unmatched` otherwise) and `status`.
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub http_requests_in_flight: IntGauge,
    /// By `stage`: `decode`, `features`, `inference`, `encode`.
    pub stage_duration: HistogramVec,
    pub candidates_per_request: Histogram,
    /// Requests answered 503 at once, by `reason`: `overloaded`, `not_ready`.
    pub shed_requests: IntCounterVec,
    /// By `entity` (`user`, `show`, `episode`) and `result` (`hit`, `miss`, `error`).
    pub feature_lookups: IntCounterVec,
    /// Store lookups abandoned for the cold-start path, by `reason`: `timeout`, `error`.
    pub store_fallbacks: IntCounterVec,
    pub cold_start_candidates: IntCounterVec,
    /// Served probabilities by candidate `kind` and response `field`, to watch drift.
    pub predicted_probability: HistogramVec,
    /// [`Metrics::predicted_probability`]'s series for each kind and fixed field, looked
    /// up on first use and kept: four per candidate were a hash and a lock each.
    fixed_probability:
        [[OnceLock<Histogram>; ResponseField::FIXED.len()]; CandidateKind::ALL.len()],
    /// 1 for each served model, by `name` and `version`.
    pub model_info: IntGaugeVec,
    pub model_reloads: IntCounterVec,
    /// How long loading and proving one bundle took (read, plans, golden, smoke run).
    pub model_load_duration: Histogram,
    /// Unix time of the last bundle that loaded and was published.
    pub model_last_load_success: Gauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let metric = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(metric.clone()))?;
            Ok::<_, prometheus::Error>(metric)
        };
        let http_requests = counter(
            "podscore_http_requests_total",
            "HTTP requests answered, by route and status code.",
            &["route", "status"],
        )?;
        let http_request_duration = histogram(
            "podscore_http_request_duration_seconds",
            "Time from request to response head, by route.",
            &LATENCY_BUCKETS,
            &["route"],
        )?;
        let http_requests_in_flight = IntGauge::new(
            "podscore_http_requests_in_flight",
            "HTTP requests being handled now.",
        )?;
        registry.register(Box::new(http_requests_in_flight.clone()))?;
        let stage_duration = histogram(
            "podscore_stage_duration_seconds",
            "Time per stage of POST /score: decode, features, inference, encode.",
            &LATENCY_BUCKETS,
            &["stage"],
        )?;
        let candidates_per_request = Histogram::with_opts(
            HistogramOpts::new(
                "podscore_candidates_per_request",
                "Candidates in each scored request.",
            )
            .buckets(CANDIDATE_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(candidates_per_request.clone()))?;
        let shed_requests = counter(
            "podscore_shed_requests_total",
            "Requests answered 503 at once, by reason: overloaded or not_ready.",
            &["reason"],
        )?;
        let feature_lookups = counter(
            "podscore_feature_lookups_total",
            "Feature store look-ups, by entity (user, show, episode) and result (hit, miss, error).",
            &["entity", "result"],
        )?;
        let store_fallbacks = counter(
            "podscore_store_fallbacks_total",
            "Store look-ups abandoned for the cold-start path (each a degraded answer), by reason: timeout, error or circuit_open.",
            &["reason"],
        )?;
        let cold_start_candidates = counter(
            "podscore_cold_start_candidates_total",
            "Candidates scored on the cold-start path, by kind.",
            &["kind"],
        )?;
        let predicted_probability = histogram(
            "podscore_predicted_probability",
            "Served probabilities, by candidate kind and response field.",
            &PROBABILITY_BUCKETS,
            &["kind", "field"],
        )?;
        let model_info = IntGaugeVec::new(
            Opts::new(
                "podscore_model_info",
                "1 for each model being served, by name and version.",
            ),
            &["name", "version"],
        )?;
        registry.register(Box::new(model_info.clone()))?;
        let model_reloads = counter(
            "podscore_model_reloads_total",
            "Bundle loads at start and on reload, by result: loaded or failed.",
            &["result"],
        )?;
        let model_load_duration = Histogram::with_opts(
            HistogramOpts::new(
                "podscore_model_load_duration_seconds",
                "Time to load and prove one bundle, whether it loaded or failed.",
            )
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
        )?;
        registry.register(Box::new(model_load_duration.clone()))?;
        let model_last_load_success = Gauge::new(
            "podscore_model_last_load_success_timestamp_seconds",
            "Unix time at which the last bundle loaded and was published.",
        )?;
        registry.register(Box::new(model_last_load_success.clone()))?;
        Ok(Metrics {
            model_load_duration,
            model_last_load_success,
            registry,
            http_requests,
            http_request_duration,
            http_requests_in_flight,
            stage_duration,
            candidates_per_request,
            shed_requests,
            feature_lookups,
            store_fallbacks,
            cold_start_candidates,
            predicted_probability,
            fixed_probability: Default::default(),
            model_info,
            model_reloads,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|error| prometheus::Error::Msg(error.to_string()))
    }

    pub fn observe_stage(&self, stage: Stage, duration: Duration) {
        self.stage_duration
            .with_label_values(&[stage.as_str()])
            .observe(duration.as_secs_f64());
    }

    pub fn observe_shed(&self, reason: ShedReason) {
        self.shed_requests
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts each requested key as a hit or a miss, or all as errors when the store
    /// failed and the request fell back.
    pub fn observe_lookups(
        &self,
        keys: &LookupKeys,
        records: &StoreRecords,
        fallback: Option<Fallback>,
    ) {
        let count = |entity: &str, requested: usize, found: usize| {
            if requested == 0 {
                return;
            }
            if fallback.is_some() {
                self.feature_lookups
                    .with_label_values(&[entity, "error"])
                    .inc_by(requested as u64);
                return;
            }
            self.feature_lookups
                .with_label_values(&[entity, "hit"])
                .inc_by(found as u64);
            self.feature_lookups
                .with_label_values(&[entity, "miss"])
                .inc_by(requested.saturating_sub(found) as u64);
        };
        count(
            "user",
            usize::from(keys.user.is_some()),
            usize::from(records.user.is_some()),
        );
        count("show", keys.shows.len(), records.shows.len());
        count("episode", keys.episodes.len(), records.episodes.len());
        if let Some(fallback) = fallback {
            self.store_fallbacks
                .with_label_values(&[fallback.as_str()])
                .inc();
        }
    }

    /// Candidates per request, cold starts by kind, and the served probabilities.
    pub fn observe_scores(&self, candidates: &[CandidateScores]) {
        self.candidates_per_request.observe(candidates.len() as f64);
        for candidate in candidates {
            let kind = candidate.kind.as_str();
            if candidate.cold_start {
                self.cold_start_candidates.with_label_values(&[kind]).inc();
            }
            let series = &self.fixed_probability[candidate.kind.index()];
            for (field, series) in ResponseField::FIXED.iter().zip(series) {
                if let Some(probability) = candidate.get(field) {
                    series
                        .get_or_init(|| {
                            self.predicted_probability
                                .with_label_values(&[kind, field.name()])
                        })
                        .observe(probability);
                }
            }
            // Manifest-named fields: label values bounded by the served models' heads.
            for (field, probability) in &candidate.scores.objectives {
                if let Some(probability) = probability {
                    self.predicted_probability
                        .with_label_values(&[kind, field.as_str()])
                        .observe(*probability);
                }
            }
        }
    }

    /// Replaces the model-info series with the models now served.
    pub fn set_models<'a>(&self, models: impl IntoIterator<Item = (&'a str, u32)>) {
        self.model_info.reset();
        for (name, version) in models {
            self.model_info
                .with_label_values(&[name, &version.to_string()])
                .set(1);
        }
    }

    /// One bundle's load: its outcome and how long it took; a success also stamps the
    /// time of the last success.
    pub fn observe_reload(&self, outcome: ReloadOutcome, took: Duration) {
        self.model_reloads
            .with_label_values(&[outcome.as_str()])
            .inc();
        self.model_load_duration.observe(took.as_secs_f64());
        if outcome == ReloadOutcome::Loaded {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.model_last_load_success.set(now.as_secs_f64());
        }
    }

    /// Starts both kinds at zero, so that dashboards see the series before the first
    /// cold start.
    pub fn initialize_series(&self) {
        for kind in CandidateKind::ALL {
            self.cold_start_candidates
                .with_label_values(&[kind.as_str()]);
        }
        for outcome in [ReloadOutcome::Loaded, ReloadOutcome::Failed] {
            self.model_reloads.with_label_values(&[outcome.as_str()]);
        }
        for reason in ShedReason::ALL {
            self.shed_requests.with_label_values(&[reason.as_str()]);
        }
        for fallback in Fallback::ALL {
            self.store_fallbacks.with_label_values(&[fallback.as_str()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry builds, and every family renders with the podscore_ prefix.
    #[test]
    fn metrics_render_with_prefix() {
        let metrics = Metrics::new().unwrap();
        metrics.initialize_series();
        metrics
            .http_requests
            .with_label_values(&["/score", "200"])
            .inc();
        let text = metrics.render().unwrap();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(line.starts_with("podscore_"), "{line}");
        }
        assert!(text.contains("podscore_cold_start_candidates_total{kind=\"ad\"} 0"));
    }
}
