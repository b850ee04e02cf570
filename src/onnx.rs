//! The ONNX exporter: trained weights and a manifest in, `model.onnx` bytes out.
//!
//! The graph is written with the protobuf structs that `tract_onnx::pb` makes public and
//! encoded with `prost`, so that the file tract reads is the file we wrote, field for
//! field. Its inputs, output and metadata are those of the graph contract (`graph`):
//!
//! - the inputs of [`graph::inputs`]: per scope, request first, ids, bag ids, bag mask and
//!   dense values, each left out when it has no columns; request-scope inputs have
//!   leading dimension 1, candidate-scope ones the symbolic `N`;
//! - per scope, a feature vector: the concatenation, in spec order, of an embedding per
//!   id feature, a masked mean of embeddings per bag, and the raw columns of dense and
//!   numeric features. The graph computes the same first-layer product from three
//!   pieces per scope instead (all ids, all bags, all dense columns) with the weight's
//!   rows permuted to match, because tract runs one product per concatenated piece;
//! - the first encoder layer split by scope, so that the request-scope half (and the
//!   bias) is computed once per request and broadcast over the `N` candidates;
//! - the rest of the encoder, the folded batch norm, and one tower per head, written as
//!   one fused tower (see [`export`]) whose output is `logits`, `[N, heads]`;
//! - metadata [`graph::embedding_rows_key`]: each id feature's table size, which the
//!   runtime checks ids against (the tables are stacked in the graph).
//!
//! [`Weights`] is the hand-over format between the trainer and this module: plain
//! row-major `f32` tensors by name. This module knows protobuf and the ONNX operator set;
//! it knows nothing of candle, tract's runtime or HTTP.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use crate::bundle::Manifest;
use crate::features::{FeatureSpec, Kind, Scope, ScopeWidths, Transform, Vocabularies};
use crate::graph::{self, Dim, Element, OUTPUT_NAME, Part};

/// ONNX operator set the graph is written against. 13 is the first with `ReduceSum` and
/// `Unsqueeze` taking their axes as inputs, which tract, ONNX Runtime and the checker
/// all read the same way.
pub const OPSET_VERSION: i64 = 13;
/// IR version 8 (ONNX 1.10) is read by every runtime we test against and allows opset 13.
pub const IR_VERSION: i64 = 8;
pub const PRODUCER_NAME: &str = "podscore";

/// One weight tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl WeightTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> WeightTensor {
        WeightTensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> WeightTensor {
        let len = shape.iter().product();
        WeightTensor {
            shape,
            data: vec![0.0; len],
        }
    }
}

/// Trained parameters by name; the names are those [`weight_shapes`] lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    pub tensors: BTreeMap<String, WeightTensor>,
}

impl Weights {
    /// The tensor called `name`, or [`ExportError::MissingWeight`].
    pub fn get(&self, name: &str) -> Result<&WeightTensor, ExportError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ExportError::MissingWeight { name: name.into() })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExportError {
    #[error("weight `{name}` is missing")]
    MissingWeight { name: String },
    #[error("weight `{name}` has shape {got:?}, the manifest's architecture needs {expected}")]
    WrongShape {
        name: String,
        expected: String,
        got: Vec<usize>,
    },
    #[error("weight `{name}` has shape {shape:?} ({expected} values) but holds {got} values")]
    WrongLength {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("weight `{name}` holds a NaN or infinite value")]
    NotFinite { name: String },
    #[error("weight `{name}` has no place in the manifest's architecture")]
    UnexpectedWeight { name: String },
    #[error("invalid architecture: {reason}")]
    InvalidArchitecture { reason: String },
    #[error("feature `{feature}`: no vocabulary `{vocab}`")]
    MissingVocabulary { feature: String, vocab: String },
}

/// `embedding.<feature>`: the table of an id or bag feature, `[vocabulary rows, E]`.
pub fn embedding_weight_name(feature: &str) -> String {
    format!("embedding.{feature}")
}

