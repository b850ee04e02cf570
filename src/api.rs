//! The HTTP API: routes, handlers, extractors, and [`ApiError`], the one place that maps
//! every failure to a status, a code and a JSON body.
//!
//! This is the only module that knows HTTP and the JSON wire details (field paths of
//! decode errors, `Server-Timing`, `Retry-After`). Handlers are short: the request path
//! reads decode -> validate -> look up -> score (on a blocking thread, behind a bound) ->
//! encode, each step a plain function of `scoring`, `store` or this module.

use std::time::{Duration, Instant};

use axum::extract::rejection::BytesRejection;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::json;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

use crate::graph::{self, Dim, Element};
use crate::scoring::{
    self, CandidateScores, InvalidField, InvalidReason, Limits, ModelRef, ScoreError, ScoreRequest,
    ScoreResponse, StageTimings,
};
use crate::serve::AppState;
use crate::store;

/// Request bodies up to 2 MiB: a full request of 1000 candidates, each with its show
/// inline, stays under it; far larger bodies are mistakes or abuse.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// A request's deadline when it sends none, and the longest it may ask for: an ad
/// server's auction is long over after a second.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 1_000;
/// The feature store's share of a request: a Redis `MGET` answers in about a
/// millisecond; past 20 ms it is unwell, and scoring cold beats answering late.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 20;
/// What 503 answers ask clients to wait: overload at these latencies clears within a
/// second, and a not-ready server is usually loading a model.
pub const RETRY_AFTER_SECONDS: u64 = 1;
/// The header carrying a request's deadline, relative, in milliseconds.
pub const REQUEST_TIMEOUT_HEADER: &str = "x-request-timeout-ms";
const REQUEST_ID_HEADER: &str = "x-request-id";
const OPENAPI: &str = include_str!("openapi.json");

/// The API's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub store_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            store_timeout: Duration::from_millis(DEFAULT_STORE_TIMEOUT_MS),
        }
    }
}

/// The router. Every route, the fallback included, is wrapped by request ids (in, or
/// generated, and echoed out) and by [`observe`] (metrics and the request log).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/score", post(score))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(list_models))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
            REQUEST_ID_HEADER,
        )))
        .layer(SetRequestIdLayer::new(
            HeaderName::from_static(REQUEST_ID_HEADER),
            MakeRequestUuid,
        ))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------
// Errors.

/// Every way a request can fail. [`ApiError::describe`] is the table of statuses and codes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedBody(String),
    #[error("{message}")]
    InvalidHeader {
        header: &'static str,
        message: String,
    },
    #[error("unsupported content type {0}; send application/json")]
    UnsupportedMediaType(String),
    #[error("request body over {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{0}")]
    Invalid(InvalidField),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("no model named `{0}` is served")]
    ModelNotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    #[error("no model is loaded yet; retry shortly")]
    NotReady,
    #[error("the request's deadline passed before scoring finished")]
    DeadlineExceeded,
    /// A bug, not a client error: the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The one table: status and wire code of every error.
    pub fn describe(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedBody(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidHeader { .. } => (StatusCode::BAD_REQUEST, "invalid_header"),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Invalid(invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                match invalid.reason {
                    InvalidReason::MissingField => "missing_field",
                    InvalidReason::WrongType => "wrong_type",
                    InvalidReason::UnknownField => "unknown_field",
                    InvalidReason::EmptyCandidates => "empty_candidates",
                    InvalidReason::TooManyCandidates => "too_many_candidates",
                    InvalidReason::UnknownKind => "unknown_kind",
                    InvalidReason::UnknownModel => "unknown_model",
                    InvalidReason::NotFinite => "not_finite",
                    InvalidReason::StringTooLong => "string_too_long",
                    InvalidReason::ListTooLong => "list_too_long",
                    InvalidReason::InvalidTimestamp => "invalid_timestamp",
                    InvalidReason::WrongDimension => "wrong_dimension",
                    InvalidReason::InvalidValue => "invalid_value",
                },
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::ModelNotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The field the error is about, as a path into the body (or the header's name).
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Invalid(invalid) if !invalid.field.is_empty() => Some(&invalid.field),
            ApiError::InvalidHeader { header, .. } => Some(header),
            _ => None,
        }
    }

    /// The `{"error": {...}}` body.
    pub fn body(&self) -> serde_json::Value {
        let (_, code) = self.describe();
        let message = match self {
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        json!({"error": {"code": code, "message": message, "field": self.field()}})
    }
}

impl From<InvalidField> for ApiError {
    fn from(invalid: InvalidField) -> ApiError {
        ApiError::Invalid(invalid)
    }
}

/// Carries an internal error's detail to [`observe`], which logs it with the request id.
#[derive(Debug, Clone)]
struct InternalDetail(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.describe();
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if let ApiError::Internal(detail) = self {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

// ---------------------------------------------------------------------------------------
// Extractors.

/// A JSON body: content type checked, size bounded, syntax and then types checked, with
/// every rejection in the API's error format. `decode` is the time spent parsing.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub decode: Duration,
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        match content_type.as_deref() {
            Some(value) if is_json(value) => {}
            Some(value) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "`{}`",
                    truncate(value, 64)
                )));
            }
            None => return Err(ApiError::UnsupportedMediaType("(none)".into())),
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::BodyTooLarge {
                            limit: state.config.max_body_bytes,
                        }
                    } else {
                        ApiError::MalformedBody(rejection.body_text())
                    }
                })?;
        let started = Instant::now();
        let value = decode_json(&bytes)?;
        Ok(JsonBody {
            value,
            decode: started.elapsed(),
        })
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Parses `bytes` as `T`. Syntax is checked first, so that broken JSON is a 400 whatever
/// the types say; then a type error is a 422 naming the field's path (`candidates[3].kind`).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(error) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return Err(ApiError::MalformedBody(bare_message(&error)));
    }
    // serde would read a struct from an array of its fields; a body is an object.
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::Invalid(InvalidField::new(
            InvalidReason::WrongType,
            "",
            "the body must be a JSON object",
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = bare_message(error.inner());
        ApiError::Invalid(classify(if path == "." { "" } else { &path }, message))
    })
}

