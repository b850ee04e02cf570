//! `POST /score`: the body decoded (JSON or protobuf), the service's pipeline run within
//! the request's deadline, the answer encoded in the negotiated type with its stage
//! timings in the body and in `Server-Timing`.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::metrics::Stage;
use crate::service::request::{
    CandidateScores, ModelRef, ScoreRequest, ScoreResponse, StageTimings,
};
use crate::service::respond::micros;
use crate::service::{Incoming, Service, ServiceError};

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::{self, Deadline, Encoding};
use super::openapi::ProtobufMessage;
use super::protobuf;

/// Scores the candidates of one request (the JSON or protobuf body, see
/// `proto/podscore/v1/score.proto`), answering in the type `Accept` asks for.
///
/// Admission comes before the body: a place in line is taken (or refused at once) before
/// the body is read, and a slot before it is decoded, so that every body read or decoded
/// at once holds a place in the bounded line and every decode a slot. Both encodings (and
/// gRPC's `Score`) take the same steps.
#[utoipa::path(
    post,
    path = "/score",
    operation_id = "score",
    tag = "score",
    params(
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline in milliseconds from arrival, capped by the server's request timeout (default 1000)."),
        ("x-request-id" = Option<String>, Header, description = "Request id for the logs; generated when absent; echoed in the response."),
    ),
    request_body(
        description = "The request, as JSON or as a `podscore.v1.ScoreRequest` message.",
        content(
            (ScoreRequest = "application/json"),
            (ProtobufMessage = "application/x-protobuf"),
        ),
    ),
    responses(
        (status = 200, description = "Scores, in request order; `order` when asked for.",
            headers(
                ("server-timing" = String, description = "decode, features, inference and encode durations in milliseconds."),
                ("x-request-id" = String, description = "The request id: the one sent, or one generated."),
            ),
            content(
                (ScoreResponse = "application/json"),
                (ProtobufMessage = "application/x-protobuf"),
            )),
        (status = 400, description = "Malformed JSON or protobuf, or an invalid header.", body = ErrorBody),
        (status = 406, description = "`Accept` allows neither JSON nor protobuf.", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
        (status = 413, description = "Body over the configured limit (2 MiB by default).", body = ErrorBody),
        (status = 415, description = "Content-Type is neither JSON nor protobuf.", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, unknown or out of bounds; `field` is its path.", body = ErrorBody),
        (status = 503, description = "Overloaded (queue full or expected wait past the deadline), or no model loaded.", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait before retrying."))),
        (status = 504, description = "The deadline passed before scoring finished.", body = ErrorBody),
    ),
)]
pub(super) async fn score(
    State(state): State<ApiState>,
    Deadline(deadline): Deadline,
    request: Request,
) -> Result<Response, ApiError> {
    let encoding = extract::content_encoding(request.headers(), &Encoding::ALL)?;
    let respond_in = extract::answer_encoding(request.headers(), encoding)?;
    let service = &state.service;
    let ticket = service.enter(deadline)?;
    let bytes = extract::read_body(request, &state, deadline).await?;
    let permit = service.wait_for_slot(ticket, deadline).await?;
    let started = Instant::now();
    let value =
        extract::decode_score_body(&bytes, encoding, service.config().limits.max_candidates)?;
    drop(bytes);
    let incoming = Incoming {
        request: value,
        decode: started.elapsed(),
        deadline,
        permit,
    };
    let (body, timings) = score_and_encode(service, incoming, respond_in).await?;
    let mut response = (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(respond_in.media_type()),
        )],
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

/// Scores an admitted, decoded request with `service` and encodes the answer in
/// `encoding`: what `POST /score` does after decoding.
pub async fn score_and_encode(
    service: &Service,
    incoming: Incoming,
    encoding: Encoding,
) -> Result<(Vec<u8>, StageTimings), ApiError> {
    let response = service.score(incoming).await?;
    let (body, timings) = match encoding {
        Encoding::Json => encode(&response)?,
        Encoding::Protobuf => protobuf::encode(&response),
    };
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
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<&'a [String]>,
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
        order: response.order.as_deref(),
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
