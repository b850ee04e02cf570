//! `podscore finetune`: adds a new objective to a trained bundle from a few labelled
//! impressions, the paper's "a single joint model can be fine-tuned or directly applied
//! to new or low-data targeting tasks".
//!
//! The base network comes back from the bundle's training state (`weights.safetensors`)
//! and gains one head for the objective. Four ways to fill it ([`Mode`]):
//! - `new-head`: a fresh tower trained on the labels, the shared encoder, the tables,
//!   batch norm and the other towers frozen (the other fields score exactly as before);
//! - `full`: a fresh tower, and everything else trained too at a tenth of the rate, batch
//!   norm held at its statistics; the other heads move with the encoder, so they are
//!   recalibrated on the world's validation days and their validation AP before and after
//!   is recorded;
//! - `zero-shot`: no training: the tower of the closest existing head (best validation AP
//!   on the labels, or `--head`) is copied and only calibrated;
//! - `scratch`: the comparison, a network with the base's features and architecture but
//!   fresh weights, trained on the labels alone.
//!
//! Every mode ends with Platt scaling on held-out labels and the trainer's own tail
//! ([`package::finish`]: golden cases, export, the proof in tract, the weights): the new
//! bundle's manifest has a head whose response field is the objective's name, which the
//! server returns with no change of its code.
//!
//! The labels are `--labels N` impressions drawn at random (by `--seed`) from the
//! objective's pool; a `--validation-share` of them is held out for early stopping
//! (validation log loss) and calibration. This module reuses the trainer's phases (the
//! network, Adam, the epoch loop with its producer thread and early stopping, head
//! calibration, packaging); it knows candle, bundles and the objective files, nothing of
//! how the world draws them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::bundle::{Bundle, HeadSpec, Manifest, ResponseField, WEIGHTS_FILE};
use crate::dataset;
use crate::entities::CandidateKind;
use crate::features::{Assembler, Vocabularies};
use crate::graph::OUTPUT_NAME;
use crate::logs::{self, Impression, ObjectiveImpression, ObjectiveInfo, Snapshot};
use crate::quality;

use super::adam::Adam;
use super::calibrate;
use super::fit::{self, Best, PreparedBatch};
use super::network::{Network, Trainable};
use super::package::{self, Sources};
use super::validation::ValidationSet;
use super::{Label, TrainLog};

/// Rows per batch: a 1,000-label run still takes several steps an epoch.
const DEFAULT_BATCH_SIZE: usize = 256;
/// A fresh tower learns at the trainer's rate.
const DEFAULT_LEARNING_RATE: f64 = 2e-3;
/// `full` moves weights trained on millions of rows: a tenth of the rate, so that a few
/// thousand labels refine them rather than overwrite them.
const FULL_LEARNING_RATE_FACTOR: f64 = 0.1;
const DEFAULT_MAX_EPOCHS: usize = 30;
const DEFAULT_PATIENCE: usize = 3;
/// A fifth of the labels for early stopping and calibration.
const DEFAULT_VALIDATION_SHARE: f64 = 0.2;
/// Rows per kind of the world's validation days on which `full` recalibrates the heads
/// it moved: enough for rates of about 1%, quick to score.
const BASE_VALIDATION_ROWS: usize = 50_000;
/// Fewer labels cannot be split into rows to train on and rows to calibrate on.
const MIN_LABELS: usize = 20;

