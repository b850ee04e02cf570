//! The `serve` and `score` commands: flags in, a [`Service`] built from them, and the
//! server's lifecycle.
//!
//! [`build`] turns flags into a service with its models loaded (on a blocking thread:
//! loading proves every bundle by its golden cases) and the [`Reloader`] that keeps them
//! current; [`serve`] runs a router on a listener until a shutdown future resolves, so
//! that tests pass a port-0 listener and their own shutdown. `podscore score` calls the
//! same service directly, with no server: only the JSON codec and error rendering are the
//! API's.
//!
//! This module knows flags, signals and logging; routes and wire formats are `api`'s,
//! the pipeline is `service`'s.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};

use crate::api;
use crate::grpc;
use crate::service::validate::{DEFAULT_MAX_CANDIDATES, Limits};
use crate::service::{self, DEFAULT_STORE_TIMEOUT_MS, Incoming, Reloader, Service};
use crate::store::{FeatureStore, RedisArgs, RedisStore, SnapshotStore};

/// Where bundles live: the repository's shipped models.
pub const DEFAULT_MODELS_DIR: &str = "models";
/// The small demo snapshot shipped beside them, so that `podscore serve` works as cloned.
pub const DEFAULT_FEATURES_DIR: &str = "models/demo-features";
/// Port 8080 on every interface: the container convention, and what the deploy files use.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// How often the models directory is checked for new versions. Bundles change on a
/// training cadence (hours); half a minute is prompt without spending CPU on polling.
pub const DEFAULT_RELOAD_INTERVAL_S: u64 = 30;
/// `podscore score`'s deadline: offline there is no caller waiting on one; an hour bounds
/// a runaway.
const OFFLINE_TIMEOUT: Duration = Duration::from_secs(3_600);
/// `podscore score`'s store deadline: offline there is no caller's deadline, and a second
/// covers dialing Redis for the one lookup.
const OFFLINE_STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// Open connections at most. Each costs a file descriptor and a few KiB; an ad server's
/// pool to one replica is tens of connections, so 4096 leaves room for many clients and
/// health checkers while a flood of idle or slow connections cannot exhaust the process's
/// descriptors (the container's limit must exceed it). Connections past it are closed at
/// once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4_096;
/// Time to receive a request's headers, counted from when the connection starts waiting
/// for them: on a kept-alive connection that includes its idle time, so this is also the
/// idle keep-alive timeout (hyper runs one timer for both). Real clients send headers in
/// one packet and reuse a pooled connection within seconds; 10 s keeps a pool warm and
/// frees a half-sent header (slow loris) in 10 s instead of never.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// How long the listener keeps accepting after SIGTERM while `/readyz` answers 503: load
/// balancers probe every few seconds and take as long again to stop routing; 5 s matches
/// the deploy's preStop hook and the common probe period.
pub const DEFAULT_PRE_STOP_DELAY_MS: u64 = 5_000;
/// How long requests in flight get to finish once the listener closes: a request is due
/// within its 1 s deadline, so 15 s only waits out slow clients, and pre-stop plus drain
/// stay within Kubernetes' default 30 s grace period with the preStop hook's 5 s.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 15_000;
/// The admin listener's address: loopback only, so that reload and rollback are reached
/// from the host or pod itself (`kubectl port-forward` included) and never from the
/// network; 8081 sits beside the public 8080.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// Open admin connections at most: an operator and a script or two.
const ADMIN_MAX_CONNECTIONS: usize = 16;
/// Streams one HTTP/2 connection may carry at once: each is a request in flight, and the
/// admission line bounds the work behind them anyway; 100 is the least RFC 9113 advises.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Largest HTTP/2 header list: a request's headers are a few hundred bytes; 64 KiB
/// matches what HTTP/1 parsing accepts in practice, far below h2's 16 MiB default.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// The first bytes of every HTTP/2 connection with prior knowledge (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Pause between looks at a connection's first bytes while an HTTP/2 preface arrives in
/// pieces (rare: clients send it in one packet).
const PREFACE_PEEK_PAUSE: Duration = Duration::from_millis(5);
/// Pause after a failed `accept` (out of descriptors, say) before the next: retrying at
/// once would spin a core on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What is served: the bundles and the feature store, for `serve` and `score` alike.
#[derive(clap::Args, Debug, Clone)]
pub struct Sources {
    /// Root of the model bundles (`<name>/<version>/`); the highest valid version of each
    /// name is served.
    #[arg(long, env = "PODSCORE_MODELS", default_value = DEFAULT_MODELS_DIR)]
    pub models: PathBuf,
    /// Feature snapshot directory (Parquet) held in memory as the feature store.
    #[arg(long, env = "PODSCORE_FEATURES", default_value = DEFAULT_FEATURES_DIR)]
    pub features: PathBuf,
    /// Run without a feature store: every lookup misses, so requests must carry their
    /// features inline (golden requests, debugging).
    #[arg(long, env = "PODSCORE_NO_FEATURES", conflicts_with = "features")]
    pub no_features: bool,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The model that answers requests naming none; the first name in order if unset.
    #[arg(long = "default-model", env = "PODSCORE_DEFAULT_MODEL")]
    pub default_model: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Address to listen on.
    #[arg(long, env = "PODSCORE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Address of the gRPC port (`podscore.v1.Scorer`, the Open Inference Protocol's
    /// `GRPCInferenceService`); no gRPC unless set.
    #[arg(long, env = "PODSCORE_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// Most candidates in one request.
    #[arg(long, env = "PODSCORE_MAX_CANDIDATES", default_value_t = DEFAULT_MAX_CANDIDATES)]
    pub max_candidates: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "PODSCORE_MAX_BODY_BYTES", default_value_t = api::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Inference slots: requests decoded and scored at once (at least 1). Defaults to the
    /// number of CPUs.
    #[arg(long, env = "PODSCORE_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Requests that may wait for a slot beyond those holding one; past it, and when the
    /// expected wait exceeds a request's deadline, requests are answered 503 at once.
    #[arg(long, env = "PODSCORE_MAX_QUEUE", default_value_t = service::admission::DEFAULT_MAX_QUEUE)]
    pub max_queue: usize,
    /// Deadline of a request that sends no `x-request-timeout-ms`, and the longest one it
    /// may ask for, in milliseconds.
    #[arg(long, env = "PODSCORE_REQUEST_TIMEOUT_MS", default_value_t = api::DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// How long a feature-store lookup may take before the request goes on cold, in
    /// milliseconds.
    #[arg(long, env = "PODSCORE_STORE_TIMEOUT_MS", default_value_t = DEFAULT_STORE_TIMEOUT_MS)]
    pub store_timeout_ms: u64,
    /// Seconds between checks of the models directory for new versions; 0 turns polling
    /// off (SIGHUP still reloads).
    #[arg(long, env = "PODSCORE_RELOAD_INTERVAL_S", default_value_t = DEFAULT_RELOAD_INTERVAL_S)]
    pub reload_interval_s: u64,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The admin listener (`POST /admin/reload`, `POST /admin/rollback`).
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// Address (IP:port) of the admin listener; empty turns it off. An address other than
    /// loopback is refused unless a token is set.
    #[arg(long, env = "PODSCORE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// File holding the bearer token every admin request must carry
    /// (`Authorization: Bearer <token>`); surrounding whitespace is ignored.
    #[arg(long, env = "PODSCORE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Where the admin listener listens and the token it requires.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: std::net::SocketAddr,
    pub token: Option<String>,
}

