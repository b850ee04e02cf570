//! Assembly and inference, the pipeline's CPU stage: the request's inline entities are
//! laid over the store's records, assembled with the model's [`Assembler`], run in the
//! runtime, and read through the model's heads into calibrated scores.
//!
//! [`infer`] is plain CPU work, shared by the service (which runs it on a blocking thread
//! behind admission, [`on_blocking_thread`]) and the golden checks. This module knows
//! nothing of HTTP; feature and head names come from the manifest only.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bundle::{FieldScores, HeadsError};
use crate::entities::{CandidateView, EpisodeRecord, Overlay, RequestView, ShowRecord, overlay};
use crate::features::{Assembler, AssemblyError};
use crate::store::RecordMap;

use super::ServiceError;
use super::admission::Permit;
use super::lookup::Features;
use super::models::Model;
use super::request::CandidateScores;
use super::validate::{InvalidField, InvalidReason, source_path};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A value the model cannot take (a wrong-length embedding, say), from the request
    /// or the store.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("model `{name}`: {message}")]
    Model { name: String, message: String },
    /// The request's deadline passed before the model ran: the work was skipped.
    #[error("the deadline passed before inference")]
    Expired,
}

/// The scores of one request's candidates, in request order, and how long assembly and
/// inference took.
#[derive(Debug, Clone, PartialEq)]
pub struct Inferred {
    pub candidates: Vec<CandidateScores>,
    pub assembly: Duration,
    pub inference: Duration,
}

/// Runs [`infer`] on a blocking thread, holding `permit` until the work is done or
/// skipped, and waits for it until `deadline`. The task checks the deadline when it
/// starts and again before the model runs, so that a request its caller was already
/// answered 504 for costs no inference and gives its slot back at once; only a model
/// call already running (milliseconds, not interruptible in tract) finishes. The
/// looked-up request comes back with the scores, for the response.
pub async fn on_blocking_thread(
    model: Arc<Model>,
    features: Features,
    permit: Permit,
    deadline: Instant,
) -> Result<(Features, Inferred), ServiceError> {
    let (features, result) = blocking(permit, deadline, move || {
        let result = infer_before(&model, &features, Some(deadline));
        (features, result)
    })
    .await?;
    match result {
        Ok(inferred) => Ok((features, inferred)),
        Err(InferError::Invalid(invalid)) => Err(ServiceError::Invalid(invalid)),
        Err(InferError::Expired) => Err(ServiceError::DeadlineExceeded),
        Err(error @ InferError::Model { .. }) => Err(ServiceError::Internal(error.to_string())),
    }
}

/// [`infer_before`] with no deadline: golden checks and offline callers.
pub fn infer(model: &Model, features: &Features) -> Result<Inferred, InferError> {
    infer_before(model, features, None)
}

/// Runs `work` on a blocking thread, holding `permit` until it is done, and waits for it
/// until `deadline`: how every inference (scoring and raw tensors) runs off the async
/// runtime.
pub async fn blocking<T: Send + 'static>(
    permit: Permit,
    deadline: Instant,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    let task = tokio::task::spawn_blocking(move || {
        // The slot is held until the work is done, even if the caller gave up waiting:
        // the bound is on CPU work, not on waiting requests.
        let _permit = permit;
        work()
    });
    match tokio::time::timeout_at(deadline.into(), task).await {
        Err(_) => Err(ServiceError::DeadlineExceeded),
        Ok(Err(join_error)) => Err(ServiceError::Internal(format!(
            "inference task failed: {join_error}"
        ))),
        Ok(Ok(done)) => Ok(done),
    }
}

