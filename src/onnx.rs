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
//!   numeric features. The graph computes the same first-layer product as one product
//!   over blocks of the embedding width (all ids, all bags, all dense columns padded to
//!   whole blocks) with the weight's rows permuted to match (see `first_layer_part` for
//!   why it is laid out so for tract);
//! - the first encoder layer split by scope, so that the request-scope half (and the
//!   bias) is computed once per request and broadcast over the `N` candidates;
//! - the rest of the encoder, the folded batch norm, and one tower per head, written as
//!   one fused tower (see [`export`]) whose output is `logits`, `[N, heads]`;
//! - metadata [`graph::embedding_rows_key`]: each id feature's table size, which the
//!   runtime checks ids against (the tables are stacked in the graph).
//!
//! [`Weights`] is the hand-over format between the trainer and this module: plain
//! row-major `f32` tensors by name. [`read_weights`] is the inverse of [`export`], so a
//! bundle can be written again in a newer graph without training. This module knows
//! protobuf and the ONNX operator set; it knows nothing of candle, tract's runtime or
//! HTTP.

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

/// Each id feature's table rows, as the graph's metadata records them (entries that do
/// not parse are left out, so a reader reports the feature as unknown).
pub fn embedding_table_rows(model: &pb::ModelProto) -> BTreeMap<&str, usize> {
    model
        .metadata_props
        .iter()
        .filter_map(|entry| {
            let feature = graph::embedding_rows_feature(&entry.key)?;
            Some((feature, entry.value.parse().ok()?))
        })
        .collect()
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

/// For each row of a scope's first-layer weight as the graph stores it, the row of the
/// spec-order weight it holds, or `None` for a zero row facing dense padding: the id
/// blocks in column order, then one block per bag, then the dense columns, then the
/// padding up to a whole block of `E`. The exporter writes the weight in this order and
/// [`read_weights`] reads it back; a graph written before the padding existed holds the
/// same rows without the trailing `None`s.
fn first_layer_rows(
    manifest: &Manifest,
    owners: &ColumnOwners<'_>,
    scope: Scope,
) -> Vec<Option<usize>> {
    let embedding_dim = manifest.architecture.embedding_dim;
    let mut block_start = BTreeMap::new();
    let mut next_row = 0;
    for spec in manifest.features.iter().filter(|spec| spec.scope == scope) {
        block_start.insert(spec.name.as_str(), next_row);
        next_row += feature_vector_columns(spec, embedding_dim);
    }
    let block = |spec: &FeatureSpec| {
        let start = block_start[spec.name.as_str()];
        (start..start + embedding_dim).map(Some)
    };
    let mut rows = Vec::with_capacity(next_row + embedding_dim);
    for spec in &owners.ids {
        rows.extend(block(spec));
    }
    let mut bags: Vec<&FeatureSpec> = owners.bag.clone();
    bags.dedup_by(|a, b| a.name == b.name);
    for spec in bags {
        rows.extend(block(spec));
    }
    for (column, spec) in owners.dense.iter().enumerate() {
        rows.push(Some(block_start[spec.name.as_str()] + column - spec.slot));
    }
    let padding = owners.dense.len().next_multiple_of(embedding_dim) - owners.dense.len();
    rows.extend(std::iter::repeat_n(None, padding));
    rows
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

// ---------------------------------------------------------------------------------------
// Reading trained weights back out of an exported graph.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReadError {
    #[error("not an ONNX model: {0}")]
    Decode(String),
    #[error("the model has no graph")]
    NoGraph,
    #[error("initializer `{name}` is missing")]
    MissingInitializer { name: String },
    #[error("initializer `{name}` is not {expected} (data type {data_type}, shape {shape:?})")]
    WrongInitializer {
        name: String,
        expected: String,
        data_type: i32,
        shape: Vec<i64>,
    },
    #[error(
        "no `{prefix}{feature}` entry: the table size of feature `{feature}` is unknown",
        prefix = graph::EMBEDDING_ROWS_KEY_PREFIX
    )]
    MissingTableRows { feature: String },
    #[error("feature `{feature}`: rows {start}..{end} lie outside its stacked table of {rows}")]
    TableRange {
        feature: String,
        start: usize,
        end: usize,
        rows: usize,
    },
    #[error(transparent)]
    Architecture(#[from] ExportError),
}

