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
//! Not a criterion bench: it is a worker the benchmark script drives.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use podscore::bundle::Bundle;
use podscore::features::{Scope, ScopeTensors};
use podscore::graph::{self, Values};
use podscore::model::testing;
use podscore::runtime::{Runtime, RuntimeConfig};
use serde_json::{Value, json};

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
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        bundle: PathBuf::from("models/podcast-mtl/1"),
        write_inputs: None,
        inputs: None,
        candidates: vec![1, 10, 100, 1000],
        threads: 1,
        buckets: None,
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
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{}",
        json!({"ready": true, "buckets": runtime.buckets(), "load_ms": load_ms})
    )?;
    stdout.flush()?;
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request: Value = serde_json::from_str(&line)?;
        let count = request["candidates"].as_u64().context("candidates")? as usize;
        let calls = request["calls"].as_u64().context("calls")? as usize;
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
        writeln!(
            stdout,
            "{}",
            json!({"candidates": count, "times_us": times, "logits": logits})
        )?;
        stdout.flush()?;
    }
    Ok(())
}