impl AdminArgs {
    /// The admin listener these flags describe, or `None` when it is off. Refuses an
    /// unparsable address, an unreadable or empty token file, and an address other than
    /// loopback without a token.
    pub fn config(&self) -> anyhow::Result<Option<AdminConfig>> {
        if self.admin_listen.trim().is_empty() {
            return Ok(None);
        }
        let address: std::net::SocketAddr = self.admin_listen.parse().with_context(|| {
            format!(
                "--admin-listen {}: expected IP:port (127.0.0.1:8081)",
                self.admin_listen
            )
        })?;
        let token = match &self.admin_token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the admin token {}", path.display()))?;
                let token = text.trim();
                anyhow::ensure!(
                    !token.is_empty(),
                    "the admin token file {} is empty",
                    path.display()
                );
                Some(token.to_string())
            }
        };
        anyhow::ensure!(
            address.ip().is_loopback() || token.is_some(),
            "--admin-listen {address} is reachable from the network: give --admin-token-file too, or listen on loopback"
        );
        Ok(Some(AdminConfig { address, token }))
    }
}

/// Connection limits and the shutdown sequence.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Open connections at most; more are closed at once.
    #[arg(long, env = "PODSCORE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Milliseconds to receive a request's headers, idle keep-alive time included.
    #[arg(long, env = "PODSCORE_HEADER_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_TIMEOUT_MS)]
    pub header_timeout_ms: u64,
    /// Milliseconds a request body may take to arrive (the request's deadline may cut it
    /// shorter).
    #[arg(long, env = "PODSCORE_BODY_TIMEOUT_MS", default_value_t = api::DEFAULT_BODY_TIMEOUT_MS)]
    pub body_timeout_ms: u64,
    /// Milliseconds the listener keeps accepting after SIGTERM, with `/readyz` at 503.
    #[arg(long, env = "PODSCORE_PRE_STOP_DELAY_MS", default_value_t = DEFAULT_PRE_STOP_DELAY_MS)]
    pub pre_stop_delay_ms: u64,
    /// Milliseconds requests in flight get to finish after the listener closes.
    #[arg(long, env = "PODSCORE_DRAIN_TIMEOUT_MS", default_value_t = DEFAULT_DRAIN_TIMEOUT_MS)]
    pub drain_timeout_ms: u64,
}