/// Columns a feature adds to its scope's feature vector.
pub fn feature_vector_columns(spec: &FeatureSpec, embedding_dim: usize) -> usize {
    match spec.kind {
        Kind::Id | Kind::IdBag => embedding_dim,
        Kind::Dense | Kind::Numeric => spec.width,
    }
}

/// Width of a scope's feature vector: the rows of the first encoder layer's matrix for
/// that scope.
pub fn feature_vector_width(manifest: &Manifest, scope: Scope) -> usize {
    manifest
        .features
        .iter()
        .filter(|spec| spec.scope == scope)
        .map(|spec| feature_vector_columns(spec, manifest.architecture.embedding_dim))
        .sum()
}

/// Heads sorted by their output column (see [`Manifest::heads_by_column`]), a layout the
/// exporter cannot write otherwise.
fn heads_by_column(manifest: &Manifest) -> Result<Vec<&crate::bundle::HeadSpec>, ExportError> {
    manifest
        .heads_by_column()
        .map_err(|error| invalid(error.to_string()))
}

fn invalid(reason: impl Into<String>) -> ExportError {
    ExportError::InvalidArchitecture {
        reason: reason.into(),
    }
}

/// What a weight's shape must be. Embedding rows come from the vocabulary, which the
/// manifest does not carry, so the exporter accepts any positive row count there.
#[derive(Debug, Clone, PartialEq)]
enum ShapeRule {
    Exact(Vec<usize>),
    EmbeddingTable { width: usize },
}

