//! Inference latency per call on a random model of the shipped size: bucketed concrete
//! plans (the default) against the symbolic plan, for 1 to 1000 candidates. Also prints
//! how long `Runtime::load` takes, which must stay well under the server's 2 s budget.
//!
//! `cargo bench --bench inference -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use podscore::model::testing::{self, VocabularySizes};
use podscore::onnx;
use podscore::runtime::{Runtime, RuntimeConfig};

const CANDIDATE_COUNTS: [usize; 4] = [1, 10, 100, 1000];

fn inference(criterion: &mut Criterion) {
    let bundle = testing::random_bundle(VocabularySizes::shipped_like(), 1);
    let parameters: usize = bundle
        .weights
        .tensors
        .values()
        .map(|tensor| tensor.data.len())
        .sum();
    let export_started = Instant::now();
    let onnx = onnx::export(&bundle.manifest, &bundle.weights).expect("exports");
    eprintln!(
        "model: {parameters} parameters, {} bytes of ONNX, exported in {:?}",
        onnx.len(),
        export_started.elapsed()
    );
    let load = |config: &RuntimeConfig| {
        let started = Instant::now();
        let runtime = Runtime::load(&bundle.manifest, &onnx, config).expect("loads");
        eprintln!(
            "load with buckets {:?}: {:?} ({:?})",
            config.buckets,
            started.elapsed(),
            runtime.load_timings()
        );
        runtime
    };
    let bucketed = load(&RuntimeConfig::default());
    let symbolic = load(&RuntimeConfig {
        buckets: Vec::new(),
        ..RuntimeConfig::default()
    });

    let mut group = criterion.benchmark_group("inference");
    for candidates in CANDIDATE_COUNTS {
        let (request, candidate_tensors) = testing::random_inputs(
            &bundle.manifest,
            &bundle.vocabularies,
            candidates,
            candidates as u64,
        );
        group.throughput(Throughput::Elements(candidates as u64));
        for (name, runtime) in [("bucketed", &bucketed), ("symbolic", &symbolic)] {
            group.bench_with_input(
                BenchmarkId::new(name, candidates),
                &candidates,
                |bencher, _| {
                    bencher.iter(|| {
                        runtime
                            .infer(black_box(&request), black_box(&candidate_tensors))
                            .expect("infers")
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, inference);
criterion_main!(benches);
