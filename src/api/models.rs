//! `GET /v1/models`: the served models, their versions and manifests.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;

/// The served models.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    models: Vec<ServedModel>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServedModel {
    name: String,
    version: u32,
    /// Whether requests naming no model get this one.
    default: bool,
    /// The bundle's manifest (features, heads, calibration, training summary).
    #[schema(value_type = Object)]
    manifest: serde_json::Value,
}

#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "The served models.", body = ModelList)))]
pub(super) async fn list_models(State(state): State<ApiState>) -> Json<ModelList> {
    let served = state.service.models();
    let default = served.get(None).map(|model| model.name().to_string());
    let models = served
        .models
        .values()
        .map(|model| ServedModel {
            name: model.name().to_string(),
            version: model.version(),
            default: default.as_deref() == Some(model.name()),
            manifest: serde_json::to_value(&model.manifest).unwrap_or_default(),
        })
        .collect();
    Json(ModelList { models })
}
