//! The A/B replay: a simulated budget-split test of ad selection, the offline stand-in
//! for the paper's online test.
//!
//! Every held-out ad impression is an opportunity: one user, one moment, one slot. The
//! world's oracle (`world::Oracle`) fills it with several competing ads (the logged one
//! and others drawn from other campaigns for the same user and moment, priced as the
//! world prices them), each with its true stream probability. Each arm (a bundle, or a
//! reference policy) gets the same budget and walks the same opportunities in the same
//! order, picks in each the candidate with the highest predicted stream probability per
//! unit cost, pays its cost, and gets a stream when the opportunity's uniform number
//! falls below the chosen ad's true probability: common random numbers, so that two
//! arms choosing the same ad see the same outcome and arms choosing different ads see
//! outcomes as alike as their probabilities allow. An arm stops when its budget is
//! spent; arms that buy streams cheaply buy more of them.
//!
//! Reference arms bound the range: the oracle (true probability per unit cost), the
//! cheapest candidate (cost only, what a bidder without a model does) and a random one.
//!
//! Each replicate resamples the test users (the bootstrap of `stats`) and draws fresh
//! uniforms and a fresh walk order; figures are eCPS = spend / streams and
//! i2s = streams / impressions, overall and per tier group of the chosen ad's show, with
//! intervals over training seeds and replicates (`stats::combine`).
//!
//! This module knows opportunities, candidates and scores; it knows nothing of bundles,
//! files or the world's internals.

use clap::ValueEnum;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::metrics::TierGroup;
use super::stats::{self, Interval, Replicated, UserBootstrap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayPolicy {
    /// Highest predicted stream probability per unit cost: what a bidder paying for
    /// streams maximizes.
    PerCost,
    /// Highest predicted stream probability, whatever it costs.
    Probability,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplaySettings {
    /// Competing ads per opportunity, the logged one included.
    pub candidates: usize,
    /// Bootstrap replicates (fresh users, uniforms and order each).
    pub replicates: usize,
    /// Each arm's budget, as a share of what buying the mean-priced candidate at every
    /// opportunity of the replicate would cost: below 1 so that arms run out of money and
    /// cheap streams matter.
    pub budget_share: f64,
    pub policy: ReplayPolicy,
    pub seed: u64,
}

/// One competing ad.
#[derive(Debug, Clone, Copy)]
pub struct CandidateAd {
    pub cost: f64,
    /// The world's true stream probability.
    pub p_stream: f64,
    pub group: TierGroup,
}

/// One ad opportunity: a user and its competing ads, `candidates` into
/// [`Market::candidates`].
#[derive(Debug, Clone)]
pub struct Opportunity {
    /// Index of the user in the bootstrap.
    pub user: u32,
    pub candidates: std::ops::Range<usize>,
}

/// Every opportunity of the test days and their candidates; model scores are aligned
/// with `candidates`.
#[derive(Debug, Clone, Default)]
pub struct Market {
    pub opportunities: Vec<Opportunity>,
    pub candidates: Vec<CandidateAd>,
}

/// How an arm chooses within an opportunity.
#[derive(Debug, Clone, Copy)]
pub enum Chooser<'a> {
    /// Predicted stream probability per market candidate (calibrated for ads).
    Model(&'a [f64]),
    /// The world's true stream probability: the best any model could do.
    Oracle,
    /// The cheapest candidate: no model at all, just the price.
    CostOnly,
    /// A uniformly random candidate.
    Random,
}

/// An arm: one chooser per training seed (references have one).
pub struct Arm<'a> {
    pub label: String,
    pub reference: bool,
    pub seeds: Vec<Chooser<'a>>,
}

/// What one arm bought in one replicate, overall and per tier group.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    spend: f64,
    streams: f64,
    impressions: f64,
}

#[derive(Debug, Clone, Default)]
struct Outcome {
    overall: Totals,
    groups: [Totals; TierGroup::ALL.len()],
}

