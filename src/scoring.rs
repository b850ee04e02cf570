//! Scoring one request: validate -> look up (the caller) -> assemble -> infer -> respond.
//!
//! This module holds the request and response types of `POST /score`, [`validate`] (a raw
//! request becomes a [`ValidatedRequest`], or an [`InvalidField`] naming the field path),
//! [`Model`] (a bundle loaded into the runtime, its spec checked and its golden cases
//! passed), and [`score`], the one function the server, `podscore score` and the golden
//! check all call.
//!
//! It knows nothing of HTTP, status codes, metrics or the async runtime: [`score`] is
//! plain CPU work that the caller runs off the async workers. Feature and head names come
//! from the manifest only.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bundle::{
    Bundle, BundleError, GoldenCase, GoldenScores, Heads, HeadsError, Manifest, ResponseField,
};
use crate::entities::{
    CandidateKind, CandidateView, ContextRecord, CreativeRecord, EpisodeRecord, RequestView,
    ShowRecord, UserRecord, overlay,
};
use crate::features::{Assembler, AssemblyError, Source};
use crate::runtime::{Runtime, RuntimeConfig, RuntimeError};
use crate::store::{LookupKeys, StoreRecords};

/// Candidates per request unless configured otherwise: an ad server ranks a few hundred
/// at most, and a thousand bounds the work one request can ask for.
pub const DEFAULT_MAX_CANDIDATES: usize = 1000;
/// Bytes per id or other string: real ids are tens of bytes; a longer one is a client bug
/// or an attack, and would grow logs and memory for nothing.
pub const DEFAULT_MAX_STRING_BYTES: usize = 256;
/// Items per list (history, follows, topics, embedding): features keep at most tens of
/// them, so a longer list only costs memory.
pub const DEFAULT_MAX_LIST_ITEMS: usize = 1024;
/// Largest absolute difference between a golden case's expected and computed
/// probabilities: tight enough to catch a wrong graph or spec, loose enough for float
/// reassociation across machines.
pub const GOLDEN_TOLERANCE: f64 = 1e-5;

// ---------------------------------------------------------------------------------------
// The wire request, as decoded. Every feature field is optional: whatever is absent comes
// from the feature store, or takes the cold-start default.

/// The body of `POST /score`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Which served model to use; the default model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The user: an id to look up, and any fields to use instead of the stored ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextInput>,
    pub candidates: Vec<CandidateInput>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextInput {
    /// RFC 3339. When absent it stays absent: the hour and weekday features take their
    /// unknown index, as in training (the server's clock would make golden checks flaky).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_length_s: Option<f64>,
}

impl ContextInput {
    /// The wire form of `record`, which [`validate`] turns back into it; `None` when the
    /// timestamp is outside what RFC 3339 can write.
    pub fn from_record(record: &ContextRecord) -> Option<ContextInput> {
        let timestamp = match record.timestamp {
            None => None,
            Some(seconds) => Some(
                chrono::DateTime::from_timestamp(seconds, 0)?
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        };
        Some(ContextInput {
            timestamp,
            surface: record.surface.clone(),
            session_length_s: record.session_length_s,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateInput {
    pub id: String,
    /// `ad` or `promotion`; a string here so that an unknown kind is reported as such.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_id: Option<String>,
    /// Show fields to use instead of the stored ones (brand-new shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show: Option<ShowRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode: Option<EpisodeRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creative: Option<CreativeRecord>,
}

// ---------------------------------------------------------------------------------------
// Validation.

/// What validation enforces beyond types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_candidates: usize,
    pub max_string_bytes: usize,
    pub max_list_items: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_candidates: DEFAULT_MAX_CANDIDATES,
            max_string_bytes: DEFAULT_MAX_STRING_BYTES,
            max_list_items: DEFAULT_MAX_LIST_ITEMS,
        }
    }
}

/// Why a field is invalid. The API layer maps each to its wire code and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    MissingField,
    WrongType,
    UnknownField,
    EmptyCandidates,
    TooManyCandidates,
    UnknownKind,
    UnknownModel,
    NotFinite,
    StringTooLong,
    ListTooLong,
    InvalidTimestamp,
    WrongDimension,
    InvalidValue,
}

/// One invalid field of a request: why, where (`candidates[3].kind`; empty for the whole
/// body) and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidField {
    pub reason: InvalidReason,
    pub field: String,
    pub message: String,
}

