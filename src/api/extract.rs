//! Reading a request: the content type (JSON, or for `/score` also protobuf, with the
//! answer's encoding negotiated from `Accept`), the body read within its time bound, the
//! body decoded in two passes (syntax and candidate count first, without building
//! anything; then types, with every rejection in the API's error format: syntax errors
//! 400, type errors 422 with the field's path), and the request's deadline from
//! `x-request-timeout-ms`. Echoes of client text in error messages are bounded.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant};

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use crate::service::request::ScoreRequest;
use crate::service::validate::{InvalidField, InvalidReason};

use super::error::ApiError;
use super::protobuf;
use super::{ApiState, REQUEST_TIMEOUT_HEADER};

/// Bytes of client text (a key, a value, a path) an error message repeats: enough to
/// recognize it, never enough to turn a 2 MiB body into a 2 MiB error.
pub const MAX_ECHO_BYTES: usize = 128;

/// Refuses any content type but JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    content_encoding(headers, &[Encoding::Json]).map(|_| ())
}

/// The wire encodings of `/score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::Protobuf];

    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => protobuf::MEDIA_TYPE,
        }
    }

    /// The encoding of a media type (its essence, parameters left out).
    fn of(media_type: &str) -> Option<Encoding> {
        let essence = media_type.split(';').next().unwrap_or("").trim();
        Encoding::ALL
            .into_iter()
            .find(|encoding| essence.eq_ignore_ascii_case(encoding.media_type()))
    }
}

/// The body's encoding from `Content-Type`, one of `accepted`; 415 otherwise.
pub fn content_encoding(headers: &HeaderMap, accepted: &[Encoding]) -> Result<Encoding, ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType("(none)".into()));
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    Encoding::of(&value)
        .filter(|encoding| accepted.contains(encoding))
        .ok_or_else(|| ApiError::UnsupportedMediaType(format!("`{}`", truncate(&value, 64))))
}

/// The encoding the answer must use: the best one `Accept` allows, the request's own
/// (`request`) when `Accept` is absent or allows both equally; 406 when it allows
/// neither. Errors are JSON whatever was asked.
pub fn answer_encoding(headers: &HeaderMap, request: Encoding) -> Result<Encoding, ApiError> {
    match headers.get(ACCEPT) {
        None => Ok(request),
        Some(accept) => {
            let accept = String::from_utf8_lossy(accept.as_bytes());
            negotiate(&accept, request)
                .ok_or_else(|| ApiError::NotAcceptable(format!("`{}`", truncate(&accept, 64))))
        }
    }
}

/// The encoding an `Accept` header prefers (RFC 9110 §12.5.1): each encoding takes the
/// quality of the most specific range that matches it (`type/subtype`, then `type/*`,
/// then `*/*`); the highest nonzero quality wins, `preferred` on a tie. `None` when
/// neither is acceptable; a blank header accepts anything. Hand-written because no
/// maintained crate negotiates against a server's list with axum 0.8's header types; it
/// is a dozen lines.
pub fn negotiate(accept: &str, preferred: Encoding) -> Option<Encoding> {
    if accept.trim().is_empty() {
        return Some(preferred);
    }
    let quality = |encoding: Encoding| -> f32 {
        let (kind, subtype) = encoding
            .media_type()
            .split_once('/')
            .unwrap_or((encoding.media_type(), ""));
        let mut best: Option<(u8, f32)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let specificity = match media.split_once('/') {
                Some(("*", "*")) => 0,
                Some((k, "*")) if k.eq_ignore_ascii_case(kind) => 1,
                Some((k, s)) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(subtype) => {
                    2
                }
                _ => continue,
            };
            let q = parts
                .filter_map(|parameter| parameter.trim().strip_prefix("q="))
                .find_map(|value| value.trim().parse::<f32>().ok())
                .filter(|q| q.is_finite())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            if best.is_none_or(|(seen, _)| specificity > seen) {
                best = Some((specificity, q));
            }
        }
        best.map_or(0.0, |(_, q)| q)
    };
    let other = match preferred {
        Encoding::Json => Encoding::Protobuf,
        Encoding::Protobuf => Encoding::Json,
    };
    let (mine, theirs) = (quality(preferred), quality(other));
    if mine <= 0.0 && theirs <= 0.0 {
        None
    } else if theirs > mine {
        Some(other)
    } else {
        Some(preferred)
    }
}

