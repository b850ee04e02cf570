//! The raw-tensor path (KServe's `/v2/models/{name}/infer` and gRPC `ModelInfer`): the
//! model's own input tensors in, its `logits` and each head's calibrated probability out,
//! with no feature assembly. Every tensor is checked against the graph contract
//! ([`graph::inputs`]: names, element types, shapes, lengths) here, and the runtime checks
//! ids and finiteness, all before tract runs. The call goes through the same admission,
//! deadline and metrics as `/score`.
//!
//! This module knows the graph contract and the Open Inference Protocol's tensor
//! vocabulary (datatype names, `-1` dimensions); it knows nothing of HTTP, JSON or gRPC.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::features::{Scope, ScopeTensors, ScopeWidths};
use crate::graph::{self, Dim, Element, Input, Part};
use crate::runtime::RuntimeError;

use super::admission::Permit;
use super::metrics::{ShedReason, Stage};
use super::models::Model;
use super::{Service, ServiceError, check_deadline, infer};

/// The protocol's datatype of calibrated probabilities: f64, the precision `/score`
/// answers in, so that both paths give the same numbers.
pub const PROBABILITY_DATATYPE: &str = "FP64";

/// A tensor's values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Int64(Vec<i64>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::Int64(values) => values.len(),
            TensorData::Float32(values) => values.len(),
            TensorData::Float64(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The protocol's name of this element type.
    pub fn datatype(&self) -> &'static str {
        match self {
            TensorData::Int64(_) => datatype(Element::Int64),
            TensorData::Float32(_) => datatype(Element::Float32),
            TensorData::Float64(_) => PROBABILITY_DATATYPE,
        }
    }
}

/// One named tensor, as a client sends it or the service answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// A raw-tensor inference request, decoded by a front end.
#[derive(Debug, Clone)]
pub struct TensorRequest {
    pub model: String,
    /// The version asked for; any served version when absent.
    pub version: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Names of the outputs wanted; all of them when empty.
    pub outputs: Vec<String>,
    pub deadline: Instant,
}

/// The answer: the model that ran and the outputs asked for, in the order asked (the
/// graph's order when all).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorResponse {
    pub model: String,
    pub version: String,
    pub outputs: Vec<Tensor>,
}

/// A tensor the model cannot take: which one (its name, or `inputs[i]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{tensor}: {message}")]
pub struct InvalidTensor {
    pub tensor: String,
    pub message: String,
}

impl InvalidTensor {
    pub fn new(tensor: impl Into<String>, message: impl Into<String>) -> InvalidTensor {
        InvalidTensor {
            tensor: tensor.into(),
            message: message.into(),
        }
    }
}

/// The error for a tensor of a datatype no graph input takes (the front ends read only
/// those that some input takes).
pub fn unsupported_datatype(tensor: String, datatype: &str) -> InvalidTensor {
    let shown: String = datatype.chars().take(32).collect();
    InvalidTensor::new(
        tensor,
        format!("datatype `{shown}`; the model's inputs are INT64 and FP32"),
    )
}

/// The protocol's name of a graph element type.
pub fn datatype(element: Element) -> &'static str {
    match element {
        Element::Int64 => "INT64",
        Element::Float32 => "FP32",
    }
}

/// The protocol's form of a dimension: its size, or -1 when variable.
pub fn dimension(dim: Dim) -> i64 {
    match dim {
        Dim::Fixed(size) => i64::try_from(size).unwrap_or(i64::MAX),
        Dim::Symbolic(_) => -1,
    }
}

/// Name, datatype and shape of one tensor, as model metadata lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// The model's inputs, from the graph contract.
pub fn input_metadata(model: &Model) -> Vec<TensorMetadata> {
    graph::inputs(&model.manifest.features)
        .iter()
        .map(|input| TensorMetadata {
            name: input.name(),
            datatype: datatype(input.element()),
            shape: input.shape().map(dimension).to_vec(),
        })
        .collect()
}

/// The model's outputs: the graph's `logits`, then one calibrated probability per head
/// (named as the manifest names the head), in column order.
pub fn output_metadata(model: &Model) -> Vec<TensorMetadata> {
    let candidates = dimension(graph::rows(Scope::Candidate));
    let mut outputs = vec![TensorMetadata {
        name: graph::OUTPUT_NAME.to_string(),
        datatype: datatype(Element::Float32),
        shape: graph::output_shape(model.heads().width())
            .map(dimension)
            .to_vec(),
    }];
    outputs.extend(
        model
            .manifest
            .heads_by_column()
            .unwrap_or_default()
            .into_iter()
            .map(|head| TensorMetadata {
                name: head.name.clone(),
                datatype: PROBABILITY_DATATYPE,
                shape: vec![candidates],
            }),
    );
    outputs
}

