//! The admin router, served on its own listener (loopback by default, see
//! `serve::AdminArgs`), never on the public one: `POST /admin/reload` runs a reload pass
//! now and reports it; `POST /admin/rollback[?model=NAME]` serves the version below the
//! served one. Optionally every route requires `Authorization: Bearer <token>`, compared in
//! constant time.
//!
//! Its error codes are its own (operators read them, ad servers never see them), so they
//! are not in the public API's table ([`super::error`]). This module knows HTTP; the work
//! is the [`Reloader`]'s, run on a blocking thread.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::service::reload::{LoadFailure, ReloadReport};
use crate::service::{Reloader, RollbackError, Service};

/// What the admin routes act on.
#[derive(Clone)]
struct AdminState {
    service: Service,
    reloader: Arc<Reloader>,
    /// The bearer token every request must carry, when one is configured.
    token: Option<Arc<[u8]>>,
}

/// The admin router over `service` and its `reloader`; with a `token`, requests without
/// `Authorization: Bearer <token>` are answered 401.
pub fn admin_app(service: Service, reloader: Arc<Reloader>, token: Option<String>) -> Router {
    let state = AdminState {
        service,
        reloader,
        token: token.map(|token| Arc::from(token.into_bytes())),
    };
    Router::new()
        .route("/admin/reload", post(reload))
        .route("/admin/rollback", post(rollback))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "not_found", "no such admin route") })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Refuses a request without the configured bearer token. The comparison takes the same
/// time wherever the first wrong byte is (a token's length is not secret).
async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(presented) if constant_time_eq::constant_time_eq(presented, token) => {
            next.run(request).await
        }
        _ => {
            tracing::warn!(path = %request.uri().path(), "admin request refused: missing or wrong bearer token");
            let mut response = failure(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this admin route needs `Authorization: Bearer <token>`",
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// `POST /admin/reload`: one reload pass now (as a poll or SIGHUP would run it). 200 when
/// no bundle was refused, 422 `bundle_refused` when one was (the served models stay);
/// the body lists what loaded, what failed and what is served.
async fn reload(State(state): State<AdminState>) -> Response {
    let (service, reloader) = (state.service.clone(), Arc::clone(&state.reloader));
    let outcome = tokio::task::spawn_blocking(move || reloader.reload(&service)).await;
    let report = match outcome {
        Ok(Ok(report)) => report,
        Ok(Err(error)) => {
            tracing::error!(%error, "admin reload failed");
            return failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload_failed",
                &error.to_string(),
            );
        }
        Err(error) => {
            tracing::error!(%error, "admin reload task failed");
            return failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload_failed",
                "the reload task failed",
            );
        }
    };
    let ReloadReport { loaded, failed } = report;
    tracing::info!(loaded = loaded.len(), failed = failed.len(), "admin reload");
    let mut body = json!({
        "loaded": loaded.iter().map(|(name, version)| json!({"model": name, "version": version})).collect::<Vec<_>>(),
        "failed": failures(&failed),
        "served": served(&state.service),
    });
    if failed.is_empty() {
        return Json(body).into_response();
    }
    body["error"] = json!({
        "code": "bundle_refused",
        "message": format!("{} bundle(s) refused; the served models stay", failed.len()),
    });
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct RollbackQuery {
    model: Option<String>,
}

/// `POST /admin/rollback[?model=NAME]`: serves the version below the served one of
/// `NAME` (the default model when absent). 200 with `from` and `to`; 404 `model_not_found`
/// for a model not served; 409 `nothing_earlier` when no lower version loads.
async fn rollback(State(state): State<AdminState>, Query(query): Query<RollbackQuery>) -> Response {
    let (service, reloader) = (state.service.clone(), Arc::clone(&state.reloader));
    let outcome =
        tokio::task::spawn_blocking(move || reloader.rollback(&service, query.model.as_deref()))
            .await;
    match outcome {
        Ok(Ok(rollback)) => Json(json!({
            "model": rollback.name,
            "from": rollback.from,
            "to": rollback.to,
            "failed": failures(&rollback.failed),
            "served": served(&state.service),
        }))
        .into_response(),
        Ok(Err(error)) => {
            tracing::error!(%error, "rollback refused");
            let (status, code) = match &error {
                RollbackError::UnknownModel(_) | RollbackError::NoDefault => {
                    (StatusCode::NOT_FOUND, "model_not_found")
                }
                RollbackError::NothingEarlier { .. } => (StatusCode::CONFLICT, "nothing_earlier"),
                RollbackError::Bundle(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reload_failed"),
            };
            failure(status, code, &error.to_string())
        }
        Err(error) => {
            tracing::error!(%error, "rollback task failed");
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload_failed",
                "the rollback task failed",
            )
        }
    }
}

fn failures(failed: &[LoadFailure]) -> Vec<Value> {
    failed
        .iter()
        .map(|failure| json!({"model": failure.name, "version": failure.version, "reason": failure.reason}))
        .collect()
}

/// The models served now, by name and version.
fn served(service: &Service) -> Vec<Value> {
    service
        .models()
        .models
        .values()
        .map(|model| json!({"model": model.name(), "version": model.version()}))
        .collect()
}

/// An admin error: `{"error": {"code", "message"}}` with `status`.
fn failure(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
