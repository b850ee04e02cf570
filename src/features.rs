//! Feature assembly: the one place where raw entity values become model tensors.
//!
//! The trainer, the evaluator and the server all call [`Assembler`], so that
//! training-serving skew is designed out: a feature is described once, by a
//! [`FeatureSpec`] in the bundle's manifest, and turned into numbers here only. The rules
//! behind it are defined here once each: which entity field a feature reads
//! ([`raw_value`]), and how a numeric is shaped ([`shape`]) and standardized by the
//! statistics the trainer fits with the same shaping ([`NumericStats`]).
//!
//! Tensors are split by scope. Request-scope features (user, context) fill one row per
//! request; candidate-scope features (content, creative, candidate kind) one row per
//! candidate. Each scope's [`ScopeTensors`] holds the four parts the graph takes (see
//! `graph`): ids (one column per id feature), bag ids and bag mask (`max_len` columns per
//! bag feature), and dense values (`dim` columns per dense feature, one per numeric). A
//! feature's `slot` is its first column in its part.
//!
//! Index 0 of every vocabulary is reserved for unknown or missing ids: the cold-start
//! path. Assembly never emits an id outside its vocabulary (tract's Gather would panic)
//! and rejects NaN or infinite numerics by the feature's name.
//!
//! This module knows nothing of Parquet, ONNX, HTTP or JSON request formats.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entities::{CandidateView, RequestView};

/// Which of the paper's four feature groups a feature belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    User,
    Content,
    Context,
    Creative,
}

/// Request-scope tensors have one row per request, candidate-scope one per candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Request,
    Candidate,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Request, Scope::Candidate];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Request => "request",
            Scope::Candidate => "candidate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Id,
    IdBag,
    Dense,
    Numeric,
}

/// The raw field a feature reads. The serialized names (`user.country`, ...) appear in
/// manifests; the set is closed because each one maps to a field of an entity record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "user.country")]
    UserCountry,
    #[serde(rename = "user.platform")]
    UserPlatform,
    #[serde(rename = "user.age_bucket")]
    UserAgeBucket,
    #[serde(rename = "user.history")]
    UserHistory,
    #[serde(rename = "user.follows")]
    UserFollows,
    #[serde(rename = "user.search_topics")]
    UserSearchTopics,
    #[serde(rename = "context.surface")]
    ContextSurface,
    #[serde(rename = "context.hour_of_day")]
    ContextHourOfDay,
    #[serde(rename = "context.day_of_week")]
    ContextDayOfWeek,
    #[serde(rename = "context.session_length_s")]
    ContextSessionLength,
    #[serde(rename = "context.host_genre")]
    ContextHostGenre,
    #[serde(rename = "candidate.kind")]
    CandidateKind,
    #[serde(rename = "show.id")]
    ShowId,
    #[serde(rename = "show.genres")]
    ShowGenres,
    #[serde(rename = "show.topics")]
    ShowTopics,
    #[serde(rename = "show.embedding")]
    ShowEmbedding,
    #[serde(rename = "show.streams_30d")]
    ShowStreams30d,
    #[serde(rename = "episode.id")]
    EpisodeId,
    #[serde(rename = "episode.topics")]
    EpisodeTopics,
    #[serde(rename = "episode.duration_s")]
    EpisodeDuration,
    #[serde(rename = "creative.creative_id")]
    CreativeId,
    #[serde(rename = "creative.campaign_id")]
    CampaignId,
    #[serde(rename = "creative.format")]
    CreativeFormat,
    #[serde(rename = "creative.slot")]
    CreativeSlot,
    #[serde(rename = "creative.layout")]
    CreativeLayout,
}

impl Source {
    pub fn scope(self) -> Scope {
        use Source::*;
        match self {
            UserCountry | UserPlatform | UserAgeBucket | UserHistory | UserFollows
            | UserSearchTopics | ContextSurface | ContextHourOfDay | ContextDayOfWeek
            | ContextSessionLength | ContextHostGenre => Scope::Request,
            _ => Scope::Candidate,
        }
    }
}