/// A `/score` body in `encoding` as a [`ScoreRequest`], refusing more than
/// `max_candidates` before building any (see [`decode_score_request`] and
/// [`protobuf::decode_request`]).
pub fn decode_score_body(
    bytes: &[u8],
    encoding: Encoding,
    max_candidates: usize,
) -> Result<ScoreRequest, ApiError> {
    match encoding {
        Encoding::Json => decode_score_request(bytes, max_candidates),
        Encoding::Protobuf => {
            protobuf::decode_request(bytes, max_candidates).map_err(ApiError::from)
        }
    }
}

/// The whole body, bounded in size (413) and in time: it must arrive within the body
/// timeout and before the request's deadline (504 when the deadline passes first, 408
/// otherwise), so that a client trickling its body holds nothing for long.
pub async fn read_body(
    request: Request,
    state: &ApiState,
    deadline: Instant,
) -> Result<Bytes, ApiError> {
    let body_deadline = deadline.min(Instant::now() + state.config.body_timeout);
    let reading = Bytes::from_request(request, state);
    match tokio::time::timeout_at(body_deadline.into(), reading).await {
        Err(_) if body_deadline >= deadline => Err(ApiError::Service(
            crate::service::ServiceError::DeadlineExceeded,
        )),
        Err(_) => Err(ApiError::BodyTimeout(state.config.body_timeout.as_millis())),
        Ok(Err(rejection)) => Err(body_rejection(rejection, state)),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

fn body_rejection(rejection: BytesRejection, state: &ApiState) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge {
            limit: state.config.max_body_bytes,
        }
    } else {
        ApiError::MalformedBody(bounded(&rejection.body_text(), MAX_ECHO_BYTES))
    }
}

/// At most `max` bytes of `text`, cut at a character boundary: what error messages echo.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to at most `max` bytes, marked with an ellipsis when cut.
pub fn bounded(text: &str, max: usize) -> String {
    let cut = truncate(text, max);
    if cut.len() == text.len() {
        text.to_string()
    } else {
        format!("{cut}…")
    }
}

/// Bodies up to this size are first decoded in one typed pass: whatever they hold
/// decodes into a few megabytes at most.
const ONE_PASS_BYTES: usize = 256 * 1024;

/// A `/score` body as a [`ScoreRequest`], in two passes. The first checks syntax and
/// counts candidates, building nothing and stopping at `max_candidates + 1`, so that a
/// body of a hundred thousand tiny candidates costs a scan, not a hundred thousand
/// structs, before its 422. The second decodes the types ([`decode_json`]).
///
/// A body of at most [`ONE_PASS_BYTES`] is first decoded in one typed pass: the count
/// pass was 12% of a valid 100-candidate request's instructions outside inference. Only
/// a valid object within the candidate limit is taken from it; anything else goes
/// through both passes, so every error is the one they give.
pub fn decode_score_request(bytes: &[u8], max_candidates: usize) -> Result<ScoreRequest, ApiError> {
    if bytes.len() <= ONE_PASS_BYTES && is_object(bytes) {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        if let Ok(request) = <ScoreRequest as serde::Deserialize>::deserialize(&mut deserializer)
            .and_then(|request| deserializer.end().map(|()| request))
            && request.candidates.len() <= max_candidates
        {
            return Ok(request);
        }
    }
    let exceeded = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let census = Census {
        max_candidates,
        exceeded: &exceeded,
    };
    let scanned = census
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    if exceeded.get() {
        return Err(ApiError::Invalid(protobuf::too_many_candidates(
            max_candidates,
        )));
    }
    if let Err(error) = scanned {
        return Err(ApiError::MalformedBody(bare_message(&error)));
    }
    decode_typed(bytes)
}

