//! Uncertainty for the report: a bootstrap of the test set by user, the spread over
//! training seeds, their intervals, and the three-way verdicts on the paper's claims.
//!
//! Two sources of noise stand between a measured figure and the world's truth, and they
//! are independent: training (a model trained with another seed ranks differently) and
//! the test sample (other users, other draws of outcomes). Every figure is therefore
//! computed per training seed on the whole test set, and again on bootstrap replicates
//! of the test set in which each user's impressions are weighted by one Poisson(1) draw
//! (users, not impressions, are resampled: a user's impressions share a taste, so
//! treating them as independent would understate the noise). An interval is
//!
//! ```text
//! mean over seeds  ±  sqrt( (t(n-1) · sd_seeds / sqrt(n))^2 + (1.96 · sd_replicates)^2 )
//! ```
//!
//! where `sd_seeds` is the spread of the per-seed figures (training noise; `t` is
//! Student's quantile for `n` seeds) and `sd_replicates` the spread over replicates of
//! the mean over seeds (test-sample noise). With one seed only the second term exists,
//! and the interval says so (`seeds: 1`).
//!
//! This module knows numbers, labels and user keys; it knows nothing of bundles or files.

use serde::{Deserialize, Serialize};

/// A 95% interval of a figure over seeds and bootstrap replicates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Mean over training seeds of the figure on the whole test set.
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    /// Training seeds behind it (1: the interval covers the test sample only).
    pub seeds: usize,
}

impl Interval {
    /// The interval of independent samples of one quantity: mean ± t·sd/sqrt(n) (the
    /// replay's draws, say). `None` without samples.
    pub fn of_samples(samples: &[f64]) -> Option<Interval> {
        let (mean, sd) = mean_sd(samples)?;
        let half =
            t_quantile_975(samples.len().saturating_sub(1)) * sd / (samples.len() as f64).sqrt();
        Some(Interval {
            mean,
            low: mean - half,
            high: mean + half,
            seeds: samples.len(),
        })
    }

    /// Combines per-seed figures on the whole test set (`per_seed`) with the replicates'
    /// means over seeds (`replicate_means`), as the module documents. `None` without a
    /// seed.
    pub fn of(per_seed: &[f64], replicate_means: &[f64]) -> Option<Interval> {
        let (mean, seed_sd) = mean_sd(per_seed)?;
        let seeds = per_seed.len();
        let seed_half = if seeds > 1 {
            t_quantile_975(seeds - 1) * seed_sd / (seeds as f64).sqrt()
        } else {
            0.0
        };
        let sample_half = mean_sd(replicate_means).map_or(0.0, |(_, sd)| Z_975 * sd);
        let half = seed_half.hypot(sample_half);
        Some(Interval {
            mean,
            low: mean - half,
            high: mean + half,
            seeds,
        })
    }

    pub fn contains(&self, value: f64) -> bool {
        self.low <= value && value <= self.high
    }
}

/// The standard normal's 97.5% quantile.
pub const Z_975: f64 = 1.959_963_984_540_054;

/// Student's t 97.5% quantile for `df` degrees of freedom (the normal's beyond 30; for
/// `df = 0` there is no spread to scale, and the normal's is returned).
pub fn t_quantile_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => Z_975,
        1..=30 => TABLE[df - 1],
        _ => Z_975,
    }
}

/// Mean and sample standard deviation (0 for one value); `None` when empty.
pub fn mean_sd(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some((mean, sd))
}

/// Whether a measured interval supports a claim that a figure is above (or below) a
/// threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The whole interval is on the claim's side of the threshold.
    Agrees,
    /// The whole interval is on the other side.
    Disagrees,
    /// The interval spans the threshold: the data cannot tell.
    Inconclusive,
    /// A cell the claim needs has fewer positives than the report trusts (see
    /// [`MIN_POSITIVES`]), or a needed bundle was not evaluated.
    NotMeasured,
}

impl Verdict {
    /// The claim "the figure is above `threshold`" (`above = true`) or below it.
    pub fn of(interval: &Interval, threshold: f64, above: bool) -> Verdict {
        let (supporting, opposing) = if above {
            (interval.low > threshold, interval.high < threshold)
        } else {
            (interval.high < threshold, interval.low > threshold)
        };
        if supporting {
            Verdict::Agrees
        } else if opposing {
            Verdict::Disagrees
        } else {
            Verdict::Inconclusive
        }
    }

