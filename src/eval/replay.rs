//! The eCPS replay: an offline stand-in for the paper's budget-split A/B test.
//!
//! Held-out ad impressions are grouped into auctions of a few candidates that one user
//! could have been shown at about the same time. Each arm (a bundle, or a reference
//! policy) spends the same budget: it walks the auctions in one seeded order, picks a
//! candidate per auction by its predicted stream probability (per unit cost, by
//! default), pays that impression's logged cost, and the stream is drawn from the
//! world's TRUE probability (`Impression.p_stream`), not read from the log, because the
//! log only says what happened to the impression that was actually shown. Draws use
//! common random numbers: an impression's uniform depends on the seed and its id only,
//! so two arms that pick the same impression see the same outcome, and the comparison
//! between arms has far less noise than either arm alone.
//!
//! eCPS = spend / streams and i2s = streams / impressions, overall and per popularity
//! tier; each is a mean over seeds with a 95% interval (mean +- 1.96 sd / sqrt(n)).

use std::collections::BTreeMap;

use clap::ValueEnum;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::entities::CandidateKind;
use crate::logs::Impression;

use super::TIERS;

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
    pub auction_size: usize,
    pub seeds: usize,
    /// Each arm's budget, as a share of the mean candidate cost summed over auctions:
    /// below 1 so that arms run out of money and cheap streams matter.
    pub budget_share: f64,
    pub policy: ReplayPolicy,
    pub seed: u64,
}

/// Auctions of test ad impressions, as indices into the test rows.
#[derive(Debug, Clone)]
pub struct Auctions {
    /// How candidates were grouped, in words, for the report.
    pub grouping: String,
    pub groups: Vec<Vec<usize>>,
}

/// Consecutive ad impressions of the same user on the same day, `size` at a time (a
/// user's ad opportunities of a day, and the candidates competing for them). When the
/// world shows users too few ads for that to give auctions for at least half of the ad
/// impressions, falls back to impressions adjacent in time, whoever saw them.
pub fn build_auctions(rows: &[Impression], size: usize) -> Auctions {
    let size = size.max(2);
    let ads: Vec<usize> = (0..rows.len())
        .filter(|i| rows[*i].kind == CandidateKind::Ad)
        .collect();
    let mut by_user = ads.clone();
    by_user.sort_by(|a, b| {
        let (x, y) = (&rows[*a], &rows[*b]);
        (x.user_id.as_str(), x.day, x.timestamp, x.impression_id).cmp(&(
            y.user_id.as_str(),
            y.day,
            y.timestamp,
            y.impression_id,
        ))
    });
    let mut groups = Vec::new();
    let mut start = 0;
    while start < by_user.len() {
        let first = &rows[by_user[start]];
        let mut end = start;
        while end < by_user.len()
            && end - start < size
            && rows[by_user[end]].user_id == first.user_id
            && rows[by_user[end]].day == first.day
        {
            end += 1;
        }
        if end - start >= 2 {
            groups.push(by_user[start..end].to_vec());
        }
        start = end;
    }
    let covered: usize = groups.iter().map(Vec::len).sum();
    if covered * 2 >= ads.len() {
        return Auctions {
            grouping: format!("up to {size} ad impressions of the same user on the same day"),
            groups,
        };
    }
    let mut by_time = ads;
    by_time.sort_by_key(|i| (rows[*i].timestamp, rows[*i].impression_id));
    let groups = by_time
        .chunks(size)
        .filter(|chunk| chunk.len() >= 2)
        .map(<[usize]>::to_vec)
        .collect();
    Auctions {
        grouping: format!(
            "{size} ad impressions adjacent in time (same-user grouping covered only {covered} of {} ad impressions)",
            rows.iter().filter(|r| r.kind == CandidateKind::Ad).count()
        ),
        groups,
    }
}

/// How an arm chooses within an auction.
pub enum Chooser<'a> {
    /// Predicted stream probability per test row (only ad rows are read).
    Model(&'a [f64]),
    /// The world's true stream probability: the best any model could do.
    Oracle,
    /// A uniformly random candidate: what no model at all achieves.
    Random,
}

pub struct Arm<'a> {
    pub label: String,
    pub reference: bool,
    pub chooser: Chooser<'a>,
}

/// Mean of a statistic over seeds with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub seeds: usize,
}