impl Service {
    /// The served model `name` (at `version`, when given); `UnknownModel` otherwise.
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, ServiceError> {
        let models = self.models();
        let unknown = || match version {
            Some(version) => ServiceError::UnknownModel(format!("{name}` version `{version}")),
            None => ServiceError::UnknownModel(name.to_string()),
        };
        let model = models.models.get(name).ok_or_else(unknown)?;
        match version {
            Some(version) if version != model.version().to_string() => Err(unknown()),
            _ => Ok(Arc::clone(model)),
        }
    }

    /// Runs the model on raw tensors, for a request admitted as `/score`'s are
    /// ([`Service::enter`], [`Service::wait_for_slot`]): checked against the graph
    /// contract, then run on a blocking thread holding `permit`, within the deadline.
    pub async fn infer_tensors(
        &self,
        request: TensorRequest,
        permit: Permit,
    ) -> Result<TensorResponse, ServiceError> {
        let metrics = self.metrics();
        let decoding = Instant::now();
        if self.models().is_empty() {
            metrics.observe_shed(ShedReason::NotReady);
            return Err(ServiceError::NotReady);
        }
        let model = self.model(&request.model, request.version.as_deref())?;
        let wanted = wanted_outputs(&model, &request.outputs)?;
        let (request_tensors, candidate_tensors) =
            scope_tensors(&model, request.inputs, self.config().limits.max_candidates)?;
        metrics.observe_stage(Stage::Decode, decoding.elapsed());
        check_deadline(request.deadline)?;

        let running = Arc::clone(&model);
        let started = Instant::now();
        let logits = infer::blocking(permit, request.deadline, move || {
            running
                .runtime()
                .infer(&request_tensors, &candidate_tensors)
        })
        .await?
        .map_err(|error| runtime_error(&model, error))?;
        metrics.observe_stage(Stage::Inference, started.elapsed());

        let rows = logits.rows;
        let mut outputs = Vec::with_capacity(wanted.len());
        for name in wanted {
            let data = if name == graph::OUTPUT_NAME {
                TensorData::Float32(logits.values.clone())
            } else {
                let head = model
                    .manifest
                    .heads
                    .iter()
                    .find(|head| head.name == name)
                    .ok_or_else(|| ServiceError::Internal(format!("no head `{name}`")))?;
                let probabilities: Vec<f64> = (0..rows)
                    .map(|row| head.calibration.probability(logits.row(row)[head.index]))
                    .collect();
                if probabilities.iter().any(|value| !value.is_finite()) {
                    return Err(ServiceError::Internal(format!(
                        "head `{name}` gave a probability that is not finite"
                    )));
                }
                TensorData::Float64(probabilities)
            };
            let shape = match data {
                TensorData::Float32(_) => vec![rows as i64, logits.heads as i64],
                _ => vec![rows as i64],
            };
            outputs.push(Tensor { name, shape, data });
        }
        Ok(TensorResponse {
            model: model.name().to_string(),
            version: model.version().to_string(),
            outputs,
        })
    }
}

/// The outputs to return: those asked for, each known and asked once, or all of them.
fn wanted_outputs(model: &Model, asked: &[String]) -> Result<Vec<String>, InvalidTensor> {
    let known: Vec<String> = output_metadata(model)
        .into_iter()
        .map(|output| output.name)
        .collect();
    if asked.is_empty() {
        return Ok(known);
    }
    for (index, name) in asked.iter().enumerate() {
        if !known.contains(name) {
            return Err(InvalidTensor::new(
                format!("outputs[{index}]"),
                format!("the model has no output `{name}`; it has {known:?}"),
            ));
        }
        if asked[..index].contains(name) {
            return Err(InvalidTensor::new(
                format!("outputs[{index}]"),
                format!("output `{name}` is asked for twice"),
            ));
        }
    }
    Ok(asked.to_vec())
}

