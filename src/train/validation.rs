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

/// The stream positive rate of the validation rows of each kind the variant trains on,
/// keyed like [`stream_ap`]'s APs (`promotion_ap`, `ad_ap`).
pub fn base_rates(plan: &Plan, rows: &[Impression]) -> BTreeMap<String, f64> {
    CandidateKind::ALL
        .into_iter()
        .filter(|kind| plan.uses(*kind))
        .filter_map(|kind| {
            let (count, positives) = rows
                .iter()
                .filter(|row| row.kind == kind)
                .fold((0usize, 0usize), |(n, p), row| {
                    (n + 1, p + usize::from(row.stream))
                });
            (positives > 0).then(|| {
                (
                    format!("{}_ap", kind.as_str()),
                    positives as f64 / count as f64,
                )
            })
        })
        .collect()
}

/// Adds each stream AP's lift over its base rate (`{kind}_lift`) to `metrics` and
/// returns their mean: the checkpoint score. A random ranking has lift 1 on every kind,
/// so a head serving rare ad streams counts as much as one serving promotions.
pub fn lift_score(metrics: &mut BTreeMap<String, f64>, base_rates: &BTreeMap<String, f64>) -> f64 {
    let lifts: Vec<(String, f64)> = metrics
        .iter()
        .filter_map(|(key, ap)| {
            let rate = base_rates.get(key)?;
            Some((key.replace("_ap", "_lift"), ap / rate))
        })
        .collect();
    let score = if lifts.is_empty() {
        0.0
    } else {
        lifts.iter().map(|(_, lift)| lift).sum::<f64>() / lifts.len() as f64
    };
    metrics.extend(lifts);
    score
}
