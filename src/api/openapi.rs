//! `GET /openapi.json`: the API's OpenAPI document. Its paths and schemas are written by
//! hand (`openapi.json` beside this file); its error codes come from the one table
//! ([`ErrorCode`]): the `code` enum lists them all, and each error response lists those
//! of its status under `x-error-codes`.

use std::sync::LazyLock;

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ErrorCode;

const HAND_WRITTEN: &str = include_str!("openapi.json");

/// The served document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(document);

pub(super) async fn openapi() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// The hand-written document with the table's codes filled in.
fn document() -> String {
    let mut document: Value = match serde_json::from_str(HAND_WRITTEN) {
        Ok(document) => document,
        // A unit test parses the file; this branch is unreachable in a tested build.
        Err(error) => return json!({"error": error.to_string()}).to_string(),
    };
    let names: Vec<&str> = ErrorCode::all()
        .into_iter()
        .map(|code| code.describe().1)
        .collect();
    if let Some(code) = document
        .pointer_mut("/components/schemas/Error/properties/error/properties/code")
        .and_then(Value::as_object_mut)
    {
        code.insert("enum".into(), json!(names));
    }
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for responses in operation
                .values_mut()
                .filter_map(|operation| operation.get_mut("responses"))
                .filter_map(Value::as_object_mut)
            {
                for (status, response) in responses.iter_mut() {
                    let codes: Vec<&str> = ErrorCode::all()
                        .into_iter()
                        .map(|code| code.describe())
                        .filter(|(code_status, _)| code_status.as_str() == status)
                        .map(|(_, name)| name)
                        .collect();
                    if let (false, Some(response)) = (codes.is_empty(), response.as_object_mut()) {
                        response.insert("x-error-codes".into(), json!(codes));
                    }
                }
            }
        }
    }
    document.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The served OpenAPI document is valid JSON naming every route, with the error
    /// codes of the one table: all of them in the `code` enum, and on each error response
    /// those of its status.
    #[test]
    fn openapi_document_lists_every_route_and_code() {
        let document: serde_json::Value = serde_json::from_str(&document()).unwrap();
        assert!(document["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/score",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/models",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/{name}",
            "/openapi.json",
        ] {
            assert!(document["paths"].get(path).is_some(), "{path} missing");
        }
        let codes: Vec<&str> = ErrorCode::all()
            .into_iter()
            .map(|code| code.describe().1)
            .collect();
        assert_eq!(
            document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
                ["enum"],
            serde_json::json!(codes)
        );
        assert_eq!(
            document["paths"]["/score"]["post"]["responses"]["503"]["x-error-codes"],
            serde_json::json!(["overloaded", "queue_wait", "not_ready"])
        );
    }
}
