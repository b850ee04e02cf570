//! Phase 2 of training: the epoch loop. Source-balanced batches are sampled, assembled
//! with the shared feature module and id dropout on a producer thread while candle trains
//! on this one; after each epoch the stream heads' validation AP decides early stopping,
//! and the best epoch's weights are restored at the end.

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

/// The trained network at its best epoch, and how it got there.
pub struct Fitted {
    pub network: Network,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_score: f64,
    pub seconds: f64,
    pub steps: usize,
}

/// One line of the training log.
#[derive(Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub validation: BTreeMap<String, f64>,
    pub validation_score: f64,
    pub seconds: f64,
    pub rows_per_second: f64,
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
    let mut best = Best::default();
    let mut history = Vec::new();
    let started = Instant::now();
    for epoch in 0..args.max_epochs {
        let epoch_started = Instant::now();
        let loss = trainer.epoch(epoch)?;
        let logits = validation.predict(&mut trainer.network)?;
        let metrics =
            validation::stream_ap(&run.plan, run.plan.heads.len(), &logits, &validation.rows);
        let score = validation::score(&metrics);
        let seconds = epoch_started.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: epoch + 1,
            steps: trainer.steps_per_epoch,
            learning_rate: trainer.optimizer.learning_rate(),
            train_loss: loss,
            validation: metrics,
            validation_score: score,
            seconds,
            rows_per_second: (trainer.steps_per_epoch * args.batch_size) as f64 / seconds,
        };
        trainer.progress.println(format!(
            "epoch {}: loss {:.4}, validation stream AP {:.4} ({:.0} rows/s)",
            record.epoch, record.train_loss, score, record.rows_per_second
        ));
        log.write(&record)?;
        history.push(record);
        if !best.observe(score, epoch + 1, &trainer.network, args.patience)? {
            break;
        }
        let decayed = trainer.optimizer.learning_rate() * args.learning_rate_decay;
        trainer.optimizer.set_learning_rate(decayed);
    }
    trainer.progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let (best_score, best_epoch, best_state) = best.state.context("no epoch ran")?;
    let mut network = trainer.network;
    network.restore(&best_state)?;
    Ok(Fitted {
        network,
        steps: trainer.steps_per_epoch * history.len(),
        history,
        best_epoch,
        best_score,
        seconds,
    })
}

/// Everything an epoch moves: the network and its optimizer, the sampler and the batch
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
        let network = Network::new(
            &run.architecture(),
            &scanned.specs,
            &scanned.vocabularies,
            &run.plan.head_names(),
            args.seed,
        )?;
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

    /// One epoch; returns the mean training loss.
    fn epoch(&mut self, epoch: usize) -> Result<f64> {
        let Trainer {
            network,
            optimizer,
            sampler,
            batches,
            dropout_rng,
            steps_per_epoch,
            progress,
        } = self;
        let batches = &*batches;
        run_epoch(
            network,
            optimizer,
            (epoch, *steps_per_epoch),
            || {
                sampler
                    .next_batch()
                    .and_then(|rows| batches.prepare(&rows, dropout_rng))
            },
            progress,
        )
    }
}

/// One epoch of `steps` optimizer steps (`(epoch, steps)`; the epoch counts from 0 and
/// only names messages); returns the mean training loss. `produce` prepares the batches
/// on a second thread while candle trains on this one. Every training command's epochs
/// run here.
pub fn run_epoch(
    network: &mut Network,
    optimizer: &mut Adam,
    (epoch, steps): (usize, usize),
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
                "training diverged: loss is {loss} at epoch {} step {step}",
                epoch + 1
            );
            loss_sum += loss;
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
    Ok(loss_sum / steps.max(1) as f64)
}

/// Early stopping: the best epoch so far (score, epoch, weights) and the epochs since.
#[derive(Default)]
pub struct Best {
    pub state: Option<(f64, usize, NetworkState)>,
    epochs_without_gain: usize,
}

impl Best {
    /// Records an epoch's score; `false` once more than `patience` epochs in a row did
    /// not beat the best.
    pub fn observe(
        &mut self,
        score: f64,
        epoch: usize,
        network: &Network,
        patience: usize,
    ) -> Result<bool> {
        if self.state.as_ref().is_none_or(|(best, _, _)| score > *best) {
            self.state = Some((score, epoch, network.snapshot()?));
            self.epochs_without_gain = 0;
        } else {
            self.epochs_without_gain += 1;
            if self.epochs_without_gain > patience {
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
