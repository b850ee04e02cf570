//! `podscore reproduce --grid`: the pre-registered transfer map (issue 14, point 6; the
//! README's "The transfer map: pre-registered grid and predictions").
//!
//! Six worlds cross the ad-affinity correlation R (1.0, 0.8, 0.5) with the ad share S
//! (0.05, 0.20), all with ad structure 1 and content-embedding noise 1. In each, the four
//! Table 1 experiments are trained (2 seeds by default) exactly as `reproduce` trains
//! them and evaluated exactly as `podscore eval --baseline promo-only` evaluates them, in
//! the layout `OUT/<cell>/{world, models/<label>/<i>, train-logs, report}`.
//!
//! Resumable: a finished item (a world's `world.json`, a bundle's `manifest.json` and
//! `model.onnx`, a cell's `report/report.json`) is checked against the cell's settings and
//! kept; an unfinished one (its folder without the marker) is removed and made again. The
//! grid report (`grid.md`, `grid.json` and `transfer_map.png` in the report folder of `<OUT>`) is built from the
//! files alone (each cell's report.json, its bundles' manifests and `OUT/grid.log`), so a
//! cell finished by an earlier run, or by a script writing the same layout, reads the same.
//!
//! This module knows the grid's layout, its cells, the pre-registered predictions and
//! which rows of a report hold the claims; simulating, training and evaluating it leaves
//! to `world`, `train` and [`super::evaluate`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::bundle::{MANIFEST_FILE, MODEL_FILE};
use crate::entities::CandidateKind;
use crate::logs::{self, WorldSettings};
use crate::train;
use crate::world::{self, SimulateArgs, WorldConfig};

use super::plots::{self, Line, Panel};
use super::report::{self, interval, interval_change};
use super::stats::{Interval, Verdict};
use super::{EXPERIMENTS, EvalArgs, Experiment, ReproduceArgs, Switch};

/// Training seeds per experiment and cell: the pre-registration's 2 (`--seeds` overrides).
pub const DEFAULT_SEEDS: usize = 2;
/// Ad-only structure in every cell: the pre-registered strength (features can see it).
pub const AD_STRUCTURE: f64 = 1.0;
/// Content-embedding noise in every cell: brand-new shows known by content only partly.
pub const CONTENT_EMBEDDING_NOISE: f64 = 1.0;
/// The grid's progress log in OUT, in the shell script's format (`[HH:MM:SS +Ns] ...`):
/// the record of simulation and evaluation times the grid report reads.
pub const LOG_FILE: &str = "grid.log";
/// The grid report's folder in OUT and its files.
pub const REPORT_DIR: &str = "report";
pub const MARKDOWN_FILE: &str = "grid.md";
pub const JSON_FILE: &str = "grid.json";
pub const FIGURE_FILE: &str = "transfer_map.png";
/// Within a cell: the world, the bundles, the training logs and the evaluation.
const WORLD_DIR: &str = "world";
const MODELS_DIR: &str = "models";
const TRAIN_LOGS_DIR: &str = "train-logs";
const CELL_REPORT_DIR: &str = "report";
/// The experiment every change is relative to, as `eval --baseline` names it.
const BASELINE: &str = "promo-only";
const ADS_ONLY: &str = "ads-stream-only";
const ADS_ANC: &str = "ads-anc";
const JOINT: &str = "mtl";

/// One world of the grid.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cell {
    pub name: &'static str,
    pub ad_affinity_correlation: f64,
    pub ad_share: f64,
}

/// The pre-registered cells, in the order they run.
pub const CELLS: [Cell; 6] = [
    cell("A1", 1.0, 0.05),
    cell("A2", 1.0, 0.20),
    cell("B1", 0.8, 0.05),
    cell("B2", 0.8, 0.20),
    cell("C1", 0.5, 0.05),
    cell("C2", 0.5, 0.20),
];
/// The knob values along each axis, in the order the map reads them (R falling).
const CORRELATIONS: [f64; 3] = [1.0, 0.8, 0.5];
const AD_SHARES: [f64; 2] = [0.05, 0.20];

const fn cell(name: &'static str, ad_affinity_correlation: f64, ad_share: f64) -> Cell {
    Cell {
        name,
        ad_affinity_correlation,
        ad_share,
    }
}

/// The pre-registration's claims, each one row of a cell report's findings (C4 twice:
/// for ads and for promotions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    C1,
    C2,
    C3,
    C4Ads,
    C4Promotions,
    C5,
}

impl Claim {
    pub const ALL: [Claim; 6] = [
        Claim::C1,
        Claim::C2,
        Claim::C3,
        Claim::C4Ads,
        Claim::C4Promotions,
        Claim::C5,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Claim::C1 => "C1",
            Claim::C2 => "C2",
            Claim::C3 => "C3",
            Claim::C4Ads => "C4 ads",
            Claim::C4Promotions => "C4 promotions",
            Claim::C5 => "C5",
        }
    }

    /// The claim as the pre-registration states it.
    fn statement(self) -> &'static str {
        match self {
            Claim::C1 => "the joint model beats promotions-only on Ads AP by at least +10%",
            Claim::C2 => "training on ads only costs at least 10% of Promotions AP",
            Claim::C3 => "ads-stream-only < ads-anc < mtl on Ads AP",
            Claim::C4Ads => "the joint model's Ads AP gain is larger in tiers 3-5 than in 0-2",
            Claim::C4Promotions => {
                "the joint model's Promotions AP gain is larger in tiers 3-5 than in 0-2"
            }
            Claim::C5 => "the joint model lowers eCPS against promotions-only in the A/B replay",
        }
    }

    /// The text of the report's finding that holds this claim.
    fn finding(self) -> String {
        match self {
            Claim::C1 => super::CLAIM_JOINT_GAIN.to_string(),
            Claim::C2 => super::CLAIM_ADS_ONLY_HURTS.to_string(),
            Claim::C3 => super::CLAIM_ORDERING.to_string(),
            Claim::C4Ads => super::claim_tier_gain(CandidateKind::Ad),
            Claim::C4Promotions => super::claim_tier_gain(CandidateKind::Promotion),
            Claim::C5 => super::CLAIM_ECPS.to_string(),
        }
    }
}

/// What the pre-registration expects a claim's verdict to be in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    Agrees,
    Inconclusive,
    NotMeasured,
    DisagreesOrInconclusive,
}

