//! The paper's shared-bottom network in candle: embeddings and mean-pooled bags per
//! feature, a shared encoder whose first layer is split by scope, batch norm after it,
//! and one MLP tower per head ending in a logit.
//!
//! Parameter names and layouts are the ones `onnx::Weights` expects, so that export is a
//! copy: linear weights are `[in, out]`, embeddings `[vocab_len, dim]`.
//!
//! Embedding look-ups and bag pooling run outside candle's autograd: the network gathers
//! each scope's input matrix by hand, lets candle differentiate everything above it, and
//! scatters the input gradient into the rows the batch touched, which Adam then updates.
//! Through candle, every step built a zeroed gradient the size of every table (50k rows
//! for episodes) and gathered through its strided index path: a third of a step.
//!
//! The training state (every parameter and table under its training name, and batch
//! norm's running statistics) round-trips through safetensors ([`Network::to_safetensors`],
//! [`Network::from_safetensors`]): the bundle keeps it beside `model.onnx` so that a
//! trained model can be fine-tuned ([`Network::add_head`], [`Trainable`]).

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::bundle::Architecture;
use crate::features::{FeatureSpec, Kind, Scope, ScopeTensors, Vocabularies};
use crate::onnx::{WeightTensor, Weights};
use crate::train::adam::Adam;

const BATCH_NORM_EPSILON: f64 = 1e-5;
/// Running statistics follow PyTorch's default momentum.
const BATCH_NORM_MOMENTUM: f32 = 0.1;
/// Names of batch norm's running statistics in the weights file.
pub const RUNNING_MEAN: &str = "batch_norm.running_mean";
pub const RUNNING_VAR: &str = "batch_norm.running_var";
/// Prefix of an embedding table's name in the weights file (`embedding.show_id`).
pub const EMBEDDING_PREFIX: &str = "embedding.";

/// What a training step changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trainable {
    /// Every parameter and table; batch norm normalizes with the batch's statistics and
    /// updates its running ones: training from scratch.
    Everything,
    /// Every parameter and table, with batch norm held at its running statistics, so that
    /// a few thousand rows of one objective do not re-centre what every head reads:
    /// fine-tuning the whole network.
    EverythingButNormStatistics,
    /// Only the named heads' towers: the shared encoder, the tables, batch norm and every
    /// other tower stay exactly as they are.
    Towers(Vec<String>),
}

