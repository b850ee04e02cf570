//! Every way an HTTP request can fail, and [`ErrorCode::describe`]: the one table of wire
//! codes and statuses. Codes are part of the API: the README's error table, the OpenAPI
//! document's `enum` and the tests read them from here.
//!
//! Client errors keep their status; internal ones become a generic 500 body, their detail
//! carried to the request log by [`InternalDetail`], never sent.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::service::ServiceError;
use crate::service::validate::{InvalidField, InvalidReason};

use super::RETRY_AFTER_SECONDS;
use super::protobuf::ProtobufError;

/// A wire error code. [`ErrorCode::describe`] gives each its status and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MalformedJson,
    MalformedProtobuf,
    InvalidHeader,
    BodyTooLarge,
    UnsupportedMediaType,
    NotAcceptable,
    /// A tensor of the Open Inference Protocol's path the model cannot take.
    InvalidTensor,
    /// A field of the request is invalid, for this reason.
    Invalid(InvalidReason),
    UnknownModel,
    NotFound,
    ModelNotFound,
    MethodNotAllowed,
    BodyTimeout,
    Overloaded,
    QueueWait,
    NotReady,
    DeadlineExceeded,
    Internal,
}

impl ErrorCode {
    /// Every code, in the order the README's table lists them.
    pub fn all() -> Vec<ErrorCode> {
        use ErrorCode::*;
        let invalid = InvalidReason::ALL.map(Invalid);
        [
            MalformedJson,
            MalformedProtobuf,
            InvalidHeader,
            BodyTooLarge,
            UnsupportedMediaType,
            NotAcceptable,
            InvalidTensor,
        ]
        .into_iter()
        .chain(invalid)
        .chain([
            UnknownModel,
            NotFound,
            ModelNotFound,
            MethodNotAllowed,
            BodyTimeout,
            Overloaded,
            QueueWait,
            NotReady,
            DeadlineExceeded,
            Internal,
        ])
        .collect()
    }

