//! The `/score` handler in process, a fixed number of times, for instruction counts under
//! callgrind: the same router, shipped bundle, demo snapshot and request generator as the
//! `serve` bench, no criterion (its adaptive iteration counts would make totals vary).
//! Inference runs on one thread. Each request is checked to answer 200.
//! `tests/benches/request_path.sh` runs it twice under callgrind with different call
//! counts and reports the difference per call, so that start-up (bundle load, plan
//! compilation) cancels out.
//!
//! `request_path --candidates N --calls K`

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use podscore::api;
use podscore::runtime::RuntimeConfig;
use podscore::service::{self, Reloader, Service};
use podscore::store::SnapshotStore;
use tower::ServiceExt;

#[path = "requests.rs"]
mod requests;

/// The allocator the `podscore` binary serves with, so that these counts are the served
/// ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn argument(arguments: &[String], name: &str) -> usize {
    arguments
        .iter()
        .position(|argument| argument == name)
        .and_then(|at| arguments.get(at + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("usage: request_path --candidates N --calls K ({name})"))
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let candidates = argument(&arguments, "--candidates");
    let calls = argument(&arguments, "--calls");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let features = root.join("models/demo-features");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let store = Arc::new(SnapshotStore::open(&features).expect("demo features"));
    let config = service::Config {
        max_inflight: 1,
        ..service::Config::default()
    };
    let service = Service::new(config, store).expect("service");
    // One thread (the default): tract's threaded products spin while they wait, which would make the
    // counts vary from run to run.
    Reloader::with_runtime(&root.join("models"), None, RuntimeConfig::default())
        .reload(&service)
        .expect("load the shipped bundle");
    let app = api::app(service, api::Config::default());
    let body = requests::score_request(&features, candidates);
    let mut answered = 0;
    for _ in 0..calls {
        answered += runtime.block_on(async {
            let request = Request::post("/score")
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .expect("a request");
            let response = app.clone().oneshot(request).await.expect("an answer");
            assert_eq!(response.status(), 200);
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("a body")
                .len()
        });
    }
    println!("{calls} requests of {candidates} candidates, {answered} bytes answered");
}