impl Expectation {
    pub fn admits(self, verdict: Verdict) -> bool {
        match self {
            Expectation::Agrees => verdict == Verdict::Agrees,
            Expectation::Inconclusive => verdict == Verdict::Inconclusive,
            Expectation::NotMeasured => verdict == Verdict::NotMeasured,
            Expectation::DisagreesOrInconclusive => {
                matches!(verdict, Verdict::Disagrees | Verdict::Inconclusive)
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Expectation::Agrees => "agrees",
            Expectation::Inconclusive => "inconclusive",
            Expectation::NotMeasured => "not measured",
            Expectation::DisagreesOrInconclusive => "disagrees or inconclusive",
        }
    }
}

/// The pre-registered expectation of every claim in every cell, in [`CELLS`] order
/// (A1, A2, B1, B2, C1, C2): the README's "What the paper's claims predict" under "The
/// transfer map: pre-registered grid and predictions", committed (5e20e25) before any
/// grid run. Data, not code to tune: it must never change after results are seen.
pub const PREDICTIONS: [(Claim, [Expectation; 6]); 6] = {
    use Expectation::NotMeasured as N;
    use Expectation::{Agrees as A, DisagreesOrInconclusive as D, Inconclusive as I};
    [
        // "C1 agrees in all six cells"
        (Claim::C1, [A, A, A, A, A, A]),
        // "C2 agrees in all six cells"
        (Claim::C2, [A, A, A, A, A, A]),
        // "C3 agrees in A1 and B1, inconclusive in A2, B2 and C1, disagrees or
        // inconclusive in C2"
        (Claim::C3, [A, I, A, I, I, D]),
        // "C4 for ads is not measured in any cell"
        (Claim::C4Ads, [N, N, N, N, N, N]),
        // "C4 for promotions inconclusive in all cells"
        (Claim::C4Promotions, [I, I, I, I, I, I]),
        // "C5 agrees wherever C1 agrees with margin, so in all six cells"
        (Claim::C5, [A, A, A, A, A, A]),
    ]
};

fn expectation(claim: Claim, cell: usize) -> Expectation {
    PREDICTIONS
        .iter()
        .find(|(c, _)| *c == claim)
        .map_or(Expectation::Agrees, |(_, row)| row[cell])
}

/// The knob a trend runs along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Knob {
    /// R from 1.0 down to 0.5, at each ad share.
    FallingCorrelation,
    /// The ad share from 0.05 up to 0.20, at each R.
    RisingAdShare,
}

/// One figure per series (an experiment or a replay arm), by the series' label.
type Series = Vec<(&'static str, Option<f64>)>;

/// A pre-registered direction of change of one figure along one knob, checked on the
/// means (an ordering of point estimates, not a test).
struct Trend {
    id: &'static str,
    statement: &'static str,
    along: Knob,
    /// Whether the figure should rise (true) or fall along the knob.
    rising: bool,
    /// The figure, per series (one experiment or arm each), from a cell's results.
    figure: fn(&CellResults) -> Series,
}

const TRENDS: [Trend; 5] = [
    Trend {
        id: "C1-R",
        statement: "the joint model's Ads AP gain over promotions-only grows as R falls",
        along: Knob::FallingCorrelation,
        rising: true,
        figure: joint_ads_gain,
    },
    Trend {
        id: "C1-S",
        statement: "the joint model's Ads AP gain is larger at ad share 0.20 than at 0.05",
        along: Knob::RisingAdShare,
        rising: true,
        figure: joint_ads_gain,
    },
    Trend {
        id: "C2-S",
        statement: "the ads-only models' Promotions AP loss is larger at ad share 0.05 than at 0.20",
        along: Knob::RisingAdShare,
        rising: true,
        figure: ads_only_promotions_change,
    },
    Trend {
        id: "C2-R",
        statement: "the ads-only models' Promotions AP loss grows as R falls",
        along: Knob::FallingCorrelation,
        rising: false,
        figure: ads_only_promotions_change,
    },
    Trend {
        id: "C5-R",
        statement: "the joint model's eCPS change against promotions-only falls (a larger saving) as R falls",
        along: Knob::FallingCorrelation,
        rising: false,
        figure: joint_ecps_change,
    },
];

fn joint_ads_gain(cell: &CellResults) -> Series {
    vec![(
        JOINT,
        cell.row(JOINT)
            .and_then(|r| r.ads_ap_change)
            .map(|i| i.mean),
    )]
}

fn ads_only_promotions_change(cell: &CellResults) -> Series {
    [ADS_ONLY, ADS_ANC]
        .into_iter()
        .map(|label| {
            (
                label,
                cell.row(label)
                    .and_then(|r| r.promotions_ap_change)
                    .map(|i| i.mean),
            )
        })
        .collect()
}

fn joint_ecps_change(cell: &CellResults) -> Series {
    vec![(JOINT, cell.ecps_change(JOINT).map(|i| i.mean))]
}

// ---------------------------------------------------------------------------------------
// Running the grid

/// What a run did with one item of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finished by an earlier run, checked and kept.
    Reused,
    /// Made by this run.
    Made,
    /// An unfinished earlier attempt was removed and the item made again.
    Remade,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    pub step: Step,
}

/// What `reproduce --grid` did: each world, bundle and cell report it reached, and the
/// grid report's folder.
#[derive(Debug, Clone)]
pub struct GridRun {
    pub items: Vec<Item>,
    pub report: PathBuf,
}

/// The grid run's settings, checked before anything is touched.
struct Plan<'a> {
    args: &'a ReproduceArgs,
    cells: Vec<usize>,
    seeds: usize,
    budget: (usize, usize),
    /// Trainings at once (`--jobs`).
    jobs: usize,
}

/// The four Table 1 experiments.
fn table1_experiments() -> impl Iterator<Item = &'static Experiment> {
    EXPERIMENTS.iter().filter(|e| e.table1)
}

fn cell_dir(out: &Path, cell: &Cell) -> PathBuf {
    out.join(cell.name)
}

fn bundle_dir(out: &Path, cell: &Cell, label: &str, index: usize) -> PathBuf {
    cell_dir(out, cell)
        .join(MODELS_DIR)
        .join(label)
        .join(index.to_string())
}

