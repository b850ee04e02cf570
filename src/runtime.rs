//! The inference runtime: an exported `model.onnx` loaded into tract, optimized once at
//! load, run many times concurrently.
//!
//! tract runs a plan optimized for concrete shapes faster than one with the symbolic
//! candidate count `N` (the README's "Performance" section), so [`Runtime::load`]
//! optimizes one plan per size bucket of [`RuntimeConfig::buckets`] and pads each call's
//! candidates up to the smallest bucket that holds them; the symbolic plan serves the
//! calls larger than every bucket. Padding rows are all zeros: unknown ids (row 0 of
//! every table), empty bags and zero dense values, whose outputs are dropped.
//!
//! Every input is checked before tract sees it: widths against the manifest and every
//! id against its table's row count, because tract's Gather panics on an out-of-range
//! index. A [`Runtime`] is `Send + Sync` and shared; each call spawns its own state.
//!
//! This module knows tract and the manifest; it knows nothing of HTTP, JSON, feature
//! stores or how tensors were assembled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tract_onnx::prelude::{
    Datum, Framework, InferenceModelExt, IntoRunnable, IntoTValue, TDim, TValue, TVec, Tensor,
    TypedModel, TypedSimplePlan, TypedSimpleState,
};

use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dimension;

use crate::bundle::Manifest;
use crate::features::{Kind, Scope, ScopeTensors, ScopeWidths};
use crate::graph::{self, CANDIDATES_DIM, Input, OUTPUT_NAME, Part, Values};
use crate::onnx::{data_type, dimension, embedding_table_rows};

/// Sizes at most 1.2x apart up to 1024, so that a call pads to at most 20% more rows (7%
/// on average over 1..1024; the earlier 1.33x-1.5x steps padded 18% on average). tract's
/// time per call grows almost linearly with the padded rows (about 5.3 µs a row at 96 to
/// 128 rows, interleaved plan-size runs on the shared machine), so padding 100
/// candidates to 128 cost 27% more than 100. Each plan optimizes in milliseconds: the 42
/// loaded in 0.84 s on the shared machine, against 0.42 s for the earlier 19. Ad requests
/// carry a handful to a few hundred candidates; the rare call above 1024 runs on the
/// symbolic plan.
pub const DEFAULT_BUCKETS: [usize; 42] = [
    1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 36, 40, 48, 56, 64, 72, 80, 96,
    112, 128, 144, 160, 192, 224, 256, 288, 320, 384, 448, 512, 576, 640, 768, 896, 1024,
];

/// Padded rows from which a call may spread its matrix products over idle cores, when
/// [`RuntimeConfig::threads`] allows it. Measured interleaved on the 2-core machine
/// (`tests/bench.sh --skip-end-to-end --threads 2 --candidates 64,100,256,512,1000`,
/// 2026-12-02): a second thread made a lone call slower at 64 to 512 candidates (N = 100:
/// 480-680 µs against 400-425 µs on one thread) and 4% faster at 1000; below this the
/// hand-over costs more than it saves.
pub const DEFAULT_THREADED_FROM: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Candidate counts to optimize a concrete plan for. Empty means the symbolic plan
    /// only (useful to compare, never faster).
    pub buckets: Vec<usize>,
    /// Threads one call's matrix products may use when it is the only call running in
    /// this runtime; 1 (the default) keeps every call on its own thread.
    pub threads: usize,
    /// Padded rows from which a call may use [`RuntimeConfig::threads`].
    pub threaded_from: usize,
}

impl Default for RuntimeConfig {
    /// Every call on its own thread: under load the calls themselves fill the cores, and
    /// even a lone call gained nothing from a second thread below 1,000 candidates (see
    /// [`DEFAULT_THREADED_FROM`]).
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            buckets: DEFAULT_BUCKETS.to_vec(),
            threads: 1,
            threaded_from: DEFAULT_THREADED_FROM,
        }
    }
}

/// Whether a call runs alone, so that it may take the idle cores.
///
/// Calls in flight are counted; a call that starts while none other runs, with enough
/// candidates, runs its products on a pool of [`RuntimeConfig::threads`] threads. A call
/// that starts during it stays on its own thread, so the cores are shared for the rest
/// of the first call at most.
struct Threading {
    pool: Option<tract_linalg::multithread::Executor>,
    from: usize,
    in_flight: AtomicUsize,
}