/// serde_json's message without its ` at line L column C` suffix: the field path says
/// where, in terms a client can act on.
fn bare_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(position) if error.line() > 0 => text[..position].to_string(),
        _ => text,
    }
}

/// Maps a serde data error to its reason. Missing and unknown fields name the field
/// itself, which serde reports in the message, not the path.
fn classify(path: &str, message: String) -> InvalidField {
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('`'))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    if let Some(name) = quoted("missing field ") {
        return InvalidField::new(InvalidReason::MissingField, join(&name), message);
    }
    if message.starts_with("unknown field ") {
        // serde_path_to_error already ends the path with the unknown key.
        return InvalidField::new(InvalidReason::UnknownField, path, message);
    }
    let reason = if message.starts_with("invalid type") {
        InvalidReason::WrongType
    } else if message.starts_with("number out of range") {
        InvalidReason::NotFinite
    } else {
        InvalidReason::InvalidValue
    };
    InvalidField::new(reason, path, message)
}

/// When the request must be answered by: now plus `x-request-timeout-ms`, capped by the
/// configured request timeout, which is also the default.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

impl FromRequestParts<AppState> for Deadline {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let configured = state.config.request_timeout;
        let timeout = match parts.headers.get(REQUEST_TIMEOUT_HEADER) {
            None => configured,
            Some(value) => {
                let millis = value
                    .to_str()
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                    .ok_or_else(|| ApiError::InvalidHeader {
                        header: REQUEST_TIMEOUT_HEADER,
                        message: format!(
                            "{REQUEST_TIMEOUT_HEADER} must be a whole number of milliseconds"
                        ),
                    })?;
                Duration::from_millis(millis).min(configured)
            }
        };
        Ok(Deadline(deadline_after(timeout)))
    }
}

fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(3_600))
}

// ---------------------------------------------------------------------------------------
// POST /score.

async fn score(
    State(state): State<AppState>,
    Deadline(deadline): Deadline,
    JsonBody { value, decode }: JsonBody<ScoreRequest>,
) -> Result<Response, ApiError> {
    let scored = score_decoded(&state, value, decode, deadline).await?;
    let mut response = (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        scored.body,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&server_timing(&scored.timings)) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("server-timing"), value);
    }
    Ok(response)
}

/// An encoded answer and what each stage took.
#[derive(Debug)]
pub struct EncodedScores {
    pub body: Vec<u8>,
    pub timings: StageTimings,
}

