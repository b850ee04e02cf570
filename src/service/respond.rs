//! The respond stage: the scores become the answer to the request (candidates in request
//! order, the model that scored them, the time each stage took), and the served
//! probabilities and cold starts are counted.
//!
//! This module knows the response type; its wire encoding belongs to the front ends.

use std::time::Duration;

use super::infer::Inferred;
use super::metrics::Metrics;
use super::models::Model;
use super::request::{CandidateScores, ModelRef, ScoreResponse, StageTimings};
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
    let mut candidates = inferred.candidates;
    for (scores, candidate) in candidates.iter_mut().zip(&request.candidates) {
        scores.expected_cost_per_stream = candidate
            .bid
            .and_then(|bid| expected_cost_per_stream(bid, scores.scores.stream?));
    }
    ScoreResponse {
        request_id: request.request_id.clone(),
        model: ModelRef {
            name: model.name().to_string(),
            version: model.version(),
        },
        degraded,
        order: request.order.then(|| order(&candidates)),
        candidates,
        timings_us: StageTimings {
            decode: micros(timings.decode),
            features: micros(timings.features),
            inference: micros(timings.inference),
            encode: 0,
        },
    }
}

/// What one stream costs in expectation when an impression costs `bid` and streams with
/// probability `stream`: `bid / stream`. `None` when that is not a finite number (a
/// stream probability of 0).
pub fn expected_cost_per_stream(bid: f64, stream: f64) -> Option<f64> {
    let cost = bid / stream;
    (stream > 0.0 && cost.is_finite()).then_some(cost)
}

/// Candidate ids by ascending expected cost per stream (ties and candidates without one
/// keep request order, the latter after all the others).
pub fn order(candidates: &[CandidateScores]) -> Vec<String> {
    let mut ranked: Vec<&CandidateScores> = candidates.iter().collect();
    ranked.sort_by(
        |a, b| match (a.expected_cost_per_stream, b.expected_cost_per_stream) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        },
    );
    ranked.into_iter().map(|scores| scores.id.clone()).collect()
}

/// Whole microseconds, saturating: what `timings_us` and `Server-Timing` report.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::FieldScores;
    use crate::entities::CandidateKind;

    fn scores(id: &str, cost: Option<f64>) -> CandidateScores {
        CandidateScores {
            id: id.into(),
            kind: CandidateKind::Ad,
            scores: FieldScores {
                stream: Some(0.5),
                ..FieldScores::default()
            },
            cold_start: false,
            expected_cost_per_stream: cost,
        }
    }

    /// Cost per stream is bid over stream probability, and absent where that is not
    /// finite.
    #[test]
    fn expected_cost_per_stream_is_bid_over_stream() {
        assert_eq!(expected_cost_per_stream(2.0, 0.25), Some(8.0));
        assert_eq!(expected_cost_per_stream(0.0, 0.25), Some(0.0));
        assert_eq!(expected_cost_per_stream(2.0, 0.0), None);
        assert_eq!(expected_cost_per_stream(f64::MAX, 1e-300), None);
    }

    /// The order ranks by ascending cost, keeps request order among ties, and puts
    /// candidates without a cost last.
    #[test]
    fn order_ranks_by_ascending_cost_then_request_order() {
        let candidates = [
            scores("none-a", None),
            scores("dear", Some(9.0)),
            scores("cheap", Some(1.0)),
            scores("none-b", None),
            scores("tie", Some(9.0)),
        ];
        assert_eq!(
            order(&candidates),
            ["cheap", "dear", "tie", "none-a", "none-b"]
        );
    }
}
