//! The gRPC front end (tonic), on a port of its own: [`scorer`] serves
//! `podscore.v1.Scorer/Score`, [`inference`] the Open Inference Protocol's
//! `inference.GRPCInferenceService`. Both call the same service entry points as the HTTP
//! API ([`Service::enter`] in [`admit`] before the message is read, then
//! [`Service::wait_for_slot`], [`Service::score`], [`Service::infer_tensors`]), so
//! limits, deadlines, the admission line and the service's metrics are shared; [`status`]
//! maps failures to gRPC status codes in one table, keyed by the HTTP table's wire codes.
//!
//! This module knows gRPC and the generated types; the protobuf conversions of `/score`
//! are the API's (`api::protobuf`), the pipeline is the service's.

pub mod admit;
pub mod inference;
pub mod scorer;
pub mod status;

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::codegen::http::HeaderMap;
use tonic::transport::server::TcpIncoming;

use crate::api::extract::deadline_after;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::podscore::v1::scorer_server::ScorerServer;
use crate::service::Service;

/// The gRPC front end's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request message, in bytes (the HTTP body limit's counterpart).
    pub max_message_bytes: usize,
    /// Deadline of a call that sends no `grpc-timeout`, and the longest one it may ask
    /// for.
    pub request_timeout: Duration,
}

/// Serves both gRPC services on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let scorer = ScorerServer::new(scorer::Scorer::new(service.clone()))
        .max_decoding_message_size(config.max_message_bytes);
    let inference = GrpcInferenceServiceServer::new(inference::Inference::new(service.clone()))
        .max_decoding_message_size(config.max_message_bytes);
    let admission = admit::AdmitLayer {
        service: service.clone(),
        config: config.clone(),
    };
    tonic::transport::Server::builder()
        .layer(admission)
        .add_service(scorer)
        .add_service(inference)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// The call's deadline: now plus its `grpc-timeout`, capped by the configured request
/// timeout, which is also the default. A malformed `grpc-timeout` counts as absent, as
/// tonic's own server treats it.
pub fn deadline(headers: &HeaderMap, config: &Config) -> Instant {
    let asked = headers
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_timeout);
    deadline_after(asked.map_or(config.request_timeout, |timeout| {
        timeout.min(config.request_timeout)
    }))
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as
/// the gRPC over HTTP/2 specification writes it. Hand-written: tonic parses it only
/// inside its own timeout layer, which does not hand the deadline to the handler.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount * 3_600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// grpc-timeout values parse per unit; malformed ones do not.
    #[test]
    fn grpc_timeouts_parse_per_unit() {
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3_600)));
        assert_eq!(
            parse_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_timeout("123456789m"), None);
        assert_eq!(parse_timeout("m"), None);
        assert_eq!(parse_timeout("5x"), None);
        assert_eq!(parse_timeout("-5m"), None);
    }

    /// A call's deadline is its grpc-timeout, capped by the server's request timeout,
    /// which also stands in when the header is absent or malformed.
    #[test]
    fn the_deadline_is_the_shorter_of_the_header_and_the_server_timeout() {
        let config = Config {
            max_message_bytes: 1,
            request_timeout: Duration::from_secs(2),
        };
        let after = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert("grpc-timeout", value.parse().unwrap());
            }
            let before = Instant::now();
            let deadline = deadline(&headers, &config);
            (
                deadline.saturating_duration_since(before),
                Instant::now() - before,
            )
        };
        for (header, expected) in [
            (None, Duration::from_secs(2)),
            (Some("250m"), Duration::from_millis(250)),
            (Some("1n"), Duration::from_nanos(1)),
            (Some("1H"), Duration::from_secs(2)),
            (Some("5x"), Duration::from_secs(2)),
        ] {
            let (left, elapsed) = after(header);
            assert!(
                left >= expected && left <= expected + elapsed,
                "{header:?}: {left:?} for {expected:?}"
            );
        }
    }
}
