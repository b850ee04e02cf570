//! The request path's CPU stages before and around inference, per candidate count (1,
//! 10, 100, 1000) on the shipped bundle and the demo snapshot: decoding and validation,
//! the store look-up (keys de-duplicated, the snapshot's records fetched), and assembly
//! (records laid over, features into the model's input tensors) as the service times it
//! (`Inferred::assembly`). Inference itself per N is the `inference` bench; the whole
//! handler is the `serve` bench.
//!
//! `cargo bench --bench assembly -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use podscore::runtime::RuntimeConfig;
use podscore::service::Model;
use podscore::service::infer;
use podscore::service::lookup::{self, Features};
use podscore::service::request::ScoreRequest;
use podscore::service::validate::{self, Limits, ValidatedRequest};
use podscore::store::{FeatureStore, SnapshotStore};

#[path = "requests.rs"]
mod requests;

/// The allocator the `podscore` binary serves with, so that these figures are the
/// served ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CANDIDATE_COUNTS: [usize; 4] = [1, 10, 100, 1000];

fn decode(body: &str, limits: &Limits) -> ValidatedRequest {
    let raw: ScoreRequest = serde_json::from_str(body).expect("decodes");
    validate::validate(raw, limits).expect("valid")
}

fn stages(criterion: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let features = root.join("models/demo-features");
    let store = SnapshotStore::open(&features).expect("demo features");
    let model = Model::open(
        &root.join("models/podcast-mtl/1"),
        &RuntimeConfig::default(),
    )
    .expect("the shipped bundle loads");
    let limits = Limits::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");

    let mut group = criterion.benchmark_group("request_stages");
    for count in CANDIDATE_COUNTS {
        let body = requests::score_request(&features, count);
        let request = decode(&body, &limits);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("decode", count), &body, |b, body| {
            b.iter(|| black_box(decode(body, &limits)))
        });
        group.bench_with_input(BenchmarkId::new("lookup", count), &request, |b, request| {
            b.iter(|| {
                let keys = lookup::keys(request);
                black_box(runtime.block_on(store.lookup(&keys)).expect("snapshot"))
            })
        });
        let keys = lookup::keys(&request);
        let looked_up = Features {
            records: runtime.block_on(store.lookup(&keys)).expect("snapshot"),
            request,
            degraded: false,
            took: Duration::ZERO,
        };
        group.bench_with_input(
            BenchmarkId::new("assembly", count),
            &looked_up,
            |b, looked_up| {
                // Only the assembly share of each call, as the service reports it.
                b.iter_custom(|iterations| {
                    (0..iterations)
                        .map(|_| infer::infer(&model, looked_up).expect("scores").assembly)
                        .sum()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
