//! Liveness, readiness and the Prometheus exposition: the routes an orchestrator and a
//! scraper call.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::service::ServiceError;

use super::ApiState;
use super::error::{ApiError, ErrorBody};

/// `{"status": "live"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    status: &'static str,
}

/// `{"status": "ready", ...}`: what is served.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    status: &'static str,
    /// Models being served.
    models: usize,
    /// The feature store's backend.
    store: &'static str,
}

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process answers.", body = Live)))]
pub(super) async fn live() -> Json<Live> {
    Json(Live { status: "live" })
}

/// `GET /readyz`: a model is loaded and the server is not draining. The store's health is
/// never required: with the store down, requests score cold (degraded).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to score.", body = Ready),
        (status = 503, description = "No model loaded, or the server is draining.", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub(super) async fn ready(State(state): State<ApiState>) -> Result<Json<Ready>, ApiError> {
    let readiness = state.service.readiness()?;
    Ok(Json(Ready {
        status: "ready",
        models: readiness.models,
        store: readiness.store,
    }))
}

/// `GET /metrics`: every family, Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition.",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub(super) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let text = state.service.metrics().render().map_err(|error| {
        ApiError::from(ServiceError::Internal(format!(
            "rendering metrics: {error}"
        )))
    })?;
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}
