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
use tokio::net::TcpListener;

use crate::api;
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
    /// Most candidates in one request.
    #[arg(long, env = "PODSCORE_MAX_CANDIDATES", default_value_t = DEFAULT_MAX_CANDIDATES)]
    pub max_candidates: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "PODSCORE_MAX_BODY_BYTES", default_value_t = api::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Inferences running at once; more are answered 503 at once. Defaults to the number
    /// of CPUs.
    #[arg(long, env = "PODSCORE_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
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
        }
    }

    /// The HTTP front end's configuration these flags describe.
    pub fn api_config(&self) -> api::Config {
        api::Config {
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
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
    let service = Service::new(config, store).context("registering metrics")?;
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

/// Serves `app` on `listener` until `shutdown` resolves, then finishes the requests in
/// flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `podscore serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (sources, config) = (args.sources.clone(), args.service_config());
        let (service, reloader) = tokio::task::spawn_blocking(move || build(&sources, config))
            .await
            .context("loading models")??;
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(address = %listener.local_addr()?, "serving");
        tokio::spawn(watch_models(
            service.clone(),
            reloader,
            Duration::from_secs(args.reload_interval_s),
        ));
        serve(
            listener,
            api::app(service, args.api_config()),
            shutdown_signal(),
        )
        .await
        .context("serving")?;
        tracing::info!("shut down");
        Ok(())
    })
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

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing requests in flight");
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (service, _) = {
        let _entered = runtime.enter();
        build(&args.sources, config)?
    };
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        let request = api::extract::decode_json(&body)?;
        let incoming = Incoming {
            request,
            decode: started.elapsed(),
            deadline: api::extract::deadline_after(OFFLINE_TIMEOUT),
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
