//! Ranking and calibration quality: average precision (the paper's metric), ROC AUC,
//! expected calibration error, and Platt scaling. Pure functions over scores and labels,
//! shared by the trainer (early stopping, calibration) and the evaluator, which is why
//! they live here and not in `train`: the evaluator needs the metrics, not the trainer.
//!
//! This module knows nothing of candle, tract, logs or bundles beyond [`Calibration`].

use crate::bundle::{Calibration, sigmoid};

/// Average precision as scikit-learn computes it: the sum over positives, in descending
/// score order, of precision at that threshold times the recall step. Tied scores are
/// one threshold. `None` when there is no positive.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|label| **label).count();
    if positives == 0 || scores.len() != labels.len() {
        return None;
    }
    let order = descending_order(scores);
    let mut true_positives = 0usize;
    let mut seen = 0usize;
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    let mut position = 0;
    while position < order.len() {
        let threshold = scores[order[position]];
        // Consume the whole tie group before taking a precision/recall point.
        while position < order.len() && scores[order[position]] == threshold {
            if labels[order[position]] {
                true_positives += 1;
            }
            seen += 1;
            position += 1;
        }
        let recall = true_positives as f64 / positives as f64;
        let precision = true_positives as f64 / seen as f64;
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    Some(ap)
}

/// ROC AUC by the rank-sum formula with midranks for ties. `None` when a class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|label| **label).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 || scores.len() != labels.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && scores[order[end + 1]] == scores[order[start]] {
            end += 1;
        }
        let midrank = (start + end) as f64 / 2.0 + 1.0;
        for index in &order[start..=end] {
            if labels[*index] {
                rank_sum += midrank;
            }
        }
        start = end + 1;
    }
    let positives = positives as f64;
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives as f64))
}

/// Mean binary cross-entropy of the probabilities `sigmoid(logit)` against the labels,
/// computed stably on the logits; `None` for no rows.
pub fn log_loss_of_logits(logits: &[f32], labels: &[bool]) -> Option<f64> {
    if logits.is_empty() || logits.len() != labels.len() {
        return None;
    }
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(logit, label)| {
            let z = f64::from(*logit);
            let y = if *label { 1.0 } else { 0.0 };
            z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
        })
        .sum();
    Some(total / logits.len() as f64)
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// Equal-mass bins (quantiles of the prediction), so that rare-event heads still get
/// populated bins; returns the bins and the count-weighted expected calibration error.
pub fn reliability(scores: &[f64], labels: &[bool], bins: usize) -> (Vec<ReliabilityBin>, f64) {
    if scores.is_empty() || bins == 0 {
        return (Vec::new(), 0.0);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut result = Vec::with_capacity(bins);
    let mut ece = 0.0;
    for bin in 0..bins {
        let start = bin * order.len() / bins;
        let end = (bin + 1) * order.len() / bins;
        if start == end {
            continue;
        }
        let members = &order[start..end];
        let mean_predicted = members.iter().map(|i| scores[*i]).sum::<f64>() / members.len() as f64;
        let observed_rate =
            members.iter().filter(|i| labels[**i]).count() as f64 / members.len() as f64;
        ece += members.len() as f64 / scores.len() as f64 * (mean_predicted - observed_rate).abs();
        result.push(ReliabilityBin {
            lower: scores[members[0]],
            upper: scores[members[members.len() - 1]],
            count: members.len(),
            mean_predicted,
            observed_rate,
        });
    }
    (result, ece)
}

/// `log(1 + exp(x))` without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn descending_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    order
}

