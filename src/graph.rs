//! The graph contract: what a model's graph takes and gives, defined once. Its inputs are
//! split by [`Scope`] and [`Part`] (`request_ids`, `candidate_bag_mask`, ...), each with
//! an element type and a shape (request scope one row, candidate scope the symbolic
//! [`CANDIDATES_DIM`] rows); its one output is [`OUTPUT_NAME`], `[N, heads]`; metadata
//! entries give each id feature's embedding-table rows. [`lay_out`] places each feature of
//! a spec in its input, at its first column.
//!
//! The exporter writes exactly this, the runtime checks a graph against it and feeds it,
//! and the KServe metadata endpoint describes it. This module knows the feature spec; it
//! knows nothing of protobuf, tract, candle or HTTP.

use std::collections::HashMap;

use crate::features::{
    FeatureDefinition, FeatureSpec, Kind, Scope, ScopeTensors, ScopeWidths, Transform,
};

/// The graph's one output: logits, `[N, heads]`, column `index` of each head.
pub const OUTPUT_NAME: &str = "logits";
/// The symbolic leading dimension of candidate-scope inputs and of the output.
pub const CANDIDATES_DIM: &str = "N";
/// Prefix of the metadata entries giving each id feature's table rows: the graph stacks
/// the tables, so a reader that must check ids (the runtime) finds each feature's bound
/// here rather than in an initializer's shape.
pub const EMBEDDING_ROWS_KEY_PREFIX: &str = "podscore.embedding_rows.";

/// The four inputs of a scope, in the order the graph declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// One column per id feature: vocabulary indices.
    Ids,
    /// `max_len` columns per bag feature: vocabulary indices, 0-padded.
    BagIds,
    /// 1 where [`Part::BagIds`] holds a token, 0 for padding.
    BagMask,
    /// `dim` columns per dense feature, one per numeric.
    Dense,
}

/// Element types of the graph's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    Int64,
    Float32,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Ids, Part::BagIds, Part::BagMask, Part::Dense];

    /// The input name's suffix: `ids`, `bag_ids`, `bag_mask`, `dense`.
    pub fn suffix(self) -> &'static str {
        match self {
            Part::Ids => "ids",
            Part::BagIds => "bag_ids",
            Part::BagMask => "bag_mask",
            Part::Dense => "dense",
        }
    }

    pub fn element(self) -> Element {
        match self {
            Part::Ids | Part::BagIds => Element::Int64,
            Part::BagMask | Part::Dense => Element::Float32,
        }
    }

    /// Columns of this part in a scope of `widths`.
    pub fn columns(self, widths: ScopeWidths) -> usize {
        match self {
            Part::Ids => widths.ids,
            Part::BagIds | Part::BagMask => widths.bag,
            Part::Dense => widths.dense,
        }
    }

    /// This part's values in one scope's assembled tensors.
    pub fn values(self, tensors: &ScopeTensors) -> Values<'_> {
        match self {
            Part::Ids => Values::Int64(&tensors.ids),
            Part::BagIds => Values::Int64(&tensors.bag_ids),
            Part::BagMask => Values::Float32(&tensors.bag_mask),
            Part::Dense => Values::Float32(&tensors.dense),
        }
    }

    /// The part holding a feature's values (a bag's mask comes with it).
    pub fn holding(kind: Kind) -> Part {
        match kind {
            Kind::Id => Part::Ids,
            Kind::IdBag => Part::BagIds,
            Kind::Dense | Kind::Numeric => Part::Dense,
        }
    }
}

/// One dimension of a tensor's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Symbolic(&'static str),
}

/// Rows of a scope's inputs: one per request, `N` per call for candidates.
pub fn rows(scope: Scope) -> Dim {
    match scope {
        Scope::Request => Dim::Fixed(1),
        Scope::Candidate => Dim::Symbolic(CANDIDATES_DIM),
    }
}

/// The shape of the one output: a row of `heads` logits per candidate.
pub fn output_shape(heads: usize) -> [Dim; 2] {
    [rows(Scope::Candidate), Dim::Fixed(heads)]
}

