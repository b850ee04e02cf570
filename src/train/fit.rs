//! Phase 2 of training: the training loop. Source-balanced batches are sampled, assembled
//! with the shared feature module and id dropout on a producer thread while candle trains
//! on this one.
//!
//! The protocol, the same for every variant: an epoch is one pass over the smaller
//! source used; the network is validated `--validations-per-epoch` times per epoch; a
//! validation point is eligible as the checkpoint from the end of the first epoch on;
//! among eligible points the best by the mean over stream heads of AP relative to the
//! base rate (AP lift: a random ranking scores 1 on every kind, so a head serving rare ad
//! streams weighs as much as one serving promotions) is kept, and training stops when
//! `--patience` eligible points in a row have not beaten it, or at `--max-epochs`. The
//! learning rate decays once per epoch. One checkpoint serves every head: the heads share
//! the encoder, so a head cannot be taken from another point than its encoder.
//!
//! Embedding rows that no step had updated by the checkpoint (tokens of the larger source
//! not drawn yet, or ones whose every occurrence id dropout removed) take the unknown
//! row's values ([`Network::fall_back_untrained_rows`]), so that they serve the cold-start
//! path rather than their random initialization. Until 2026-12-02 a point was eligible
//! only once every source had been drawn in full; for the joint model, whose larger
//! source (promotions) takes four passes of the ads to draw at share 0.5, that forced the
//! checkpoint past its ad head's best point (README, "What the protocol costs the joint
//! model"), and the fallback already keeps undrawn rows off their initialization.
//!
//! The steps between two validation points ([`run_steps`]) and early stopping ([`Best`])
//! are every training command's: `podscore finetune` runs its epochs through them too.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::entities::CandidateKind;
use crate::features::{Assembler, Kind, ScopeTensors};
use crate::logs::{self, Impression, Snapshot};

use super::adam::Adam;
use super::network::{Network, NetworkState};
use super::sampler::{BalancedSampler, SourceStream};
use super::scan::Scanned;
use super::validation::{self, ValidationSet};
use super::{ID_DROPOUT_FEATURES, MaskMode, Plan, Run, TrainLog, mask_weight};

/// The trained network at its chosen checkpoint, and how it got there.
pub struct Fitted {
    pub network: Network,
    pub history: Vec<ValidationRecord>,
    /// 1-based index of the chosen validation point, and its epoch (passes of the
    /// smaller source) and score.
    pub best_validation: usize,
    pub best_epoch: f64,
    pub best_score: f64,
    /// Per stream AP key (`promotion_ap`, `ad_ap`): the validation point at which that
    /// head alone was best, for the record.
    pub best_per_head: BTreeMap<String, usize>,
    /// Why training ended: `patience` or `max_epochs` (the cap).
    pub stopped_by: &'static str,
    /// Whether every source used had been drawn in full by the checkpoint (for the
    /// record: see the module).
    pub warmed_up: bool,
    /// Per embedding table: rows no step had updated by the checkpoint, which were given
    /// the unknown row's values (none after a full pass of every source, but for tokens
    /// whose every occurrence id dropout removed).
    pub untrained_rows: BTreeMap<String, usize>,
    pub seconds: f64,
    pub steps: usize,
}

/// One line of the training log: one validation point.
#[derive(Serialize)]
pub struct ValidationRecord {
    pub validation: usize,
    /// Passes of the smaller source so far.
    pub epoch: f64,
    pub steps: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    /// Stream AP per kind the variant trains on, and its lift over the base rate.
    pub metrics: BTreeMap<String, f64>,
    pub score: f64,
    /// Full passes over each source (promotions, ads) drawn so far.
    pub full_passes: (Option<usize>, Option<usize>),
    pub eligible: bool,
    pub seconds: f64,
    pub rows_per_second: f64,
}

impl ValidationRecord {
    /// Whether every source used had been drawn in full by this point.
    fn full_passes_all(&self) -> bool {
        let (promotions, ads) = self.full_passes;
        promotions.is_none_or(|passes| passes >= 1) && ads.is_none_or(|passes| passes >= 1)
    }
}

