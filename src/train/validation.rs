//! The validation rows, assembled once, and what the trainer measures on them: logits as
//! served (batch norm in inference mode) and the stream heads' average precision, which
//! drives early stopping.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::bundle::ResponseField;
use crate::dataset;
use crate::entities::CandidateKind;
use crate::features::{Assembler, ScopeTensors};
use crate::logs::{Impression, Snapshot};
use crate::quality;

use super::Plan;
use super::network::Network;

/// Rows per assembled chunk: large enough for efficient forward passes, small enough
/// that a chunk's tensors stay a few megabytes.
const VALIDATION_CHUNK: usize = 8192;

/// Validation rows assembled once, in chunks, with what evaluation needs per row.
pub struct ValidationSet {
    chunks: Vec<(ScopeTensors, ScopeTensors)>,
    pub rows: Vec<Impression>,
}

impl ValidationSet {
    pub fn assemble(
        assembler: &Assembler,
        snapshot: &Snapshot,
        rows: Vec<Impression>,
    ) -> Result<ValidationSet> {
        let mut chunks = Vec::new();
        for chunk in rows.chunks(VALIDATION_CHUNK) {
            let (request_views, candidate_views): (Vec<_>, Vec<_>) = chunk
                .iter()
                .map(|row| dataset::views(snapshot, row))
                .unzip();
            chunks.push((
                assembler.request(&request_views)?,
                assembler.candidates(&candidate_views)?,
            ));
        }
        Ok(ValidationSet { chunks, rows })
    }

    /// Logits of every row, `[rows, heads]` row-major, as served (running statistics).
    pub fn predict(&self, network: &mut Network) -> Result<Vec<f32>> {
        let mut logits = Vec::with_capacity(self.rows.len() * network.heads.len());
        for (request, candidates) in &self.chunks {
            let output = network.forward(request, candidates, false)?;
            logits.extend(output.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(logits)
    }
}

/// Validation AP of each stream head on the rows of the kinds it serves, for the sources
/// the variant trains on; their mean drives early stopping.
pub fn stream_ap(
    plan: &Plan,
    heads: usize,
    logits: &[f32],
    rows: &[Impression],
) -> BTreeMap<String, f64> {
    let mut result = BTreeMap::new();
    for kind in CandidateKind::ALL {
        let Some(head_index) = plan
            .heads
            .iter()
            .position(|h| h.field == ResponseField::Stream && h.kinds.contains(&kind))
        else {
            continue;
        };
        if !plan.uses(kind) {
            continue;
        }
        let (scores, labels): (Vec<f64>, Vec<bool>) = rows
            .iter()
            .enumerate()
            .filter(|(_, row)| row.kind == kind)
            .map(|(index, row)| (f64::from(logits[index * heads + head_index]), row.stream))
            .unzip();
        if let Some(ap) = quality::average_precision(&scores, &labels) {
            result.insert(format!("{}_ap", kind.as_str()), ap);
        }
    }
    result
}

/// The mean of the stream APs: the early-stopping score.
pub fn score(metrics: &BTreeMap<String, f64>) -> f64 {
    if metrics.is_empty() {
        0.0
    } else {
        metrics.values().sum::<f64>() / metrics.len() as f64
    }
}
