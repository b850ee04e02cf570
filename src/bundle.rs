//! Model bundles on disk: `models/<name>/<version>/` holding `model.onnx`,
//! `manifest.json`, `vocab/<name>.txt` and, for bundles that can be trained further,
//! `weights.safetensors` (the trainer's state; the server never reads it).
//!
//! The manifest is everything a consumer needs to feed and read the graph: the feature
//! spec, the heads and their calibration, the architecture, and golden cases. This module
//! reads and writes bundles and finds the newest valid version; it knows nothing of tract,
//! candle or HTTP.
//!
//! Reading is bounded so that no bundle can take its reader down: every file must be a
//! regular file whose real path lies inside the bundle (no symlink to `/dev/zero`, no
//! FIFO, no device), within a size cap, and vocabulary names must be plain names.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::entities::CandidateKind;
use crate::features::{FeatureSpec, Vocabularies, Vocabulary};
use crate::graph::OUTPUT_NAME;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MODEL_FILE: &str = "model.onnx";
pub const VOCAB_DIR: &str = "vocab";
/// Largest manifest read: feature specs and golden cases take tens of KiB; 16 MiB leaves
/// room for growth and nothing for abuse.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest graph read: the shipped one is 3.6 MB; 512 MiB holds embedding tables of
/// millions of ids and stops a file that never ends.
pub const MAX_MODEL_BYTES: u64 = 512 << 20;
/// Largest vocabulary file: 64 MiB holds millions of ids.
pub const MAX_VOCAB_BYTES: u64 = 64 << 20;
/// Longest vocabulary name: names are short words (`show`, `campaign`).
const MAX_VOCAB_NAME_BYTES: usize = 64;

/// The training state beside the graph: what `podscore finetune` continues from. The
/// graph is the served form (batch norm folded, tables stacked), not a training state.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// The response field a head fills: one of the four every `/score` response carries, or
/// a field the manifest names for an objective added by fine-tuning (`video_follow`),
/// which the server returns beside the four for every candidate (null for kinds its head
/// does not serve). The server knows the four names; the others come from the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResponseField {
    Stream,
    Click,
    Like,
    Follow,
    /// A manifest-named field; the name passed [`ResponseField::parse`].
    Objective(String),
}

/// Keys a candidate's scores already use: a manifest-named field must not shadow them.
const RESERVED_FIELD_NAMES: [&str; 3] = ["id", "kind", "cold_start"];
/// Long enough for a descriptive objective, short enough for a metric label value.
const MAX_FIELD_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldNameError {
    #[error(
        "`{0}` is not a response field name: 1 to {MAX_FIELD_NAME_LEN} characters, lowercase \
         ASCII letters, digits and `_`, starting with a letter"
    )]
    Invalid(String),
    #[error("`{0}` is a key every candidate's scores already have")]
    Reserved(String),
}

impl ResponseField {
    /// The fields every response carries, whatever the model.
    pub const FIXED: [ResponseField; 4] = [
        ResponseField::Stream,
        ResponseField::Click,
        ResponseField::Like,
        ResponseField::Follow,
    ];

    /// The field called `name`: one of the fixed four, or a valid objective name.
    pub fn parse(name: &str) -> Result<ResponseField, FieldNameError> {
        match name {
            "stream" => Ok(ResponseField::Stream),
            "click" => Ok(ResponseField::Click),
            "like" => Ok(ResponseField::Like),
            "follow" => Ok(ResponseField::Follow),
            reserved if RESERVED_FIELD_NAMES.contains(&reserved) => {
                Err(FieldNameError::Reserved(name.to_string()))
            }
            _ => {
                let mut bytes = name.bytes();
                let valid = name.len() <= MAX_FIELD_NAME_LEN
                    && bytes.next().is_some_and(|first| first.is_ascii_lowercase())
                    && bytes.all(|byte| {
                        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'
                    });
                if valid {
                    Ok(ResponseField::Objective(name.to_string()))
                } else {
                    Err(FieldNameError::Invalid(name.to_string()))
                }
            }
        }
    }

