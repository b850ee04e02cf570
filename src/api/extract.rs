//! Extractors: a JSON body decoded with every rejection in the API's error format
//! (syntax errors 400, type errors 422 with the field's path), and the request's
//! deadline from `x-request-timeout-ms`.

use std::time::{Duration, Instant};

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::service::validate::{InvalidField, InvalidReason};

use super::error::ApiError;
use super::{ApiState, REQUEST_TIMEOUT_HEADER};

/// A JSON body: content type checked, size bounded, syntax and then types checked, with
/// every rejection in the API's error format. `decode` is the time spent parsing.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub decode: Duration,
}

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        match content_type.as_deref() {
            Some(value) if is_json(value) => {}
            Some(value) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "`{}`",
                    truncate(value, 64)
                )));
            }
            None => return Err(ApiError::UnsupportedMediaType("(none)".into())),
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::BodyTooLarge {
                            limit: state.config.max_body_bytes,
                        }
                    } else {
                        ApiError::MalformedBody(rejection.body_text())
                    }
                })?;
        let started = Instant::now();
        let value = decode_json(&bytes)?;
        Ok(JsonBody {
            value,
            decode: started.elapsed(),
        })
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// At most `max` bytes of `text`, cut at a character boundary: what error messages echo.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Parses `bytes` as `T`. Syntax is checked first, so that broken JSON is a 400 whatever
/// the types say; then a type error is a 422 naming the field's path (`candidates[3].kind`).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(error) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return Err(ApiError::MalformedBody(bare_message(&error)));
    }
    // serde would read a struct from an array of its fields; a body is an object.
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::Invalid(InvalidField::new(
            InvalidReason::WrongType,
            "",
            "the body must be a JSON object",
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = bare_message(error.inner());
        ApiError::Invalid(classify(if path == "." { "" } else { &path }, message))
    })
}

/// serde_json's message without its ` at line L column C` suffix: the field path says
/// where, in terms a client can act on.
fn bare_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(position) if error.line() > 0 => text[..position].to_string(),
        _ => text,
    }
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