/// `podscore simulate --out WORLD --preset P --seed S --ad-structure 1
/// --content-embedding-noise 1 --ad-affinity-correlation R --ad-share S`.
fn simulate_args(args: &ReproduceArgs, cell: &Cell, world: PathBuf) -> SimulateArgs {
    let mut simulate = SimulateArgs::new(world, args.preset, args.seed);
    simulate.ad_structure = Some(AD_STRUCTURE);
    simulate.content_embedding_noise = Some(CONTENT_EMBEDDING_NOISE);
    simulate.ad_affinity_correlation = Some(cell.ad_affinity_correlation);
    simulate.ad_share = Some(cell.ad_share);
    simulate
}

/// The settings a cell's world.json must record.
fn expected_world(args: &ReproduceArgs, cell: &Cell) -> Result<WorldSettings> {
    let simulate = simulate_args(args, cell, PathBuf::new());
    Ok(WorldConfig::from_args(&simulate)
        .context("checking the grid's simulate settings")?
        .settings())
}

/// The fields where two JSON objects differ, as `field: found X, expected Y`.
fn differences(found: &serde_json::Value, expected: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (found, expected) = (
        found.as_object().unwrap_or(&empty),
        expected.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = found.keys().chain(expected.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| found.get(*key) != expected.get(*key))
        .map(|key| {
            let show = |value: Option<&serde_json::Value>| {
                value.map_or("(absent)".to_string(), |v| v.to_string())
            };
            format!(
                "{key}: found {}, expected {}",
                show(found.get(key)),
                show(expected.get(key))
            )
        })
        .collect()
}

/// Refuses a world simulated with other settings than the cell's.
fn check_world_settings(
    path: &Path,
    found: &WorldSettings,
    expected: &WorldSettings,
    cell: &Cell,
) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    let found = serde_json::to_value(found).context("serializing world settings")?;
    let expected = serde_json::to_value(expected).context("serializing world settings")?;
    bail!(
        "{}: not cell {}'s world ({}); move it away or choose another --out",
        path.display(),
        cell.name,
        differences(&found, &expected).join("; ")
    )
}

/// The manifest settings a grid bundle must have: name, variant, seed, mask, share and
/// the training budget.
fn expected_manifest(
    experiment: &Experiment,
    seed: u64,
    budget: (usize, usize),
) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "name": experiment.label,
        "variant": serde_json::to_value(experiment.variant).context("serializing the variant")?,
        "seed": seed,
        "mask": serde_json::to_value(experiment.mask).context("serializing the mask")?,
        "promo_share": experiment.promo_share,
        "max_epochs": budget.0,
        "steps_per_epoch": budget.1,
    }))
}

/// Refuses a finished bundle whose manifest is not the one this grid position trains.
fn check_bundle(
    dir: &Path,
    experiment: &Experiment,
    seed: u64,
    budget: (usize, usize),
) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a bundle manifest", path.display()))?;
    let expected = expected_manifest(experiment, seed, budget)?;
    let settings = &manifest["settings"];
    let mut found = serde_json::Map::new();
    for key in expected.as_object().into_iter().flat_map(|o| o.keys()) {
        let value = if key == "name" {
            manifest.get("name")
        } else {
            settings.get(key)
        };
        if let Some(value) = value {
            found.insert(key.clone(), value.clone());
        }
    }
    let problems = differences(&serde_json::Value::Object(found), &expected);
    if !problems.is_empty() {
        bail!(
            "{}: not the grid's {} seed {seed} ({}); move the bundle away or choose another --out",
            path.display(),
            experiment.label,
            problems.join("; ")
        );
    }
    Ok(())
}

/// Refuses a cell report that evaluates other seeds than the grid's (say, one written
/// before `--seeds` was raised) or another world.
fn check_cell_report(
    path: &Path,
    results: &CellResults,
    plan: &Plan<'_>,
    cell: &Cell,
) -> Result<()> {
    check_world_settings(
        path,
        &results.file.world,
        &expected_world(plan.args, cell)?,
        cell,
    )?;
    for experiment in table1_experiments() {
        let expected: Vec<u64> = (0..plan.seeds as u64).map(|i| plan.args.seed + i).collect();
        let found = results
            .file
            .experiments
            .iter()
            .find(|e| e.label == experiment.label)
            .map(|e| e.seeds.clone())
            .unwrap_or_default();
        if found != expected {
            bail!(
                "{}: evaluates {} with seeds {found:?}, the grid trains {expected:?}; remove {} to evaluate the cell again",
                path.display(),
                experiment.label,
                path.parent().unwrap_or(path).display()
            );
        }
    }
    Ok(())
}

/// Whether `dir` holds every marker file; when it exists without them it is an
/// unfinished item.
fn finished(dir: &Path, markers: &[&str]) -> bool {
    markers.iter().all(|marker| dir.join(marker).is_file())
}

/// Removes an unfinished item's folder; true when there was one.
fn clear_unfinished(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(dir)
        .with_context(|| format!("removing the unfinished {}", dir.display()))?;
    Ok(true)
}

/// Appends a progress line to OUT/grid.log (and stderr unless quiet), in the format of
/// the shell script that writes the same layout.
struct Progress {
    log: std::fs::File,
    started: Instant,
    quiet: bool,
}

impl Progress {
    fn open(out: &Path, quiet: bool) -> Result<Progress> {
        let path = out.join(LOG_FILE);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Progress {
            log,
            started: Instant::now(),
            quiet,
        })
    }

    /// One line to stderr and the log; a line is one write, so trainings running at once
    /// do not interleave within a line.
    fn say(&self, message: &str) -> Result<()> {
        let line = format!(
            "[{} +{}s] {message}",
            chrono::Utc::now().format("%H:%M:%S"),
            self.started.elapsed().as_secs()
        );
        if !self.quiet {
            eprintln!("{line}");
        }
        (&self.log)
            .write_all(format!("{line}\n").as_bytes())
            .context("writing the grid log")
    }
}

/// Parses `--grid-cells` (all cells when empty), in grid order.
fn selected_cells(names: &[String]) -> Result<Vec<usize>> {
    if names.is_empty() {
        return Ok((0..CELLS.len()).collect());
    }
    let mut selected = Vec::new();
    for name in names {
        let index = CELLS
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name.trim()))
            .with_context(|| {
                format!(
                    "--grid-cells: no cell {name:?} (the cells are {})",
                    CELLS.map(|c| c.name).join(", ")
                )
            })?;
        selected.push(index);
    }
    selected.sort_unstable();
    selected.dedup();
    Ok(selected)
}