/// How a raw value becomes numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Transform {
    /// Vocabulary lookup; unknown or missing is index 0.
    Id { vocab: String },
    /// Up to `max_len` vocabulary ids, padded with 0 and masked; mean-pooled by the model.
    IdBag { vocab: String, max_len: usize },
    /// A vector copied as is; zeros when missing.
    Dense { dim: usize },
    /// `(shape(x) - mean) / std` ([`shape`]: `log1p` of `x` clamped at 0 when `log1p`, else
    /// `x`); missing becomes `default` before that.
    Numeric {
        log1p: bool,
        mean: f32,
        std: f32,
        default: f32,
    },
}

/// One model feature, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    pub group: Group,
    pub scope: Scope,
    pub kind: Kind,
    pub source: Source,
    /// The graph input this feature feeds, e.g. `candidate_ids` (see `graph`).
    pub input: String,
    /// First column of this feature in `input`.
    pub slot: usize,
    /// Columns taken: 1 for ids and numerics, `max_len` for bags, `dim` for dense.
    pub width: usize,
    pub transform: Transform,
    /// When this id maps to index 0 the candidate is reported as cold-start.
    #[serde(default)]
    pub marks_cold_start: bool,
    /// The raw values the server accepts for a numeric feature (each element, for a dense
    /// one), recorded by the trainer from its data (see [`NumericStats::bounds`]). Absent
    /// in bundles trained before bounds were recorded: [`FeatureSpec::accepted`] then
    /// falls back to a plausibility range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Bounds>,
}

/// An inclusive range of raw values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    pub min: f64,
    pub max: f64,
}

impl Bounds {
    pub fn contains(&self, value: f64) -> bool {
        self.min <= value && value <= self.max
    }
}

/// The range a `log1p` numeric feature without recorded bounds accepts: counts and
/// durations are never negative (shaping clamps them at zero, so a negative would be
/// scored as zero), and 1e15 is beyond any count of streams or seconds while its
/// `log1p` (34.5) stays far from overflowing the network.
pub const FALLBACK_COUNT_BOUNDS: Bounds = Bounds {
    min: 0.0,
    max: 1e15,
};
/// The range another numeric feature without recorded bounds accepts: as for counts,
/// either sign.
pub const FALLBACK_NUMERIC_BOUNDS: Bounds = Bounds {
    min: -1e15,
    max: 1e15,
};
/// The range each element of a dense vector without recorded bounds accepts: content
/// embeddings are unit-scale; a thousand leaves room for unnormalized ones while ±3.4e38
/// (which overflowed the network into confident nonsense) is refused.
pub const FALLBACK_DENSE_BOUNDS: Bounds = Bounds {
    min: -1e3,
    max: 1e3,
};

impl FeatureSpec {
    /// The raw values this feature accepts: its recorded bounds, or the fallback for its
    /// kind. `None` for id features, which any string feeds safely.
    pub fn accepted(&self) -> Option<Bounds> {
        let fallback = match &self.transform {
            Transform::Numeric { log1p: true, .. } => FALLBACK_COUNT_BOUNDS,
            Transform::Numeric { log1p: false, .. } => FALLBACK_NUMERIC_BOUNDS,
            Transform::Dense { .. } => FALLBACK_DENSE_BOUNDS,
            Transform::Id { .. } | Transform::IdBag { .. } => return None,
        };
        Some(self.bounds.unwrap_or(fallback))
    }
}

/// A feature before slots are assigned (`graph::lay_out` assigns them): what the trainer
/// declares.
#[derive(Debug, Clone)]
pub struct FeatureDefinition {
    pub name: &'static str,
    pub group: Group,
    pub source: Source,
    pub transform: Transform,
    pub marks_cold_start: bool,
}

/// Column counts of one scope's inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeWidths {
    pub ids: usize,
    pub bag: usize,
    pub dense: usize,
}