/// Fits Platt scaling `sigmoid(slope * logit + intercept)` by Newton's method on the
/// log-loss, with Platt's smoothed targets so that separable data cannot diverge.
/// Falls back to the identity when a class is absent.
pub fn fit_platt(logits: &[f32], labels: &[bool]) -> Calibration {
    let positives = labels.iter().filter(|label| **label).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return Calibration::identity();
    }
    let target_positive = (positives + 1.0) / (positives + 2.0);
    let target_negative = 1.0 / (negatives + 2.0);
    let target = |label: bool| {
        if label {
            target_positive
        } else {
            target_negative
        }
    };
    // Cross-entropy against the smoothed targets, computed stably from the margin.
    let loss = |slope: f64, intercept: f64| -> f64 {
        logits
            .iter()
            .zip(labels)
            .map(|(logit, label)| {
                let margin = slope * f64::from(*logit) + intercept;
                let t = target(*label);
                // -t*log(p) - (1-t)*log(1-p) with p = sigmoid(margin).
                softplus(-margin) * t + softplus(margin) * (1.0 - t)
            })
            .sum()
    };
    let (mut slope, mut intercept) = (1.0f64, 0.0f64);
    let mut current = loss(slope, intercept);
    for _ in 0..100 {
        let (mut g_slope, mut g_intercept) = (0.0, 0.0);
        let (mut h_ss, mut h_si, mut h_ii) = (1e-9, 0.0, 1e-9);
        for (logit, label) in logits.iter().zip(labels) {
            let x = f64::from(*logit);
            let p = sigmoid(slope * x + intercept);
            let residual = p - target(*label);
            g_slope += residual * x;
            g_intercept += residual;
            let weight = p * (1.0 - p);
            h_ss += weight * x * x;
            h_si += weight * x;
            h_ii += weight;
        }
        let determinant = h_ss * h_ii - h_si * h_si;
        if determinant.abs() < 1e-12 {
            break;
        }
        let step_slope = (h_ii * g_slope - h_si * g_intercept) / determinant;
        let step_intercept = (h_ss * g_intercept - h_si * g_slope) / determinant;
        // Backtracking, as in Platt's and Lin et al.'s algorithm: pure Newton overshoots
        // when the optimum is far from the start.
        let mut fraction = 1.0;
        let mut improved = false;
        while fraction > 1e-10 {
            let (next_slope, next_intercept) = (
                slope - fraction * step_slope,
                intercept - fraction * step_intercept,
            );
            let next = loss(next_slope, next_intercept);
            if next < current {
                slope = next_slope;
                intercept = next_intercept;
                current = next;
                improved = true;
                break;
            }
            fraction /= 2.0;
        }
        let moved = (fraction * step_slope)
            .abs()
            .max((fraction * step_intercept).abs());
        if !improved || moved < 1e-10 {
            break;
        }
    }
    if slope.is_finite() && intercept.is_finite() {
        Calibration {
            method: "platt".into(),
            slope,
            intercept,
        }
    } else {
        Calibration::identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AP matches a case computed by hand (and by scikit-learn: 0.8333...).
    #[test]
    fn average_precision_matches_hand_computed_case() {
        // Descending: 0.9(+) 0.8(-) 0.7(+) 0.1(-): P@1 = 1, P@3 = 2/3; AP = 0.5*1 + 0.5*2/3.
        let ap = average_precision(&[0.1, 0.9, 0.7, 0.8], &[false, true, true, false]).unwrap();
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12, "{ap}");
    }

    /// Tied scores form one threshold, as in scikit-learn.
    #[test]
    fn average_precision_treats_ties_as_one_threshold() {
        let ap = average_precision(&[0.5, 0.5, 0.5, 0.5], &[true, false, false, true]).unwrap();
        assert!((ap - 0.5).abs() < 1e-12, "{ap}");
        assert_eq!(average_precision(&[0.3], &[false]), None);
    }

    /// AUC of a perfect ranking is 1, of a reversed one 0, of ties 0.5.
    #[test]
    fn roc_auc_extremes_and_ties() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.3, 0.4], &labels), Some(1.0));
        assert_eq!(roc_auc(&[0.4, 0.3, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &labels), Some(0.5));
    }

    /// Platt scaling recovers a known slope and intercept from data drawn from them.
    #[test]
    fn platt_recovers_known_parameters() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..200_000 {
            let z: f32 = rng.random_range(-4.0..4.0);
            let p = sigmoid(0.5 * f64::from(z) - 2.0);
            logits.push(z);
            labels.push(rng.random::<f64>() < p);
        }
        let fitted = fit_platt(&logits, &labels);
        assert!((fitted.slope - 0.5).abs() < 0.03, "{fitted:?}");
        assert!((fitted.intercept + 2.0).abs() < 0.05, "{fitted:?}");
    }

    /// Log loss on logits equals the textbook formula on probabilities, also for logits
    /// whose probability rounds to 0 or 1.
    #[test]
    fn log_loss_matches_the_formula() {
        let logits = [2.0f32, -1.0, 0.0];
        let labels = [true, false, true];
        let expected = -(sigmoid(2.0).ln() + (1.0 - sigmoid(-1.0)).ln() + 0.5f64.ln()) / 3.0;
        let got = log_loss_of_logits(&logits, &labels).unwrap();
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        let extreme = log_loss_of_logits(&[-100.0], &[true]).unwrap();
        assert!((extreme - 100.0).abs() < 1e-9, "{extreme}");
        assert_eq!(log_loss_of_logits(&[], &[]), None);
    }

    /// Perfectly calibrated predictions have an ECE near zero.
    #[test]
    fn reliability_of_calibrated_scores_is_small() {
        let scores: Vec<f64> = (0..10_000).map(|i| (i % 100) as f64 / 100.0).collect();
        let labels: Vec<bool> = (0..10_000).map(|i| (i / 100) < (i % 100)).collect();
        let (bins, ece) = reliability(&scores, &labels, 10);
        assert_eq!(bins.len(), 10);
        assert!(ece < 0.02, "{ece}");
    }
}
