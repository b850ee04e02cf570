//! What the Redis feature store costs per request against the embedded snapshot: a
//! 100-candidate request (a known user, 100 known shows and episodes) on loopback, with
//! the shipped bundle and the whole demo snapshot loaded into a `redis-server` started
//! here. Two groups, each with a `snapshot` and a `redis` function:
//! - `lookup_100`: the store alone, `FeatureStore::lookup` (one user, 100 shows and 100
//!   episodes: 201 concurrent `HMGET`s against one in-memory map read);
//! - `score_100`: `POST /score` to `podscore serve --features` and to
//!   `podscore serve --redis`, the same binary the user runs.
//!
//! Criterion runs one function after the other; for a comparison on a shared machine,
//! run the bench alternately with a filter (`-- snapshot`, `-- redis`, repeated).

#[path = "../redis/servers.rs"]
mod servers;

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

use podscore::logs::{self, Snapshot};
use podscore::store::{
    FeatureStore, LookupKeys, RedisConfig, RedisStore, RedisTarget, SnapshotStore,
};
use servers::{Podscore, RedisServer};

const CANDIDATES: usize = 100;

/// A known user and 100 candidates, each a known show with one of its episodes.
fn request(snapshot: &Snapshot) -> Value {
    let mut episodes: Vec<_> = snapshot
        .episodes
        .values()
        .filter(|episode| episode.show_id.is_some())
        .collect();
    episodes.sort_by(|left, right| left.id.cmp(&right.id));
    let candidates: Vec<Value> = episodes
        .iter()
        .step_by((episodes.len() / CANDIDATES).max(1))
        .take(CANDIDATES)
        .enumerate()
        .map(|(index, episode)| {
            let kind = if index % 2 == 0 { "ad" } else { "promotion" };
            json!({"id": format!("c{index}"), "kind": kind, "show_id": episode.show_id, "episode_id": episode.id,
                   "creative": {"creative_id": "cr3", "campaign_id": "cp1", "format": "audio", "slot": "midroll", "layout": "card"}})
        })
        .collect();
    json!({"request_id": "bench", "user": {"id": "u42"},
           "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "home", "session_length_s": 420},
           "candidates": candidates})
}

fn keys(request: &Value) -> LookupKeys {
    let mut keys = LookupKeys {
        user: request["user"]["id"].as_str().map(str::to_string),
        ..LookupKeys::default()
    };
    for candidate in request["candidates"].as_array().into_iter().flatten() {
        if let Some(show) = candidate["show_id"].as_str() {
            keys.add_show(show);
        }
        if let Some(episode) = candidate["episode_id"].as_str() {
            keys.add_episode(episode);
        }
    }
    keys
}

fn store_cost(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let features = root.join("models/demo-features");
    let snapshot = logs::read_snapshot(&features).expect("demo features");
    let request = request(&snapshot);
    let keys = keys(&request);
    let redis = RedisServer::start();
    redis.load(&features);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");

    let mut group = c.benchmark_group("lookup_100");
    group.throughput(Throughput::Elements(CANDIDATES as u64));
    let in_memory = SnapshotStore::from_snapshot(snapshot);
    let in_redis = {
        let _entered = runtime.enter();
        RedisStore::open(&RedisConfig::new(RedisTarget::new(&redis.url(), false)))
            .expect("the store opens")
    };
    for (name, store) in [
        ("snapshot", &in_memory as &dyn FeatureStore),
        ("redis", &in_redis),
    ] {
        let found = runtime.block_on(store.lookup(&keys)).expect("lookup");
        assert_eq!(
            found.shows.len(),
            keys.shows.len(),
            "{name}: every show is known"
        );
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(store.lookup(&keys)).expect("lookup"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("score_100");
    group.throughput(Throughput::Elements(CANDIDATES as u64));
    let models = root.join("models");
    let client = reqwest::Client::new();
    for (name, flags) in [
        (
            "snapshot",
            vec!["--features".to_string(), features.display().to_string()],
        ),
        // A store deadline past anything the machine's load can cause: the bench times
        // the Redis path, not the cold-start fallback.
        (
            "redis",
            vec![
                "--redis".to_string(),
                redis.url(),
                "--store-timeout-ms".to_string(),
                "1000".to_string(),
            ],
        ),
    ] {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = Podscore::serve(&models, &flags);
        let post = || async {
            let reply = client
                .post(server.url("/score"))
                .json(&request)
                .send()
                .await
                .expect("the server answers");
            assert_eq!(reply.status(), 200);
            let body: Value = reply.json().await.expect("JSON");
            assert!(body.get("degraded").is_none(), "{name}: not degraded");
            body
        };
        runtime.block_on(post());
        group.bench_function(name, |b| b.iter(|| runtime.block_on(post())));
    }
    group.finish();
}

criterion_group!(benches, store_cost);
criterion_main!(benches);
