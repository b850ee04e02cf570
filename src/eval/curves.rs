//! Learning curves for new objectives, the experiment of `podscore reproduce` behind the
//! paper's claim that "a single joint model can be fine-tuned or directly applied to new
//! or low-data targeting tasks".
//!
//! For each new objective of the world and each number of labels (1k to 100k in the
//! default preset), five arms fill the objective from the same labels: a network trained
//! from scratch on them, `new-head` on the joint model, `new-head` on the
//! promotions-only model, `full` on the joint model, and `zero-shot` (the joint model's
//! closest head, calibrated). Each runs with several seeds; a seed draws its own labels
//! from the objective's pool, shared by every arm (the comparison is paired), and its
//! own initialization and batch order. Every arm is scored on the objective's test week
//! with the calibrated probability the server would answer: AP, ROC AUC and expected
//! calibration error, each a mean over seeds with a 95% interval
//! (mean ± t(0.975, n-1) · sd / sqrt(n): few seeds, so Student's quantile, not 1.96).
//!
//! The verdict: how many labels each arm needs to reach the AP that training from
//! scratch reaches with the most labels, read off its curve (interpolated in log labels
//! between the two grid points around it), and the ratio to that most.
//!
//! This module knows the trainer's fine-tuning entry point and the objective files; it
//! knows nothing of HTTP.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::logs::{self, ObjectiveImpression, Snapshot};
use crate::quality;
use crate::train::TrainLog;
use crate::train::finetune::{self, Base, FinetuneSettings, Inputs, Labelled, Mode, Objective};

use super::metrics::RELIABILITY_BINS;
use super::plots::{self, Line, Panel};
use super::report::file_stem;

/// The default preset's grid: the label counts.
pub const DEFAULT_LABELS: [usize; 5] = [1_000, 3_000, 10_000, 30_000, 100_000];
/// Three seeds give an interval at all; each costs a full pass over the grid.
pub const DEFAULT_SEEDS: usize = 3;
/// Test impressions per objective in the default preset: about a thousand positives for a
/// rate of 2-5%, so that the test AP is not what separates the arms.
pub const DEFAULT_TEST_LABELS: usize = 50_000;

/// One way of filling the objective, and the reproduction's bundle it starts from.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Arm {
    pub label: &'static str,
    pub mode: Mode,
    /// Label of the reproduction's bundle (its spec for `scratch`, its weights otherwise).
    pub base: &'static str,
    /// Built on the joint model: what the paper's claim is about.
    pub joint: bool,
}

pub const ARMS: [Arm; 5] = [
    Arm {
        label: "scratch",
        mode: Mode::Scratch,
        base: "mtl",
        joint: false,
    },
    Arm {
        label: "new-head on mtl",
        mode: Mode::NewHead,
        base: "mtl",
        joint: true,
    },
    Arm {
        label: "new-head on promo-only",
        mode: Mode::NewHead,
        base: "promo-only",
        joint: false,
    },
    Arm {
        label: "full on mtl",
        mode: Mode::Full,
        base: "mtl",
        joint: true,
    },
    Arm {
        label: "zero-shot on mtl",
        mode: Mode::ZeroShot,
        base: "mtl",
        joint: true,
    },
];

/// What the experiment runs.
#[derive(Debug, Clone, Serialize)]
pub struct CurveSettings {
    pub objectives: Vec<String>,
    /// Label counts, ascending.
    pub labels: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Everything else of fine-tuning (mode, labels and seed are set per cell).
    pub finetune: FinetuneSettings,
}

/// The grid of the learning curves, shared by `reproduce` and `curves`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CurveGrid {
    /// Label counts of the learning curves (default: 1k, 3k, 10k, 30k, 100k; small preset
    /// 300, 1k, 3k).
    #[arg(long, value_delimiter = ',', env = "PODSCORE_CURVE_LABELS")]
    pub curve_labels: Option<Vec<usize>>,
    /// Seeds per cell of the learning curves (default: 3).
    #[arg(long, env = "PODSCORE_CURVE_SEEDS")]
    pub curve_seeds: Option<usize>,
    /// New objectives to measure (default: every one the world has).
    #[arg(long, value_delimiter = ',', env = "PODSCORE_CURVE_OBJECTIVES")]
    pub curve_objectives: Option<Vec<String>>,
}

