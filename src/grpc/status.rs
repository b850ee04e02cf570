//! Failures as gRPC statuses: the one table from the HTTP error table's wire codes
//! ([`ErrorCode`]) to gRPC codes. Every status carries the wire code and the field in
//! its metadata (`podscore-error-code`, `podscore-error-field`); invalid arguments carry
//! a `google.rpc.BadRequest` naming the field, and shed calls a `google.rpc.RetryInfo`
//! (and `grpc-retry-pushback-ms`) asking the client to wait.

use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::RETRY_AFTER_SECONDS;
use crate::api::error::{ApiError, ErrorCode};
use crate::service::ServiceError;

/// The one table: the gRPC code of every wire code.
pub fn code(error: ErrorCode) -> Code {
    use ErrorCode::*;
    match error {
        MalformedJson | MalformedProtobuf | InvalidHeader | UnsupportedMediaType
        | NotAcceptable | InvalidTensor | Invalid(_) | UnknownModel => Code::InvalidArgument,
        BodyTooLarge | Overloaded | QueueWait => Code::ResourceExhausted,
        NotFound | ModelNotFound => Code::NotFound,
        MethodNotAllowed => Code::Unimplemented,
        NotReady => Code::Unavailable,
        BodyTimeout | DeadlineExceeded => Code::DeadlineExceeded,
        Internal => Code::Internal,
    }
}

/// The status of a service error; an unknown model is NOT_FOUND on the Open Inference
/// Protocol's service (as its servers answer) and INVALID_ARGUMENT on `Scorer`, as
/// `/score` answers 422.
pub fn service_status(error: ServiceError) -> Status {
    status(&ApiError::from(error))
}

/// The status of `error`: its code from [`code`], its message (generic for internal
/// errors, whose detail is logged), and its details.
pub fn status(error: &ApiError) -> Status {
    let wire = error.code();
    let (_, name) = wire.describe();
    let grpc = code(wire);
    let message = match error {
        ApiError::Service(ServiceError::Internal(detail)) => {
            tracing::error!(error = %detail, "internal error answering a gRPC call");
            "internal error".to_string()
        }
        other => other.to_string(),
    };
    let mut metadata = MetadataMap::new();
    metadata.insert("podscore-error-code", MetadataValue::from_static(name));
    let field = error.field().map(str::to_string);
    if let Some(value) = field.as_deref().and_then(|field| field.parse().ok()) {
        metadata.insert("podscore-error-field", value);
    }
    let mut details = ErrorDetails::new();
    match grpc {
        Code::InvalidArgument => {
            details.add_bad_request_violation(field.unwrap_or_default(), message.clone());
        }
        Code::ResourceExhausted | Code::Unavailable => {
            let wait = Duration::from_secs(RETRY_AFTER_SECONDS);
            details.set_retry_info(Some(wait));
            if let Ok(value) = (wait.as_millis().to_string()).parse() {
                metadata.insert("grpc-retry-pushback-ms", value);
            }
        }
        _ => {}
    }
    Status::with_error_details_and_metadata(grpc, message, details, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire code has a gRPC code; shed calls carry retry info, invalid ones the
    /// field that is wrong.
    #[test]
    fn every_wire_code_maps_and_carries_its_details() {
        for wire in ErrorCode::all() {
            let _ = code(wire);
        }
        let overloaded = status(&ApiError::from(ServiceError::Overloaded));
        assert_eq!(overloaded.code(), Code::ResourceExhausted);
        assert_eq!(
            overloaded
                .get_details_retry_info()
                .and_then(|info| info.retry_delay),
            Some(Duration::from_secs(RETRY_AFTER_SECONDS))
        );
        assert_eq!(
            overloaded.metadata().get("podscore-error-code").unwrap(),
            "overloaded"
        );
        let invalid = status(&ApiError::from(ServiceError::Invalid(
            crate::service::validate::InvalidField::new(
                crate::service::validate::InvalidReason::UnknownKind,
                "candidates[0].kind",
                "unknown kind",
            ),
        )));
        assert_eq!(invalid.code(), Code::InvalidArgument);
        let violations = invalid.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "candidates[0].kind");
        let queue_wait = status(&ApiError::from(ServiceError::QueueWait));
        assert_eq!(queue_wait.code(), Code::ResourceExhausted);
        assert!(queue_wait.get_details_retry_info().is_some());
        assert_eq!(
            status(&ApiError::from(ServiceError::DeadlineExceeded)).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            status(&ApiError::from(ServiceError::NotReady)).code(),
            Code::Unavailable
        );
    }
}
