//! Phase 4 of training: the bundle. The manifest records settings, data, metrics, the
//! feature spec and the calibrated heads; golden cases are `/score` requests built from
//! validation rows and serialized from the wire type, with the scores candle gives them;
//! the graph is exported and proven in tract (it must score the golden cases as candle
//! did) before anything is written.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::bundle::{Bundle, FieldScores, GoldenCase, Heads, Manifest};
use crate::dataset;
use crate::entities::UserRecord;
use crate::entities::{CandidateKind, CandidateView, ContextRecord, CreativeRecord, RequestView};
use crate::features::{Assembler, Vocabularies};
use crate::logs::{Impression, Snapshot};
use crate::runtime::RuntimeConfig;
use crate::service::Model;
use crate::service::request::{CandidateInput, ContextInput, ScoreRequest};

use super::Run;
use super::calibrate::Calibrated;
use super::fit::Fitted;
use super::network::Network;
use super::scan::Scanned;

/// Everything the trained model became, ready to write.
pub struct Package {
    pub manifest: Manifest,
    pub onnx: Vec<u8>,
    /// The training state (`weights.safetensors`), to continue training from.
    pub weights: Vec<u8>,
}

/// The manifest, golden cases and exported graph of a trained network, proven in tract.
pub fn package(
    run: &Run<'_>,
    scanned: &Scanned,
    assembler: &Assembler,
    validation_rows: &[Impression],
    mut fitted: Fitted,
    calibrated: Calibrated,
) -> Result<Package> {
    let manifest = manifest(run, scanned, validation_rows.len(), &fitted, calibrated)?;
    finish(
        manifest,
        &mut fitted.network,
        &Sources {
            assembler,
            vocabularies: &scanned.vocabularies,
            snapshot: &run.snapshot,
            rows: validation_rows,
        },
        &run.args.out,
    )
}

/// What the golden cases are built from: the feature assembly and vocabularies of the
/// bundle, and logged impressions whose entities become fully inline requests.
pub struct Sources<'a> {
    pub assembler: &'a Assembler,
    pub vocabularies: &'a Vocabularies,
    pub snapshot: &'a Snapshot,
    pub rows: &'a [Impression],
}

/// Every bundle a training command writes ends here: golden cases scored by `network`
/// under `manifest`'s heads, the graph exported and proven in tract (it must score the
/// golden cases as candle did), and the training state to continue from. `dir` is where
/// the bundle will be written (the proof names it in errors).
pub fn finish(
    mut manifest: Manifest,
    network: &mut Network,
    sources: &Sources<'_>,
    dir: &Path,
) -> Result<Package> {
    manifest.golden = golden_cases(
        network,
        &manifest,
        sources.assembler,
        sources.snapshot,
        sources.rows,
    )?;
    let weights = network.export_weights()?;
    let onnx = crate::onnx::export(&manifest, &weights)?;
    // Prove the export before anything is written: the graph loads in tract and scores
    // the golden cases (computed by candle) as the server will, within tolerance.
    Model::load(
        Bundle {
            dir: dir.to_path_buf(),
            manifest: manifest.clone(),
            vocabularies: sources.vocabularies.clone(),
            onnx: onnx.clone(),
        },
        &RuntimeConfig::default(),
    )
    .context("the exported bundle fails its own golden check in tract")?;
    let weights = network
        .to_safetensors()
        .context("serializing the training weights")?;
    Ok(Package {
        manifest,
        onnx,
        weights,
    })
}

/// The manifest's name and version of a bundle written to `out`: `name` when given, else
/// the name of `out`'s parent (`models/<name>/<version>`); the version is `out`'s own
/// name when it is a number, else 1.
pub fn name_and_version(out: &Path, name: Option<&str>) -> (String, u32) {
    let name = name.map(str::to_string).unwrap_or_else(|| {
        out.parent()
            .and_then(|parent| parent.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "podscore".into())
    });
    let version = out
        .file_name()
        .and_then(|version| version.to_string_lossy().parse::<u32>().ok())
        .unwrap_or(1);
    (name, version)
}