impl CurveGrid {
    /// The experiment's settings, `default_labels` unless told; seeds count up from
    /// `seed`. Every bad value at once.
    pub fn settings(&self, default_labels: &[usize], seed: u64) -> Result<CurveSettings> {
        let mut labels = self
            .curve_labels
            .clone()
            .unwrap_or_else(|| default_labels.to_vec());
        labels.sort_unstable();
        labels.dedup();
        let seeds = self.curve_seeds.unwrap_or(DEFAULT_SEEDS);
        let mut problems = Vec::new();
        if labels.is_empty() || labels[0] < 20 || labels[labels.len() - 1] > 1_000_000 {
            problems.push(format!(
                "--curve-labels must be 20 to 1000000 labels each, got {labels:?}"
            ));
        }
        if !(1..=20).contains(&seeds) {
            problems.push(format!("--curve-seeds must be in 1..=20, got {seeds}"));
        }
        let known: Vec<&str> = crate::world::objectives::OBJECTIVES
            .iter()
            .map(|objective| objective.name)
            .collect();
        let objectives = self
            .curve_objectives
            .clone()
            .unwrap_or_else(|| known.iter().map(|name| name.to_string()).collect());
        for objective in &objectives {
            if !known.contains(&objective.as_str()) {
                problems.push(format!(
                    "--curve-objectives: no objective `{objective}`; the world has {}",
                    known.join(", ")
                ));
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(CurveSettings {
            objectives,
            labels,
            seeds: (0..seeds as u64).map(|index| seed + index).collect(),
            finetune: FinetuneSettings::default(),
        })
    }
}

/// `podscore curves`: the learning curves alone, on bundles already trained (those of a
/// reproduction, or trained as it trains them), without training every variant again.
#[derive(clap::Args, Debug, Clone)]
pub struct CurvesArgs {
    /// World directory with the objectives' labels (`simulate --objective-labels N`).
    #[arg(long, env = "PODSCORE_DATA")]
    pub data: PathBuf,
    /// Directory holding the bases as `<label>/1`: `mtl` and `promo-only`, as
    /// `reproduce` writes them under `models/`.
    #[arg(long, env = "PODSCORE_MODELS")]
    pub models: PathBuf,
    /// Directory for `learning_curves.md`, `learning_curves.json` and the plots.
    #[arg(long, env = "PODSCORE_CURVES_OUT")]
    pub out: PathBuf,
    /// First seed; seed `i` of a cell is this plus `i`, as in `reproduce`.
    #[arg(long, default_value_t = 17, env = "PODSCORE_SEED")]
    pub seed: u64,
    #[command(flatten)]
    pub grid: CurveGrid,
    /// Hide per-run messages.
    #[arg(long, env = "PODSCORE_QUIET")]
    pub quiet: bool,
}

/// The report files `podscore curves` writes.
pub const MARKDOWN_FILE: &str = "learning_curves.md";
pub const JSON_FILE: &str = "learning_curves.json";

/// Runs `podscore curves` and writes its report.
pub fn command(args: &CurvesArgs) -> Result<()> {
    let started = Instant::now();
    let settings = args.grid.settings(&DEFAULT_LABELS, args.seed)?;
    let say = |message: String| {
        if !args.quiet {
            eprintln!("[{:>6.0}s] {message}", started.elapsed().as_secs_f64());
        }
    };
    let markdown_path = args.out.join(MARKDOWN_FILE);
    // Written after every seed: a run stopped early leaves the curves of the seeds done.
    let mut write = |curves: &Curves| -> Result<()> {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        let json_path = args.out.join(JSON_FILE);
        std::fs::write(&json_path, serde_json::to_string_pretty(curves)?)
            .with_context(|| format!("writing {}", json_path.display()))?;
        std::fs::write(&markdown_path, markdown(curves))
            .with_context(|| format!("writing {}", markdown_path.display()))?;
        for path in draw(curves, &args.out)? {
            ensure!(plots::is_png(&path)?, "{} is not a PNG", path.display());
        }
        say(format!(
            "wrote {} ({} of {} seeds)",
            markdown_path.display(),
            curves.settings.seeds.len(),
            settings.seeds.len()
        ));
        Ok(())
    };
    run(&args.data, &args.models, &settings, &say, &mut write)?;
    Ok(())
}

/// A mean over seeds with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub seeds: usize,
}

/// Student's t quantile at 0.975 for `df` degrees of freedom (1 to 10 tabulated; the
/// normal quantile beyond, where the difference is under 10%).
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    TABLE.get(df.wrapping_sub(1)).copied().unwrap_or(1.96)
}