    /// The field's key in a response (and its metric label value).
    pub fn name(&self) -> &str {
        match self {
            ResponseField::Stream => "stream",
            ResponseField::Click => "click",
            ResponseField::Like => "like",
            ResponseField::Follow => "follow",
            ResponseField::Objective(name) => name,
        }
    }

    /// Position in [`ResponseField::FIXED`]; `None` for a manifest-named field.
    pub fn fixed_index(&self) -> Option<usize> {
        match self {
            ResponseField::Stream => Some(0),
            ResponseField::Click => Some(1),
            ResponseField::Like => Some(2),
            ResponseField::Follow => Some(3),
            ResponseField::Objective(_) => None,
        }
    }
}

impl std::fmt::Display for ResponseField {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

impl Serialize for ResponseField {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ResponseField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        ResponseField::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// Platt scaling on the head's logit: `p = sigmoid(slope * logit + intercept)`. Fitted on
/// natural-distribution validation data, it undoes the base-rate shift that
/// source-balanced sampling causes. Identity is slope 1, intercept 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub method: String,
    pub slope: f64,
    pub intercept: f64,
}

impl Calibration {
    pub fn identity() -> Calibration {
        Calibration {
            method: "platt".into(),
            slope: 1.0,
            intercept: 0.0,
        }
    }

    pub fn probability(&self, logit: f32) -> f64 {
        sigmoid(self.slope * f64::from(logit) + self.intercept)
    }
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadSpec {
    /// `promo_stream`, `ad_stream`, `click`, `like`, `follow`.
    pub name: String,
    /// The output tensor and the column of this head in it.
    pub output: String,
    pub index: usize,
    /// Candidate kinds whose `field` this head fills.
    pub kinds: Vec<CandidateKind>,
    pub field: ResponseField,
    /// The head's Platt scaling, for every kind it serves that `calibration_by_kind` does
    /// not name.
    pub calibration: Calibration,
    /// Platt scaling fitted on one kind's validation rows, for a head serving several
    /// kinds: one head's logits need not mean the same probability for an ad as for a
    /// promotion (their base rates differ about fourfold, and a single-source variant has
    /// never seen the other kind), and an auction ranking ads by probability per unit
    /// cost needs the ad's own. Absent from older manifests, which calibrate per head.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calibration_by_kind: BTreeMap<CandidateKind, Calibration>,
}

impl HeadSpec {
    /// The calibration this head applies to candidates of `kind`.
    pub fn calibration_for(&self, kind: CandidateKind) -> &Calibration {
        self.calibration_by_kind
            .get(&kind)
            .unwrap_or(&self.calibration)
    }
}

/// Shape of the network; weights live in the ONNX file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Width of every embedding table.
    pub embedding_dim: usize,
    /// Shared encoder layer widths; the first is split into request and candidate parts.
    pub encoder: Vec<usize>,
    /// Hidden widths of each head's tower (the final 1-wide layer is implied).
    pub tower: Vec<usize>,
}

/// The calibrated probabilities of one candidate by response field: what `/score`
/// answers for it and what a golden case expects. A field is `None` when the model has
/// no head filling it for the candidate's kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldScores {
    pub stream: Option<f64>,
    pub click: Option<f64>,
    pub like: Option<f64>,
    pub follow: Option<f64>,
    /// Manifest-named fields, beside the four (absent in bundles without any).
    #[serde(flatten)]
    pub objectives: BTreeMap<String, Option<f64>>,
}

impl FieldScores {
    pub fn get(&self, field: &ResponseField) -> Option<f64> {
        match field {
            ResponseField::Stream => self.stream,
            ResponseField::Click => self.click,
            ResponseField::Like => self.like,
            ResponseField::Follow => self.follow,
            ResponseField::Objective(name) => self.objectives.get(name).copied().flatten(),
        }
    }

