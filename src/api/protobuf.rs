//! The protobuf form of `/score` (`podscore.v1` in `proto/`): a [`pb::ScoreRequest`]
//! becomes the service's [`ScoreRequest`] and a [`ScoreResponse`] becomes a
//! [`pb::ScoreResponse`], field for field. `POST /score` with `application/x-protobuf`
//! and the gRPC `Scorer` both use these, so the two cannot drift apart.
//!
//! This module knows the generated types and the service's request types; it knows
//! nothing of HTTP or gRPC transport.

use std::time::Instant;

use prost::Message;

use crate::entities::{CandidateKind, CreativeRecord, EpisodeRecord, ShowRecord, UserRecord};
use crate::proto::podscore::v1 as pb;
use crate::service::request::{
    CandidateInput, CandidateScores, ContextInput, ScoreRequest, ScoreResponse, StageTimings,
};
use crate::service::respond::micros;
use crate::service::validate::{InvalidField, InvalidReason};

/// The media type of protobuf bodies.
pub const MEDIA_TYPE: &str = "application/x-protobuf";

/// Why a protobuf body is not a request.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// Not a `podscore.v1.ScoreRequest` on the wire.
    #[error("malformed protobuf: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// Decodes, but a field holds what the JSON body could not (a tier above 255).
    #[error("{0}")]
    Invalid(#[from] InvalidField),
}

/// The field number of `ScoreRequest.candidates` in `proto/podscore/v1/score.proto`.
const CANDIDATES_FIELD: u32 = 5;

/// Decodes a `podscore.v1.ScoreRequest` into the service's request, in two passes as the
/// JSON decoder does: the first walks the top-level fields and counts candidates without
/// building anything, so that a body of a hundred thousand tiny candidates is refused
/// (`too_many_candidates`) for the price of a scan; the second decodes.
pub fn decode_request(bytes: &[u8], max_candidates: usize) -> Result<ScoreRequest, ProtobufError> {
    if count_candidates(bytes, max_candidates)? > max_candidates {
        return Err(ProtobufError::Invalid(too_many_candidates(max_candidates)));
    }
    let message = pb::ScoreRequest::decode(bytes)?;
    Ok(request_from_message(message)?)
}

/// The error of a request with more than `max` candidates, as the JSON decoder words it.
pub fn too_many_candidates(max: usize) -> InvalidField {
    InvalidField::new(
        InvalidReason::TooManyCandidates,
        "candidates",
        format!("more than {max} candidates; at most {max} per request"),
    )
}

/// Candidates in an encoded `ScoreRequest`, counting stopped past `max`; other fields are
/// skipped unread. Hand-written on prost's wire primitives: prost decodes whole messages
/// only.
fn count_candidates(mut bytes: &[u8], max: usize) -> Result<usize, prost::DecodeError> {
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    let mut count = 0;
    while !bytes.is_empty() && count <= max {
        let (tag, wire_type) = decode_key(&mut bytes)?;
        if tag == CANDIDATES_FIELD {
            count += 1;
        }
        skip_field(wire_type, tag, &mut bytes, DecodeContext::default())?;
    }
    Ok(count)
}

/// The service's request for `message`. Candidate kinds become their JSON names, so that
/// validation refuses an unspecified or unknown one exactly as it refuses an unknown
/// string.
pub fn request_from_message(message: pb::ScoreRequest) -> Result<ScoreRequest, InvalidField> {
    let candidates = message
        .candidates
        .into_iter()
        .enumerate()
        .map(|(index, candidate)| candidate_from_message(index, candidate))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScoreRequest {
        request_id: message.request_id,
        model: message.model,
        user: message.user.map(|user| UserRecord {
            id: user.id,
            country: user.country,
            platform: user.platform,
            age_bucket: user.age_bucket,
            history: strings(user.history),
            follows: strings(user.follows),
            search_topics: strings(user.search_topics),
        }),
        context: message.context.map(|context| ContextInput {
            timestamp: context.timestamp,
            surface: context.surface,
            session_length_s: context.session_length_s,
            host_genre: context.host_genre,
        }),
        candidates,
        order: message.order,
    })
}

