//! The HTTP front end (axum): [`app`], the router, testable with `oneshot` and no socket;
//! [`error`], every failure and the one table of statuses and wire codes; [`extract`],
//! the bodies (JSON, or `/score`'s JSON or protobuf with `Accept` negotiation) and the
//! deadline header; [`protobuf`], `/score`'s protobuf codec (shared with gRPC); then one
//! file per route family: [`score`] (`POST /score`), `health` (`/healthz`, `/readyz`,
//! `/metrics`), `models` (`/v1/models`), [`kserve`] (the Open Inference Protocol's REST
//! routes), [`openapi`] (`/openapi.json`, generated from the handlers), and `observe`,
//! the request log and metrics around every route. [`routes`] registers each route with
//! its OpenAPI entry. [`admin`] is a router of its own (reload, rollback) for the admin
//! listener.
//!
//! This is the only module that knows HTTP and the JSON wire details (field paths of
//! decode errors, `Server-Timing`, `Retry-After`). It knows nothing of tract or the
//! store's internals: handlers decode, call the service ([`crate::service`]), and encode.

pub mod admin;
pub mod error;
pub mod extract;
mod health;
pub mod kserve;
mod models;
mod observe;
pub mod openapi;
pub mod protobuf;
pub mod score;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::{Router, middleware};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::service::Service;

use error::ApiError;

/// Request bodies up to 2 MiB: a full request of 1000 candidates, each with its show
/// inline, stays under it; far larger bodies are mistakes or abuse.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// A request's deadline when it sends none, and the longest it may ask for: an ad
/// server's auction is long over after a second.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 1_000;
/// What 503 answers ask clients to wait: overload at these latencies clears within a
/// second, and a not-ready server is usually loading a model.
pub const RETRY_AFTER_SECONDS: u64 = 1;
/// How long a request body may take to arrive, unless the request's deadline is sooner:
/// 2 MiB over a 100 Mbit/s link takes under 200 ms; a body still arriving after a second
/// is a slow or hostile client holding a place in line.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 1_000;
/// The header carrying a request's deadline, relative, in milliseconds.
pub const REQUEST_TIMEOUT_HEADER: &str = "x-request-timeout-ms";
const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id echoed and logged: a UUID is 36 bytes, a trace id 32; ids are
/// labels, not payloads.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The HTTP front end's configuration; the pipeline's is the service's.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_body_bytes: usize,
    /// Deadline of a request that sends no `x-request-timeout-ms`, and the longest one
    /// it may ask for.
    pub request_timeout: Duration,
    /// How long a body may take to arrive (the request's deadline may cut it shorter).
    pub body_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            body_timeout: Duration::from_millis(DEFAULT_BODY_TIMEOUT_MS),
        }
    }
}

/// What every handler reads: the service, this front end's configuration and the OpenAPI
/// document. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub service: Service,
    pub config: Arc<Config>,
    /// The served `/openapi.json`, built once with the router.
    pub openapi: Arc<String>,
}

/// Every route with its OpenAPI entry: each `routes!` registers both, so no route can
/// be served without being documented (`tests/protocols.rs` holds the router to the
/// document). The document is returned beside the router.
pub fn routes() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(score::score))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(models::list_models))
        .routes(routes!(kserve::server_metadata))
        .routes(routes!(kserve::live))
        .routes(routes!(kserve::ready))
        .routes(routes!(kserve::model_metadata))
        .routes(routes!(kserve::model_version_metadata))
        .routes(routes!(kserve::model_ready))
        .routes(routes!(kserve::model_version_ready))
        .routes(routes!(kserve::infer))
        .routes(routes!(kserve::infer_version))
        .routes(routes!(openapi::openapi))
        .split_for_parts()
}

/// The router over `service`. Every route, the fallback included, is wrapped by request
/// ids (in, sanitized and capped, or generated; echoed out) and by `observe` (metrics
/// and the request log).
pub fn app(service: Service, config: Config) -> Router {
    let (router, document) = routes();
    let state = ApiState {
        openapi: Arc::new(openapi::finish(document, &service)),
        service,
        config: Arc::new(config),
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
            REQUEST_ID_HEADER,
        )))
        .layer(SetRequestIdLayer::new(
            HeaderName::from_static(REQUEST_ID_HEADER),
            MakeRequestUuid,
        ))
        .layer(middleware::map_request(sanitize_request_id))
        .with_state(state)
}

/// Keeps a client's `x-request-id` to what logs and echoes can carry: at most
/// [`MAX_REQUEST_ID_BYTES`] of letters, digits and `-_.:/+=@`. An id with nothing left is
/// dropped, so that one is generated.
async fn sanitize_request_id(mut request: Request) -> Request {
    let name = HeaderName::from_static(REQUEST_ID_HEADER);
    let Some(value) = request.headers().get(&name) else {
        return request;
    };
    let allowed = |byte: &u8| byte.is_ascii_alphanumeric() || b"-_.:/+=@".contains(byte);
    if value.len() <= MAX_REQUEST_ID_BYTES && value.as_bytes().iter().all(allowed) {
        return request;
    }
    let clean: Vec<u8> = value
        .as_bytes()
        .iter()
        .copied()
        .filter(allowed)
        .take(MAX_REQUEST_ID_BYTES)
        .collect();
    match HeaderValue::from_bytes(&clean) {
        Ok(value) if !clean.is_empty() => {
            request.headers_mut().insert(name, value);
        }
        _ => {
            request.headers_mut().remove(name);
        }
    }
    request
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(extract::truncate(request.uri().path(), 256).to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