    pub fn set(&mut self, field: &ResponseField, value: Option<f64>) {
        match field {
            ResponseField::Stream => self.stream = value,
            ResponseField::Click => self.click = value,
            ResponseField::Like => self.like = value,
            ResponseField::Follow => self.follow = value,
            ResponseField::Objective(name) => {
                self.objectives.insert(name.clone(), value);
            }
        }
    }
}

/// A request in the `/score` JSON format, with every feature inline so that it does not
/// depend on a feature store, and what the bundle must answer for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenCase {
    pub request: serde_json::Value,
    pub expected: Vec<FieldScores>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: u32,
    pub created_at: String,
    /// Trainer settings: variant, mask, promotion share, learning rate, seeds, ...
    pub settings: serde_json::Value,
    /// What it was trained on: world, rows per source, split days, base rates.
    pub data_summary: serde_json::Value,
    /// Training and validation metrics.
    pub metrics: serde_json::Value,
    pub architecture: Architecture,
    pub features: Vec<FeatureSpec>,
    pub heads: Vec<HeadSpec>,
    pub golden: Vec<GoldenCase>,
}

impl Manifest {
    /// The head that fills `field` for candidates of `kind`, if the bundle has one.
    /// [`Heads::resolve`] checks that there is at most one.
    pub fn head_for(&self, kind: CandidateKind, field: &ResponseField) -> Option<&HeadSpec> {
        self.heads
            .iter()
            .find(|head| head.field == *field && head.kinds.contains(&kind))
    }

    /// Heads sorted by their output column, checked to fill columns `0..heads` of the
    /// graph's one output exactly once.
    pub fn heads_by_column(&self) -> Result<Vec<&HeadSpec>, HeadsError> {
        let mut heads: Vec<&HeadSpec> = self.heads.iter().collect();
        heads.sort_by_key(|head| head.index);
        if heads.is_empty() {
            return Err(HeadsError::NoHeads);
        }
        for (column, head) in heads.iter().enumerate() {
            if head.index != column {
                return Err(HeadsError::Columns {
                    heads: heads.len(),
                    head: head.name.clone(),
                    index: head.index,
                });
            }
            if head.output != OUTPUT_NAME {
                return Err(HeadsError::Output {
                    head: head.name.clone(),
                    output: head.output.clone(),
                });
            }
        }
        Ok(heads)
    }

