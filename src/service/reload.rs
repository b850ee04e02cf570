//! Reload: finds the best version of each model under a directory, loads and proves it
//! ([`Model::load`]), and publishes the new set, at start, on a timer and on SIGHUP. A
//! bundle that fails never replaces the one being served, and is not retried until its
//! content changes.
//!
//! Loading happens off the request path (the caller's blocking thread): the new model is
//! read, checked, golden-checked and its every plan warmed before the swap, and requests
//! in flight finish on the model they started with. Nothing a bundle holds can take the
//! reloader down: reads are bounded (see [`crate::bundle`]), a panic while loading is
//! caught and recorded as that bundle's failure, a bundle whose directory disagrees with
//! its manifest's name or version is refused, and at start the highest version that loads
//! is served, whichever versions above it fail.
//!
//! [`Reloader::rollback`] serves the version below the served one (the operator's undo,
//! `POST /admin/rollback`) and holds the version it replaced back from later passes.
//!
//! The default model (for requests naming none) is fixed by the first publication: the
//! configured one, or else the first name in order at start, never changed by a model
//! added later.
//!
//! Blocking work (files, runtimes): callers run [`Reloader::reload`] on a blocking thread.
//! This module knows bundles on disk; it knows nothing of HTTP or signals.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bundle::{self, Bundle, BundleError, BundleLocation};
use crate::runtime::RuntimeConfig;

use super::Service;
use super::metrics::ReloadOutcome;
use super::models::{Model, ServedModels};

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

/// What a rollback did: model `name` is served at version `to` instead of `from`;
/// `failed` lists the versions between them that did not load.
#[derive(Debug)]
pub struct Rollback {
    pub name: String,
    pub from: u32,
    pub to: u32,
    pub failed: Vec<LoadFailure>,
}

/// Why a rollback served nothing new (the served model stays).
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("no model named `{0}` is served")]
    UnknownModel(String),
    #[error("no model is served yet, so there is no default model to roll back")]
    NoDefault,
    #[error(
        "no version of `{name}` below {version} loads{}",
        describe_failures(failed)
    )]
    NothingEarlier {
        name: String,
        version: u32,
        failed: Vec<LoadFailure>,
    },
    #[error("listing bundles: {0}")]
    Bundle(#[from] BundleError),
}

fn describe_failures(failed: &[LoadFailure]) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let causes: Vec<String> = failed
        .iter()
        .map(|failure| format!("{}: {}", failure.version, failure.reason))
        .collect();
    format!(" ({})", causes.join("; "))
}

