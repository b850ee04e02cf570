//! The KServe Open Inference Protocol over REST: model metadata read from the graph
//! contract (`graph`), so that it follows the exported graph. The protocol's health
//! routes share the handlers of `health`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::json;

use crate::graph::{self, Dim, Element};

use super::ApiState;
use super::error::ApiError;
use super::extract::truncate;

/// `GET /v2/models/{name}`: the model's inputs and output as the protocol describes them.
pub(super) async fn model_metadata(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let served = state.service.models();
    let model = served
        .models
        .get(&name)
        .ok_or_else(|| ApiError::ModelNotFound(truncate(&name, 256).to_string()))?;
    let inputs: Vec<serde_json::Value> = graph::inputs(&model.manifest.features)
        .iter()
        .map(|input| {
            json!({
                "name": input.name(),
                "datatype": datatype(input.element()),
                "shape": input.shape().map(dimension),
            })
        })
        .collect();
    let heads = model.heads().width();
    Ok(Json(json!({
        "name": model.name(),
        "versions": [model.version().to_string()],
        "platform": "onnx_tract",
        "inputs": inputs,
        "outputs": [{
            "name": graph::OUTPUT_NAME,
            "datatype": datatype(Element::Float32),
            "shape": graph::output_shape(heads).map(dimension),
        }],
    })))
}

/// The protocol's name of a tensor element type.
fn datatype(element: Element) -> &'static str {
    match element {
        Element::Int64 => "INT64",
        Element::Float32 => "FP32",
    }
}

/// The protocol's form of a dimension: its size, or -1 when variable.
fn dimension(dim: Dim) -> i64 {
    match dim {
        Dim::Fixed(size) => i64::try_from(size).unwrap_or(i64::MAX),
        Dim::Symbolic(_) => -1,
    }
}
