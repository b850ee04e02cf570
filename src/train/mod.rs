//! The multi-task trainer: the paper's method on podscore's logs.
//!
//! `podscore train` runs in four phases, each in its own file and handing the next its
//! own type: [`scan`] (one pass over the logs: vocabularies, numeric statistics, counts,
//! validation rows) -> [`fit`] (source-balanced batches assembled with the shared feature
//! module, a directional or other loss mask, id dropout, early stopping on the stream
//! heads' validation AP) -> [`calibrate`] (Platt scaling per head on natural-distribution
//! validation rows) -> [`package`] (manifest, golden cases, ONNX export proven in tract).
//!
//! This module knows candle and the log schema; it knows nothing of tract or HTTP beyond
//! the proof that the exported bundle loads and scores as the server will.

pub mod adam;
pub mod calibrate;
pub mod finetune;
pub mod fit;
pub mod network;
pub mod package;
pub mod sampler;
pub mod scan;
pub mod validation;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde::Serialize;
use serde_json::json;

use crate::bundle::{Architecture, Bundle, ResponseField};
use crate::dataset::{self, Splits};
use crate::entities::CandidateKind;
use crate::features::Assembler;
use crate::logs::{self, Impression, Snapshot};

use validation::ValidationSet;

/// Heads of the paper's 5-task model, in output order.
pub const ALL_HEADS: [&str; 5] = ["promo_stream", "ad_stream", "click", "like", "follow"];
/// Ids dropped to index 0 during training so that row 0 learns "an item we have not
/// seen": the candidate-side ids that are new for cold-start shows and campaigns.
const ID_DROPOUT_FEATURES: [&str; 4] = ["show_id", "episode_id", "campaign_id", "creative_id"];

