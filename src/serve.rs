//! The `serve` and `score` commands: configuration, model loading and reloading, the
//! shared state, and the server's lifecycle.
//!
//! `run` parses nothing itself: clap fills [`ServeArgs`], [`build`] turns them into an
//! [`AppState`], and [`serve`] runs the router on a listener until a shutdown future
//! resolves, so that tests pass a port-0 listener and their own shutdown. Models are
//! loaded (and golden-checked) on blocking threads and published through an `ArcSwap`:
//! a request loads the set once and sees one model throughout, and a bundle that fails
//! never replaces the one being served.
//!
//! This module knows no routes or wire formats; those are `api`'s.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api;
use crate::bundle::{self, BundleLocation, MANIFEST_FILE};
use crate::metrics::{Metrics, ReloadOutcome};
use crate::runtime::RuntimeConfig;
use crate::scoring::{self, Limits, Model};
use crate::store::{FeatureStore, SnapshotStore};

/// Where bundles live: the repository's shipped models.
pub const DEFAULT_MODELS_DIR: &str = "models";
/// The small demo snapshot shipped beside them, so that `podscore serve` works as cloned.
pub const DEFAULT_FEATURES_DIR: &str = "models/demo-features";
/// Port 8080 on every interface: the container convention, and what the deploy files use.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// How often the models directory is checked for new versions. Bundles change on a
/// training cadence (hours); half a minute is prompt without spending CPU on polling.
pub const DEFAULT_RELOAD_INTERVAL_S: u64 = 30;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
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
    /// Address to listen on.
    #[arg(long, env = "PODSCORE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// The model that answers requests naming none; the first name in order if unset.
    #[arg(long = "default-model", env = "PODSCORE_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Most candidates in one request.
    #[arg(long, env = "PODSCORE_MAX_CANDIDATES", default_value_t = scoring::DEFAULT_MAX_CANDIDATES)]
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
    #[arg(long, env = "PODSCORE_STORE_TIMEOUT_MS", default_value_t = api::DEFAULT_STORE_TIMEOUT_MS)]
    pub store_timeout_ms: u64,
    /// Seconds between checks of the models directory for new versions; 0 turns polling
    /// off (SIGHUP still reloads).
    #[arg(long, env = "PODSCORE_RELOAD_INTERVAL_S", default_value_t = DEFAULT_RELOAD_INTERVAL_S)]
    pub reload_interval_s: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ScoreArgs {
    /// A `/score` request body (JSON).
    #[arg(long, env = "PODSCORE_REQUEST")]
    pub request: PathBuf,
    #[arg(long, env = "PODSCORE_MODELS", default_value = DEFAULT_MODELS_DIR)]
    pub models: PathBuf,
    #[arg(long, env = "PODSCORE_FEATURES", default_value = DEFAULT_FEATURES_DIR)]
    pub features: PathBuf,
    /// Score without a feature store: the request must carry its features inline.
    #[arg(long, env = "PODSCORE_NO_FEATURES", conflicts_with = "features")]
    pub no_features: bool,
    #[arg(long = "default-model", env = "PODSCORE_DEFAULT_MODEL")]
    pub default_model: Option<String>,
}

/// The models being served, by name. Replaced whole, never mutated.
#[derive(Debug, Default)]
pub struct ServedModels {
    pub models: BTreeMap<String, Arc<Model>>,
    pub default_name: Option<String>,
}