fn candidate_from_message(
    index: usize,
    candidate: pb::Candidate,
) -> Result<CandidateInput, InvalidField> {
    let kind = match pb::CandidateKind::try_from(candidate.kind) {
        Ok(pb::CandidateKind::Ad) => CandidateKind::Ad.as_str().to_string(),
        Ok(pb::CandidateKind::Promotion) => CandidateKind::Promotion.as_str().to_string(),
        Ok(unspecified @ pb::CandidateKind::Unspecified) => unspecified.as_str_name().into(),
        Err(_) => candidate.kind.to_string(),
    };
    let show = match candidate.show {
        None => None,
        Some(show) => Some(ShowRecord {
            id: show.id,
            genres: strings(show.genres),
            topics: strings(show.topics),
            embedding: show.embedding.map(|list| list.values),
            streams_30d: show.streams_30d,
            tier: match show.tier {
                None => None,
                Some(tier) => Some(u8::try_from(tier).map_err(|_| {
                    InvalidField::new(
                        InvalidReason::InvalidValue,
                        format!("candidates[{index}].show.tier"),
                        format!("tier {tier} is out of range (0 to 255)"),
                    )
                })?),
            },
        }),
    };
    Ok(CandidateInput {
        id: candidate.id,
        kind,
        show_id: candidate.show_id,
        episode_id: candidate.episode_id,
        show,
        episode: candidate.episode.map(|episode| EpisodeRecord {
            id: episode.id,
            show_id: episode.show_id,
            topics: strings(episode.topics),
            duration_s: episode.duration_s,
        }),
        creative: candidate.creative.map(|creative| CreativeRecord {
            creative_id: creative.creative_id,
            campaign_id: creative.campaign_id,
            format: creative.format,
            slot: creative.slot,
            layout: creative.layout,
        }),
        bid: candidate.bid,
    })
}

fn strings(list: Option<pb::StringList>) -> Option<Vec<String>> {
    list.map(|list| list.values)
}

/// The message for `request`: the inverse of [`request_from_message`], for clients (the
/// tests, and any Rust caller) that hold a request in the service's types. A kind that
/// is neither `ad` nor `promotion` is sent as unspecified.
pub fn message_from_request(request: &ScoreRequest) -> pb::ScoreRequest {
    let list =
        |values: &Option<Vec<String>>| values.clone().map(|values| pb::StringList { values });
    pb::ScoreRequest {
        request_id: request.request_id.clone(),
        model: request.model.clone(),
        user: request.user.as_ref().map(|user| pb::User {
            id: user.id.clone(),
            country: user.country.clone(),
            platform: user.platform.clone(),
            age_bucket: user.age_bucket.clone(),
            history: list(&user.history),
            follows: list(&user.follows),
            search_topics: list(&user.search_topics),
        }),
        context: request.context.as_ref().map(|context| pb::Context {
            timestamp: context.timestamp.clone(),
            surface: context.surface.clone(),
            session_length_s: context.session_length_s,
            host_genre: context.host_genre.clone(),
        }),
        candidates: request
            .candidates
            .iter()
            .map(|candidate| pb::Candidate {
                id: candidate.id.clone(),
                kind: match CandidateKind::parse(&candidate.kind) {
                    Some(CandidateKind::Ad) => pb::CandidateKind::Ad,
                    Some(CandidateKind::Promotion) => pb::CandidateKind::Promotion,
                    None => pb::CandidateKind::Unspecified,
                }
                .into(),
                show_id: candidate.show_id.clone(),
                episode_id: candidate.episode_id.clone(),
                show: candidate.show.as_ref().map(|show| pb::Show {
                    id: show.id.clone(),
                    genres: list(&show.genres),
                    topics: list(&show.topics),
                    embedding: show
                        .embedding
                        .clone()
                        .map(|values| pb::FloatList { values }),
                    streams_30d: show.streams_30d,
                    tier: show.tier.map(u32::from),
                }),
                episode: candidate.episode.as_ref().map(|episode| pb::Episode {
                    id: episode.id.clone(),
                    show_id: episode.show_id.clone(),
                    topics: list(&episode.topics),
                    duration_s: episode.duration_s,
                }),
                creative: candidate.creative.as_ref().map(|creative| pb::Creative {
                    creative_id: creative.creative_id.clone(),
                    campaign_id: creative.campaign_id.clone(),
                    format: creative.format.clone(),
                    slot: creative.slot.clone(),
                    layout: creative.layout.clone(),
                }),
                bid: candidate.bid,
            })
            .collect(),
        order: request.order,
    }
}

