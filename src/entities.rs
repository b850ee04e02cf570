//! Entity records: the raw, untransformed values the feature store holds and a request may
//! carry inline. Users, shows and episodes come from the snapshot (or Redis); context and
//! creatives come with each request or impression.
//!
//! This module knows field names and types only. It knows nothing of vocabularies,
//! tensors, Parquet, HTTP or JSON wire details beyond serde derives.

use serde::{Deserialize, Serialize};

/// What a listener looks like to the model. Every attribute is optional: a user the
/// store has never seen is just an id, and assembly fills defaults (the cold-start path).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_bucket: Option<String>,
    /// Show ids the user listened to recently, most recent first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<String>>,
    /// Show ids the user follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<Vec<String>>,
    /// Topics of the user's recent searches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_topics: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genres: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// Output of a pretrained content encoder: a noisy view of the show's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// Streams over the rolling 30-day window; the popularity tier derives from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams_30d: Option<f64>,
    /// Popularity tier 0 (most streamed) to 7; absent for brand-new shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
}

/// The moment and place of an impression.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextRecord {
    /// Unix seconds, UTC. The API accepts RFC 3339 and converts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_length_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateKind {
    Ad,
    Promotion,
}

impl CandidateKind {
    pub const ALL: [CandidateKind; 2] = [CandidateKind::Ad, CandidateKind::Promotion];

    pub fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Ad => "ad",
            CandidateKind::Promotion => "promotion",
        }
    }

    pub fn parse(text: &str) -> Option<CandidateKind> {
        match text {
            "ad" => Some(CandidateKind::Ad),
            "promotion" => Some(CandidateKind::Promotion),
            _ => None,
        }
    }
}

/// The creative of an ad or the placement of a promotion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreativeRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creative_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Ads: `audio` or `video`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Where it shows: `preroll`, `midroll`, `home_shelf`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Promotions: `card`, `banner`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

/// Everything about one request that is the same for all its candidates.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub user: Option<&'a UserRecord>,
    pub context: &'a ContextRecord,
}

/// Everything about one candidate. Show and episode are absent when neither the store
/// nor the request knows them: assembly then takes the cold-start path.
#[derive(Debug, Clone, Copy)]
pub struct CandidateView<'a> {
    pub kind: CandidateKind,
    pub show_id: Option<&'a str>,
    pub show: Option<&'a ShowRecord>,
    pub episode_id: Option<&'a str>,
    pub episode: Option<&'a EpisodeRecord>,
    pub creative: &'a CreativeRecord,
}