/// The trained weights of a graph [`export`] wrote for `manifest`, by the names
/// [`weight_shapes`] lists: the inverse of [`export`], so that a bundle can be written
/// again in the graph of a newer exporter without training (`podscore reexport`).
///
/// It reads the initializers by name: embedding tables cut out of the stacked ones at
/// each column's offset, the first-layer weights un-permuted (the row order of
/// [`first_layer_rows`], with or without the dense padding rows of graphs written before
/// it), the towers cut out of their fused matrices. The result passes [`export`]'s own
/// checks, so a graph that is not one of ours fails here rather than exporting garbage.
pub fn read_weights(manifest: &Manifest, onnx: &[u8]) -> Result<Weights, ReadError> {
    let model =
        pb::ModelProto::decode(onnx).map_err(|error| ReadError::Decode(error.to_string()))?;
    let graph = model.graph.as_ref().ok_or(ReadError::NoGraph)?;
    let initializers: BTreeMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|tensor| (tensor.name.as_str(), tensor))
        .collect();
    let table_rows = embedding_table_rows(&model);
    let reader = InitializerReader { initializers };
    let architecture = &manifest.architecture;
    let mut tensors = BTreeMap::new();

    for scope in Scope::ALL {
        let owners = ColumnOwners::of(manifest, scope)?;
        let scope_name = scope.as_str();
        for (columns, part) in [(&owners.ids, "id"), (&owners.bag, "bag")] {
            if columns.is_empty() {
                continue;
            }
            let table = reader.f32(&format!("{scope_name}.{part}_tables"))?;
            let offsets = reader.i64(&format!("{scope_name}.{part}_offsets"))?;
            if table.shape.len() != 2 || offsets.len() != columns.len() {
                return Err(ReadError::WrongInitializer {
                    name: format!("{scope_name}.{part}_tables"),
                    expected: format!("a stacked table for {} columns", columns.len()),
                    data_type: DataType::Float as i32,
                    shape: table.shape.iter().map(|dim| *dim as i64).collect(),
                });
            }
            let width = table.shape[1];
            for (spec, offset) in columns.iter().zip(&offsets) {
                let name = embedding_weight_name(&spec.name);
                if tensors.contains_key(&name) {
                    continue;
                }
                let rows = *table_rows.get(spec.name.as_str()).ok_or_else(|| {
                    ReadError::MissingTableRows {
                        feature: spec.name.clone(),
                    }
                })?;
                let start = usize::try_from(*offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(rows);
                if end > table.shape[0] {
                    return Err(ReadError::TableRange {
                        feature: spec.name.clone(),
                        start,
                        end,
                        rows: table.shape[0],
                    });
                }
                let data = table.data[start * width..end * width].to_vec();
                tensors.insert(name, WeightTensor::new(vec![rows, width], data));
            }
        }
        if feature_vector_width(manifest, scope) == 0 {
            continue;
        }
        let weight_name = format!("encoder.0.{scope_name}_weight");
        let stored = reader.f32(&format!("{weight_name}.by_input_column"))?;
        let rows = first_layer_rows(manifest, &owners, scope);
        let unpadded = rows.iter().filter(|row| row.is_some()).count();
        let columns = stored.shape.get(1).copied().unwrap_or(0);
        if stored.shape.len() != 2
            || !(stored.shape[0] == rows.len() || stored.shape[0] == unpadded)
        {
            return Err(ReadError::WrongInitializer {
                name: format!("{weight_name}.by_input_column"),
                expected: format!("[{} or {unpadded}, columns]", rows.len()),
                data_type: DataType::Float as i32,
                shape: stored.shape.iter().map(|dim| *dim as i64).collect(),
            });
        }
        let mut weight = WeightTensor::zeros(vec![unpadded, columns]);
        for (stored_row, row) in rows.iter().enumerate() {
            if let Some(row) = row {
                weight.data[row * columns..(row + 1) * columns].copy_from_slice(
                    &stored.data[stored_row * columns..(stored_row + 1) * columns],
                );
            }
        }
        tensors.insert(weight_name, weight);
    }

    let mut copy = |name: String| -> Result<(), ReadError> {
        let tensor = reader.f32(&name)?;
        tensors.insert(name, tensor);
        Ok(())
    };
    copy("encoder.0.bias".into())?;
    for layer in 1..architecture.encoder.len() {
        copy(format!("encoder.{layer}.weight"))?;
        copy(format!("encoder.{layer}.bias"))?;
    }
    copy("batch_norm.scale".into())?;
    copy("batch_norm.shift".into())?;

    let heads = heads_by_column(manifest)?;
    let last = *architecture
        .encoder
        .last()
        .ok_or_else(|| ExportError::InvalidArchitecture {
            reason: "the encoder needs at least one layer (the split first layer)".into(),
        })?;
    let tower_widths: Vec<usize> = std::iter::once(last)
        .chain(architecture.tower.iter().copied())
        .chain(std::iter::once(1))
        .collect();
    for (layer, pair) in tower_widths.windows(2).enumerate() {
        let (block_rows, block_columns) = (pair[0], pair[1]);
        let fused = reader.f32(&format!("towers.{layer}.weight"))?;
        let fused_bias = reader.f32(&format!("towers.{layer}.bias"))?;
        let columns = block_columns * heads.len();
        let rows = if layer == 0 {
            block_rows
        } else {
            block_rows * heads.len()
        };
        if fused.shape != [rows, columns] || fused_bias.shape != [columns] {
            return Err(ReadError::WrongInitializer {
                name: format!("towers.{layer}.weight"),
                expected: format!("[{rows}, {columns}] with a [{columns}] bias"),
                data_type: DataType::Float as i32,
                shape: fused.shape.iter().map(|dim| *dim as i64).collect(),
            });
        }
        for (block, head) in heads.iter().enumerate() {
            let row_offset = if layer == 0 { 0 } else { block * block_rows };
            let column_offset = block * block_columns;
            let mut weight = Vec::with_capacity(block_rows * block_columns);
            for row in 0..block_rows {
                let start = (row_offset + row) * columns + column_offset;
                weight.extend_from_slice(&fused.data[start..start + block_columns]);
            }
            let bias = fused_bias.data[column_offset..column_offset + block_columns].to_vec();
            let prefix = format!("tower.{}.{layer}", head.name);
            tensors.insert(
                format!("{prefix}.weight"),
                WeightTensor::new(vec![block_rows, block_columns], weight),
            );
            tensors.insert(
                format!("{prefix}.bias"),
                WeightTensor::new(vec![block_columns], bias),
            );
        }
    }

    let weights = Weights { tensors };
    validate(manifest, &weights)?;
    Ok(weights)
}