/// How the new objective's head is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A fresh tower on the frozen network.
    NewHead,
    /// A fresh tower, and the whole network at a tenth of the rate.
    Full,
    /// The closest existing head, calibrated on the labels, without training.
    ZeroShot,
    /// The base's architecture and features with fresh weights, trained on the labels
    /// alone (the comparison for the others).
    Scratch,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::NewHead => "new-head",
            Mode::Full => "full",
            Mode::ZeroShot => "zero-shot",
            Mode::Scratch => "scratch",
        }
    }
}

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct FinetuneArgs {
    /// The trained bundle to start from (it must hold weights.safetensors, which
    /// `podscore train` writes).
    #[arg(long, env = "PODSCORE_FINETUNE_FROM")]
    pub from: PathBuf,
    /// World directory: its snapshot and objectives/ (`podscore simulate
    /// --objective-labels N`).
    #[arg(long, env = "PODSCORE_DATA")]
    pub data: PathBuf,
    /// The objective to add (a file objectives/<NAME>.parquet of the world); also the
    /// response field its head fills.
    #[arg(long, env = "PODSCORE_OBJECTIVE")]
    pub objective: String,
    /// Bundle directory to create (`<models>/<name>/<version>`); must not exist.
    #[arg(long, env = "PODSCORE_OUT")]
    pub out: PathBuf,
    #[command(flatten)]
    pub settings: FinetuneSettings,
    /// Model name in the manifest; defaults to the bundle directory's parent name.
    #[arg(long, env = "PODSCORE_NAME")]
    pub name: Option<String>,
    /// Write one JSON line per epoch (and a final summary) to this file.
    #[arg(long, env = "PODSCORE_TRAIN_LOG")]
    pub log: Option<PathBuf>,
}

/// Everything that decides the fine-tuned network, shared by the command and the
/// learning-curve experiment of `podscore reproduce`.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct FinetuneSettings {
    #[arg(
        long,
        value_enum,
        default_value = "new-head",
        env = "PODSCORE_FINETUNE_MODE"
    )]
    pub mode: Mode,
    /// Labelled impressions to use, drawn at random from the objective's pool (default:
    /// the whole pool).
    #[arg(long, env = "PODSCORE_FINETUNE_LABELS")]
    pub labels: Option<usize>,
    /// `zero-shot`: the existing head to map the objective onto (default: the head
    /// serving the objective's kinds with the best AP on the labels).
    #[arg(long, env = "PODSCORE_FINETUNE_HEAD")]
    pub head: Option<String>,
    /// Share of the labels held out for early stopping and calibration.
    #[arg(long, default_value_t = DEFAULT_VALIDATION_SHARE, env = "PODSCORE_FINETUNE_VALIDATION_SHARE")]
    pub validation_share: f64,
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, env = "PODSCORE_FINETUNE_BATCH_SIZE")]
    pub batch_size: usize,
    /// Default: 2e-3, a tenth of it for `full`.
    #[arg(long, env = "PODSCORE_FINETUNE_LEARNING_RATE")]
    pub learning_rate: Option<f64>,
    #[arg(long, default_value_t = DEFAULT_MAX_EPOCHS, env = "PODSCORE_FINETUNE_MAX_EPOCHS")]
    pub max_epochs: usize,
    /// Stop after this many epochs without a lower validation log loss.
    #[arg(long, default_value_t = DEFAULT_PATIENCE, env = "PODSCORE_FINETUNE_PATIENCE")]
    pub patience: usize,
    /// Seed of the label draw, the new tower and the batch order.
    #[arg(long, default_value_t = 17, env = "PODSCORE_SEED")]
    pub seed: u64,
    /// Hide the progress bar.
    #[arg(long, env = "PODSCORE_QUIET")]
    pub quiet: bool,
}

impl Default for FinetuneSettings {
    fn default() -> FinetuneSettings {
        FinetuneSettings {
            mode: Mode::NewHead,
            labels: None,
            head: None,
            validation_share: DEFAULT_VALIDATION_SHARE,
            batch_size: DEFAULT_BATCH_SIZE,
            learning_rate: None,
            max_epochs: DEFAULT_MAX_EPOCHS,
            patience: DEFAULT_PATIENCE,
            seed: 17,
            quiet: true,
        }
    }
}

