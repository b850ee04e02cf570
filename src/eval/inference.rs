//! Scores the test set with one bundle through the serving path: the shared feature
//! assembly, the bundle's graph in the tract runtime, and the served head selection and
//! calibration ([`Heads::probability`]). One runtime call scores [`BATCH_ROWS`] test rows
//! of any requests ([`Runtime::load_row_wise`]): the logs hold about one impression per
//! request, so a call per request was a call per row, and the per-call cost (tens of
//! microseconds) made evaluation a third of `reproduce`.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::bundle::{Bundle, HeadSpec, Heads};
use crate::dataset;
use crate::entities::{CandidateView, RequestView};
use crate::features::Assembler;
use crate::runtime::{Runtime, RuntimeConfig};

use super::data::TestSet;

/// Served probabilities of every head for every test row of a kind it serves.
pub struct Scores {
    pub heads: Vec<HeadSpec>,
    /// `[rows, heads]`, row-major; column `i` is `heads[i]` (not the graph's order). NaN
    /// where the head does not serve the row's kind: the server would never answer it.
    pub probabilities: Vec<f64>,
    pub rows: usize,
    pub seconds: f64,
    pub runtime_calls: usize,
}

impl Scores {
    pub fn column(&self, head: usize) -> impl Iterator<Item = f64> + '_ {
        let heads = self.heads.len();
        (0..self.rows).map(move |row| self.probabilities[row * heads + head])
    }

    pub fn get(&self, row: usize, head: usize) -> f64 {
        self.probabilities[row * self.heads.len() + head]
    }
}

/// Test rows per runtime call: one of the runtime's buckets, large enough that the
/// per-call cost is a few percent of the call.
pub const BATCH_ROWS: usize = 512;

/// A test row's index and its logits, in the graph's column order.
type RowLogits = (usize, Vec<f32>);

/// Runs `bundle` over every test row, [`BATCH_ROWS`] rows per call, the calls spread over
/// the machine's cores: the runtime is shared, each call has its own state.
pub fn score(label: &str, bundle: &Bundle, test: &TestSet, quiet: bool) -> Result<Scores> {
    let started = Instant::now();
    let manifest = &bundle.manifest;
    let runtime = Runtime::load_row_wise(
        manifest,
        &bundle.onnx,
        &RuntimeConfig {
            buckets: vec![BATCH_ROWS],
            ..RuntimeConfig::default()
        },
    )
    .with_context(|| {
        format!(
            "bundle {label}: loading {} into tract",
            bundle.dir.display()
        )
    })?;
    let assembler = Assembler::new(&manifest.features, &bundle.vocabularies)
        .with_context(|| format!("bundle {label}: its feature spec"))?;
    let served = Heads::resolve(manifest).with_context(|| format!("bundle {label}: its heads"))?;
    let heads = manifest.heads.clone();

    let progress = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(test.rows.len() as u64)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} rows scored {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(label.to_string());

    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let indices: Vec<usize> = (0..test.rows.len()).collect();
    let batches: Vec<&[usize]> = indices.chunks(BATCH_ROWS).collect();
    let runtime_calls = batches.len();
    let per_thread = batches.len().div_ceil(threads).max(1);
    let outcomes: Vec<Result<Vec<RowLogits>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = batches
            .chunks(per_thread)
            .map(|chunk| {
                let (runtime, assembler, progress) = (&runtime, &assembler, &progress);
                scope.spawn(move || -> Result<Vec<RowLogits>> {
                    let mut out = Vec::new();
                    for batch in chunk {
                        let (requests, candidates): (Vec<RequestView<'_>>, Vec<CandidateView<'_>>) =
                            batch
                                .iter()
                                .map(|index| dataset::views(&test.snapshot, &test.rows[*index]))
                                .unzip();
                        let requests = assembler.request(&requests)?;
                        let candidates = assembler.candidates(&candidates)?;
                        let logits = runtime.infer(&requests, &candidates)?;
                        for (position, index) in batch.iter().enumerate() {
                            out.push((*index, logits.row(position).to_vec()));
                        }
                        progress.inc(batch.len() as u64);
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a scoring thread panicked")))
            })
            .collect()
    });
    progress.finish_and_clear();

    let mut probabilities = vec![f64::NAN; test.rows.len() * heads.len()];
    for outcome in outcomes {
        for (row, logits) in
            outcome.with_context(|| format!("bundle {label}: scoring the test set"))?
        {
            let kind = test.rows[row].kind;
            for (column, head) in heads.iter().enumerate() {
                if !head.kinds.contains(&kind) {
                    continue;
                }
                let probability = served
                    .probability(kind, &head.field, &logits)
                    .with_context(|| format!("bundle {label}: test row {row}"))?;
                probabilities[row * heads.len() + column] = probability.with_context(|| {
                    format!(
                        "bundle {label}: head `{}` serves no {kind:?} candidate",
                        head.name
                    )
                })?;
            }
        }
    }
    Ok(Scores {
        heads,
        probabilities,
        rows: test.rows.len(),
        seconds: started.elapsed().as_secs_f64(),
        runtime_calls,
    })
}