/// Initializers by name, decoded on demand.
struct InitializerReader<'a> {
    initializers: BTreeMap<&'a str, &'a pb::TensorProto>,
}

impl InitializerReader<'_> {
    fn get(&self, name: &str) -> Result<&pb::TensorProto, ReadError> {
        self.initializers
            .get(name)
            .copied()
            .ok_or_else(|| ReadError::MissingInitializer { name: name.into() })
    }

    fn wrong(tensor: &pb::TensorProto, expected: &str) -> ReadError {
        ReadError::WrongInitializer {
            name: tensor.name.clone(),
            expected: expected.into(),
            data_type: tensor.data_type,
            shape: tensor.dims.clone(),
        }
    }

    /// A float initializer as a [`WeightTensor`]; the exporter writes `raw_data`
    /// (little-endian), other writers may use `float_data`.
    fn f32(&self, name: &str) -> Result<WeightTensor, ReadError> {
        let tensor = self.get(name)?;
        let shape: Vec<usize> = tensor
            .dims
            .iter()
            .map(|dim| usize::try_from(*dim))
            .collect::<Result<_, _>>()
            .map_err(|_| Self::wrong(tensor, "a float tensor"))?;
        let length: usize = shape.iter().product();
        let data: Vec<f32> = if tensor.data_type != DataType::Float as i32 {
            return Err(Self::wrong(tensor, "a float tensor"));
        } else if !tensor.raw_data.is_empty() {
            tensor
                .raw_data
                .chunks_exact(4)
                .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                .collect()
        } else {
            tensor.float_data.clone()
        };
        if data.len() != length {
            return Err(Self::wrong(tensor, "as many floats as its shape says"));
        }
        Ok(WeightTensor::new(shape, data))
    }

    /// An int64 initializer's values, flattened.
    fn i64(&self, name: &str) -> Result<Vec<i64>, ReadError> {
        let tensor = self.get(name)?;
        if tensor.data_type != DataType::Int64 as i32 {
            return Err(Self::wrong(tensor, "an int64 tensor"));
        }
        if !tensor.raw_data.is_empty() {
            Ok(tensor
                .raw_data
                .chunks_exact(8)
                .map(|bytes| {
                    i64::from_le_bytes([
                        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6],
                        bytes[7],
                    ])
                })
                .collect())
        } else {
            Ok(tensor.int64_data.clone())
        }
    }
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
    /// The graph builds that feature vector from whole blocks of `E` (the embedding
    /// width) values, in three pieces whatever the feature count, and permutes the
    /// weight's rows to match (a permutation of the sum's terms, the same arithmetic):
    /// - ids: every id column looked up at once in the scope's tables stacked into one
    ///   (each column's ids offset to its feature's table): `[rows, ids, E]`;
    /// - bags: every bag slot looked up at once the same way, each slot weighted by
    ///   `mask / max(count of its bag, 1)` (the count per slot is one product of the mask
    ///   with a 0/1 same-bag matrix), and summed per bag by a product with a 0/1
    ///   bag-to-slot matrix: `[rows, bags, E]`;
    /// - dense: the dense columns padded with zeros to a multiple of `E` and cut into
    ///   blocks: `[rows, ceil(dense / E), E]` (the padding meets zero weight rows).
    ///
    /// The blocks are concatenated, copied through a `Gather` with constant indices
    /// `0..blocks` (the identity), flattened and multiplied once. The copy is there for
    /// tract: a product fed directly by a concatenation is split into one product per
    /// piece (tract's `ConcatThenEinsum` pass, which sees through reshapes), and thin
    /// pieces are slow (the 18-column dense piece ran at a few GFLOP/s), while a copy of
    /// the blocks costs less than one of those products.
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
        let source_rows = first_layer_rows(manifest, &owners, scope);
        // Pieces of shape [rows, blocks, E], in concatenation order.
        let mut pieces: Vec<String> = Vec::new();

        if !owners.ids.is_empty() {
            let (table, offsets) =
                self.stacked_table(weights, &owners.ids, &format!("{scope_name}.id"))?;
            let input = graph::input_name(scope, Part::Ids);
            let indices = self.node(
                "Add",
                &[&input, &offsets],
                vec![],
                &format!("{scope_name}.id_rows"),
            );
            pieces.push(self.node(
                "Gather",
                &[&table, &indices],
                vec![attribute_int("axis", 0)],
                &format!("{scope_name}.id_embeddings"),
            ));
        }

        if !owners.bag.is_empty() {
            // One entry per bag feature, in slot order, and its slot range.
            let mut bags: Vec<&FeatureSpec> = owners.bag.clone();
            bags.dedup_by(|a, b| a.name == b.name);
            let (table, offsets) =
                self.stacked_table(weights, &owners.bag, &format!("{scope_name}.bag"))?;
            let slots = owners.bag.len();
            let mut same_bag = vec![0.0f32; slots * slots];
            let mut bag_to_slot = vec![0.0f32; bags.len() * slots];
            for (slot, spec) in owners.bag.iter().enumerate() {
                for (other, other_spec) in owners.bag.iter().enumerate() {
                    if other_spec.name == spec.name {
                        same_bag[slot * slots + other] = 1.0;
                    }
                }
                let bag = bags
                    .iter()
                    .position(|bag| bag.name == spec.name)
                    .expect("deduplicated from these");
                bag_to_slot[bag * slots + slot] = 1.0;
            }
            let prefix = format!("{scope_name}.bags");
            let bag_ids = graph::input_name(scope, Part::BagIds);
            let mask = graph::input_name(scope, Part::BagMask);
            let same_bag =
                self.initializer_f32(&format!("{prefix}.same_bag"), &[slots, slots], &same_bag);
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
            // Per slot, how many slots of its bag are present.
            let counts = self.node(
                "MatMul",
                &[&mask, &same_bag],
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
            let slot_weights = self.node(
                "Div",
                &[&mask, &divisors],
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
            pieces.push(self.node(
                "MatMul",
                &[&bag_to_slot, &weighted],
                vec![],
                &format!("{prefix}.means"),
            ));
        }

        if !owners.dense.is_empty() {
            let columns = owners.dense.len();
            let blocks = columns.div_ceil(embedding_dim);
            let padding = blocks * embedding_dim - columns;
            let mut dense = graph::input_name(scope, Part::Dense);
            if padding > 0 {
                let pads = self.initializer_i64(
                    &format!("{scope_name}.dense_pads"),
                    &[4],
                    &[0, 0, 0, padding as i64],
                );
                dense = self.node(
                    "Pad",
                    &[&dense, &pads],
                    vec![],
                    &format!("{scope_name}.dense_padded"),
                );
            }
            let shape = self.initializer_i64(
                &format!("{scope_name}.dense_block_shape"),
                &[3],
                &[-1, blocks as i64, embedding_dim as i64],
            );
            pieces.push(self.node(
                "Reshape",
                &[&dense, &shape],
                vec![],
                &format!("{scope_name}.dense_blocks"),
            ));
        }

        let columns = weight.shape[1];
        let mut permuted = Vec::with_capacity(source_rows.len() * columns);
        for row in &source_rows {
            match row {
                Some(row) => {
                    permuted.extend_from_slice(&weight.data[row * columns..(row + 1) * columns])
                }
                None => permuted.extend(std::iter::repeat_n(0.0, columns)),
            }
        }
        let permuted = self.initializer_f32(
            &format!("{weight_name}.by_input_column"),
            &[source_rows.len(), columns],
            &permuted,
        );
        let blocks = match pieces.as_slice() {
            [single] => single.clone(),
            _ => {
                let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
                let concatenated = self.node(
                    "Concat",
                    &refs,
                    vec![attribute_int("axis", 1)],
                    &format!("{scope_name}.blocks"),
                );
                let count = (source_rows.len() / embedding_dim) as i64;
                let identity: Vec<i64> = (0..count).collect();
                let identity = self.initializer_i64(
                    &format!("{scope_name}.block_order"),
                    &[identity.len()],
                    &identity,
                );
                self.node(
                    "Gather",
                    &[&concatenated, &identity],
                    vec![attribute_int("axis", 1)],
                    &format!("{scope_name}.blocks_copied"),
                )
            }
        };
        let vector = self.node(
            "Flatten",
            &[&blocks],
            vec![attribute_int("axis", 1)],
            &format!("{scope_name}.features"),
        );
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
