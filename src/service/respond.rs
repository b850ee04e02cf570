//! The respond stage: the scores become the answer to the request (candidates in request
//! order, the model that scored them, the time each stage took), and the served
//! probabilities and cold starts are counted.
//!
//! This module knows the response type; its wire encoding belongs to the front ends.

use std::time::Duration;

use super::infer::Inferred;
use super::metrics::Metrics;
use super::models::Model;
use super::request::{ModelRef, ScoreResponse, StageTimings};
use super::validate::ValidatedRequest;

/// Time spent per stage before the response is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub decode: Duration,
    pub features: Duration,
    pub inference: Duration,
}

/// The answer to `request`, scored by `model`; `degraded` when the store failed and every
/// candidate went cold. `timings_us.encode` stays 0: the front end that encodes the
/// response fills it.
pub fn respond(
    request: &ValidatedRequest,
    degraded: bool,
    model: &Model,
    inferred: Inferred,
    timings: Timings,
    metrics: &Metrics,
) -> ScoreResponse {
    metrics.observe_scores(&inferred.candidates);
    ScoreResponse {
        request_id: request.request_id.clone(),
        model: ModelRef {
            name: model.name().to_string(),
            version: model.version(),
        },
        degraded,
        candidates: inferred.candidates,
        timings_us: StageTimings {
            decode: micros(timings.decode),
            features: micros(timings.features),
            inference: micros(timings.inference),
            encode: 0,
        },
    }
}

/// Whole microseconds, saturating: what `timings_us` and `Server-Timing` report.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