// Defaults. Sizes follow the reference shape (E=16, 256-128 encoder, 64-wide
// towers, batch 1024), which the PyTorch comparison was measured on.
const DEFAULT_BATCH_SIZE: usize = 1024;
const DEFAULT_LEARNING_RATE: f64 = 2e-3;
/// Per-epoch multiplicative decay: one schedule for every variant.
const DEFAULT_LEARNING_RATE_DECAY: f64 = 0.8;
/// The cap, in passes of the smaller source. High enough that no variant of
/// `reproduce` reaches it (each stops by patience within a few epochs).
const DEFAULT_MAX_EPOCHS: usize = 40;
/// Validation points per pass of the smaller source: a head that overfits within a pass
/// (the ad head did, at its second) is caught near its best.
const DEFAULT_VALIDATIONS_PER_EPOCH: usize = 4;
/// Stop after this many eligible validation points without a better checkpoint score:
/// one and a half passes of the smaller source, so that one noisy point does not stop a
/// run that is still improving.
const DEFAULT_PATIENCE: usize = 6;
/// L2 per looked-up embedding row (see `Network::set_embedding_l2`): about 1% of the
/// loss for embeddings of unit norm over the 25 features, enough to keep the rows of
/// creatives and shows with a handful of impressions from fitting noise.
const DEFAULT_EMBEDDING_L2: f64 = 1e-4;
const DEFAULT_ID_DROPOUT: f64 = 0.1;
/// Ids seen fewer times than this in training map to the unknown row: rare shows share
/// the cold-start path instead of getting an embedding trained on a handful of rows.
const DEFAULT_MIN_COUNT: u64 = 5;
/// Enough validation rows per source for stable AP of rare labels, bounded for memory.
const DEFAULT_VALIDATION_ROWS: usize = 150_000;
/// Shuffle buffer per source: large enough to mix several row groups of 64k rows.
const DEFAULT_SHUFFLE_BUFFER: usize = 200_000;
/// Fractions of the days used for training and validation; the rest is the test split.
pub const TRAIN_FRACTION: f64 = 0.7;
pub const VALIDATION_FRACTION: f64 = 0.15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Promotions data, promotion stream head only (the paper's baseline).
    PromoOnly,
    /// Ads data, ad stream head only.
    AdsStreamOnly,
    /// Ads data, ad stream plus the ancillary click, like and follow heads.
    AdsAnc,
    /// Promotions and ads, all five heads (the paper's deployed model).
    Mtl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskMode {
    /// Ad impressions leave `promo_stream` alone; promotions train every head.
    Directional,
    /// Every impression trains every head.
    Bidirectional,
    /// Each source trains only its own stream head (plus the ancillary heads).
    Siloed,
}

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct TrainArgs {
    /// World directory written by `podscore simulate` (logs/ and snapshot/).
    #[arg(long, env = "PODSCORE_DATA")]
    pub data: PathBuf,
    /// Bundle directory to create, e.g. models/podcast-mtl/1; must not exist.
    #[arg(long, env = "PODSCORE_OUT")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "mtl", env = "PODSCORE_VARIANT")]
    pub variant: Variant,
    #[arg(long, value_enum, default_value = "directional", env = "PODSCORE_MASK")]
    pub mask: MaskMode,
    /// Share of each mini-batch drawn from promotion impressions (two-source variants).
    #[arg(long, default_value_t = 0.5, env = "PODSCORE_PROMO_SHARE")]
    pub promo_share: f64,
    /// Model name in the manifest; defaults to the bundle directory's parent name.
    #[arg(long, env = "PODSCORE_NAME")]
    pub name: Option<String>,
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, env = "PODSCORE_BATCH_SIZE")]
    pub batch_size: usize,
    #[arg(long, default_value_t = DEFAULT_LEARNING_RATE, env = "PODSCORE_LEARNING_RATE")]
    pub learning_rate: f64,
    #[arg(long, default_value_t = DEFAULT_LEARNING_RATE_DECAY, env = "PODSCORE_LEARNING_RATE_DECAY")]
    pub learning_rate_decay: f64,
    #[arg(long, default_value_t = DEFAULT_MAX_EPOCHS, env = "PODSCORE_MAX_EPOCHS")]
    pub max_epochs: usize,
    /// Steps per epoch (0 = one pass over the smaller source used: with balanced batches
    /// it cycles while the larger one streams).
    #[arg(long, default_value_t = 0, env = "PODSCORE_STEPS_PER_EPOCH")]
    pub steps_per_epoch: usize,
    /// Validation points per epoch.
    #[arg(long, default_value_t = DEFAULT_VALIDATIONS_PER_EPOCH, env = "PODSCORE_VALIDATIONS_PER_EPOCH")]
    pub validations_per_epoch: usize,
    /// Eligible validation points without a better checkpoint before training stops.
    #[arg(long, default_value_t = DEFAULT_PATIENCE, env = "PODSCORE_PATIENCE")]
    pub patience: usize,
    /// L2 penalty per looked-up embedding row, averaged over the batch.
    #[arg(long, default_value_t = DEFAULT_EMBEDDING_L2, env = "PODSCORE_EMBEDDING_L2")]
    pub embedding_l2: f64,
    #[arg(long, default_value_t = 16, env = "PODSCORE_EMBEDDING_DIM")]
    pub embedding_dim: usize,
    /// Shared encoder widths, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![256usize, 128], env = "PODSCORE_ENCODER")]
    pub encoder: Vec<usize>,
    /// Hidden widths of each tower, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![64usize], env = "PODSCORE_TOWER")]
    pub tower: Vec<usize>,
    #[arg(long, default_value_t = DEFAULT_ID_DROPOUT, env = "PODSCORE_ID_DROPOUT")]
    pub id_dropout: f64,
    #[arg(long, default_value_t = DEFAULT_MIN_COUNT, env = "PODSCORE_MIN_COUNT")]
    pub min_count: u64,
    #[arg(long, default_value_t = DEFAULT_VALIDATION_ROWS, env = "PODSCORE_VALIDATION_ROWS")]
    pub validation_rows: usize,
    #[arg(long, default_value_t = DEFAULT_SHUFFLE_BUFFER, env = "PODSCORE_SHUFFLE_BUFFER")]
    pub shuffle_buffer: usize,
    #[arg(long, default_value_t = 17, env = "PODSCORE_SEED")]
    pub seed: u64,
    /// Write one JSON line per epoch (and a final summary) to this file.
    #[arg(long, env = "PODSCORE_TRAIN_LOG")]
    pub log: Option<PathBuf>,
    /// Hide the progress bar (logs and tests).
    #[arg(long, env = "PODSCORE_QUIET")]
    pub quiet: bool,
}