impl ServedModels {
    /// The model `name` asks for, or the default one.
    pub fn get(&self, name: Option<&str>) -> Option<&Arc<Model>> {
        match name {
            Some(name) => self.models.get(name),
            None => self
                .default_name
                .as_deref()
                .and_then(|name| self.models.get(name))
                .or_else(|| self.models.values().next()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// Bounds the inferences running at once. A permit is taken without waiting: when none
/// is left the request is shed (503) rather than queued, because a queued request only
/// adds latency for an ad server that has a deadline of its own.
#[derive(Debug, Clone)]
pub struct InferenceLimiter {
    semaphore: Arc<Semaphore>,
}

impl InferenceLimiter {
    pub fn new(slots: usize) -> InferenceLimiter {
        InferenceLimiter {
            semaphore: Arc::new(Semaphore::new(slots)),
        }
    }

    /// A slot, held until the permit drops; `None` when all are taken.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.semaphore).try_acquire_owned().ok()
    }
}

/// Everything a handler needs; cheap to clone (all `Arc`s).
#[derive(Debug, Clone)]
pub struct AppState {
    /// Loaded once per request (`load_full`), so one request sees one model set even if a
    /// reload swaps it meanwhile.
    pub models: Arc<ArcSwap<ServedModels>>,
    pub store: Arc<dyn FeatureStore>,
    pub metrics: Arc<Metrics>,
    pub inference: InferenceLimiter,
    pub config: Arc<api::Config>,
}

impl AppState {
    /// A state serving no model yet (not ready) with `store`.
    pub fn new(
        config: api::Config,
        store: Arc<dyn FeatureStore>,
        max_inflight: usize,
    ) -> anyhow::Result<AppState> {
        let metrics = Metrics::new().context("registering metrics")?;
        metrics.initialize_series();
        Ok(AppState {
            models: Arc::new(ArcSwap::from_pointee(ServedModels::default())),
            store,
            metrics: Arc::new(metrics),
            inference: InferenceLimiter::new(max_inflight),
            config: Arc::new(config),
        })
    }

    /// Publishes `models` and updates the model-info metric.
    pub fn publish(&self, models: ServedModels) {
        self.metrics.set_models(
            models
                .models
                .values()
                .map(|model| (model.name(), model.version())),
        );
        self.models.store(Arc::new(models));
    }
}

/// Why one bundle was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    pub name: String,
    pub version: u32,
    pub dir: PathBuf,
    pub reason: String,
}

/// What one pass over the models directory did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// `name` -> version newly served.
    pub loaded: Vec<(String, u32)>,
    pub failed: Vec<LoadFailure>,
}

/// Finds, loads and publishes the best version of each model under a directory. Keeps
/// the bundles that failed (by manifest modification time) so that a broken bundle is
/// not reloaded and re-logged on every poll, only when it changes.
#[derive(Debug)]
pub struct Reloader {
    models_dir: PathBuf,
    default_model: Option<String>,
    runtime: RuntimeConfig,
    /// Held for a whole pass, which runs on a blocking thread and never across an
    /// `.await`: it also serializes passes (a poll and a SIGHUP at once).
    failed: Mutex<HashMap<PathBuf, Option<SystemTime>>>,
}

impl Reloader {
    pub fn new(models_dir: &Path, default_model: Option<String>) -> Reloader {
        Reloader::with_runtime(models_dir, default_model, RuntimeConfig::default())
    }