fn manifest(
    run: &Run<'_>,
    scanned: &Scanned,
    validation_rows: usize,
    fitted: &Fitted,
    calibrated: Calibrated,
) -> Result<Manifest> {
    let args = run.args;
    let (name, version) = name_and_version(&args.out, args.name.as_deref());
    let train_rows = &scanned.counts.train_rows;
    Ok(Manifest {
        name,
        version,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        settings: serde_json::to_value(args)?,
        data_summary: json!({
            "data": args.data.display().to_string(),
            "splits": run.splits,
            "train_rows": train_rows.iter().map(|(k, v)| (k.as_str(), *v)).collect::<BTreeMap<_, _>>(),
            "validation_rows": validation_rows,
            "train_base_rates": scanned.counts.base_rates(),
            "vocabulary_sizes": scanned.vocabularies.iter().map(|(k, v)| (k.clone(), v.len())).collect::<BTreeMap<_, _>>(),
        }),
        metrics: json!({
            "best_epoch": fitted.best_epoch,
            "best_validation": fitted.best_validation,
            "best_validation_score": fitted.best_score,
            "best_validation_per_head": fitted.best_per_head,
            "stopped_by": fitted.stopped_by,
            "warmed_up": fitted.warmed_up,
            "untrained_rows_replaced": fitted.untrained_rows,
            "validation": calibrated.validation,
            "calibration": calibrated.report,
            "history": fitted.history,
            "train_seconds": fitted.seconds,
            "total_seconds": run.started.elapsed().as_secs_f64(),
            "steps": fitted.steps,
            "parameters": fitted.network.parameter_count(),
        }),
        architecture: run.architecture(),
        features: scanned.specs.clone(),
        heads: calibrated.heads,
        golden: Vec::new(),
    })
}

/// Golden cases: a few fully inline requests built from validation rows, including an
/// unknown user, an unseen show and empty bags, with the calibrated scores the trained
/// network gives them. Every load of the bundle re-scores them through the served path.
fn golden_cases(
    network: &mut Network,
    manifest: &Manifest,
    assembler: &Assembler,
    snapshot: &Snapshot,
    rows: &[Impression],
) -> Result<Vec<GoldenCase>> {
    let heads = Heads::resolve(manifest)?;
    let promotion = rows.iter().find(|row| row.kind == CandidateKind::Promotion);
    let ad = rows.iter().find(|row| row.kind == CandidateKind::Ad);
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
        let (_, view) = dataset::views(snapshot, row);
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
    let (known, _) = dataset::views(snapshot, first);
    // Case 2: an unknown user with no attributes and no context values.
    let empty_context = ContextRecord::default();
    let unknown = RequestView {
        user: None,
        context: &empty_context,
    };
    [
        ("golden-1", known, &candidates[..]),
        ("golden-2", unknown, &candidates[..1]),
    ]
    .into_iter()
    .map(|(request_id, request, candidates)| {
        let expected = expected_scores(network, &heads, assembler, request, candidates)?;
        Ok(GoldenCase {
            request: serde_json::to_value(golden_request(request_id, request, candidates)?)?,
            expected,
        })
    })
    .collect()
}

/// What the network answers for `request` and its candidates, calibrated as served.
fn expected_scores(
    network: &mut Network,
    heads: &Heads,
    assembler: &Assembler,
    request: RequestView<'_>,
    candidates: &[(String, CandidateView<'_>)],
) -> Result<Vec<FieldScores>> {
    let views: Vec<CandidateView<'_>> = candidates.iter().map(|(_, view)| *view).collect();
    let request_tensors = assembler.request(&[request])?;
    let candidate_tensors = assembler.candidates(&views)?;
    // The network broadcasts a one-row request over the candidates, as the graph does.
    let logits = network.forward(&request_tensors, &candidate_tensors, false)?;
    let logits = logits.flatten_all()?.to_vec1::<f32>()?;
    views
        .iter()
        .zip(logits.chunks(heads.width()))
        .map(|(view, row)| {
            let mut scores = FieldScores::default();
            for field in heads.fields() {
                scores.set(field, heads.probability(view.kind, field, row)?);
            }
            Ok(scores)
        })
        .collect()
}

/// The `/score` request that carries `request` and `candidates` inline, ids included, so
/// that it scores the same with or without a feature store.
fn golden_request(
    request_id: &str,
    request: RequestView<'_>,
    candidates: &[(String, CandidateView<'_>)],
) -> Result<ScoreRequest> {
    let user = request.user.cloned().unwrap_or_else(|| UserRecord {
        id: Some("golden-unknown-user".into()),
        ..UserRecord::default()
    });
    let context = ContextInput::from_record(request.context).context("timestamp out of range")?;
    Ok(ScoreRequest {
        request_id: Some(request_id.into()),
        model: None,
        user: Some(user),
        context: Some(context),
        candidates: candidates
            .iter()
            .map(|(id, view)| CandidateInput {
                id: id.clone(),
                kind: view.kind.as_str().into(),
                show_id: view.show_id.map(str::to_string),
                episode_id: view.episode_id.map(str::to_string),
                show: view.show.cloned(),
                episode: view.episode.cloned(),
                creative: Some(view.creative.clone()),
                bid: None,
            })
            .collect(),
        order: None,
    })
}