impl TrainArgs {
    /// Every out-of-range value, not just the first.
    fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !(self.promo_share > 0.0 && self.promo_share < 1.0) {
            problems.push(format!(
                "--promo-share must be in (0, 1), got {}",
                self.promo_share
            ));
        }
        if self.batch_size < 2 || self.batch_size > 65_536 {
            problems.push(format!(
                "--batch-size must be in 2..=65536, got {}",
                self.batch_size
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            problems.push(format!(
                "--learning-rate must be in (0, 1], got {}",
                self.learning_rate
            ));
        }
        if !(self.learning_rate_decay > 0.0 && self.learning_rate_decay <= 1.0) {
            problems.push(format!(
                "--learning-rate-decay must be in (0, 1], got {}",
                self.learning_rate_decay
            ));
        }
        if self.max_epochs == 0 || self.max_epochs > 1000 {
            problems.push(format!(
                "--max-epochs must be in 1..=1000, got {}",
                self.max_epochs
            ));
        }
        if !(1..=64).contains(&self.validations_per_epoch) {
            problems.push(format!(
                "--validations-per-epoch must be in 1..=64, got {}",
                self.validations_per_epoch
            ));
        }
        if self.patience == 0 {
            problems.push("--patience must be at least 1".to_string());
        }
        if !(0.0..=1.0).contains(&self.embedding_l2) {
            problems.push(format!(
                "--embedding-l2 must be in [0, 1], got {}",
                self.embedding_l2
            ));
        }
        if self.embedding_dim == 0 || self.embedding_dim > 512 {
            problems.push(format!(
                "--embedding-dim must be in 1..=512, got {}",
                self.embedding_dim
            ));
        }
        if self.encoder.is_empty() || self.encoder.iter().any(|w| *w == 0 || *w > 4096) {
            problems.push(format!(
                "--encoder widths must be in 1..=4096, got {:?}",
                self.encoder
            ));
        }
        if self.tower.iter().any(|w| *w == 0 || *w > 4096) {
            problems.push(format!(
                "--tower widths must be in 1..=4096, got {:?}",
                self.tower
            ));
        }
        if !(0.0..1.0).contains(&self.id_dropout) {
            problems.push(format!(
                "--id-dropout must be in [0, 1), got {}",
                self.id_dropout
            ));
        }
        if self.min_count == 0 {
            problems.push("--min-count must be at least 1".to_string());
        }
        if self.validation_rows < 100 {
            problems.push(format!(
                "--validation-rows must be at least 100, got {}",
                self.validation_rows
            ));
        }
        if self.shuffle_buffer < self.batch_size {
            problems.push(format!(
                "--shuffle-buffer must be at least --batch-size ({}), got {}",
                self.batch_size, self.shuffle_buffer
            ));
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(())
    }
}

/// Which sources a variant reads and which heads it trains.
pub struct Plan {
    pub uses_promotions: bool,
    pub uses_ads: bool,
    pub heads: Vec<HeadPlan>,
}

pub struct HeadPlan {
    pub name: &'static str,
    pub label: Label,
    pub kinds: Vec<CandidateKind>,
    pub field: ResponseField,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Stream,
    Click,
    Like,
    Follow,
}

impl Label {
    /// The logged label that fills `field`; `None` for a manifest-named field (its labels
    /// are in the objective's own file).
    pub fn of_field(field: &ResponseField) -> Option<Label> {
        match field {
            ResponseField::Stream => Some(Label::Stream),
            ResponseField::Click => Some(Label::Click),
            ResponseField::Like => Some(Label::Like),
            ResponseField::Follow => Some(Label::Follow),
            ResponseField::Objective(_) => None,
        }
    }

    pub fn of(self, row: &Impression) -> bool {
        match self {
            Label::Stream => row.stream,
            Label::Click => row.click,
            Label::Like => row.like,
            Label::Follow => row.follow,
        }
    }
}

fn ancillary_heads() -> Vec<HeadPlan> {
    [
        ("click", Label::Click, ResponseField::Click),
        ("like", Label::Like, ResponseField::Like),
        ("follow", Label::Follow, ResponseField::Follow),
    ]
    .into_iter()
    .map(|(name, label, field)| HeadPlan {
        name,
        label,
        kinds: CandidateKind::ALL.to_vec(),
        field,
    })
    .collect()
}

impl Plan {
    /// Whether the variant trains on impressions of `kind`.
    pub fn uses(&self, kind: CandidateKind) -> bool {
        match kind {
            CandidateKind::Promotion => self.uses_promotions,
            CandidateKind::Ad => self.uses_ads,
        }
    }

    /// Head names in output order.
    pub fn head_names(&self) -> Vec<String> {
        self.heads
            .iter()
            .map(|head| head.name.to_string())
            .collect()
    }

    pub fn of(variant: Variant) -> Plan {
        let stream_head = |name, kinds: &[CandidateKind]| HeadPlan {
            name,
            label: Label::Stream,
            kinds: kinds.to_vec(),
            field: ResponseField::Stream,
        };
        let both = CandidateKind::ALL;
        match variant {
            Variant::PromoOnly => Plan {
                uses_promotions: true,
                uses_ads: false,
                heads: vec![stream_head("promo_stream", &both)],
            },
            Variant::AdsStreamOnly => Plan {
                uses_promotions: false,
                uses_ads: true,
                heads: vec![stream_head("ad_stream", &both)],
            },
            Variant::AdsAnc => Plan {
                uses_promotions: false,
                uses_ads: true,
                heads: std::iter::once(stream_head("ad_stream", &both))
                    .chain(ancillary_heads())
                    .collect(),
            },
            Variant::Mtl => Plan {
                uses_promotions: true,
                uses_ads: true,
                heads: [
                    stream_head("promo_stream", &[CandidateKind::Promotion]),
                    stream_head("ad_stream", &[CandidateKind::Ad]),
                ]
                .into_iter()
                .chain(ancillary_heads())
                .collect(),
            },
        }
    }
}

/// Whether an impression of `source` trains `head` under `mask`: the paper's m(s, t).
pub fn mask_weight(mask: MaskMode, source: CandidateKind, head: &str) -> f32 {
    let trains = match (mask, source, head) {
        (MaskMode::Bidirectional, _, _) => true,
        (_, CandidateKind::Ad, "promo_stream") => false,
        (MaskMode::Siloed, CandidateKind::Promotion, "ad_stream") => false,
        _ => true,
    };
    if trains { 1.0 } else { 0.0 }
}

/// What every phase reads: the settings, the variant's plan, the world's snapshot and its
/// time split.
pub struct Run<'a> {
    pub args: &'a TrainArgs,
    pub plan: Plan,
    pub snapshot: Snapshot,
    pub splits: Splits,
    pub started: Instant,
}

impl Run<'_> {
    /// The network's shape as the settings give it.
    pub fn architecture(&self) -> Architecture {
        Architecture {
            embedding_dim: self.args.embedding_dim,
            encoder: self.args.encoder.clone(),
            tower: self.args.tower.clone(),
        }
    }
}