    pub fn with_runtime(
        models_dir: &Path,
        default_model: Option<String>,
        runtime: RuntimeConfig,
    ) -> Reloader {
        Reloader {
            models_dir: models_dir.to_path_buf(),
            default_model,
            runtime,
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// One pass: for each model name, tries versions newer than the served one, highest
    /// first, and publishes the first that loads and passes its golden check. Blocking
    /// (reads files, builds runtimes): call it from a blocking thread.
    pub fn reload(&self, state: &AppState) -> anyhow::Result<ReloadReport> {
        let mut failed = self
            .failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let locations = bundle::discover(&self.models_dir)
            .with_context(|| format!("listing bundles in {}", self.models_dir.display()))?;
        let current = state.models.load_full();
        let mut by_name: BTreeMap<&str, Vec<&BundleLocation>> = BTreeMap::new();
        for location in &locations {
            by_name.entry(&location.name).or_default().push(location);
        }
        let mut next: BTreeMap<String, Arc<Model>> = current.models.clone();
        let mut report = ReloadReport::default();
        for (name, mut versions) in by_name {
            let served = current.models.get(name).map(|model| model.version());
            versions.sort_by_key(|location| std::cmp::Reverse(location.version));
            for location in versions {
                if served.is_some_and(|served| location.version <= served) {
                    break;
                }
                let stamp = manifest_stamp(&location.dir);
                if failed.get(&location.dir) == Some(&stamp) {
                    continue;
                }
                match Model::open(&location.dir, &self.runtime) {
                    Ok(model) => {
                        tracing::info!(model = name, version = location.version, dir = %location.dir.display(), "serving model");
                        state.metrics.observe_reload(ReloadOutcome::Loaded);
                        failed.remove(&location.dir);
                        report.loaded.push((name.to_string(), location.version));
                        next.insert(name.to_string(), Arc::new(model));
                        break;
                    }
                    Err(error) => {
                        tracing::error!(model = name, version = location.version, dir = %location.dir.display(), %error, "bundle refused; keeping the served model");
                        state.metrics.observe_reload(ReloadOutcome::Failed);
                        failed.insert(location.dir.clone(), stamp);
                        report.failed.push(LoadFailure {
                            name: name.to_string(),
                            version: location.version,
                            dir: location.dir.clone(),
                            reason: format!("{error:#}"),
                        });
                    }
                }
            }
        }
        if !report.loaded.is_empty() {
            state.publish(ServedModels {
                models: next,
                default_name: self.default_model.clone(),
            });
        }
        Ok(report)
    }
}

fn manifest_stamp(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(MANIFEST_FILE))
        .and_then(|meta| meta.modified())
        .ok()
}

/// The API configuration `args` describe.
pub fn api_config(args: &ServeArgs) -> api::Config {
    api::Config {
        limits: Limits {
            max_candidates: args.max_candidates,
            ..Limits::default()
        },
        max_body_bytes: args.max_body_bytes,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        store_timeout: Duration::from_millis(args.store_timeout_ms),
    }
}

/// Builds the state `args` describe: the snapshot store, then every model that loads.
/// Fails when no model does, or the default model is not among them.
pub fn build(args: &ServeArgs) -> anyhow::Result<(AppState, Arc<Reloader>)> {
    let store = if args.no_features {
        tracing::warn!(
            "no feature store: every lookup misses; requests must carry features inline"
        );
        SnapshotStore::empty()
    } else {
        let store = SnapshotStore::open(&args.features).context("opening the feature snapshot")?;
        let (users, shows, episodes) = store.counts();
        tracing::info!(dir = %args.features.display(), users, shows, episodes, "feature snapshot loaded");
        store
    };
    let max_inflight = args
        .max_inflight
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let state = AppState::new(api_config(args), Arc::new(store), max_inflight)?;
    let reloader = Arc::new(Reloader::new(&args.models, args.default_model.clone()));
    let report = reloader.reload(&state)?;
    let served = state.models.load_full();
    if served.is_empty() {
        let causes: Vec<String> = report
            .failed
            .iter()
            .map(|failure| format!("{}/{}: {}", failure.name, failure.version, failure.reason))
            .collect();
        anyhow::bail!(
            "no servable model under {}{}",
            args.models.display(),
            if causes.is_empty() {
                String::new()
            } else {
                format!(" ({})", causes.join("; "))
            }
        );
    }
    if let Some(name) = &args.default_model {
        anyhow::ensure!(
            served.models.contains_key(name),
            "default model `{name}` is not among the served models"
        );
    }
    Ok((state, reloader))
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes the requests in
/// flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::app(state))
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
        let args_for_build = args.clone();
        let (state, reloader) = tokio::task::spawn_blocking(move || build(&args_for_build))
            .await
            .context("loading models")??;
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(address = %listener.local_addr()?, "serving");
        tokio::spawn(watch_models(
            state.clone(),
            reloader,
            Duration::from_secs(args.reload_interval_s),
        ));
        serve(listener, state, shutdown_signal())
            .await
            .context("serving")?;
        tracing::info!("shut down");
        Ok(())
    })
}

/// Reloads on SIGHUP, and every `interval` unless it is zero.
async fn watch_models(state: AppState, reloader: Arc<Reloader>, interval: Duration) {
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
        let state = state.clone();
        let reloader = Arc::clone(&reloader);
        match tokio::task::spawn_blocking(move || reloader.reload(&state)).await {
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

/// `podscore score`: one request through the same path as `POST /score`, printed as the
/// response body.
pub fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    let body = std::fs::read(&args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    let serve_args = ServeArgs {
        models: args.models.clone(),
        features: args.features.clone(),
        no_features: args.no_features,
        listen: DEFAULT_LISTEN.into(),
        default_model: args.default_model.clone(),
        max_candidates: scoring::DEFAULT_MAX_CANDIDATES,
        max_body_bytes: usize::MAX,
        max_inflight: Some(1),
        // Offline there is no caller waiting on a deadline; an hour bounds a runaway.
        request_timeout_ms: 3_600_000,
        store_timeout_ms: api::DEFAULT_STORE_TIMEOUT_MS,
        reload_interval_s: 0,
    };
    let (state, _) = build(&serve_args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let output = runtime.block_on(api::score_offline(&state, &body))?;
    println!("{}", String::from_utf8_lossy(&output));
    Ok(())
}