    /// The one table: status and wire code of every error.
    pub fn describe(self) -> (StatusCode, &'static str) {
        use ErrorCode::*;
        match self {
            MalformedJson => (StatusCode::BAD_REQUEST, "malformed_json"),
            MalformedProtobuf => (StatusCode::BAD_REQUEST, "malformed_protobuf"),
            InvalidHeader => (StatusCode::BAD_REQUEST, "invalid_header"),
            BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            NotAcceptable => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
            InvalidTensor => (StatusCode::BAD_REQUEST, "invalid_tensor"),
            Invalid(reason) => (StatusCode::UNPROCESSABLE_ENTITY, invalid_code(reason)),
            UnknownModel => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_model"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ModelNotFound => (StatusCode::NOT_FOUND, "model_not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            QueueWait => (StatusCode::SERVICE_UNAVAILABLE, "queue_wait"),
            NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The wire code of each reason a field is invalid (all answered 422).
fn invalid_code(reason: InvalidReason) -> &'static str {
    match reason {
        InvalidReason::MissingField => "missing_field",
        InvalidReason::WrongType => "wrong_type",
        InvalidReason::UnknownField => "unknown_field",
        InvalidReason::EmptyCandidates => "empty_candidates",
        InvalidReason::TooManyCandidates => "too_many_candidates",
        InvalidReason::UnknownKind => "unknown_kind",
        InvalidReason::NotFinite => "not_finite",
        InvalidReason::StringTooLong => "string_too_long",
        InvalidReason::ListTooLong => "list_too_long",
        InvalidReason::InvalidTimestamp => "invalid_timestamp",
        InvalidReason::WrongDimension => "wrong_dimension",
        InvalidReason::OutOfRange => "out_of_range",
        InvalidReason::InvalidValue => "invalid_value",
    }
}

/// The body of every error answer but the Open Inference Protocol's.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The wire code: one of the table's (the document lists them all).
    pub code: String,
    pub message: String,
    /// The path of the field the error is about (`candidates[3].kind`), or the header's
    /// name; null when the error is about no one field.
    pub field: Option<String>,
}

/// The Open Inference Protocol's error body: `{"error": "<message>"}` alone.
#[derive(Debug, Serialize, ToSchema)]
pub struct OipErrorBody {
    pub error: String,
}

/// Every way a request can fail over HTTP: the wire's own failures, and the service's.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedBody(String),
    #[error("malformed protobuf: {0}")]
    MalformedProtobuf(String),
    #[error("{message}")]
    InvalidHeader {
        header: &'static str,
        message: String,
    },
    #[error("unsupported content type {0}; send application/json or application/x-protobuf")]
    UnsupportedMediaType(String),
    #[error(
        "cannot answer in any type Accept lists ({0}); accept application/json or application/x-protobuf"
    )]
    NotAcceptable(String),
    #[error("request body over {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// A body that decodes as JSON but not as the request type.
    #[error("{0}")]
    Invalid(InvalidField),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("no model named `{0}` is served")]
    ModelNotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u128),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::MalformedBody(_) => ErrorCode::MalformedJson,
            ApiError::MalformedProtobuf(_) => ErrorCode::MalformedProtobuf,
            ApiError::NotAcceptable(_) => ErrorCode::NotAcceptable,
            ApiError::InvalidHeader { .. } => ErrorCode::InvalidHeader,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            ApiError::Invalid(invalid) => ErrorCode::Invalid(invalid.reason),
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::ModelNotFound(_) => ErrorCode::ModelNotFound,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::BodyTimeout(_) => ErrorCode::BodyTimeout,
            ApiError::Service(error) => match error {
                ServiceError::Invalid(invalid) => ErrorCode::Invalid(invalid.reason),
                ServiceError::InvalidTensor(_) => ErrorCode::InvalidTensor,
                ServiceError::UnknownModel(_) => ErrorCode::UnknownModel,
                ServiceError::NotReady => ErrorCode::NotReady,
                ServiceError::Overloaded => ErrorCode::Overloaded,
                ServiceError::QueueWait => ErrorCode::QueueWait,
                ServiceError::DeadlineExceeded => ErrorCode::DeadlineExceeded,
                ServiceError::Internal(_) => ErrorCode::Internal,
            },
        }
    }

    /// Status and wire code, from [`ErrorCode::describe`].
    pub fn describe(&self) -> (StatusCode, &'static str) {
        self.code().describe()
    }

    /// The field the error is about, as a path into the body (or the header's name).
    pub fn field(&self) -> Option<&str> {
        let invalid = match self {
            ApiError::Invalid(invalid) | ApiError::Service(ServiceError::Invalid(invalid)) => {
                invalid
            }
            ApiError::Service(ServiceError::UnknownModel(_)) => return Some("model"),
            ApiError::Service(ServiceError::InvalidTensor(invalid)) => {
                return Some(&invalid.tensor);
            }
            ApiError::InvalidHeader { header, .. } => return Some(header),
            _ => return None,
        };
        (!invalid.field.is_empty()).then_some(invalid.field.as_str())
    }

    /// The message a client sees: generic for internal errors, whose detail is logged.
    pub fn message(&self) -> String {
        match self {
            ApiError::Service(ServiceError::Internal(_)) => "internal error".to_string(),
            other => other.to_string(),
        }
    }

    /// The `{"error": {...}}` body.
    pub fn body(&self) -> serde_json::Value {
        let (_, code) = self.describe();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.message(),
                field: self.field().map(str::to_string),
            },
        };
        serde_json::to_value(body).unwrap_or_else(|_| json!({"error": {"code": code}}))
    }
}

impl From<ProtobufError> for ApiError {
    fn from(error: ProtobufError) -> ApiError {
        match error {
            ProtobufError::Malformed(error) => ApiError::MalformedProtobuf(error.to_string()),
            ProtobufError::Invalid(invalid) => ApiError::Invalid(invalid),
        }
    }
}

impl From<InvalidField> for ApiError {
    fn from(invalid: InvalidField) -> ApiError {
        ApiError::Invalid(invalid)
    }
}

/// Carries an internal error's detail to the request log, which writes it with the
/// request id.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.describe();
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if let ApiError::Service(ServiceError::Internal(detail)) = self {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wire codes are unique, and the README's error table lists every one under its
    /// status: the table here is the one source.
    #[test]
    fn every_code_is_unique_and_documented_under_its_status() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("### Errors")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("the README has an Errors section");
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::all() {
            let (status, name) = code.describe();
            assert!(seen.insert(name), "{name} twice");
            let row = section
                .lines()
                .find(|line| line.starts_with('|') && line.contains(&format!("`{name}`")))
                .unwrap_or_else(|| panic!("{name} is not in the README's error table"));
            let statuses = row.split('|').nth(1).unwrap_or_default();
            assert!(
                statuses.contains(status.as_str()),
                "{name}: the README says {statuses}, the table {status}"
            );
        }
    }
}