pub fn fit(
    run: &Run<'_>,
    scanned: &Scanned,
    assembler: &Assembler,
    validation: &ValidationSet,
    log: &mut TrainLog,
) -> Result<Fitted> {
    let args = run.args;
    let mut trainer = Trainer::new(run, scanned, assembler)?;
    let per_epoch = args.validations_per_epoch;
    let interval = trainer.steps_per_epoch.div_ceil(per_epoch).max(1);
    let base_rates = validation::base_rates(&run.plan, &validation.rows);
    let mut best = Best::default();
    let mut fallback = Best::default();
    let mut best_per_head: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut history = Vec::new();
    let mut stopped_by = "max_epochs";
    let started = Instant::now();
    let mut steps = 0;
    for point in 1..=args.max_epochs * per_epoch {
        let interval_started = Instant::now();
        let loss = trainer.train(interval, point)?;
        steps += interval;
        let logits = validation.predict(&mut trainer.network)?;
        let mut metrics =
            validation::stream_ap(&run.plan, run.plan.heads.len(), &logits, &validation.rows);
        let score = validation::lift_score(&mut metrics, &base_rates);
        let eligible = steps >= trainer.steps_per_epoch;
        let seconds = interval_started.elapsed().as_secs_f64();
        let record = ValidationRecord {
            validation: point,
            epoch: steps as f64 / trainer.steps_per_epoch as f64,
            steps,
            learning_rate: trainer.optimizer.learning_rate(),
            train_loss: loss,
            score,
            full_passes: trainer.sampler.full_passes(),
            eligible,
            seconds,
            rows_per_second: (interval * args.batch_size) as f64 / seconds,
            metrics,
        };
        trainer.progress.println(format!(
            "epoch {:.2}: loss {:.4}, validation AP lift {:.3}{} ({:.0} rows/s)",
            record.epoch,
            record.train_loss,
            score,
            if eligible { "" } else { " (first epoch)" },
            record.rows_per_second
        ));
        log.write(&record)?;
        for (key, value) in record.metrics.iter().filter(|(k, _)| k.ends_with("_ap")) {
            let entry = best_per_head
                .entry(key.clone())
                .or_insert((f64::MIN, point));
            if *value > entry.0 {
                *entry = (*value, point);
            }
        }
        history.push(record);
        if eligible {
            if !best.observe(score, point, &trainer.network, args.patience)? {
                stopped_by = "patience";
                break;
            }
        } else {
            // Kept only in case the cap comes before the first epoch ends.
            fallback.observe(score, point, &trainer.network, usize::MAX)?;
        }
        if point % per_epoch == 0 {
            let decayed = trainer.optimizer.learning_rate() * args.learning_rate_decay;
            trainer.optimizer.set_learning_rate(decayed);
        }
    }
    trainer.progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let (best_score, best_validation, best_state) = best
        .state
        .or(fallback.state)
        .context("no validation point ran")?;
    let best_epoch = (best_validation * interval) as f64 / trainer.steps_per_epoch as f64;
    let warmed_up = history[best_validation - 1].full_passes_all();
    let mut network = trainer.network;
    network.restore(&best_state)?;
    let untrained_rows = network.fall_back_untrained_rows();
    Ok(Fitted {
        untrained_rows,
        network,
        steps,
        history,
        best_validation,
        best_epoch,
        best_score,
        best_per_head: best_per_head
            .into_iter()
            .map(|(key, (_, point))| (key, point))
            .collect(),
        stopped_by,
        warmed_up,
        seconds,
    })
}

/// Everything training moves: the network and its optimizer, the sampler and the batch
/// preparation that feed it, and the progress bar.
struct Trainer<'a> {
    network: Network,
    optimizer: Adam,
    sampler: BalancedSampler,
    batches: BatchContext<'a>,
    /// Id dropout's own stream, so that dropout does not shift the sampler's draws.
    dropout_rng: ChaCha8Rng,
    steps_per_epoch: usize,
    progress: indicatif::ProgressBar,
}

