//! The multi-task trainer: the paper's method on podscore's logs.
//!
//! `podscore train` streams the impression logs through a source-balanced sampler,
//! assembles each batch with the shared feature module, trains the shared-bottom network
//! with a directional (or other) loss mask and id dropout, stops early on validation AP
//! of the stream heads, calibrates every head on natural-distribution validation data,
//! and exports an ONNX bundle with its manifest, vocabularies and golden cases.
//!
//! This module knows candle and the log schema; it knows nothing of tract or HTTP.

pub mod adam;
pub mod network;
pub mod quality;
pub mod sampler;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::Tensor;
use clap::ValueEnum;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::bundle::{
    self, Architecture, Bundle, GoldenCase, GoldenScores, HeadSpec, Manifest, ResponseField,
};
use crate::entities::{CandidateKind, CandidateView, ContextRecord, CreativeRecord, RequestView};
use crate::features::{
    self, Assembler, FeatureDefinition, FeatureSpec, Kind, RawValue, ScopeTensors, Transform,
    Vocabularies, Vocabulary, VocabularyBuilder,
};
use crate::logs::{self, Impression, Snapshot};

use adam::Adam;
use network::Network;
use sampler::{BalancedSampler, SourceStream};

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
const DEFAULT_MAX_EPOCHS: usize = 12;
/// Stop after this many epochs without a better validation AP.
const DEFAULT_PATIENCE: usize = 2;
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
    /// Steps per epoch (0 = until the first source has been seen once: with balanced
    /// batches the smaller source cycles, and validating once per cycle catches
    /// overfitting to it).
    #[arg(long, default_value_t = 0, env = "PODSCORE_STEPS_PER_EPOCH")]
    pub steps_per_epoch: usize,
    #[arg(long, default_value_t = DEFAULT_PATIENCE, env = "PODSCORE_PATIENCE")]
    pub patience: usize,
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

/// Day ranges of the time split.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Splits {
    pub days: u32,
    pub train: std::ops::Range<u32>,
    pub validation: std::ops::Range<u32>,
    pub test: std::ops::Range<u32>,
}

pub fn split_days(days: u32) -> Splits {
    let train_end = ((f64::from(days) * TRAIN_FRACTION).floor() as u32).max(1);
    let validation_end = ((f64::from(days) * (TRAIN_FRACTION + VALIDATION_FRACTION)).floor()
        as u32)
        .max(train_end + 1)
        .min(days);
    Splits {
        days,
        train: 0..train_end,
        validation: train_end..validation_end,
        test: validation_end..days,
    }
}

/// The number of days the logs span: one past the largest `day` in either file.
pub fn count_days(data: &Path) -> Result<u32> {
    let mut last_day = None;
    for kind in CandidateKind::ALL {
        let path = logs::impressions_path(data, kind);
        for group in
            logs::open_impressions(&path).with_context(|| format!("opening {}", path.display()))?
        {
            let group = group.with_context(|| format!("reading {}", path.display()))?;
            for row in &group {
                last_day = Some(last_day.map_or(row.day, |d: u32| d.max(row.day)));
            }
        }
    }
    let last_day = last_day.context("empty world: no impressions in either log")?;
    ensure!(
        last_day >= 2,
        "the logs span {} days; at least 3 are needed for a time split",
        last_day + 1
    );
    Ok(last_day + 1)
}

/// The entity views of one impression, from the snapshot and the impression itself.
pub fn views<'a>(
    snapshot: &'a Snapshot,
    row: &'a Impression,
) -> (RequestView<'a>, CandidateView<'a>) {
    (
        RequestView {
            user: snapshot.users.get(&row.user_id),
            context: &row.context,
        },
        CandidateView {
            kind: row.kind,
            show_id: Some(&row.show_id),
            show: snapshot.shows.get(&row.show_id),
            episode_id: row.episode_id.as_deref(),
            episode: row
                .episode_id
                .as_ref()
                .and_then(|id| snapshot.episodes.get(id)),
            creative: &row.creative,
        },
    )
}

/// Running mean and variance (Welford) of one numeric feature's transformed values.
#[derive(Default, Clone, Copy)]
struct RunningStats {
    count: f64,
    mean: f64,
    m2: f64,
}