impl Spread {
    pub fn of(samples: &[f64]) -> Option<Spread> {
        let n = samples.len();
        if n == 0 {
            return None;
        }
        let mean = samples.iter().sum::<f64>() / n as f64;
        let half = if n > 1 {
            let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t_975(n - 1) * variance.sqrt() / (n as f64).sqrt()
        } else {
            0.0
        };
        Some(Spread {
            mean,
            low: mean - half,
            high: mean + half,
            seeds: n,
        })
    }
}

/// One arm, one label count, one seed, on the test week.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub arm: &'static str,
    pub labels: usize,
    pub seed: u64,
    /// `None` with `error` set when the run could not be made (too few positives).
    pub ap: Option<f64>,
    pub auc: Option<f64>,
    pub ece: Option<f64>,
    pub mean_predicted: Option<f64>,
    pub best_epoch: Option<u64>,
    pub zero_shot_head: Option<String>,
    pub seconds: f64,
    pub error: Option<String>,
}

/// One arm at one label count, over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub arm: &'static str,
    pub labels: usize,
    pub ap: Option<Spread>,
    pub ece: Option<Spread>,
}

/// How many labels an arm needs to reach the target AP.
#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    pub arm: &'static str,
    /// `None`: not reached within the grid.
    pub labels: Option<f64>,
    /// The target was reached at the smallest count already (`labels` is then an upper
    /// bound).
    pub at_most: bool,
    /// The most labels of the grid over `labels`.
    pub fewer: Option<f64>,
}

/// The experiment on one objective.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectiveCurves {
    pub objective: String,
    pub description: String,
    pub test_rows: usize,
    pub test_positives: usize,
    /// AP of the world's true probabilities on the test week: the ceiling.
    pub oracle_ap: Option<f64>,
    pub cells: Vec<Cell>,
    pub points: Vec<Point>,
    /// The scratch arm's mean AP at the most labels, the bar every arm is held to.
    pub target_ap: Option<f64>,
    pub reach: Vec<Reach>,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Curves {
    pub settings: CurveSettings,
    pub arms: Vec<Arm>,
    pub objectives: Vec<ObjectiveCurves>,
    pub seconds: f64,
}

/// A base bundle with the assembler every run on it shares.
struct Prepared {
    base: Base,
    assembler: crate::features::Assembler,
}

