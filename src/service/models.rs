//! Served models: a bundle loaded once into everything scoring needs ([`Model`]: the
//! manifest, its [`Assembler`], its resolved [`Heads`], its tract [`Runtime`]), proven by
//! its golden cases before it is returned, and the set of models being served
//! ([`ServedModels`]).
//!
//! This module knows bundles and the runtime; it knows nothing of HTTP or the store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::bundle::{Bundle, BundleError, Heads, HeadsError, Manifest};
use crate::features::{Assembler, AssemblyError};
use crate::runtime::{Runtime, RuntimeConfig, RuntimeError};

use super::golden::{GoldenError, check_golden};

/// A bundle ready to score: its spec checked against its vocabularies and held as an
/// [`Assembler`], its heads resolved, its graph loaded into the runtime, its golden cases
/// passed. Built once at load and immutable afterwards.
#[derive(Debug)]
pub struct Model {
    pub manifest: Manifest,
    assembler: Assembler,
    heads: Heads,
    runtime: Runtime,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("feature spec: {0}")]
    Spec(#[from] AssemblyError),
    #[error("heads: {0}")]
    Heads(#[from] HeadsError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("golden check: {0}")]
    Golden(#[from] GoldenError),
}

impl Model {
    /// Reads, loads and checks the bundle in `dir`; see [`Model::load`].
    pub fn open(dir: &Path, config: &RuntimeConfig) -> Result<Model, ModelError> {
        Model::load(Bundle::read(dir)?, config)
    }

    /// Loads a bundle and proves it: the spec must assemble, every head must be read from
    /// the graph's output, and every golden case must score as the manifest says. A model
    /// that fails any of these is never returned, so it is never served.
    pub fn load(bundle: Bundle, config: &RuntimeConfig) -> Result<Model, ModelError> {
        let model = Model::load_unchecked(bundle, config)?;
        check_golden(&model)?;
        Ok(model)
    }

    /// Loads without the golden check: for computing golden cases of a fresh bundle.
    pub fn load_unchecked(bundle: Bundle, config: &RuntimeConfig) -> Result<Model, ModelError> {
        let Bundle {
            manifest,
            vocabularies,
            onnx,
            ..
        } = bundle;
        let assembler = Assembler::new(&manifest.features, &vocabularies)?;
        let heads = Heads::resolve(&manifest)?;
        let runtime = Runtime::load(&manifest, &onnx, config)?;
        Ok(Model {
            manifest,
            assembler,
            heads,
            runtime,
        })
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> u32 {
        self.manifest.version
    }

    pub fn assembler(&self) -> &Assembler {
        &self.assembler
    }

    pub fn heads(&self) -> &Heads {
        &self.heads
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
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