impl RunningStats {
    fn push(&mut self, value: f64) {
        self.count += 1.0;
        let delta = value - self.mean;
        self.mean += delta / self.count;
        self.m2 += delta * (value - self.mean);
    }

    fn std(&self) -> f64 {
        if self.count < 2.0 {
            1.0
        } else {
            (self.m2 / (self.count - 1.0)).sqrt().max(1e-6)
        }
    }
}

fn transformed_numeric(definition: &FeatureDefinition, value: RawValue<'_>) -> Option<f64> {
    let Transform::Numeric { log1p, .. } = definition.transform else {
        return None;
    };
    match value {
        RawValue::Number(number) if number.is_finite() => Some(if log1p {
            number.max(0.0).ln_1p()
        } else {
            number
        }),
        _ => None,
    }
}

/// What one pass over the training days learns: vocabularies, numeric statistics, row
/// counts and base rates, plus the (capped) validation rows.
struct DataPass {
    specs: Vec<FeatureSpec>,
    vocabularies: Vocabularies,
    train_rows: BTreeMap<CandidateKind, u64>,
    positives: BTreeMap<(CandidateKind, &'static str), u64>,
    validation: Vec<Impression>,
}

fn scan(args: &TrainArgs, plan: &Plan, snapshot: &Snapshot, splits: &Splits) -> Result<DataPass> {
    let mut definitions = features::default_definitions();
    let provisional = features::lay_out(&definitions);
    let mut builder = VocabularyBuilder::default();
    let mut stats = vec![RunningStats::default(); definitions.len()];
    let mut train_rows = BTreeMap::new();
    let mut positives = BTreeMap::new();
    let mut validation = Vec::new();
    for kind in CandidateKind::ALL {
        let used = match kind {
            CandidateKind::Promotion => plan.uses_promotions,
            CandidateKind::Ad => plan.uses_ads,
        };
        let path = logs::impressions_path(&args.data, kind);
        let mut validation_rows = 0;
        for group in
            logs::open_impressions(&path).with_context(|| format!("opening {}", path.display()))?
        {
            let group = group.with_context(|| format!("reading {}", path.display()))?;
            for row in group {
                if splits.validation.contains(&row.day) {
                    if validation_rows < args.validation_rows {
                        validation_rows += 1;
                        validation.push(row);
                    }
                    continue;
                }
                if !used || !splits.train.contains(&row.day) {
                    continue;
                }
                *train_rows.entry(kind).or_insert(0u64) += 1;
                for (label_name, label) in [
                    ("stream", row.stream),
                    ("click", row.click),
                    ("like", row.like),
                    ("follow", row.follow),
                ] {
                    if label {
                        *positives.entry((kind, label_name)).or_insert(0u64) += 1;
                    }
                }
                let (request, candidate) = views(snapshot, &row);
                builder.observe_request(&provisional, &request);
                builder.observe_candidate(&provisional, &candidate);
                for (index, spec) in provisional.iter().enumerate() {
                    let value = match spec.scope {
                        features::Scope::Request => features::request_value(spec.source, &request),
                        features::Scope::Candidate => {
                            features::candidate_value(spec.source, &candidate)
                        }
                    };
                    if let Some(value) = transformed_numeric(&definitions[index], value) {
                        stats[index].push(value);
                    }
                }
            }
        }
    }
    for (kind, used) in [
        (CandidateKind::Promotion, plan.uses_promotions),
        (CandidateKind::Ad, plan.uses_ads),
    ] {
        if used && train_rows.get(&kind).copied().unwrap_or(0) == 0 {
            bail!(
                "{}: no {} impressions in the training days {:?}",
                logs::impressions_path(&args.data, kind).display(),
                kind.as_str(),
                splits.train
            );
        }
    }
    ensure!(
        !validation.is_empty(),
        "no impressions in the validation days {:?}",
        splits.validation
    );
    for (definition, stat) in definitions.iter_mut().zip(&stats) {
        if let Transform::Numeric {
            mean, std, default, ..
        } = &mut definition.transform
        {
            *mean = stat.mean as f32;
            *std = stat.std() as f32;
            // A missing value lands on the mean: 0 after normalization.
            *default = 0.0;
        }
    }
    let specs = features::lay_out(&definitions);
    let mut vocabularies = builder.build(args.min_count);
    for name in specs.iter().filter_map(|spec| match &spec.transform {
        Transform::Id { vocab } | Transform::IdBag { vocab, .. } => Some(vocab.clone()),
        _ => None,
    }) {
        vocabularies
            .entry(name)
            .or_insert_with(|| Vocabulary::from_tokens(Vec::new()));
    }
    // Numeric defaults are raw values in the manifest; the mean of the log1p'd value maps
    // back through expm1 so that a missing numeric normalizes to 0.
    let specs = specs
        .into_iter()
        .map(|mut spec| {
            if let Transform::Numeric {
                log1p,
                mean,
                default,
                ..
            } = &mut spec.transform
            {
                *default = if *log1p { mean.exp_m1() } else { *mean };
            }
            spec
        })
        .collect();
    Ok(DataPass {
        specs,
        vocabularies,
        train_rows,
        positives,
        validation,
    })
}

/// A batch ready for the network: assembled inputs, labels and loss mask per head.
struct PreparedBatch {
    request: ScopeTensors,
    candidates: ScopeTensors,
    labels: Vec<f32>,
    mask: Vec<f32>,
}

struct BatchContext<'a> {
    assembler: &'a Assembler<'a>,
    snapshot: &'a Snapshot,
    plan: &'a Plan,
    mask: MaskMode,
    id_dropout: f64,
}