/// Everything after decoding: validate, look up, score behind the bound and off the
/// async workers, encode. `podscore score` calls this too.
pub async fn score_decoded(
    state: &AppState,
    raw: ScoreRequest,
    decode: Duration,
    deadline: Instant,
) -> Result<EncodedScores, ApiError> {
    let metrics = &state.metrics;
    let validate_started = Instant::now();
    let validated = scoring::validate(raw, &state.config.limits)?;
    let decode = decode + validate_started.elapsed();
    metrics
        .stage_duration
        .with_label_values(&["decode"])
        .observe(decode.as_secs_f64());
    check_deadline(deadline)?;

    let models = state.models.load_full();
    if models.is_empty() {
        metrics
            .shed_requests
            .with_label_values(&["not_ready"])
            .inc();
        return Err(ApiError::NotReady);
    }
    let model = match models.get(validated.model.as_deref()) {
        Some(model) => std::sync::Arc::clone(model),
        None => {
            return Err(ApiError::Invalid(InvalidField::new(
                InvalidReason::UnknownModel,
                "model",
                format!(
                    "no model named `{}` is served",
                    validated.model.as_deref().unwrap_or_default()
                ),
            )));
        }
    };

    let lookup_started = Instant::now();
    let keys = validated.lookup_keys();
    let store_timeout = state
        .config
        .store_timeout
        .min(deadline.saturating_duration_since(Instant::now()));
    let (records, fallback) =
        store::lookup_or_cold_start(state.store.as_ref(), &keys, store_timeout).await;
    metrics.observe_lookups(&keys, &records, fallback);
    let lookup = lookup_started.elapsed();
    check_deadline(deadline)?;

    let Some(permit) = state.inference.try_acquire() else {
        metrics
            .shed_requests
            .with_label_values(&["overloaded"])
            .inc();
        return Err(ApiError::Overloaded);
    };
    let task = tokio::task::spawn_blocking(move || {
        // The slot is held until the work is done, even if the caller gave up waiting:
        // the bound is on CPU work, not on waiting requests.
        let _permit = permit;
        let result = scoring::score(&model, &records, &validated);
        (validated, result)
    });
    let (validated, result) = match tokio::time::timeout_at(deadline.into(), task).await {
        Err(_) => return Err(ApiError::DeadlineExceeded),
        Ok(Err(join_error)) => {
            return Err(ApiError::Internal(format!(
                "scoring task failed: {join_error}"
            )));
        }
        Ok(Ok(done)) => done,
    };
    let scored = result.map_err(|error| match error {
        ScoreError::Invalid(invalid) => ApiError::Invalid(invalid),
        ScoreError::Model { .. } => ApiError::Internal(error.to_string()),
    })?;
    let features = lookup + scored.assembly;
    let inference = scored.inference;
    metrics
        .stage_duration
        .with_label_values(&["features"])
        .observe(features.as_secs_f64());
    metrics
        .stage_duration
        .with_label_values(&["inference"])
        .observe(inference.as_secs_f64());
    metrics.observe_scores(&scored.candidates);

    let response = ScoreResponse::new(&validated, scored);
    let mut timings = StageTimings {
        decode: micros(decode),
        features: micros(features),
        inference: micros(inference),
        encode: 0,
    };
    let body = encode_response(&response, &mut timings)?;
    metrics
        .stage_duration
        .with_label_values(&["encode"])
        .observe(timings.encode as f64 / 1e6);
    Ok(EncodedScores { body, timings })
}

