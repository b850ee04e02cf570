//! podscore's side of the benchmark's inference comparison (`tests/bench.sh`): the
//! runtime's `infer` on a bundle, driven over stdin so that the benchmark can interleave it
//! with ONNX Runtime on the same inputs.
//!
//! `inference_compare --bundle DIR --write-inputs FILE --candidates 1,10,100,1000` writes
//! seeded inputs assembled from the bundle's vocabularies (the graph's feeds per count,
//! as JSON) for both sides. `inference_compare --bundle DIR --inputs FILE [--threads T]`
//! then answers one JSON line per request line `{"candidates": N, "calls": K}`: the
//! microseconds of each of the K calls, and the logits of the last one. `--threads` is
//! the runtime's: 1 (the default here) keeps every call on one thread, as ONNX Runtime's
//! one intra-op thread; the server's default lets a lone large call use every core.
//!
//! `inference_compare --model FILE --inputs FILE` answers the same lines with tract alone
//! on any ONNX file (rows `N`) and its feeds: the benchmark's minimal reproductions.
//! `inference_compare --bundle DIR --profile N [--calls K]` prints tract's per-node
//! profile of the bundle's graph at N rows.
//!
//! Not a criterion bench: it is a worker the benchmark script drives.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use podscore::bundle::Bundle;
use podscore::features::{Scope, ScopeTensors};
use podscore::graph::{self, Values};
use podscore::model::testing;
use podscore::runtime::{Runtime, RuntimeConfig};
use serde_json::{Value, json};
use tract_onnx::prelude::{
    Datum, Framework, InferenceModelExt, IntoRunnable, IntoTValue, IntoTensor, OutletId, TDim,
    TVec, Tensor, TypedSimplePlan, tract_ndarray,
};

/// Seeds the inputs of a count from the count itself, so every run measures the same
/// requests.
const SEED_BASE: u64 = 13_000;

struct Args {
    bundle: PathBuf,
    write_inputs: Option<PathBuf>,
    inputs: Option<PathBuf>,
    candidates: Vec<usize>,
    threads: usize,
    buckets: Option<Vec<usize>>,
    model: Option<PathBuf>,
    profile: Option<usize>,
    calls: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        bundle: PathBuf::from("models/podcast-mtl/1"),
        write_inputs: None,
        inputs: None,
        candidates: vec![1, 10, 100, 1000],
        threads: 1,
        buckets: None,
        model: None,
        profile: None,
        calls: 200,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bundle" => args.bundle = value()?.into(),
            "--write-inputs" => args.write_inputs = Some(value()?.into()),
            "--inputs" => args.inputs = Some(value()?.into()),
            "--candidates" => {
                args.candidates = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--candidates takes counts like 1,10,100")?
            }
            "--threads" => args.threads = value()?.parse().context("--threads")?,
            "--model" => args.model = Some(value()?.into()),
            "--profile" => args.profile = Some(value()?.parse().context("--profile")?),
            "--calls" => args.calls = value()?.parse().context("--calls")?,
            "--buckets" => {
                args.buckets = Some(
                    value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .context("--buckets takes counts like 1,2,4")?,
                )
            }
            // cargo bench appends this to every bench binary's arguments.
            "--bench" => {}
            other => bail!("unknown argument `{other}`"),
        }
    }
    Ok(args)
}