/// Why a weights file does not fit the network a manifest describes.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("not a safetensors file: {0}")]
    Format(String),
    #[error("no tensor `{0}`")]
    Missing(String),
    #[error("tensor `{name}` has shape {got:?}, the manifest's network needs {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{0}` is not part of the manifest's network")]
    Unexpected(String),
    #[error("head `{0}` already exists")]
    HeadExists(String),
    #[error("no head `{0}` to copy")]
    NoSuchHead(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub struct Network {
    pub architecture: Architecture,
    pub heads: Vec<String>,
    specs: Vec<FeatureSpec>,
    /// Dense trainable parameters by export name, in a stable order for the optimizer.
    pub parameters: BTreeMap<String, Var>,
    /// Embedding tables by feature name, trained outside autograd.
    tables: BTreeMap<String, Table>,
    /// Columns of each scope's input matrix.
    input_width: [usize; 2],
    /// Batch norm running statistics, updated outside autograd.
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    trainable: Trainable,
    /// The dense parameters a step updates, by name: all of them, or the chosen towers'.
    updated: BTreeMap<String, Var>,
    /// L2 penalty per looked-up embedding row, averaged over the batch (see
    /// [`Network::set_embedding_l2`]).
    embedding_l2: f32,
    device: Device,
}

/// One embedding table with its Adam moments, updated row by row.
struct Table {
    dim: usize,
    values: Vec<f32>,
    first_moment: Vec<f32>,
    second_moment: Vec<f32>,
    /// Per row: its position in the current step's gradient rows, or `UNTOUCHED`.
    gradient_slot: Vec<u32>,
    /// Per row: whether any training step has updated it.
    trained: Vec<bool>,
}

const UNTOUCHED: u32 = u32::MAX;

impl Table {
    fn rows(&self) -> usize {
        self.values.len() / self.dim
    }

    /// The table row of an id; ids come from assembly and are in range, and anything else
    /// reads the unknown row rather than panic.
    fn row(&self, id: i64) -> usize {
        usize::try_from(id)
            .ok()
            .filter(|row| *row < self.rows())
            .unwrap_or(0)
    }
}

fn uniform(rng: &mut impl Rng, count: usize, bound: f32) -> Vec<f32> {
    (0..count)
        .map(|_| rng.random_range(-bound..bound))
        .collect()
}

impl Network {
    pub fn new(
        architecture: &Architecture,
        specs: &[FeatureSpec],
        vocabularies: &Vocabularies,
        heads: &[String],
        seed: u64,
    ) -> candle_core::Result<Network> {
        let device = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut parameters = BTreeMap::new();
        let mut tables = BTreeMap::new();
        let embedding_dim = architecture.embedding_dim;
        let mut input_width = [0usize; 2];
        for spec in specs {
            let width = match &spec.transform {
                crate::features::Transform::Id { vocab }
                | crate::features::Transform::IdBag { vocab, .. } => {
                    let rows = vocabularies.get(vocab).map_or(1, |v| v.len());
                    let mut values = uniform(&mut rng, rows * embedding_dim, 0.05);
                    // Row 0, "an id we have not seen", starts at zero: a neutral input
                    // until training reaches it (id dropout does, for candidate ids), and
                    // never noise in a variant whose data never shows an unknown value
                    // (a promotions-only model asked about an ad slot).
                    values[..embedding_dim].fill(0.0);
                    tables.insert(
                        spec.name.clone(),
                        Table {
                            dim: embedding_dim,
                            values,
                            first_moment: vec![0.0; rows * embedding_dim],
                            second_moment: vec![0.0; rows * embedding_dim],
                            gradient_slot: vec![UNTOUCHED; rows],
                            trained: vec![false; rows],
                        },
                    );
                    embedding_dim
                }
                _ => spec.width,
            };
            input_width[spec.scope as usize] += width;
        }
        let mut add =
            |name: String, shape: Vec<usize>, data: Vec<f32>| -> candle_core::Result<()> {
                parameters.insert(name, Var::from_vec(data, shape, &device)?);
                Ok(())
            };
        // Kaiming-uniform bounds for ReLU layers.
        let mut linear = |name: &str, inputs: usize, outputs: usize, fan_in: usize| {
            let bound = (6.0 / fan_in as f32).sqrt();
            add(
                format!("{name}.weight"),
                vec![inputs, outputs],
                uniform(&mut rng, inputs * outputs, bound),
            )?;
            add(format!("{name}.bias"), vec![outputs], vec![0.0; outputs])
        };
        let first = architecture.encoder[0];
        let fan_in = input_width[0] + input_width[1];
        linear("encoder.0.request", input_width[0], first, fan_in)?;
        linear("encoder.0.candidate", input_width[1], first, fan_in)?;
        for layer in 1..architecture.encoder.len() {
            let (inputs, outputs) = (architecture.encoder[layer - 1], architecture.encoder[layer]);
            linear(&format!("encoder.{layer}"), inputs, outputs, inputs)?;
        }
        let encoded = *architecture.encoder.last().expect("validated non-empty");
        for head in heads {
            for (name, shape, data) in tower_initialization(architecture, head, &mut rng) {
                parameters.insert(name, Var::from_vec(data, shape, &device)?);
            }
        }
        parameters.insert(
            "batch_norm.gamma".into(),
            Var::from_vec(vec![1.0f32; encoded], encoded, &device)?,
        );
        parameters.insert(
            "batch_norm.beta".into(),
            Var::from_vec(vec![0.0f32; encoded], encoded, &device)?,
        );
        // The request and candidate parts share one bias in the exported graph.
        parameters.remove("encoder.0.candidate.bias");
        Ok(Network {
            architecture: architecture.clone(),
            heads: heads.to_vec(),
            specs: specs.to_vec(),
            updated: parameters.clone(),
            parameters,
            tables,
            input_width,
            running_mean: vec![0.0; encoded],
            running_var: vec![1.0; encoded],
            trainable: Trainable::Everything,
            embedding_l2: 0.0,
            device,
        })
    }

    /// The network a bundle's weights file holds: `architecture`, `specs`, `vocabularies`
    /// and `heads` (in output order) are its manifest's, and every tensor of the file must
    /// be one of that network's, with its shape. Trains everything until told otherwise.
    pub fn from_safetensors(
        architecture: &Architecture,
        specs: &[FeatureSpec],
        vocabularies: &Vocabularies,
        heads: &[String],
        bytes: &[u8],
    ) -> Result<Network, WeightsError> {
        let mut network = Network::new(architecture, specs, vocabularies, heads, 0)?;
        let mut tensors = candle_core::safetensors::load_buffer(bytes, &network.device)
            .map_err(|error| WeightsError::Format(error.to_string()))?;
        let mut take = |name: &str, expected: Vec<usize>| -> Result<Vec<f32>, WeightsError> {
            let tensor = tensors
                .remove(name)
                .ok_or_else(|| WeightsError::Missing(name.to_string()))?;
            if tensor.dims() != expected.as_slice() {
                return Err(WeightsError::Shape {
                    name: name.to_string(),
                    expected,
                    got: tensor.dims().to_vec(),
                });
            }
            Ok(tensor
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        for (name, var) in &network.parameters {
            let values = take(name, var.dims().to_vec())?;
            var.set(&Tensor::from_vec(values, var.dims(), &network.device)?)?;
        }
        for (feature, table) in &mut network.tables {
            table.values = take(
                &format!("{EMBEDDING_PREFIX}{feature}"),
                vec![table.rows(), table.dim],
            )?;
            // Every row a file holds is a trained one: the training that wrote it put the
            // rows it never updated on the cold-start path before saving, so a later
            // fine-tune must not send them there again.
            table.trained.fill(true);
        }
        let encoded = network.running_mean.len();
        network.running_mean = take(RUNNING_MEAN, vec![encoded])?;
        network.running_var = take(RUNNING_VAR, vec![encoded])?;
        if let Some(name) = tensors.keys().min() {
            return Err(WeightsError::Unexpected(name.clone()));
        }
        Ok(network)
    }

    /// The training state as a safetensors file: every dense parameter under its training
    /// name, every table as `embedding.<feature>` (`[rows, dim]`), and batch norm's running
    /// statistics. Adam's moments are not kept: a later run starts its own optimizer.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, WeightsError> {
        let mut tensors: BTreeMap<String, Tensor> = self
            .parameters
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        for (feature, table) in &self.tables {
            tensors.insert(
                format!("{EMBEDDING_PREFIX}{feature}"),
                Tensor::from_slice(&table.values, (table.rows(), table.dim), &self.device)?,
            );
        }
        let width = self.running_mean.len();
        tensors.insert(
            RUNNING_MEAN.into(),
            Tensor::from_slice(&self.running_mean, width, &self.device)?,
        );
        tensors.insert(
            RUNNING_VAR.into(),
            Tensor::from_slice(&self.running_var, width, &self.device)?,
        );
        safetensors::serialize(&tensors, None)
            .map_err(|error| WeightsError::Format(error.to_string()))
    }

    /// Appends a head (a new output column): its tower copies `copy_of`'s, or is drawn as
    /// a fresh tower is (Kaiming-uniform from `seed`).
    pub fn add_head(
        &mut self,
        name: &str,
        copy_of: Option<&str>,
        seed: u64,
    ) -> Result<(), WeightsError> {
        if self.heads.iter().any(|head| head == name) {
            return Err(WeightsError::HeadExists(name.to_string()));
        }
        if let Some(source) = copy_of
            && !self.heads.iter().any(|head| head == source)
        {
            return Err(WeightsError::NoSuchHead(source.to_string()));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let fresh = tower_initialization(&self.architecture, name, &mut rng);
        for (parameter, shape, data) in fresh {
            let data = match copy_of {
                Some(source) => {
                    let suffix = &parameter[format!("tower.{name}.").len()..];
                    self.parameter(&format!("tower.{source}.{suffix}"))
                        .flatten_all()?
                        .to_vec1::<f32>()?
                }
                None => data,
            };
            self.parameters
                .insert(parameter, Var::from_vec(data, shape, &self.device)?);
        }
        self.heads.push(name.to_string());
        self.set_trainable(self.trainable.clone());
        Ok(())
    }

    /// Chooses what later training steps change; see [`Trainable`].
    pub fn set_trainable(&mut self, trainable: Trainable) {
        self.updated = match &trainable {
            Trainable::Everything | Trainable::EverythingButNormStatistics => {
                self.parameters.clone()
            }
            Trainable::Towers(heads) => self
                .parameters
                .iter()
                .filter(|(name, _)| {
                    heads
                        .iter()
                        .any(|head| name.starts_with(&format!("tower.{head}.")))
                })
                .map(|(name, var)| (name.clone(), var.clone()))
                .collect(),
        };
        self.trainable = trainable;
    }

    /// Sets the L2 penalty on the embedding rows each batch looks up: `l2 * |row|^2` per
    /// lookup (bag entries weighted as pooled), averaged over the batch like the loss.
    /// Only the rows a batch touches are penalized, so a row is pulled toward zero in
    /// proportion to how often it is used, as its data pulls it elsewhere: the usual
    /// regularization of sparse id embeddings, which otherwise fit the few rows a rare
    /// creative or show has.
    pub fn set_embedding_l2(&mut self, l2: f32) {
        self.embedding_l2 = l2;
    }

    /// The values of the embedding table of feature `name`, row-major, `[rows, E]`.
    pub fn table_values(&self, name: &str) -> Option<&[f32]> {
        self.tables.get(name).map(|table| table.values.as_slice())
    }

    /// Per table, how many rows no training step has updated, row 0 included.
    pub fn untrained_rows(&self) -> BTreeMap<String, usize> {
        self.tables
            .iter()
            .map(|(name, table)| (name.clone(), table.trained.iter().filter(|t| !**t).count()))
            .collect()
    }

    /// Gives every row that no training step updated, other than row 0, the values of row
    /// 0: an id the model never trained on takes the cold-start path, as an unknown id
    /// does, instead of serving its random initialization. Returns how many rows per
    /// table took that path (with a full pass over the training data before the chosen
    /// checkpoint, none should).
    pub fn fall_back_untrained_rows(&mut self) -> BTreeMap<String, usize> {
        let mut replaced = BTreeMap::new();
        for (name, table) in &mut self.tables {
            let dim = table.dim;
            let unknown: Vec<f32> = table.values[..dim].to_vec();
            let mut count = 0;
            for row in 1..table.rows() {
                if !table.trained[row] {
                    table.values[row * dim..(row + 1) * dim].copy_from_slice(&unknown);
                    count += 1;
                }
            }
            replaced.insert(name.clone(), count);
        }
        replaced
    }

    fn parameter(&self, name: &str) -> &Tensor {
        self.parameters
            .get(name)
            .unwrap_or_else(|| panic!("network has no parameter {name}"))
            .as_tensor()
    }

    /// One scope's input matrix `[rows, width]`, row-major: per feature in spec order, its
    /// embedding row, the masked mean of its bag's rows, or its dense columns.
    fn gather(&self, scope: Scope, tensors: &ScopeTensors) -> Vec<f32> {
        let rows = tensors.rows;
        let widths = tensors.widths;
        let width = self.input_width[scope as usize];
        let mut input = vec![0.0f32; rows * width];
        let mut start = 0;
        for spec in self.specs.iter().filter(|spec| spec.scope == scope) {
            match spec.kind {
                Kind::Id | Kind::IdBag => {
                    let table = &self.tables[&spec.name];
                    let dim = table.dim;
                    for row in 0..rows {
                        let out = &mut input[row * width + start..row * width + start + dim];
                        for_each_weighted_row(spec, tensors, row, |id, weight| {
                            let offset = table.row(id) * dim;
                            for (value, embedded) in
                                out.iter_mut().zip(&table.values[offset..offset + dim])
                            {
                                *value += weight * embedded;
                            }
                        });
                    }
                    start += dim;
                }
                Kind::Dense | Kind::Numeric => {
                    for row in 0..rows {
                        let source = row * widths.dense + spec.slot;
                        input[row * width + start..row * width + start + spec.width]
                            .copy_from_slice(&tensors.dense[source..source + spec.width]);
                    }
                    start += spec.width;
                }
            }
        }
        input
    }

    /// Adds `weight * d_input` (and `penalty * weight * row`, the embedding L2) into each
    /// touched row's gradient, then lets Adam update exactly those rows of each table.
    fn scatter(
        &mut self,
        scope: Scope,
        tensors: &ScopeTensors,
        d_input: &[f32],
        penalty: f32,
        optimizer: &Adam,
    ) {
        let width = self.input_width[scope as usize];
        let mut start = 0;
        for spec in self.specs.iter().filter(|spec| spec.scope == scope) {
            if !matches!(spec.kind, Kind::Id | Kind::IdBag) {
                start += spec.width;
                continue;
            }
            let table = self
                .tables
                .get_mut(&spec.name)
                .expect("a table per id feature");
            let dim = table.dim;
            let mut touched: Vec<u32> = Vec::new();
            let mut gradients: Vec<f32> = Vec::new();
            for row in 0..tensors.rows {
                let d_row = &d_input[row * width + start..row * width + start + dim];
                for_each_weighted_row(spec, tensors, row, |id, weight| {
                    let table_row = table.row(id);
                    let mut slot = table.gradient_slot[table_row];
                    if slot == UNTOUCHED {
                        slot = touched.len() as u32;
                        table.gradient_slot[table_row] = slot;
                        touched.push(table_row as u32);
                        gradients.resize(gradients.len() + dim, 0.0);
                    }
                    let slot = slot as usize * dim;
                    let values = &table.values[table_row * dim..(table_row + 1) * dim];
                    for ((gradient, d), value) in gradients[slot..slot + dim]
                        .iter_mut()
                        .zip(d_row)
                        .zip(values)
                    {
                        *gradient += weight * (d + penalty * value);
                    }
                });
            }
            optimizer.update_rows(
                &mut table.values,
                &mut table.first_moment,
                &mut table.second_moment,
                &touched,
                &gradients,
                dim,
            );
            for row in touched {
                table.gradient_slot[row as usize] = UNTOUCHED;
                table.trained[row as usize] = true;
            }
            start += dim;
        }
    }

    /// One training step: forward in training mode, masked loss, backward, Adam on the
    /// dense parameters and on the touched embedding rows. Returns the loss.
    pub fn train_step(
        &mut self,
        optimizer: &mut Adam,
        request: &ScopeTensors,
        candidates: &ScopeTensors,
        labels: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<f32> {
        let request_input = Var::from_vec(
            self.gather(Scope::Request, request),
            (request.rows, self.input_width[0]),
            &self.device,
        )?;
        let candidate_input = Var::from_vec(
            self.gather(Scope::Candidate, candidates),
            (candidates.rows, self.input_width[1]),
            &self.device,
        )?;
        let logits = self.encode(request_input.as_tensor(), candidate_input.as_tensor(), true)?;
        let loss = masked_bce_with_logits(&logits, labels, mask)?;
        let gradients = loss.backward()?;
        optimizer.step(&self.updated, &gradients)?;
        if matches!(self.trainable, Trainable::Towers(_)) {
            return loss.to_scalar::<f32>();
        }
        let penalty = 2.0 * self.embedding_l2 / candidates.rows.max(1) as f32;
        for (scope, input, tensors) in [
            (Scope::Request, &request_input, request),
            (Scope::Candidate, &candidate_input, candidates),
        ] {
            if let Some(d_input) = gradients.get(input.as_tensor()) {
                let d_input = d_input.flatten_all()?.to_vec1::<f32>()?;
                self.scatter(scope, tensors, &d_input, penalty, optimizer);
            }
        }
        loss.to_scalar::<f32>()
    }

    /// Logits `[rows, heads]`. In training mode batch norm uses batch statistics and
    /// updates its running averages; otherwise it uses the running averages, as served.
    pub fn forward(
        &mut self,
        request: &ScopeTensors,
        candidates: &ScopeTensors,
        training: bool,
    ) -> candle_core::Result<Tensor> {
        let request_input = Tensor::from_vec(
            self.gather(Scope::Request, request),
            (request.rows, self.input_width[0]),
            &self.device,
        )?;
        let candidate_input = Tensor::from_vec(
            self.gather(Scope::Candidate, candidates),
            (candidates.rows, self.input_width[1]),
            &self.device,
        )?;
        self.encode(&request_input, &candidate_input, training)
    }

    /// Everything above the input matrices: the encoder, batch norm and the towers.
    fn encode(
        &mut self,
        request_features: &Tensor,
        candidate_features: &Tensor,
        training: bool,
    ) -> candle_core::Result<Tensor> {
        let rows = candidate_features.dims()[0];
        let ones = Tensor::ones((rows, 1), DType::F32, &self.device)?;
        let mut hidden = add_bias(
            &request_features
                .matmul(self.parameter("encoder.0.request.weight"))?
                .broadcast_add(
                    &candidate_features.matmul(self.parameter("encoder.0.candidate.weight"))?,
                )?,
            self.parameter("encoder.0.request.bias"),
            &ones,
        )?
        .relu()?;
        for layer in 1..self.architecture.encoder.len() {
            hidden = add_bias(
                &hidden.matmul(self.parameter(&format!("encoder.{layer}.weight")))?,
                self.parameter(&format!("encoder.{layer}.bias")),
                &ones,
            )?
            .relu()?;
        }
        let (mean, variance) = if training && self.trainable == Trainable::Everything {
            let mean = hidden.mean_keepdim(0)?;
            let centered = hidden.broadcast_sub(&mean)?;
            let variance = centered.sqr()?.mean_keepdim(0)?;
            self.update_running_statistics(&mean, &variance)?;
            (mean, variance)
        } else {
            let width = self.running_mean.len();
            (
                Tensor::from_slice(&self.running_mean, (1, width), &self.device)?,
                Tensor::from_slice(&self.running_var, (1, width), &self.device)?,
            )
        };
        let normalized = hidden
            .broadcast_sub(&mean)?
            .broadcast_div(&(variance + BATCH_NORM_EPSILON)?.sqrt()?)?
            .broadcast_mul(self.parameter("batch_norm.gamma"))?
            .broadcast_add(self.parameter("batch_norm.beta"))?;
        // Training towers alone: nothing below them takes part in the backward pass.
        let normalized = if matches!(self.trainable, Trainable::Towers(_)) {
            normalized.detach()
        } else {
            normalized
        };
        let mut logits = Vec::with_capacity(self.heads.len());
        for head in &self.heads {
            let mut tower = normalized.clone();
            let layers = self.architecture.tower.len() + 1;
            for layer in 0..layers {
                tower = add_bias(
                    &tower.matmul(self.parameter(&format!("tower.{head}.{layer}.weight")))?,
                    self.parameter(&format!("tower.{head}.{layer}.bias")),
                    &ones,
                )?;
                if layer + 1 < layers {
                    tower = tower.relu()?;
                }
            }
            logits.push(tower);
        }
        Tensor::cat(&logits, D::Minus1)
    }

    fn update_running_statistics(
        &mut self,
        mean: &Tensor,
        variance: &Tensor,
    ) -> candle_core::Result<()> {
        let batch_mean = mean.flatten_all()?.to_vec1::<f32>()?;
        let batch_var = variance.flatten_all()?.to_vec1::<f32>()?;
        for (running, value) in self.running_mean.iter_mut().zip(batch_mean) {
            *running = (1.0 - BATCH_NORM_MOMENTUM) * *running + BATCH_NORM_MOMENTUM * value;
        }
        for (running, value) in self.running_var.iter_mut().zip(batch_var) {
            *running = (1.0 - BATCH_NORM_MOMENTUM) * *running + BATCH_NORM_MOMENTUM * value;
        }
        Ok(())
    }

    /// A copy of the current parameters and statistics, to restore the best epoch.
    pub fn snapshot(&self) -> candle_core::Result<NetworkState> {
        let mut values = BTreeMap::new();
        for (name, var) in &self.parameters {
            values.insert(name.clone(), var.as_tensor().copy()?);
        }
        let tables = self
            .tables
            .iter()
            .map(|(name, table)| (name.clone(), (table.values.clone(), table.trained.clone())))
            .collect();
        Ok(NetworkState {
            values,
            tables,
            running_mean: self.running_mean.clone(),
            running_var: self.running_var.clone(),
        })
    }

    pub fn restore(&mut self, state: &NetworkState) -> candle_core::Result<()> {
        for (name, var) in &self.parameters {
            var.set(&state.values[name])?;
        }
        for (name, table) in &mut self.tables {
            let (values, trained) = &state.tables[name];
            table.values.clone_from(values);
            table.trained.clone_from(trained);
        }
        self.running_mean = state.running_mean.clone();
        self.running_var = state.running_var.clone();
        Ok(())
    }

    /// The parameters under the exporter's names, batch norm folded to scale and shift.
    pub fn export_weights(&self) -> candle_core::Result<Weights> {
        let mut tensors = BTreeMap::new();
        let mut put = |name: String, tensor: &Tensor| -> candle_core::Result<()> {
            tensors.insert(
                name,
                WeightTensor {
                    shape: tensor.dims().to_vec(),
                    data: tensor.flatten_all()?.to_vec1::<f32>()?,
                },
            );
            Ok(())
        };
        for (name, var) in &self.parameters {
            let exported = match name.as_str() {
                "encoder.0.request.weight" => "encoder.0.request_weight".to_string(),
                "encoder.0.candidate.weight" => "encoder.0.candidate_weight".to_string(),
                "encoder.0.request.bias" => "encoder.0.bias".to_string(),
                "batch_norm.gamma" | "batch_norm.beta" => continue,
                other => other.to_string(),
            };
            put(exported, var.as_tensor())?;
        }
        let gamma = self.parameter("batch_norm.gamma").to_vec1::<f32>()?;
        let beta = self.parameter("batch_norm.beta").to_vec1::<f32>()?;
        let mut scale = Vec::with_capacity(gamma.len());
        let mut shift = Vec::with_capacity(gamma.len());
        for index in 0..gamma.len() {
            let factor =
                gamma[index] / (self.running_var[index] + BATCH_NORM_EPSILON as f32).sqrt();
            scale.push(factor);
            shift.push(beta[index] - self.running_mean[index] * factor);
        }
        let width = scale.len();
        put(
            "batch_norm.scale".into(),
            &Tensor::from_vec(scale, width, &self.device)?,
        )?;
        put(
            "batch_norm.shift".into(),
            &Tensor::from_vec(shift, width, &self.device)?,
        )?;
        for (name, table) in &self.tables {
            tensors.insert(
                format!("embedding.{name}"),
                WeightTensor {
                    shape: vec![table.rows(), table.dim],
                    data: table.values.clone(),
                },
            );
        }
        Ok(Weights { tensors })
    }

    pub fn parameter_count(&self) -> usize {
        self.parameters
            .values()
            .map(|var| var.elem_count())
            .sum::<usize>()
            + self
                .tables
                .values()
                .map(|table| table.values.len())
                .sum::<usize>()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// A fresh tower for `head` on top of the encoder: `(name, shape, values)` per parameter,
/// Kaiming-uniform weights for ReLU layers and zero biases, drawn in layer order.
fn tower_initialization(
    architecture: &Architecture,
    head: &str,
    rng: &mut impl Rng,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut inputs = *architecture.encoder.last().expect("validated non-empty");
    let mut parameters = Vec::new();
    for (layer, outputs) in architecture
        .tower
        .iter()
        .chain(std::iter::once(&1))
        .enumerate()
    {
        let bound = (6.0 / inputs as f32).sqrt();
        parameters.push((
            format!("tower.{head}.{layer}.weight"),
            vec![inputs, *outputs],
            uniform(rng, inputs * outputs, bound),
        ));
        parameters.push((
            format!("tower.{head}.{layer}.bias"),
            vec![*outputs],
            vec![0.0; *outputs],
        ));
        inputs = *outputs;
    }
    parameters
}

pub struct NetworkState {
    values: BTreeMap<String, Tensor>,
    /// Per table: its values and which rows training had updated.
    tables: BTreeMap<String, (Vec<f32>, Vec<bool>)>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

/// Numerically stable binary cross-entropy on logits, masked and averaged per head:
/// `sum_t mean_{rows with mask}(max(z,0) - z*y + log(1 + exp(-|z|)))`. A head with no
/// unmasked row in the batch contributes nothing.
pub fn masked_bce_with_logits(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let positive_part = logits.relu()?;
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_element = ((positive_part - logits.mul(labels)?)? + softplus)?;
    let masked = per_element.mul(mask)?;
    let per_head_count = mask.sum(0)?.clamp(1.0f32, f32::MAX)?;
    let per_head = masked.sum(0)?.div(&per_head_count)?;
    per_head.sum_all()
}

pub fn dtype() -> DType {
    DType::F32
}

/// `x + bias` for every row, written as `x + ones @ bias` so that the bias gradient is a
/// matrix product: candle differentiates a broadcast add with a sum over the batch
/// dimension, which takes its slow strided reduction path.
fn add_bias(x: &Tensor, bias: &Tensor, ones: &Tensor) -> candle_core::Result<Tensor> {
    x.add(&ones.matmul(&bias.unsqueeze(0)?)?)
}

/// Calls `visit(id, weight)` for each table row feeding `row` of an id or bag feature: the
/// id itself with weight 1, or each masked bag slot with `mask / max(sum of mask, 1)`.
fn for_each_weighted_row(
    spec: &FeatureSpec,
    tensors: &ScopeTensors,
    row: usize,
    mut visit: impl FnMut(i64, f32),
) {
    let widths = tensors.widths;
    match spec.kind {
        Kind::Id => visit(tensors.ids[row * widths.ids + spec.slot], 1.0),
        Kind::IdBag => {
            let start = row * widths.bag + spec.slot;
            let masks = &tensors.bag_mask[start..start + spec.width];
            let count = masks.iter().sum::<f32>().max(1.0);
            for (id, mask) in tensors.bag_ids[start..start + spec.width].iter().zip(masks) {
                if *mask != 0.0 {
                    visit(*id, mask / count);
                }
            }
        }
        Kind::Dense | Kind::Numeric => {}
    }
}