impl BatchContext<'_> {
    fn prepare(&self, rows: &[Impression], rng: &mut ChaCha8Rng) -> Result<PreparedBatch> {
        let (request_views, candidate_views): (Vec<_>, Vec<_>) =
            rows.iter().map(|row| views(self.snapshot, row)).unzip();
        let request = self.assembler.request(&request_views)?;
        let mut candidates = self.assembler.candidates(&candidate_views)?;
        if self.id_dropout > 0.0 {
            for spec in self.assembler.specs() {
                if spec.kind == Kind::Id && ID_DROPOUT_FEATURES.contains(&spec.name.as_str()) {
                    let width = candidates.widths.ids;
                    for row in 0..candidates.rows {
                        if rng.random::<f64>() < self.id_dropout {
                            candidates.ids[row * width + spec.slot] = 0;
                        }
                    }
                }
            }
        }
        let heads = &self.plan.heads;
        let mut labels = Vec::with_capacity(rows.len() * heads.len());
        let mut mask = Vec::with_capacity(rows.len() * heads.len());
        for row in rows {
            for head in heads {
                labels.push(if head.label.of(row) { 1.0 } else { 0.0 });
                mask.push(mask_weight(self.mask, row.kind, head.name));
            }
        }
        Ok(PreparedBatch {
            request,
            candidates,
            labels,
            mask,
        })
    }
}

/// Steps until the first source used has been drawn once in full, given each source's
/// share of a batch.
fn epoch_steps(
    train_rows: &BTreeMap<CandidateKind, u64>,
    plan: &Plan,
    promo_share: f64,
    batch_size: usize,
) -> usize {
    let share = |kind| match (kind, plan.uses_promotions && plan.uses_ads) {
        (_, false) => 1.0,
        (CandidateKind::Promotion, true) => promo_share,
        (CandidateKind::Ad, true) => 1.0 - promo_share,
    };
    train_rows
        .iter()
        .filter(|(_, rows)| **rows > 0)
        .map(|(kind, rows)| (*rows as f64 / (share(*kind) * batch_size as f64)).ceil() as usize)
        .min()
        .unwrap_or(1)
        .max(1)
}

/// Validation rows assembled once, in chunks, with what evaluation needs per row.
struct ValidationSet {
    chunks: Vec<(ScopeTensors, ScopeTensors)>,
    rows: Vec<Impression>,
}

const VALIDATION_CHUNK: usize = 8192;

fn assemble_validation(
    assembler: &Assembler<'_>,
    snapshot: &Snapshot,
    rows: Vec<Impression>,
) -> Result<ValidationSet> {
    let mut chunks = Vec::new();
    for chunk in rows.chunks(VALIDATION_CHUNK) {
        let (request_views, candidate_views): (Vec<_>, Vec<_>) =
            chunk.iter().map(|row| views(snapshot, row)).unzip();
        chunks.push((
            assembler.request(&request_views)?,
            assembler.candidates(&candidate_views)?,
        ));
    }
    Ok(ValidationSet { chunks, rows })
}

