//! `POST /score`: the JSON body decoded, the service's pipeline run within the request's
//! deadline, the answer encoded with its stage timings in the body and in
//! `Server-Timing`.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::metrics::Stage;
use crate::service::request::{CandidateScores, ModelRef, ScoreResponse, StageTimings};
use crate::service::respond::micros;
use crate::service::{Incoming, Service, ServiceError};

use super::ApiState;
use super::error::ApiError;
use super::extract::{self, Deadline};

/// Admission comes before the body: a place in line is taken (or refused at once) before
/// the body is read, and a slot before it is decoded, so that every body read or decoded
/// at once holds a place in the bounded line and every decode a slot.
pub(super) async fn score(
    State(state): State<ApiState>,
    Deadline(deadline): Deadline,
    request: Request,
) -> Result<Response, ApiError> {
    extract::require_json(request.headers())?;
    let service = &state.service;
    let ticket = service.enter(deadline)?;
    let bytes = extract::read_body(request, &state, deadline).await?;
    let permit = service.wait_for_slot(ticket, deadline).await?;
    let started = Instant::now();
    let value = extract::decode_score_request(&bytes, service.config().limits.max_candidates)?;
    drop(bytes);
    let incoming = Incoming {
        request: value,
        decode: started.elapsed(),
        deadline,
        permit,
    };
    let (body, timings) = score_and_encode(service, incoming).await?;
    let mut response = (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&server_timing(&timings)) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("server-timing"), value);
    }
    Ok(response)
}

/// Scores an admitted, decoded request with `service` and encodes the answer: what
/// `POST /score` does after decoding.
pub async fn score_and_encode(
    service: &Service,
    incoming: Incoming,
) -> Result<(Vec<u8>, StageTimings), ApiError> {
    let response = service.score(incoming).await?;
    let (body, timings) = encode(&response)?;
    service
        .metrics()
        .observe_stage(Stage::Encode, Duration::from_micros(timings.encode));
    Ok((body, timings))
}

/// The response body without its timings, which go last so that they can include the
/// time spent encoding everything else.
#[derive(Serialize)]
struct ResponseHead<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    model: &'a ModelRef,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    degraded: bool,
    candidates: &'a [CandidateScores],
}

/// The JSON body of `response`, its `timings_us` last with the encoding time filled in.
pub fn encode(response: &ScoreResponse) -> Result<(Vec<u8>, StageTimings), ApiError> {
    let started = Instant::now();
    let internal =
        |error: serde_json::Error| ApiError::from(ServiceError::Internal(error.to_string()));
    let head = ResponseHead {
        request_id: response.request_id.as_deref(),
        model: &response.model,
        degraded: response.degraded,
        candidates: &response.candidates,
    };
    let mut body = serde_json::to_vec(&head).map_err(internal)?;
    let timings = StageTimings {
        encode: micros(started.elapsed()),
        ..response.timings_us
    };
    // `head` serializes as an object, so its last byte is the closing brace.
    body.pop();
    body.extend_from_slice(b",\"timings_us\":");
    serde_json::to_writer(&mut body, &timings).map_err(internal)?;
    body.push(b'}');
    Ok((body, timings))
}

/// `decode;dur=0.012, features;dur=...` in milliseconds, as browsers and proxies read it.
fn server_timing(timings: &StageTimings) -> String {
    [
        ("decode", timings.decode),
        ("features", timings.features),
        ("inference", timings.inference),
        ("encode", timings.encode),
    ]
    .iter()
    .map(|(stage, micros)| format!("{stage};dur={:.3}", *micros as f64 / 1000.0))
    .collect::<Vec<_>>()
    .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server-Timing lists the four stages in milliseconds.
    #[test]
    fn server_timing_lists_stages_in_milliseconds() {
        let timings = StageTimings {
            decode: 12,
            features: 1500,
            inference: 0,
            encode: 3,
        };
        assert_eq!(
            server_timing(&timings),
            "decode;dur=0.012, features;dur=1.500, inference;dur=0.000, encode;dur=0.003"
        );
    }
}
