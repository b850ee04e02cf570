//! `podscore healthcheck`: asks a running server on this host whether it is ready, and
//! exits 0 if it answers 200, non-zero with a one-line cause otherwise.
//!
//! Container images run it as their `HEALTHCHECK`, so that the runtime image needs no
//! shell and no curl. It probes the address the server listens on (`PODSCORE_LISTEN`,
//! shared with `podscore serve`), with an unspecified IP (`0.0.0.0`, `::`) replaced by
//! loopback. The request is hyper's HTTP/1 client, already linked for the server.
//!
//! This module knows nothing of the service's state: only a URL path and a status code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::StatusCode;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::serve::DEFAULT_LISTEN;

/// Readiness, not liveness: an orchestrator that routes by health should route to a
/// server with a model loaded, and a draining server should show as unhealthy.
pub const DEFAULT_PATH: &str = "/readyz";
/// Docker's own default check timeout is 30 s; a server on the same host that has not
/// answered in 2 s is not healthy for an ad server with a deadline of a second.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;

#[derive(clap::Args, Debug, Clone)]
pub struct HealthcheckArgs {
    /// The address the server listens on, as given to `podscore serve`; `0.0.0.0` and
    /// `::` are probed on loopback.
    #[arg(long, env = "PODSCORE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// The path to ask: `/readyz` (a model is served and the server is not draining) or
    /// `/healthz` (the process answers).
    #[arg(long, env = "PODSCORE_HEALTHCHECK_PATH", default_value = DEFAULT_PATH)]
    pub path: String,
    /// How long to wait for the whole answer, in milliseconds.
    #[arg(long, env = "PODSCORE_HEALTHCHECK_TIMEOUT_MS", default_value_t = DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
}

/// `podscore healthcheck`.
pub fn run(args: &HealthcheckArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.path.starts_with('/'),
        "--path must start with `/` (got `{}`)",
        args.path
    );
    let address = probe_address(&args.listen);
    let url = format!("http://{address}{}", args.path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = runtime
        .block_on(async {
            tokio::time::timeout(
                Duration::from_millis(args.timeout_ms),
                get_status(&address, &args.path),
            )
            .await
        })
        .map_err(|_| anyhow::anyhow!("{url}: no answer within {} ms", args.timeout_ms))?
        .with_context(|| format!("asking {url}"))?;
    anyhow::ensure!(status == StatusCode::OK, "{url} answered {status}");
    println!("{url}: {status}");
    Ok(())
}

/// Where to connect for a server listening on `listen`: loopback for an unspecified IP,
/// otherwise the address as given (a host name is resolved on connect).
pub fn probe_address(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(address) if address.ip().is_unspecified() => {
            let loopback = match address.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(loopback, address.port()).to_string()
        }
        _ => listen.to_string(),
    }
}

/// One `GET path` on a fresh connection; the status of the answer.
async fn get_status(address: &str, path: &str) -> anyhow::Result<StatusCode> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("starting HTTP/1")?;
    // The connection future drives the socket; it ends when the answer is read.
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(HOST, address)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("reading the answer")?;
    connection.abort();
    Ok(response.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unspecified listen addresses are probed on loopback of the same family and port;
    /// anything else is probed as given.
    #[test]
    fn probe_address_maps_unspecified_to_loopback() {
        for (listen, expected) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:9000", "[::1]:9000"),
            ("127.0.0.1:8081", "127.0.0.1:8081"),
            ("10.1.2.3:80", "10.1.2.3:80"),
            ("localhost:8080", "localhost:8080"),
        ] {
            assert_eq!(probe_address(listen), expected, "{listen}");
        }
    }
}
