//! Liveness, readiness and the Prometheus exposition: the routes an orchestrator and a
//! scraper call.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::ServiceError;

use super::ApiState;
use super::error::ApiError;

/// `GET /healthz`: the process answers.
pub(super) async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

/// `GET /readyz`: a model is loaded and the server is not draining. The store's health is
/// never required: with the store down, requests score cold (degraded).
pub(super) async fn ready(
    State(state): State<ApiState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let readiness = state.service.readiness()?;
    Ok(Json(json!({
        "status": "ready",
        "models": readiness.models,
        "store": readiness.store,
    })))
}

/// `GET /metrics`: every family, Prometheus text format.
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