/// `reproduce --grid`: checks every finished item of the selected cells against the
/// grid's settings first (so that a wrong one fails in seconds, not hours in), then makes
/// what is missing, cell by cell, and writes the grid report.
pub fn run(args: &ReproduceArgs) -> Result<GridRun> {
    if args.learning_curves == Some(Switch::On) {
        bail!(
            "--learning-curves on does not go with --grid: the transfer map trains the Table 1 experiments only"
        );
    }
    args.replay.settings()?;
    let plan = Plan {
        args,
        cells: selected_cells(&args.grid_cells)?,
        seeds: args.seed_count()?,
        jobs: args.job_count()?,
        budget: {
            let (_, max_epochs, steps_per_epoch) = args.budget()?;
            (max_epochs, steps_per_epoch)
        },
    };
    let out = &args.out;
    if out.exists() && !out.is_dir() {
        bail!("{}: not a folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for &index in &plan.cells {
        check_finished_items(&plan, &CELLS[index])?;
    }

    let mut progress = Progress::open(out, args.quiet)?;
    progress.say(&format!(
        "grid: cells {}, preset {}, {} seeds per experiment, {} trainings at once",
        plan.cells
            .iter()
            .map(|i| CELLS[*i].name)
            .collect::<Vec<_>>()
            .join(" "),
        args.preset.name(),
        plan.seeds,
        plan.jobs
    ))?;
    let mut items = Vec::new();
    for &index in &plan.cells {
        run_cell(&plan, &CELLS[index], &mut progress, &mut items)?;
    }
    let report = write_report(args)?;
    progress.say(&format!("grid report in {}", report.display()))?;
    Ok(GridRun { items, report })
}

/// Checks the finished items of one cell; unfinished ones are left for [`run_cell`].
fn check_finished_items(plan: &Plan<'_>, cell: &Cell) -> Result<()> {
    let dir = cell_dir(&plan.args.out, cell);
    let world = dir.join(WORLD_DIR);
    let world_file = logs::world_info_path(&world);
    if world_file.is_file() {
        let info = logs::read_world_info(&world)
            .with_context(|| format!("reading {}", world_file.display()))?;
        check_world_settings(
            &world_file,
            &info.settings,
            &expected_world(plan.args, cell)?,
            cell,
        )?;
    }
    for experiment in table1_experiments() {
        for index in 1..=plan.seeds {
            let bundle = bundle_dir(&plan.args.out, cell, experiment.label, index);
            if finished(&bundle, &[MANIFEST_FILE, MODEL_FILE]) {
                check_bundle(
                    &bundle,
                    experiment,
                    plan.args.seed + index as u64 - 1,
                    plan.budget,
                )?;
            }
        }
    }
    let report = dir.join(CELL_REPORT_DIR).join(report::JSON_FILE);
    if report.is_file() {
        check_cell_report(&report, &CellResults::read(&report)?, plan, cell)?;
    }
    Ok(())
}

fn run_cell(
    plan: &Plan<'_>,
    cell: &Cell,
    progress: &mut Progress,
    items: &mut Vec<Item>,
) -> Result<()> {
    let args = plan.args;
    let dir = cell_dir(&args.out, cell);
    let name = cell.name;
    let world_dir = dir.join(WORLD_DIR);
    if finished(&world_dir, &[logs::WORLD_INFO_FILE]) {
        progress.say(&format!(
            "{name}: world {} exists, reused",
            world_dir.display()
        ))?;
        items.push(Item {
            path: world_dir.clone(),
            step: Step::Reused,
        });
    } else {
        let remade = clear_unfinished(&world_dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        progress.say(&format!(
            "{name}: simulating (R={:.1}, ad share {:.2}){}",
            cell.ad_affinity_correlation,
            cell.ad_share,
            if remade {
                ", replacing an unfinished world"
            } else {
                ""
            }
        ))?;
        let started = Instant::now();
        world::run(&simulate_args(args, cell, world_dir.clone()))
            .with_context(|| format!("simulating cell {name}"))?;
        progress.say(&format!(
            "{name}: simulated in {}s",
            started.elapsed().as_secs()
        ))?;
        items.push(Item {
            path: world_dir.clone(),
            step: if remade { Step::Remade } else { Step::Made },
        });
    }

    let train_logs = dir.join(TRAIN_LOGS_DIR);
    std::fs::create_dir_all(&train_logs)
        .with_context(|| format!("creating {}", train_logs.display()))?;
    let mut bundles = Vec::new();
    // (experiment, seed, bundle, whether an unfinished one was removed): left to train.
    let mut to_train = Vec::new();
    for experiment in table1_experiments() {
        for index in 1..=plan.seeds {
            let seed = args.seed + index as u64 - 1;
            let bundle = bundle_dir(&args.out, cell, experiment.label, index);
            bundles.push(bundle.clone());
            if finished(&bundle, &[MANIFEST_FILE, MODEL_FILE]) {
                progress.say(&format!(
                    "{name}: {} seed {seed} exists, reused",
                    experiment.label
                ))?;
                items.push(Item {
                    path: bundle,
                    step: Step::Reused,
                });
                continue;
            }
            let remade = clear_unfinished(&bundle)?;
            to_train.push((experiment, seed, bundle, remade));
        }
    }
    let progress_ref = &*progress;
    let trainings_started = Instant::now();
    let made = super::in_parallel(plan.jobs, to_train.len(), |position| {
        let (experiment, seed, bundle, remade) = &to_train[position];
        progress_ref.say(&format!(
            "{name}: training {} seed {seed}{}",
            experiment.label,
            if *remade {
                " (replacing an unfinished bundle)"
            } else {
                ""
            }
        ))?;
        let started = Instant::now();
        let train_args = super::train_args(
            &world_dir,
            bundle,
            experiment,
            *seed,
            plan.budget,
            train_logs.join(super::train_log_name(experiment.label, *seed)),
        )?;
        train::run(&train_args)
            .with_context(|| format!("cell {name}: training {} seed {seed}", experiment.label))?;
        progress_ref.say(&format!(
            "{name}: trained {} seed {seed} in {}s",
            experiment.label,
            started.elapsed().as_secs()
        ))?;
        Ok(Item {
            path: bundle.clone(),
            step: if *remade { Step::Remade } else { Step::Made },
        })
    })?;
    if !made.is_empty() {
        progress.say(&format!(
            "{name}: {} trainings finished in {}s wall clock, {} at once",
            made.len(),
            trainings_started.elapsed().as_secs(),
            plan.jobs
        ))?;
    }
    items.extend(made);

    let report_dir = dir.join(CELL_REPORT_DIR);
    if finished(&report_dir, &[report::JSON_FILE]) {
        progress.say(&format!(
            "{name}: report {} exists, reused",
            report_dir.display()
        ))?;
        items.push(Item {
            path: report_dir,
            step: Step::Reused,
        });
        return Ok(());
    }
    let remade = clear_unfinished(&report_dir)?;
    progress.say(&format!("{name}: evaluating"))?;
    let started = Instant::now();
    let eval_args = EvalArgs {
        data: world_dir,
        bundles,
        out: report_dir.clone(),
        baseline: Some(BASELINE.to_string()),
        replay: args.replay.clone(),
        quiet: args.quiet,
    };
    let mut cell_report =
        super::evaluate(&eval_args).with_context(|| format!("evaluating cell {name}"))?;
    report::write(&mut cell_report, &report_dir)?;
    progress.say(&format!(
        "{name}: evaluated in {}s",
        started.elapsed().as_secs()
    ))?;
    items.push(Item {
        path: report_dir,
        step: if remade { Step::Remade } else { Step::Made },
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading a cell's results back

/// The parts of a cell's report.json the grid report uses.
#[derive(Debug, Clone, Deserialize)]
struct CellReportFile {
    world: WorldSettings,
    experiments: Vec<ExperimentFile>,
    table1: Vec<Table1Summary>,
    findings: Vec<FindingFile>,
    replay: ReplayFile,
    data: DataFile,
}

#[derive(Debug, Clone, Deserialize)]
struct ExperimentFile {
    label: String,
    seeds: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize)]
struct FindingFile {
    claim: String,
    measured: String,
    verdict: Verdict,
}

#[derive(Debug, Clone, Deserialize)]
struct ReplayFile {
    arms: Vec<ArmFile>,
}

#[derive(Debug, Clone, Deserialize)]
struct ArmFile {
    label: String,
    overall: FiguresFile,
}

#[derive(Debug, Clone, Deserialize)]
struct FiguresFile {
    ecps_change: Option<Interval>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DataFile {
    test_rows: BTreeMap<String, usize>,
}

struct CellResults {
    file: CellReportFile,
}

impl CellResults {
    fn read(path: &Path) -> Result<CellResults> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a podscore eval report", path.display()))?;
        Ok(CellResults { file })
    }

    fn row(&self, label: &str) -> Option<&Table1Summary> {
        self.file.table1.iter().find(|r| r.experiment == label)
    }

    fn ecps_change(&self, label: &str) -> Option<Interval> {
        self.file
            .replay
            .arms
            .iter()
            .find(|a| a.label == label)
            .and_then(|a| a.overall.ecps_change)
    }

    fn finding(&self, claim: Claim) -> Option<&FindingFile> {
        let text = claim.finding();
        self.file.findings.iter().find(|f| f.claim == text)
    }

    /// The number a claim's verdict rests on, where it is one interval: C1 the joint
    /// model's Ads AP change, C2 ads-stream-only's Promotions AP change, C5 the joint
    /// arm's eCPS change.
    fn claim_value(&self, claim: Claim) -> Option<Interval> {
        match claim {
            Claim::C1 => self.row(JOINT)?.ads_ap_change,
            Claim::C2 => self.row(ADS_ONLY)?.promotions_ap_change,
            Claim::C5 => self.ecps_change(JOINT),
            Claim::C3 | Claim::C4Ads | Claim::C4Promotions => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The grid report

#[derive(Debug, Clone, Serialize)]
pub struct GridReport {
    pub generator: String,
    pub preset: String,
    pub world_seed: u64,
    pub ad_structure: f64,
    pub content_embedding_noise: f64,
    /// Where the expectations come from.
    pub pre_registration: String,
    pub cells: Vec<CellSummary>,
    pub trends: Vec<TrendResult>,
    /// Claim rows whose verdict matches the expectation, of those evaluated.
    pub as_expected: usize,
    pub evaluated_claims: usize,
    /// Claim rows where the paper's own prediction ("agrees") holds.
    pub agree_with_paper: usize,
    /// Sum of every recorded simulation, training and evaluation time.
    pub total_seconds: f64,
    /// Whether some step's time was not recorded (the total is then a lower bound).
    pub total_incomplete: bool,
    pub figure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellSummary {
    pub name: String,
    pub ad_affinity_correlation: f64,
    pub ad_share: f64,
    /// False until the cell's report.json exists.
    pub evaluated: bool,
    pub test_rows: BTreeMap<String, usize>,
    pub claims: Vec<ClaimResult>,
    pub table1: Vec<Table1Summary>,
    pub times: CellTimes,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimResult {
    pub claim: String,
    pub statement: String,
    /// The report's measured text, and the interval the verdict rests on where it is one.
    pub measured: String,
    pub value: Option<Interval>,
    pub verdict: Verdict,
    pub expected: Expectation,
    pub as_expected: bool,
}

/// A Table 1 row of a cell, as its report.json has it (without the paper's columns).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table1Summary {
    pub experiment: String,
    pub seeds: Vec<u64>,
    pub promotions_ap: Option<Interval>,
    pub ads_ap: Option<Interval>,
    pub promotions_ap_change: Option<Interval>,
    pub ads_ap_change: Option<Interval>,
    pub promotions_ap_change_vs_ads_only: Option<Interval>,
    pub ads_ap_change_vs_ads_only: Option<Interval>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainingTime {
    pub label: String,
    pub seed: u64,
    /// The bundle manifest's `metrics.total_seconds` (data, training, export).
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellTimes {
    /// From OUT/grid.log; `None` when no run recorded it.
    pub simulate_seconds: Option<f64>,
    pub trainings: Vec<TrainingTime>,
    pub evaluate_seconds: Option<f64>,
    pub total_seconds: f64,
    pub incomplete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrendResult {
    pub id: String,
    pub statement: String,
    pub along: String,
    /// "holds on the means", "does not hold on the means" or "not measured".
    pub outcome: String,
    pub values: String,
}

/// Seconds per cell in a grid log: (simulation, evaluation). This command writes "A1:
/// simulated in 20s" and "A1: evaluated in 300s"; the shell script writes the latter and
/// its simulation time is the gap from its "A1: simulating" line to the next
/// timestamped line of the same run. The last record of a cell wins.
fn logged_times(text: &str) -> BTreeMap<String, (Option<f64>, Option<f64>)> {
    let mut times: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    let mut simulating: Option<(String, u64)> = None;
    for line in text.lines() {
        let Some((elapsed, message)) = parse_log_line(line) else {
            continue;
        };
        if let Some((cell, since)) = simulating.take()
            && elapsed >= since
            && !message.starts_with(&format!("{cell}: simulated in "))
        {
            times.entry(cell).or_default().0 = Some((elapsed - since) as f64);
        }
        let Some((cell, rest)) = message.split_once(": ") else {
            continue;
        };
        if rest.starts_with("simulating") {
            simulating = Some((cell.to_string(), elapsed));
        } else if let Some(seconds) = seconds_after(rest, "simulated in ") {
            times.entry(cell.to_string()).or_default().0 = Some(seconds);
        } else if let Some(seconds) = seconds_after(rest, "evaluated in ") {
            times.entry(cell.to_string()).or_default().1 = Some(seconds);
        }
    }
    times
}

/// `[07:08:57 +20s] message` as (20, message).
fn parse_log_line(line: &str) -> Option<(u64, &str)> {
    let rest = line.strip_prefix('[')?;
    let (stamp, message) = rest.split_once("] ")?;
    let elapsed = stamp.split_once(" +")?.1.strip_suffix('s')?.parse().ok()?;
    Some((elapsed, message))
}

fn seconds_after(text: &str, prefix: &str) -> Option<f64> {
    text.strip_prefix(prefix)?.strip_suffix('s')?.parse().ok()
}

/// A training's seconds from its bundle manifest.
fn training_seconds(bundle: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(bundle.join(MANIFEST_FILE)).ok()?;
    let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
    manifest["metrics"]["total_seconds"].as_f64()
}

/// Reads every cell on disk and writes OUT/report/{grid.md, grid.json, transfer_map.png}.
pub fn write_report(args: &ReproduceArgs) -> Result<PathBuf> {
    let out = &args.out;
    let log_path = out.join(LOG_FILE);
    let log_text = match std::fs::read_to_string(&log_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", log_path.display()));
        }
    };
    let logged = logged_times(&log_text);
    let mut cells = Vec::new();
    let mut results: Vec<Option<CellResults>> = Vec::new();
    for (index, cell) in CELLS.iter().enumerate() {
        let path = cell_dir(out, cell)
            .join(CELL_REPORT_DIR)
            .join(report::JSON_FILE);
        let read = if path.is_file() {
            let read = CellResults::read(&path)?;
            check_world_settings(&path, &read.file.world, &expected_world(args, cell)?, cell)?;
            Some(read)
        } else {
            None
        };
        cells.push(summarize(
            out,
            index,
            cell,
            read.as_ref(),
            logged.get(cell.name),
        ));
        results.push(read);
    }
    let trends = TRENDS.iter().map(|t| trend(t, &results)).collect();
    let evaluated: Vec<&ClaimResult> = cells
        .iter()
        .filter(|c| c.evaluated)
        .flat_map(|c| &c.claims)
        .collect();
    let mut grid = GridReport {
        generator: format!("podscore {}", env!("CARGO_PKG_VERSION")),
        preset: args.preset.name().to_string(),
        world_seed: args.seed,
        ad_structure: AD_STRUCTURE,
        content_embedding_noise: CONTENT_EMBEDDING_NOISE,
        pre_registration: "README.md, \"The transfer map: pre-registered grid and predictions\" (commit 5e20e25); encoded in src/eval/grid.rs PREDICTIONS".to_string(),
        as_expected: evaluated.iter().filter(|c| c.as_expected).count(),
        evaluated_claims: evaluated.len(),
        agree_with_paper: evaluated.iter().filter(|c| c.verdict == Verdict::Agrees).count(),
        total_seconds: cells.iter().map(|c| c.times.total_seconds).sum(),
        total_incomplete: cells.iter().any(|c| c.times.incomplete),
        cells,
        trends,
        figure: None,
    };
    let dir = out.join(REPORT_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let figure = dir.join(FIGURE_FILE);
    draw_map(&grid, &figure)?;
    anyhow::ensure!(plots::is_png(&figure)?, "{} is not a PNG", figure.display());
    grid.figure = Some(FIGURE_FILE.to_string());
    let json_path = dir.join(JSON_FILE);
    let mut json = serde_json::to_string_pretty(&grid).context("serializing the grid report")?;
    json.push('\n');
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    let markdown_path = dir.join(MARKDOWN_FILE);
    std::fs::write(&markdown_path, markdown(&grid))
        .with_context(|| format!("writing {}", markdown_path.display()))?;
    Ok(dir)
}

fn summarize(
    out: &Path,
    index: usize,
    cell: &Cell,
    results: Option<&CellResults>,
    logged: Option<&(Option<f64>, Option<f64>)>,
) -> CellSummary {
    let (simulate_seconds, evaluate_seconds) = logged.copied().unwrap_or((None, None));
    let claims = Claim::ALL
        .iter()
        .map(|claim| {
            let expected = expectation(*claim, index);
            let (measured, verdict) = match results.map(|r| r.finding(*claim)) {
                Some(Some(finding)) => (finding.measured.clone(), finding.verdict),
                Some(None) => (
                    "no such row in the cell's report".to_string(),
                    Verdict::NotMeasured,
                ),
                None => (
                    "the cell is not evaluated yet".to_string(),
                    Verdict::NotMeasured,
                ),
            };
            ClaimResult {
                claim: claim.id().to_string(),
                statement: claim.statement().to_string(),
                measured,
                value: results.and_then(|r| r.claim_value(*claim)),
                verdict,
                expected,
                as_expected: results.is_some() && expected.admits(verdict),
            }
        })
        .collect();
    let table1: Vec<Table1Summary> = results.map(|r| r.file.table1.clone()).unwrap_or_default();
    // The trainings behind the report: each experiment's seeds, at their place in the
    // layout (seed s is bundle s - world seed + 1).
    let world_seed = results.map(|r| r.file.world.seed);
    let trainings: Vec<TrainingTime> = table1
        .iter()
        .flat_map(|row| {
            row.seeds.iter().map(|seed| {
                let index = world_seed.map_or(0, |w| seed.saturating_sub(w) + 1);
                TrainingTime {
                    label: row.experiment.clone(),
                    seed: *seed,
                    seconds: training_seconds(&bundle_dir(
                        out,
                        cell,
                        &row.experiment,
                        index as usize,
                    )),
                }
            })
        })
        .collect();
    let evaluated = results.is_some();
    let recorded: Vec<Option<f64>> = [simulate_seconds, evaluate_seconds]
        .into_iter()
        .chain(trainings.iter().map(|t| t.seconds))
        .collect();
    CellSummary {
        name: cell.name.to_string(),
        ad_affinity_correlation: cell.ad_affinity_correlation,
        ad_share: cell.ad_share,
        evaluated,
        test_rows: results
            .map(|r| r.file.data.test_rows.clone())
            .unwrap_or_default(),
        claims,
        table1,
        times: CellTimes {
            simulate_seconds,
            evaluate_seconds,
            total_seconds: recorded.iter().flatten().sum(),
            incomplete: evaluated && recorded.iter().any(Option::is_none),
            trainings,
        },
    }
}

fn trend(trend: &Trend, results: &[Option<CellResults>]) -> TrendResult {
    let at = |correlation: f64, share: f64| {
        CELLS
            .iter()
            .position(|c| c.ad_affinity_correlation == correlation && c.ad_share == share)
            .and_then(|i| results[i].as_ref())
            .map(|r| (trend.figure)(r))
    };
    // Each chain: a label, and the figure's series at the knob's steps.
    let chains: Vec<(String, Vec<Option<Series>>)> = match trend.along {
        Knob::FallingCorrelation => AD_SHARES
            .iter()
            .map(|s| {
                (
                    format!("share {s:.2}, R 1.0 > 0.8 > 0.5"),
                    CORRELATIONS.iter().map(|r| at(*r, *s)).collect(),
                )
            })
            .collect(),
        Knob::RisingAdShare => CORRELATIONS
            .iter()
            .map(|r| {
                (
                    format!("R {r:.1}, share 0.05 < 0.20"),
                    AD_SHARES.iter().map(|s| at(*r, *s)).collect(),
                )
            })
            .collect(),
    };
    let mut measured = true;
    let mut holds = true;
    let mut values = Vec::new();
    for (label, steps) in &chains {
        let series: Vec<&'static str> = steps
            .iter()
            .flatten()
            .next()
            .map(|s| s.iter().map(|(name, _)| *name).collect())
            .unwrap_or_default();
        if series.is_empty() || steps.iter().any(Option::is_none) {
            measured = false;
            values.push(format!("{label}: not all cells evaluated"));
            continue;
        }
        for (position, name) in series.iter().enumerate() {
            let figures: Vec<Option<f64>> = steps
                .iter()
                .map(|step| {
                    step.as_ref()
                        .and_then(|s| s.get(position))
                        .and_then(|(_, v)| *v)
                })
                .collect();
            if figures.iter().any(Option::is_none) {
                measured = false;
            } else {
                let figures: Vec<f64> = figures.into_iter().flatten().collect();
                let ordered = figures.windows(2).all(|pair| {
                    if trend.rising {
                        pair[1] > pair[0]
                    } else {
                        pair[1] < pair[0]
                    }
                });
                holds &= ordered;
            }
            values.push(format!(
                "{label}, {name}: {}",
                steps
                    .iter()
                    .map(|step| step
                        .as_ref()
                        .and_then(|s| s.get(position))
                        .and_then(|(_, v)| *v)
                        .map_or("n/a".to_string(), |v| format!("{:+.1}%", v * 100.0)))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ));
        }
    }
    TrendResult {
        id: trend.id.to_string(),
        statement: trend.statement.to_string(),
        along: match trend.along {
            Knob::FallingCorrelation => "R falling (1.0, 0.8, 0.5), at each ad share".to_string(),
            Knob::RisingAdShare => "ad share rising (0.05, 0.20), at each R".to_string(),
        },
        outcome: if !measured {
            "not measured".to_string()
        } else if holds {
            "holds on the means".to_string()
        } else {
            "does not hold on the means".to_string()
        },
        values: values.join("; "),
    }
}

/// The map: C1, C2 and C5's intervals against R, one line per ad share, beside each
/// claim's threshold.
fn draw_map(grid: &GridReport, path: &Path) -> Result<()> {
    let categories: Vec<String> = CORRELATIONS.iter().map(|r| format!("R = {r:.1}")).collect();
    let panel = |claim: Claim, title: &str, y_label: &str, threshold: f64| {
        // The two ad shares sit a little apart at each R, so that their bars do not hide
        // each other.
        let offset = |share_index: usize| (share_index as f64 - 0.5) * 0.16;
        let mut lines: Vec<Line> = AD_SHARES
            .iter()
            .enumerate()
            .map(|(share_index, share)| {
                let values: Vec<Option<Interval>> = CORRELATIONS
                    .iter()
                    .map(|r| {
                        grid.cells
                            .iter()
                            .find(|c| c.ad_affinity_correlation == *r && c.ad_share == *share)
                            .and_then(|c| c.claims.iter().find(|x| x.claim == claim.id()))
                            .and_then(|x| x.value)
                    })
                    .collect();
                Line {
                    label: format!("ad share {share:.2}"),
                    points: values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (i as f64 + offset(share_index), v.map(|v| v.mean * 100.0)))
                        .collect(),
                    reference: false,
                    intervals: values
                        .iter()
                        .map(|v| v.map(|v| (v.low * 100.0, v.high * 100.0)))
                        .collect(),
                }
            })
            .collect();
        lines.push(Line {
            label: format!("threshold {:+.0}%", threshold * 100.0),
            points: (0..CORRELATIONS.len())
                .map(|i| (i as f64, Some(threshold * 100.0)))
                .collect(),
            reference: true,
            intervals: Vec::new(),
        });
        Panel {
            title: title.to_string(),
            x_label: "ad affinity correlation".to_string(),
            y_label: y_label.to_string(),
            lines,
            diagonal: false,
            categories: categories.clone(),
            log_x: false,
        }
    };
    plots::draw(
        path,
        "Transfer map: measured changes with 95% intervals, per cell",
        &[
            panel(Claim::C1, "C1: mtl Ads AP vs promo-only", "change, %", 0.10),
            panel(
                Claim::C2,
                "C2: ads-stream-only Promotions AP",
                "change, %",
                -0.10,
            ),
            panel(Claim::C5, "C5: mtl eCPS vs promo-only", "change, %", 0.0),
        ],
    )?;
    Ok(())
}

fn seconds_text(seconds: Option<f64>) -> String {
    seconds.map_or("not recorded".to_string(), |s| format!("{s:.0}"))
}

fn markdown(grid: &GridReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# podscore transfer map (pre-registered grid)\n");
    let _ = writeln!(
        md,
        "Preset `{}`, world seed {}, every cell with ad structure {} and content-embedding noise {}; the four Table 1 experiments per cell, trained and evaluated as `reproduce` does (baseline promo-only). Expectations: {}. The paper itself predicts \"agrees\" for every claim in every cell. Built by {} from the cells' report.json files.\n",
        grid.preset,
        grid.world_seed,
        grid.ad_structure,
        grid.content_embedding_noise,
        grid.pre_registration,
        grid.generator
    );
    let _ = writeln!(
        md,
        "Verdicts as expected: **{} of {}** claim rows of the evaluated cells; agreeing with the paper: {} of {}.\n",
        grid.as_expected, grid.evaluated_claims, grid.agree_with_paper, grid.evaluated_claims
    );

    let _ = writeln!(md, "## Cells\n");
    let _ = writeln!(
        md,
        "| cell | ad affinity correlation R | ad share | test impressions (promotions / ads) | seeds per experiment | status |\n|---|---|---|---|---|---|"
    );
    for cell in &grid.cells {
        let seeds = cell.table1.first().map_or(0, |r| r.seeds.len());
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.2} | {} | {} | {} |",
            cell.name,
            cell.ad_affinity_correlation,
            cell.ad_share,
            if cell.evaluated {
                format!(
                    "{} / {}",
                    cell.test_rows.get("promotion").copied().unwrap_or(0),
                    cell.test_rows.get("ad").copied().unwrap_or(0)
                )
            } else {
                "-".to_string()
            },
            if cell.evaluated {
                seeds.to_string()
            } else {
                "-".to_string()
            },
            if cell.evaluated {
                "evaluated"
            } else {
                "not evaluated yet"
            }
        );
    }

    let _ = writeln!(md, "\n## Verdicts against the pre-registered expectation\n");
    let _ = writeln!(
        md,
        "Each entry: the measured verdict / the expectation; **bold** where they differ.\n"
    );
    let _ = write!(md, "| claim |");
    for cell in &grid.cells {
        let _ = write!(md, " {} |", cell.name);
    }
    let _ = write!(md, "\n|---|");
    for _ in &grid.cells {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for (position, claim) in Claim::ALL.iter().enumerate() {
        let _ = write!(md, "| {} |", claim.id());
        for cell in &grid.cells {
            let result = &cell.claims[position];
            let entry = if !cell.evaluated {
                format!("- / {}", result.expected.as_str())
            } else if result.as_expected {
                format!("{} / {}", result.verdict.as_str(), result.expected.as_str())
            } else {
                format!(
                    "**{} / {}**",
                    result.verdict.as_str(),
                    result.expected.as_str()
                )
            };
            let _ = write!(md, " {entry} |");
        }
        md.push('\n');
    }

    for (position, claim) in Claim::ALL.iter().enumerate() {
        let _ = writeln!(md, "\n### {}: {}\n", claim.id(), claim.statement());
        let _ = writeln!(
            md,
            "| cell | R | ad share | measured | verdict | expected | as expected |\n|---|---|---|---|---|---|---|"
        );
        for cell in &grid.cells {
            let result = &cell.claims[position];
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.2} | {} | {} | {} | {} |",
                cell.name,
                cell.ad_affinity_correlation,
                cell.ad_share,
                result.measured,
                if cell.evaluated {
                    report::verdict_text(result.verdict)
                } else {
                    "-".to_string()
                },
                result.expected.as_str(),
                if !cell.evaluated {
                    "-"
                } else if result.as_expected {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
    }

    let _ = writeln!(
        md,
        "\n## Pre-registered trends (orderings of the means, not tests)\n"
    );
    let _ = writeln!(
        md,
        "| trend | along | outcome | values |\n|---|---|---|---|"
    );
    for trend in &grid.trends {
        let _ = writeln!(
            md,
            "| {}: {} | {} | {} | {} |",
            trend.id, trend.statement, trend.along, trend.outcome, trend.values
        );
    }

    let _ = writeln!(md, "\n## Table 1 per cell\n");
    for cell in grid.cells.iter().filter(|c| c.evaluated) {
        let _ = writeln!(
            md,
            "### {} (R {:.1}, ad share {:.2})\n",
            cell.name, cell.ad_affinity_correlation, cell.ad_share
        );
        let _ = writeln!(
            md,
            "| experiment | seeds | Promotions AP | Ads AP | Promotions vs promo-only | Ads vs promo-only | Promotions vs ads-stream-only | Ads vs ads-stream-only |\n|---|---|---|---|---|---|---|---|"
        );
        for row in &cell.table1 {
            let _ = writeln!(
                md,
                "| {} | {:?} | {} | {} | {} | {} | {} | {} |",
                row.experiment,
                row.seeds,
                interval(row.promotions_ap, 4),
                interval(row.ads_ap, 4),
                interval_change(row.promotions_ap_change),
                interval_change(row.ads_ap_change),
                interval_change(row.promotions_ap_change_vs_ads_only),
                interval_change(row.ads_ap_change_vs_ads_only)
            );
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Time\n");
    let _ = writeln!(
        md,
        "Seconds per step, as recorded: simulation and evaluation from `grid.log`, each training from its bundle manifest (`metrics.total_seconds`). With `--jobs` above 1 trainings ran side by side, so their seconds overlap and the sums below exceed the wall clock (`grid.log` has each cell's trainings' wall clock).\n"
    );
    let _ = writeln!(
        md,
        "| cell | simulate s | trainings s | evaluate s | cell total s |\n|---|---|---|---|---|"
    );
    for cell in grid.cells.iter().filter(|c| c.evaluated) {
        let trainings = cell
            .times
            .trainings
            .iter()
            .map(|t| format!("{} {}: {}", t.label, t.seed, seconds_text(t.seconds)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0}{} |",
            cell.name,
            seconds_text(cell.times.simulate_seconds),
            trainings,
            seconds_text(cell.times.evaluate_seconds),
            cell.times.total_seconds,
            if cell.times.incomplete {
                " (at least)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        md,
        "\nGrid total: {}{:.0} s ({:.1} h) of step times over the evaluated cells.\n",
        if grid.total_incomplete {
            "at least "
        } else {
            ""
        },
        grid.total_seconds,
        grid.total_seconds / 3600.0
    );
    if let Some(figure) = &grid.figure {
        let _ = writeln!(
            md,
            "Figure: `{figure}` (C1, C2 and C5 per cell, with 95% intervals and each claim's threshold).\n"
        );
    }
    md
}
