//! The Open Inference Protocol's `inference.GRPCInferenceService`: health, server and
//! model metadata, and `ModelInfer`, the raw-tensor path run by
//! [`Service::infer_tensors`]. Input tensors come in `contents` (typed lists) or
//! `raw_input_contents` (little-endian bytes, one entry per input); outputs go back in
//! `contents`. An unknown model or version is NOT_FOUND, as the protocol's servers answer.

use tonic::{Request, Response, Status};

use crate::api::error::ApiError;
use crate::api::extract::truncate;
use crate::api::kserve::{PLATFORM, SERVER_NAME};
use crate::proto::inference as pb;
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::model_metadata_response::TensorMetadata;
use crate::service::tensors::{self, InvalidTensor, Tensor, TensorData, TensorRequest};
use crate::service::{Model, Service, ServiceError};

use super::admit::admitted;
use super::status::status;

/// The inference service over the shared [`Service`].
#[derive(Debug, Clone)]
pub struct Inference {
    service: Service,
}

impl Inference {
    pub fn new(service: Service) -> Inference {
        Inference { service }
    }

    fn model(&self, name: &str, version: &str) -> Result<std::sync::Arc<Model>, Status> {
        let version = (!version.is_empty()).then(|| truncate(version, 64));
        self.service
            .model(truncate(name, 256), version)
            .map_err(error_status)
    }
}

/// A service error's status; an unknown model is NOT_FOUND here.
fn error_status(error: ServiceError) -> Status {
    match error {
        ServiceError::UnknownModel(name) => status(&ApiError::ModelNotFound(name)),
        other => status(&ApiError::from(other)),
    }
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.service.readiness().is_ok();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        self.model(&request.name, &request.version)?;
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let model = self.model(&request.name, &request.version)?;
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
        Ok(Response::new(pb::ModelMetadataResponse {
            name: model.name().to_string(),
            versions: vec![model.version().to_string()],
            platform: PLATFORM.to_string(),
            inputs: describe(tensors::input_metadata(&model)),
            outputs: describe(tensors::output_metadata(&model)),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let (ticket, deadline) = admitted(&request)?;
        let permit = self
            .service
            .wait_for_slot(ticket, deadline)
            .await
            .map_err(error_status)?;
        let request = request.into_inner();
        let raw = &request.raw_input_contents;
        if !raw.is_empty() && raw.len() != request.inputs.len() {
            return Err(error_status(
                InvalidTensor::new(
                    "raw_input_contents",
                    format!(
                        "{} raw contents for {} inputs; one per input",
                        raw.len(),
                        request.inputs.len()
                    ),
                )
                .into(),
            ));
        }
        let inputs = request
            .inputs
            .into_iter()
            .enumerate()
            .map(|(index, input)| tensor_from_message(index, input, raw.get(index)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|invalid| error_status(invalid.into()))?;
        let answer = self
            .service
            .infer_tensors(
                TensorRequest {
                    model: truncate(&request.model_name, 256).to_string(),
                    version: (!request.model_version.is_empty())
                        .then(|| truncate(&request.model_version, 64).to_string()),
                    inputs,
                    outputs: request
                        .outputs
                        .into_iter()
                        .map(|output| output.name)
                        .collect(),
                    deadline,
                },
                permit,
            )
            .await
            .map_err(error_status)?;
        let outputs = answer
            .outputs
            .into_iter()
            .map(|tensor| {
                let datatype = tensor.data.datatype().to_string();
                let mut contents = pb::InferTensorContents::default();
                match tensor.data {
                    TensorData::Int64(values) => contents.int64_contents = values,
                    TensorData::Float32(values) => contents.fp32_contents = values,
                    TensorData::Float64(values) => contents.fp64_contents = values,
                }
                InferOutputTensor {
                    name: tensor.name,
                    datatype,
                    shape: tensor.shape,
                    parameters: Default::default(),
                    contents: Some(contents),
                }
            })
            .collect();
        Ok(Response::new(pb::ModelInferResponse {
            model_name: answer.model,
            model_version: answer.version,
            id: request.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: Vec::new(),
        }))
    }
}

/// One input tensor from its typed `contents`, or from `raw` (little-endian elements)
/// when the request sends raw contents. Only the datatypes graphs use are read.
fn tensor_from_message(
    index: usize,
    input: InferInputTensor,
    raw: Option<&Vec<u8>>,
) -> Result<Tensor, InvalidTensor> {
    let at = || format!("inputs[{index}]");
    let contents = input.contents.unwrap_or_default();
    let data = match (input.datatype.as_str(), raw) {
        ("INT64", None) => TensorData::Int64(contents.int64_contents),
        ("FP32", None) => TensorData::Float32(contents.fp32_contents),
        ("INT64", Some(bytes)) => TensorData::Int64(
            little_endian::<8>(bytes, &at)?
                .map(i64::from_le_bytes)
                .collect(),
        ),
        ("FP32", Some(bytes)) => TensorData::Float32(
            little_endian::<4>(bytes, &at)?
                .map(f32::from_le_bytes)
                .collect(),
        ),
        (other, _) => return Err(tensors::unsupported_datatype(at(), other)),
    };
    Ok(Tensor {
        name: input.name,
        shape: input.shape,
        data,
    })
}

/// `bytes` as elements of `N` bytes; an error when its length is not a multiple of `N`.
fn little_endian<'a, const N: usize>(
    bytes: &'a [u8],
    at: &impl Fn() -> String,
) -> Result<impl Iterator<Item = [u8; N]> + 'a, InvalidTensor> {
    if !bytes.len().is_multiple_of(N) {
        return Err(InvalidTensor::new(
            at(),
            format!(
                "{} raw bytes is not a whole number of {N}-byte elements",
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| <[u8; N]>::try_from(chunk).unwrap_or([0; N])))
}