/// Visitor methods accepting (and skipping) every JSON scalar: in the count pass only the
/// `candidates` array matters, and the typed pass reports anything else with its path.
macro_rules! accept_scalars {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    };
}

/// The first pass: any JSON value; in a top-level object, the `candidates` array is
/// counted element by element.
struct Census<'a> {
    max_candidates: usize,
    exceeded: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Census<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Census<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(is_candidates) = map.next_key_seed(IsCandidates)? {
            if is_candidates {
                map.next_value_seed(Count {
                    max: self.max_candidates,
                    exceeded: self.exceeded,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    accept_scalars!();
}

/// A key, compared with `candidates` without copying it.
struct IsCandidates;

impl<'de> DeserializeSeed<'de> for IsCandidates {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsCandidates {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == "candidates")
    }
}

/// The candidates array's elements, skipped and counted; past `max` the scan stops.
struct Count<'a> {
    max: usize,
    exceeded: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut count = 0usize;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
            if count > self.max {
                self.exceeded.set(true);
                return Err(de::Error::custom("too many candidates"));
            }
        }
        Ok(())
    }

    // Anything but an array is the typed pass's error to report, with its path.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        IgnoredAny.visit_map(map).map(|_| ())
    }
    accept_scalars!();
}

/// Parses `bytes` as `T`. Syntax is checked first, so that broken JSON is a 400 whatever
/// the types say; then a type error is a 422 naming the field's path (`candidates[3].kind`).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(error) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return Err(ApiError::MalformedBody(bare_message(&error)));
    }
    decode_typed(bytes)
}

/// The typed pass of [`decode_json`], on bytes whose syntax is known to be good.
fn decode_typed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if !is_object(bytes) {
        return Err(ApiError::Invalid(InvalidField::new(
            InvalidReason::WrongType,
            "",
            "the body must be a JSON object",
        )));
    }
    // Most bodies are valid: decode them without tracking paths (a third of the typed
    // pass's instructions), and decode again with paths only to say where one is not.
    if let Ok(value) = T::deserialize(&mut serde_json::Deserializer::from_slice(bytes)) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = bare_message(error.inner());
        let invalid = classify(if path == "." { "" } else { &path }, message);
        // Paths and messages can carry a client's key or string (an unknown key of a
        // megabyte): both are echoed bounded.
        ApiError::Invalid(InvalidField {
            field: bounded(&invalid.field, 2 * MAX_ECHO_BYTES),
            message: bounded(&invalid.message, 2 * MAX_ECHO_BYTES),
            ..invalid
        })
    })
}

/// Whether `bytes` start, after whitespace, as a JSON object: serde would also read a
/// struct from an array of its fields, and a body must be an object.
fn is_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{')
}

/// serde_json's message without its ` at line L column C` suffix (the field path says
/// where, in terms a client can act on), bounded.
fn bare_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let bare = match text.rfind(" at line ") {
        Some(position) if error.line() > 0 => &text[..position],
        _ => &text,
    };
    bounded(bare, 2 * MAX_ECHO_BYTES)
}

/// Maps a serde data error to its reason. Missing and unknown fields name the field
/// itself, which serde reports in the message, not the path.
fn classify(path: &str, message: String) -> InvalidField {
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('`'))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    if let Some(name) = quoted("missing field ") {
        return InvalidField::new(InvalidReason::MissingField, join(&name), message);
    }
    if message.starts_with("unknown field ") {
        // serde_path_to_error already ends the path with the unknown key.
        return InvalidField::new(InvalidReason::UnknownField, path, message);
    }
    let reason = if message.starts_with("invalid type") {
        InvalidReason::WrongType
    } else if message.starts_with("number out of range") {
        InvalidReason::NotFinite
    } else {
        InvalidReason::InvalidValue
    };
    InvalidField::new(reason, path, message)
}