/// `request_ids`, `candidate_bag_mask`, ...
pub fn input_name(scope: Scope, part: Part) -> String {
    format!("{}_{}", scope.as_str(), part.suffix())
}

/// One graph input: its scope, part and column count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub scope: Scope,
    pub part: Part,
    pub columns: usize,
}

impl Input {
    pub fn name(&self) -> String {
        input_name(self.scope, self.part)
    }

    pub fn element(&self) -> Element {
        self.part.element()
    }

    pub fn shape(&self) -> [Dim; 2] {
        [rows(self.scope), Dim::Fixed(self.columns)]
    }

    /// This input's values in one scope's assembled tensors.
    pub fn values<'a>(&self, tensors: &'a ScopeTensors) -> Values<'a> {
        self.part.values(tensors)
    }
}

/// An input's values, row-major, typed by its [`Element`].
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    Int64(&'a [i64]),
    Float32(&'a [f32]),
}

impl Values<'_> {
    pub fn len(&self) -> usize {
        match self {
            Values::Int64(values) => values.len(),
            Values::Float32(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The graph's inputs in declaration order: request scope then candidate scope, each in
/// [`Part::ALL`] order, leaving out inputs with no columns (ONNX Runtime rejects
/// zero-sized dimensions in some kernels, and there is nothing to feed).
pub fn inputs(specs: &[FeatureSpec]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for scope in Scope::ALL {
        let widths = ScopeWidths::of(specs, scope);
        for part in Part::ALL {
            let columns = part.columns(widths);
            if columns > 0 {
                inputs.push(Input {
                    scope,
                    part,
                    columns,
                });
            }
        }
    }
    inputs
}

/// The metadata key of `feature`'s embedding-table rows.
pub fn embedding_rows_key(feature: &str) -> String {
    format!("{EMBEDDING_ROWS_KEY_PREFIX}{feature}")
}

/// The feature an embedding-rows metadata key is about; `None` for any other key.
pub fn embedding_rows_feature(key: &str) -> Option<&str> {
    key.strip_prefix(EMBEDDING_ROWS_KEY_PREFIX)
}

/// Assigns inputs and slots in declaration order, the layout every consumer reads back.
pub fn lay_out(definitions: &[FeatureDefinition]) -> Vec<FeatureSpec> {
    let mut next_slot: HashMap<(Scope, Part), usize> = HashMap::new();
    let mut specs = Vec::with_capacity(definitions.len());
    for definition in definitions {
        let scope = definition.source.scope();
        let (kind, width) = match &definition.transform {
            Transform::Id { .. } => (Kind::Id, 1),
            Transform::IdBag { max_len, .. } => (Kind::IdBag, *max_len),
            Transform::Dense { dim } => (Kind::Dense, *dim),
            Transform::Numeric { .. } => (Kind::Numeric, 1),
        };
        let part = Part::holding(kind);
        let slot = next_slot.entry((scope, part)).or_insert(0);
        specs.push(FeatureSpec {
            name: definition.name.to_string(),
            group: definition.group,
            scope,
            kind,
            source: definition.source,
            input: input_name(scope, part),
            slot: *slot,
            width,
            transform: definition.transform.clone(),
            marks_cold_start: definition.marks_cold_start,
            bounds: None,
        });
        *slot += width;
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features;

    /// The default features lay out into the eight inputs the shipped graph declares, in
    /// its order, each feature named after the input its kind and scope put it in.
    #[test]
    fn default_features_fill_every_input_in_declaration_order() {
        let specs = lay_out(&features::default_definitions());
        let names: Vec<String> = inputs(&specs).iter().map(Input::name).collect();
        assert_eq!(
            names,
            [
                "request_ids",
                "request_bag_ids",
                "request_bag_mask",
                "request_dense",
                "candidate_ids",
                "candidate_bag_ids",
                "candidate_bag_mask",
                "candidate_dense",
            ]
        );
        for spec in &specs {
            assert_eq!(spec.input, input_name(spec.scope, Part::holding(spec.kind)));
        }
    }
}
