//! End-to-end latency of `POST /score` with 100 candidates against the shipped default
//! bundle and the demo feature snapshot: in process through the router (decode, validate,
//! look up, assemble, infer, encode), and over a loopback socket.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podscore::api;
use podscore::service::{self, Reloader, Service};
use podscore::store::SnapshotStore;
use tower::ServiceExt;

#[path = "requests.rs"]
mod requests;

/// The allocator the `podscore` binary serves with, so that these figures are the
/// served ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CANDIDATES: usize = 100;

fn score_100(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let features = root.join("models/demo-features");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(SnapshotStore::open(&features).expect("demo features"));
    let config = service::Config {
        max_inflight: 2,
        ..service::Config::default()
    };
    let service = Service::new(config, store).expect("service");
    Reloader::new(&root.join("models"), None)
        .reload(&service)
        .expect("load the shipped bundle");
    let app = api::app(service, api::Config::default());
    let body = requests::score_request(&features, CANDIDATES);

    let mut group = c.benchmark_group("score_e2e");
    group.throughput(Throughput::Elements(CANDIDATES as u64));
    group.bench_function("in_process_100", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = Request::post("/score")
                    .header("content-type", "application/json")
                    .body(Body::from(body.clone()))
                    .unwrap();
                let response = app.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200);
                axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap()
            })
        })
    });

    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let served = app.clone();
    runtime.spawn(async move {
        let limits = podscore::serve::ServerLimits::default();
        podscore::serve::serve(listener, served, &limits, std::future::pending()).await
    });
    let client = reqwest::Client::new();
    let url = format!("http://{address}/score");
    group.bench_function("loopback_http_100", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, score_100);
criterion_main!(benches);
