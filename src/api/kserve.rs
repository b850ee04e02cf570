//! The KServe Open Inference Protocol (predict v2) over REST: server and model metadata,
//! health and readiness, and `infer`, the raw-tensor path (the model's own input tensors,
//! no feature assembly). Metadata comes from the graph contract through the service
//! ([`tensors`]), so it follows the exported graph. Errors keep the status of the one
//! table ([`super::error`]) in the protocol's body, `{"error": "<message>"}`; an unknown
//! model or version is 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::service::tensors::{self, Tensor, TensorData, TensorRequest};
use crate::service::{Model, ServiceError};

use super::error::{ApiError, InternalDetail, OipErrorBody};
use super::extract::{self, Deadline, truncate};
use super::{ApiState, RETRY_AFTER_SECONDS};

/// The server's name in `GET /v2`.
pub const SERVER_NAME: &str = "podscore";
/// The platform model metadata names: ONNX graphs run by tract.
pub const PLATFORM: &str = "onnx_tract";

/// An error in the protocol's shape: the table's status, `{"error": message}`.
#[derive(Debug)]
pub struct OipError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OipError {
    fn from(error: E) -> OipError {
        // The protocol's "model not found" is a 404, where `/score` answers 422.
        match error.into() {
            ApiError::Service(ServiceError::UnknownModel(name)) => {
                OipError(ApiError::ModelNotFound(name))
            }
            other => OipError(other),
        }
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        let (status, _) = self.0.describe();
        let body = OipErrorBody {
            error: self.0.message(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if let ApiError::Service(ServiceError::Internal(detail)) = self.0 {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

/// The protocol's `$metadata_server_response`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    name: String,
    version: String,
    extensions: Vec<String>,
}

/// One tensor of `$metadata_model_response`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    name: String,
    datatype: String,
    /// -1 for the variable (candidate) dimension.
    shape: Vec<i64>,
}

/// The protocol's `$metadata_model_response`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    name: String,
    versions: Vec<String>,
    platform: String,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
}

/// The protocol's `$inference_request`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    /// Accepted and ignored: no parameter changes inference.
    #[serde(default)]
    #[allow(dead_code, reason = "the protocol allows it; nothing reads it")]
    parameters: Option<serde_json::Map<String, Value>>,
    #[serde(deserialize_with = "crate::entities::object::list")]
    inputs: Vec<InferInput>,
    /// The outputs wanted; all of them when absent.
    #[serde(default, deserialize_with = "crate::entities::object::option_list")]
    outputs: Option<Vec<RequestedOutput>>,
}

/// The protocol's `$request_input`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferInput {
    name: String,
    #[serde(deserialize_with = "crate::entities::whole::list")]
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    #[allow(dead_code, reason = "the protocol allows it; nothing reads it")]
    parameters: Option<serde_json::Map<String, Value>>,
    /// Row-major, flat or nested; whole numbers for INT64.
    data: Value,
}

/// The protocol's `$request_output`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    name: String,
    #[serde(default)]
    #[allow(dead_code, reason = "the protocol allows it; nothing reads it")]
    parameters: Option<serde_json::Map<String, Value>>,
}

/// The protocol's `$inference_response`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<OutputTensor>,
}

/// The protocol's `$response_output`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputTensor {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    /// Row-major and flat: whole numbers for INT64.
    #[schema(value_type = Vec<f64>)]
    data: OutputData,
}

/// An output's values, row-major and flat.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OutputData {
    Int64(Vec<i64>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
}

/// The answers of both `infer` routes, for the document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "a description of answers only")]
enum InferAnswers {
    /// The outputs asked for (all by default).
    #[response(status = 200)]
    Outputs(InferResponse),
    /// A tensor the model cannot take, malformed JSON or an invalid header.
    #[response(status = 400)]
    Invalid(OipErrorBody),
    /// No such model or version.
    #[response(status = 404)]
    NotFound(OipErrorBody),
    /// Body over the configured limit.
    #[response(status = 413)]
    TooLarge(OipErrorBody),
    /// Content-Type is not JSON.
    #[response(status = 415)]
    NotJson(OipErrorBody),
    /// The body is not an inference request.
    #[response(status = 422)]
    NotARequest(OipErrorBody),
    /// Overloaded, or no model loaded.
    #[response(status = 503, headers(("retry-after" = u64, description = "Seconds to wait before retrying.")))]
    Unavailable(OipErrorBody),
    /// The deadline passed.
    #[response(status = 504)]
    Late(OipErrorBody),
}