impl FinetuneSettings {
    /// Every out-of-range value, not just the first.
    fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.labels.is_some_and(|labels| labels < MIN_LABELS) {
            problems.push(format!(
                "--labels must be at least {MIN_LABELS}, got {}",
                self.labels.unwrap_or(0)
            ));
        }
        if !(self.validation_share > 0.0 && self.validation_share < 1.0) {
            problems.push(format!(
                "--validation-share must be in (0, 1), got {}",
                self.validation_share
            ));
        }
        if !(1..=65_536).contains(&self.batch_size) {
            problems.push(format!(
                "--batch-size must be in 1..=65536, got {}",
                self.batch_size
            ));
        }
        if let Some(rate) = self.learning_rate
            && !(rate > 0.0 && rate <= 1.0)
        {
            problems.push(format!("--learning-rate must be in (0, 1], got {rate}"));
        }
        if !(1..=1000).contains(&self.max_epochs) {
            problems.push(format!(
                "--max-epochs must be in 1..=1000, got {}",
                self.max_epochs
            ));
        }
        if self.head.is_some() && self.mode != Mode::ZeroShot {
            problems.push("--head applies to --mode zero-shot only".to_string());
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(match self.mode {
            Mode::Full => DEFAULT_LEARNING_RATE * FULL_LEARNING_RATE_FACTOR,
            Mode::NewHead | Mode::ZeroShot | Mode::Scratch => DEFAULT_LEARNING_RATE,
        })
    }
}

/// A trained bundle with its training state, to fine-tune.
pub struct Base {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vocabularies: Vocabularies,
    /// `None` for a bundle written without its training state: `scratch` needs only the
    /// spec, every other mode refuses it ([`Base::network`]).
    weights: Option<Vec<u8>>,
}

impl Base {
    /// Reads the bundle in `dir`, with its training state when it has one.
    pub fn read(dir: &Path) -> Result<Base> {
        let bundle = Bundle::read(dir).with_context(|| format!("reading {}", dir.display()))?;
        let path = dir.join(WEIGHTS_FILE);
        let weights = match std::fs::read(&path) {
            Ok(weights) => Some(weights),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        };
        Ok(Base {
            dir: dir.to_path_buf(),
            manifest: bundle.manifest,
            vocabularies: bundle.vocabularies,
            weights,
        })
    }

    /// Head names in output order.
    pub fn head_names(&self) -> Result<Vec<String>> {
        Ok(self
            .manifest
            .heads_by_column()?
            .iter()
            .map(|head| head.name.clone())
            .collect())
    }

    /// The trained network, as the weights file holds it. A bundle without one is
    /// refused rather than read back from its graph: `model.onnx` holds the served form of
    /// the network (batch norm folded into one scale and shift, tables stacked per scope,
    /// a layout the exporter is free to change), not the state training continues from.
    pub fn network(&self) -> Result<Network> {
        let manifest = &self.manifest;
        let Some(weights) = &self.weights else {
            bail!(
                "{}: no {WEIGHTS_FILE}: the bundle was written without its training state \
                 (model.onnx holds only the served form of the network); retrain it with \
                 `podscore train`, which keeps it",
                self.dir.display()
            );
        };
        Network::from_safetensors(
            &manifest.architecture,
            &manifest.features,
            &self.vocabularies,
            &self.head_names()?,
            weights,
        )
        .with_context(|| {
            format!(
                "{}: {WEIGHTS_FILE} does not fit its manifest",
                self.dir.display()
            )
        })
    }

    pub fn assembler(&self) -> Result<Assembler> {
        Assembler::new(&self.manifest.features, &self.vocabularies)
            .with_context(|| format!("{}: its feature spec", self.dir.display()))
    }
}

/// One objective's labelled rows, read from a world.
pub struct Objective {
    pub info: ObjectiveInfo,
    /// The labelled pool, in time order.
    pub pool: Vec<ObjectiveImpression>,
    /// The held-out test days, in time order.
    pub test: Vec<ObjectiveImpression>,
}