impl ServerArgs {
    /// The connection limits these flags describe.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        }
    }
}

/// What bounds the server's connections.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// How long connections get to finish their requests once shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: Duration::from_millis(DEFAULT_HEADER_TIMEOUT_MS),
            drain_timeout: Duration::from_millis(DEFAULT_DRAIN_TIMEOUT_MS),
        }
    }
}

impl ServeArgs {
    /// The service's configuration these flags describe.
    pub fn service_config(&self) -> service::Config {
        service::Config {
            limits: Limits {
                max_candidates: self.max_candidates,
                ..Limits::default()
            },
            store_timeout: Duration::from_millis(self.store_timeout_ms),
            max_inflight: self
                .max_inflight
                .unwrap_or_else(service::default_max_inflight),
            max_queue: self.max_queue,
        }
    }

    /// The gRPC front end's configuration these flags describe: the same bounds as HTTP.
    pub fn grpc_config(&self) -> grpc::Config {
        grpc::Config {
            max_message_bytes: self.max_body_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }

    /// The HTTP front end's configuration these flags describe.
    pub fn api_config(&self) -> api::Config {
        api::Config {
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            body_timeout: Duration::from_millis(self.server.body_timeout_ms),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ScoreArgs {
    /// A `/score` request body (JSON).
    #[arg(long, env = "PODSCORE_REQUEST")]
    pub request: PathBuf,
    #[command(flatten)]
    pub sources: Sources,
}

/// The feature store `sources` name: Redis, none, or the snapshot. A Redis store dials on
/// its first lookup, so this needs a tokio runtime (and no Redis to start).
fn open_store(sources: &Sources) -> anyhow::Result<Arc<dyn FeatureStore>> {
    if let Some(config) = sources.redis.config()? {
        let store = Arc::new(RedisStore::open(&config).context("opening the redis feature store")?);
        tracing::info!(redis = %store.describe(), project = %config.mapping.project, "feature store: redis in feast's layout");
        // Dial now rather than on the first request's deadline; Redis being down is no
        // reason not to start (lookups go cold until it answers).
        let probe = Arc::clone(&store);
        tokio::spawn(async move {
            match probe.ping().await {
                Ok(()) => tracing::info!(redis = %probe.describe(), "redis answers"),
                Err(error) => {
                    tracing::warn!(redis = %probe.describe(), %error, "redis does not answer yet; lookups go cold until it does");
                }
            }
        });
        return Ok(store);
    }
    if sources.no_features {
        tracing::warn!(
            "no feature store: every lookup misses; requests must carry features inline"
        );
        return Ok(Arc::new(SnapshotStore::empty()));
    }
    let store = SnapshotStore::open(&sources.features).context("opening the feature snapshot")?;
    let (users, shows, episodes) = store.counts();
    tracing::info!(dir = %sources.features.display(), users, shows, episodes, "feature snapshot loaded");
    Ok(Arc::new(store))
}

/// A service over `sources` with `config`, and every model that loads published. Fails
/// when no model does, or the default model is not among them. Blocking (reads files,
/// builds runtimes); called within a tokio runtime, which a Redis store's connection
/// runs on.
pub fn build(
    sources: &Sources,
    config: service::Config,
) -> anyhow::Result<(Service, Arc<Reloader>)> {
    let store = open_store(sources)?;
    let service = Service::new(config, store).context("configuring the service")?;
    let reloader = Arc::new(Reloader::new(
        &sources.models,
        sources.default_model.clone(),
    ));
    let report = reloader
        .reload(&service)
        .with_context(|| format!("listing bundles in {}", sources.models.display()))?;
    let served = service.models();
    if served.is_empty() {
        let causes: Vec<String> = report
            .failed
            .iter()
            .map(|failure| format!("{}/{}: {}", failure.name, failure.version, failure.reason))
            .collect();
        anyhow::bail!(
            "no servable model under {}{}",
            sources.models.display(),
            if causes.is_empty() {
                String::new()
            } else {
                format!(" ({})", causes.join("; "))
            }
        );
    }
    if let Some(name) = &sources.default_model {
        anyhow::ensure!(
            served.models.contains_key(name),
            "default model `{name}` is not among the served models"
        );
    }
    Ok((service, reloader))
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then closes the
/// listener and gives the connections' requests in flight `limits.drain_timeout` to
/// finish; connections still open after it are dropped. Returns how many were.
///
/// Each connection speaks HTTP/1.1, or HTTP/2 when it opens with the HTTP/2 preface (h2c
/// with prior knowledge; there is no TLS here, so no ALPN, and hyper has no `Upgrade: h2c`).
/// Both share the connection bound, the drain, and every request-level limit (body size,
/// body timeout, deadline, admission). A connection must send its first bytes within the
/// header timeout; HTTP/1 then has hyper's header timeout (which is also its idle
/// keep-alive timeout), HTTP/2 a bounded stream count and header list, and keep-alive
/// pings at the header-timeout interval that close a connection whose peer is gone.
///
/// hyper's connections are driven directly rather than through `axum::serve`, which sets no
/// timer (so no header timeout) and no connection bound.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<usize> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    // A connection still waiting for its first bytes is not yet watched by `graceful`:
    // this tells it to close at once when the listener closes, not at its header timeout.
    let (closing, closed) = tokio::sync::watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; closing the new connection");
            drop(stream);
            continue;
        };
        // Latency over throughput: answers are small and must leave at once.
        let _ = stream.set_nodelay(true);
        let (http1, http2, watcher) = (http1.clone(), http2.clone(), graceful.watcher());
        let (service, header_timeout) =
            (TowerToHyperService::new(app.clone()), limits.header_timeout);
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let sniffed = tokio::select! {
                sniffed = opens_with_h2_preface(&stream, header_timeout) => sniffed,
                _ = closed.wait_for(|closing| *closing) => {
                    tracing::debug!(%peer, "closing before its first request: shutting down");
                    return;
                }
            };
            let Some(speaks_h2) = sniffed else {
                tracing::debug!(%peer, "no request within the header timeout; closing");
                return;
            };
            let io = TokioIo::new(stream);
            let ended = if speaks_h2 {
                watcher.watch(http2.serve_connection(io, service)).await
            } else {
                watcher.watch(http1.serve_connection(io, service)).await
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let open = limits.max_connections - connections.available_permits();
    tracing::info!(
        connections = open,
        "listener closed; draining requests in flight"
    );
    match tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await {
        Ok(()) => Ok(0),
        Err(_) => {
            let left = limits.max_connections - connections.available_permits();
            tracing::warn!(
                connections = left,
                "drain timeout reached; closing the connections still open"
            );
            Ok(left)
        }
    }
}

/// Whether `stream` opens with the HTTP/2 preface, looked at without consuming it; `None`
/// when nothing decisive arrives within `within` (a silent connection, dropped like a
/// half-sent header). Hand-written because hyper-util's auto builder, which sniffs the same
/// way, waits for those bytes with no timeout: a connection that sent nothing would be held
/// forever.
async fn opens_with_h2_preface(stream: &TcpStream, within: Duration) -> Option<bool> {
    let sniffing = async {
        let mut start = [0_u8; H2_PREFACE.len()];
        loop {
            let seen = stream.peek(&mut start).await.ok()?;
            if seen == 0 || start[..seen] != H2_PREFACE[..seen] {
                // Closed, or not HTTP/2: HTTP/1 reads (or ends) it.
                return Some(false);
            }
            if seen == H2_PREFACE.len() {
                return Some(true);
            }
            tokio::time::sleep(PREFACE_PEEK_PAUSE).await;
        }
    };
    tokio::time::timeout(within, sniffing).await.ok().flatten()
}

/// `podscore serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let admin = args.admin.config()?;
    runtime.block_on(async {
        let (sources, config) = (args.sources.clone(), args.service_config());
        let (service, reloader) = tokio::task::spawn_blocking(move || build(&sources, config))
            .await
            .context("loading models")??;
        if let Some(admin) = admin {
            let listener = TcpListener::bind(admin.address)
                .await
                .with_context(|| format!("listening on {} (admin)", admin.address))?;
            tracing::info!(address = %listener.local_addr()?, token = admin.token.is_some(), "admin listening");
            let app = api::admin::admin_app(service.clone(), Arc::clone(&reloader), admin.token);
            let limits = ServerLimits {
                max_connections: ADMIN_MAX_CONNECTIONS,
                ..args.server.limits()
            };
            // It ends with the process: nothing to drain that a caller would miss.
            tokio::spawn(async move {
                if let Err(error) = serve(listener, app, &limits, std::future::pending()).await {
                    tracing::error!(%error, "admin listener failed");
                }
            });
        }
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(address = %listener.local_addr()?, "serving");
        // One signal stops both front ends.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let when_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let grpc_server = match &args.grpc_listen {
            None => None,
            Some(address) => {
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("listening for gRPC on {address}"))?;
                tracing::info!(address = %listener.local_addr()?, "serving gRPC");
                Some(tokio::spawn(grpc::serve(
                    listener,
                    service.clone(),
                    args.grpc_config(),
                    when_stopped(),
                )))
            }
        };
        tokio::spawn(watch_models(
            service.clone(),
            reloader,
            Duration::from_secs(args.reload_interval_s),
        ));
        let mut signals = Signals::new().context("installing signal handlers")?;
        let pre_stop = Duration::from_millis(args.server.pre_stop_delay_ms);
        let draining = service.clone();
        let limits = args.server.limits();
        let serving = serve(
            listener,
            api::app(service, args.api_config()),
            &limits,
            async move {
                signals.next().await;
                draining.start_draining();
                tracing::info!(
                    pre_stop_ms = pre_stop.as_millis() as u64,
                    "shutdown signal: /readyz answers 503; accepting until the pre-stop delay ends"
                );
                // A second signal from here on exits at once.
                tokio::spawn(async move {
                    signals.next().await;
                    tracing::warn!("second shutdown signal: exiting without draining");
                    std::process::exit(SECOND_SIGNAL_EXIT);
                });
                tokio::time::sleep(pre_stop).await;
                // The gRPC port stops accepting with the HTTP one.
                let _ = stop.send(true);
            },
        );
        let dropped = serving.await.context("serving")?;
        if let Some(grpc_server) = grpc_server {
            // Its calls in flight get the same drain bound as HTTP's.
            match tokio::time::timeout(limits.drain_timeout, grpc_server).await {
                Ok(finished) => finished
                    .context("the gRPC server task failed")?
                    .context("serving gRPC")?,
                Err(_) => tracing::warn!("drain timeout reached; dropping gRPC calls in flight"),
            }
        }
        tracing::info!(dropped_connections = dropped, "shut down");
        Ok(())
    })
}

/// The exit status after a second shutdown signal: the conventional 128 + SIGTERM (15).
const SECOND_SIGNAL_EXIT: i32 = 143;

/// SIGTERM and ctrl-c (SIGINT), as one stream of shutdown requests.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Reloads on SIGHUP, and every `interval` unless it is zero.
async fn watch_models(service: Service, reloader: Arc<Reloader>, interval: Duration) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler; reload by polling only");
            None
        }
    };
    let mut ticker = (!interval.is_zero()).then(|| {
        // The first pass ran at start; the next is one interval later.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker
    });
    loop {
        let hangup_received = async {
            let received = match hangup.as_mut() {
                Some(signal) => signal.recv().await.is_some(),
                None => false,
            };
            if received {
                tracing::info!("SIGHUP: reloading models");
            } else {
                std::future::pending::<()>().await
            }
        };
        let ticked = async {
            match ticker.as_mut() {
                Some(ticker) => {
                    ticker.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = hangup_received => {}
            () = ticked => {}
        }
        let service = service.clone();
        let reloader = Arc::clone(&reloader);
        match tokio::task::spawn_blocking(move || reloader.reload(&service)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(error = format!("{error:#}"), "reload failed"),
            Err(error) => tracing::error!(%error, "reload task failed"),
        }
    }
}

/// JSON lines on stdout; `RUST_LOG` filters (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second initialization (tests) is harmless, so its error is ignored.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .try_init();
}