/// Logits of every validation row, `[rows, heads]` row-major, as served (running stats).
fn predict(network: &mut Network, validation: &ValidationSet) -> Result<Vec<f32>> {
    let mut logits = Vec::with_capacity(validation.rows.len() * network.heads.len());
    for (request, candidates) in &validation.chunks {
        let output = network.forward(request, candidates, false)?;
        logits.extend(output.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(logits)
}

/// Validation AP of each stream head on the rows of the kinds it serves, for the sources
/// the variant trains on; their mean drives early stopping.
fn stream_ap(
    plan: &Plan,
    heads: usize,
    logits: &[f32],
    rows: &[Impression],
) -> BTreeMap<String, f64> {
    let mut result = BTreeMap::new();
    for kind in CandidateKind::ALL {
        let used = match kind {
            CandidateKind::Promotion => plan.uses_promotions,
            CandidateKind::Ad => plan.uses_ads,
        };
        let Some(head_index) = plan
            .heads
            .iter()
            .position(|h| h.field == ResponseField::Stream && h.kinds.contains(&kind))
        else {
            continue;
        };
        if !used {
            continue;
        }
        let (scores, labels): (Vec<f64>, Vec<bool>) = rows
            .iter()
            .enumerate()
            .filter(|(_, row)| row.kind == kind)
            .map(|(index, row)| (f64::from(logits[index * heads + head_index]), row.stream))
            .unzip();
        if let Some(ap) = quality::average_precision(&scores, &labels) {
            result.insert(format!("{}_ap", kind.as_str()), ap);
        }
    }
    result
}

#[derive(Serialize)]
struct EpochRecord {
    epoch: usize,
    steps: usize,
    learning_rate: f64,
    train_loss: f64,
    validation: BTreeMap<String, f64>,
    validation_score: f64,
    seconds: f64,
    rows_per_second: f64,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    args.validate()?;
    if args.out.exists() {
        bail!(
            "{}: already exists; refusing to overwrite a bundle",
            args.out.display()
        );
    }
    let started = Instant::now();
    let plan = Plan::of(args.variant);
    let snapshot = logs::read_snapshot(&args.data)
        .with_context(|| format!("reading the snapshot in {}", args.data.display()))?;
    let days = count_days(&args.data)?;
    let splits = split_days(days);
    let pass = scan(args, &plan, &snapshot, &splits)?;
    let head_names: Vec<String> = plan.heads.iter().map(|h| h.name.to_string()).collect();
    let architecture = Architecture {
        embedding_dim: args.embedding_dim,
        encoder: args.encoder.clone(),
        tower: args.tower.clone(),
    };
    let assembler = Assembler::new(&pass.specs, &pass.vocabularies)?;
    let mut network = Network::new(
        &architecture,
        &pass.specs,
        &pass.vocabularies,
        &head_names,
        args.seed,
    )?;
    let validation = assemble_validation(&assembler, &snapshot, pass.validation)?;

    let steps_per_epoch = if args.steps_per_epoch > 0 {
        args.steps_per_epoch
    } else {
        epoch_steps(&pass.train_rows, &plan, args.promo_share, args.batch_size)
    };
    let context = BatchContext {
        assembler: &assembler,
        snapshot: &snapshot,
        plan: &plan,
        mask: args.mask,
        id_dropout: args.id_dropout,
    };
    let stream = |kind: CandidateKind, used: bool| {
        used.then(|| {
            SourceStream::new(
                logs::impressions_path(&args.data, kind),
                splits.train.clone(),
                args.shuffle_buffer,
            )
        })
    };
    let mut sampler = BalancedSampler::new(
        stream(CandidateKind::Promotion, plan.uses_promotions),
        stream(CandidateKind::Ad, plan.uses_ads),
        args.promo_share,
        args.batch_size,
        ChaCha8Rng::seed_from_u64(args.seed.wrapping_add(1)),
    );
    let mut log_file = match &args.log {
        Some(path) => Some(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => None,
    };

    let mut optimizer = Adam::new(args.learning_rate);
    let progress = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new((steps_per_epoch * args.max_epochs) as u64)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut best: Option<(f64, usize, network::NetworkState)> = None;
    let mut history = Vec::new();
    let mut epochs_without_gain = 0;
    let mut dropout_rng = ChaCha8Rng::seed_from_u64(args.seed.wrapping_add(2));
    let train_started = Instant::now();
    let mut total_steps = 0usize;
    for epoch in 0..args.max_epochs {
        let epoch_started = Instant::now();
        let mut loss_sum = 0.0;
        // Batches are prepared on a second thread while candle trains on the first.
        std::thread::scope(|scope| -> Result<()> {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<PreparedBatch>>(3);
            let sampler = &mut sampler;
            let context = &context;
            let dropout_rng = &mut dropout_rng;
            scope.spawn(move || {
                for _ in 0..steps_per_epoch {
                    let batch = sampler
                        .next_batch()
                        .and_then(|rows| context.prepare(&rows, dropout_rng));
                    let failed = batch.is_err();
                    if sender.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
            for step in 0..steps_per_epoch {
                let batch = receiver.recv().context("batch producer stopped")??;
                let rows = batch.request.rows;
                let heads = head_names.len();
                let labels = Tensor::from_vec(batch.labels, (rows, heads), network.device())?;
                let mask = Tensor::from_vec(batch.mask, (rows, heads), network.device())?;
                let loss = network.train_step(
                    &mut optimizer,
                    &batch.request,
                    &batch.candidates,
                    &labels,
                    &mask,
                )?;
                let loss_value = f64::from(loss);
                ensure!(
                    loss_value.is_finite(),
                    "training diverged: loss is {loss_value} at epoch {epoch} step {step}"
                );
                loss_sum += loss_value;
                progress.inc(1);
                if step % 20 == 0 {
                    progress.set_message(format!(
                        "epoch {} loss {:.4}",
                        epoch + 1,
                        loss_sum / (step + 1) as f64
                    ));
                }
            }
            Ok(())
        })?;
        total_steps += steps_per_epoch;
        let logits = predict(&mut network, &validation)?;
        let metrics = stream_ap(&plan, head_names.len(), &logits, &validation.rows);
        let score = if metrics.is_empty() {
            0.0
        } else {
            metrics.values().sum::<f64>() / metrics.len() as f64
        };
        let seconds = epoch_started.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: epoch + 1,
            steps: steps_per_epoch,
            learning_rate: optimizer.learning_rate(),
            train_loss: loss_sum / steps_per_epoch as f64,
            validation: metrics,
            validation_score: score,
            seconds,
            rows_per_second: (steps_per_epoch * args.batch_size) as f64 / seconds,
        };
        progress.println(format!(
            "epoch {}: loss {:.4}, validation stream AP {:.4} ({:.0} rows/s)",
            record.epoch, record.train_loss, score, record.rows_per_second
        ));
        if let Some(file) = log_file.as_mut() {
            use std::io::Write;
            writeln!(file, "{}", serde_json::to_string(&record)?)?;
        }
        history.push(record);
        if best
            .as_ref()
            .is_none_or(|(best_score, _, _)| score > *best_score)
        {
            best = Some((score, epoch + 1, network.snapshot()?));
            epochs_without_gain = 0;
        } else {
            epochs_without_gain += 1;
            if epochs_without_gain > args.patience {
                break;
            }
        }
        optimizer.set_learning_rate(optimizer.learning_rate() * args.learning_rate_decay);
    }
    progress.finish_and_clear();
    let train_seconds = train_started.elapsed().as_secs_f64();
    let (best_score, best_epoch, best_state) = best.context("no epoch ran")?;
    network.restore(&best_state)?;

    // Calibration on natural-distribution validation rows of the kinds each head serves.
    let logits = predict(&mut network, &validation)?;
    let heads = head_names.len();
    let mut head_specs = Vec::with_capacity(heads);
    let mut calibration_report = BTreeMap::new();
    for (index, head) in plan.heads.iter().enumerate() {
        let (head_logits, labels): (Vec<f32>, Vec<bool>) = validation
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| head.kinds.contains(&row.kind))
            .map(|(row_index, row)| (logits[row_index * heads + index], head.label.of(row)))
            .unzip();
        let calibration = quality::fit_platt(&head_logits, &labels);
        let observed = labels.iter().filter(|l| **l).count() as f64 / labels.len().max(1) as f64;
        let predicted = head_logits
            .iter()
            .map(|z| calibration.probability(*z))
            .sum::<f64>()
            / head_logits.len().max(1) as f64;
        calibration_report.insert(
            head.name.to_string(),
            json!({"rows": labels.len(), "observed_rate": observed, "mean_calibrated": predicted}),
        );
        head_specs.push(HeadSpec {
            name: head.name.to_string(),
            output: bundle::OUTPUT_NAME.to_string(),
            index,
            kinds: head.kinds.clone(),
            field: head.field,
            calibration,
        });
    }
    let final_metrics = stream_ap(&plan, heads, &logits, &validation.rows);

    let name = args.name.clone().unwrap_or_else(|| {
        args.out
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "podscore".into())
    });
    let version = args
        .out
        .file_name()
        .and_then(|n| n.to_string_lossy().parse::<u32>().ok())
        .unwrap_or(1);
    let base_rates: BTreeMap<String, f64> = pass
        .positives
        .iter()
        .map(|((kind, label), count)| {
            (
                format!("{}_{label}", kind.as_str()),
                *count as f64 / pass.train_rows.get(kind).copied().unwrap_or(1).max(1) as f64,
            )
        })
        .collect();
    let mut manifest = Manifest {
        name,
        version,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        settings: serde_json::to_value(args)?,
        data_summary: json!({
            "data": args.data.display().to_string(),
            "splits": splits,
            "train_rows": pass.train_rows.iter().map(|(k, v)| (k.as_str(), *v)).collect::<BTreeMap<_, _>>(),
            "validation_rows": validation.rows.len(),
            "train_base_rates": base_rates,
            "vocabulary_sizes": pass.vocabularies.iter().map(|(k, v)| (k.clone(), v.len())).collect::<BTreeMap<_, _>>(),
        }),
        metrics: json!({
            "best_epoch": best_epoch,
            "best_validation_score": best_score,
            "validation": final_metrics,
            "calibration": calibration_report,
            "history": history,
            "train_seconds": train_seconds,
            "total_seconds": started.elapsed().as_secs_f64(),
            "steps": total_steps,
            "parameters": network.parameter_count(),
        }),
        architecture,
        features: pass.specs.clone(),
        heads: head_specs,
        golden: Vec::new(),
    };
    manifest.golden = golden_cases(
        &mut network,
        &manifest,
        &assembler,
        &snapshot,
        &validation.rows,
    )?;
    let weights = network.export_weights()?;
    let onnx = crate::onnx::export(&manifest, &weights)?;
    // Prove the export before anything is written: the graph loads in tract and scores
    // the golden cases (computed by candle) as the server will, within tolerance.
    crate::scoring::Model::load(
        Bundle {
            dir: args.out.clone(),
            manifest: manifest.clone(),
            vocabularies: pass.vocabularies.clone(),
            onnx: onnx.clone(),
        },
        &crate::runtime::RuntimeConfig::default(),
    )
    .context("the exported bundle fails its own golden check in tract")?;
    Bundle::write(&args.out, &manifest, &pass.vocabularies, &onnx)?;
    if let Some(file) = log_file.as_mut() {
        use std::io::Write;
        writeln!(
            file,
            "{}",
            json!({"done": true, "bundle": args.out.display().to_string(), "best_epoch": best_epoch, "validation": manifest.metrics["validation"], "train_seconds": train_seconds})
        )?;
    }
    eprintln!(
        "wrote {} (best epoch {best_epoch}, validation stream AP {best_score:.4}, {train_seconds:.0}s training)",
        args.out.display()
    );
    Ok(())
}

/// Golden cases: a few fully inline requests built from validation rows, including an
/// unknown user, an unseen show and empty bags, with the calibrated scores the trained
/// network gives them. Every load of the bundle re-scores them through the served path.
fn golden_cases(
    network: &mut Network,
    manifest: &Manifest,
    assembler: &Assembler<'_>,
    snapshot: &Snapshot,
    rows: &[Impression],
) -> Result<Vec<GoldenCase>> {
    let promotion = rows.iter().find(|row| row.kind == CandidateKind::Promotion);
    let ad = rows.iter().find(|row| row.kind == CandidateKind::Ad);
    let mut cases = Vec::new();
    let unseen_creative = CreativeRecord {
        creative_id: Some("golden-new-creative".into()),
        campaign_id: Some("golden-new-campaign".into()),
        format: Some("audio".into()),
        slot: Some("midroll".into()),
        layout: None,
    };
    let first = promotion
        .or(ad)
        .context("no validation rows for golden cases")?;
    // Case 1: a known user and context with a promotion, an ad and an unseen show.
    let mut candidates: Vec<(String, CandidateView<'_>)> = Vec::new();
    for (index, row) in [promotion, ad].into_iter().flatten().enumerate() {
        let (_, view) = views(snapshot, row);
        candidates.push((format!("c{index}"), view));
    }
    candidates.push((
        "c-unseen".into(),
        CandidateView {
            kind: CandidateKind::Ad,
            show_id: Some("golden-unseen-show"),
            show: None,
            episode_id: None,
            episode: None,
            creative: &unseen_creative,
        },
    ));
    let (request_view, _) = views(snapshot, first);
    cases.push(golden_case(
        network,
        manifest,
        assembler,
        "golden-1",
        request_view,
        &candidates,
    )?);
    // Case 2: an unknown user with no attributes and no context values.
    let empty_context = ContextRecord::default();
    let unknown = RequestView {
        user: None,
        context: &empty_context,
    };
    cases.push(golden_case(
        network,
        manifest,
        assembler,
        "golden-2",
        unknown,
        &candidates[..1],
    )?);
    Ok(cases)
}

fn golden_case(
    network: &mut Network,
    manifest: &Manifest,
    assembler: &Assembler<'_>,
    request_id: &str,
    request: RequestView<'_>,
    candidates: &[(String, CandidateView<'_>)],
) -> Result<GoldenCase> {
    let views: Vec<CandidateView<'_>> = candidates.iter().map(|(_, view)| *view).collect();
    let request_tensors = assembler.request(&[request])?;
    let candidate_tensors = assembler.candidates(&views)?;
    // The network broadcasts a one-row request over the candidates, as the graph does.
    let logits = network.forward(&request_tensors, &candidate_tensors, false)?;
    let logits = logits.flatten_all()?.to_vec1::<f32>()?;
    let heads = manifest.heads.len();
    let mut expected = Vec::new();
    for (row, view) in views.iter().enumerate() {
        let score = |field| {
            manifest.head_for(view.kind, field).map(|head| {
                head.calibration
                    .probability(logits[row * heads + head.index])
            })
        };
        expected.push(GoldenScores {
            stream: score(ResponseField::Stream),
            click: score(ResponseField::Click),
            like: score(ResponseField::Like),
            follow: score(ResponseField::Follow),
        });
    }
    let user = match request.user {
        Some(user) => serde_json::to_value(user)?,
        None => json!({"id": "golden-unknown-user"}),
    };
    let mut context = serde_json::Map::new();
    if let Some(timestamp) = request.context.timestamp {
        let time =
            chrono::DateTime::from_timestamp(timestamp, 0).context("timestamp out of range")?;
        context.insert(
            "timestamp".into(),
            json!(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
    }
    if let Some(surface) = &request.context.surface {
        context.insert("surface".into(), json!(surface));
    }
    if let Some(length) = request.context.session_length_s {
        context.insert("session_length_s".into(), json!(length));
    }
    let candidates_json: Vec<serde_json::Value> = candidates
        .iter()
        .map(|(id, view)| {
            let mut candidate =
                json!({"id": id, "kind": view.kind.as_str(), "creative": view.creative});
            if let Some(show_id) = view.show_id {
                candidate["show_id"] = json!(show_id);
            }
            if let Some(episode_id) = view.episode_id {
                candidate["episode_id"] = json!(episode_id);
            }
            if let Some(show) = view.show {
                candidate["show"] = json!(show);
            }
            if let Some(episode) = view.episode {
                candidate["episode"] = json!(episode);
            }
            candidate
        })
        .collect();
    Ok(GoldenCase {
        request: json!({"request_id": request_id, "user": user, "context": context, "candidates": candidates_json}),
        expected,
    })
}