/// Scores a looked-up request with `model`: features taken from the request first, then
/// from the store's records. Plain CPU work: the service runs it on a blocking thread.
/// With a `deadline`, work stops with [`InferError::Expired`] when it has passed at the
/// start or after assembly.
pub fn infer_before(
    model: &Model,
    features: &Features,
    deadline: Option<Instant>,
) -> Result<Inferred, InferError> {
    let expired = || deadline.is_some_and(|deadline| Instant::now() >= deadline);
    if expired() {
        return Err(InferError::Expired);
    }
    let started = Instant::now();
    let (request, records) = (&features.request, &features.records);
    let model_error = |message: String| InferError::Model {
        name: model.name().to_string(),
        message,
    };
    let assembler = model.assembler();
    let user = overlay(request.user.as_ref(), records.user.as_deref());
    let request_view = RequestView {
        user: user.as_deref(),
        context: &request.context,
    };
    let shows: Vec<Option<Cow<'_, ShowRecord>>> = request
        .candidates
        .iter()
        .map(|candidate| laid_over(candidate.show.as_ref(), &records.shows, &candidate.show_id))
        .collect();
    let episodes: Vec<Option<Cow<'_, EpisodeRecord>>> = request
        .candidates
        .iter()
        .map(|candidate| {
            laid_over(
                candidate.episode.as_ref(),
                &records.episodes,
                &candidate.episode_id,
            )
        })
        .collect();
    let views: Vec<CandidateView<'_>> = request
        .candidates
        .iter()
        .zip(shows.iter().zip(&episodes))
        .map(|(candidate, (show, episode))| CandidateView {
            kind: candidate.kind,
            show_id: candidate.show_id.as_deref(),
            show: show.as_deref(),
            episode_id: candidate.episode_id.as_deref(),
            episode: episode.as_deref(),
            creative: &candidate.creative,
        })
        .collect();

    let assembly_error = |error: AssemblyError| match locate(assembler, &error) {
        Some(invalid) => InferError::Invalid(invalid),
        None => model_error(error.to_string()),
    };
    assembler
        .check_request(&[request_view])
        .map_err(assembly_error)?;
    assembler.check_candidates(&views).map_err(assembly_error)?;
    let request_tensors = assembler.request(&[request_view]).map_err(assembly_error)?;
    let candidate_tensors = assembler.candidates(&views).map_err(assembly_error)?;
    let assembled = Instant::now();
    let assembly = assembled - started;
    if expired() {
        return Err(InferError::Expired);
    }

    let logits = model
        .runtime()
        .infer(&request_tensors, &candidate_tensors)
        .map_err(|error| model_error(error.to_string()))?;
    let inference = assembled.elapsed();
    let rows = request.candidates.len();
    if logits.rows != rows || logits.values.len() != logits.rows * logits.heads {
        return Err(model_error(format!(
            "output has {} rows of {} heads ({} values) for {rows} candidates",
            logits.rows,
            logits.heads,
            logits.values.len()
        )));
    }

    let mut candidates = Vec::with_capacity(rows);
    for (row, (candidate, show)) in request.candidates.iter().zip(&shows).enumerate() {
        let mut scores = FieldScores::default();
        for field in model.heads().fields() {
            let probability = model
                .heads()
                .probability(candidate.kind, field, logits.row(row))
                .map_err(|error| match error {
                    // Inputs within their bounds can still drive a network to overflow:
                    // that is this candidate's answer (a 422 naming it), never a 500.
                    HeadsError::NotFinite { head, .. } => InferError::Invalid(InvalidField::new(
                        InvalidReason::InvalidValue,
                        format!("candidates[{row}]"),
                        format!(
                            "the model gives no finite `{head}` score for this candidate; \
                             check its numeric inputs"
                        ),
                    )),
                    error => model_error(format!("row {row}: {error}")),
                })?;
            scores.set(field, probability);
        }
        candidates.push(CandidateScores {
            id: candidate.id.clone(),
            kind: candidate.kind,
            scores,
            cold_start: candidate_tensors.cold_start[row] || show.is_none(),
            expected_cost_per_stream: None,
        });
    }
    Ok(Inferred {
        candidates,
        assembly,
        inference,
    })
}

/// A candidate's inline record laid over the store's record of `id` (see
/// [`overlay`]).
fn laid_over<'a, T: Overlay>(
    inline: Option<&'a T>,
    stored: &'a RecordMap<T>,
    id: &Option<String>,
) -> Option<Cow<'a, T>> {
    let stored = id.as_ref().and_then(|id| stored.get(id)).map(Arc::as_ref);
    overlay(inline, stored)
}

/// The request field an assembly error is about, found through the feature's source.
fn locate(assembler: &Assembler, error: &AssemblyError) -> Option<InvalidField> {
    let (feature, row, reason) = match error {
        AssemblyError::NotFinite { feature, row } => (feature, *row, InvalidReason::NotFinite),
        AssemblyError::WrongDimension { feature, row, .. } => {
            (feature, *row, InvalidReason::WrongDimension)
        }
        AssemblyError::OutOfRange { feature, row, .. } => {
            (feature, *row, InvalidReason::OutOfRange)
        }
        _ => return None,
    };
    let spec = assembler
        .specs()
        .iter()
        .find(|spec| &spec.name == feature)?;
    Some(InvalidField::new(
        reason,
        source_path(spec.source, row),
        error.to_string(),
    ))
}