impl ScopeWidths {
    pub fn of(specs: &[FeatureSpec], scope: Scope) -> ScopeWidths {
        let mut widths = ScopeWidths::default();
        for spec in specs.iter().filter(|spec| spec.scope == scope) {
            let end = spec.slot + spec.width;
            let column = match spec.kind {
                Kind::Id => &mut widths.ids,
                Kind::IdBag => &mut widths.bag,
                Kind::Dense | Kind::Numeric => &mut widths.dense,
            };
            *column = (*column).max(end);
        }
        widths
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AssemblyError {
    #[error("feature `{feature}`: value is not finite (row {row})")]
    NotFinite { feature: String, row: usize },
    #[error("feature `{feature}`: expected {expected} values, got {got} (row {row})")]
    WrongDimension {
        feature: String,
        expected: usize,
        got: usize,
        row: usize,
    },
    #[error(
        "feature `{feature}`: {value} is outside the accepted range [{min}, {max}] (row {row})"
    )]
    OutOfRange {
        feature: String,
        row: usize,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("feature `{feature}`: no vocabulary `{vocab}` in the bundle")]
    MissingVocabulary { feature: String, vocab: String },
    #[error("feature `{feature}`: {reason}")]
    BadSpec { feature: String, reason: String },
}

/// An id vocabulary. Index 0 is reserved for unknown or missing ids, so the table the
/// model learns has `len()` rows, token `i` of the file being row `i + 1`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vocabulary {
    tokens: Vec<String>,
    /// aHash: probed for every id feature of every candidate.
    index: HashMap<String, i64, ahash::RandomState>,
}

impl Vocabulary {
    pub fn from_tokens(tokens: Vec<String>) -> Vocabulary {
        let index = tokens
            .iter()
            .enumerate()
            .map(|(position, token)| (token.clone(), position as i64 + 1))
            .collect();
        Vocabulary { tokens, index }
    }

    /// Rows of the embedding table, including the reserved row 0.
    pub fn len(&self) -> usize {
        self.tokens.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn lookup(&self, token: &str) -> i64 {
        self.index.get(token).copied().unwrap_or(0)
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// A vocabulary file's text: one token per line, in index order.
    pub fn parse(text: &str) -> Vocabulary {
        Vocabulary::from_tokens(text.lines().map(str::to_string).collect())
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::with_capacity(self.tokens.len() * 8);
        for token in &self.tokens {
            text.push_str(token);
            text.push('\n');
        }
        std::fs::write(path, text)
    }
}

/// Vocabularies by name, as a bundle's `vocab/` directory holds them.
pub type Vocabularies = BTreeMap<String, Vocabulary>;

/// Counts tokens per vocabulary over training data, then keeps those seen at least
/// `min_count` times. Order is by count, then token, so that vocabularies are
/// reproducible for the same data.
#[derive(Debug, Default)]
pub struct VocabularyBuilder {
    counts: BTreeMap<String, HashMap<String, u64>>,
}

impl VocabularyBuilder {
    pub fn observe_request(&mut self, specs: &[FeatureSpec], view: &RequestView<'_>) {
        for spec in specs.iter().filter(|spec| spec.scope == Scope::Request) {
            self.observe(spec, request_value(spec.source, view));
        }
    }

    pub fn observe_candidate(&mut self, specs: &[FeatureSpec], view: &CandidateView<'_>) {
        for spec in specs.iter().filter(|spec| spec.scope == Scope::Candidate) {
            self.observe(spec, candidate_value(spec.source, view));
        }
    }

    fn observe(&mut self, spec: &FeatureSpec, value: RawValue<'_>) {
        // A bag counts only the tokens assembly keeps (its first `max_len`): a token seen
        // only past them would get a row that no input ever reaches.
        let (vocab, kept) = match &spec.transform {
            Transform::Id { vocab } => (vocab, 1),
            Transform::IdBag { vocab, max_len } => (vocab, *max_len),
            _ => return,
        };
        let counts = self.counts.entry(vocab.clone()).or_default();
        let mut count = |token: &str| {
            if let Some(seen) = counts.get_mut(token) {
                *seen += 1;
            } else {
                counts.insert(token.to_string(), 1);
            }
        };
        match value {
            RawValue::Text(token) => count(token),
            RawValue::Texts(tokens) => tokens.iter().take(kept).for_each(|token| count(token)),
            _ => {}
        }
    }

    pub fn build(self, min_count: u64) -> Vocabularies {
        self.counts
            .into_iter()
            .map(|(name, counts)| {
                let mut kept: Vec<(String, u64)> = counts
                    .into_iter()
                    .filter(|(_, count)| *count >= min_count)
                    .collect();
                kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let tokens = kept.into_iter().map(|(token, _)| token).collect();
                (name, Vocabulary::from_tokens(tokens))
            })
            .collect()
    }
}

/// A raw value before transformation.
#[derive(Debug, Clone, Copy)]
pub enum RawValue<'a> {
    Missing,
    Text(&'a str),
    Texts(&'a [String]),
    Number(f64),
    Vector(&'a [f32]),
}

const HOURS: [&str; 24] = [
    "h00", "h01", "h02", "h03", "h04", "h05", "h06", "h07", "h08", "h09", "h10", "h11", "h12",
    "h13", "h14", "h15", "h16", "h17", "h18", "h19", "h20", "h21", "h22", "h23",
];
/// Day 0 of the Unix epoch was a Thursday.
const WEEKDAYS: [&str; 7] = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"];

fn text(value: Option<&String>) -> RawValue<'_> {
    value.map_or(RawValue::Missing, |value| RawValue::Text(value))
}

fn texts(value: Option<&Vec<String>>) -> RawValue<'_> {
    value.map_or(RawValue::Missing, |value| RawValue::Texts(value))
}

fn number(value: Option<f64>) -> RawValue<'static> {
    value.map_or(RawValue::Missing, RawValue::Number)
}

/// The raw value `source` reads: from the request view for request-scope sources, from
/// the candidate view for candidate-scope ones. The one dispatch from sources to entity
/// fields, used by assembly, the trainer's statistics and the evaluator's data checks.
pub fn raw_value<'a>(
    source: Source,
    request: &RequestView<'a>,
    candidate: &CandidateView<'a>,
) -> RawValue<'a> {
    match source.scope() {
        Scope::Request => request_value(source, request),
        Scope::Candidate => candidate_value(source, candidate),
    }
}