/// `podscore score`: one request through the same service as `POST /score`, printed as
/// the response body; an invalid request fails with the server's status and error body.
/// Only the JSON codec and the error rendering are the API's.
pub fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    let body = std::fs::read(&args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    let config = service::Config {
        // One request at a time, offline.
        max_inflight: 1,
        store_timeout: OFFLINE_STORE_TIMEOUT,
        ..service::Config::default()
    };
    let max_candidates = config.limits.max_candidates;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (service, _) = {
        let _entered = runtime.enter();
        build(&args.sources, config)?
    };
    let outcome = runtime.block_on(async {
        let deadline = api::extract::deadline_after(OFFLINE_TIMEOUT);
        let ticket = service.enter(deadline)?;
        let permit = service.wait_for_slot(ticket, deadline).await?;
        let started = Instant::now();
        let request = api::extract::decode_score_request(&body, max_candidates)?;
        let incoming = Incoming {
            request,
            decode: started.elapsed(),
            deadline,
            permit,
        };
        let response = service.score(incoming).await?;
        api::score::encode(&response)
    });
    let (output, _) = outcome.map_err(|error| {
        let (status, _) = error.describe();
        anyhow::anyhow!("{} {}", status.as_u16(), error.body())
    })?;
    println!("{}", String::from_utf8_lossy(&output));
    Ok(())
}