/// Runs the experiment on the world in `world` from the reproduction's bundles, which
/// lie in `models/<label>/1`. Seeds are the outer loop: after each, `checkpoint` gets the
/// curves of every objective over the seeds done so far (the whole grid each time), so
/// that a run stopped early still leaves complete curves with fewer seeds.
pub fn run(
    world: &Path,
    models: &Path,
    settings: &CurveSettings,
    say: &dyn Fn(String),
    checkpoint: &mut dyn FnMut(&Curves) -> Result<()>,
) -> Result<Curves> {
    let started = Instant::now();
    let snapshot = logs::read_snapshot(world)
        .with_context(|| format!("reading the snapshot in {}", world.display()))?;
    let mut bases: Vec<(&'static str, Prepared)> = Vec::new();
    for arm in &ARMS {
        if bases.iter().any(|(label, _)| *label == arm.base) {
            continue;
        }
        let base = Base::read(&models.join(arm.base).join("1"))?;
        let assembler = base.assembler()?;
        bases.push((arm.base, Prepared { base, assembler }));
    }
    let prepared = |label: &str| -> &Prepared {
        &bases
            .iter()
            .find(|(base, _)| *base == label)
            .expect("every arm's base is prepared")
            .1
    };

    // Each objective with its test week assembled for every base, and its cells so far.
    let mut objectives = Vec::new();
    for name in &settings.objectives {
        let objective = Objective::read(world, name)?;
        let tests: Vec<(&'static str, Labelled)> = bases
            .iter()
            .map(|(label, prepared)| {
                Ok((
                    *label,
                    Labelled::assemble(&prepared.assembler, &snapshot, &objective.test)?,
                ))
            })
            .collect::<Result<_>>()?;
        let test_labels: Vec<bool> = objective.test.iter().map(|row| row.label).collect();
        let truth: Vec<f64> = objective.test.iter().map(|row| row.p_label).collect();
        let oracle_ap = quality::average_precision(&truth, &test_labels);
        objectives.push((objective, tests, oracle_ap, Vec::<Cell>::new()));
    }
    say(format!(
        "learning curves of {}: {} arms x {} label counts x {} seeds",
        settings.objectives.join(", "),
        ARMS.len(),
        settings.labels.len(),
        settings.seeds.len()
    ));
    let mut curves = None;
    for (done, &seed) in settings.seeds.iter().enumerate() {
        for (objective, tests, _, cells) in &mut objectives {
            let name = &objective.info.name;
            for &labels in &settings.labels {
                let (fit, held_out) =
                    objective.draw(Some(labels), settings.finetune.validation_share, seed)?;
                for arm in &ARMS {
                    let test = &tests
                        .iter()
                        .find(|(label, _)| *label == arm.base)
                        .expect("a test week per base")
                        .1;
                    let cell = run_cell(
                        arm,
                        prepared(arm.base),
                        &snapshot,
                        objective,
                        (&fit, &held_out),
                        test,
                        &FinetuneSettings {
                            mode: arm.mode,
                            labels: Some(labels),
                            seed,
                            quiet: true,
                            ..settings.finetune.clone()
                        },
                    )?;
                    say(format!(
                        "  {name}: seed {seed}, {labels} labels, {}: AP {} ({:.0}s)",
                        arm.label,
                        cell.ap
                            .map_or_else(|| "n/a".to_string(), |ap| format!("{ap:.4}")),
                        cell.seconds
                    ));
                    cells.push(cell);
                }
            }
        }
        let so_far = CurveSettings {
            seeds: settings.seeds[..=done].to_vec(),
            ..settings.clone()
        };
        let current = Curves {
            objectives: objectives
                .iter()
                .map(|(objective, _, oracle_ap, cells)| {
                    summarize(objective, &so_far, cells.clone(), *oracle_ap)
                })
                .collect(),
            settings: so_far,
            arms: ARMS.to_vec(),
            seconds: started.elapsed().as_secs_f64(),
        };
        checkpoint(&current)?;
        curves = Some(current);
    }
    curves.context("no seeds to run")
}

/// One fine-tuning run and its scores on the test week. A run that cannot be made
/// (labels without a positive) is recorded as such, not dropped. `full` runs without
/// the world's validation rows: only the objective's head is scored here, so the base
/// heads it moves are not recalibrated.
fn run_cell(
    arm: &Arm,
    prepared: &Prepared,
    snapshot: &Snapshot,
    objective: &Objective,
    (fit, held_out): (&[ObjectiveImpression], &[ObjectiveImpression]),
    test: &Labelled,
    settings: &FinetuneSettings,
) -> Result<Cell> {
    let started = Instant::now();
    let labels = settings.labels.unwrap_or(fit.len() + held_out.len());
    let mut cell = Cell {
        arm: arm.label,
        labels,
        seed: settings.seed,
        ap: None,
        auc: None,
        ece: None,
        mean_predicted: None,
        best_epoch: None,
        zero_shot_head: None,
        seconds: 0.0,
        error: None,
    };
    let validation = Labelled::assemble(&prepared.assembler, snapshot, held_out)?;
    let outcome = finetune::fine_tune(
        &Inputs {
            base: &prepared.base,
            assembler: &prepared.assembler,
            snapshot,
            objective: &objective.info,
            fit,
            held_out,
            validation: &validation,
            base_validation: None,
        },
        settings,
        &mut TrainLog::create(None)?,
    );
    let mut finetuned = match outcome {
        Ok(finetuned) => finetuned,
        Err(error) if validation.positives() == 0 || !fit.iter().any(|row| row.label) => {
            cell.error = Some(format!("{error:#}"));
            cell.seconds = started.elapsed().as_secs_f64();
            return Ok(cell);
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!("{}: {labels} labels, seed {}", arm.label, settings.seed)
            });
        }
    };
    let head = finetuned.heads[finetuned.column].clone();
    let logits = test.logits(&mut finetuned.network, finetuned.column)?;
    let probabilities: Vec<f64> = logits
        .iter()
        .map(|logit| head.calibration.probability(*logit))
        .collect();
    let (_, ece) = quality::reliability(&probabilities, &test.labels, RELIABILITY_BINS);
    cell.ap = quality::average_precision(&probabilities, &test.labels);
    cell.auc = quality::roc_auc(&probabilities, &test.labels);
    cell.ece = Some(ece);
    cell.mean_predicted =
        Some(probabilities.iter().sum::<f64>() / probabilities.len().max(1) as f64);
    cell.best_epoch = finetuned.report["training"]["best_epoch"].as_u64();
    cell.zero_shot_head = finetuned.report["zero_shot_head"]
        .as_str()
        .map(str::to_string);
    cell.seconds = started.elapsed().as_secs_f64();
    Ok(cell)
}