impl InvalidField {
    pub fn new(
        reason: InvalidReason,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> InvalidField {
        InvalidField {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A request that passed [`validate`]: kinds parsed, timestamp converted, every string
/// and number within bounds. Only this type can be scored.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedRequest {
    pub request_id: Option<String>,
    pub model: Option<String>,
    pub user_id: Option<String>,
    pub user: Option<UserRecord>,
    pub context: ContextRecord,
    pub candidates: Vec<ValidatedCandidate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedCandidate {
    pub id: String,
    pub kind: CandidateKind,
    pub show_id: Option<String>,
    pub episode_id: Option<String>,
    pub show: Option<ShowRecord>,
    pub episode: Option<EpisodeRecord>,
    pub creative: CreativeRecord,
}

impl ValidatedRequest {
    /// The store keys this request needs, each once.
    pub fn lookup_keys(&self) -> LookupKeys {
        let mut keys = LookupKeys {
            user: self.user_id.clone(),
            ..LookupKeys::default()
        };
        for candidate in &self.candidates {
            if let Some(show_id) = &candidate.show_id {
                keys.add_show(show_id);
            }
            if let Some(episode_id) = &candidate.episode_id {
                keys.add_episode(episode_id);
            }
        }
        keys
    }
}

/// Checks what types cannot: candidate count, kinds, timestamps, finite numbers, string
/// and list lengths. A missing timestamp stays missing (the hour and weekday features
/// take their unknown index), exactly as golden cases and training data treat it.
pub fn validate(raw: ScoreRequest, limits: &Limits) -> Result<ValidatedRequest, InvalidField> {
    let check = Checker { limits };
    if raw.candidates.is_empty() {
        return Err(InvalidField::new(
            InvalidReason::EmptyCandidates,
            "candidates",
            "at least one candidate is required",
        ));
    }
    if raw.candidates.len() > limits.max_candidates {
        return Err(InvalidField::new(
            InvalidReason::TooManyCandidates,
            "candidates",
            format!(
                "{} candidates; at most {} per request",
                raw.candidates.len(),
                limits.max_candidates
            ),
        ));
    }
    check.optional_text(raw.request_id.as_deref(), "request_id")?;
    check.optional_text(raw.model.as_deref(), "model")?;

    if let Some(user) = &raw.user {
        check.optional_text(user.id.as_deref(), "user.id")?;
        check.optional_text(user.country.as_deref(), "user.country")?;
        check.optional_text(user.platform.as_deref(), "user.platform")?;
        check.optional_text(user.age_bucket.as_deref(), "user.age_bucket")?;
        check.texts(user.history.as_deref(), "user.history")?;
        check.texts(user.follows.as_deref(), "user.follows")?;
        check.texts(user.search_topics.as_deref(), "user.search_topics")?;
    }

    let context = raw.context.unwrap_or_default();
    let timestamp = match &context.timestamp {
        None => None,
        Some(text) => Some({
            check.text(text, "context.timestamp")?;
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|error| {
                    InvalidField::new(
                        InvalidReason::InvalidTimestamp,
                        "context.timestamp",
                        format!("not an RFC 3339 timestamp: {error}"),
                    )
                })?
                .timestamp()
        }),
    };
    check.optional_text(context.surface.as_deref(), "context.surface")?;
    check.finite(context.session_length_s, "context.session_length_s")?;

    let mut candidates = Vec::with_capacity(raw.candidates.len());
    for (index, candidate) in raw.candidates.into_iter().enumerate() {
        let at = |field: &str| format!("candidates[{index}].{field}");
        check.text(&candidate.id, &at("id"))?;
        check.text(&candidate.kind, &at("kind"))?;
        let kind = CandidateKind::parse(&candidate.kind).ok_or_else(|| {
            InvalidField::new(
                InvalidReason::UnknownKind,
                at("kind"),
                format!(
                    "unknown candidate kind `{}`; expected `ad` or `promotion`",
                    candidate.kind
                ),
            )
        })?;
        check.optional_text(candidate.show_id.as_deref(), &at("show_id"))?;
        check.optional_text(candidate.episode_id.as_deref(), &at("episode_id"))?;
        if let Some(show) = &candidate.show {
            check.optional_text(show.id.as_deref(), &at("show.id"))?;
            check.texts(show.genres.as_deref(), &at("show.genres"))?;
            check.texts(show.topics.as_deref(), &at("show.topics"))?;
            check.finite(show.streams_30d, &at("show.streams_30d"))?;
            if let Some(embedding) = &show.embedding {
                check.list_length(embedding.len(), &at("show.embedding"))?;
                if let Some(position) = embedding.iter().position(|value| !value.is_finite()) {
                    return Err(not_finite(format!("{}[{position}]", at("show.embedding"))));
                }
            }
        }
        if let Some(episode) = &candidate.episode {
            check.optional_text(episode.id.as_deref(), &at("episode.id"))?;
            check.optional_text(episode.show_id.as_deref(), &at("episode.show_id"))?;
            check.texts(episode.topics.as_deref(), &at("episode.topics"))?;
            check.finite(episode.duration_s, &at("episode.duration_s"))?;
        }
        let creative = candidate.creative.unwrap_or_default();
        check.optional_text(creative.creative_id.as_deref(), &at("creative.creative_id"))?;
        check.optional_text(creative.campaign_id.as_deref(), &at("creative.campaign_id"))?;
        check.optional_text(creative.format.as_deref(), &at("creative.format"))?;
        check.optional_text(creative.slot.as_deref(), &at("creative.slot"))?;
        check.optional_text(creative.layout.as_deref(), &at("creative.layout"))?;
        // `show_id` names the show; an inline record's own id stands in when it is absent.
        let show_id = candidate
            .show_id
            .or_else(|| candidate.show.as_ref().and_then(|show| show.id.clone()));
        let episode_id = candidate.episode_id.or_else(|| {
            candidate
                .episode
                .as_ref()
                .and_then(|episode| episode.id.clone())
        });
        candidates.push(ValidatedCandidate {
            id: candidate.id,
            kind,
            show_id,
            episode_id,
            show: candidate.show,
            episode: candidate.episode,
            creative,
        });
    }

    Ok(ValidatedRequest {
        request_id: raw.request_id,
        model: raw.model,
        user_id: raw.user.as_ref().and_then(|user| user.id.clone()),
        user: raw.user,
        context: ContextRecord {
            timestamp,
            surface: context.surface,
            session_length_s: context.session_length_s,
        },
        candidates,
    })
}

fn not_finite(field: String) -> InvalidField {
    InvalidField::new(InvalidReason::NotFinite, field, "number is not finite")
}

struct Checker<'a> {
    limits: &'a Limits,
}

impl Checker<'_> {
    fn text(&self, value: &str, field: &str) -> Result<(), InvalidField> {
        if value.len() > self.limits.max_string_bytes {
            return Err(InvalidField::new(
                InvalidReason::StringTooLong,
                field,
                format!(
                    "string of {} bytes; at most {} allowed",
                    value.len(),
                    self.limits.max_string_bytes
                ),
            ));
        }
        Ok(())
    }

    fn optional_text(&self, value: Option<&str>, field: &str) -> Result<(), InvalidField> {
        value.map_or(Ok(()), |value| self.text(value, field))
    }

    fn list_length(&self, length: usize, field: &str) -> Result<(), InvalidField> {
        if length > self.limits.max_list_items {
            return Err(InvalidField::new(
                InvalidReason::ListTooLong,
                field,
                format!(
                    "list of {length} items; at most {} allowed",
                    self.limits.max_list_items
                ),
            ));
        }
        Ok(())
    }

    fn texts(&self, values: Option<&[String]>, field: &str) -> Result<(), InvalidField> {
        let Some(values) = values else { return Ok(()) };
        self.list_length(values.len(), field)?;
        for (index, value) in values.iter().enumerate() {
            self.text(value, &format!("{field}[{index}]"))?;
        }
        Ok(())
    }

    fn finite(&self, value: Option<f64>, field: &str) -> Result<(), InvalidField> {
        match value {
            Some(number) if !number.is_finite() => Err(not_finite(field.to_string())),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Models.

/// A bundle ready to score: its spec checked against its vocabularies and held as an
/// [`Assembler`], its heads resolved, its graph loaded into the runtime, its golden cases
/// passed. Built once at load and immutable afterwards.
#[derive(Debug)]
pub struct Model {
    pub manifest: Manifest,
    assembler: Assembler,
    heads: Heads,
    runtime: Runtime,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("feature spec: {0}")]
    Spec(#[from] AssemblyError),
    #[error("heads: {0}")]
    Heads(#[from] HeadsError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("golden check: {0}")]
    Golden(#[from] GoldenError),
}

impl Model {
    /// Reads, loads and checks the bundle in `dir`; see [`Model::load`].
    pub fn open(dir: &Path, config: &RuntimeConfig) -> Result<Model, ModelError> {
        Model::load(Bundle::read(dir)?, config)
    }

    /// Loads a bundle and proves it: the spec must assemble, every head must be read from
    /// the graph's output, and every golden case must score as the manifest says. A model
    /// that fails any of these is never returned, so it is never served.
    pub fn load(bundle: Bundle, config: &RuntimeConfig) -> Result<Model, ModelError> {
        let model = Model::load_unchecked(bundle, config)?;
        check_golden(&model)?;
        Ok(model)
    }

    /// Loads without the golden check: for computing golden cases of a fresh bundle.
    pub fn load_unchecked(bundle: Bundle, config: &RuntimeConfig) -> Result<Model, ModelError> {
        let Bundle {
            manifest,
            vocabularies,
            onnx,
            ..
        } = bundle;
        let assembler = Assembler::new(&manifest.features, &vocabularies)?;
        let heads = Heads::resolve(&manifest)?;
        let runtime = Runtime::load(&manifest, &onnx, config)?;
        Ok(Model {
            manifest,
            assembler,
            heads,
            runtime,
        })
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> u32 {
        self.manifest.version
    }
}

// ---------------------------------------------------------------------------------------
// Scoring.

/// The scores of one candidate; a field is null when the model has no head for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScores {
    pub id: String,
    pub kind: CandidateKind,
    pub stream: Option<f64>,
    pub click: Option<f64>,
    pub like: Option<f64>,
    pub follow: Option<f64>,
    /// The show was unknown (to the store and the request) or mapped to the model's
    /// unknown id: the model scored it from its cold-start row.
    pub cold_start: bool,
}

impl CandidateScores {
    pub fn get(&self, field: ResponseField) -> Option<f64> {
        match field {
            ResponseField::Stream => self.stream,
            ResponseField::Click => self.click,
            ResponseField::Like => self.like,
            ResponseField::Follow => self.follow,
        }
    }

    fn set(&mut self, field: ResponseField, value: Option<f64>) {
        match field {
            ResponseField::Stream => self.stream = value,
            ResponseField::Click => self.click = value,
            ResponseField::Like => self.like = value,
            ResponseField::Follow => self.follow = value,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: u32,
}

/// Microseconds spent per stage of the request path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTimings {
    /// Parsing and validating the body.
    pub decode: u64,
    /// Feature-store lookup and tensor assembly.
    pub features: u64,
    /// The model.
    pub inference: u64,
    /// Serializing the candidates' scores.
    pub encode: u64,
}

/// The body of a `POST /score` answer. `timings_us` is last so that it can be written
/// after the rest is encoded, and so report the encoding time too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub model: ModelRef,
    pub candidates: Vec<CandidateScores>,
    pub timings_us: StageTimings,
}

/// What [`score`] produces: the scores, and how long assembly and inference took.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub model: ModelRef,
    pub candidates: Vec<CandidateScores>,
    pub assembly: Duration,
    pub inference: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A value the model cannot take (a wrong-length embedding, say), from the request
    /// or the store.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("model `{name}`: {message}")]
    Model { name: String, message: String },
}

/// Scores `request` with `model`, features taken from the request first, then `records`.
/// Plain CPU work: the server runs it on a blocking thread.
pub fn score(
    model: &Model,
    records: &StoreRecords,
    request: &ValidatedRequest,
) -> Result<Scored, ScoreError> {
    let started = Instant::now();
    let model_error = |message: String| ScoreError::Model {
        name: model.manifest.name.clone(),
        message,
    };
    let assembler = &model.assembler;
    let user = overlay(request.user.as_ref(), records.user.as_deref());
    let request_view = RequestView {
        user: user.as_deref(),
        context: &request.context,
    };
    fn stored<'a, T>(records: &'a HashMap<String, Arc<T>>, id: &Option<String>) -> Option<&'a T> {
        id.as_ref().and_then(|id| records.get(id)).map(Arc::as_ref)
    }
    let shows: Vec<Option<Cow<'_, ShowRecord>>> = request
        .candidates
        .iter()
        .map(|candidate| {
            overlay(
                candidate.show.as_ref(),
                stored(&records.shows, &candidate.show_id),
            )
        })
        .collect();
    let episodes: Vec<Option<Cow<'_, EpisodeRecord>>> = request
        .candidates
        .iter()
        .map(|candidate| {
            overlay(
                candidate.episode.as_ref(),
                stored(&records.episodes, &candidate.episode_id),
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
        Some(invalid) => ScoreError::Invalid(invalid),
        None => model_error(error.to_string()),
    };
    let request_tensors = assembler.request(&[request_view]).map_err(assembly_error)?;
    let candidate_tensors = assembler.candidates(&views).map_err(assembly_error)?;
    let assembled = Instant::now();
    let assembly = assembled - started;

    let logits = model
        .runtime
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
        let mut scores = CandidateScores {
            id: candidate.id.clone(),
            kind: candidate.kind,
            stream: None,
            click: None,
            like: None,
            follow: None,
            cold_start: candidate_tensors.cold_start[row] || show.is_none(),
        };
        for field in ResponseField::ALL {
            let probability = model
                .heads
                .probability(candidate.kind, field, logits.row(row))
                .map_err(|error| model_error(format!("row {row}: {error}")))?;
            scores.set(field, probability);
        }
        candidates.push(scores);
    }
    Ok(Scored {
        model: ModelRef {
            name: model.manifest.name.clone(),
            version: model.manifest.version,
        },
        candidates,
        assembly,
        inference,
    })
}

impl ScoreResponse {
    /// The answer to `request`; `timings` are filled by the caller, who saw every stage.
    pub fn new(request: &ValidatedRequest, scored: Scored) -> ScoreResponse {
        ScoreResponse {
            request_id: request.request_id.clone(),
            model: scored.model,
            candidates: scored.candidates,
            timings_us: StageTimings::default(),
        }
    }
}

/// The request field an assembly error is about, found through the feature's source.
fn locate(assembler: &Assembler, error: &AssemblyError) -> Option<InvalidField> {
    let (feature, row, reason) = match error {
        AssemblyError::NotFinite { feature, row } => (feature, *row, InvalidReason::NotFinite),
        AssemblyError::WrongDimension { feature, row, .. } => {
            (feature, *row, InvalidReason::WrongDimension)
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

/// Where in a `/score` request the raw value of `source` comes from.
pub fn source_path(source: Source, row: usize) -> String {
    let candidate = |field: &str| format!("candidates[{row}].{field}");
    match source {
        Source::UserCountry => "user.country".into(),
        Source::UserPlatform => "user.platform".into(),
        Source::UserAgeBucket => "user.age_bucket".into(),
        Source::UserHistory => "user.history".into(),
        Source::UserFollows => "user.follows".into(),
        Source::UserSearchTopics => "user.search_topics".into(),
        Source::ContextSurface => "context.surface".into(),
        Source::ContextHourOfDay | Source::ContextDayOfWeek => "context.timestamp".into(),
        Source::ContextSessionLength => "context.session_length_s".into(),
        Source::CandidateKind => candidate("kind"),
        Source::ShowId => candidate("show_id"),
        Source::ShowGenres => candidate("show.genres"),
        Source::ShowTopics => candidate("show.topics"),
        Source::ShowEmbedding => candidate("show.embedding"),
        Source::ShowStreams30d => candidate("show.streams_30d"),
        Source::EpisodeId => candidate("episode_id"),
        Source::EpisodeTopics => candidate("episode.topics"),
        Source::EpisodeDuration => candidate("episode.duration_s"),
        Source::CreativeId => candidate("creative.creative_id"),
        Source::CampaignId => candidate("creative.campaign_id"),
        Source::CreativeFormat => candidate("creative.format"),
        Source::CreativeSlot => candidate("creative.slot"),
        Source::CreativeLayout => candidate("creative.layout"),
    }
}

// ---------------------------------------------------------------------------------------
// Golden cases.

#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("the manifest has no golden cases; refusing to serve an unchecked model")]
    NoCases,
    #[error("case {case}: request does not decode: {message}")]
    Decode { case: usize, message: String },
    #[error("case {case}: request is invalid: {field}: {message}", field = .error.field, message = .error.message)]
    Invalid { case: usize, error: InvalidField },
    #[error("case {case}: {source}")]
    Score {
        case: usize,
        #[source]
        source: ScoreError,
    },
    #[error("case {case}: expected {expected} candidates, scored {got}")]
    Count {
        case: usize,
        expected: usize,
        got: usize,
    },
    #[error("case {case}, candidate {candidate}, {field:?}: expected {expected:?}, got {got:?}")]
    Mismatch {
        case: usize,
        candidate: usize,
        field: ResponseField,
        expected: Option<f64>,
        got: Option<f64>,
    },
}

/// Scores a golden request as the server would, with no feature store: golden requests
/// carry every feature inline.
fn score_golden(
    model: &Model,
    case: usize,
    request: &serde_json::Value,
) -> Result<Vec<CandidateScores>, GoldenError> {
    let raw: ScoreRequest =
        serde_json::from_value(request.clone()).map_err(|error| GoldenError::Decode {
            case,
            message: error.to_string(),
        })?;
    let validated =
        validate(raw, &Limits::default()).map_err(|error| GoldenError::Invalid { case, error })?;
    let scored = score(model, &StoreRecords::default(), &validated)
        .map_err(|source| GoldenError::Score { case, source })?;
    Ok(scored.candidates)
}

/// Checks every golden case of the model's manifest within [`GOLDEN_TOLERANCE`]; a head
/// the case expects null must be null, and the other way round.
pub fn check_golden(model: &Model) -> Result<(), GoldenError> {
    if model.manifest.golden.is_empty() {
        return Err(GoldenError::NoCases);
    }
    for (case, golden) in model.manifest.golden.iter().enumerate() {
        let scored = score_golden(model, case, &golden.request)?;
        if scored.len() != golden.expected.len() {
            return Err(GoldenError::Count {
                case,
                expected: golden.expected.len(),
                got: scored.len(),
            });
        }
        for (candidate, (got, expected)) in scored.iter().zip(&golden.expected).enumerate() {
            for field in ResponseField::ALL {
                let expected = golden_field(expected, field);
                let got = got.get(field);
                let matches = match (expected, got) {
                    (Some(expected), Some(got)) => (expected - got).abs() <= GOLDEN_TOLERANCE,
                    (None, None) => true,
                    _ => false,
                };
                if !matches {
                    return Err(GoldenError::Mismatch {
                        case,
                        candidate,
                        field,
                        expected,
                        got,
                    });
                }
            }
        }
    }
    Ok(())
}

fn golden_field(scores: &GoldenScores, field: ResponseField) -> Option<f64> {
    match field {
        ResponseField::Stream => scores.stream,
        ResponseField::Click => scores.click,
        ResponseField::Like => scores.like,
        ResponseField::Follow => scores.follow,
    }
}

/// Golden cases for `requests` (fully inline `/score` bodies) as `model` scores them now:
/// what a trainer writes into a fresh manifest.
pub fn golden_cases(
    model: &Model,
    requests: &[serde_json::Value],
) -> Result<Vec<GoldenCase>, GoldenError> {
    requests
        .iter()
        .enumerate()
        .map(|(case, request)| {
            let scored = score_golden(model, case, request)?;
            Ok(GoldenCase {
                request: request.clone(),
                expected: scored
                    .iter()
                    .map(|scores| GoldenScores {
                        stream: scores.stream,
                        click: scores.click,
                        like: scores.like,
                        follow: scores.follow,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Counts of candidates per kind that took the cold-start path, for metrics.
pub fn cold_start_counts(candidates: &[CandidateScores]) -> HashMap<CandidateKind, u64> {
    let mut counts = HashMap::new();
    for candidate in candidates.iter().filter(|candidate| candidate.cold_start) {
        *counts.entry(candidate.kind).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(candidates: Vec<CandidateInput>) -> ScoreRequest {
        ScoreRequest {
            candidates,
            ..ScoreRequest::default()
        }
    }

    fn candidate(kind: &str) -> CandidateInput {
        CandidateInput {
            id: "c".into(),
            kind: kind.into(),
            ..CandidateInput::default()
        }
    }

    fn check(raw: ScoreRequest, expected: Result<(), (InvalidReason, &str)>) {
        let got = validate(raw, &Limits::default())
            .map(|_| ())
            .map_err(|e| (e.reason, e.field));
        assert_eq!(
            got,
            expected.map_err(|(reason, field)| (reason, field.to_string()))
        );
    }

    /// Each rule of validation reports its reason at the right field path.
    #[test]
    fn validation_reports_reason_and_path() {
        check(request(vec![candidate("ad")]), Ok(()));
        check(
            request(vec![]),
            Err((InvalidReason::EmptyCandidates, "candidates")),
        );
        check(
            request(vec![candidate("ad"); DEFAULT_MAX_CANDIDATES + 1]),
            Err((InvalidReason::TooManyCandidates, "candidates")),
        );
        check(
            request(vec![candidate("ad"), candidate("banner")]),
            Err((InvalidReason::UnknownKind, "candidates[1].kind")),
        );
        let mut long = candidate("ad");
        long.show_id = Some("s".repeat(DEFAULT_MAX_STRING_BYTES + 1));
        check(
            request(vec![long]),
            Err((InvalidReason::StringTooLong, "candidates[0].show_id")),
        );
        let mut infinite = candidate("promotion");
        infinite.show = Some(ShowRecord {
            embedding: Some(vec![0.0, f32::INFINITY]),
            ..ShowRecord::default()
        });
        check(
            request(vec![candidate("ad"), infinite]),
            Err((InvalidReason::NotFinite, "candidates[1].show.embedding[1]")),
        );
        let mut bad_time = request(vec![candidate("ad")]);
        bad_time.context = Some(ContextInput {
            timestamp: Some("yesterday".into()),
            ..ContextInput::default()
        });
        check(
            bad_time,
            Err((InvalidReason::InvalidTimestamp, "context.timestamp")),
        );
        let mut long_history = request(vec![candidate("ad")]);
        long_history.user = Some(UserRecord {
            history: Some(vec!["s".into(), "x".repeat(300)]),
            ..UserRecord::default()
        });
        check(
            long_history,
            Err((InvalidReason::StringTooLong, "user.history[1]")),
        );
    }

    /// A missing timestamp stays missing; a present one is converted from RFC 3339.
    #[test]
    fn timestamps_convert_or_stay_missing() {
        let validated = validate(request(vec![candidate("ad")]), &Limits::default()).unwrap();
        assert_eq!(validated.context.timestamp, None);
        let mut raw = request(vec![candidate("ad")]);
        raw.context = Some(ContextInput {
            timestamp: Some("1970-01-02T00:00:01Z".into()),
            ..ContextInput::default()
        });
        assert_eq!(
            validate(raw, &Limits::default()).unwrap().context.timestamp,
            Some(86_401)
        );
    }

    /// Lookup keys list each show and episode once, in first-seen order.
    #[test]
    fn lookup_keys_are_deduplicated() {
        let mut first = candidate("ad");
        first.show_id = Some("s1".into());
        let mut second = candidate("promotion");
        second.show_id = Some("s1".into());
        second.episode_id = Some("e1".into());
        let mut raw = request(vec![first, second]);
        raw.user = Some(UserRecord {
            id: Some("u1".into()),
            ..UserRecord::default()
        });
        let keys = validate(raw, &Limits::default()).unwrap().lookup_keys();
        assert_eq!(keys.user.as_deref(), Some("u1"));
        assert_eq!(keys.shows, ["s1"]);
        assert_eq!(keys.episodes, ["e1"]);
    }
}