fn feeds(bundle: &Bundle, request: &ScopeTensors, candidates: &ScopeTensors) -> Value {
    let mut feeds = serde_json::Map::new();
    for input in graph::inputs(&bundle.manifest.features) {
        let tensors = match input.scope {
            Scope::Request => request,
            Scope::Candidate => candidates,
        };
        let (dtype, data) = match input.values(tensors) {
            Values::Int64(data) => ("int64", json!(data)),
            Values::Float32(data) => ("float32", json!(data)),
        };
        feeds.insert(
            input.name(),
            json!({"dtype": dtype, "shape": [tensors.rows, input.columns], "data": data}),
        );
    }
    Value::Object(feeds)
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    if let Some(model) = &args.model {
        let inputs = args
            .inputs
            .as_ref()
            .context("--model needs --inputs FILE")?;
        return serve_plain_plans(model, inputs);
    }
    if let Some(candidates) = args.profile {
        return profile(&args.bundle.join("model.onnx"), candidates, args.calls);
    }
    let bundle = Bundle::read(&args.bundle)
        .with_context(|| format!("reading bundle {}", args.bundle.display()))?;
    let mut inputs: BTreeMap<usize, (ScopeTensors, ScopeTensors)> = BTreeMap::new();
    for count in &args.candidates {
        let tensors = testing::random_inputs(
            &bundle.manifest,
            &bundle.vocabularies,
            *count,
            SEED_BASE + *count as u64,
        );
        inputs.insert(*count, tensors);
    }
    if let Some(path) = &args.write_inputs {
        let all: serde_json::Map<String, Value> = inputs
            .iter()
            .map(|(count, (request, candidates))| {
                (count.to_string(), feeds(&bundle, request, candidates))
            })
            .collect();
        std::fs::write(path, serde_json::to_vec(&all)?)
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    if args.inputs.is_none() {
        bail!("give --write-inputs FILE or --inputs FILE");
    }
    let mut config = RuntimeConfig {
        threads: args.threads,
        ..RuntimeConfig::default()
    };
    if let Some(buckets) = &args.buckets {
        config.buckets = buckets.clone();
    }
    let loading = Instant::now();
    let runtime = Runtime::load(&bundle.manifest, &bundle.onnx, &config)
        .context("loading the bundle into tract")?;
    let load_ms = loading.elapsed().as_secs_f64() * 1e3;
    let hello = json!({"ready": true, "buckets": runtime.buckets(), "load_ms": load_ms});
    serve_lines(hello, |count, calls| {
        let (request_tensors, candidate_tensors) = inputs
            .get(&count)
            .with_context(|| format!("no inputs for {count} candidates"))?;
        let mut times = Vec::with_capacity(calls);
        let mut logits = Vec::new();
        for _ in 0..calls {
            let started = Instant::now();
            let outcome = runtime.infer(request_tensors, candidate_tensors)?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
            logits = outcome.values;
        }
        Ok((times, logits))
    })
}

/// The line protocol: prints `hello`, then for each request line `{"candidates": N,
/// "calls": K}` the times and last logits `run(N, K)` returns.
fn serve_lines(
    hello: Value,
    mut run: impl FnMut(usize, usize) -> anyhow::Result<(Vec<f64>, Vec<f32>)>,
) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{hello}")?;
    stdout.flush()?;
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request: Value = serde_json::from_str(&line)?;
        let count = request["candidates"].as_u64().context("candidates")? as usize;
        let calls = request["calls"].as_u64().context("calls")? as usize;
        let (times, logits) = run(count, calls)?;
        writeln!(
            stdout,
            "{}",
            json!({"candidates": count, "times_us": times, "logits": logits})
        )?;
        stdout.flush()?;
    }
    Ok(())
}

/// `model` optimized by tract for exactly `candidates` rows, as the runtime's bucket plans
/// are.
fn plan_for(model: &Path, candidates: usize) -> anyhow::Result<Arc<TypedSimplePlan>> {
    let typed = tract_onnx::onnx()
        .model_for_path(model)?
        .into_typed()?
        .into_decluttered()?;
    let symbol = typed.symbols.sym("N");
    let concrete = typed.set_symbols(&HashMap::from([(symbol, TDim::from(candidates))]))?;
    concrete.into_optimized()?.into_runnable()
}