impl<'a> Trainer<'a> {
    fn new(run: &'a Run<'_>, scanned: &Scanned, assembler: &'a Assembler) -> Result<Trainer<'a>> {
        let args = run.args;
        let mut network = Network::new(
            &run.architecture(),
            &scanned.specs,
            &scanned.vocabularies,
            &run.plan.head_names(),
            args.seed,
        )?;
        network.set_embedding_l2(args.embedding_l2 as f32);
        let steps_per_epoch = if args.steps_per_epoch > 0 {
            args.steps_per_epoch
        } else {
            epoch_steps(
                &scanned.counts.train_rows,
                &run.plan,
                args.promo_share,
                args.batch_size,
            )
        };
        let stream = |kind: CandidateKind| {
            run.plan.uses(kind).then(|| {
                SourceStream::new(
                    logs::impressions_path(&args.data, kind),
                    run.splits.train.clone(),
                    args.shuffle_buffer,
                )
            })
        };
        Ok(Trainer {
            network,
            optimizer: Adam::new(args.learning_rate),
            sampler: BalancedSampler::new(
                stream(CandidateKind::Promotion),
                stream(CandidateKind::Ad),
                args.promo_share,
                args.batch_size,
                ChaCha8Rng::seed_from_u64(args.seed.wrapping_add(1)),
            ),
            batches: BatchContext {
                assembler,
                snapshot: &run.snapshot,
                plan: &run.plan,
                mask: args.mask,
                id_dropout: args.id_dropout,
            },
            dropout_rng: ChaCha8Rng::seed_from_u64(args.seed.wrapping_add(2)),
            steps_per_epoch,
            progress: progress_bar(args.quiet, steps_per_epoch * args.max_epochs),
        })
    }

    /// `steps` training steps up to validation point `point`; returns the mean training
    /// loss.
    fn train(&mut self, steps: usize, point: usize) -> Result<f64> {
        let Trainer {
            network,
            optimizer,
            sampler,
            batches,
            dropout_rng,
            progress,
            ..
        } = self;
        let batches = &*batches;
        run_steps(
            network,
            optimizer,
            (point, steps),
            || {
                sampler
                    .next_batch()
                    .and_then(|rows| batches.prepare(&rows, dropout_rng))
            },
            progress,
        )
    }
}

/// The `steps` optimizer steps up to validation point `point` (`(point, steps)`, the
/// point counting from 1 and only naming messages); returns the mean training loss.
/// `produce` prepares the batches on a second thread while candle trains on this one.
pub fn run_steps(
    network: &mut Network,
    optimizer: &mut Adam,
    (point, steps): (usize, usize),
    mut produce: impl FnMut() -> Result<PreparedBatch> + Send,
    progress: &indicatif::ProgressBar,
) -> Result<f64> {
    let mut loss_sum = 0.0;
    std::thread::scope(|scope| -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<PreparedBatch>>(3);
        scope.spawn(move || {
            for _ in 0..steps {
                let batch = produce();
                let failed = batch.is_err();
                if sender.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        for step in 0..steps {
            let batch = receiver.recv().context("batch producer stopped")??;
            let loss = f64::from(batch.train(network, optimizer)?);
            ensure!(
                loss.is_finite(),
                "training diverged: loss is {loss} before validation point {point}, step {step}"
            );
            loss_sum += loss;
            progress.inc(1);
            if step % 20 == 0 {
                progress.set_message(format!(
                    "validation point {point} loss {:.4}",
                    loss_sum / (step + 1) as f64
                ));
            }
        }
        Ok(())
    })?;
    Ok(loss_sum / steps.max(1) as f64)
}

/// Early stopping: the best validation point so far (score, 1-based point, weights) and
/// the points since. Higher scores are better.
#[derive(Default)]
pub struct Best {
    pub state: Option<(f64, usize, NetworkState)>,
    points_without_gain: usize,
}

impl Best {
    /// Records a point's score; `false` once `patience` points in a row have not beaten
    /// the best.
    pub fn observe(
        &mut self,
        score: f64,
        point: usize,
        network: &Network,
        patience: usize,
    ) -> Result<bool> {
        if self.state.as_ref().is_none_or(|(best, ..)| score > *best) {
            self.state = Some((score, point, network.snapshot()?));
            self.points_without_gain = 0;
        } else {
            self.points_without_gain += 1;
            if self.points_without_gain >= patience {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

pub fn progress_bar(quiet: bool, steps: usize) -> indicatif::ProgressBar {
    let progress = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(steps as u64)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress
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

/// A batch ready for the network: assembled inputs, labels and loss mask per head
/// (`[rows, heads]`, row-major).
pub struct PreparedBatch {
    pub request: ScopeTensors,
    pub candidates: ScopeTensors,
    pub labels: Vec<f32>,
    pub mask: Vec<f32>,
}

impl PreparedBatch {
    /// One optimizer step on this batch; returns its loss.
    fn train(self, network: &mut Network, optimizer: &mut Adam) -> Result<f32> {
        let rows = self.request.rows;
        let heads = network.heads.len();
        let labels = Tensor::from_vec(self.labels, (rows, heads), network.device())?;
        let mask = Tensor::from_vec(self.mask, (rows, heads), network.device())?;
        Ok(network.train_step(optimizer, &self.request, &self.candidates, &labels, &mask)?)
    }
}

struct BatchContext<'a> {
    assembler: &'a Assembler,
    snapshot: &'a Snapshot,
    plan: &'a Plan,
    mask: MaskMode,
    id_dropout: f64,
}

impl BatchContext<'_> {
    fn prepare(&self, rows: &[Impression], rng: &mut ChaCha8Rng) -> Result<PreparedBatch> {
        let (request_views, candidate_views): (Vec<_>, Vec<_>) = rows
            .iter()
            .map(|row| crate::dataset::views(self.snapshot, row))
            .unzip();
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
