//! Served models: a bundle loaded once into everything scoring needs ([`Model`]: the
//! manifest, its [`Assembler`], its resolved [`Heads`], its tract [`Runtime`]), proven by
//! its golden cases before it is returned, and the set of models being served
//! ([`ServedModels`]).
//!
//! This module knows bundles and the runtime; it knows nothing of HTTP or the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::{Bundle, BundleError, Heads, HeadsError, Manifest};
use crate::entities::{CandidateKind, CandidateView, ContextRecord, CreativeRecord, RequestView};
use crate::features::{Assembler, AssemblyError, Transform};
use crate::runtime::{Runtime, RuntimeConfig, RuntimeError};

use super::golden::{GoldenError, check_golden};

/// A bundle ready to score: its spec checked against its vocabularies and held as an
/// [`Assembler`], its heads resolved, its graph loaded into the runtime, its golden cases
/// passed. Built once at load and immutable afterwards.
#[derive(Debug)]
pub struct Model {
    pub manifest: Manifest,
    /// The directory it was read from (empty for a bundle built in memory).
    pub dir: PathBuf,
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
    #[error(
        "feature `{feature}`: vocabulary `{vocab}` has {vocab_rows} rows (with the unknown row), \
         its embedding table {table_rows}"
    )]
    VocabularyRows {
        feature: String,
        vocab: String,
        vocab_rows: usize,
        table_rows: usize,
    },
    #[error("smoke run of the plan for {rows} candidates: {reason}")]
    Smoke { rows: usize, reason: String },
}

impl Model {
    /// Reads, loads and checks the bundle in `dir`; see [`Model::load`].
    pub fn open(dir: &Path, config: &RuntimeConfig) -> Result<Model, ModelError> {
        Model::load(Bundle::read(dir)?, config)
    }

    /// Loads a bundle and proves it: the spec must assemble, every vocabulary must have
    /// its embedding table's rows, every head must be read from the graph's output, every
    /// golden case must score as the manifest says, and every plan (each size bucket and
    /// the symbolic one) must run on cold-start inputs with finite outputs, which also
    /// warms it before the model serves. A model that fails any of these is never
    /// returned, so it is never served.
    pub fn load(bundle: Bundle, config: &RuntimeConfig) -> Result<Model, ModelError> {
        let model = Model::load_unchecked(bundle, config)?;
        check_golden(&model)?;
        model.smoke_run()?;
        Ok(model)
    }

    /// Runs every plan once on all-unknown inputs and checks the outputs are finite.
    fn smoke_run(&self) -> Result<(), ModelError> {
        let context = ContextRecord::default();
        let creative = CreativeRecord::default();
        let request = self.assembler.request(&[RequestView {
            user: None,
            context: &context,
        }]);
        let mut sizes = self.runtime.buckets();
        // One past the largest bucket runs the symbolic plan.
        sizes.push(sizes.last().map_or(1, |largest| largest + 1));
        for rows in sizes {
            let smoke = |reason: String| ModelError::Smoke { rows, reason };
            let views = vec![
                CandidateView {
                    kind: CandidateKind::Ad,
                    show_id: None,
                    show: None,
                    episode_id: None,
                    episode: None,
                    creative: &creative,
                };
                rows
            ];
            let request = request.as_ref().map_err(|error| smoke(error.to_string()))?;
            let candidates = self
                .assembler
                .candidates(&views)
                .map_err(|error| smoke(error.to_string()))?;
            let logits = self
                .runtime
                .infer(request, &candidates)
                .map_err(|error| smoke(error.to_string()))?;
            if let Some(value) = logits.values.iter().find(|value| !value.is_finite()) {
                return Err(smoke(format!("a non-finite output ({value})")));
            }
        }
        Ok(())
    }

    /// Loads without the golden check: for computing golden cases of a fresh bundle.
    pub fn load_unchecked(bundle: Bundle, config: &RuntimeConfig) -> Result<Model, ModelError> {
        let Bundle {
            manifest,
            vocabularies,
            onnx,
            dir,
        } = bundle;
        let assembler = Assembler::new(&manifest.features, &vocabularies)?;
        let heads = Heads::resolve(&manifest)?;
        let runtime = Runtime::load(&manifest, &onnx, config)?;
        // A longer vocabulary would emit ids past the table (a Gather out of range); a
        // shorter one would silently turn known ids into cold starts.
        for spec in &manifest.features {
            let (Transform::Id { vocab } | Transform::IdBag { vocab, .. }) = &spec.transform else {
                continue;
            };
            let vocab_rows = vocabularies
                .get(vocab)
                .map_or(0, |vocabulary| vocabulary.len());
            let table_rows = runtime.table_rows(&spec.name).unwrap_or(0);
            if vocab_rows != table_rows {
                return Err(ModelError::VocabularyRows {
                    feature: spec.name.clone(),
                    vocab: vocab.clone(),
                    vocab_rows,
                    table_rows,
                });
            }
        }
        Ok(Model {
            manifest,
            dir,
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
    /// The model `name` asks for, or the default one (fixed at start, see
    /// [`super::Reloader`]).
    pub fn get(&self, name: Option<&str>) -> Option<&Arc<Model>> {
        let name = name.or(self.default_name.as_deref())?;
        self.models.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}