/// tract alone (no podscore runtime) on any ONNX file whose symbolic rows are `N`, with
/// the feeds of an inputs file: the benchmark's minimal reproductions.
fn serve_plain_plans(model: &Path, inputs: &Path) -> anyhow::Result<()> {
    let feeds: BTreeMap<String, BTreeMap<String, Value>> =
        serde_json::from_slice(&std::fs::read(inputs)?)?;
    let mut plans = BTreeMap::new();
    for (count, graph_feeds) in &feeds {
        let count: usize = count.parse()?;
        let plan = plan_for(model, count)?;
        let mut tensors = TVec::new();
        for outlet in plan.model().input_outlets()? {
            let name = &plan.model().node(outlet.node).name;
            let feed = graph_feeds
                .get(name)
                .with_context(|| format!("no feed for input `{name}`"))?;
            tensors.push(feed_tensor(feed)?.into_tvalue());
        }
        plans.insert(count, (plan, tensors));
    }
    serve_lines(json!({"ready": true}), |count, calls| {
        let (plan, tensors) = plans
            .get(&count)
            .with_context(|| format!("no feeds for {count} rows"))?;
        let mut state = plan.spawn()?;
        let mut times = Vec::with_capacity(calls);
        let mut logits = Vec::new();
        for _ in 0..calls {
            let started = Instant::now();
            let outputs = state.run(tensors.clone())?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
            logits = outputs[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        }
        Ok((times, logits))
    })
}

fn feed_tensor(feed: &Value) -> anyhow::Result<Tensor> {
    let shape: Vec<usize> = serde_json::from_value(feed["shape"].clone())?;
    Ok(match feed["dtype"].as_str() {
        Some("int64") => {
            let data: Vec<i64> = serde_json::from_value(feed["data"].clone())?;
            tract_ndarray::ArrayD::from_shape_vec(shape, data)?.into_tensor()
        }
        Some("float32") => {
            let data: Vec<f32> = serde_json::from_value(feed["data"].clone())?;
            tract_ndarray::ArrayD::from_shape_vec(shape, data)?.into_tensor()
        }
        other => bail!("unknown dtype {other:?}"),
    })
}

/// tract's own per-node profile of the bundle's graph at `candidates` rows: the median
/// time of every node of the optimized plan over `calls` calls, with its operator, output
/// shape and (for products) the kernel tract chose. Prints one JSON document.
fn profile(model: &Path, candidates: usize, calls: usize) -> anyhow::Result<()> {
    let plan = plan_for(model, candidates)?;
    let mut tensors = TVec::new();
    for outlet in plan.model().input_outlets()? {
        let fact = plan.model().outlet_fact(*outlet)?;
        let shape: Vec<usize> = fact
            .shape
            .as_concrete()
            .context("a concrete input shape")?
            .to_vec();
        // Zero ids (row 0 of each table) and zero values: the timing does not depend on
        // the values, only on the shapes.
        let tensor = if fact.datum_type == i64::datum_type() {
            Tensor::zero::<i64>(&shape)?
        } else {
            Tensor::zero::<f32>(&shape)?
        };
        tensors.push(tensor.into_tvalue());
    }
    let mut state = plan.spawn()?;
    for _ in 0..calls.min(20) {
        state.run(tensors.clone())?;
    }
    let mut per_node: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut totals = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        state.run_plan_with_eval(tensors.clone(), |context, op_state, node, inputs| {
            let node_started = Instant::now();
            let outputs = tract_onnx::tract_core::plan::eval(context, op_state, node, inputs);
            per_node
                .entry(node.id)
                .or_default()
                .push(node_started.elapsed().as_secs_f64() * 1e6);
            outputs
        })?;
        totals.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut nodes: Vec<Value> = per_node
        .iter_mut()
        .map(|(id, times)| {
            let node = plan.model().node(*id);
            let shape = plan
                .model()
                .outlet_fact(OutletId::new(*id, 0))
                .map(|fact| format!("{:?}", fact.shape))
                .unwrap_or_default();
            json!({
                "name": node.name,
                "op": node.op().name(),
                "shape": shape,
                "info": node.op().info().unwrap_or_default().join("; "),
                "median_us": median(times),
            })
        })
        .collect();
    nodes.sort_by(|a, b| {
        b["median_us"]
            .as_f64()
            .partial_cmp(&a["median_us"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    println!(
        "{}",
        json!({"candidates": candidates, "nodes_in_plan": plan.model().nodes().len(), "median_total_us": median(&mut totals), "nodes": nodes})
    );
    Ok(())
}
