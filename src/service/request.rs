//! The `/score` request and response as data: what a front end decodes into and encodes
//! from. Every feature field of a request is optional: whatever is absent comes from the
//! feature store, or takes the cold-start default. Inline users, shows and episodes are
//! the entity records themselves (`entities`), so that their fields are listed once.
//!
//! This module knows serde (and OpenAPI schema) derives only; the wire codecs (JSON field paths of decode
//! errors, protobuf) belong to the front ends.

use serde::{Deserialize, Serialize};

use crate::bundle::{FieldScores, ResponseField};
use crate::entities::{
    CandidateKind, ContextRecord, CreativeRecord, EpisodeRecord, ShowRecord, UserRecord,
};

/// The body of `POST /score`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Which served model to use; the default model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The user: an id to look up, and any fields to use instead of the stored ones.
    #[serde(
        default,
        deserialize_with = "crate::entities::object::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub user: Option<UserRecord>,
    #[serde(
        default,
        deserialize_with = "crate::entities::object::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub context: Option<ContextInput>,
    #[serde(deserialize_with = "crate::entities::object::list")]
    pub candidates: Vec<CandidateInput>,
    /// Asks for `order` in the response: candidate ids by ascending expected cost per
    /// stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextInput {
    /// RFC 3339. When absent it stays absent: the hour and weekday features take their
    /// unknown index, as in training (the server's clock would make golden checks flaky).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_length_s: Option<f64>,
    /// Primary genre of the show an ad would play in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_genre: Option<String>,
}

impl ContextInput {
    /// The wire form of `record`, which validation turns back into it; `None` when the
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
            host_genre: record.host_genre.clone(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateInput {
    pub id: String,
    /// `ad` or `promotion`; a string here so that an unknown kind is reported as such.
    #[schema(value_type = CandidateKind)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_id: Option<String>,
    /// Show fields to use instead of the stored ones (brand-new shows).
    #[serde(
        default,
        deserialize_with = "crate::entities::object::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub show: Option<ShowRecord>,
    #[serde(
        default,
        deserialize_with = "crate::entities::object::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub episode: Option<EpisodeRecord>,
    #[serde(
        default,
        deserialize_with = "crate::entities::object::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub creative: Option<CreativeRecord>,
    /// Cost of the impression, in any currency unit: the response then carries the
    /// candidate's `expected_cost_per_stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0)]
    pub bid: Option<f64>,
}

/// The scores of one candidate; a field is null when the model has no head for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CandidateScores {
    pub id: String,
    pub kind: CandidateKind,
    /// `stream`, `click`, `like`, `follow`, then the fields the model's manifest names for
    /// objectives added by fine-tuning (`video_follow`), none for a model without them.
    #[serde(flatten)]
    pub scores: FieldScores,
    /// The show was unknown (to the store and the request) or mapped to the model's
    /// unknown id: the model scored it from its cold-start row.
    pub cold_start: bool,
    /// `bid / stream`, when the candidate carried a bid and its stream probability is
    /// positive; left out otherwise, so that requests without bids answer as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_cost_per_stream: Option<f64>,
}

impl CandidateScores {
    pub fn get(&self, field: &ResponseField) -> Option<f64> {
        self.scores.get(field)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: u32,
}

/// Microseconds spent per stage of the request path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoreResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub model: ModelRef,
    /// The feature store failed or timed out, so every candidate was scored without
    /// stored features (the cold-start path). Present only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
    pub candidates: Vec<CandidateScores>,
    /// When the request asked for it: candidate ids by ascending expected cost per
    /// stream, then those without one in request order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    pub timings_us: StageTimings,
}