fn summarize(
    objective: &Objective,
    settings: &CurveSettings,
    cells: Vec<Cell>,
    oracle_ap: Option<f64>,
) -> ObjectiveCurves {
    let mut points = Vec::new();
    for arm in &ARMS {
        for &labels in &settings.labels {
            let of = |metric: &dyn Fn(&Cell) -> Option<f64>| {
                let samples: Vec<f64> = cells
                    .iter()
                    .filter(|cell| cell.arm == arm.label && cell.labels == labels)
                    .filter_map(metric)
                    .collect();
                Spread::of(&samples)
            };
            points.push(Point {
                arm: arm.label,
                labels,
                ap: of(&|cell| cell.ap),
                ece: of(&|cell| cell.ece),
            });
        }
    }
    let most = settings.labels.iter().copied().max().unwrap_or(0);
    let mean_ap = |arm: &str, labels: usize| {
        points
            .iter()
            .find(|point| point.arm == arm && point.labels == labels)
            .and_then(|point| point.ap)
            .map(|ap| ap.mean)
    };
    let target_ap = mean_ap("scratch", most);
    let reach: Vec<Reach> = ARMS
        .iter()
        .map(|arm| {
            let curve: Vec<(usize, Option<f64>)> = settings
                .labels
                .iter()
                .map(|&labels| (labels, mean_ap(arm.label, labels)))
                .collect();
            let (labels, at_most) = match target_ap {
                Some(target) => labels_to_reach(&curve, target),
                None => (None, false),
            };
            Reach {
                arm: arm.label,
                labels,
                at_most,
                fewer: labels.map(|needed| most as f64 / needed),
            }
        })
        .collect();
    let verdict = verdict(&reach, target_ap, most);
    let test_positives = objective.test.iter().filter(|row| row.label).count();
    ObjectiveCurves {
        objective: objective.info.name.clone(),
        description: objective.info.description.clone(),
        test_rows: objective.test.len(),
        test_positives,
        oracle_ap,
        cells,
        points,
        target_ap,
        reach,
        verdict,
    }
}

/// The labels at which a curve of mean AP first reaches `target`: interpolated linearly
/// in log labels between the last grid point below and the first at or above it. Reached
/// at the first point already: that count, as an upper bound (`true`).
pub fn labels_to_reach(curve: &[(usize, Option<f64>)], target: f64) -> (Option<f64>, bool) {
    let mut previous: Option<(usize, f64)> = None;
    for &(labels, ap) in curve {
        let Some(ap) = ap else {
            previous = None;
            continue;
        };
        if ap >= target {
            return match previous {
                None => (Some(labels as f64), true),
                Some(_) if ap == target => (Some(labels as f64), false),
                Some((below_labels, below_ap)) => {
                    let (low, high) = ((below_labels as f64).ln(), (labels as f64).ln());
                    let fraction = (target - below_ap) / (ap - below_ap);
                    (Some((low + fraction * (high - low)).exp()), false)
                }
            };
        }
        previous = Some((labels, ap));
    }
    (None, false)
}