impl Interval {
    /// `None` when no seed gave a value.
    pub fn of(samples: &[f64]) -> Option<Interval> {
        let n = samples.len();
        if n == 0 {
            return None;
        }
        let mean = samples.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let half = 1.96 * sd / (n as f64).sqrt();
        Some(Interval {
            mean,
            low: mean - half,
            high: mean + half,
            seeds: n,
        })
    }
}

/// What one arm bought in one seed's replay.
#[derive(Debug, Clone, Default)]
struct Outcome {
    spend: f64,
    streams: f64,
    impressions: f64,
    tiers: Vec<(f64, f64, f64)>,
}

impl Outcome {
    fn ecps(spend: f64, streams: f64) -> Option<f64> {
        (streams > 0.0).then(|| spend / streams)
    }

    fn i2s(streams: f64, impressions: f64) -> Option<f64> {
        (impressions > 0.0).then(|| streams / impressions)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TierReplay {
    pub tier: u8,
    /// Means over seeds.
    pub impressions: f64,
    pub streams: f64,
    pub spend: f64,
    pub ecps: Option<Interval>,
    pub i2s: Option<Interval>,
    /// Paired per seed against the baseline arm's same tier.
    pub ecps_change: Option<Interval>,
    pub i2s_change: Option<Interval>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmResult {
    pub label: String,
    /// Oracle and random arms are references, not bundles.
    pub reference: bool,
    pub spend: f64,
    pub streams: f64,
    pub impressions: f64,
    pub ecps: Option<Interval>,
    pub i2s: Option<Interval>,
    /// Relative change against the baseline arm, paired per seed.
    pub ecps_change: Option<Interval>,
    pub i2s_change: Option<Interval>,
    pub tiers: Vec<TierReplay>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub settings: ReplaySettings,
    pub grouping: String,
    pub auctions: usize,
    pub candidates: usize,
    pub budget: f64,
    pub baseline: String,
    pub arms: Vec<ArmResult>,
}

/// A uniform in [0, 1) that depends on the seed and the impression only (SplitMix64).
fn uniform(seed: u64, impression_id: u64) -> f64 {
    let mut z = seed ^ impression_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Cost floor for the per-cost policy, so that a free impression cannot divide by zero.
const MINIMUM_COST: f64 = 1e-9;

fn choose(
    chooser: &Chooser<'_>,
    policy: ReplayPolicy,
    rows: &[Impression],
    auction: &[usize],
    rng: &mut ChaCha8Rng,
) -> usize {
    let value = |index: usize| {
        let probability = match chooser {
            Chooser::Model(scores) => scores[index],
            Chooser::Oracle => rows[index].p_stream,
            Chooser::Random => 0.0,
        };
        match policy {
            ReplayPolicy::PerCost => probability / rows[index].cost.max(MINIMUM_COST),
            ReplayPolicy::Probability => probability,
        }
    };
    if let Chooser::Random = chooser {
        return auction[rng.random_range(0..auction.len())];
    }
    // Ties go to the first candidate, the same for every arm.
    let mut best = auction[0];
    let mut best_value = value(best);
    for &index in &auction[1..] {
        let candidate = value(index);
        if candidate > best_value {
            best = index;
            best_value = candidate;
        }
    }
    best
}

fn replay_one(
    arm: &Arm<'_>,
    settings: &ReplaySettings,
    rows: &[Impression],
    order: &[usize],
    auctions: &Auctions,
    budget: f64,
    seed: u64,
) -> Outcome {
    let mut outcome = Outcome {
        tiers: vec![(0.0, 0.0, 0.0); TIERS],
        ..Outcome::default()
    };
    let mut picks = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0FC4_01CE);
    for &auction in order {
        let winner = choose(
            &arm.chooser,
            settings.policy,
            rows,
            &auctions.groups[auction],
            &mut picks,
        );
        let row = &rows[winner];
        if outcome.spend + row.cost > budget {
            break;
        }
        let streamed = uniform(seed, row.impression_id) < row.p_stream;
        let streams = if streamed { 1.0 } else { 0.0 };
        outcome.spend += row.cost;
        outcome.streams += streams;
        outcome.impressions += 1.0;
        if let Some(tier) = outcome.tiers.get_mut(usize::from(row.show_tier)) {
            tier.0 += row.cost;
            tier.1 += streams;
            tier.2 += 1.0;
        }
    }
    outcome
}

/// Runs every arm over `settings.seeds` seeds; changes are against `arms[baseline]`.
pub fn replay(
    rows: &[Impression],
    auctions: &Auctions,
    arms: &[Arm<'_>],
    baseline: usize,
    settings: &ReplaySettings,
) -> ReplayReport {
    let budget = settings.budget_share
        * auctions
            .groups
            .iter()
            .map(|group| group.iter().map(|i| rows[*i].cost).sum::<f64>() / group.len() as f64)
            .sum::<f64>();
    // outcomes[arm][seed]
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::with_capacity(settings.seeds); arms.len()];
    for seed_index in 0..settings.seeds {
        let seed = settings
            .seed
            .wrapping_add(seed_index as u64)
            .wrapping_mul(0x2545_F491_4F6C_DD1D);
        let mut order: Vec<usize> = (0..auctions.groups.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        for (arm_index, arm) in arms.iter().enumerate() {
            outcomes[arm_index].push(replay_one(
                arm, settings, rows, &order, auctions, budget, seed,
            ));
        }
    }
    let base = &outcomes[baseline];
    let results = arms
        .iter()
        .zip(&outcomes)
        .map(|(arm, runs)| summarize_arm(arm, runs, base))
        .collect();
    ReplayReport {
        settings: settings.clone(),
        grouping: auctions.grouping.clone(),
        auctions: auctions.groups.len(),
        candidates: auctions.groups.iter().map(Vec::len).sum(),
        budget,
        baseline: arms[baseline].label.clone(),
        arms: results,
    }
}

/// Per seed `metric(arm) / metric(baseline) - 1` where both are defined.
fn paired_change(
    runs: &[Outcome],
    base: &[Outcome],
    metric: impl Fn(&Outcome) -> Option<f64>,
) -> Option<Interval> {
    let changes: Vec<f64> = runs
        .iter()
        .zip(base)
        .filter_map(|(run, base)| match (metric(run), metric(base)) {
            (Some(value), Some(reference)) if reference > 0.0 => Some(value / reference - 1.0),
            _ => None,
        })
        .collect();
    Interval::of(&changes)
}

fn summarize_arm(arm: &Arm<'_>, runs: &[Outcome], base: &[Outcome]) -> ArmResult {
    let mean_of =
        |f: &dyn Fn(&Outcome) -> f64| runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64;
    let defined = |f: &dyn Fn(&Outcome) -> Option<f64>| {
        Interval::of(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let overall_ecps = |o: &Outcome| Outcome::ecps(o.spend, o.streams);
    let overall_i2s = |o: &Outcome| Outcome::i2s(o.streams, o.impressions);
    let tiers = (0..TIERS)
        .map(|tier| {
            let tier_ecps = move |o: &Outcome| Outcome::ecps(o.tiers[tier].0, o.tiers[tier].1);
            let tier_i2s = move |o: &Outcome| Outcome::i2s(o.tiers[tier].1, o.tiers[tier].2);
            TierReplay {
                tier: tier as u8,
                impressions: mean_of(&|o| o.tiers[tier].2),
                streams: mean_of(&|o| o.tiers[tier].1),
                spend: mean_of(&|o| o.tiers[tier].0),
                ecps: defined(&tier_ecps),
                i2s: defined(&tier_i2s),
                ecps_change: paired_change(runs, base, tier_ecps),
                i2s_change: paired_change(runs, base, tier_i2s),
            }
        })
        .collect();
    ArmResult {
        label: arm.label.clone(),
        reference: arm.reference,
        spend: mean_of(&|o| o.spend),
        streams: mean_of(&|o| o.streams),
        impressions: mean_of(&|o| o.impressions),
        ecps: defined(&overall_ecps),
        i2s: defined(&overall_i2s),
        ecps_change: paired_change(runs, base, overall_ecps),
        i2s_change: paired_change(runs, base, overall_i2s),
        tiers,
    }
}

/// The paper's online results (budget-split A/B test of the MTL model), for the report.
pub const PAPER_ONLINE: [(&str, Option<f64>, Option<f64>); 6] = [
    // (population, i2s change, eCPS change)
    ("all podcasts", Some(0.18), Some(-0.20)),
    ("tier 0", Some(0.07), None),
    ("tier 2", Some(0.20), None),
    ("tier 3", Some(0.27), Some(-0.20)),
    ("tier 4", Some(0.33), Some(-0.24)),
    ("tier 5", Some(0.60), Some(-0.38)),
];

/// Counts auctions per tier of their candidates, for the report's notes.
pub fn candidates_by_tier(rows: &[Impression], auctions: &Auctions) -> BTreeMap<u8, usize> {
    let mut counts = BTreeMap::new();
    for index in auctions.groups.iter().flatten() {
        *counts.entry(rows[*index].show_tier).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::{ContextRecord, CreativeRecord};

    fn ad(id: u64, user: &str, p_stream: f64, cost: f64, tier: u8) -> Impression {
        Impression {
            impression_id: id,
            timestamp: 1_000 + id as i64,
            day: 0,
            user_id: user.into(),
            kind: CandidateKind::Ad,
            show_id: format!("s{id}"),
            episode_id: None,
            show_tier: tier,
            creative: CreativeRecord::default(),
            context: ContextRecord::default(),
            cost,
            stream: false,
            click: false,
            like: false,
            follow: false,
            p_stream,
            p_click: 0.0,
            p_like: 0.0,
            p_follow: 0.0,
        }
    }

    fn settings(policy: ReplayPolicy) -> ReplaySettings {
        ReplaySettings {
            auction_size: 2,
            seeds: 20,
            budget_share: 0.5,
            policy,
            seed: 3,
        }
    }

    /// Pairs of one good (p = 0.3) and one poor (p = 0.02) ad at the same price.
    fn world() -> Vec<Impression> {
        let mut rows = Vec::new();
        for pair in 0..2_000u64 {
            let user = format!("u{pair}");
            rows.push(ad(2 * pair, &user, 0.02, 1.0, 4));
            rows.push(ad(2 * pair + 1, &user, 0.3, 1.0, 1));
        }
        rows
    }

    /// Candidates of one user and day form an auction; every ad lands in one.
    #[test]
    fn auctions_group_a_users_ads() {
        let rows = world();
        let auctions = build_auctions(&rows, 4);
        assert_eq!(auctions.groups.len(), 2_000);
        assert!(
            auctions
                .groups
                .iter()
                .all(|g| g.len() == 2 && rows[g[0]].user_id == rows[g[1]].user_id)
        );
        assert!(auctions.grouping.contains("same user"));
    }

    /// The oracle's eCPS is about cost / 0.3, random's about cost / 0.16, a model that
    /// ranks backwards about cost / 0.02; the oracle's change against random is negative
    /// with an interval that excludes zero.
    #[test]
    fn replay_rewards_the_better_ranking() {
        let rows = world();
        let auctions = build_auctions(&rows, 2);
        let backwards: Vec<f64> = rows.iter().map(|r| 1.0 - r.p_stream).collect();
        let arms = [
            Arm {
                label: "random".into(),
                reference: true,
                chooser: Chooser::Random,
            },
            Arm {
                label: "oracle".into(),
                reference: true,
                chooser: Chooser::Oracle,
            },
            Arm {
                label: "backwards".into(),
                reference: false,
                chooser: Chooser::Model(&backwards),
            },
        ];
        let report = replay(&rows, &auctions, &arms, 0, &settings(ReplayPolicy::PerCost));
        assert!((report.budget - 1_000.0).abs() < 1e-9, "{}", report.budget);
        let ecps = |i: usize| report.arms[i].ecps.unwrap().mean;
        assert!((ecps(1) - 1.0 / 0.3).abs() < 0.3, "oracle {}", ecps(1));
        assert!((ecps(0) - 1.0 / 0.16).abs() < 0.6, "random {}", ecps(0));
        assert!(ecps(2) > 30.0, "backwards {}", ecps(2));
        let change = report.arms[1].ecps_change.unwrap();
        assert!(change.high < 0.0, "{change:?}");
        // Every arm spends the same budget, to within one impression.
        for arm in &report.arms {
            assert!(
                arm.spend <= report.budget && arm.spend > report.budget - 1.0,
                "{}",
                arm.spend
            );
        }
        // The oracle buys tier-1 impressions only.
        assert_eq!(report.arms[1].tiers[4].impressions, 0.0);
        assert!(report.arms[1].tiers[1].ecps.is_some());
        assert!(report.arms[1].tiers[4].ecps.is_none());
    }

    /// The interval of identical samples has no width; of none, no value.
    #[test]
    fn interval_of_constant_samples() {
        let interval = Interval::of(&[2.0, 2.0, 2.0]).unwrap();
        assert_eq!(
            (interval.mean, interval.low, interval.high),
            (2.0, 2.0, 2.0)
        );
        assert_eq!(Interval::of(&[]), None);
    }
}
