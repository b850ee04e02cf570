//! The paper's shared-bottom network in candle: embeddings and mean-pooled bags per
//! feature, a shared encoder whose first layer is split by scope, batch norm after it,
//! and one MLP tower per head ending in a logit.
//!
//! Parameter names and layouts are the ones `onnx::Weights` expects, so that export is a
//! copy: linear weights are `[in, out]`, embeddings `[vocab_len, dim]`.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::bundle::Architecture;
use crate::features::{FeatureSpec, Kind, Scope, ScopeTensors, Vocabularies};
use crate::onnx::{WeightTensor, Weights};

const BATCH_NORM_EPSILON: f64 = 1e-5;
/// Running statistics follow PyTorch's default momentum.
const BATCH_NORM_MOMENTUM: f32 = 0.1;

pub struct Network {
    pub architecture: Architecture,
    pub heads: Vec<String>,
    specs: Vec<FeatureSpec>,
    /// Trainable parameters by export name, in a stable order for the optimizer.
    pub parameters: BTreeMap<String, Var>,
    /// Batch norm running statistics, updated outside autograd.
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    device: Device,
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
        let mut add =
            |name: String, shape: Vec<usize>, data: Vec<f32>| -> candle_core::Result<()> {
                parameters.insert(name, Var::from_vec(data, shape, &device)?);
                Ok(())
            };
        let embedding_dim = architecture.embedding_dim;
        let mut input_width = [0usize; 2];
        for spec in specs {
            let width = match spec.kind {
                Kind::Id | Kind::IdBag => {
                    let vocab = match &spec.transform {
                        crate::features::Transform::Id { vocab }
                        | crate::features::Transform::IdBag { vocab, .. } => vocab,
                        _ => unreachable!("id kinds have vocab transforms"),
                    };
                    let rows = vocabularies.get(vocab).map_or(1, |v| v.len());
                    add(
                        format!("embedding.{}", spec.name),
                        vec![rows, embedding_dim],
                        uniform(&mut rng, rows * embedding_dim, 0.05),
                    )?;
                    embedding_dim
                }
                Kind::Dense | Kind::Numeric => spec.width,
            };
            input_width[spec.scope as usize] += width;
        }
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
            let mut inputs = encoded;
            for (layer, outputs) in architecture
                .tower
                .iter()
                .chain(std::iter::once(&1))
                .enumerate()
            {
                linear(&format!("tower.{head}.{layer}"), inputs, *outputs, inputs)?;
                inputs = *outputs;
            }
        }
        add("batch_norm.gamma".into(), vec![encoded], vec![1.0; encoded])?;
        add("batch_norm.beta".into(), vec![encoded], vec![0.0; encoded])?;
        // The request and candidate parts share one bias in the exported graph.
        parameters.remove("encoder.0.candidate.bias");
        Ok(Network {
            architecture: architecture.clone(),
            heads: heads.to_vec(),
            specs: specs.to_vec(),
            parameters,
            running_mean: vec![0.0; encoded],
            running_var: vec![1.0; encoded],
            device,
        })
    }

    fn parameter(&self, name: &str) -> &Tensor {
        self.parameters
            .get(name)
            .unwrap_or_else(|| panic!("network has no parameter {name}"))
            .as_tensor()
    }

    /// One scope's feature vector `[rows, width]`: embeddings, pooled bags, dense columns.
    fn scope_features(&self, scope: Scope, tensors: &ScopeTensors) -> candle_core::Result<Tensor> {
        let rows = tensors.rows;
        let widths = tensors.widths;
        let ids = Tensor::from_slice(&tensors.ids, (rows, widths.ids), &self.device)?;
        let bag_ids = Tensor::from_slice(&tensors.bag_ids, (rows, widths.bag), &self.device)?;
        let bag_mask = Tensor::from_slice(&tensors.bag_mask, (rows, widths.bag), &self.device)?;
        let dense = Tensor::from_slice(&tensors.dense, (rows, widths.dense), &self.device)?;
        let mut parts = Vec::new();
        for spec in self.specs.iter().filter(|spec| spec.scope == scope) {
            match spec.kind {
                Kind::Id => {
                    let table = self.parameter(&format!("embedding.{}", spec.name));
                    let column = ids.narrow(1, spec.slot, 1)?.squeeze(1)?.contiguous()?;
                    parts.push(table.index_select(&column, 0)?);
                }
                Kind::IdBag => {
                    let table = self.parameter(&format!("embedding.{}", spec.name));
                    let length = spec.width;
                    let columns = bag_ids.narrow(1, spec.slot, length)?.contiguous()?;
                    let mask = bag_mask.narrow(1, spec.slot, length)?.contiguous()?;
                    let embedded = table.index_select(&columns.flatten_all()?, 0)?.reshape((
                        rows,
                        length,
                        self.architecture.embedding_dim,
                    ))?;
                    // Masked mean as one batched product `[B,1,L] x [B,L,E]`: candle's sum
                    // over a middle dimension takes a slow strided path.
                    let count = mask.sum_keepdim(1)?.clamp(1.0f32, f32::MAX)?;
                    let weights = mask.broadcast_div(&count)?.unsqueeze(1)?;
                    parts.push(weights.matmul(&embedded)?.squeeze(1)?);
                }
                Kind::Dense | Kind::Numeric => parts.push(dense.narrow(1, spec.slot, spec.width)?),
            }
        }
        Tensor::cat(&parts, 1)
    }

    /// Logits `[rows, heads]`. In training mode batch norm uses batch statistics and
    /// updates its running averages; otherwise it uses the running averages, as served.
    pub fn forward(
        &mut self,
        request: &ScopeTensors,
        candidates: &ScopeTensors,
        training: bool,
    ) -> candle_core::Result<Tensor> {
        let request_features = self.scope_features(Scope::Request, request)?;
        let candidate_features = self.scope_features(Scope::Candidate, candidates)?;
        let mut hidden = request_features
            .matmul(self.parameter("encoder.0.request.weight"))?
            .broadcast_add(
                &candidate_features.matmul(self.parameter("encoder.0.candidate.weight"))?,
            )?
            .broadcast_add(self.parameter("encoder.0.request.bias"))?
            .relu()?;
        for layer in 1..self.architecture.encoder.len() {
            hidden = hidden
                .matmul(self.parameter(&format!("encoder.{layer}.weight")))?
                .broadcast_add(self.parameter(&format!("encoder.{layer}.bias")))?
                .relu()?;
        }
        let (mean, variance) = if training {
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
        let mut logits = Vec::with_capacity(self.heads.len());
        for head in &self.heads {
            let mut tower = normalized.clone();
            let layers = self.architecture.tower.len() + 1;
            for layer in 0..layers {
                tower = tower
                    .matmul(self.parameter(&format!("tower.{head}.{layer}.weight")))?
                    .broadcast_add(self.parameter(&format!("tower.{head}.{layer}.bias")))?;
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
        Ok(NetworkState {
            values,
            running_mean: self.running_mean.clone(),
            running_var: self.running_var.clone(),
        })
    }

    pub fn restore(&mut self, state: &NetworkState) -> candle_core::Result<()> {
        for (name, var) in &self.parameters {
            var.set(&state.values[name])?;
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
        Ok(Weights { tensors })
    }

    pub fn parameter_count(&self) -> usize {
        self.parameters.values().map(|var| var.elem_count()).sum()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

pub struct NetworkState {
    values: BTreeMap<String, Tensor>,
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