/// The raw value of a request-scope source.
fn request_value<'a>(source: Source, view: &RequestView<'a>) -> RawValue<'a> {
    let user = view.user;
    let context = view.context;
    match source {
        Source::UserCountry => user.map_or(RawValue::Missing, |u| text(u.country.as_ref())),
        Source::UserPlatform => user.map_or(RawValue::Missing, |u| text(u.platform.as_ref())),
        Source::UserAgeBucket => user.map_or(RawValue::Missing, |u| text(u.age_bucket.as_ref())),
        Source::UserHistory => user.map_or(RawValue::Missing, |u| texts(u.history.as_ref())),
        Source::UserFollows => user.map_or(RawValue::Missing, |u| texts(u.follows.as_ref())),
        Source::UserSearchTopics => {
            user.map_or(RawValue::Missing, |u| texts(u.search_topics.as_ref()))
        }
        Source::ContextSurface => text(context.surface.as_ref()),
        Source::ContextHourOfDay => context.timestamp.map_or(RawValue::Missing, |seconds| {
            RawValue::Text(HOURS[seconds.rem_euclid(86_400) as usize / 3_600])
        }),
        Source::ContextDayOfWeek => context.timestamp.map_or(RawValue::Missing, |seconds| {
            RawValue::Text(WEEKDAYS[seconds.div_euclid(86_400).rem_euclid(7) as usize])
        }),
        Source::ContextSessionLength => number(context.session_length_s),
        Source::ContextHostGenre => text(context.host_genre.as_ref()),
        _ => RawValue::Missing,
    }
}

/// The raw value of a candidate-scope source.
fn candidate_value<'a>(source: Source, view: &CandidateView<'a>) -> RawValue<'a> {
    let show = view.show;
    let episode = view.episode;
    let creative = view.creative;
    match source {
        Source::CandidateKind => RawValue::Text(view.kind.as_str()),
        Source::ShowId => view
            .show_id
            .or(show.and_then(|s| s.id.as_deref()))
            .map_or(RawValue::Missing, RawValue::Text),
        Source::ShowGenres => show.map_or(RawValue::Missing, |s| texts(s.genres.as_ref())),
        Source::ShowTopics => show.map_or(RawValue::Missing, |s| texts(s.topics.as_ref())),
        Source::ShowEmbedding => show
            .and_then(|s| s.embedding.as_deref())
            .map_or(RawValue::Missing, RawValue::Vector),
        Source::ShowStreams30d => show.map_or(RawValue::Missing, |s| number(s.streams_30d)),
        Source::EpisodeId => view
            .episode_id
            .or(episode.and_then(|e| e.id.as_deref()))
            .map_or(RawValue::Missing, RawValue::Text),
        Source::EpisodeTopics => episode.map_or(RawValue::Missing, |e| texts(e.topics.as_ref())),
        Source::EpisodeDuration => episode.map_or(RawValue::Missing, |e| number(e.duration_s)),
        Source::CreativeId => text(creative.creative_id.as_ref()),
        Source::CampaignId => text(creative.campaign_id.as_ref()),
        Source::CreativeFormat => text(creative.format.as_ref()),
        Source::CreativeSlot => text(creative.slot.as_ref()),
        Source::CreativeLayout => text(creative.layout.as_ref()),
        _ => RawValue::Missing,
    }
}