/// Figures of one population (all, or one tier group) for one arm.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayFigures {
    /// `None` for all opportunities, else the tier group of the chosen ad's show.
    pub group: Option<TierGroup>,
    /// Means over seeds and replicates.
    pub impressions: f64,
    pub streams: f64,
    pub spend: f64,
    pub ecps: Option<Interval>,
    pub i2s: Option<Interval>,
    /// Relative change against the baseline arm, paired per seed and replicate.
    pub ecps_change: Option<Interval>,
    pub i2s_change: Option<Interval>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmResult {
    pub label: String,
    pub reference: bool,
    pub seeds: usize,
    pub overall: ReplayFigures,
    /// In [`TierGroup::ALL`] order.
    pub groups: Vec<ReplayFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub settings: ReplaySettings,
    pub opportunities: usize,
    pub candidates: usize,
    /// Mean budget per replicate.
    pub budget: f64,
    pub baseline: String,
    pub arms: Vec<ArmResult>,
}

/// Cost floor for the per-cost policy, so that a free impression cannot divide by zero.
const MINIMUM_COST: f64 = 1e-9;

fn choose(
    chooser: Chooser<'_>,
    policy: ReplayPolicy,
    market: &Market,
    opportunity: &Opportunity,
    key: u64,
) -> usize {
    let range = opportunity.candidates.clone();
    match chooser {
        Chooser::Random => {
            let count = range.len().max(1);
            return range.start + (stats::splitmix(key ^ 0x0A11_CE5E) % count as u64) as usize;
        }
        Chooser::CostOnly => {
            // The cheapest; ties to the first, the same for every arm.
            return range.clone().fold(range.start, |best, index| {
                if market.candidates[index].cost < market.candidates[best].cost {
                    index
                } else {
                    best
                }
            });
        }
        Chooser::Model(_) | Chooser::Oracle => {}
    }
    let value = |index: usize| {
        let candidate = &market.candidates[index];
        let probability = match chooser {
            Chooser::Model(scores) => scores[index],
            _ => candidate.p_stream,
        };
        match policy {
            ReplayPolicy::PerCost => probability / candidate.cost.max(MINIMUM_COST),
            ReplayPolicy::Probability => probability,
        }
    };
    // Ties go to the first candidate, the same for every arm.
    range.clone().fold(range.start, |best, index| {
        if value(index) > value(best) {
            index
        } else {
            best
        }
    })
}

/// The walk of one replicate: opportunity indices, each as often as its user's
/// bootstrap weight, in a seeded order; and the replicate's budget.
fn walk(market: &Market, weights: &[u8], seed: u64, budget_share: f64) -> (Vec<usize>, f64) {
    let mut order: Vec<usize> = Vec::with_capacity(market.opportunities.len());
    let mut mean_cost = 0.0;
    for (index, opportunity) in market.opportunities.iter().enumerate() {
        let copies = weights[opportunity.user as usize];
        let range = opportunity.candidates.clone();
        let mean = market.candidates[range.clone()]
            .iter()
            .map(|c| c.cost)
            .sum::<f64>()
            / range.len().max(1) as f64;
        for _ in 0..copies {
            order.push(index);
            mean_cost += mean;
        }
    }
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    (order, budget_share * mean_cost)
}

fn replay_one(
    chooser: Chooser<'_>,
    settings: &ReplaySettings,
    market: &Market,
    order: &[usize],
    budget: f64,
    seed: u64,
) -> Outcome {
    let mut outcome = Outcome::default();
    for (step, &index) in order.iter().enumerate() {
        let opportunity = &market.opportunities[index];
        // One key per step: the same for every arm, so both the random pick and the
        // outcome are common random numbers.
        let key = stats::splitmix(seed ^ (step as u64).wrapping_mul(0x9E37_79B9));
        let winner = choose(chooser, settings.policy, market, opportunity, key);
        let candidate = &market.candidates[winner];
        if outcome.overall.spend + candidate.cost > budget {
            break;
        }
        let streams = if stats::uniform(key) < candidate.p_stream {
            1.0
        } else {
            0.0
        };
        for totals in [
            &mut outcome.overall,
            &mut outcome.groups[candidate.group.index()],
        ] {
            totals.spend += candidate.cost;
            totals.streams += streams;
            totals.impressions += 1.0;
        }
    }
    outcome
}

fn refs(values: &[Replicated]) -> Vec<&Replicated> {
    values.iter().collect()
}

fn ecps(totals: &Totals) -> Option<f64> {
    (totals.streams > 0.0).then(|| totals.spend / totals.streams)
}

fn i2s(totals: &Totals) -> Option<f64> {
    (totals.impressions > 0.0).then(|| totals.streams / totals.impressions)
}