    /// Every part must agree for a compound claim to agree; one disagreeing part makes
    /// it disagree; otherwise it is inconclusive (or not measured when a part is).
    pub fn all(parts: &[Verdict]) -> Verdict {
        if parts.is_empty() || parts.contains(&Verdict::NotMeasured) {
            Verdict::NotMeasured
        } else if parts.contains(&Verdict::Disagrees) {
            Verdict::Disagrees
        } else if parts.iter().all(|v| *v == Verdict::Agrees) {
            Verdict::Agrees
        } else {
            Verdict::Inconclusive
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Agrees => "agrees",
            Verdict::Disagrees => "disagrees",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// A cell with fewer positive labels than this is shown as such, never as a number: the
/// AP of a few dozen streams moves by tens of percent between samples.
pub const MIN_POSITIVES: usize = 200;

/// Poisson(1) weights per user for bootstrap replicates: replicate `r` weighs user `u`
/// by a draw that depends on (seed, r, u) only, so that every bundle and seed sees the
/// same replicate of the test set and comparisons between them are paired.
#[derive(Debug, Clone)]
pub struct UserBootstrap {
    /// `weights[r][u]`.
    weights: Vec<Vec<u8>>,
}

/// SplitMix64: a well-mixed 64-bit hash for keyed draws (the replay's common random
/// numbers, the bootstrap's weights); a dependency for ten lines would not pay.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a key.
pub fn uniform(key: u64) -> f64 {
    (splitmix(key) >> 11) as f64 / (1u64 << 53) as f64
}

/// Poisson(1) by inversion of its distribution function (capped at 255; P(>12) < 1e-9).
fn poisson_one(uniform: f64) -> u8 {
    let mut k = 0u8;
    let mut probability = (-1.0f64).exp();
    let mut cumulative = probability;
    while uniform >= cumulative && k < u8::MAX {
        k += 1;
        probability /= f64::from(k);
        cumulative += probability;
    }
    k
}

impl UserBootstrap {
    pub fn new(users: usize, replicates: usize, seed: u64) -> UserBootstrap {
        let weights = (0..replicates as u64)
            .map(|replicate| {
                (0..users as u64)
                    .map(|user| {
                        poisson_one(uniform(splitmix(seed ^ replicate.rotate_left(32)) ^ user))
                    })
                    .collect()
            })
            .collect();
        UserBootstrap { weights }
    }

    pub fn replicates(&self) -> usize {
        self.weights.len()
    }

    /// Weights of replicate `r`, indexed by user.
    pub fn weights(&self, replicate: usize) -> &[u8] {
        &self.weights[replicate]
    }
}

/// Rows of one slice ranked once by descending score, so that the AP of any weighting
/// of them (a bootstrap replicate) is one pass.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// Per rank: the row's user index and label.
    users: Vec<u32>,
    labels: Vec<bool>,
    /// Per rank: whether the next rank has a different score (a threshold ends here).
    group_ends: Vec<bool>,
    pub positives: usize,
}

impl Ranked {
    /// `scores`, `labels` and `users` (indices into the bootstrap's users) per row.
    pub fn new(scores: &[f64], labels: &[bool], users: &[u32]) -> Ranked {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
        let group_ends = (0..order.len())
            .map(|rank| rank + 1 == order.len() || scores[order[rank + 1]] != scores[order[rank]])
            .collect();
        Ranked {
            users: order.iter().map(|i| users[*i]).collect(),
            labels: order.iter().map(|i| labels[*i]).collect(),
            group_ends,
            positives: labels.iter().filter(|l| **l).count(),
        }
    }

    /// AP with each row weighted by its user's weight (all ones: the plain AP, exactly as
    /// `quality::average_precision` computes it, tied scores being one threshold).
    pub fn ap(&self, user_weights: Option<&[u8]>) -> Option<f64> {
        let weight = |rank: usize| {
            user_weights.map_or(1.0, |weights| f64::from(weights[self.users[rank] as usize]))
        };
        let total_positive: f64 = (0..self.labels.len())
            .filter(|rank| self.labels[*rank])
            .map(weight)
            .sum();
        if total_positive <= 0.0 {
            return None;
        }
        let (mut true_positives, mut seen, mut previous_recall, mut ap) = (0.0, 0.0, 0.0, 0.0);
        for rank in 0..self.labels.len() {
            let w = weight(rank);
            seen += w;
            if self.labels[rank] {
                true_positives += w;
            }
            if self.group_ends[rank] && seen > 0.0 {
                let recall = true_positives / total_positive;
                ap += (recall - previous_recall) * (true_positives / seen);
                previous_recall = recall;
            }
        }
        Some(ap)
    }
}

/// A figure of one slice for one bundle: on the whole test set and on each replicate.
#[derive(Debug, Clone, Default)]
pub struct Replicated {
    pub point: Option<f64>,
    pub replicates: Vec<Option<f64>>,
}

impl Replicated {
    pub fn ap(ranked: &Ranked, bootstrap: &UserBootstrap) -> Replicated {
        Replicated {
            point: ranked.ap(None),
            replicates: (0..bootstrap.replicates())
                .map(|r| ranked.ap(Some(bootstrap.weights(r))))
                .collect(),
        }
    }
}

/// The interval of `f` applied to several replicated figures (`inputs[i][seed]`): per
/// seed on the whole test set, and per replicate (paired by index, so that every input
/// sees the same resampled users). Seeds are paired by position across inputs; an input
/// with one seed (a reference, or a single-seed experiment) is paired with every seed of
/// the others, and surplus seeds of a longer input are left out. `None` when `f` is
/// undefined on some seed's whole-test-set figures.
pub fn combine(inputs: &[&[&Replicated]], f: impl Fn(&[f64]) -> Option<f64>) -> Option<Interval> {
    if inputs.iter().any(|seeds| seeds.is_empty()) || inputs.is_empty() {
        return None;
    }
    let seeds = inputs
        .iter()
        .map(|seeds| seeds.len())
        .filter(|len| *len > 1)
        .min()
        .unwrap_or(1);
    let pick = |input: &[&Replicated], seed: usize| -> Replicated {
        input[if input.len() == 1 { 0 } else { seed }].clone()
    };
    let rows: Vec<Vec<Replicated>> = (0..seeds)
        .map(|seed| inputs.iter().map(|input| pick(input, seed)).collect())
        .collect();
    let evaluate = |values: Vec<Option<f64>>| -> Option<f64> {
        let values: Option<Vec<f64>> = values.into_iter().collect();
        f(&values?)
    };
    let per_seed: Vec<f64> = rows
        .iter()
        .map(|row| evaluate(row.iter().map(|r| r.point).collect()))
        .collect::<Option<Vec<f64>>>()?;
    let replicates = rows
        .iter()
        .flatten()
        .map(|r| r.replicates.len())
        .min()
        .unwrap_or(0);
    let replicate_means: Vec<f64> = (0..replicates)
        .filter_map(|replicate| {
            let values: Option<Vec<f64>> = rows
                .iter()
                .map(|row| evaluate(row.iter().map(|r| r.replicates[replicate]).collect()))
                .collect();
            values.map(|values| values.iter().sum::<f64>() / values.len() as f64)
        })
        .collect();
    Interval::of(&per_seed, &replicate_means)
}

/// Relative change `value / baseline - 1`.
pub fn relative(value: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0).then(|| value / baseline - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality;

    /// With unit weights the ranked AP is exactly the trainer's AP, ties included.
    #[test]
    fn ranked_ap_matches_the_plain_ap() {
        let scores = [0.9, 0.8, 0.8, 0.5, 0.4, 0.4, 0.4, 0.1];
        let labels = [true, false, true, false, true, false, false, true];
        let users = [0, 1, 2, 3, 4, 5, 6, 7];
        let ranked = Ranked::new(&scores, &labels, &users);
        let plain = quality::average_precision(&scores, &labels).expect("positives");
        assert_eq!(ranked.ap(None), Some(plain));
        assert_eq!(ranked.ap(Some(&[1; 8])), Some(plain));
        assert_eq!(Ranked::new(&[0.3], &[false], &[0]).ap(None), None);
    }

    /// A weight of 2 counts a user's rows twice: the same AP as duplicating them.
    #[test]
    fn weights_count_rows_as_copies() {
        let scores = [0.9, 0.7, 0.5, 0.2];
        let labels = [false, true, false, true];
        let weighted = Ranked::new(&scores, &labels, &[0, 1, 2, 3]).ap(Some(&[1, 2, 1, 0]));
        let copies = quality::average_precision(&[0.9, 0.7, 0.7, 0.5], &[false, true, true, false]);
        assert!((weighted.unwrap() - copies.unwrap()).abs() < 1e-12);
    }

    /// Poisson(1) weights average one, with the right share of zeros (e^-1).
    #[test]
    fn bootstrap_weights_are_poisson_one() {
        let bootstrap = UserBootstrap::new(20_000, 3, 11);
        for r in 0..3 {
            let weights = bootstrap.weights(r);
            let mean = weights.iter().map(|w| f64::from(*w)).sum::<f64>() / 20_000.0;
            let zeros = weights.iter().filter(|w| **w == 0).count() as f64 / 20_000.0;
            assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
            assert!((zeros - (-1.0f64).exp()).abs() < 0.02, "zeros {zeros}");
        }
        assert_ne!(bootstrap.weights(0), bootstrap.weights(1));
    }

    /// Seed spread and sample spread add in quadrature; one seed has no seed term.
    #[test]
    fn intervals_combine_both_sources() {
        let one = Interval::of(&[1.0], &[0.9, 1.1, 1.0, 1.0]).unwrap();
        let sample_sd = mean_sd(&[0.9, 1.1, 1.0, 1.0]).unwrap().1;
        assert!((one.high - 1.0 - Z_975 * sample_sd).abs() < 1e-12);
        let three = Interval::of(&[1.0, 2.0, 3.0], &[2.0, 2.0]).unwrap();
        assert_eq!(three.mean, 2.0);
        assert!((three.high - 2.0 - 4.303 * 1.0 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(three.seeds, 3);
    }

    /// Verdicts: on the claim's side, on the other, or spanning the threshold.
    #[test]
    fn verdicts_have_three_outcomes() {
        let at = |low, high| Interval {
            mean: (low + high) / 2.0,
            low,
            high,
            seeds: 3,
        };
        assert_eq!(Verdict::of(&at(0.12, 0.3), 0.1, true), Verdict::Agrees);
        assert_eq!(Verdict::of(&at(-0.2, 0.05), 0.1, true), Verdict::Disagrees);
        assert_eq!(
            Verdict::of(&at(0.05, 0.2), 0.1, true),
            Verdict::Inconclusive
        );
        assert_eq!(Verdict::of(&at(-0.5, -0.2), -0.1, false), Verdict::Agrees);
        assert_eq!(
            Verdict::all(&[Verdict::Agrees, Verdict::Inconclusive]),
            Verdict::Inconclusive
        );
        assert_eq!(
            Verdict::all(&[Verdict::Agrees, Verdict::Disagrees]),
            Verdict::Disagrees
        );
    }

    /// Paired changes over seeds and replicates: a constant 10% gain has a zero-width
    /// interval at +10%; a one-seed input pairs with every seed of the other.
    #[test]
    fn combined_relative_change() {
        let base = Replicated {
            point: Some(0.2),
            replicates: vec![Some(0.2), Some(0.1)],
        };
        let better = Replicated {
            point: Some(0.22),
            replicates: vec![Some(0.22), Some(0.11)],
        };
        let change = |v: &[f64]| relative(v[0], v[1]);
        let interval = combine(&[&[&better, &better], &[&base, &base]], change).expect("defined");
        assert!((interval.mean - 0.1).abs() < 1e-12);
        assert!((interval.high - interval.low).abs() < 1e-9);
        assert_eq!(interval.seeds, 2);
        let broadcast = combine(&[&[&better], &[&base, &base, &base]], change).expect("defined");
        assert_eq!(broadcast.seeds, 3);
        let missing = Replicated {
            point: None,
            replicates: vec![None, None],
        };
        assert!(combine(&[&[&missing], &[&base]], change).is_none());
    }
}
