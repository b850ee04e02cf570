//! Phase 3 of training: every head is calibrated (Platt scaling) on the natural-distribution
//! validation rows of the kinds it serves, undoing the base-rate shift of source-balanced
//! batches, and becomes the manifest's [`HeadSpec`]. A head serving both kinds is scaled
//! per kind, each on that kind's validation rows (see `HeadSpec::calibration_by_kind`).

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::json;

use crate::bundle::{Calibration, HeadSpec};
use crate::entities::CandidateKind;
use crate::graph::OUTPUT_NAME;
use crate::quality;

use super::Plan;
use super::network::Network;
use super::validation::{self, ValidationSet};

/// The manifest's heads and what calibration did on the validation rows.
pub struct Calibrated {
    pub heads: Vec<HeadSpec>,
    /// Per head: its rows, and per kind it serves the rows, observed rate, mean
    /// calibrated probability and the scaling applied.
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
        let rows: Vec<(f32, bool, CandidateKind)> = validation
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| head.kinds.contains(&row.kind))
            .map(|(row_index, row)| {
                (
                    logits[row_index * width + index],
                    head.label.of(row),
                    row.kind,
                )
            })
            .collect();
        let fitted = fit_per_kind(&head.kinds, &rows);
        report.insert(head.name.to_string(), fitted.report);
        heads.push(HeadSpec {
            name: head.name.to_string(),
            output: OUTPUT_NAME.to_string(),
            index,
            kinds: head.kinds.clone(),
            field: head.field.clone(),
            calibration: fitted.calibration,
            calibration_by_kind: fitted.by_kind,
        });
    }
    Ok(Calibrated {
        heads,
        report,
        validation: validation::stream_ap(plan, width, &logits, &validation.rows),
    })
}

/// A head's scalings ([`HeadSpec::calibration`] and [`HeadSpec::calibration_by_kind`])
/// and, per kind it serves, the check the manifest records.
pub struct HeadCalibration {
    pub calibration: Calibration,
    pub by_kind: BTreeMap<CandidateKind, Calibration>,
    pub report: serde_json::Value,
}

/// Calibrates a head serving `kinds` on its natural-distribution rows `(logit, label,
/// kind)`: one Platt scaling on all of them, and for a head serving several kinds one per
/// kind that has both classes among its rows (otherwise that kind keeps the head's).
pub fn fit_per_kind(
    kinds: &[CandidateKind],
    rows: &[(f32, bool, CandidateKind)],
) -> HeadCalibration {
    let of_kinds = |wanted: &[CandidateKind]| -> (Vec<f32>, Vec<bool>) {
        rows.iter()
            .filter(|(_, _, kind)| wanted.contains(kind))
            .map(|(logit, label, _)| (*logit, *label))
            .unzip()
    };
    let (logits, labels) = of_kinds(kinds);
    let calibration = quality::fit_platt(&logits, &labels);
    let mut report = json!({"rows": labels.len()});
    let mut by_kind = BTreeMap::new();
    for &kind in kinds {
        let (kind_logits, kind_labels) = of_kinds(&[kind]);
        let kind_calibration = if kinds.len() > 1 && has_both_classes(&kind_labels) {
            let fitted = quality::fit_platt(&kind_logits, &kind_labels);
            by_kind.insert(kind, fitted.clone());
            fitted
        } else {
            calibration.clone()
        };
        report[kind.as_str()] = summary(&kind_calibration, &kind_logits, &kind_labels);
    }
    HeadCalibration {
        calibration,
        by_kind,
        report,
    }
}

/// Platt scaling of one head on its natural-distribution logits and labels (one kind, or
/// kinds that share one scaling), and the check the manifest records ([`summary`]).
pub fn fit_head(logits: &[f32], labels: &[bool]) -> (Calibration, serde_json::Value) {
    let calibration = quality::fit_platt(logits, labels);
    let check = summary(&calibration, logits, labels);
    (calibration, check)
}

fn has_both_classes(labels: &[bool]) -> bool {
    labels.iter().any(|label| *label) && labels.iter().any(|label| !*label)
}

/// Rows, observed rate and mean calibrated probability of one kind's validation rows.
fn summary(calibration: &Calibration, logits: &[f32], labels: &[bool]) -> serde_json::Value {
    let observed = labels.iter().filter(|l| **l).count() as f64 / labels.len().max(1) as f64;
    let predicted = logits
        .iter()
        .map(|z| calibration.probability(*z))
        .sum::<f64>()
        / logits.len().max(1) as f64;
    json!({
        "rows": labels.len(),
        "observed_rate": observed,
        "mean_calibrated": predicted,
        "slope": calibration.slope,
        "intercept": calibration.intercept,
    })
}