/// A figure of one arm's seed as a replicated figure (its "whole test set" value is the
/// mean over replicates: the replay has no draw-free figure).
fn replicated(runs: &[Outcome], figure: impl Fn(&Outcome) -> Option<f64>) -> Replicated {
    let replicates: Vec<Option<f64>> = runs.iter().map(&figure).collect();
    let defined: Vec<f64> = replicates.iter().flatten().copied().collect();
    Replicated {
        point: (defined.len() == replicates.len() && !defined.is_empty())
            .then(|| defined.iter().sum::<f64>() / defined.len() as f64),
        replicates,
    }
}

/// Runs every arm over `settings.replicates` replicates; changes are against
/// `arms[baseline]`.
pub fn replay(
    market: &Market,
    bootstrap: &UserBootstrap,
    arms: &[Arm<'_>],
    baseline: usize,
    settings: &ReplaySettings,
) -> ReplayReport {
    let replicates = settings.replicates.min(bootstrap.replicates());
    // outcomes[arm][seed][replicate]
    let mut outcomes: Vec<Vec<Vec<Outcome>>> = arms
        .iter()
        .map(|arm| vec![Vec::with_capacity(replicates); arm.seeds.len()])
        .collect();
    let mut budgets = 0.0;
    for replicate in 0..replicates {
        let seed = stats::splitmix(settings.seed ^ (replicate as u64 + 1).rotate_left(40));
        let (order, budget) = walk(
            market,
            bootstrap.weights(replicate),
            seed,
            settings.budget_share,
        );
        budgets += budget;
        for (arm, runs) in arms.iter().zip(outcomes.iter_mut()) {
            for (chooser, seed_runs) in arm.seeds.iter().zip(runs.iter_mut()) {
                seed_runs.push(replay_one(*chooser, settings, market, &order, budget, seed));
            }
        }
    }
    let figures = |runs: &[Vec<Outcome>], group: Option<TierGroup>| {
        let totals = move |outcome: &Outcome| match group {
            None => outcome.overall,
            Some(group) => outcome.groups[group.index()],
        };
        let ecps_seeds: Vec<Replicated> = runs
            .iter()
            .map(|seed| replicated(seed, |o| ecps(&totals(o))))
            .collect();
        let i2s_seeds: Vec<Replicated> = runs
            .iter()
            .map(|seed| replicated(seed, |o| i2s(&totals(o))))
            .collect();
        let mean = |f: &dyn Fn(&Totals) -> f64| {
            let all: Vec<f64> = runs.iter().flatten().map(|o| f(&totals(o))).collect();
            all.iter().sum::<f64>() / all.len().max(1) as f64
        };
        (
            ecps_seeds,
            i2s_seeds,
            mean(&|t| t.impressions),
            mean(&|t| t.streams),
            mean(&|t| t.spend),
        )
    };
    let change = |values: &[f64]| stats::relative(values[0], values[1]);
    let populations: Vec<Option<TierGroup>> = std::iter::once(None)
        .chain(TierGroup::ALL.into_iter().map(Some))
        .collect();
    let results = arms
        .iter()
        .zip(&outcomes)
        .map(|(arm, runs)| {
            let mut per_population = populations.iter().map(|group| {
                let (ecps_seeds, i2s_seeds, impressions, streams, spend) = figures(runs, *group);
                let (base_ecps, base_i2s, ..) = figures(&outcomes[baseline], *group);
                ReplayFigures {
                    group: *group,
                    impressions,
                    streams,
                    spend,
                    ecps: stats::combine(&[&refs(&ecps_seeds)], |v| Some(v[0])),
                    i2s: stats::combine(&[&refs(&i2s_seeds)], |v| Some(v[0])),
                    ecps_change: stats::combine(&[&refs(&ecps_seeds), &refs(&base_ecps)], change),
                    i2s_change: stats::combine(&[&refs(&i2s_seeds), &refs(&base_i2s)], change),
                }
            });
            let overall = per_population.next().expect("the overall population");
            ArmResult {
                label: arm.label.clone(),
                reference: arm.reference,
                seeds: arm.seeds.len(),
                overall,
                groups: per_population.collect(),
            }
        })
        .collect();
    ReplayReport {
        settings: settings.clone(),
        opportunities: market.opportunities.len(),
        candidates: market.candidates.len(),
        budget: budgets / replicates.max(1) as f64,
        baseline: arms[baseline].label.clone(),
        arms: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opportunities of one good (p = 0.3) and one poor (p = 0.02) ad at the same price,
    /// and a cheap mediocre one (p = 0.05 at half the price).
    fn market() -> Market {
        let mut market = Market::default();
        for user in 0..2_000u32 {
            let start = market.candidates.len();
            market.candidates.push(CandidateAd {
                cost: 1.0,
                p_stream: 0.02,
                group: TierGroup::LowStream,
            });
            market.candidates.push(CandidateAd {
                cost: 1.0,
                p_stream: 0.3,
                group: TierGroup::HighStream,
            });
            market.candidates.push(CandidateAd {
                cost: 0.5,
                p_stream: 0.05,
                group: TierGroup::Tail,
            });
            market.opportunities.push(Opportunity {
                user,
                candidates: start..start + 3,
            });
        }
        market
    }

    fn settings() -> ReplaySettings {
        ReplaySettings {
            candidates: 3,
            replicates: 12,
            budget_share: 0.5,
            policy: ReplayPolicy::PerCost,
            seed: 3,
        }
    }

    /// The oracle's eCPS is about cost / 0.3; cost-only buys the cheap ad (0.5 / 0.05);
    /// a model that ranks backwards does worse than random; every arm spends the budget.
    #[test]
    fn replay_rewards_the_better_ranking() {
        let market = market();
        let bootstrap = UserBootstrap::new(2_000, 12, 5);
        let backwards: Vec<f64> = market.candidates.iter().map(|c| 1.0 - c.p_stream).collect();
        let arms = [
            Arm {
                label: "random".into(),
                reference: true,
                seeds: vec![Chooser::Random],
            },
            Arm {
                label: "oracle".into(),
                reference: true,
                seeds: vec![Chooser::Oracle],
            },
            Arm {
                label: "cost".into(),
                reference: true,
                seeds: vec![Chooser::CostOnly],
            },
            Arm {
                label: "backwards".into(),
                reference: false,
                seeds: vec![Chooser::Model(&backwards), Chooser::Model(&backwards)],
            },
        ];
        let report = replay(&market, &bootstrap, &arms, 0, &settings());
        let ecps = |i: usize| report.arms[i].overall.ecps.unwrap().mean;
        assert!((ecps(1) - 1.0 / 0.3).abs() < 0.3, "oracle {}", ecps(1));
        assert!((ecps(2) - 0.5 / 0.05).abs() < 1.0, "cost only {}", ecps(2));
        assert!(
            ecps(3) > ecps(0),
            "backwards {} vs random {}",
            ecps(3),
            ecps(0)
        );
        let change = report.arms[1].overall.ecps_change.unwrap();
        assert!(change.high < 0.0, "{change:?}");
        for arm in &report.arms {
            assert!(
                arm.overall.spend <= report.budget + 1e-9
                    && arm.overall.spend > report.budget - 1.0,
                "{} spent {} of {}",
                arm.label,
                arm.overall.spend,
                report.budget
            );
        }
        // The oracle buys only the good ad, in tiers 0-2.
        let oracle = &report.arms[1];
        assert_eq!(oracle.groups[TierGroup::LowStream.index()].impressions, 0.0);
        assert!(oracle.groups[TierGroup::HighStream.index()].ecps.is_some());
        assert!(oracle.groups[TierGroup::LowStream.index()].ecps.is_none());
        assert_eq!(report.arms[3].seeds, 2);
    }

    /// Common random numbers: two arms choosing the same ads have identical outcomes,
    /// so their change is exactly zero.
    #[test]
    fn identical_choosers_have_identical_outcomes() {
        let market = market();
        let bootstrap = UserBootstrap::new(2_000, 12, 5);
        let truth: Vec<f64> = market.candidates.iter().map(|c| c.p_stream).collect();
        let arms = [
            Arm {
                label: "oracle".into(),
                reference: true,
                seeds: vec![Chooser::Oracle],
            },
            Arm {
                label: "model with the truth".into(),
                reference: false,
                seeds: vec![Chooser::Model(&truth)],
            },
        ];
        let report = replay(&market, &bootstrap, &arms, 0, &settings());
        let change = report.arms[1].overall.ecps_change.unwrap();
        assert_eq!((change.low, change.mean, change.high), (0.0, 0.0, 0.0));
    }
}