fn count(labels: f64) -> String {
    if labels >= 1_000.0 {
        format!("{:.1}k", labels / 1_000.0)
    } else {
        format!("{labels:.0}")
    }
}

fn verdict(reach: &[Reach], target_ap: Option<f64>, most: usize) -> String {
    let Some(target) = target_ap else {
        return "no verdict: training from scratch gave no AP at the most labels".into();
    };
    let joint = reach
        .iter()
        .filter(|reach| ARMS.iter().any(|arm| arm.label == reach.arm && arm.joint))
        .filter_map(|reach| Some((reach, reach.labels?)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    match joint {
        Some((reach, labels)) => format!(
            "a joint model reaches the from-scratch AP at {} labels ({target:.4}) with {}{:.1} times fewer labels ({}, {}{} labels)",
            count(most as f64),
            if reach.at_most { "at least " } else { "" },
            most as f64 / labels,
            reach.arm,
            if reach.at_most { "at most " } else { "about " },
            count(labels)
        ),
        None => format!(
            "no arm built on the joint model reaches the from-scratch AP at {} labels ({target:.4}) within the grid",
            count(most as f64)
        ),
    }
}

/// The report's section: one table of AP and one of ECE per objective, the labels each
/// arm needs, and the verdict.
pub fn markdown(curves: &Curves) -> String {
    let mut md = String::new();
    let settings = &curves.settings;
    let _ = writeln!(md, "\n## New objectives: learning curves\n");
    let _ = writeln!(
        md,
        "Each arm fills a new ad objective from the same labels (drawn per seed from the objective's labelled week after the window; a {:.0}% share held out for early stopping and calibration) and is scored on the objective's test week with the calibrated probability the server would answer. {} seeds per cell; intervals are mean ± t(0.975, n-1)·sd/sqrt(n) over seeds. Arms: scratch (the joint model's features and architecture, fresh weights), new-head (a fresh tower on the frozen network), full (everything at a tenth of the rate), zero-shot (the closest existing head, calibrated). {:.0} s in all.\n",
        settings.finetune.validation_share * 100.0,
        settings.seeds.len(),
        curves.seconds
    );
    for objective in &curves.objectives {
        let _ = writeln!(
            md,
            "### `{}`: {}\n\nTest week: {} impressions, {} positives (rate {:.4}); AP of the true probabilities (the ceiling): {}.\n",
            objective.objective,
            objective.description,
            objective.test_rows,
            objective.test_positives,
            objective.test_positives as f64 / objective.test_rows.max(1) as f64,
            objective
                .oracle_ap
                .map_or_else(|| "n/a".to_string(), |ap| format!("{ap:.4}"))
        );
        for (title, metric) in [
            (
                "AP",
                (|point: &Point| point.ap) as fn(&Point) -> Option<Spread>,
            ),
            ("Expected calibration error", |point: &Point| point.ece),
        ] {
            let header: String = settings
                .labels
                .iter()
                .map(|labels| format!(" {} |", count(*labels as f64)))
                .collect();
            let rule = "---|".repeat(settings.labels.len());
            let _ = writeln!(md, "{title} by labels:\n\n| arm |{header}\n|---|{rule}");
            for arm in &curves.arms {
                let cells: String = settings
                    .labels
                    .iter()
                    .map(|labels| {
                        let point = objective
                            .points
                            .iter()
                            .find(|point| point.arm == arm.label && point.labels == *labels)
                            .and_then(metric);
                        match point {
                            Some(spread) => format!(
                                " {:.4} [{:.4}, {:.4}] |",
                                spread.mean, spread.low, spread.high
                            ),
                            None => " n/a |".to_string(),
                        }
                    })
                    .collect();
                let _ = writeln!(md, "| {} |{cells}", arm.label);
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(
            md,
            "Labels needed to reach the from-scratch AP at {} ({}):\n\n| arm | labels | times fewer |\n|---|---|---|",
            count(settings.labels.iter().copied().max().unwrap_or(0) as f64),
            objective
                .target_ap
                .map_or_else(|| "n/a".to_string(), |ap| format!("{ap:.4}"))
        );
        for reach in &objective.reach {
            let (labels, fewer) = match (reach.labels, reach.fewer) {
                (Some(labels), Some(fewer)) if reach.at_most => (
                    format!("at most {}", count(labels)),
                    format!("at least {fewer:.1}"),
                ),
                (Some(labels), Some(fewer)) => {
                    (format!("about {}", count(labels)), format!("{fewer:.1}"))
                }
                _ => ("not reached".to_string(), "n/a".to_string()),
            };
            let _ = writeln!(md, "| {} | {labels} | {fewer} |", reach.arm);
        }
        let _ = writeln!(md, "\n**Verdict:** {}.\n", objective.verdict);
        let failed = objective
            .cells
            .iter()
            .filter(|cell| cell.error.is_some())
            .count();
        if failed > 0 {
            let _ = writeln!(
                md,
                "{failed} runs could not be made (their labels held no positive) and are left out of their means.\n"
            );
        }
    }
    md
}

/// One PNG per objective: AP and ECE against the labels (log scale), one line per arm.
pub fn draw(curves: &Curves, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for objective in &curves.objectives {
        // The scratch arm's AP at the most labels, drawn across the AP panel only.
        let panel = |title: &str,
                     y_label: &str,
                     metric: fn(&Point) -> Option<Spread>,
                     target: Option<f64>| Panel {
            title: title.into(),
            x_label: "labels (log scale)".into(),
            y_label: y_label.into(),
            lines: curves
                .arms
                .iter()
                .map(|arm| Line {
                    label: arm.label.to_string(),
                    points: objective
                        .points
                        .iter()
                        .filter(|point| point.arm == arm.label)
                        .map(|point| {
                            (
                                (point.labels as f64).log10(),
                                metric(point).map(|spread| spread.mean),
                            )
                        })
                        .collect(),
                    reference: arm.mode == Mode::ZeroShot,
                    intervals: Vec::new(),
                })
                .chain(target.map(|target| {
                    Line {
                        label: format!("scratch at the most labels ({target:.4})"),
                        points: curves
                            .settings
                            .labels
                            .iter()
                            .map(|labels| ((*labels as f64).log10(), Some(target)))
                            .collect(),
                        reference: true,
                        intervals: Vec::new(),
                    }
                }))
                .collect(),
            diagonal: false,
            categories: Vec::new(),
            log_x: true,
        };
        let path = out.join(format!(
            "learning_curves_{}.png",
            file_stem(&objective.objective)
        ));
        written.push(plots::draw(
            &path,
            &format!(
                "New objective `{}`: test week, mean over seeds",
                objective.objective
            ),
            &[
                panel(
                    "AP, higher is better",
                    "AP",
                    |point| point.ap,
                    objective.target_ap,
                ),
                panel(
                    "expected calibration error, lower is better",
                    "ECE",
                    |point| point.ece,
                    None,
                ),
            ],
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target is read off between the grid points around it, in log labels; a curve
    /// already above it at the first point gives that point as an upper bound; one that
    /// never reaches it gives none.
    #[test]
    fn labels_to_reach_interpolates_in_log_labels() {
        let curve = [
            (1_000, Some(0.1)),
            (10_000, Some(0.2)),
            (100_000, Some(0.3)),
        ];
        let (labels, at_most) = labels_to_reach(&curve, 0.15);
        assert!(!at_most);
        assert!(
            (labels.unwrap() - 1_000f64 * 10f64.sqrt()).abs() < 1e-6,
            "{labels:?}"
        );
        assert_eq!(labels_to_reach(&curve, 0.05), (Some(1_000.0), true));
        assert_eq!(labels_to_reach(&curve, 0.35), (None, false));
        assert_eq!(labels_to_reach(&curve, 0.3), (Some(100_000.0), false));
    }

    /// Three seeds use Student's quantile (4.303), not 1.96; one seed has no spread.
    #[test]
    fn spread_uses_students_quantile() {
        let spread = Spread::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(spread.mean, 2.0);
        assert!(
            (spread.high - (2.0 + 4.303 / 3f64.sqrt())).abs() < 1e-9,
            "{spread:?}"
        );
        let one = Spread::of(&[0.5]).unwrap();
        assert_eq!((one.low, one.high, one.seeds), (0.5, 0.5, 1));
        assert_eq!(Spread::of(&[]), None);
    }
}
