//! The request log and the request metrics: every request, the fallback included, is
//! counted and timed by route and status and logged as one JSON line with its request id;
//! internal errors are logged here with their detail.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::service::respond::micros;

use super::error::InternalDetail;
use super::{ApiState, REQUEST_ID_HEADER};

/// Decrements the in-flight gauge however the request ends, a dropped connection too.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts and times every request by route and status, and logs it (JSON, with its
/// request id); internal errors are logged here with their detail.
pub(super) async fn observe(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let method = request.method().clone();
    let metrics = state.service.metrics();
    metrics.http_requests_in_flight.inc();
    let _in_flight = InFlight(&metrics.http_requests_in_flight);
    let started = Instant::now();
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    metrics
        .http_request_duration
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    let latency_us = micros(elapsed);
    span.in_scope(|| {
        if let Some(InternalDetail(detail)) = response.extensions().get::<InternalDetail>() {
            tracing::error!(status = status.as_u16(), latency_us, error = %detail, "request failed");
        } else if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), latency_us, "request answered");
        } else {
            tracing::info!(status = status.as_u16(), latency_us, "request answered");
        }
    });
    response
}