/// `GET /v2`: the server's name, version and protocol extensions (none).
#[utoipa::path(get, path = "/v2", tag = "kserve",
    responses((status = 200, description = "Server metadata.", body = ServerMetadata)))]
pub(super) async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: SERVER_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: Vec::new(),
    })
}

/// `GET /v2/health/live`: 200 with an empty body while the process answers.
#[utoipa::path(get, path = "/v2/health/live", tag = "kserve",
    responses((status = 200, description = "Live (empty body).")))]
pub(super) async fn live() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2/health/ready`: 200 with an empty body when a model is loaded and the store
/// expects to answer.
#[utoipa::path(get, path = "/v2/health/ready", tag = "kserve",
    responses(
        (status = 200, description = "Ready (empty body)."),
        (status = 503, description = "Not ready.", body = OipErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub(super) async fn ready(State(state): State<ApiState>) -> Result<StatusCode, OipError> {
    state.service.readiness()?;
    Ok(StatusCode::OK)
}

/// Model name and, on the versioned routes, version from the path.
#[derive(Debug, Deserialize)]
pub(super) struct ModelPath {
    name: String,
    #[serde(default)]
    version: Option<String>,
}

fn model_of(state: &ApiState, path: &ModelPath) -> Result<Arc<Model>, OipError> {
    let version = path.version.as_deref().map(|version| truncate(version, 64));
    Ok(state.service.model(truncate(&path.name, 256), version)?)
}

/// `GET /v2/models/{name}/ready`: 200 with an empty body when the model is served.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "kserve",
    params(("name" = String, Path, description = "The model's name.")),
    responses(
        (status = 200, description = "Ready (empty body)."),
        (status = 404, description = "No such model.", body = OipErrorBody),
    ))]
pub(super) async fn model_ready(
    State(state): State<ApiState>,
    Path(path): Path<ModelPath>,
) -> Result<StatusCode, OipError> {
    model_of(&state, &path)?;
    Ok(StatusCode::OK)
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "kserve",
    params(
        ("name" = String, Path, description = "The model's name."),
        ("version" = String, Path, description = "The model's version."),
    ),
    responses(
        (status = 200, description = "Ready (empty body)."),
        (status = 404, description = "No such model or version.", body = OipErrorBody),
    ))]
pub(super) async fn model_version_ready(
    state: State<ApiState>,
    path: Path<ModelPath>,
) -> Result<StatusCode, OipError> {
    model_ready(state, path).await
}

/// `GET /v2/models/{name}`: the model's inputs and outputs as the protocol describes
/// them: the graph's inputs, `logits`, and one calibrated probability per head.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "kserve",
    params(("name" = String, Path, description = "The model's name.")),
    responses(
        (status = 200, description = "Model metadata.", body = ModelMetadata),
        (status = 404, description = "No such model.", body = OipErrorBody),
    ))]
pub(super) async fn model_metadata(
    State(state): State<ApiState>,
    Path(path): Path<ModelPath>,
) -> Result<Json<ModelMetadata>, OipError> {
    let model = model_of(&state, &path)?;
    let describe = |metadata: Vec<tensors::TensorMetadata>| -> Vec<TensorMetadata> {
        metadata
            .into_iter()
            .map(|tensor| TensorMetadata {
                name: tensor.name,
                datatype: tensor.datatype.to_string(),
                shape: tensor.shape,
            })
            .collect()
    };
    Ok(Json(ModelMetadata {
        name: model.name().to_string(),
        versions: vec![model.version().to_string()],
        platform: PLATFORM.to_string(),
        inputs: describe(tensors::input_metadata(&model)),
        outputs: describe(tensors::output_metadata(&model)),
    }))
}

/// `GET /v2/models/{name}/versions/{version}`.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "kserve",
    params(
        ("name" = String, Path, description = "The model's name."),
        ("version" = String, Path, description = "The model's version."),
    ),
    responses(
        (status = 200, description = "Model metadata.", body = ModelMetadata),
        (status = 404, description = "No such model or version.", body = OipErrorBody),
    ))]
pub(super) async fn model_version_metadata(
    state: State<ApiState>,
    path: Path<ModelPath>,
) -> Result<Json<ModelMetadata>, OipError> {
    model_metadata(state, path).await
}

/// `POST /v2/models/{name}/infer`: the model run on the request's tensors, each checked
/// against the graph before tract sees it.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "kserve",
    params(
        ("name" = String, Path, description = "The model's name."),
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline in milliseconds from arrival, capped by the server's request timeout."),
    ),
    request_body(content = InferRequest, content_type = "application/json"),
    responses(InferAnswers))]
pub(super) async fn infer(
    State(state): State<ApiState>,
    Path(path): Path<ModelPath>,
    deadline: Result<Deadline, ApiError>,
    request: Request,
) -> Result<Json<InferResponse>, OipError> {
    // The steps of `/score`: admission before the body is read, a slot before it is
    // decoded.
    let Deadline(deadline) = deadline?;
    extract::require_json(request.headers())?;
    let service = &state.service;
    let ticket = service.enter(deadline)?;
    let bytes = extract::read_body(request, &state, deadline).await?;
    let permit = service.wait_for_slot(ticket, deadline).await?;
    let request: InferRequest = extract::decode_json(&bytes)?;
    drop(bytes);
    let inputs = request
        .inputs
        .into_iter()
        .enumerate()
        .map(|(index, input)| tensor_from_json(index, input))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServiceError::from)?;
    let outputs = request
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|output| output.name)
        .collect();
    let answer = service
        .infer_tensors(
            TensorRequest {
                model: truncate(&path.name, 256).to_string(),
                version: path
                    .version
                    .map(|version| truncate(&version, 64).to_string()),
                inputs,
                outputs,
                deadline,
            },
            permit,
        )
        .await?;
    Ok(Json(InferResponse {
        model_name: answer.model,
        model_version: answer.version,
        id: request.id,
        outputs: answer
            .outputs
            .into_iter()
            .map(|tensor| OutputTensor {
                name: tensor.name,
                datatype: tensor.data.datatype().to_string(),
                shape: tensor.shape,
                data: match tensor.data {
                    TensorData::Int64(values) => OutputData::Int64(values),
                    TensorData::Float32(values) => OutputData::Float32(values),
                    TensorData::Float64(values) => OutputData::Float64(values),
                },
            })
            .collect(),
    }))
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "kserve",
    params(
        ("name" = String, Path, description = "The model's name."),
        ("version" = String, Path, description = "The model's version."),
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline in milliseconds from arrival, capped by the server's request timeout."),
    ),
    request_body(content = InferRequest, content_type = "application/json"),
    responses(InferAnswers))]
pub(super) async fn infer_version(
    state: State<ApiState>,
    path: Path<ModelPath>,
    deadline: Result<Deadline, ApiError>,
    request: Request,
) -> Result<Json<InferResponse>, OipError> {
    infer(state, path, deadline, request).await
}

/// One `$request_input` as a tensor: `data` flat or nested (row-major), every element of
/// the declared datatype. Only the datatypes graphs use are read; any other is refused
/// here, naming what the request sent.
fn tensor_from_json(index: usize, input: InferInput) -> Result<Tensor, tensors::InvalidTensor> {
    let at = || format!("inputs[{index}]");
    let mut leaves = Vec::new();
    flatten(&input.data, &mut leaves);
    let data = match input.datatype.as_str() {
        "INT64" => TensorData::Int64(
            leaves
                .iter()
                .map(|value| value.as_i64())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    tensors::InvalidTensor::new(at(), "INT64 data must be whole numbers")
                })?,
        ),
        "FP32" => TensorData::Float32(
            leaves
                .iter()
                .map(|value| value.as_f64().map(|number| number as f32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| tensors::InvalidTensor::new(at(), "FP32 data must be numbers"))?,
        ),
        other => return Err(tensors::unsupported_datatype(at(), other)),
    };
    Ok(Tensor {
        name: input.name,
        shape: input.shape,
        data,
    })
}

/// The leaves of nested arrays, in row-major order.
fn flatten<'a>(value: &'a Value, leaves: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, leaves)),
        leaf => leaves.push(leaf),
    }
}