/// The `--log` file: one JSON line per epoch and a final summary; nothing without it.
pub struct TrainLog {
    file: Option<std::fs::File>,
}

impl TrainLog {
    pub fn create(path: Option<&Path>) -> Result<TrainLog> {
        let file = match path {
            Some(path) => Some(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => None,
        };
        Ok(TrainLog { file })
    }

    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        if let Some(file) = self.file.as_mut() {
            use std::io::Write;
            writeln!(file, "{}", serde_json::to_string(record)?)?;
        }
        Ok(())
    }
}

/// The settings' run: the world's snapshot and time split read, the variant's plan made.
fn open_run(args: &TrainArgs) -> Result<Run<'_>> {
    args.validate()?;
    let started = Instant::now();
    let snapshot = logs::read_snapshot(&args.data)
        .with_context(|| format!("reading the snapshot in {}", args.data.display()))?;
    let days = dataset::count_days(&args.data)?;
    Ok(Run {
        args,
        plan: Plan::of(args.variant),
        snapshot,
        splits: dataset::split_days(days),
        started,
    })
}

/// Scan, then the validation rows assembled with the scanned features.
fn scan_and_assemble(run: &Run<'_>) -> Result<(scan::Scanned, Assembler, ValidationSet)> {
    let mut scanned = scan::scan(run)?;
    let assembler = Assembler::new(&scanned.specs, &scanned.vocabularies)?;
    let validation_rows = std::mem::take(&mut scanned.validation);
    let validation = ValidationSet::assemble(&assembler, &run.snapshot, validation_rows)?;
    Ok((scanned, assembler, validation))
}

/// Scans and fits without calibrating, packaging or writing anything: the trained
/// network at its checkpoint and what it was trained on, for tests of training itself.
pub fn fit_only(args: &TrainArgs) -> Result<(scan::Scanned, fit::Fitted)> {
    let run = open_run(args)?;
    let (scanned, assembler, validation) = scan_and_assemble(&run)?;
    let mut log = TrainLog::create(args.log.as_deref())?;
    let fitted = fit::fit(&run, &scanned, &assembler, &validation, &mut log)?;
    Ok((scanned, fitted))
}

/// `podscore train`: scan the training days, fit the network, calibrate its heads, and
/// package and write the bundle, each phase handing the next its own type.
pub fn run(args: &TrainArgs) -> Result<()> {
    args.validate()?;
    if args.out.exists() {
        bail!(
            "{}: already exists; refusing to overwrite a bundle",
            args.out.display()
        );
    }
    let run = open_run(args)?;
    let (scanned, assembler, validation) = scan_and_assemble(&run)?;
    let mut log = TrainLog::create(args.log.as_deref())?;
    let mut fitted = fit::fit(&run, &scanned, &assembler, &validation, &mut log)?;
    let calibrated = calibrate::calibrate(&run.plan, &mut fitted.network, &validation)?;
    let (best_epoch, best_score, train_seconds) =
        (fitted.best_epoch, fitted.best_score, fitted.seconds);
    let package = package::package(
        &run,
        &scanned,
        &assembler,
        &validation.rows,
        fitted,
        calibrated,
    )?;
    Bundle::write_with_weights(
        &args.out,
        &package.manifest,
        &scanned.vocabularies,
        &package.onnx,
        Some(&package.weights),
    )?;
    log.write(&json!({"done": true, "bundle": args.out.display().to_string(), "best_epoch": best_epoch, "validation": package.manifest.metrics["validation"], "train_seconds": train_seconds}))?;
    eprintln!(
        "wrote {} (best epoch {best_epoch:.2}, validation AP lift {best_score:.3}, {train_seconds:.0}s training)",
        args.out.display()
    );
    Ok(())
}