/// Finds, loads and publishes the best version of each model under a directory. Keeps
/// the bundles that failed (by a hash of their content) so that a broken bundle is not
/// reloaded and re-logged on every poll, only when it changes.
#[derive(Debug)]
pub struct Reloader {
    models_dir: PathBuf,
    runtime: RuntimeConfig,
    /// Held for a whole pass, which runs on a blocking thread and never across an
    /// `.await`: it also serializes passes (a poll and a SIGHUP at once).
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The configured default model, or the one fixed at the first publication.
    default_model: Option<String>,
    /// Refused (or rolled-back) bundle directories and the content hash they were refused
    /// with.
    failed: HashMap<PathBuf, u64>,
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
            runtime,
            state: Mutex::new(State {
                default_model,
                failed: HashMap::new(),
            }),
        }
    }

    /// One pass: for each model name, tries versions newer than the served one, highest
    /// first, and publishes the first that loads and passes its checks. Blocking (reads
    /// files, builds runtimes): call it from a blocking thread.
    pub fn reload(&self, service: &Service) -> Result<ReloadReport, BundleError> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let locations = bundle::discover(&self.models_dir)?;
        let current = service.models();
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
                if let Some(model) = self.try_load(service, &mut state, location, &mut report) {
                    report.loaded.push((name.to_string(), location.version));
                    next.insert(name.to_string(), Arc::new(model));
                    break;
                }
            }
        }
        if !report.loaded.is_empty() {
            publish(service, &mut state, next);
        }
        Ok(report)
    }

    /// Serves the version of model `name` (the default model when `None`) below the one
    /// served now: the highest lower version that loads and passes its checks, read from
    /// disk and proven like any other. The version rolled back from is then held back like
    /// a refused bundle: polls and reloads skip it until its content changes, while newer
    /// versions are still picked up. Blocking, like [`Reloader::reload`].
    pub fn rollback(
        &self,
        service: &Service,
        name: Option<&str>,
    ) -> Result<Rollback, RollbackError> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = service.models();
        let name = name
            .map(str::to_string)
            .or_else(|| state.default_model.clone())
            .ok_or(RollbackError::NoDefault)?;
        let served = current
            .models
            .get(&name)
            .ok_or_else(|| RollbackError::UnknownModel(name.clone()))?;
        let from = served.version();
        let mut versions: Vec<BundleLocation> = bundle::discover(&self.models_dir)?
            .into_iter()
            .filter(|location| location.name == name && location.version < from)
            .collect();
        versions.sort_by_key(|location| std::cmp::Reverse(location.version));
        let mut report = ReloadReport::default();
        for location in &versions {
            let Some(model) = self.try_load(service, &mut state, location, &mut report) else {
                continue;
            };
            let to = model.version();
            if !served.dir.as_os_str().is_empty() {
                state
                    .failed
                    .insert(served.dir.clone(), bundle::fingerprint(&served.dir));
            }
            let mut next = current.models.clone();
            next.insert(name.clone(), Arc::new(model));
            publish(service, &mut state, next);
            tracing::warn!(model = %name, from, to, "rolled back; the version rolled back from is held back until its content changes");
            return Ok(Rollback {
                name,
                from,
                to,
                failed: report.failed,
            });
        }
        Err(RollbackError::NothingEarlier {
            name,
            version: from,
            failed: report.failed,
        })
    }

    /// Loads the bundle at `location` unless it was refused with its present content;
    /// logs and counts the outcome, and records a failure in `report` and `state`.
    fn try_load(
        &self,
        service: &Service,
        state: &mut State,
        location: &BundleLocation,
        report: &mut ReloadReport,
    ) -> Option<Model> {
        let fingerprint = bundle::fingerprint(&location.dir);
        if state.failed.get(&location.dir) == Some(&fingerprint) {
            return None;
        }
        let started = Instant::now();
        match self.load(location) {
            Ok(model) => {
                tracing::info!(model = %location.name, version = location.version, dir = %location.dir.display(), took_ms = started.elapsed().as_millis() as u64, "serving model");
                service
                    .metrics()
                    .observe_reload(ReloadOutcome::Loaded, started.elapsed());
                state.failed.remove(&location.dir);
                Some(model)
            }
            Err(reason) => {
                tracing::error!(model = %location.name, version = location.version, dir = %location.dir.display(), error = %reason, "bundle refused; keeping the served model");
                service
                    .metrics()
                    .observe_reload(ReloadOutcome::Failed, started.elapsed());
                state.failed.insert(location.dir.clone(), fingerprint);
                report.failed.push(LoadFailure {
                    name: location.name.clone(),
                    version: location.version,
                    dir: location.dir.clone(),
                    reason,
                });
                None
            }
        }
    }

    /// Reads and proves the bundle at `location`; any failure, a panic included, is its
    /// reason.
    fn load(&self, location: &BundleLocation) -> Result<Model, String> {
        let loading = AssertUnwindSafe(|| -> Result<Model, String> {
            let bundle = Bundle::read(&location.dir).map_err(|error| error.to_string())?;
            let manifest = &bundle.manifest;
            if manifest.name != location.name || manifest.version != location.version {
                return Err(format!(
                    "the directory says {}/{}, the manifest {}/{}",
                    location.name, location.version, manifest.name, manifest.version
                ));
            }
            Model::load(bundle, &self.runtime).map_err(|error| format!("{error:#}"))
        });
        catch_unwind(loading).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            Err(format!("panicked while loading: {message}"))
        })
    }
}

/// Publishes `models`, fixing the default model at the first publication.
fn publish(service: &Service, state: &mut State, models: BTreeMap<String, Arc<Model>>) {
    if state.default_model.is_none() {
        state.default_model = models.keys().next().cloned();
        if let Some(name) = &state.default_model {
            tracing::info!(model = %name, "default model fixed until restart (--default-model chooses another)");
        }
    }
    service.publish(ServedModels {
        models,
        default_name: state.default_model.clone(),
    });
}