fn check_deadline(deadline: Instant) -> Result<(), ApiError> {
    if Instant::now() >= deadline {
        Err(ApiError::DeadlineExceeded)
    } else {
        Ok(())
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The response body without its timings, which go last so that they can include the
/// time spent encoding everything else.
#[derive(Serialize)]
struct ResponseHead<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    model: &'a ModelRef,
    candidates: &'a [CandidateScores],
}

fn encode_response(
    response: &ScoreResponse,
    timings: &mut StageTimings,
) -> Result<Vec<u8>, ApiError> {
    let started = Instant::now();
    let head = ResponseHead {
        request_id: response.request_id.as_deref(),
        model: &response.model,
        candidates: &response.candidates,
    };
    let mut body =
        serde_json::to_vec(&head).map_err(|error| ApiError::Internal(error.to_string()))?;
    timings.encode = micros(started.elapsed());
    // `head` serializes as an object, so its last byte is the closing brace.
    body.pop();
    body.extend_from_slice(b",\"timings_us\":");
    serde_json::to_writer(&mut body, timings)
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    body.push(b'}');
    Ok(body)
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

/// `podscore score`: decodes `body` as the server would and scores it; an error reads as
/// the server's error body would.
pub async fn score_offline(state: &AppState, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let started = Instant::now();
    let outcome = match decode_json::<ScoreRequest>(body) {
        Ok(raw) => {
            score_decoded(
                state,
                raw,
                started.elapsed(),
                deadline_after(state.config.request_timeout),
            )
            .await
        }
        Err(error) => Err(error),
    };
    outcome.map(|encoded| encoded.body).map_err(|error| {
        let (status, _) = error.describe();
        anyhow::anyhow!("{} {}", status.as_u16(), error.body())
    })
}

// ---------------------------------------------------------------------------------------
// Health, metrics, models, documents.

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let models = state.models.load_full();
    if models.is_empty() || !state.store.ready() {
        return Err(ApiError::NotReady);
    }
    Ok(Json(json!({
        "status": "ready",
        "models": models.models.len(),
        "store": state.store.backend(),
    })))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render()
        .map_err(|error| ApiError::Internal(format!("rendering metrics: {error}")))?;
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

async fn list_models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let served = state.models.load_full();
    let default = served.get(None).map(|model| model.name().to_string());
    let models: Vec<serde_json::Value> = served
        .models
        .values()
        .map(|model| {
            json!({
                "name": model.name(),
                "version": model.version(),
                "default": default.as_deref() == Some(model.name()),
                "manifest": model.manifest,
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

/// KServe Open Inference Protocol model metadata, from the manifest's feature layout.
async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let served = state.models.load_full();
    let model = served
        .models
        .get(&name)
        .ok_or_else(|| ApiError::ModelNotFound(truncate(&name, 256).to_string()))?;
    let inputs: Vec<serde_json::Value> = graph::inputs(&model.manifest.features)
        .iter()
        .map(|input| {
            json!({
                "name": input.name(),
                "datatype": kserve_datatype(input.element()),
                "shape": input.shape().map(kserve_dim),
            })
        })
        .collect();
    let heads = model.manifest.heads.len();
    Ok(Json(json!({
        "name": model.name(),
        "versions": [model.version().to_string()],
        "platform": "onnx_tract",
        "inputs": inputs,
        "outputs": [{
            "name": graph::OUTPUT_NAME,
            "datatype": kserve_datatype(Element::Float32),
            "shape": [kserve_dim(Dim::Symbolic(graph::CANDIDATES_DIM)), kserve_dim(Dim::Fixed(heads))],
        }],
    })))
}

/// The Open Inference Protocol's name of a tensor element type.
fn kserve_datatype(element: Element) -> &'static str {
    match element {
        Element::Int64 => "INT64",
        Element::Float32 => "FP32",
    }
}

/// The Open Inference Protocol's form of a dimension: its size, or -1 when variable.
fn kserve_dim(dim: Dim) -> i64 {
    match dim {
        Dim::Fixed(size) => i64::try_from(size).unwrap_or(i64::MAX),
        Dim::Symbolic(_) => -1,
    }
}

async fn openapi() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        OPENAPI,
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(truncate(request.uri().path(), 256).to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

// ---------------------------------------------------------------------------------------
// Middleware.

/// Decrements the in-flight gauge however the request ends, a dropped connection too.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts and times every request by route and status, and logs it (JSON, with its
/// request id); internal errors are logged here with their detail.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let method = request.method().clone();
    let metrics = &state.metrics;
    metrics.http_requests_in_flight.inc();
    let _in_flight = InFlight(&metrics.http_requests_in_flight);
    let started = Instant::now();
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    metrics
        .http_request_duration
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    let latency_us = micros(elapsed);
    span.in_scope(|| {
        if let Some(InternalDetail(detail)) = response.extensions().get::<InternalDetail>() {
            tracing::error!(status = status.as_u16(), latency_us, error = %detail, "request failed");
        } else if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), latency_us, "request answered");
        } else {
            tracing::info!(status = status.as_u16(), latency_us, "request answered");
        }
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<ScoreRequest, (u16, &'static str, Option<String>)> {
        decode_json::<ScoreRequest>(body.as_bytes()).map_err(|error| {
            let (status, code) = error.describe();
            (status.as_u16(), code, error.field().map(str::to_string))
        })
    }

    /// Syntax errors are 400s; type errors are 422s naming the field path.
    #[test]
    fn decode_errors_name_status_code_and_path() {
        assert_eq!(decode("{").unwrap_err(), (400, "malformed_json", None));
        assert_eq!(decode("{} x").unwrap_err(), (400, "malformed_json", None));
        assert_eq!(
            decode("{}").unwrap_err(),
            (422, "missing_field", Some("candidates".into()))
        );
        assert_eq!(decode("[]").unwrap_err(), (422, "wrong_type", None));
        assert_eq!(
            decode(r#"{"candidates": [{"id": "a", "kind": "ad"}, {"id": 3, "kind": "ad"}]}"#)
                .unwrap_err(),
            (422, "wrong_type", Some("candidates[1].id".into()))
        );
        assert_eq!(
            decode(r#"{"candidates": [{"id": "a"}]}"#).unwrap_err(),
            (422, "missing_field", Some("candidates[0].kind".into()))
        );
        assert_eq!(
            decode(r#"{"candidates": [], "colour": 1}"#).unwrap_err(),
            (422, "unknown_field", Some("colour".into()))
        );
        assert_eq!(
            decode(
                r#"{"candidates": [{"id": "a", "kind": "ad", "show": {"streams_30d": 1e400}}]}"#
            )
            .unwrap_err(),
            (
                422,
                "not_finite",
                Some("candidates[0].show.streams_30d".into())
            )
        );
        assert!(decode(r#"{"candidates": [{"id": "a", "kind": "ad"}]}"#).is_ok());
    }

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

    /// The hand-written OpenAPI document is valid JSON naming every route.
    #[test]
    fn openapi_document_lists_every_route() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(document["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/score",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/models",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/{name}",
            "/openapi.json",
        ] {
            assert!(document["paths"].get(path).is_some(), "{path} missing");
        }
    }
}