/// When the request must be answered by: now plus `x-request-timeout-ms`, capped by the
/// configured request timeout, which is also the default.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

impl FromRequestParts<ApiState> for Deadline {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let configured = state.config.request_timeout;
        let timeout = match parts.headers.get(REQUEST_TIMEOUT_HEADER) {
            None => configured,
            Some(value) => {
                let millis = value
                    .to_str()
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                    .ok_or_else(|| ApiError::InvalidHeader {
                        header: REQUEST_TIMEOUT_HEADER,
                        message: format!(
                            "{REQUEST_TIMEOUT_HEADER} must be a whole number of milliseconds"
                        ),
                    })?;
                Duration::from_millis(millis).min(configured)
            }
        };
        Ok(Deadline(deadline_after(timeout)))
    }
}

/// Now plus `timeout`, or an hour from now when that overflows.
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(3_600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::request::ScoreRequest;

    /// Accept picks the answer's encoding by quality and specificity, the request's own
    /// on a tie or when anything goes; nothing acceptable is `None` (406).
    #[test]
    fn accept_negotiates_the_answer_encoding() {
        use Encoding::{Json, Protobuf};
        assert_eq!(negotiate("application/x-protobuf", Json), Some(Protobuf));
        assert_eq!(negotiate("application/json", Protobuf), Some(Json));
        assert_eq!(negotiate("*/*", Protobuf), Some(Protobuf));
        assert_eq!(negotiate("application/*", Json), Some(Json));
        assert_eq!(
            negotiate("application/json;q=0.5, application/x-protobuf", Json),
            Some(Protobuf)
        );
        assert_eq!(
            negotiate("application/x-protobuf;q=0, */*", Protobuf),
            Some(Json)
        );
        assert_eq!(negotiate("text/html", Json), None);
        assert_eq!(negotiate("application/json;q=0", Json), None);
        assert_eq!(negotiate(" ", Protobuf), Some(Protobuf));
    }

    fn decode(body: &str) -> Result<ScoreRequest, (u16, &'static str, Option<String>)> {
        decode_json::<ScoreRequest>(body.as_bytes()).map_err(|error| {
            let (status, code) = error.describe();
            (status.as_u16(), code, error.field().map(str::to_string))
        })
    }

    /// Syntax errors are 400s; type errors are 422s naming the field path.
    #[test]
    fn decode_errors_name_status_code_and_path() {
        assert_eq!(decode("{").unwrap_err(), (400, "malformed_json", None));
        assert_eq!(decode("{} x").unwrap_err(), (400, "malformed_json", None));
        assert_eq!(
            decode("{}").unwrap_err(),
            (422, "missing_field", Some("candidates".into()))
        );
        assert_eq!(decode("[]").unwrap_err(), (422, "wrong_type", None));
        assert_eq!(
            decode(r#"{"candidates": [{"id": "a", "kind": "ad"}, {"id": 3, "kind": "ad"}]}"#)
                .unwrap_err(),
            (422, "wrong_type", Some("candidates[1].id".into()))
        );
        assert_eq!(
            decode(r#"{"candidates": [{"id": "a"}]}"#).unwrap_err(),
            (422, "missing_field", Some("candidates[0].kind".into()))
        );
        assert_eq!(
            decode(r#"{"candidates": [], "colour": 1}"#).unwrap_err(),
            (422, "unknown_field", Some("colour".into()))
        );
        assert_eq!(
            decode(
                r#"{"candidates": [{"id": "a", "kind": "ad", "show": {"streams_30d": 1e400}}]}"#
            )
            .unwrap_err(),
            (
                422,
                "not_finite",
                Some("candidates[0].show.streams_30d".into())
            )
        );
        assert!(decode(r#"{"candidates": [{"id": "a", "kind": "ad"}]}"#).is_ok());
    }
}