/// The one shaping rule of numeric features, applied before standardization both when
/// the trainer fits the statistics ([`NumericStats`]) and when assembly applies them:
/// `log1p` of the value clamped at zero, or the value itself. Counts and durations are
/// never below zero, and a NaN from `log1p` of a negative would poison every head.
pub fn shape(raw: f64, log1p: bool) -> f64 {
    if log1p { raw.max(0.0).ln_1p() } else { raw }
}

/// Running mean and variance (Welford) of one numeric feature's shaped values: the trainer
/// feeds it every training row's raw value, and [`NumericStats::transform`] is what the
/// manifest records and assembly applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumericStats {
    log1p: bool,
    count: f64,
    mean: f64,
    m2: f64,
    /// Smallest and largest shaped values seen.
    low: f64,
    high: f64,
}

/// Smallest standard deviation a numeric feature is divided by: a constant feature
/// standardizes to 0 instead of dividing by zero.
const MIN_STD: f64 = 1e-6;

impl NumericStats {
    pub fn new(log1p: bool) -> NumericStats {
        NumericStats {
            log1p,
            count: 0.0,
            mean: 0.0,
            m2: 0.0,
            low: f64::INFINITY,
            high: f64::NEG_INFINITY,
        }
    }

    /// Counts one raw value. Missing and non-finite values are left out: assembly maps
    /// a missing value to the default (the mean) and refuses a non-finite one.
    pub fn observe(&mut self, value: RawValue<'_>) {
        let RawValue::Number(number) = value else {
            return;
        };
        if !number.is_finite() {
            return;
        }
        let shaped = shape(number, self.log1p);
        self.low = self.low.min(shaped);
        self.high = self.high.max(shaped);
        self.count += 1.0;
        let delta = shaped - self.mean;
        self.mean += delta / self.count;
        self.m2 += delta * (shaped - self.mean);
    }

    /// Sample standard deviation; 1 (no scaling) below two values.
    fn std(&self) -> f64 {
        if self.count < 2.0 {
            1.0
        } else {
            (self.m2 / (self.count - 1.0)).sqrt().max(MIN_STD)
        }
    }

    /// The raw values the server should accept: the observed range of shaped values
    /// widened by its own width (at least 1) on each side, mapped back to raw values. For
    /// `log1p` features that is `[0, expm1(high + width)]`: negatives are refused (shaping
    /// would clamp them to zero), and a count may grow by orders of magnitude beyond what
    /// training saw. `None` before any value was observed (the fallback applies).
    pub fn bounds(&self) -> Option<Bounds> {
        if self.count == 0.0 {
            return None;
        }
        let width = (self.high - self.low).max(1.0);
        Some(if self.log1p {
            Bounds {
                min: 0.0,
                // Finite, so that the manifest can write it.
                max: (self.high + width).exp_m1().min(f64::MAX),
            }
        } else {
            Bounds {
                min: self.low - width,
                max: self.high + width,
            }
        })
    }

    /// The fitted transform: observed values standardize to mean 0 and standard deviation
    /// 1, and a missing value to 0, because its default is the raw value shaped to the
    /// mean (`expm1(mean)` under `log1p`).
    pub fn transform(&self) -> Transform {
        let mean = self.mean as f32;
        Transform::Numeric {
            log1p: self.log1p,
            mean,
            std: self.std() as f32,
            default: if self.log1p { mean.exp_m1() } else { mean },
        }
    }
}

