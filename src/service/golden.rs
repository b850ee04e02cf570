//! Golden checks: every bundle carries fully inline `/score` requests with the scores its
//! trainer computed, and a model is served only if it scores them the same way through
//! the serving path (validation, assembly, the runtime, the heads), within
//! [`GOLDEN_TOLERANCE`]. Also how fresh golden cases are computed for a new bundle.
//!
//! This module knows the manifest's golden cases and the pipeline's CPU stages; it knows
//! nothing of HTTP or a feature store (golden requests need none).

use std::time::Duration;

use crate::bundle::{GoldenCase, ResponseField};
use crate::store::StoreRecords;

use super::infer::{InferError, infer};
use super::lookup::Features;
use super::models::Model;
use super::request::{CandidateScores, ScoreRequest};
use super::validate::{InvalidField, Limits, validate};

/// Largest absolute difference between a golden case's expected and computed
/// probabilities: tight enough to catch a wrong graph or spec, loose enough for float
/// reassociation across machines.
pub const GOLDEN_TOLERANCE: f64 = 1e-5;

#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("the manifest has no golden cases; refusing to serve an unchecked model")]
    NoCases,
    #[error("case {case}: request does not decode: {message}")]
    Decode { case: usize, message: String },
    #[error("case {case}: request is invalid: {field}: {message}", field = .error.field, message = .error.message)]
    Invalid { case: usize, error: InvalidField },
    #[error("case {case}: {source}")]
    Score {
        case: usize,
        #[source]
        source: InferError,
    },
    #[error("case {case}: expected {expected} candidates, scored {got}")]
    Count {
        case: usize,
        expected: usize,
        got: usize,
    },
    #[error("case {case}, candidate {candidate}, `{field}`: expected {expected:?}, got {got:?}")]
    Mismatch {
        case: usize,
        candidate: usize,
        field: ResponseField,
        expected: Option<f64>,
        got: Option<f64>,
    },
}

/// Scores a golden request as the server would, with no feature store: golden requests
/// carry every feature inline.
fn score_golden(
    model: &Model,
    case: usize,
    request: &serde_json::Value,
) -> Result<Vec<CandidateScores>, GoldenError> {
    let raw: ScoreRequest =
        serde_json::from_value(request.clone()).map_err(|error| GoldenError::Decode {
            case,
            message: error.to_string(),
        })?;
    let request =
        validate(raw, &Limits::default()).map_err(|error| GoldenError::Invalid { case, error })?;
    let features = Features {
        request,
        records: StoreRecords::default(),
        degraded: false,
        took: Duration::ZERO,
    };
    let inferred = infer(model, &features).map_err(|source| GoldenError::Score { case, source })?;
    Ok(inferred.candidates)
}

/// Checks every golden case of the model's manifest within [`GOLDEN_TOLERANCE`]; a head
/// the case expects null must be null, and the other way round.
pub fn check_golden(model: &Model) -> Result<(), GoldenError> {
    if model.manifest.golden.is_empty() {
        return Err(GoldenError::NoCases);
    }
    for (case, golden) in model.manifest.golden.iter().enumerate() {
        let scored = score_golden(model, case, &golden.request)?;
        if scored.len() != golden.expected.len() {
            return Err(GoldenError::Count {
                case,
                expected: golden.expected.len(),
                got: scored.len(),
            });
        }
        for (candidate, (got, expected)) in scored.iter().zip(&golden.expected).enumerate() {
            // The fields the model serves and any the case expects: a field the model lost
            // is a mismatch, not a skipped check.
            let mut fields = model.heads().fields().to_vec();
            for name in expected.objectives.keys() {
                let field = ResponseField::Objective(name.clone());
                if !fields.contains(&field) {
                    fields.push(field);
                }
            }
            for field in fields {
                let expected = expected.get(&field);
                let got = got.get(&field);
                let matches = match (expected, got) {
                    (Some(expected), Some(got)) => (expected - got).abs() <= GOLDEN_TOLERANCE,
                    (None, None) => true,
                    _ => false,
                };
                if !matches {
                    return Err(GoldenError::Mismatch {
                        case,
                        candidate,
                        field,
                        expected,
                        got,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Golden cases for `requests` (fully inline `/score` bodies) as `model` scores them now:
/// what a trainer writes into a fresh manifest.
pub fn golden_cases(
    model: &Model,
    requests: &[serde_json::Value],
) -> Result<Vec<GoldenCase>, GoldenError> {
    requests
        .iter()
        .enumerate()
        .map(|(case, request)| {
            let scored = score_golden(model, case, request)?;
            Ok(GoldenCase {
                request: request.clone(),
                expected: scored
                    .iter()
                    .map(|candidate| candidate.scores.clone())
                    .collect(),
            })
        })
        .collect()
}