impl ShapeRule {
    fn accepts(&self, shape: &[usize]) -> bool {
        match self {
            ShapeRule::Exact(expected) => expected == shape,
            ShapeRule::EmbeddingTable { width } => {
                shape.len() == 2 && shape[0] >= 1 && shape[1] == *width
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            ShapeRule::Exact(expected) => format!("{expected:?}"),
            ShapeRule::EmbeddingTable { width } => format!("[vocabulary rows, {width}]"),
        }
    }
}

/// Every weight the architecture needs, in a stable order, with its shape rule.
fn shape_rules(manifest: &Manifest) -> Result<Vec<(String, ShapeRule)>, ExportError> {
    let architecture = &manifest.architecture;
    let embedding_dim = architecture.embedding_dim;
    if embedding_dim == 0 {
        return Err(invalid("embedding_dim is 0"));
    }
    if architecture.encoder.is_empty() {
        return Err(invalid(
            "the encoder needs at least one layer (the split first layer)",
        ));
    }
    if let Some(zero) = architecture
        .encoder
        .iter()
        .chain(&architecture.tower)
        .find(|w| **w == 0)
    {
        return Err(invalid(format!("a layer width is {zero}")));
    }
    if feature_vector_width(manifest, Scope::Candidate) == 0 {
        return Err(invalid(
            "the candidate scope has no features, so N would be undefined",
        ));
    }
    let mut rules = Vec::new();
    for spec in &manifest.features {
        if matches!(spec.kind, Kind::Id | Kind::IdBag) {
            rules.push((
                embedding_weight_name(&spec.name),
                ShapeRule::EmbeddingTable {
                    width: embedding_dim,
                },
            ));
        }
    }
    let first = architecture.encoder[0];
    let request_width = feature_vector_width(manifest, Scope::Request);
    if request_width > 0 {
        rules.push((
            "encoder.0.request_weight".into(),
            ShapeRule::Exact(vec![request_width, first]),
        ));
    }
    rules.push((
        "encoder.0.candidate_weight".into(),
        ShapeRule::Exact(vec![
            feature_vector_width(manifest, Scope::Candidate),
            first,
        ]),
    ));
    rules.push(("encoder.0.bias".into(), ShapeRule::Exact(vec![first])));
    for (layer, pair) in architecture.encoder.windows(2).enumerate() {
        let layer = layer + 1;
        rules.push((
            format!("encoder.{layer}.weight"),
            ShapeRule::Exact(vec![pair[0], pair[1]]),
        ));
        rules.push((
            format!("encoder.{layer}.bias"),
            ShapeRule::Exact(vec![pair[1]]),
        ));
    }
    let last = *architecture
        .encoder
        .last()
        .expect("checked non-empty above");
    rules.push(("batch_norm.scale".into(), ShapeRule::Exact(vec![last])));
    rules.push(("batch_norm.shift".into(), ShapeRule::Exact(vec![last])));
    let tower_widths: Vec<usize> = std::iter::once(last)
        .chain(architecture.tower.iter().copied())
        .chain(std::iter::once(1))
        .collect();
    for head in &manifest.heads {
        for (layer, pair) in tower_widths.windows(2).enumerate() {
            let prefix = format!("tower.{}.{layer}", head.name);
            rules.push((
                format!("{prefix}.weight"),
                ShapeRule::Exact(vec![pair[0], pair[1]]),
            ));
            rules.push((format!("{prefix}.bias"), ShapeRule::Exact(vec![pair[1]])));
        }
    }
    Ok(rules)
}

/// Every weight the manifest's architecture needs and its exact shape, embedding rows
/// taken from `vocabularies`: what a trainer creates and [`export`] checks.
pub fn weight_shapes(
    manifest: &Manifest,
    vocabularies: &Vocabularies,
) -> Result<BTreeMap<String, Vec<usize>>, ExportError> {
    let rows_of: BTreeMap<String, usize> = manifest
        .features
        .iter()
        .filter_map(|spec| match &spec.transform {
            Transform::Id { vocab } | Transform::IdBag { vocab, .. } => Some((spec, vocab)),
            _ => None,
        })
        .map(|(spec, vocab)| {
            vocabularies
                .get(vocab)
                .map(|vocabulary| (embedding_weight_name(&spec.name), vocabulary.len()))
                .ok_or_else(|| ExportError::MissingVocabulary {
                    feature: spec.name.clone(),
                    vocab: vocab.clone(),
                })
        })
        .collect::<Result<_, _>>()?;
    shape_rules(manifest)?
        .into_iter()
        .map(|(name, rule)| {
            let shape = match rule {
                ShapeRule::Exact(shape) => shape,
                ShapeRule::EmbeddingTable { width } => vec![rows_of[&name], width],
            };
            Ok((name, shape))
        })
        .collect()
}

/// Checks every weight against the architecture: present, shaped as needed, as many
/// values as its shape says, all finite, and nothing extra (an extra weight means the
/// trainer and the exporter disagree about the model, which must not pass silently).
fn validate(manifest: &Manifest, weights: &Weights) -> Result<(), ExportError> {
    heads_by_column(manifest)?;
    for scope in Scope::ALL {
        ColumnOwners::of(manifest, scope)?;
    }
    let rules = shape_rules(manifest)?;
    let expected: BTreeSet<&str> = rules.iter().map(|(name, _)| name.as_str()).collect();
    for (name, rule) in &rules {
        let tensor = weights.get(name)?;
        if !rule.accepts(&tensor.shape) {
            return Err(ExportError::WrongShape {
                name: name.clone(),
                expected: rule.describe(),
                got: tensor.shape.clone(),
            });
        }
        let length: usize = tensor.shape.iter().product();
        if tensor.data.len() != length {
            return Err(ExportError::WrongLength {
                name: name.clone(),
                shape: tensor.shape.clone(),
                expected: length,
                got: tensor.data.len(),
            });
        }
        if tensor.data.iter().any(|value| !value.is_finite()) {
            return Err(ExportError::NotFinite { name: name.clone() });
        }
    }
    if let Some(extra) = weights
        .tensors
        .keys()
        .find(|name| !expected.contains(name.as_str()))
    {
        return Err(ExportError::UnexpectedWeight {
            name: extra.clone(),
        });
    }
    Ok(())
}

/// Builds `model.onnx` from a manifest and trained weights.
///
/// The towers are written fused: the heads' first tower layers become one matrix
/// (their weights side by side), and each later layer one block-diagonal matrix, so
/// that all heads cost two or three matrix products instead of a dozen small ones and
/// a concatenation. The zeros off the blocks add nothing, so the logits are those of
/// separate towers, and the last layer's columns come out in head `index` order.
pub fn export(manifest: &Manifest, weights: &Weights) -> Result<Vec<u8>, ExportError> {
    validate(manifest, weights)?;
    let architecture = &manifest.architecture;
    let mut graph = GraphBuilder::default();
    let value_infos: Vec<pb::ValueInfoProto> = graph::inputs(&manifest.features)
        .iter()
        .map(|input| value_info(&input.name(), input.element(), &input.shape()))
        .collect();

    let candidate_part = graph.first_layer_part(
        manifest,
        weights,
        Scope::Candidate,
        "encoder.0.candidate_weight",
    )?;
    // The bias joins the request-scope half, so the [N, H0] tensor sees one broadcast add.
    let bias = graph.weight(weights, "encoder.0.bias")?;
    let shared_part = if feature_vector_width(manifest, Scope::Request) > 0 {
        let request_part = graph.first_layer_part(
            manifest,
            weights,
            Scope::Request,
            "encoder.0.request_weight",
        )?;
        graph.node(
            "Add",
            &[&request_part, &bias],
            vec![],
            "encoder.0.request_plus_bias",
        )
    } else {
        bias
    };
    let summed = graph.node(
        "Add",
        &[&candidate_part, &shared_part],
        vec![],
        "encoder.0.sum",
    );
    let mut hidden = graph.node("Relu", &[&summed], vec![], "encoder.0.relu");
    for layer in 1..architecture.encoder.len() {
        hidden = graph.dense_relu_layer(weights, &hidden, &format!("encoder.{layer}"))?;
    }
    let scale = graph.weight(weights, "batch_norm.scale")?;
    let shift = graph.weight(weights, "batch_norm.shift")?;
    let scaled = graph.node("Mul", &[&hidden, &scale], vec![], "batch_norm.scaled");
    hidden = graph.node("Add", &[&scaled, &shift], vec![], "batch_norm.shifted");

    let heads = heads_by_column(manifest)?;
    let layers = architecture.tower.len() + 1;
    for layer in 0..layers {
        let (matrix, bias) = fused_tower_layer(weights, &heads, layer)?;
        let prefix = format!("towers.{layer}");
        let matrix =
            graph.initializer_f32(&format!("{prefix}.weight"), &matrix.shape, &matrix.data);
        let bias = graph.initializer_f32(&format!("{prefix}.bias"), &bias.shape, &bias.data);
        let product = graph.node(
            "MatMul",
            &[&hidden, &matrix],
            vec![],
            &format!("{prefix}.matmul"),
        );
        if layer + 1 < layers {
            let biased = graph.node("Add", &[&product, &bias], vec![], &format!("{prefix}.add"));
            hidden = graph.node("Relu", &[&biased], vec![], &format!("{prefix}.relu"));
        } else {
            hidden = graph.node_named("Add", &[&product, &bias], vec![], OUTPUT_NAME);
        }
    }
    let output = value_info(
        OUTPUT_NAME,
        Element::Float32,
        &graph::output_shape(heads.len()),
    );

    let model = pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET_VERSION,
        }],
        producer_name: PRODUCER_NAME.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: i64::from(manifest.version),
        doc_string: format!(
            "podscore model `{}` version {}",
            manifest.name, manifest.version
        ),
        metadata_props: embedding_rows_metadata(manifest, weights),
        graph: Some(pb::GraphProto {
            name: manifest.name.clone(),
            node: graph.nodes,
            initializer: graph.initializers,
            input: value_infos,
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

fn embedding_rows_metadata(
    manifest: &Manifest,
    weights: &Weights,
) -> Vec<pb::StringStringEntryProto> {
    manifest
        .features
        .iter()
        .filter(|spec| matches!(spec.kind, Kind::Id | Kind::IdBag))
        .filter_map(|spec| {
            let table = weights.tensors.get(&embedding_weight_name(&spec.name))?;
            Some(pb::StringStringEntryProto {
                key: graph::embedding_rows_key(&spec.name),
                value: table.shape[0].to_string(),
            })
        })
        .collect()
}

/// For each column of a scope's `ids`, `bag_ids` and `dense` inputs, the feature that
/// owns it. Every column must have exactly one owner of the right kind: a column nobody
/// owns would reach a Gather unchecked, and one owned twice is a corrupt layout.
struct ColumnOwners<'a> {
    ids: Vec<&'a FeatureSpec>,
    bag: Vec<&'a FeatureSpec>,
    dense: Vec<&'a FeatureSpec>,
}

impl<'a> ColumnOwners<'a> {
    fn of(manifest: &'a Manifest, scope: Scope) -> Result<ColumnOwners<'a>, ExportError> {
        let widths = ScopeWidths::of(&manifest.features, scope);
        let mut ids: Vec<Option<&FeatureSpec>> = vec![None; widths.ids];
        let mut bag: Vec<Option<&FeatureSpec>> = vec![None; widths.bag];
        let mut dense: Vec<Option<&FeatureSpec>> = vec![None; widths.dense];
        for spec in manifest.features.iter().filter(|spec| spec.scope == scope) {
            let part = Part::holding(spec.kind);
            let columns = match part {
                Part::Ids => &mut ids,
                Part::BagIds | Part::BagMask => &mut bag,
                Part::Dense => &mut dense,
            };
            let expected = graph::input_name(scope, part);
            if spec.input != expected {
                return Err(invalid(format!(
                    "feature `{}` reads `{}`, its kind and scope put it in `{expected}`",
                    spec.name, spec.input
                )));
            }
            for column in &mut columns[spec.slot..spec.slot + spec.width] {
                if let Some(other) = column.replace(spec) {
                    return Err(invalid(format!(
                        "features `{}` and `{}` share a column of `{}`",
                        other.name, spec.name, spec.input
                    )));
                }
            }
        }
        let complete = |columns: Vec<Option<&'a FeatureSpec>>,
                        part: Part|
         -> Result<Vec<&'a FeatureSpec>, ExportError> {
            columns
                .into_iter()
                .enumerate()
                .map(|(column, owner)| {
                    owner.ok_or_else(|| {
                        invalid(format!(
                            "column {column} of `{}` belongs to no feature",
                            graph::input_name(scope, part)
                        ))
                    })
                })
                .collect()
        };
        Ok(ColumnOwners {
            ids: complete(ids, Part::Ids)?,
            bag: complete(bag, Part::BagIds)?,
            dense: complete(dense, Part::Dense)?,
        })
    }
}

/// Layer `layer` of every head's tower as one matrix and bias, heads in column order.
/// Layer 0 reads the shared hidden vector, so its blocks sit side by side; later layers
/// read their own head's slice, so their blocks sit on the diagonal.
fn fused_tower_layer(
    weights: &Weights,
    heads: &[&crate::bundle::HeadSpec],
    layer: usize,
) -> Result<(WeightTensor, WeightTensor), ExportError> {
    let blocks: Vec<(&WeightTensor, &WeightTensor)> = heads
        .iter()
        .map(|head| {
            let prefix = format!("tower.{}.{layer}", head.name);
            Ok((
                weights.get(&format!("{prefix}.weight"))?,
                weights.get(&format!("{prefix}.bias"))?,
            ))
        })
        .collect::<Result<_, ExportError>>()?;
    let (block_rows, block_columns) = (blocks[0].0.shape[0], blocks[0].0.shape[1]);
    let columns = block_columns * blocks.len();
    let rows = if layer == 0 {
        block_rows
    } else {
        block_rows * blocks.len()
    };
    let mut matrix = WeightTensor::zeros(vec![rows, columns]);
    let mut bias = WeightTensor::zeros(vec![columns]);
    for (block, (weight, block_bias)) in blocks.iter().enumerate() {
        let row_offset = if layer == 0 { 0 } else { block * block_rows };
        let column_offset = block * block_columns;
        for row in 0..block_rows {
            let source = &weight.data[row * block_columns..(row + 1) * block_columns];
            let start = (row_offset + row) * columns + column_offset;
            matrix.data[start..start + block_columns].copy_from_slice(source);
        }
        bias.data[column_offset..column_offset + block_columns].copy_from_slice(&block_bias.data);
    }
    Ok((matrix, bias))
}

/// The ONNX type of a graph element.
pub fn data_type(element: Element) -> DataType {
    match element {
        Element::Int64 => DataType::Int64,
        Element::Float32 => DataType::Float,
    }
}

/// The ONNX form of a graph dimension.
pub fn dimension(dim: Dim) -> pb::tensor_shape_proto::dimension::Value {
    use pb::tensor_shape_proto::dimension::Value;
    match dim {
        Dim::Fixed(size) => Value::DimValue(size as i64),
        Dim::Symbolic(name) => Value::DimParam(name.to_string()),
    }
}

fn value_info(name: &str, element: Element, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|dim| pb::tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(dimension(*dim)),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: data_type(element) as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn attribute_int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// Accumulates nodes and initializers; every value gets a unique, readable name.
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    names: BTreeSet<String>,
    /// Weights already added as initializers, so a name is never added twice.
    added_weights: BTreeSet<String>,
}

impl GraphBuilder {
    fn unique(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut counter = 1;
        while self.names.contains(&name) {
            counter += 1;
            name = format!("{hint}_{counter}");
        }
        self.names.insert(name.clone());
        name
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<pb::AttributeProto>,
        hint: &str,
    ) -> String {
        let output = self.unique(hint);
        self.push_node(op, inputs, attributes, output)
    }

    /// A node whose output must carry exactly `name` (the graph output).
    fn node_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<pb::AttributeProto>,
        name: &str,
    ) -> String {
        self.names.insert(name.to_string());
        self.push_node(op, inputs, attributes, name.to_string())
    }

    fn push_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attribute: Vec<pb::AttributeProto>,
        output: String,
    ) -> String {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|input| input.to_string()).collect(),
            output: vec![output.clone()],
            name: format!("{output}.node"),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output
    }

    fn initializer_f32(&mut self, hint: &str, shape: &[usize], data: &[f32]) -> String {
        let name = self.unique(hint);
        self.initializers.push(pb::TensorProto {
            dims: shape.iter().map(|dim| *dim as i64).collect(),
            data_type: DataType::Float as i32,
            name: name.clone(),
            raw_data: data.iter().flat_map(|value| value.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn initializer_i64(&mut self, hint: &str, shape: &[usize], data: &[i64]) -> String {
        let name = self.unique(hint);
        self.initializers.push(pb::TensorProto {
            dims: shape.iter().map(|dim| *dim as i64).collect(),
            data_type: DataType::Int64 as i32,
            name: name.clone(),
            raw_data: data.iter().flat_map(|value| value.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// The initializer holding weight `name`, under that same name.
    fn weight(&mut self, weights: &Weights, name: &str) -> Result<String, ExportError> {
        let tensor = weights.get(name)?;
        if self.added_weights.insert(name.to_string()) {
            let added = self.initializer_f32(name, &tensor.shape, &tensor.data);
            debug_assert_eq!(added, name);
        }
        Ok(name.to_string())
    }

    /// `x_scope @ W_scope` for the first encoder layer, where `weight_name` holds `W_scope`
    /// with rows in spec order (the contract's feature vector).
    ///
    /// The graph does not build that feature vector feature by feature: tract splits a
    /// matrix product whose input is a concatenation into one product per piece, and a
    /// dozen thin products cost several times one wide product. So the vector is built
    /// from three pieces whatever the feature count, and the weight's rows are permuted
    /// to match (a permutation of the sum's terms, the same arithmetic):
    /// - ids: every id column looked up at once in the scope's tables stacked into one
    ///   (each column's ids offset to its feature's table), flattened to `[rows, ids*E]`;
    /// - bags: every bag slot looked up at once the same way, weighted by
    ///   `mask / max(count of its bag, 1)`, and summed per bag by a product with a 0/1
    ///   slot-to-bag matrix, flattened to `[rows, bags*E]`;
    /// - dense: the dense input as is.
    fn first_layer_part(
        &mut self,
        manifest: &Manifest,
        weights: &Weights,
        scope: Scope,
        weight_name: &str,
    ) -> Result<String, ExportError> {
        let embedding_dim = manifest.architecture.embedding_dim;
        let owners = ColumnOwners::of(manifest, scope)?;
        let weight = weights.get(weight_name)?;
        let scope_name = scope.as_str();
        // Row of each feature's first value in the spec-order feature vector.
        let mut block_start = BTreeMap::new();
        let mut next_row = 0;
        for spec in manifest.features.iter().filter(|spec| spec.scope == scope) {
            block_start.insert(spec.name.as_str(), next_row);
            next_row += feature_vector_columns(spec, embedding_dim);
        }
        // For each row of the permuted weight, the row of `weight` it takes.
        let mut source_rows: Vec<usize> = Vec::with_capacity(next_row);
        let mut pieces: Vec<String> = Vec::new();

        if !owners.ids.is_empty() {
            let (table, offsets) =
                self.stacked_table(weights, &owners.ids, &format!("{scope_name}.id"))?;
            for spec in &owners.ids {
                source_rows.extend(
                    (0..embedding_dim).map(|value| block_start[spec.name.as_str()] + value),
                );
            }
            let input = graph::input_name(scope, Part::Ids);
            let indices = self.node(
                "Add",
                &[&input, &offsets],
                vec![],
                &format!("{scope_name}.id_rows"),
            );
            let gathered = self.node(
                "Gather",
                &[&table, &indices],
                vec![attribute_int("axis", 0)],
                &format!("{scope_name}.id_embeddings"),
            );
            pieces.push(self.node(
                "Flatten",
                &[&gathered],
                vec![attribute_int("axis", 1)],
                &format!("{scope_name}.id_vector"),
            ));
        }

        if !owners.bag.is_empty() {
            // One entry per bag feature, in slot order, and its slot range.
            let mut bags: Vec<&FeatureSpec> = owners.bag.clone();
            bags.dedup_by(|a, b| a.name == b.name);
            let (table, offsets) =
                self.stacked_table(weights, &owners.bag, &format!("{scope_name}.bag"))?;
            let slots = owners.bag.len();
            let mut slot_to_bag = vec![0.0f32; slots * bags.len()];
            let mut bag_to_slot = vec![0.0f32; bags.len() * slots];
            for (slot, spec) in owners.bag.iter().enumerate() {
                let bag = bags
                    .iter()
                    .position(|bag| bag.name == spec.name)
                    .expect("deduplicated from these");
                slot_to_bag[slot * bags.len() + bag] = 1.0;
                bag_to_slot[bag * slots + slot] = 1.0;
            }
            for spec in &bags {
                source_rows.extend(
                    (0..embedding_dim).map(|value| block_start[spec.name.as_str()] + value),
                );
            }
            let prefix = format!("{scope_name}.bags");
            let bag_ids = graph::input_name(scope, Part::BagIds);
            let mask = graph::input_name(scope, Part::BagMask);
            let slot_to_bag = self.initializer_f32(
                &format!("{prefix}.slot_to_bag"),
                &[slots, bags.len()],
                &slot_to_bag,
            );
            let bag_to_slot = self.initializer_f32(
                &format!("{prefix}.bag_to_slot"),
                &[bags.len(), slots],
                &bag_to_slot,
            );
            let indices = self.node(
                "Add",
                &[&bag_ids, &offsets],
                vec![],
                &format!("{prefix}.rows"),
            );
            let gathered = self.node(
                "Gather",
                &[&table, &indices],
                vec![attribute_int("axis", 0)],
                &format!("{prefix}.embeddings"),
            );
            let counts = self.node(
                "MatMul",
                &[&mask, &slot_to_bag],
                vec![],
                &format!("{prefix}.counts"),
            );
            // An empty bag divides by 1, not 0: its mean is the zero vector.
            let one = self.initializer_f32(&format!("{prefix}.one"), &[], &[1.0]);
            let divisors = self.node(
                "Max",
                &[&counts, &one],
                vec![],
                &format!("{prefix}.divisors"),
            );
            let inverses = self.node(
                "Reciprocal",
                &[&divisors],
                vec![],
                &format!("{prefix}.inverses"),
            );
            let slot_inverses = self.node(
                "MatMul",
                &[&inverses, &bag_to_slot],
                vec![],
                &format!("{prefix}.slot_inverses"),
            );
            let slot_weights = self.node(
                "Mul",
                &[&mask, &slot_inverses],
                vec![],
                &format!("{prefix}.slot_weights"),
            );
            let last_axis = self.initializer_i64(&format!("{prefix}.unsqueeze_axes"), &[1], &[2]);
            let slot_weights = self.node(
                "Unsqueeze",
                &[&slot_weights, &last_axis],
                vec![],
                &format!("{prefix}.slot_weights3"),
            );
            let weighted = self.node(
                "Mul",
                &[&gathered, &slot_weights],
                vec![],
                &format!("{prefix}.weighted"),
            );
            // [bags, slots] @ [rows, slots, E] -> [rows, bags, E]: the sum of each bag's slots.
            let means = self.node(
                "MatMul",
                &[&bag_to_slot, &weighted],
                vec![],
                &format!("{prefix}.means"),
            );
            pieces.push(self.node(
                "Flatten",
                &[&means],
                vec![attribute_int("axis", 1)],
                &format!("{prefix}.vector"),
            ));
        }

        if !owners.dense.is_empty() {
            for (column, spec) in owners.dense.iter().enumerate() {
                source_rows.push(block_start[spec.name.as_str()] + column - spec.slot);
            }
            pieces.push(graph::input_name(scope, Part::Dense));
        }

        let columns = weight.shape[1];
        let mut permuted = Vec::with_capacity(source_rows.len() * columns);
        for row in &source_rows {
            permuted.extend_from_slice(&weight.data[row * columns..(row + 1) * columns]);
        }
        let permuted = self.initializer_f32(
            &format!("{weight_name}.by_input_column"),
            &[source_rows.len(), columns],
            &permuted,
        );
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let vector = match refs.as_slice() {
            [single] => single.to_string(),
            _ => self.node(
                "Concat",
                &refs,
                vec![attribute_int("axis", 1)],
                &format!("{scope_name}.features"),
            ),
        };
        Ok(self.node(
            "MatMul",
            &[&vector, &permuted],
            vec![],
            &format!("encoder.0.{scope_name}_matmul"),
        ))
    }

    /// The embedding tables of the features owning `columns`, stacked in column order,
    /// and per column the offset of its feature's table in the stack: `[1, columns]`.
    fn stacked_table(
        &mut self,
        weights: &Weights,
        columns: &[&FeatureSpec],
        hint: &str,
    ) -> Result<(String, String), ExportError> {
        let mut data = Vec::new();
        let mut rows = 0usize;
        let mut width = 0usize;
        let mut offsets = Vec::with_capacity(columns.len());
        let mut offset_of: BTreeMap<&str, usize> = BTreeMap::new();
        for spec in columns {
            let offset = match offset_of.get(spec.name.as_str()) {
                Some(offset) => *offset,
                None => {
                    let table = weights.get(&embedding_weight_name(&spec.name))?;
                    offset_of.insert(spec.name.as_str(), rows);
                    data.extend_from_slice(&table.data);
                    width = table.shape[1];
                    rows += table.shape[0];
                    rows - table.shape[0]
                }
            };
            offsets.push(offset as i64);
        }
        let table = self.initializer_f32(&format!("{hint}_tables"), &[rows, width], &data);
        let offsets =
            self.initializer_i64(&format!("{hint}_offsets"), &[1, columns.len()], &offsets);
        Ok((table, offsets))
    }

    /// `relu(input @ {prefix}.weight + {prefix}.bias)`.
    fn dense_relu_layer(
        &mut self,
        weights: &Weights,
        input: &str,
        prefix: &str,
    ) -> Result<String, ExportError> {
        let weight = self.weight(weights, &format!("{prefix}.weight"))?;
        let bias = self.weight(weights, &format!("{prefix}.bias"))?;
        let product = self.node(
            "MatMul",
            &[input, &weight],
            vec![],
            &format!("{prefix}.matmul"),
        );
        let biased = self.node("Add", &[&product, &bias], vec![], &format!("{prefix}.add"));
        Ok(self.node("Relu", &[&biased], vec![], &format!("{prefix}.relu")))
    }
}
