//! Validation, the pipeline's first stage: a decoded [`ScoreRequest`] becomes a
//! [`ValidatedRequest`] (kinds parsed, timestamp converted, every string, list and number
//! within bounds), or an [`InvalidField`] naming the field's path in the request.
//!
//! This module knows the request's field paths (`candidates[3].kind`), not its wire
//! encoding, and nothing of HTTP status codes: the front ends map reasons to those.

use std::fmt::Display;

use crate::entities::{
    CandidateKind, ContextRecord, CreativeRecord, EpisodeRecord, ShowRecord, UserRecord,
};
use crate::features::Source;

use super::request::ScoreRequest;

/// Candidates per request unless configured otherwise: an ad server ranks a few hundred
/// at most, and a thousand bounds the work one request can ask for.
pub const DEFAULT_MAX_CANDIDATES: usize = 1000;
/// Characters per id or other string: real ids are tens of characters; a longer one is a
/// client bug or an attack, and would grow logs and memory for nothing. Counted in
/// characters, not bytes, so that the OpenAPI document's `maxLength` (a character count)
/// states the limit exactly.
pub const DEFAULT_MAX_STRING_BYTES: usize = 256;
/// Items per list (history, follows, topics, embedding): features keep at most tens of
/// them, so a longer list only costs memory.
pub const DEFAULT_MAX_LIST_ITEMS: usize = 1024;
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

/// Why a field is invalid. The front ends map each to their wire code and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    MissingField,
    WrongType,
    UnknownField,
    EmptyCandidates,
    TooManyCandidates,
    UnknownKind,
    NotFinite,
    StringTooLong,
    ListTooLong,
    InvalidTimestamp,
    WrongDimension,
    OutOfRange,
    InvalidValue,
}

impl InvalidReason {
    pub const ALL: [InvalidReason; 13] = [
        InvalidReason::MissingField,
        InvalidReason::WrongType,
        InvalidReason::UnknownField,
        InvalidReason::EmptyCandidates,
        InvalidReason::TooManyCandidates,
        InvalidReason::UnknownKind,
        InvalidReason::NotFinite,
        InvalidReason::StringTooLong,
        InvalidReason::ListTooLong,
        InvalidReason::InvalidTimestamp,
        InvalidReason::WrongDimension,
        InvalidReason::OutOfRange,
        InvalidReason::InvalidValue,
    ];
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
    /// Whether the response lists the candidates by expected cost per stream.
    pub order: bool,
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
    /// Finite and not negative.
    pub bid: Option<f64>,
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
    check.optional_text(context.host_genre.as_deref(), "context.host_genre")?;

    let mut candidates = Vec::with_capacity(raw.candidates.len());
    for (index, candidate) in raw.candidates.into_iter().enumerate() {
        let at = |field: &'static str| At { index, field };
        check.text(&candidate.id, &at("id"))?;
        check.text(&candidate.kind, &at("kind"))?;
        let kind = CandidateKind::parse(&candidate.kind).ok_or_else(|| {
            InvalidField::new(
                InvalidReason::UnknownKind,
                at("kind").to_string(),
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
        check.finite(candidate.bid, &at("bid"))?;
        if candidate.bid.is_some_and(|bid| bid < 0.0) {
            return Err(InvalidField::new(
                InvalidReason::InvalidValue,
                at("bid").to_string(),
                "a bid cannot be negative",
            ));
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
            bid: candidate.bid,
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
            host_genre: context.host_genre,
        },
        candidates,
        order: raw.order.unwrap_or(false),
    })
}

fn not_finite(field: String) -> InvalidField {
    InvalidField::new(InvalidReason::NotFinite, field, "number is not finite")
}

/// `candidates[3].show.genres`: a candidate field's path, written out only when a check
/// fails (formatting every path of every candidate up front was 9% of a request's
/// instructions).
struct At {
    index: usize,
    field: &'static str,
}

impl Display for At {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "candidates[{}].{}", self.index, self.field)
    }
}

/// `user.history[4]`: an item of a list field, written out only when a check fails.
struct Item<'a, List: Display + ?Sized> {
    list: &'a List,
    index: usize,
}

impl<List: Display + ?Sized> Display for Item<'_, List> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}[{}]", self.list, self.index)
    }
}

struct Checker<'a> {
    limits: &'a Limits,
}

impl Checker<'_> {
    fn text(&self, value: &str, field: &(impl Display + ?Sized)) -> Result<(), InvalidField> {
        // Bytes bound characters from above, so short strings need no count.
        if value.len() <= self.limits.max_string_bytes {
            return Ok(());
        }
        let characters = value.chars().count();
        if characters > self.limits.max_string_bytes {
            return Err(InvalidField::new(
                InvalidReason::StringTooLong,
                field.to_string(),
                format!(
                    "string of {characters} characters; at most {} allowed",
                    self.limits.max_string_bytes
                ),
            ));
        }
        Ok(())
    }

    fn optional_text(
        &self,
        value: Option<&str>,
        field: &(impl Display + ?Sized),
    ) -> Result<(), InvalidField> {
        value.map_or(Ok(()), |value| self.text(value, field))
    }

    fn list_length(
        &self,
        length: usize,
        field: &(impl Display + ?Sized),
    ) -> Result<(), InvalidField> {
        if length > self.limits.max_list_items {
            return Err(InvalidField::new(
                InvalidReason::ListTooLong,
                field.to_string(),
                format!(
                    "list of {length} items; at most {} allowed",
                    self.limits.max_list_items
                ),
            ));
        }
        Ok(())
    }

    fn texts(
        &self,
        values: Option<&[String]>,
        field: &(impl Display + ?Sized),
    ) -> Result<(), InvalidField> {
        let Some(values) = values else { return Ok(()) };
        self.list_length(values.len(), field)?;
        for (index, value) in values.iter().enumerate() {
            self.text(value, &Item { list: field, index })?;
        }
        Ok(())
    }

    fn finite(
        &self,
        value: Option<f64>,
        field: &(impl Display + ?Sized),
    ) -> Result<(), InvalidField> {
        match value {
            Some(number) if !number.is_finite() => Err(not_finite(field.to_string())),
            _ => Ok(()),
        }
    }
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
        Source::ContextHostGenre => "context.host_genre".into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::request::{CandidateInput, ContextInput};

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
        let bidding = |bid: f64| {
            let mut bidding = candidate("ad");
            bidding.bid = Some(bid);
            request(vec![candidate("ad"), bidding])
        };
        check(bidding(0.0), Ok(()));
        check(
            bidding(-0.5),
            Err((InvalidReason::InvalidValue, "candidates[1].bid")),
        );
        check(
            bidding(f64::NAN),
            Err((InvalidReason::NotFinite, "candidates[1].bid")),
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
}