/// One scope's model inputs for `rows` rows, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeTensors {
    pub rows: usize,
    pub widths: ScopeWidths,
    pub ids: Vec<i64>,
    pub bag_ids: Vec<i64>,
    pub bag_mask: Vec<f32>,
    pub dense: Vec<f32>,
    /// Per row: some feature marked `marks_cold_start` mapped to the unknown index.
    pub cold_start: Vec<bool>,
}

impl ScopeTensors {
    fn zeroed(rows: usize, widths: ScopeWidths) -> ScopeTensors {
        ScopeTensors {
            rows,
            widths,
            ids: vec![0; rows * widths.ids],
            bag_ids: vec![0; rows * widths.bag],
            bag_mask: vec![0.0; rows * widths.bag],
            dense: vec![0.0; rows * widths.dense],
            cold_start: vec![false; rows],
        }
    }
}

/// A feature spec checked against its vocabularies, ready to assemble many times: built
/// once per loaded model (or training run) and shared. It holds its own copy of the spec
/// and of the vocabularies the spec names, so that it can live beside the bundle it came
/// from; features that share a vocabulary share one copy.
#[derive(Debug, Clone)]
pub struct Assembler {
    specs: Vec<FeatureSpec>,
    vocabularies: Vec<Option<Arc<Vocabulary>>>,
    widths: [ScopeWidths; 2],
}

impl Assembler {
    /// Checks that every id feature has its vocabulary and that the slots are sane, so
    /// that assembly itself cannot fail on the spec, only on values.
    pub fn new(
        specs: &[FeatureSpec],
        vocabularies: &Vocabularies,
    ) -> Result<Assembler, AssemblyError> {
        let mut shared: HashMap<&str, Arc<Vocabulary>> = HashMap::new();
        let mut resolved = Vec::with_capacity(specs.len());
        for spec in specs {
            let bad = |reason: String| AssemblyError::BadSpec {
                feature: spec.name.clone(),
                reason,
            };
            if spec.scope != spec.source.scope() {
                return Err(bad(format!(
                    "scope {:?} does not match its source's scope",
                    spec.scope
                )));
            }
            let (expected_kind, expected_width) = match &spec.transform {
                Transform::Id { .. } => (Kind::Id, 1),
                Transform::IdBag { max_len, .. } => (Kind::IdBag, *max_len),
                Transform::Dense { dim } => (Kind::Dense, *dim),
                Transform::Numeric { std, mean, .. } => {
                    if !(std.is_finite() && *std > 0.0 && mean.is_finite()) {
                        return Err(bad("numeric std must be finite and positive".into()));
                    }
                    (Kind::Numeric, 1)
                }
            };
            if spec.kind != expected_kind || spec.width != expected_width || spec.width == 0 {
                return Err(bad(format!(
                    "kind {:?} width {} does not match its transform",
                    spec.kind, spec.width
                )));
            }
            let vocabulary = match &spec.transform {
                Transform::Id { vocab } | Transform::IdBag { vocab, .. } => {
                    let (name, vocabulary) =
                        vocabularies.get_key_value(vocab).ok_or_else(|| {
                            AssemblyError::MissingVocabulary {
                                feature: spec.name.clone(),
                                vocab: vocab.clone(),
                            }
                        })?;
                    let copy = shared
                        .entry(name.as_str())
                        .or_insert_with(|| Arc::new(vocabulary.clone()));
                    Some(Arc::clone(copy))
                }
                _ => None,
            };
            resolved.push(vocabulary);
        }
        Ok(Assembler {
            specs: specs.to_vec(),
            vocabularies: resolved,
            widths: [
                ScopeWidths::of(specs, Scope::Request),
                ScopeWidths::of(specs, Scope::Candidate),
            ],
        })
    }

    pub fn specs(&self) -> &[FeatureSpec] {
        &self.specs
    }

    pub fn widths(&self, scope: Scope) -> ScopeWidths {
        self.widths[scope as usize]
    }