impl Objective {
    /// Reads objective `name` of the world in `data`.
    pub fn read(data: &Path, name: &str) -> Result<Objective> {
        let objectives = logs::read_objectives_info(data).with_context(|| {
            format!(
                "{}: no objectives; simulate the world with --objective-labels N",
                data.display()
            )
        })?;
        let Some(info) = objectives.get(name) else {
            bail!(
                "{}: no objective `{name}`; it has {}",
                data.display(),
                objectives.names().join(", ")
            );
        };
        let rows = logs::read_objective(&logs::objective_path(data, name))?;
        let (pool, test): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|row| info.pool_days.contains(&row.impression.day));
        Ok(Objective {
            info: info.clone(),
            pool,
            test,
        })
    }

    /// `labels` rows of the pool drawn at random by `seed` (all of it for `None`), split
    /// into rows to train on and held-out rows; each part keeps time order.
    pub fn draw(
        &self,
        labels: Option<usize>,
        validation_share: f64,
        seed: u64,
    ) -> Result<(Vec<ObjectiveImpression>, Vec<ObjectiveImpression>)> {
        let count = labels.unwrap_or(self.pool.len());
        ensure!(
            count <= self.pool.len(),
            "--labels {count}: objective `{}` has {} labelled impressions in its pool",
            self.info.name,
            self.pool.len()
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut chosen: Vec<usize> = (0..self.pool.len()).collect();
        chosen.shuffle(&mut rng);
        chosen.truncate(count);
        let held_out = ((count as f64 * validation_share).round() as usize).clamp(1, count - 1);
        let (mut validation, mut fit) = (chosen[..held_out].to_vec(), chosen[held_out..].to_vec());
        validation.sort_unstable();
        fit.sort_unstable();
        let rows = |indices: &[usize]| -> Vec<ObjectiveImpression> {
            indices
                .iter()
                .map(|&index| self.pool[index].clone())
                .collect()
        };
        Ok((rows(&fit), rows(&validation)))
    }
}

/// Rows of the objective, assembled once, with their labels.
pub struct Labelled {
    pub set: ValidationSet,
    pub labels: Vec<bool>,
    /// The world's true probabilities, for evaluation.
    pub p_labels: Vec<f64>,
}

impl Labelled {
    pub fn assemble(
        assembler: &Assembler,
        snapshot: &Snapshot,
        rows: &[ObjectiveImpression],
    ) -> Result<Labelled> {
        let impressions: Vec<Impression> = rows.iter().map(|row| row.impression.clone()).collect();
        Ok(Labelled {
            set: ValidationSet::assemble(assembler, snapshot, impressions)?,
            labels: rows.iter().map(|row| row.label).collect(),
            p_labels: rows.iter().map(|row| row.p_label).collect(),
        })
    }

    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|label| **label).count()
    }

    /// Logits of head `column` of `network` on these rows, as served.
    pub fn logits(&self, network: &mut Network, column: usize) -> Result<Vec<f32>> {
        let width = network.heads.len();
        let logits = self.set.predict(network)?;
        Ok(logits.chunks(width).map(|row| row[column]).collect())
    }
}

/// The world's validation rows, on which `full` recalibrates the heads it moved.
pub struct BaseValidation {
    set: ValidationSet,
}

impl BaseValidation {
    pub fn read(data: &Path, assembler: &Assembler, snapshot: &Snapshot) -> Result<Self> {
        let splits = dataset::split_days(dataset::count_days(data)?);
        let mut rows = Vec::new();
        for kind in CandidateKind::ALL {
            rows.extend(dataset::read_days(
                data,
                kind,
                &splits.validation,
                BASE_VALIDATION_ROWS,
            )?);
        }
        Ok(BaseValidation {
            set: ValidationSet::assemble(assembler, snapshot, rows)?,
        })
    }
}

/// What one fine-tuning run produced, before anything is written.
pub struct Finetuned {
    pub network: Network,
    /// The manifest's heads: the base's (recalibrated by `full`) and the objective's.
    pub heads: Vec<HeadSpec>,
    /// The objective head's output column.
    pub column: usize,
    /// History, early stopping, calibration, the zero-shot choice, the base heads' drift.
    pub report: serde_json::Value,
    pub seconds: f64,
}

/// Everything a run reads, prepared once (the learning curves run many on the same).
pub struct Inputs<'a> {
    pub base: &'a Base,
    pub assembler: &'a Assembler,
    pub snapshot: &'a Snapshot,
    pub objective: &'a ObjectiveInfo,
    pub fit: &'a [ObjectiveImpression],
    /// The held-out labels, and the same assembled.
    pub held_out: &'a [ObjectiveImpression],
    pub validation: &'a Labelled,
    /// The world's validation rows, on which `full` recalibrates the base heads it moved
    /// (the command always passes them; without, the base heads keep their calibration,
    /// which only an experiment scoring the objective's head alone may accept).
    pub base_validation: Option<&'a BaseValidation>,
}