    /// Vocabulary names the features refer to.
    pub fn vocabulary_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .features
            .iter()
            .filter_map(|feature| match &feature.transform {
                crate::features::Transform::Id { vocab }
                | crate::features::Transform::IdBag { vocab, .. } => Some(vocab.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeadsError {
    #[error("the manifest has no heads")]
    NoHeads,
    #[error("head indices must be 0..{heads} without gaps or repeats; `{head}` has {index}")]
    Columns {
        heads: usize,
        head: String,
        index: usize,
    },
    #[error("head `{head}` reads output `{output}`, the graph has only `{OUTPUT_NAME}`")]
    Output { head: String, output: String },
    #[error("heads `{first}` and `{second}` both fill `{field}` for {kind:?} candidates")]
    Ambiguous {
        first: String,
        second: String,
        kind: CandidateKind,
        field: ResponseField,
    },
    #[error("a logits row has {got} values, the heads fill {expected}")]
    RowWidth { expected: usize, got: usize },
    #[error("head `{head}` gives a non-finite probability for logit {logit}")]
    NotFinite { head: String, logit: f32 },
}

/// The column and calibration of the head that fills one field for one kind.
#[derive(Debug, Clone, PartialEq)]
struct HeadColumn {
    name: String,
    index: usize,
    calibration: Calibration,
}

/// Which head fills each response field for each candidate kind, with its calibration,
/// resolved once from a manifest. [`Heads::probability`] is the one rule turning a row
/// of the graph's output into served probabilities: the server, the evaluator and the
/// trainer's golden cases all call it.
#[derive(Debug, Clone, PartialEq)]
pub struct Heads {
    /// Values in one row of the graph's output.
    width: usize,
    /// The fields the response carries: the fixed four, then the manifest-named ones in
    /// head order.
    fields: Vec<ResponseField>,
    /// `columns[position in fields][kind.index()]`.
    columns: Vec<[Option<HeadColumn>; CandidateKind::ALL.len()]>,
}

impl Heads {
    /// Checks that the heads fill the output's columns exactly once and that no two fill
    /// the same field for the same kind, then resolves every (kind, field) pair.
    pub fn resolve(manifest: &Manifest) -> Result<Heads, HeadsError> {
        let heads = manifest.heads_by_column()?;
        let width = heads.len();
        let mut fields = ResponseField::FIXED.to_vec();
        let mut columns: Vec<[Option<HeadColumn>; CandidateKind::ALL.len()]> =
            vec![Default::default(); fields.len()];
        for head in heads {
            let position = match fields.iter().position(|field| *field == head.field) {
                Some(position) => position,
                None => {
                    fields.push(head.field.clone());
                    columns.push(Default::default());
                    fields.len() - 1
                }
            };
            for &kind in &head.kinds {
                let slot = &mut columns[position][kind.index()];
                if let Some(first) = slot {
                    return Err(HeadsError::Ambiguous {
                        first: first.name.clone(),
                        second: head.name.clone(),
                        kind,
                        field: head.field.clone(),
                    });
                }
                *slot = Some(HeadColumn {
                    name: head.name.clone(),
                    index: head.index,
                    calibration: head.calibration_for(kind).clone(),
                });
            }
        }
        Ok(Heads {
            width,
            fields,
            columns,
        })
    }

    /// Values in one row of the graph's output.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Every field a response from this model carries: the fixed four, then the
    /// manifest-named ones.
    pub fn fields(&self) -> &[ResponseField] {
        &self.fields
    }

    /// The manifest-named fields alone, in head order.
    pub fn objective_fields(&self) -> &[ResponseField] {
        &self.fields[ResponseField::FIXED.len()..]
    }

    /// The calibrated probability that fills `field` for a candidate of `kind`, from its
    /// row of the graph's output; `None` when no head fills that field for that kind.
    pub fn probability(
        &self,
        kind: CandidateKind,
        field: &ResponseField,
        logits: &[f32],
    ) -> Result<Option<f64>, HeadsError> {
        if logits.len() != self.width {
            return Err(HeadsError::RowWidth {
                expected: self.width,
                got: logits.len(),
            });
        }
        let position = match field.fixed_index() {
            Some(index) => index,
            None => match self.fields.iter().position(|known| known == field) {
                Some(position) => position,
                None => return Ok(None),
            },
        };
        let Some(head) = &self.columns[position][kind.index()] else {
            return Ok(None);
        };
        let logit = logits[head.index];
        let probability = head.calibration.probability(logit);
        if !probability.is_finite() {
            return Err(HeadsError::NotFinite {
                head: head.name.clone(),
                logit,
            });
        }
        Ok(Some(probability))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: no bundle found (expected <name>/<version>/manifest.json)")]
    NotFound { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A bundle read from disk: manifest, vocabularies and the ONNX bytes.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vocabularies: Vocabularies,
    pub onnx: Vec<u8>,
}

impl Bundle {
    /// Reads the bundle in `dir`, every file bounded (see the module's doc).
    pub fn read(dir: &Path) -> Result<Bundle, BundleError> {
        let root = dir.canonicalize().map_err(io_error(dir))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = read_file(&root, &manifest_path, MAX_MANIFEST_BYTES)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| BundleError::Manifest {
                path: manifest_path.clone(),
                source,
            })?;
        let mut vocabularies = Vocabularies::new();
        for name in manifest.vocabulary_names() {
            if !is_plain_name(&name) {
                return Err(BundleError::Invalid {
                    path: manifest_path,
                    reason: format!(
                        "vocabulary name `{}` is not a plain name (letters, digits, `_` and `-`)",
                        name.chars().take(MAX_VOCAB_NAME_BYTES).collect::<String>()
                    ),
                });
            }
            let path = dir.join(VOCAB_DIR).join(format!("{name}.txt"));
            let bytes = read_file(&root, &path, MAX_VOCAB_BYTES)?;
            let text = String::from_utf8(bytes).map_err(|_| BundleError::Invalid {
                path: path.clone(),
                reason: "not UTF-8 text".into(),
            })?;
            vocabularies.insert(name, Vocabulary::parse(&text));
        }
        let model_path = dir.join(MODEL_FILE);
        let onnx = read_file(&root, &model_path, MAX_MODEL_BYTES)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            vocabularies,
            onnx,
        })
    }

    /// Writes into `dir`, which must not exist: everything goes to a temporary sibling
    /// first and is renamed at the end, so a failure leaves nothing half-written.
    pub fn write(
        dir: &Path,
        manifest: &Manifest,
        vocabularies: &Vocabularies,
        onnx: &[u8],
    ) -> Result<(), BundleError> {
        Bundle::write_with_weights(dir, manifest, vocabularies, onnx, None)
    }

    /// [`Bundle::write`], with the training state in [`WEIGHTS_FILE`] when given.
    pub fn write_with_weights(
        dir: &Path,
        manifest: &Manifest,
        vocabularies: &Vocabularies,
        onnx: &[u8],
        weights: Option<&[u8]>,
    ) -> Result<(), BundleError> {
        if dir.exists() {
            return Err(BundleError::Invalid {
                path: dir.to_path_buf(),
                reason: "already exists; refusing to overwrite a bundle".into(),
            });
        }
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        let file_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        let staging = parent.join(format!(".{file_name}.partial-{}", std::process::id()));
        let result = (|| {
            std::fs::create_dir_all(staging.join(VOCAB_DIR)).map_err(io_error(&staging))?;
            for (name, vocabulary) in vocabularies {
                let path = staging.join(VOCAB_DIR).join(format!("{name}.txt"));
                vocabulary.write(&path).map_err(io_error(&path))?;
            }
            let model_path = staging.join(MODEL_FILE);
            std::fs::write(&model_path, onnx).map_err(io_error(&model_path))?;
            if let Some(weights) = weights {
                let weights_path = staging.join(WEIGHTS_FILE);
                std::fs::write(&weights_path, weights).map_err(io_error(&weights_path))?;
            }
            let manifest_path = staging.join(MANIFEST_FILE);
            let text =
                serde_json::to_string_pretty(manifest).map_err(|source| BundleError::Manifest {
                    path: manifest_path.clone(),
                    source,
                })?;
            std::fs::write(&manifest_path, text).map_err(io_error(&manifest_path))?;
            std::fs::rename(&staging, dir).map_err(io_error(dir))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }
}

/// A vocabulary name that can only name a file in `vocab/`: letters, digits, `_` and `-`,
/// so no `/`, no `..`, and no absolute path.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VOCAB_NAME_BYTES
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// Reads `path`, a file of the bundle whose canonical directory is `root`: its real path
/// must lie inside the bundle, it must be a regular file (checked before opening, so that
/// a FIFO is never opened and cannot hang the reader, and again on the open file), and it
/// may hold at most `cap` bytes (read through a bound, so a file that grows while read
/// stops there too). Hand-written because it is these checks, in this order, that matter.
pub fn read_file(root: &Path, path: &Path, cap: u64) -> Result<Vec<u8>, BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let real = path.canonicalize().map_err(io_error(path))?;
    if !real.starts_with(root) {
        return Err(invalid(format!(
            "resolves to {}, outside the bundle",
            real.display()
        )));
    }
    let is_regular = |meta: &std::fs::Metadata| meta.file_type().is_file();
    let meta = std::fs::metadata(&real).map_err(io_error(path))?;
    if !is_regular(&meta) {
        return Err(invalid("not a regular file".into()));
    }
    let file = std::fs::File::open(&real).map_err(io_error(path))?;
    let meta = file.metadata().map_err(io_error(path))?;
    if !is_regular(&meta) {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > cap {
        return Err(invalid(format!(
            "{} bytes, over the {cap}-byte cap",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() as u64 > cap {
        return Err(invalid(format!("over the {cap}-byte cap")));
    }
    Ok(bytes)
}

/// A hash of the bundle's content: every file's path and bytes under `dir` (two levels,
/// regular files only, each read within the largest cap). Reload remembers refused
/// bundles by it, so that a changed bundle is retried whatever its modification times say,
/// and an unchanged one is not retried every poll.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                paths.push(inner.path());
            }
        } else {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        path.strip_prefix(dir).unwrap_or(&path).hash(&mut hasher);
        match read_file(&root, &path, MAX_MODEL_BYTES) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(error) => error.to_string().hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// One servable bundle directory found under a models root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleLocation {
    pub name: String,
    pub version: u32,
    pub dir: PathBuf,
}

/// Every `<name>/<version>/` under `root` with an integer version and a manifest, sorted by
/// name then version. Callers serve the highest version that loads.
pub fn discover(root: &Path) -> Result<Vec<BundleLocation>, BundleError> {
    let mut found = Vec::new();
    let names = std::fs::read_dir(root).map_err(io_error(root))?;
    for name_entry in names.flatten() {
        let name_dir = name_entry.path();
        if !name_dir.is_dir() {
            continue;
        }
        let name = name_entry.file_name().to_string_lossy().into_owned();
        let Ok(versions) = std::fs::read_dir(&name_dir) else {
            continue;
        };
        for version_entry in versions.flatten() {
            let Ok(version) = version_entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let dir = version_entry.path();
            if dir.join(MANIFEST_FILE).is_file() {
                found.push(BundleLocation {
                    name: name.clone(),
                    version,
                    dir,
                });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(name: &str, index: usize, kinds: &[CandidateKind], field: ResponseField) -> HeadSpec {
        HeadSpec {
            name: name.into(),
            output: OUTPUT_NAME.into(),
            index,
            kinds: kinds.to_vec(),
            field,
            calibration: Calibration {
                method: "platt".into(),
                slope: 2.0,
                intercept: -1.0,
            },
            calibration_by_kind: BTreeMap::new(),
        }
    }

    /// The head serving a candidate's kind fills its field, calibrated for that kind; a
    /// field no head fills is null; a wrong-width row and two heads for one (kind, field)
    /// are refused.
    #[test]
    fn heads_select_by_kind_and_calibrate() {
        let mut manifest: Manifest = serde_json::from_value(serde_json::json!({
            "name": "m", "version": 1, "created_at": "", "settings": {}, "data_summary": {},
            "metrics": {}, "architecture": {"embedding_dim": 1, "encoder": [1], "tower": []},
            "features": [], "heads": [], "golden": []
        }))
        .unwrap();
        manifest.heads = vec![
            head(
                "promo_stream",
                0,
                &[CandidateKind::Promotion],
                ResponseField::Stream,
            ),
            head("ad_stream", 1, &[CandidateKind::Ad], ResponseField::Stream),
            head("click", 2, &CandidateKind::ALL, ResponseField::Click),
        ];
        // The click head has its own scaling for ads; promotions keep the head's.
        manifest.heads[2].calibration_by_kind.insert(
            CandidateKind::Ad,
            Calibration {
                method: "platt".into(),
                slope: 0.5,
                intercept: 0.25,
            },
        );
        let heads = Heads::resolve(&manifest).unwrap();
        let logits = [0.5, -0.25, 1.0];
        let stream = |kind| {
            heads
                .probability(kind, &ResponseField::Stream, &logits)
                .unwrap()
        };
        assert_eq!(
            stream(CandidateKind::Promotion),
            Some(sigmoid(2.0 * 0.5 - 1.0))
        );
        assert_eq!(stream(CandidateKind::Ad), Some(sigmoid(2.0 * -0.25 - 1.0)));
        let click = |kind| {
            heads
                .probability(kind, &ResponseField::Click, &logits)
                .unwrap()
        };
        assert_eq!(click(CandidateKind::Ad), Some(sigmoid(0.5 * 1.0 + 0.25)));
        assert_eq!(
            click(CandidateKind::Promotion),
            Some(sigmoid(2.0 * 1.0 - 1.0))
        );
        let like = heads.probability(CandidateKind::Ad, &ResponseField::Like, &logits);
        assert_eq!(like, Ok(None));
        assert_eq!(
            heads.probability(CandidateKind::Ad, &ResponseField::Click, &logits[..2]),
            Err(HeadsError::RowWidth {
                expected: 3,
                got: 2
            })
        );
        manifest.heads[1].kinds.push(CandidateKind::Promotion);
        assert!(matches!(
            Heads::resolve(&manifest),
            Err(HeadsError::Ambiguous { .. })
        ));
    }

    /// A head may fill a field the manifest names; the response then carries it for the
    /// kinds that head serves, and the fixed four keep their heads.
    #[test]
    fn manifest_named_fields_resolve_beside_the_fixed_four() {
        let mut manifest: Manifest = serde_json::from_value(serde_json::json!({
            "name": "m", "version": 1, "created_at": "", "settings": {}, "data_summary": {},
            "metrics": {}, "architecture": {"embedding_dim": 1, "encoder": [1], "tower": []},
            "features": [], "heads": [], "golden": []
        }))
        .unwrap();
        let objective = ResponseField::parse("video_follow").unwrap();
        manifest.heads = vec![
            head("follow", 0, &CandidateKind::ALL, ResponseField::Follow),
            head("video_follow", 1, &[CandidateKind::Ad], objective.clone()),
        ];
        let heads = Heads::resolve(&manifest).unwrap();
        assert_eq!(heads.objective_fields(), std::slice::from_ref(&objective));
        assert_eq!(heads.fields().len(), 5);
        let logits = [0.5, -0.25];
        let served = |kind, field: &ResponseField| heads.probability(kind, field, &logits).unwrap();
        assert_eq!(
            served(CandidateKind::Ad, &objective),
            Some(sigmoid(2.0 * -0.25 - 1.0))
        );
        assert_eq!(served(CandidateKind::Promotion, &objective), None);
        assert_eq!(
            served(CandidateKind::Ad, &ResponseField::Follow),
            Some(sigmoid(2.0 * 0.5 - 1.0))
        );
        let unknown = ResponseField::parse("episode_complete").unwrap();
        assert_eq!(served(CandidateKind::Ad, &unknown), None);
        // The manifest's JSON names the field as it names the fixed ones.
        let json = serde_json::to_value(&manifest.heads[1]).unwrap();
        assert_eq!(json["field"], "video_follow");
        assert_eq!(
            serde_json::to_value(&manifest.heads[0]).unwrap()["field"],
            "follow"
        );
    }

    /// Field names are checked when a manifest is read: the fixed names parse to the fixed
    /// fields, keys of every candidate's scores and non-identifiers are refused.
    #[test]
    fn field_names_are_checked() {
        assert_eq!(ResponseField::parse("stream"), Ok(ResponseField::Stream));
        assert_eq!(
            ResponseField::parse("episode_complete_7d"),
            Ok(ResponseField::Objective("episode_complete_7d".into()))
        );
        for bad in ["", "Video", "7day", "video-follow", "a b", &"x".repeat(65)] {
            assert!(
                matches!(ResponseField::parse(bad), Err(FieldNameError::Invalid(_))),
                "{bad:?}"
            );
        }
        for reserved in ["id", "kind", "cold_start"] {
            assert_eq!(
                ResponseField::parse(reserved),
                Err(FieldNameError::Reserved(reserved.into()))
            );
        }
        let error = serde_json::from_value::<ResponseField>(serde_json::json!("cold_start"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cold_start"), "{error}");
    }

    /// `fixed_index` is the position in `FIXED`, which the resolved table relies on.
    #[test]
    fn fixed_index_is_the_position() {
        for (position, field) in ResponseField::FIXED.iter().enumerate() {
            assert_eq!(field.fixed_index(), Some(position));
        }
        assert_eq!(ResponseField::Objective("x".into()).fixed_index(), None);
    }
}