/// The message for `response`, without its timings (the encoder adds them last).
pub fn response_message(response: &ScoreResponse) -> pb::ScoreResponse {
    pb::ScoreResponse {
        request_id: response.request_id.clone(),
        model: Some(pb::ModelRef {
            name: response.model.name.clone(),
            version: response.model.version,
        }),
        candidates: response.candidates.iter().map(scores_message).collect(),
        timings_us: None,
        order: response.order.clone().unwrap_or_default(),
        degraded: response.degraded,
    }
}

fn scores_message(scores: &CandidateScores) -> pb::CandidateScores {
    let kind = match scores.kind {
        CandidateKind::Ad => pb::CandidateKind::Ad,
        CandidateKind::Promotion => pb::CandidateKind::Promotion,
    };
    pb::CandidateScores {
        id: scores.id.clone(),
        kind: kind.into(),
        stream: scores.scores.stream,
        click: scores.scores.click,
        like: scores.scores.like,
        follow: scores.scores.follow,
        cold_start: scores.cold_start,
        expected_cost_per_stream: scores.expected_cost_per_stream,
        objectives: scores
            .scores
            .objectives
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), (*value)?)))
            .collect(),
    }
}

pub fn timings_message(timings: &StageTimings) -> pb::StageTimings {
    pb::StageTimings {
        decode: timings.decode,
        features: timings.features,
        inference: timings.inference,
        encode: timings.encode,
    }
}

/// The protobuf body of `response`, its `timings_us` written last with the encoding time
/// filled in. Two encoded messages one after the other decode as their merge, so the
/// timings are appended as a message of their own.
pub fn encode(response: &ScoreResponse) -> (Vec<u8>, StageTimings) {
    let started = Instant::now();
    let mut body = response_message(response).encode_to_vec();
    let timings = StageTimings {
        encode: micros(started.elapsed()),
        ..response.timings_us
    };
    let tail = pb::ScoreResponse {
        timings_us: Some(timings_message(&timings)),
        ..pb::ScoreResponse::default()
    };
    body.extend_from_slice(&tail.encode_to_vec());
    (body, timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kinds map to their JSON names; unspecified and unknown numbers keep a name that
    /// validation refuses; a tier above a byte is an invalid value at its path.
    #[test]
    fn messages_become_requests_field_for_field() {
        let candidate = |kind: i32| pb::Candidate {
            id: "c".into(),
            kind,
            ..pb::Candidate::default()
        };
        let message = pb::ScoreRequest {
            candidates: vec![candidate(1), candidate(2), candidate(0), candidate(7)],
            user: Some(pb::User {
                history: Some(pb::StringList::default()),
                ..pb::User::default()
            }),
            ..pb::ScoreRequest::default()
        };
        let request = request_from_message(message).unwrap();
        let kinds: Vec<&str> = request.candidates.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["ad", "promotion", "CANDIDATE_KIND_UNSPECIFIED", "7"]
        );
        // An empty list is present and empty, not absent.
        assert_eq!(request.user.unwrap().history, Some(vec![]));

        let mut high = candidate(1);
        high.show = Some(pb::Show {
            tier: Some(256),
            ..pb::Show::default()
        });
        let message = pb::ScoreRequest {
            candidates: vec![candidate(1), high],
            ..pb::ScoreRequest::default()
        };
        let error = request_from_message(message).unwrap_err();
        assert_eq!(
            (error.reason, error.field.as_str()),
            (InvalidReason::InvalidValue, "candidates[1].show.tier")
        );
    }
}