/// One epoch's line of the log.
#[derive(Serialize)]
struct EpochRecord {
    epoch: usize,
    steps: usize,
    train_loss: f64,
    validation_log_loss: f64,
    seconds: f64,
}

/// Fine-tunes `inputs.base` on the objective's labels as `settings` say.
pub fn fine_tune(
    inputs: &Inputs<'_>,
    settings: &FinetuneSettings,
    log: &mut TrainLog,
) -> Result<Finetuned> {
    settings.validate()?;
    let started = Instant::now();
    let objective = inputs.objective;
    let field = ResponseField::parse(&objective.name)
        .with_context(|| format!("objective `{}` as a response field", objective.name))?;
    let validation = inputs.validation;
    ensure!(
        validation.positives() > 0,
        "objective `{}`: the {} held-out labels hold no positive; use more labels",
        objective.name,
        validation.labels.len()
    );
    let base_heads = inputs.base.manifest.heads_by_column()?;
    if let Some(clash) = base_heads
        .iter()
        .find(|head| head.name == objective.name || head.field == field)
    {
        bail!(
            "{}: head `{}` already fills `{}`",
            inputs.base.dir.display(),
            clash.name,
            clash.field
        );
    }

    let mut report = serde_json::Map::new();
    let (mut network, mut heads) = match settings.mode {
        Mode::Scratch => (
            Network::new(
                &inputs.base.manifest.architecture,
                &inputs.base.manifest.features,
                &inputs.base.vocabularies,
                std::slice::from_ref(&objective.name),
                settings.seed,
            )?,
            Vec::new(),
        ),
        Mode::NewHead | Mode::Full | Mode::ZeroShot => (
            inputs.base.network()?,
            base_heads.iter().map(|head| (*head).clone()).collect(),
        ),
    };
    let before = match (settings.mode, inputs.base_validation) {
        (Mode::Full, Some(base)) => Some(base_head_quality(&mut network, &heads, base)?),
        _ => None,
    };
    match settings.mode {
        Mode::Scratch => network.set_trainable(Trainable::Everything),
        Mode::NewHead => {
            network.add_head(&objective.name, None, settings.seed)?;
            network.set_trainable(Trainable::Towers(vec![objective.name.clone()]));
        }
        Mode::Full => {
            network.add_head(&objective.name, None, settings.seed)?;
            network.set_trainable(Trainable::EverythingButNormStatistics);
        }
        Mode::ZeroShot => {}
    }
    // Zero-shot trains nothing, so every label chooses and calibrates its head; the other
    // modes keep the held-out ones for that.
    let all_labels;
    let calibration_rows = if settings.mode == Mode::ZeroShot {
        let rows: Vec<ObjectiveImpression> =
            inputs.fit.iter().chain(inputs.held_out).cloned().collect();
        all_labels = Labelled::assemble(inputs.assembler, inputs.snapshot, &rows)?;
        let source = closest_head(&mut network, &heads, objective, &all_labels, settings)?;
        report.insert("zero_shot_head".into(), json!(source));
        network.add_head(&objective.name, Some(&source), settings.seed)?;
        &all_labels
    } else {
        validation
    };
    let column = network.heads.len() - 1;

    if settings.mode != Mode::ZeroShot {
        let trained = train(&mut network, inputs, settings, column, log)?;
        report.insert("training".into(), trained);
    }

    let calibration_logits = calibration_rows.logits(&mut network, column)?;
    let calibration_labels = calibration_rows.labels.clone();
    let (calibration, check) = calibrate::fit_head(&calibration_logits, &calibration_labels);
    report.insert("calibration".into(), check);
    heads.push(HeadSpec {
        name: objective.name.clone(),
        output: OUTPUT_NAME.to_string(),
        index: column,
        kinds: objective.kinds.clone(),
        field,
        calibration,
        calibration_by_kind: BTreeMap::new(),
    });
    if let (Some(before), Some(base)) = (before, inputs.base_validation) {
        let after = recalibrate_base_heads(&mut network, &mut heads, base)?;
        report.insert(
            "base_heads".into(),
            json!({"validation_ap_before": before, "validation_ap_after": after,
                   "note": "full fine-tuning moves the shared encoder: the base heads were recalibrated on the world's validation days"}),
        );
    }
    Ok(Finetuned {
        network,
        heads,
        column,
        report: serde_json::Value::Object(report),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The epoch loop on the objective's labels: shuffled batches (assembled on the trainer's
/// producer thread, [`fit::run_steps`]), validation log loss after each epoch, the
/// trainer's early stopping ([`Best`]: `--patience` epochs in a row without a lower loss
/// end it), the best epoch restored and untrained rows sent to the unknown row.
fn train(
    network: &mut Network,
    inputs: &Inputs<'_>,
    settings: &FinetuneSettings,
    column: usize,
    log: &mut TrainLog,
) -> Result<serde_json::Value> {
    let fit = inputs.fit;
    ensure!(
        fit.iter().any(|row| row.label),
        "objective `{}`: the {} labels to train on hold no positive; use more labels",
        inputs.objective.name,
        fit.len()
    );
    let batch_size = settings.batch_size.min(fit.len());
    let steps = fit.len().div_ceil(batch_size);
    let width = network.heads.len();
    let mut optimizer = Adam::new(settings.learning_rate());
    let mut order: Vec<usize> = (0..fit.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed.wrapping_add(1));
    let progress = fit::progress_bar(settings.quiet, steps * settings.max_epochs);
    let mut best = Best::default();
    let mut history = Vec::new();
    for epoch in 0..settings.max_epochs {
        let epoch_started = Instant::now();
        order.shuffle(&mut rng);
        let mut batches = order.chunks(batch_size);
        let loss = fit::run_steps(
            network,
            &mut optimizer,
            (epoch + 1, steps),
            || {
                let rows = batches.next().context("an epoch ran out of batches")?;
                prepare(inputs, rows, column, width)
            },
            &progress,
        )?;
        let logits = inputs.validation.logits(network, column)?;
        let validation_loss = quality::log_loss_of_logits(&logits, &inputs.validation.labels)
            .context("no held-out labels")?;
        let record = EpochRecord {
            epoch: epoch + 1,
            steps,
            train_loss: loss,
            validation_log_loss: validation_loss,
            seconds: epoch_started.elapsed().as_secs_f64(),
        };
        log.write(&record)?;
        history.push(record);
        if !best.observe(-validation_loss, epoch + 1, network, settings.patience)? {
            break;
        }
    }
    progress.finish_and_clear();
    let (score, best_epoch, state) = best.state.context("no epoch ran")?;
    network.restore(&state)?;
    // As the trainer does: a row no step updated (in `scratch`, the ids the labels never
    // show) takes the unknown row's values instead of serving its random initialization.
    // A base's rows count as trained, so the other modes replace none.
    let untrained_rows = network.fall_back_untrained_rows();
    Ok(json!({
        "mode": settings.mode,
        "learning_rate": settings.learning_rate(),
        "batch_size": batch_size,
        "fit_rows": fit.len(),
        "best_epoch": best_epoch,
        "best_validation_log_loss": -score,
        "untrained_rows": untrained_rows,
        "history": history,
    }))
}

/// Assembles rows `indices` of the labels to train on: every head's label column is zero
/// and masked out but the objective's.
fn prepare(
    inputs: &Inputs<'_>,
    indices: &[usize],
    column: usize,
    width: usize,
) -> Result<PreparedBatch> {
    let rows: Vec<&ObjectiveImpression> = indices.iter().map(|&index| &inputs.fit[index]).collect();
    let (request_views, candidate_views): (Vec<_>, Vec<_>) = rows
        .iter()
        .map(|row| dataset::views(inputs.snapshot, &row.impression))
        .unzip();
    let mut labels = vec![0.0f32; rows.len() * width];
    let mut mask = vec![0.0f32; rows.len() * width];
    for (position, row) in rows.iter().enumerate() {
        labels[position * width + column] = if row.label { 1.0 } else { 0.0 };
        mask[position * width + column] = 1.0;
    }
    Ok(PreparedBatch {
        request: inputs.assembler.request(&request_views)?,
        candidates: inputs.assembler.candidates(&candidate_views)?,
        labels,
        mask,
    })
}

/// The base head `zero-shot` maps the objective onto: `--head`, or the head serving every
/// kind of the objective with the best AP on `labelled`.
fn closest_head(
    network: &mut Network,
    heads: &[HeadSpec],
    objective: &ObjectiveInfo,
    labelled: &Labelled,
    settings: &FinetuneSettings,
) -> Result<String> {
    let serving: Vec<&HeadSpec> = heads
        .iter()
        .filter(|head| objective.kinds.iter().all(|kind| head.kinds.contains(kind)))
        .collect();
    if let Some(name) = &settings.head {
        return match serving.iter().find(|head| &head.name == name) {
            Some(head) => Ok(head.name.clone()),
            None => bail!(
                "--head {name}: no head of the base serves {:?} candidates under that name; \
                 candidates: {}",
                objective.kinds,
                serving
                    .iter()
                    .map(|head| head.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    let logits = labelled.set.predict(network)?;
    let width = network.heads.len();
    let mut best: Option<(f64, &HeadSpec)> = None;
    for head in &serving {
        let scores: Vec<f64> = logits
            .chunks(width)
            .map(|row| f64::from(row[head.index]))
            .collect();
        let ap = quality::average_precision(&scores, &labelled.labels).unwrap_or(0.0);
        if best.is_none_or(|(best_ap, _)| ap > best_ap) {
            best = Some((ap, head));
        }
    }
    best.map(|(_, head)| head.name.clone()).with_context(|| {
        format!(
            "no head of the base serves {:?} candidates",
            objective.kinds
        )
    })
}

/// One base head's logits and logged labels on the validation rows of its kinds.
struct HeadRows {
    /// Position of the head in the heads it was read for.
    position: usize,
    /// Per row: the head's logit, the logged label and the candidate's kind.
    rows: Vec<(f32, bool, CandidateKind)>,
}

impl HeadRows {
    fn logits_and_labels(&self) -> (Vec<f32>, Vec<bool>) {
        self.rows
            .iter()
            .map(|(logit, label, _)| (*logit, *label))
            .unzip()
    }
}

impl BaseValidation {
    /// Per base head with logged labels: its logits and labels on the validation rows of
    /// the kinds it serves.
    fn head_rows(&self, network: &mut Network, heads: &[HeadSpec]) -> Result<Vec<HeadRows>> {
        let logits = self.set.predict(network)?;
        let width = network.heads.len();
        Ok(heads
            .iter()
            .enumerate()
            .filter_map(|(position, head)| {
                let label = Label::of_field(&head.field)?;
                let rows = self
                    .set
                    .rows
                    .iter()
                    .enumerate()
                    .filter(|(_, row)| head.kinds.contains(&row.kind))
                    .map(|(index, row)| {
                        (logits[index * width + head.index], label.of(row), row.kind)
                    })
                    .collect();
                Some(HeadRows { position, rows })
            })
            .collect())
    }
}

/// The validation AP of a head's logits.
fn logit_ap(logits: &[f32], labels: &[bool]) -> Option<f64> {
    let scores: Vec<f64> = logits.iter().map(|logit| f64::from(*logit)).collect();
    quality::average_precision(&scores, labels)
}

/// Validation AP of each base head with logged labels, on the kinds it serves.
fn base_head_quality(
    network: &mut Network,
    heads: &[HeadSpec],
    base: &BaseValidation,
) -> Result<BTreeMap<String, f64>> {
    Ok(base
        .head_rows(network, heads)?
        .into_iter()
        .filter_map(|rows| {
            let (logits, labels) = rows.logits_and_labels();
            Some((
                heads[rows.position].name.clone(),
                logit_ap(&logits, &labels)?,
            ))
        })
        .collect())
}

/// Refits the calibration of every base head with logged labels on the world's
/// validation rows, per kind for a head serving both as the trainer calibrates it, and
/// returns their validation AP.
fn recalibrate_base_heads(
    network: &mut Network,
    heads: &mut [HeadSpec],
    base: &BaseValidation,
) -> Result<BTreeMap<String, f64>> {
    let mut quality_by_head = BTreeMap::new();
    for rows in base.head_rows(network, heads)? {
        let head = &mut heads[rows.position];
        let fitted = calibrate::fit_per_kind(&head.kinds, &rows.rows);
        head.calibration = fitted.calibration;
        head.calibration_by_kind = fitted.by_kind;
        let (logits, labels) = rows.logits_and_labels();
        if let Some(ap) = logit_ap(&logits, &labels) {
            quality_by_head.insert(head.name.clone(), ap);
        }
    }
    Ok(quality_by_head)
}

/// The manifest of a fine-tuned bundle: the base's features and architecture, the heads
/// of the run, and what it was trained from.
fn manifest(
    args: &FinetuneArgs,
    base: &Base,
    objective: &Objective,
    finetuned: &Finetuned,
    labels: usize,
) -> Result<Manifest> {
    let (name, version) = package::name_and_version(&args.out, args.name.as_deref());
    Ok(Manifest {
        name,
        version,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        settings: json!({
            "finetune": args,
            "base": {
                "dir": base.dir.display().to_string(),
                "name": base.manifest.name,
                "version": base.manifest.version,
                "settings": base.manifest.settings,
            },
        }),
        data_summary: json!({
            "data": args.data.display().to_string(),
            "objective": objective.info,
            "labels": labels,
            "base": base.manifest.data_summary,
        }),
        metrics: json!({
            "finetune": finetuned.report,
            "seconds": finetuned.seconds,
            "parameters": finetuned.network.parameter_count(),
        }),
        architecture: base.manifest.architecture.clone(),
        features: base.manifest.features.clone(),
        heads: finetuned.heads.clone(),
        golden: Vec::new(),
    })
}

/// `podscore finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
    args.settings.validate()?;
    if args.out.exists() {
        bail!(
            "{}: already exists; refusing to overwrite a bundle",
            args.out.display()
        );
    }
    let base = Base::read(&args.from)?;
    let objective = Objective::read(&args.data, &args.objective)?;
    let snapshot = logs::read_snapshot(&args.data)
        .with_context(|| format!("reading the snapshot in {}", args.data.display()))?;
    let assembler = base.assembler()?;
    let settings = &args.settings;
    let (fit, held_out) =
        objective.draw(settings.labels, settings.validation_share, settings.seed)?;
    let validation = Labelled::assemble(&assembler, &snapshot, &held_out)?;
    let base_validation = match settings.mode {
        Mode::Full => Some(BaseValidation::read(&args.data, &assembler, &snapshot)?),
        _ => None,
    };
    let mut log = TrainLog::create(args.log.as_deref())?;
    let mut finetuned = fine_tune(
        &Inputs {
            base: &base,
            assembler: &assembler,
            snapshot: &snapshot,
            objective: &objective.info,
            fit: &fit,
            held_out: &held_out,
            validation: &validation,
            base_validation: base_validation.as_ref(),
        },
        settings,
        &mut log,
    )?;
    let manifest = manifest(
        args,
        &base,
        &objective,
        &finetuned,
        fit.len() + held_out.len(),
    )?;
    let rows: Vec<Impression> = held_out.iter().map(|row| row.impression.clone()).collect();
    let package = package::finish(
        manifest,
        &mut finetuned.network,
        &Sources {
            assembler: &assembler,
            vocabularies: &base.vocabularies,
            snapshot: &snapshot,
            rows: &rows,
        },
        &args.out,
    )?;
    Bundle::write_with_weights(
        &args.out,
        &package.manifest,
        &base.vocabularies,
        &package.onnx,
        Some(&package.weights),
    )?;
    log.write(&json!({"done": true, "bundle": args.out.display().to_string(), "metrics": package.manifest.metrics}))?;
    eprintln!(
        "wrote {} ({} of `{}` on {} labels, {:.0}s): its head `{}` fills the response field `{}`",
        args.out.display(),
        settings.mode.name(),
        base.manifest.name,
        fit.len() + held_out.len(),
        finetuned.seconds,
        args.objective,
        args.objective
    );
    Ok(())
}
