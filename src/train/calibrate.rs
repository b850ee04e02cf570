//! Phase 3 of training: every head is calibrated (Platt scaling) on the natural-distribution
//! validation rows of the kinds it serves, undoing the base-rate shift of source-balanced
//! batches, and becomes the manifest's [`HeadSpec`].

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::json;

use crate::bundle::{Calibration, HeadSpec};
use crate::graph::OUTPUT_NAME;
use crate::quality;

use super::Plan;
use super::network::Network;
use super::validation::{self, ValidationSet};

/// The manifest's heads and what calibration did on the validation rows.
pub struct Calibrated {
    pub heads: Vec<HeadSpec>,
    /// Per head: rows, observed rate, mean calibrated probability.
    pub report: BTreeMap<String, serde_json::Value>,
    /// The stream heads' validation AP at the restored epoch.
    pub validation: BTreeMap<String, f64>,
}

pub fn calibrate(
    plan: &Plan,
    network: &mut Network,
    validation: &ValidationSet,
) -> Result<Calibrated> {
    let logits = validation.predict(network)?;
    let width = plan.heads.len();
    let mut heads = Vec::with_capacity(width);
    let mut report = BTreeMap::new();
    for (index, head) in plan.heads.iter().enumerate() {
        let (head_logits, labels): (Vec<f32>, Vec<bool>) = validation
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| head.kinds.contains(&row.kind))
            .map(|(row_index, row)| (logits[row_index * width + index], head.label.of(row)))
            .unzip();
        let (calibration, check) = fit_head(&head_logits, &labels);
        report.insert(head.name.to_string(), check);
        heads.push(HeadSpec {
            name: head.name.to_string(),
            output: OUTPUT_NAME.to_string(),
            index,
            kinds: head.kinds.clone(),
            field: head.field.clone(),
            calibration,
        });
    }
    Ok(Calibrated {
        heads,
        report,
        validation: validation::stream_ap(plan, width, &logits, &validation.rows),
    })
}

/// Platt scaling of one head on its natural-distribution validation logits and labels,
/// and the check the manifest records: rows, observed rate, mean calibrated probability.
pub fn fit_head(logits: &[f32], labels: &[bool]) -> (Calibration, serde_json::Value) {
    let calibration = quality::fit_platt(logits, labels);
    let observed = labels.iter().filter(|l| **l).count() as f64 / labels.len().max(1) as f64;
    let predicted = logits
        .iter()
        .map(|z| calibration.probability(*z))
        .sum::<f64>()
        / logits.len().max(1) as f64;
    let check =
        json!({"rows": labels.len(), "observed_rate": observed, "mean_calibrated": predicted});
    (calibration, check)
}
