//! TEMPORARY stand-in for the tract runtime being written on branch `onnx`, with the same
//! signatures, so that the server compiles and its tests run before that branch lands.
//! It ignores the ONNX bytes and computes deterministic logits from the input tensors.
//! On merging `onnx`, this file is replaced by theirs.

use crate::bundle::Manifest;
use crate::features::ScopeTensors;

#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Row-major `[rows, heads]` logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub rows: usize,
    pub heads: usize,
    pub values: Vec<f32>,
}

#[derive(Debug)]
pub struct Runtime {
    heads: usize,
}

impl Runtime {
    pub fn load(
        manifest: &Manifest,
        onnx: &[u8],
        _config: &RuntimeConfig,
    ) -> Result<Runtime, RuntimeError> {
        if onnx.is_empty() {
            return Err(RuntimeError::Invalid("empty model.onnx".into()));
        }
        let heads = manifest
            .heads
            .iter()
            .map(|head| head.index + 1)
            .max()
            .unwrap_or(0);
        Ok(Runtime { heads })
    }

    pub fn infer(
        &self,
        request: &ScopeTensors,
        candidates: &ScopeTensors,
    ) -> Result<Logits, RuntimeError> {
        let request_sum: f32 = request.ids.iter().map(|&id| id as f32 * 0.01).sum::<f32>()
            + request
                .bag_ids
                .iter()
                .map(|&id| id as f32 * 0.003)
                .sum::<f32>()
            + request.dense.iter().map(|value| value * 0.05).sum::<f32>();
        let mut values = Vec::with_capacity(candidates.rows * self.heads);
        for row in 0..candidates.rows {
            let slice = |v: &[i64], w: usize| {
                v[row * w..(row + 1) * w]
                    .iter()
                    .map(|&id| id as f32)
                    .sum::<f32>()
            };
            let ids = slice(&candidates.ids, candidates.widths.ids);
            let bags = slice(&candidates.bag_ids, candidates.widths.bag);
            let dense: f32 = candidates.dense
                [row * candidates.widths.dense..(row + 1) * candidates.widths.dense]
                .iter()
                .sum();
            for head in 0..self.heads {
                let scale = (head + 1) as f32;
                values.push(
                    ((request_sum + ids * 0.02 * scale + bags * 0.001 + dense * 0.1) * 0.1).sin()
                        * 3.0
                        - 1.0,
                );
            }
        }
        Ok(Logits {
            rows: candidates.rows,
            heads: self.heads,
            values,
        })
    }
}
