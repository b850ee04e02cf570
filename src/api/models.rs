//! `GET /v1/models`: the served models, their versions and manifests.

use axum::Json;
use axum::extract::State;
use serde_json::json;

use super::ApiState;

pub(super) async fn list_models(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let served = state.service.models();
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
