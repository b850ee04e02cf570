//! Shared helpers for the service's integration tests: random-weight bundles with golden
//! cases, a small feature snapshot, a router over them, and one-call request helpers.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod hostile;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

use podscore::api;
use podscore::bundle::Bundle;
use podscore::entities::{EpisodeRecord, ShowRecord, UserRecord};
use podscore::logs::Snapshot;
use podscore::model::testing::{self, VocabularySizes};
use podscore::onnx;
use podscore::runtime::RuntimeConfig;
use podscore::service::Permit;
use podscore::service::{self, Model, Reloader, Service};
use podscore::store::{FeatureStore, LookupFuture, LookupKeys, SnapshotStore};

/// Name of the model every test serves.
pub const MODEL: &str = "podcast-mtl";
/// Width of the show embedding in the default feature set.
pub const EMBEDDING_DIM: usize = 16;

/// Whether a written bundle's golden cases are what the model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Golden {
    Correct,
    /// The first expected probability is off by 0.01: the bundle must be refused.
    Wrong,
}

fn embedding(seed: f32) -> Vec<f32> {
    (0..EMBEDDING_DIM)
        .map(|index| ((index as f32 + seed) * 0.37).sin())
        .collect()
}

/// Fully inline requests over the random vocabularies' tokens (`show_3`, `topic_7`, ...):
/// a known user with an ad and a promotion, and an unknown user with empty context. No id
/// here is in [`snapshot`], so they score the same with and without the store.
pub fn golden_requests() -> Vec<Value> {
    vec![
        json!({
            "request_id": "golden-1",
            "user": {"id": "golden-user", "country": "country_1", "platform": "platform_2", "age_bucket": "age_bucket_0",
                     "history": ["show_1", "show_2", "show_9"], "follows": ["show_2"], "search_topics": ["topic_4"]},
            "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "surface_1", "session_length_s": 420.0},
            "candidates": [
                {"id": "c1", "kind": "ad", "show_id": "show_17", "episode_id": "episode_9",
                 "show": {"genres": ["genre_1"], "topics": ["topic_2", "topic_5"], "embedding": embedding(1.0), "streams_30d": 15000.0, "tier": 3},
                 "episode": {"show_id": "show_17", "topics": ["topic_2"], "duration_s": 1800.0},
                 "creative": {"creative_id": "creative_3", "campaign_id": "campaign_1", "format": "format_0", "slot": "slot_2"}},
                {"id": "c2", "kind": "promotion", "show_id": "show_22",
                 "show": {"genres": ["genre_3"], "topics": ["topic_1"], "embedding": embedding(2.0), "streams_30d": 900.0},
                 "creative": {"campaign_id": "campaign_7", "slot": "slot_4", "layout": "layout_1"}},
                {"id": "c3", "kind": "ad", "show_id": "golden-unseen-show",
                 "creative": {"creative_id": "golden-new-creative", "format": "format_1", "slot": "slot_0"}}
            ]
        }),
        json!({
            "request_id": "golden-2",
            "user": {"id": "golden-unknown-user"},
            "context": {},
            "candidates": [
                {"id": "c1", "kind": "promotion", "show_id": "show_44",
                 "show": {"genres": [], "topics": [], "embedding": embedding(3.0)},
                 "creative": {"campaign_id": "campaign_2", "slot": "slot_1", "layout": "layout_0"}}
            ]
        }),
    ]
}

/// A small runtime plan set: tests load many bundles, and a few buckets keep loads short
/// while still exercising the concrete plans.
pub fn runtime_config() -> RuntimeConfig {
    RuntimeConfig {
        buckets: vec![1, 4, 16],
        ..RuntimeConfig::default()
    }
}

/// Writes a random-weight bundle at `root/name/version` with golden cases computed by the
/// model itself (or deliberately wrong ones), and returns its directory.
pub fn write_bundle(root: &Path, name: &str, version: u32, seed: u64, golden: Golden) -> PathBuf {
    let mut random = testing::random_bundle(VocabularySizes::small(), seed);
    random.manifest.name = name.into();
    random.manifest.version = version;
    let onnx_bytes =
        onnx::export(&random.manifest, &random.weights).expect("random bundles export");
    let unchecked = Model::load_unchecked(
        Bundle {
            dir: PathBuf::new(),
            manifest: random.manifest.clone(),
            vocabularies: random.vocabularies.clone(),
            onnx: onnx_bytes.clone(),
        },
        &runtime_config(),
    )
    .expect("random bundles load");
    let mut cases = service::golden::golden_cases(&unchecked, &golden_requests())
        .expect("golden requests score");
    if golden == Golden::Wrong {
        let first = &mut cases[0].expected[0];
        first.stream = first
            .stream
            .map(|p| if p > 0.5 { p - 0.01 } else { p + 0.01 });
    }
    random.manifest.golden = cases;
    let dir = root.join(name).join(version.to_string());
    Bundle::write(&dir, &random.manifest, &random.vocabularies, &onnx_bytes)
        .expect("bundle writes");
    dir
}

