//! `podscore reexport`: writes a bundle again in the graph this version's exporter
//! writes, from the trained weights inside its `model.onnx`, without training.
//!
//! A bundle keeps its trained weights only inside the graph, so a change to the graph's
//! shape (a faster layout, an operator tract runs better) would otherwise need a
//! retraining. Here the weights are read back ([`onnx::read_weights`]), exported again
//! ([`onnx::export`]), the golden cases are scored on the new graph in tract, and the
//! bundle is written only if every golden probability is within
//! [`service::golden::GOLDEN_TOLERANCE`] of what the old graph answered: the same model, another
//! graph.
//!
//! This module knows bundles, the exporter and the service's models and golden checks; it knows nothing of HTTP or the
//! trainer.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::bundle::Bundle;
use crate::onnx;
use crate::runtime::RuntimeConfig;
use crate::service::Model;
use crate::service::golden::{self, GOLDEN_TOLERANCE};

#[derive(clap::Args, Debug, Clone)]
pub struct ReexportArgs {
    /// The bundle to read, e.g. models/podcast-mtl/1.
    #[arg(long, env = "PODSCORE_REEXPORT_BUNDLE")]
    pub bundle: PathBuf,
    /// The bundle directory to write; must not exist.
    #[arg(long, env = "PODSCORE_REEXPORT_OUT")]
    pub out: PathBuf,
}

/// What a re-export changed, for the command's one line of output and for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Reexported {
    pub old_bytes: usize,
    pub new_bytes: usize,
    /// Largest |new - old| over every golden probability.
    pub largest_golden_change: f64,
}

pub fn run(args: &ReexportArgs) -> anyhow::Result<()> {
    let outcome = reexport(args)?;
    println!(
        "re-exported {} into {}: model.onnx {} -> {} bytes, golden probabilities moved by at most {:.2e}",
        args.bundle.display(),
        args.out.display(),
        outcome.old_bytes,
        outcome.new_bytes,
        outcome.largest_golden_change
    );
    Ok(())
}

/// Reads `args.bundle`, exports its weights into the current graph, checks and rescored
/// its golden cases, and writes the result to `args.out`.
pub fn reexport(args: &ReexportArgs) -> anyhow::Result<Reexported> {
    let bundle = Bundle::read(&args.bundle)
        .with_context(|| format!("reading bundle {}", args.bundle.display()))?;
    if bundle.manifest.golden.is_empty() {
        bail!(
            "bundle {} has no golden cases, so a re-export could not be checked",
            args.bundle.display()
        );
    }
    let weights = onnx::read_weights(&bundle.manifest, &bundle.onnx)
        .context("reading the trained weights back from model.onnx")?;
    let graph = onnx::export(&bundle.manifest, &weights).context("exporting the weights")?;
    let model = Model::load_unchecked(
        Bundle {
            onnx: graph.clone(),
            ..bundle.clone()
        },
        &RuntimeConfig::default(),
    )
    .context("loading the re-exported graph into tract")?;
    let requests: Vec<serde_json::Value> = bundle
        .manifest
        .golden
        .iter()
        .map(|case| case.request.clone())
        .collect();
    let golden = golden::golden_cases(&model, &requests).context("scoring the golden requests")?;
    let fields = model.heads().fields();
    let mut largest = 0.0f64;
    for (case, (old, new)) in bundle.manifest.golden.iter().zip(&golden).enumerate() {
        for (candidate, (old, new)) in old.expected.iter().zip(&new.expected).enumerate() {
            for field in fields {
                match (old.get(field), new.get(field)) {
                    (Some(old), Some(new)) if (old - new).abs() <= GOLDEN_TOLERANCE => {
                        largest = largest.max((old - new).abs());
                    }
                    (None, None) => {}
                    (old, new) => bail!(
                        "golden case {case}, candidate {candidate}, {field:?}: the old graph answered {old:?}, the re-exported one {new:?}"
                    ),
                }
            }
        }
    }
    let mut manifest = bundle.manifest.clone();
    manifest.golden = golden;
    Bundle::write(&args.out, &manifest, &bundle.vocabularies, &graph)
        .with_context(|| format!("writing bundle {}", args.out.display()))?;
    Ok(Reexported {
        old_bytes: bundle.onnx.len(),
        new_bytes: graph.len(),
        largest_golden_change: largest,
    })
}
