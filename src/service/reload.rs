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
    /// Refused bundle directories and the content hash they were refused with.
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
                let fingerprint = bundle::fingerprint(&location.dir);
                if state.failed.get(&location.dir) == Some(&fingerprint) {
                    continue;
                }
                let started = Instant::now();
                match self.load(location) {
                    Ok(model) => {
                        tracing::info!(model = name, version = location.version, dir = %location.dir.display(), took_ms = started.elapsed().as_millis() as u64, "serving model");
                        service
                            .metrics()
                            .observe_reload(ReloadOutcome::Loaded, started.elapsed());
                        state.failed.remove(&location.dir);
                        report.loaded.push((name.to_string(), location.version));
                        next.insert(name.to_string(), Arc::new(model));
                        break;
                    }
                    Err(reason) => {
                        tracing::error!(model = name, version = location.version, dir = %location.dir.display(), error = %reason, "bundle refused; keeping the served model");
                        service
                            .metrics()
                            .observe_reload(ReloadOutcome::Failed, started.elapsed());
                        state.failed.insert(location.dir.clone(), fingerprint);
                        report.failed.push(LoadFailure {
                            name: name.to_string(),
                            version: location.version,
                            dir: location.dir.clone(),
                            reason,
                        });
                    }
                }
            }
        }
        if !report.loaded.is_empty() {
            if state.default_model.is_none() {
                state.default_model = next.keys().next().cloned();
                if let Some(name) = &state.default_model {
                    tracing::info!(model = %name, "default model fixed until restart (--default-model chooses another)");
                }
            }
            service.publish(ServedModels {
                models: next,
                default_name: state.default_model.clone(),
            });
        }
        Ok(report)
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