/// The request's and the candidates' tensors, each input checked against the graph:
/// every input given once and no other, its datatype, its shape (one request row, the
/// same `N` candidate rows in every candidate input, `1 <= N <= max_candidates`, the
/// graph's columns), and its length.
fn scope_tensors(
    model: &Model,
    tensors: Vec<Tensor>,
    max_candidates: usize,
) -> Result<(ScopeTensors, ScopeTensors), InvalidTensor> {
    let inputs = graph::inputs(&model.manifest.features);
    let mut given: HashMap<String, Tensor> = HashMap::with_capacity(tensors.len());
    for (index, tensor) in tensors.into_iter().enumerate() {
        if !inputs.iter().any(|input| input.name() == tensor.name) {
            let names: Vec<String> = inputs.iter().map(Input::name).collect();
            return Err(InvalidTensor::new(
                format!("inputs[{index}]"),
                format!("the model has no input `{}`; it has {names:?}", tensor.name),
            ));
        }
        if given.contains_key(&tensor.name) {
            return Err(InvalidTensor::new(
                format!("inputs[{index}]"),
                format!("input `{}` is given twice", tensor.name),
            ));
        }
        given.insert(tensor.name.clone(), tensor);
    }
    let mut candidates: Option<(usize, String)> = None;
    let mut scopes = Scope::ALL.map(|scope| {
        let widths = ScopeWidths::of(&model.manifest.features, scope);
        ScopeTensors {
            rows: 0,
            widths,
            ids: Vec::new(),
            bag_ids: Vec::new(),
            bag_mask: Vec::new(),
            dense: Vec::new(),
            cold_start: Vec::new(),
        }
    });
    for input in &inputs {
        let name = input.name();
        let tensor = given.remove(&name).ok_or_else(|| {
            InvalidTensor::new(&name, "this input of the model is missing from the request")
        })?;
        let expected = datatype(input.element());
        if tensor.data.datatype() != expected {
            return Err(InvalidTensor::new(
                &name,
                format!(
                    "datatype {}; the model takes {expected}",
                    tensor.data.datatype()
                ),
            ));
        }
        let rows = checked_rows(input, &tensor, &mut candidates, max_candidates)?;
        let scope = &mut scopes[input.scope as usize];
        scope.rows = rows;
        // The datatype was checked against the part's element above, so the last arm
        // answers only what that check already refused.
        match (input.part, tensor.data) {
            (Part::Ids, TensorData::Int64(values)) => scope.ids = values,
            (Part::BagIds, TensorData::Int64(values)) => scope.bag_ids = values,
            (Part::BagMask, TensorData::Float32(values)) => scope.bag_mask = values,
            (Part::Dense, TensorData::Float32(values)) => scope.dense = values,
            (_, data) => {
                return Err(InvalidTensor::new(
                    &name,
                    format!("datatype {}; the model takes {expected}", data.datatype()),
                ));
            }
        }
    }
    let [mut request, mut candidate] = scopes;
    // A scope with no inputs at all (no columns) still has its rows.
    request.rows = 1;
    candidate.rows = candidates.map_or(0, |(rows, _)| rows);
    for scope in [&mut request, &mut candidate] {
        scope.cold_start = vec![false; scope.rows];
    }
    Ok((request, candidate))
}

/// The rows of `tensor`, after checking its shape against `input` and its length against
/// its shape. Candidate inputs must agree on their rows, which `candidates` records.
fn checked_rows(
    input: &Input,
    tensor: &Tensor,
    candidates: &mut Option<(usize, String)>,
    max_candidates: usize,
) -> Result<usize, InvalidTensor> {
    let name = input.name();
    let expected: Vec<i64> = input.shape().map(dimension).to_vec();
    let wrong_shape = || {
        InvalidTensor::new(
            &name,
            format!("shape {:?}; the model takes {expected:?}", tensor.shape),
        )
    };
    let &[rows, columns] = tensor.shape.as_slice() else {
        return Err(wrong_shape());
    };
    if columns != expected[1] || rows < 0 || (expected[0] >= 0 && rows != expected[0]) {
        return Err(wrong_shape());
    }
    let rows = usize::try_from(rows).map_err(|_| wrong_shape())?;
    if input.scope == Scope::Candidate {
        if rows == 0 || rows > max_candidates {
            return Err(InvalidTensor::new(
                &name,
                format!("{rows} candidate rows; between 1 and {max_candidates} allowed"),
            ));
        }
        match candidates {
            Some((seen, first)) if *seen != rows => {
                return Err(InvalidTensor::new(
                    &name,
                    format!("{rows} rows, but `{first}` has {seen}; candidate inputs share N"),
                ));
            }
            Some(_) => {}
            None => *candidates = Some((rows, name.clone())),
        }
    }
    let length = rows * input.columns;
    if tensor.data.len() != length {
        return Err(InvalidTensor::new(
            &name,
            format!(
                "{} values for shape {:?}; {length} expected",
                tensor.data.len(),
                tensor.shape
            ),
        ));
    }
    Ok(rows)
}

/// A runtime failure: a tensor the model cannot take (an id outside its table, a value
/// that is not finite) is the client's; anything else is internal.
fn runtime_error(model: &Model, error: RuntimeError) -> ServiceError {
    match &error {
        RuntimeError::IdOutOfRange { feature, .. } => {
            let input = model
                .manifest
                .features
                .iter()
                .find(|spec| &spec.name == feature)
                .map_or_else(|| feature.clone(), |spec| spec.input.clone());
            InvalidTensor::new(input, error.to_string()).into()
        }
        RuntimeError::NotFinite { input, .. } => {
            InvalidTensor::new(input.clone(), error.to_string()).into()
        }
        _ => ServiceError::Internal(format!("model `{}`: {error}", model.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dimensions and datatypes are written as the protocol writes them.
    #[test]
    fn protocol_names_of_dimensions_and_datatypes() {
        assert_eq!(dimension(Dim::Fixed(7)), 7);
        assert_eq!(dimension(Dim::Symbolic(graph::CANDIDATES_DIM)), -1);
        assert_eq!(datatype(Element::Int64), "INT64");
        assert_eq!(datatype(Element::Float32), "FP32");
        assert_eq!(TensorData::Float64(vec![]).datatype(), "FP64");
    }
}