/// Counts one call in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Threading {
    fn new(config: &RuntimeConfig) -> Threading {
        Threading {
            pool: (config.threads > 1).then(|| {
                tract_linalg::multithread::Executor::multithread_with_name(
                    config.threads,
                    "podscore-tract",
                )
            }),
            from: config.threaded_from,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Runs `call` for `rows` candidates, on the pool if it is alone and large enough.
    fn run<R>(&self, rows: usize, call: impl FnOnce() -> R) -> R {
        // Without a pool (one thread, the default) no call is counted: nothing reads it.
        let Some(pool) = &self.pool else {
            return call();
        };
        let others = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _counted = InFlight(&self.in_flight);
        if others == 0 && rows >= self.from {
            tract_linalg::multithread::multithread_tract_scope(pool.clone(), call)
        } else {
            call()
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuntimeError {
    #[error("invalid runtime config: {reason}")]
    Config { reason: String },
    #[error("the ONNX model does not match its manifest: {reason}")]
    ModelMismatch { reason: String },
    #[error("tract could not load the model: {reason}")]
    Load { reason: String },
    #[error("{scope} tensors have {got} rows, expected {expected}")]
    Rows {
        scope: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{scope} tensors have widths {got:?}, the manifest needs {expected:?}")]
    Widths {
        scope: &'static str,
        expected: ScopeWidths,
        got: ScopeWidths,
    },
    #[error("input `{input}` holds {got} values, {expected} expected for its rows and width")]
    Length {
        input: String,
        expected: usize,
        got: usize,
    },
    #[error("feature `{feature}` (row {row}): id {id} is outside its table of {table_rows} rows")]
    IdOutOfRange {
        feature: String,
        row: usize,
        id: i64,
        table_rows: usize,
    },
    #[error("input `{input}` (row {row}) holds a NaN or infinite value")]
    NotFinite { input: String, row: usize },
    #[error("inference failed: {reason}")]
    Inference { reason: String },
}

fn tract_error(wrap: fn(String) -> RuntimeError) -> impl Fn(anyhow::Error) -> RuntimeError {
    move |error| wrap(format!("{error:#}"))
}

fn load_error(reason: String) -> RuntimeError {
    RuntimeError::Load { reason }
}

fn mismatch(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::ModelMismatch {
        reason: reason.into(),
    }
}

/// Logits of one call, `[rows, heads]`, row-major, column `index` of each head.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub rows: usize,
    pub heads: usize,
    pub values: Vec<f32>,
}

impl Logits {
    pub fn row(&self, row: usize) -> &[f32] {
        &self.values[row * self.heads..(row + 1) * self.heads]
    }
}

/// The id columns of one id or bag feature and the row count of its table.
#[derive(Debug, Clone)]
struct IdColumns {
    feature: String,
    scope: Scope,
    kind: Kind,
    slot: usize,
    width: usize,
    table_rows: usize,
}

/// A plan and the run states it has handed out and got back.
///
/// A state holds one run's per-node setup (tract builds it for every node of the plan);
/// building it for every call, as `plan.run` does, was a tenth of a one-candidate call.
/// A call takes a state from the pool or spawns one, and gives it back when done, so the
/// pool holds at most as many states as calls ever ran at once on this plan.
#[derive(Debug)]
struct PooledPlan {
    plan: Arc<TypedSimplePlan>,
    /// Locked only to push or pop, never across a run.
    idle: Mutex<Vec<TypedSimpleState>>,
}

impl PooledPlan {
    fn new(plan: Arc<TypedSimplePlan>) -> PooledPlan {
        PooledPlan {
            plan,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn run(&self, inputs: TVec<TValue>) -> anyhow::Result<TVec<TValue>> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let mut state = match pooled {
            Some(state) => state,
            None => self.plan.spawn()?,
        };
        // A failed run may leave values behind in the state: it is dropped, not pooled.
        let outputs = state.run(inputs)?;
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(state);
        Ok(outputs)
    }
}

/// A plan optimized for exactly `rows` candidates.
#[derive(Debug)]
struct BucketPlan {
    rows: usize,
    plan: PooledPlan,
}

/// How long each load step took, for the logs and the load-time budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadTimings {
    pub decode_and_type: Duration,
    pub symbolic_plan: Duration,
    pub bucket_plans: Duration,
    pub total: Duration,
}

/// A loaded model, ready for concurrent calls.
pub struct Runtime {
    inputs: Vec<Input>,
    widths: [ScopeWidths; 2],
    id_columns: Vec<IdColumns>,
    heads: usize,
    /// Sorted by `rows`, ascending.
    buckets: Vec<BucketPlan>,
    symbolic: PooledPlan,
    threading: Threading,
    timings: LoadTimings,
    /// Whether each candidate row brings its own request row ([`Runtime::load_row_wise`]).
    row_wise: bool,
}

impl std::fmt::Debug for Runtime {
    /// The plans print whole graphs with their weights; a runtime is described by its
    /// shape and buckets instead.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Runtime")
            .field(
                "inputs",
                &self.inputs.iter().map(Input::name).collect::<Vec<_>>(),
            )
            .field("heads", &self.heads)
            .field("buckets", &self.buckets())
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Parses `onnx`, checks it against `manifest`, and optimizes the symbolic plan and
    /// one concrete plan per bucket.
    pub fn load(
        manifest: &Manifest,
        onnx: &[u8],
        config: &RuntimeConfig,
    ) -> Result<Runtime, RuntimeError> {
        Runtime::load_with(manifest, onnx, config, false)
    }

    /// [`Runtime::load`] for offline scoring: every call takes as many request rows as
    /// candidate rows, candidate `i` scored for request `i`, so that one call scores rows
    /// of many requests. The graph is the same file: its request-scope inputs are
    /// declared with leading dimension 1 and only broadcast into the candidates' `[N, H]`
    /// sum, so given `N` rows instead they compute every row's request half on its own;
    /// the load declares them `N` before tract types the graph. A row's logits are those
    /// of a one-request call (the tests hold them equal to 1e-5), but the request half is
    /// computed once per row rather than once per request: the server never loads this.
    pub fn load_row_wise(
        manifest: &Manifest,
        onnx: &[u8],
        config: &RuntimeConfig,
    ) -> Result<Runtime, RuntimeError> {
        Runtime::load_with(manifest, onnx, config, true)
    }

    fn load_with(
        manifest: &Manifest,
        onnx: &[u8],
        config: &RuntimeConfig,
        row_wise: bool,
    ) -> Result<Runtime, RuntimeError> {
        let started = Instant::now();
        let mut buckets = config.buckets.clone();
        buckets.sort_unstable();
        buckets.dedup();
        if buckets.first() == Some(&0) {
            return Err(RuntimeError::Config {
                reason: "a bucket of 0 candidates".into(),
            });
        }
        if config.threads == 0 {
            return Err(RuntimeError::Config {
                reason: "0 threads".into(),
            });
        }
        let heads = manifest
            .heads_by_column()
            .map_err(|error| mismatch(error.to_string()))?
            .len();
        let framework = tract_onnx::onnx();
        let proto = framework
            .proto_model_for_read(&mut &onnx[..])
            .map_err(tract_error(load_error))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| mismatch("the file has no graph"))?;

        let inputs = graph::inputs(&manifest.features);
        let declared: Vec<&str> = graph
            .input
            .iter()
            .map(|input| input.name.as_str())
            .collect();
        let expected: Vec<String> = inputs.iter().map(Input::name).collect();
        if declared != expected {
            return Err(mismatch(format!(
                "graph inputs are {declared:?}, the manifest implies {expected:?}"
            )));
        }
        for (declared, input) in graph.input.iter().zip(&inputs) {
            let (element, dims) = declared_type(declared)
                .ok_or_else(|| mismatch(format!("input `{}` has no tensor type", input.name())))?;
            let expected_element = data_type(input.element());
            let expected_dims = input.shape().map(|dim| Some(dimension(dim)));
            if element != expected_element as i32 || dims != expected_dims {
                return Err(mismatch(format!(
                    "input `{}` is {:?} {dims:?}, the manifest implies {expected_element:?} {expected_dims:?}",
                    input.name(),
                    DataType::try_from(element).unwrap_or(DataType::Undefined),
                )));
            }
        }
        if graph.output.len() != 1 || graph.output[0].name != OUTPUT_NAME {
            return Err(mismatch(format!(
                "the graph's one output must be `{OUTPUT_NAME}`"
            )));
        }
        let table_rows = embedding_table_rows(&proto);
        let mut id_columns = Vec::new();
        for spec in &manifest.features {
            if !matches!(spec.kind, Kind::Id | Kind::IdBag) {
                continue;
            }
            let rows = *table_rows.get(spec.name.as_str()).ok_or_else(|| {
                mismatch(format!(
                    "no `{}` entry: the table size of feature `{}` is unknown",
                    graph::embedding_rows_key(&spec.name),
                    spec.name
                ))
            })?;
            id_columns.push(IdColumns {
                feature: spec.name.clone(),
                scope: spec.scope,
                kind: spec.kind,
                slot: spec.slot,
                width: spec.width,
                table_rows: rows,
            });
        }

        let mut proto = proto;
        if row_wise {
            let graph = proto
                .graph
                .as_mut()
                .ok_or_else(|| mismatch("the file has no graph"))?;
            for (declared, input) in graph.input.iter_mut().zip(&inputs) {
                if input.scope != Scope::Request {
                    continue;
                }
                let first = declared
                    .r#type
                    .as_mut()
                    .and_then(|t| t.value.as_mut())
                    .and_then(|pb::type_proto::Value::TensorType(tensor)| tensor.shape.as_mut())
                    .and_then(|shape| shape.dim.first_mut())
                    .ok_or_else(|| mismatch(format!("input `{}` has no shape", input.name())))?;
                first.value = Some(Dimension::DimParam(CANDIDATES_DIM.to_string()));
            }
        }
        let typed: TypedModel = framework
            .model_for_proto_model(&proto)
            .and_then(|model| model.into_typed())
            .and_then(|model| model.into_decluttered())
            .map_err(tract_error(load_error))?;
        let output_shape = &typed.output_fact(0).map_err(tract_error(load_error))?.shape;
        if output_shape.rank() != 2 || output_shape[1] != TDim::from(heads) {
            return Err(mismatch(format!(
                "output shape {output_shape:?}, expected [N, {heads}]"
            )));
        }
        let decode_and_type = started.elapsed();

        let symbolic_started = Instant::now();
        let symbolic = optimize(typed.clone())?;
        let symbolic_plan = symbolic_started.elapsed();

        let buckets_started = Instant::now();
        let candidates = typed.symbols.sym(CANDIDATES_DIM);
        let buckets = buckets
            .into_iter()
            .map(|rows| {
                let values = HashMap::from([(candidates.clone(), TDim::from(rows))]);
                let concrete = typed
                    .set_symbols(&values)
                    .map_err(tract_error(load_error))?;
                Ok(BucketPlan {
                    rows,
                    plan: PooledPlan::new(optimize(concrete)?),
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let bucket_plans = buckets_started.elapsed();

        Ok(Runtime {
            inputs,
            widths: [
                ScopeWidths::of(&manifest.features, Scope::Request),
                ScopeWidths::of(&manifest.features, Scope::Candidate),
            ],
            id_columns,
            heads,
            buckets,
            symbolic: PooledPlan::new(symbolic),
            threading: Threading::new(config),
            row_wise,
            timings: LoadTimings {
                decode_and_type,
                symbolic_plan,
                bucket_plans,
                total: started.elapsed(),
            },
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Rows of the embedding table of id feature `feature`, from the graph's metadata.
    pub fn table_rows(&self, feature: &str) -> Option<usize> {
        self.id_columns
            .iter()
            .find(|columns| columns.feature == feature)
            .map(|columns| columns.table_rows)
    }

    pub fn load_timings(&self) -> &LoadTimings {
        &self.timings
    }

    /// Candidate counts with a concrete plan, ascending.
    pub fn buckets(&self) -> Vec<usize> {
        self.buckets.iter().map(|bucket| bucket.rows).collect()
    }

    /// The rows a call with `candidates` candidates runs with: its bucket, or itself on
    /// the symbolic plan.
    pub fn padded_rows(&self, candidates: usize) -> usize {
        self.bucket_for(candidates)
            .map_or(candidates, |bucket| bucket.rows)
    }

    fn bucket_for(&self, candidates: usize) -> Option<&BucketPlan> {
        self.buckets.iter().find(|bucket| bucket.rows >= candidates)
    }

    /// Logits for one request's candidates (a runtime from [`Runtime::load_row_wise`]:
    /// for each candidate row with its own request row). Fails, without calling tract,
    /// when a width, a length or an id does not fit the model.
    pub fn infer(
        &self,
        request: &ScopeTensors,
        candidates: &ScopeTensors,
    ) -> Result<Logits, RuntimeError> {
        self.check(Scope::Request, request)?;
        self.check(Scope::Candidate, candidates)?;
        let request_rows = if self.row_wise { candidates.rows } else { 1 };
        if request.rows != request_rows {
            return Err(RuntimeError::Rows {
                scope: Scope::Request.as_str(),
                expected: request_rows,
                got: request.rows,
            });
        }
        if candidates.rows == 0 {
            return Ok(Logits {
                rows: 0,
                heads: self.heads,
                values: Vec::new(),
            });
        }
        let (plan, rows) = match self.bucket_for(candidates.rows) {
            Some(bucket) => (&bucket.plan, bucket.rows),
            None => (&self.symbolic, candidates.rows),
        };
        let tensors: TVec<TValue> = self
            .inputs
            .iter()
            .map(|input| match input.scope {
                Scope::Request if self.row_wise => input_tensor(input, request, rows),
                Scope::Request => input_tensor(input, request, 1),
                Scope::Candidate => input_tensor(input, candidates, rows),
            })
            .collect::<Result<_, _>>()?;
        let outputs = self
            .threading
            .run(rows, || plan.run(tensors))
            .map_err(tract_error(|reason| RuntimeError::Inference { reason }))?;
        let values = outputs
            .first()
            .ok_or_else(|| RuntimeError::Inference {
                reason: "the plan returned no output".into(),
            })?
            .try_as_plain_ram()
            .and_then(|view| view.as_slice::<f32>().map(|values| values.to_vec()))
            .map_err(tract_error(|reason| RuntimeError::Inference { reason }))?;
        let wanted = candidates.rows * self.heads;
        if values.len() < wanted {
            return Err(RuntimeError::Inference {
                reason: format!(
                    "the plan returned {} values, {wanted} expected",
                    values.len()
                ),
            });
        }
        let mut values = values;
        values.truncate(wanted);
        Ok(Logits {
            rows: candidates.rows,
            heads: self.heads,
            values,
        })
    }

    /// Widths, lengths, finiteness and id ranges of one scope's tensors.
    fn check(&self, scope: Scope, tensors: &ScopeTensors) -> Result<(), RuntimeError> {
        let expected = self.widths[scope as usize];
        if tensors.widths != expected {
            return Err(RuntimeError::Widths {
                scope: scope.as_str(),
                expected,
                got: tensors.widths,
            });
        }
        let rows = tensors.rows;
        for part in Part::ALL {
            let width = part.columns(expected);
            let got = part.values(tensors).len();
            if got != rows * width {
                return Err(RuntimeError::Length {
                    input: graph::input_name(scope, part),
                    expected: rows * width,
                    got,
                });
            }
        }
        for part in Part::ALL {
            let Values::Float32(values) = part.values(tensors) else {
                continue;
            };
            if let Some(position) = values.iter().position(|value| !value.is_finite()) {
                return Err(RuntimeError::NotFinite {
                    input: graph::input_name(scope, part),
                    row: position / part.columns(expected).max(1),
                });
            }
        }
        for columns in self
            .id_columns
            .iter()
            .filter(|columns| columns.scope == scope)
        {
            let (values, width) = match columns.kind {
                Kind::Id => (&tensors.ids, expected.ids),
                _ => (&tensors.bag_ids, expected.bag),
            };
            for row in 0..rows {
                let start = row * width + columns.slot;
                for &id in &values[start..start + columns.width] {
                    if id < 0 || id as u64 >= columns.table_rows as u64 {
                        return Err(RuntimeError::IdOutOfRange {
                            feature: columns.feature.clone(),
                            row,
                            id,
                            table_rows: columns.table_rows,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Element type and dimensions a graph input declares, if it declares a tensor type.
fn declared_type(value: &pb::ValueInfoProto) -> Option<(i32, Vec<Option<Dimension>>)> {
    let pb::type_proto::Value::TensorType(tensor) = value.r#type.as_ref()?.value.as_ref()?;
    let dims = tensor
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|dimension| dimension.value.clone())
        .collect();
    Some((tensor.elem_type, dims))
}

fn optimize(model: TypedModel) -> Result<Arc<TypedSimplePlan>, RuntimeError> {
    model
        .into_optimized()
        .and_then(|model| model.into_runnable())
        .map_err(tract_error(load_error))
}

/// One graph input for `rows` rows: the scope's values, then zero rows up to `rows`,
/// written straight into the tensor tract reads.
fn input_tensor(
    input: &Input,
    tensors: &ScopeTensors,
    rows: usize,
) -> Result<TValue, RuntimeError> {
    let shape = [rows, input.columns];
    let used = tensors.rows * input.columns;
    let tensor = match input.values(tensors) {
        Values::Int64(values) => padded_tensor(&shape, &values[..used]),
        Values::Float32(values) => padded_tensor(&shape, &values[..used]),
    };
    tensor
        .map(IntoTValue::into_tvalue)
        .map_err(tract_error(|reason| RuntimeError::Inference { reason }))
}

/// A zeroed tensor of `shape` whose first values are `values`.
fn padded_tensor<T>(shape: &[usize; 2], values: &[T]) -> anyhow::Result<Tensor>
where
    T: Datum + Copy + tract_onnx::prelude::tract_num_traits::Zero,
{
    let mut tensor = Tensor::zero::<T>(shape)?;
    tensor.try_as_plain_ram_mut()?.as_slice_mut::<T>()?[..values.len()].copy_from_slice(values);
    Ok(tensor)
}

// The server shares one runtime across threads; this stops compiling if it cannot.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Runtime>();
};
