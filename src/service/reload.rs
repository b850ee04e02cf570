//! Reload: finds the best version of each model under a directory, loads and proves it
//! ([`Model::open`]), and publishes the new set, at start, on a timer and on SIGHUP. A
//! bundle that fails never replaces the one being served, and is not retried until its
//! manifest changes.
//!
//! Blocking work (files, runtimes): callers run [`Reloader::reload`] on a blocking thread.
//! This module knows bundles on disk; it knows nothing of HTTP or signals.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::bundle::{self, BundleError, BundleLocation, MANIFEST_FILE};
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
    pub fn reload(&self, service: &Service) -> Result<ReloadReport, BundleError> {
        let mut failed = self
            .failed
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
                let stamp = manifest_stamp(&location.dir);
                if failed.get(&location.dir) == Some(&stamp) {
                    continue;
                }
                match Model::open(&location.dir, &self.runtime) {
                    Ok(model) => {
                        tracing::info!(model = name, version = location.version, dir = %location.dir.display(), "serving model");
                        service.metrics().observe_reload(ReloadOutcome::Loaded);
                        failed.remove(&location.dir);
                        report.loaded.push((name.to_string(), location.version));
                        next.insert(name.to_string(), Arc::new(model));
                        break;
                    }
                    Err(error) => {
                        tracing::error!(model = name, version = location.version, dir = %location.dir.display(), %error, "bundle refused; keeping the served model");
                        service.metrics().observe_reload(ReloadOutcome::Failed);
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
            service.publish(ServedModels {
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