/// The store's contents: user `u1`, shows `show_1` to `show_5` (with embeddings) and
/// episodes `episode_1` to `episode_3`. Anything else is unknown to the store.
pub fn snapshot() -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.users.insert(
        "u1".into(),
        UserRecord {
            id: Some("u1".into()),
            country: Some("country_1".into()),
            platform: Some("platform_0".into()),
            age_bucket: Some("age_bucket_2".into()),
            history: Some(vec!["show_1".into(), "show_3".into()]),
            follows: Some(vec!["show_3".into()]),
            search_topics: Some(vec!["topic_3".into()]),
        },
    );
    for index in 1..=5 {
        let id = format!("show_{index}");
        snapshot.shows.insert(
            id.clone(),
            ShowRecord {
                id: Some(id),
                genres: Some(vec![format!("genre_{}", index % 6)]),
                topics: Some(vec![
                    format!("topic_{index}"),
                    format!("topic_{}", index + 10),
                ]),
                embedding: Some(embedding(index as f32 * 10.0)),
                streams_30d: Some(1000.0 * index as f64),
                tier: Some(index as u8),
            },
        );
    }
    for index in 1..=3 {
        let id = format!("episode_{index}");
        snapshot.episodes.insert(
            id.clone(),
            EpisodeRecord {
                id: Some(id),
                show_id: Some(format!("show_{index}")),
                topics: Some(vec![format!("topic_{index}")]),
                duration_s: Some(600.0 * index as f64),
            },
        );
    }
    snapshot
}

/// How a test server is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub service: service::Config,
    pub api: api::Config,
    /// `(version, golden)` of each bundle of [`MODEL`] to write before start.
    pub bundles: Vec<(u32, Golden)>,
    pub store: bool,
    pub runtime: RuntimeConfig,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            service: service::Config {
                max_inflight: 4,
                ..service::Config::default()
            },
            api: api::Config::default(),
            bundles: vec![(1, Golden::Correct)],
            store: true,
            runtime: runtime_config(),
        }
    }
}

/// A service over bundles in a temporary models directory, loaded as `serve` loads them.
pub struct TestServer {
    pub service: Service,
    pub api: api::Config,
    pub reloader: Arc<Reloader>,
    pub models: TempDir,
}

impl TestServer {
    pub fn start(setup: Setup) -> TestServer {
        let models = TempDir::new().expect("temporary directory");
        for (version, golden) in &setup.bundles {
            write_bundle(
                models.path(),
                MODEL,
                *version,
                7 + u64::from(*version),
                *golden,
            );
        }
        let store = if setup.store {
            SnapshotStore::from_snapshot(snapshot())
        } else {
            SnapshotStore::empty()
        };
        let service = Service::new(setup.service, Arc::new(store)).expect("service builds");
        let reloader = Arc::new(Reloader::with_runtime(
            models.path(),
            None,
            setup.runtime.clone(),
        ));
        reloader.reload(&service).expect("models directory lists");
        TestServer {
            service,
            api: setup.api,
            reloader,
            models,
        }
    }

    pub fn app(&self) -> Router {
        api::app(self.service.clone(), self.api.clone())
    }

    pub fn dir(&self) -> &Path {
        self.models.path()
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("bodies are readable");
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post_json(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("valid request")
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .body(Body::empty())
        .expect("valid request")
}

pub async fn score(app: &Router, body: &Value) -> Reply {
    send(app, post_json("/score", body.to_string())).await
}

/// A request the store can serve: user `u1`, an ad on a known show and episode, a
/// promotion on another known show.
pub fn stored_request() -> Value {
    json!({
        "request_id": "r-1",
        "user": {"id": "u1"},
        "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "surface_1", "session_length_s": 420},
        "candidates": [
            {"id": "c1", "kind": "ad", "show_id": "show_1", "episode_id": "episode_1",
             "creative": {"creative_id": "creative_3", "campaign_id": "campaign_1", "format": "format_0", "slot": "slot_2"}},
            {"id": "c2", "kind": "promotion", "show_id": "show_2",
             "creative": {"campaign_id": "campaign_7", "slot": "slot_4", "layout": "layout_1"}}
        ]
    })
}

/// The value of an unlabelled-or-labelled sample line in Prometheus text, e.g.
/// `podscore_cold_start_candidates_total{kind="ad"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.trim().parse().ok())
}

/// A store that never answers, so that look-ups run into their timeout; `ready` is what
/// it reports to readiness.
#[derive(Debug)]
pub struct HangingStore {
    pub ready: bool,
}

impl FeatureStore for HangingStore {
    fn backend(&self) -> &'static str {
        "hanging"
    }

    fn lookup<'a>(&'a self, _keys: &'a LookupKeys) -> LookupFuture<'a> {
        Box::pin(std::future::pending())
    }

    fn ready(&self) -> bool {
        self.ready
    }
}

/// Takes a place in line and a slot of `service`, as a request would, and holds them
/// until the permit drops.
pub async fn hold_slot(service: &Service) -> Permit {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ticket = service.enter(deadline).expect("a place in line");
    service
        .wait_for_slot(ticket, deadline)
        .await
        .expect("a free slot")
}