    /// Checks every numeric and dense value of these request views against the range its
    /// spec accepts ([`FeatureSpec::accepted`]). The server calls this before assembly, so
    /// that no implausible value reaches the network; training and evaluation, which
    /// assemble the data the bounds came from, do not.
    pub fn check_request(&self, views: &[RequestView<'_>]) -> Result<(), AssemblyError> {
        self.check(Scope::Request, views.len(), |source, row| {
            request_value(source, &views[row])
        })
    }

    /// [`Assembler::check_request`] for candidate views.
    pub fn check_candidates(&self, views: &[CandidateView<'_>]) -> Result<(), AssemblyError> {
        self.check(Scope::Candidate, views.len(), |source, row| {
            candidate_value(source, &views[row])
        })
    }

    fn check<'v>(
        &self,
        scope: Scope,
        rows: usize,
        value_of: impl Fn(Source, usize) -> RawValue<'v>,
    ) -> Result<(), AssemblyError> {
        for spec in self.specs.iter().filter(|spec| spec.scope == scope) {
            let Some(bounds) = spec.accepted() else {
                continue;
            };
            for row in 0..rows {
                let outside = match value_of(spec.source, row) {
                    RawValue::Number(value) => (!bounds.contains(value)).then_some(value),
                    RawValue::Vector(values) => values
                        .iter()
                        .map(|&value| f64::from(value))
                        .find(|&value| !bounds.contains(value)),
                    _ => None,
                };
                if let Some(value) = outside {
                    return Err(AssemblyError::OutOfRange {
                        feature: spec.name.clone(),
                        row,
                        value,
                        min: bounds.min,
                        max: bounds.max,
                    });
                }
            }
        }
        Ok(())
    }

    /// Request-scope tensors, one row per view (one for serving, a batch for training).
    pub fn request(&self, views: &[RequestView<'_>]) -> Result<ScopeTensors, AssemblyError> {
        self.assemble(Scope::Request, views.len(), |source, row| {
            request_value(source, &views[row])
        })
    }

    /// Candidate-scope tensors, one row per candidate.
    pub fn candidates(&self, views: &[CandidateView<'_>]) -> Result<ScopeTensors, AssemblyError> {
        self.assemble(Scope::Candidate, views.len(), |source, row| {
            candidate_value(source, &views[row])
        })
    }

    fn assemble<'v>(
        &self,
        scope: Scope,
        rows: usize,
        value_of: impl Fn(Source, usize) -> RawValue<'v>,
    ) -> Result<ScopeTensors, AssemblyError> {
        let widths = self.widths(scope);
        let mut out = ScopeTensors::zeroed(rows, widths);
        for (spec, vocabulary) in self.specs.iter().zip(&self.vocabularies) {
            if spec.scope != scope {
                continue;
            }
            for row in 0..rows {
                let value = value_of(spec.source, row);
                write_feature(spec, vocabulary.as_deref(), value, row, &mut out)?;
            }
        }
        Ok(out)
    }
}

fn write_feature(
    spec: &FeatureSpec,
    vocabulary: Option<&Vocabulary>,
    value: RawValue<'_>,
    row: usize,
    out: &mut ScopeTensors,
) -> Result<(), AssemblyError> {
    let widths = out.widths;
    match &spec.transform {
        Transform::Id { .. } => {
            let vocabulary = vocabulary.expect("checked by Assembler::new");
            let index = match value {
                RawValue::Text(token) => vocabulary.lookup(token),
                _ => 0,
            };
            if index == 0 && spec.marks_cold_start {
                out.cold_start[row] = true;
            }
            out.ids[row * widths.ids + spec.slot] = index;
        }
        Transform::IdBag { max_len, .. } => {
            let vocabulary = vocabulary.expect("checked by Assembler::new");
            let tokens: &[String] = match value {
                RawValue::Texts(tokens) => tokens,
                _ => &[],
            };
            let start = row * widths.bag + spec.slot;
            // Unknown tokens keep their place with index 0 and mask 1: "an item we have
            // not seen" is information, and the model learns row 0 for it.
            for (offset, token) in tokens.iter().take(*max_len).enumerate() {
                out.bag_ids[start + offset] = vocabulary.lookup(token);
                out.bag_mask[start + offset] = 1.0;
            }
        }
        Transform::Dense { dim } => {
            let start = row * widths.dense + spec.slot;
            // Anything but a vector leaves zeros: the missing-vector default.
            if let RawValue::Vector(values) = value {
                if values.len() != *dim {
                    return Err(AssemblyError::WrongDimension {
                        feature: spec.name.clone(),
                        expected: *dim,
                        got: values.len(),
                        row,
                    });
                }
                if values.iter().any(|value| !value.is_finite()) {
                    return Err(AssemblyError::NotFinite {
                        feature: spec.name.clone(),
                        row,
                    });
                }
                out.dense[start..start + dim].copy_from_slice(values);
            }
        }
        Transform::Numeric {
            log1p,
            mean,
            std,
            default,
        } => {
            let raw = match value {
                RawValue::Number(number) => number,
                _ => f64::from(*default),
            };
            if !raw.is_finite() {
                return Err(AssemblyError::NotFinite {
                    feature: spec.name.clone(),
                    row,
                });
            }
            let normalized = ((shape(raw, *log1p) - f64::from(*mean)) / f64::from(*std)) as f32;
            out.dense[row * widths.dense + spec.slot] = if normalized.is_finite() {
                normalized
            } else {
                return Err(AssemblyError::NotFinite {
                    feature: spec.name.clone(),
                    row,
                });
            };
        }
    }
    Ok(())
}

/// The feature set of podscore's models, in input order: the paper's four groups. The
/// trainer fills numeric statistics from training data; everyone else reads the result
/// from the manifest, never from here.
///
/// Every id feature has a vocabulary of its own, named after it and counted from its own
/// occurrences: a show kept because users listen to it (`user_history`) is not thereby in
/// `show_id`'s vocabulary, whose rows the trainer only reaches through candidates. A
/// shared vocabulary with one table per feature left rows that no training row ever
/// reached at their random initialization (issue 14); tying the tables instead would
/// make a show's candidate embedding whatever its listening history taught it, and need
/// a graph with shared tables.
pub fn default_definitions() -> Vec<FeatureDefinition> {
    fn id(name: &'static str, group: Group, source: Source) -> FeatureDefinition {
        FeatureDefinition {
            name,
            group,
            source,
            transform: Transform::Id { vocab: name.into() },
            marks_cold_start: false,
        }
    }
    fn bag(name: &'static str, group: Group, source: Source, max_len: usize) -> FeatureDefinition {
        FeatureDefinition {
            name,
            group,
            source,
            transform: Transform::IdBag {
                vocab: name.into(),
                max_len,
            },
            marks_cold_start: false,
        }
    }
    fn numeric(name: &'static str, group: Group, source: Source) -> FeatureDefinition {
        FeatureDefinition {
            name,
            group,
            source,
            transform: Transform::Numeric {
                log1p: true,
                mean: 0.0,
                std: 1.0,
                default: 0.0,
            },
            marks_cold_start: false,
        }
    }
    use Group::*;
    vec![
        id("user_country", User, Source::UserCountry),
        id("user_platform", User, Source::UserPlatform),
        id("user_age_bucket", User, Source::UserAgeBucket),
        bag("user_history", User, Source::UserHistory, 20),
        bag("user_follows", User, Source::UserFollows, 10),
        bag("user_search_topics", User, Source::UserSearchTopics, 8),
        id("context_surface", Context, Source::ContextSurface),
        id("context_hour", Context, Source::ContextHourOfDay),
        id("context_weekday", Context, Source::ContextDayOfWeek),
        numeric(
            "context_session_length",
            Context,
            Source::ContextSessionLength,
        ),
        id("context_host_genre", Context, Source::ContextHostGenre),
        id("candidate_kind", Creative, Source::CandidateKind),
        FeatureDefinition {
            marks_cold_start: true,
            ..id("show_id", Content, Source::ShowId)
        },
        bag("show_genres", Content, Source::ShowGenres, 3),
        bag("show_topics", Content, Source::ShowTopics, 5),
        FeatureDefinition {
            name: "show_embedding",
            group: Content,
            source: Source::ShowEmbedding,
            transform: Transform::Dense { dim: 16 },
            marks_cold_start: false,
        },
        numeric("show_streams_30d", Content, Source::ShowStreams30d),
        id("episode_id", Content, Source::EpisodeId),
        bag("episode_topics", Content, Source::EpisodeTopics, 5),
        numeric("episode_duration", Content, Source::EpisodeDuration),
        id("campaign_id", Creative, Source::CampaignId),
        id("creative_id", Creative, Source::CreativeId),
        id("creative_format", Creative, Source::CreativeFormat),
        id("creative_slot", Creative, Source::CreativeSlot),
        id("creative_layout", Creative, Source::CreativeLayout),
    ]
}
