//! The Redis feature store against real servers: a `redis-server` on a free loopback port
//! and a local three-node Redis Cluster, both started here; the real Feast SDK
//! materializing `deploy/feast/`; `podscore features load`, `serve --redis` and
//! `score --redis` as a user runs them. Nothing here is skipped: a missing `redis-server`
//! or Feast fails the test (`tests/run.sh` installs both).

mod servers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use podscore::logs::{self, Snapshot};
use podscore::store::feast::{self, EntityValue};
use podscore::store::{
    FeatureStore, LookupKeys, Mapping, RedisConfig, RedisStore, RedisTarget, SnapshotStore,
};

use servers::{Podscore, RedisCluster, RedisServer, feast_python, run_podscore};

/// The instant the shipped demo snapshot holds as of: 2026-09-29, the end of the default
/// world (28 days from 2026-09-01).
const DEMO_AS_OF: i64 = 1_790_640_000;
/// Entities sampled from the shipped demo snapshot: enough for requests of 100 distinct
/// candidates with hits and misses, small enough that Feast materializes them in seconds.
const USERS: usize = 200;
const SHOWS: usize = 150;
/// Candidates per request, as an ad server sends them.
const CANDIDATES: usize = 100;
/// The store deadline where a test compares scores rather than deadlines: the machine
/// running the tests is shared, and a lookup past the 20 ms default would score cold.
const EQUALITY_STORE_TIMEOUT_MS: &str = "1000";
/// How long a test waits for whole (not degraded) answers after Redis comes back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A sample of the demo snapshot in its own folder, and requests over it: users and shows
/// the store knows, episodes of those shows, and ids it does not know (misses).
struct TestData {
    dir: TempDir,
    snapshot: Snapshot,
    requests: Vec<Value>,
}

impl TestData {
    fn new() -> TestData {
        let demo =
            logs::read_snapshot(&root().join("models/demo-features")).expect("demo features");
        let natural = |id: &String| (id.len(), id.clone());
        let mut user_ids: Vec<&String> = demo.users.keys().collect();
        user_ids.sort_by_key(|id| natural(id));
        let mut show_ids: Vec<&String> = demo.shows.keys().collect();
        show_ids.sort_by_key(|id| natural(id));
        assert_eq!(
            demo.as_of,
            Some(DEMO_AS_OF),
            "the demo snapshot carries its event time"
        );
        let mut snapshot = Snapshot {
            as_of: demo.as_of,
            ..Snapshot::default()
        };
        for id in user_ids.into_iter().take(USERS) {
            snapshot.users.insert(id.clone(), demo.users[id].clone());
        }
        for id in show_ids.into_iter().take(SHOWS) {
            snapshot.shows.insert(id.clone(), demo.shows[id].clone());
        }
        let mut episodes_by_show: BTreeMap<(usize, String), Vec<String>> = BTreeMap::new();
        for (id, episode) in &demo.episodes {
            if let Some(show) = episode
                .show_id
                .as_ref()
                .filter(|show| snapshot.shows.contains_key(*show))
            {
                snapshot.episodes.insert(id.clone(), episode.clone());
                episodes_by_show
                    .entry(natural(show))
                    .or_default()
                    .push(id.clone());
            }
        }
        let dir = TempDir::new().expect("a temporary folder");
        logs::write_snapshot(&dir.path().join("snapshot"), &snapshot).expect("snapshot writes");
        let shows: Vec<(&(usize, String), &Vec<String>)> = episodes_by_show.iter().collect();
        let requests = (0..3)
            .map(|request| {
                let user = if request == 2 { "u-never-seen".to_string() } else { format!("u{}", request * 7) };
                let candidates: Vec<Value> = (0..CANDIDATES)
                    .map(|index| {
                        let kind = if index % 2 == 0 { "ad" } else { "promotion" };
                        let ((_, show), episodes) = shows[(index * 3 + request) % shows.len()];
                        let (show, episode) = if index % 10 == 9 {
                            (format!("s-new-{index}"), format!("e-new-{index}"))
                        } else {
                            (show.clone(), episodes[index % episodes.len()].clone())
                        };
                        json!({"id": format!("c{index}"), "kind": kind, "show_id": show, "episode_id": episode,
                               "creative": {"creative_id": format!("cr{}", index % 5), "campaign_id": "cp1",
                                            "format": "audio", "slot": "midroll", "layout": "card"}})
                    })
                    .collect();
                json!({"request_id": format!("r-{request}"), "user": {"id": user},
                       "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "home", "session_length_s": 420},
                       "candidates": candidates})
            })
            .collect();
        TestData {
            dir,
            snapshot,
            requests,
        }
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.dir.path().join("snapshot")
    }

    fn snapshot_arg(&self) -> String {
        self.snapshot_dir().display().to_string()
    }

    /// Every id of the snapshot plus unknown ones, as one batch of lookup keys.
    fn every_key(&self) -> LookupKeys {
        let mut keys = LookupKeys {
            user: None,
            shows: self.snapshot.shows.keys().cloned().collect(),
            episodes: self.snapshot.episodes.keys().cloned().collect(),
        };
        keys.add_show("s-unknown");
        keys.add_episode("e-unknown");
        keys
    }

    /// The entities Redis should hold.
    fn entities(&self) -> usize {
        self.snapshot.users.len() + self.snapshot.shows.len() + self.snapshot.episodes.len()
    }
}

/// Every user, show and episode read through `store` equals the snapshot's record, and
/// unknown ids are misses.
async fn assert_same_records(store: &dyn FeatureStore, data: &TestData) {
    let snapshot = SnapshotStore::from_snapshot(data.snapshot.clone());
    let keys = data.every_key();
    let from_redis = store.lookup(&keys).await.expect("redis lookup");
    let expected = snapshot.lookup(&keys).await.expect("snapshot lookup");
    assert_eq!(from_redis.shows, expected.shows);
    assert_eq!(from_redis.episodes, expected.episodes);
    assert_eq!(
        from_redis.shows.len(),
        data.snapshot.shows.len(),
        "unknown ids miss"
    );
    for id in data
        .snapshot
        .users
        .keys()
        .chain(["u-never-seen".to_string()].iter())
    {
        let keys = LookupKeys {
            user: Some(id.clone()),
            ..LookupKeys::default()
        };
        let from_redis = store.lookup(&keys).await.expect("redis lookup").user;
        let expected = snapshot.lookup(&keys).await.expect("snapshot lookup").user;
        assert_eq!(from_redis, expected, "user {id}");
    }
}

fn redis_store(target: RedisTarget) -> RedisStore {
    RedisStore::open(&RedisConfig::new(target)).expect("the store opens")
}

/// `podscore features load` fills a single Redis with every entity, and a second run
/// leaves the very same bytes; every record then reads back equal to the snapshot's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_load_fills_redis_idempotently_with_the_snapshot_records() {
    let data = TestData::new();
    let redis = RedisServer::start();
    let load = [
        "features",
        "load",
        "--redis",
        &redis.url(),
        "--from",
        &data.snapshot_arg(),
    ];
    let output = run_podscore(&load);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains(&format!("{} users", USERS)), "{said}");
    assert_eq!(redis.cli(&["DBSIZE"]), data.entities().to_string());
    let first = redis.hashes().await;
    run_podscore(&load);
    assert_eq!(redis.hashes().await, first, "a second load changes nothing");
    let store = redis_store(RedisTarget::new(&redis.url(), false));
    assert_same_records(&store, &data).await;
}

/// The same through a three-node Redis Cluster: the load pipelines per slot onto every
/// node, and lookups (single-key commands across slots) read every record back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_holds_and_serves_the_same_records() {
    let data = TestData::new();
    let cluster = RedisCluster::start();
    cluster.load(&data.snapshot_dir());
    assert_eq!(cluster.key_count(), data.entities() as u64);
    for node in &cluster.nodes {
        let keys: u64 = node.cli(&["DBSIZE"]).parse().unwrap();
        assert!(keys > 0, "every node holds part of the keys");
    }
    let store = redis_store(RedisTarget::new(&cluster.nodes[0].url(), true));
    assert_same_records(&store, &data).await;
}

/// Posts `request` and returns the status and body.
async fn post(client: &reqwest::Client, server: &Podscore, request: &Value) -> (u16, Value) {
    post_with_deadline(client, server, request, None).await
}

async fn post_with_deadline(
    client: &reqwest::Client,
    server: &Podscore,
    request: &Value,
    deadline_ms: Option<u64>,
) -> (u16, Value) {
    let mut builder = client.post(server.url("/score")).json(request);
    if let Some(deadline) = deadline_ms {
        builder = builder.header("x-request-timeout-ms", deadline.to_string());
    }
    let reply = builder.send().await.expect("the server answers");
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// The first answer to `request` that is not degraded, waiting while the connection is
/// (re)established; panics after [`RECOVERY_TIMEOUT`]. Every answer on the way is a 200.
async fn whole_answer(client: &reqwest::Client, server: &Podscore, request: &Value) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = post(client, server, request).await;
        assert_eq!(status, 200, "{body}");
        if body.get("degraded").is_none() {
            return body;
        }
        assert!(
            started.elapsed() < RECOVERY_TIMEOUT,
            "still degraded after {RECOVERY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scores(server: &Podscore, requests: &[Value]) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut all = Vec::new();
    for request in requests {
        let (status, body) = post(&client, server, request).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("degraded").is_none(), "not degraded: {body}");
        all.push(body["candidates"].clone());
    }
    all
}

/// The sum of a counter's samples whose labels contain `labels`, from `/metrics`.
async fn counter(server: &Podscore, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scores served from Redis, single node and cluster, equal the scores served from the
/// embedded snapshot for the same requests; `podscore score --redis` agrees too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_from_redis_and_a_cluster_equal_scores_from_the_snapshot() {
    let data = TestData::new();
    let models = root().join("models");
    let redis = RedisServer::start();
    let cluster = RedisCluster::start();
    redis.load(&data.snapshot_dir());
    cluster.load(&data.snapshot_dir());
    let expected = {
        let server = Podscore::serve(&models, &["--features", &data.snapshot_arg()]);
        scores(&server, &data.requests).await
    };
    let cold: usize = expected[0]
        .as_array()
        .unwrap()
        .iter()
        .filter(|candidate| candidate["cold_start"] == json!(true))
        .count();
    assert!(
        cold > 0 && cold < CANDIDATES,
        "the requests mix hits and misses: {cold} cold"
    );
    let single = Podscore::serve(
        &models,
        &[
            "--redis",
            &redis.url(),
            "--store-timeout-ms",
            EQUALITY_STORE_TIMEOUT_MS,
        ],
    );
    assert_eq!(scores(&single, &data.requests).await, expected);
    assert!(counter(&single, "podscore_feature_lookups_total", "result=\"hit\"").await > 0.0);
    let seeds = cluster.seeds();
    let clustered = Podscore::serve(
        &models,
        &[
            "--redis",
            &seeds,
            "--redis-cluster",
            "--store-timeout-ms",
            EQUALITY_STORE_TIMEOUT_MS,
        ],
    );
    assert_eq!(scores(&clustered, &data.requests).await, expected);

    let file = data.dir.path().join("request.json");
    std::fs::write(&file, data.requests[0].to_string()).unwrap();
    let output = run_podscore(&[
        "score",
        "--request",
        &file.display().to_string(),
        "--models",
        &models.display().to_string(),
        "--redis",
        &redis.url(),
    ]);
    let offline: Value = serde_json::from_slice(&output.stdout).expect("the response JSON");
    assert_eq!(offline["candidates"], expected[0]);
}

/// The real Feast SDK materializing `deploy/feast/` writes byte for byte the hashes
/// `podscore features load` writes from the same snapshot, and podscore serving from
/// Feast's Redis gives the snapshot's scores: podscore reads what Feast writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feast_materialization_is_read_as_the_snapshot() {
    let data = TestData::new();
    let (_, feast) = feast_python();
    let by_feast = RedisServer::start();
    let by_podscore = RedisServer::start();
    let repo = data.dir.path().join("feast");
    copy_dir(&root().join("deploy/feast"), &repo);
    let feast_command = |args: &[&str]| {
        let output = std::process::Command::new(&feast)
            .args(args)
            .current_dir(&repo)
            .env("PODSCORE_SNAPSHOT", data.snapshot_dir())
            .env(
                "PODSCORE_FEAST_REDIS",
                format!("127.0.0.1:{}", by_feast.port),
            )
            .env("FEAST_USAGE", "False")
            .output()
            .expect("feast runs");
        assert!(
            output.status.success(),
            "feast {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    feast_command(&["apply"]);
    feast_command(&["materialize", "2026-01-01T00:00:00", "2027-01-01T00:00:00"]);
    by_podscore.load(&data.snapshot_dir());
    let feast_hashes = by_feast.hashes().await;
    assert_eq!(feast_hashes.len(), data.entities());
    assert!(
        feast_hashes == by_podscore.hashes().await,
        "feast and podscore wrote different hashes"
    );

    let models = root().join("models");
    let expected = {
        let server = Podscore::serve(&models, &["--features", &data.snapshot_arg()]);
        scores(&server, &data.requests).await
    };
    let server = Podscore::serve(
        &models,
        &[
            "--redis",
            &by_feast.url(),
            "--store-timeout-ms",
            EQUALITY_STORE_TIMEOUT_MS,
        ],
    );
    assert_eq!(scores(&server, &data.requests).await, expected);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Keys, fields and values for fixed entities and features equal what Feast's own
/// serializer and `mmh3` compute: string, int64 and compound join keys, every feature
/// of the default mapping, and a value of each kind a record holds.
#[test]
fn key_field_and_value_bytes_equal_feasts_serializer_and_mmh3() {
    let (python, _) = feast_python();
    let script = r#"
import json, struct, sys
import mmh3
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value, StringList, FloatList
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
request = json.load(sys.stdin)
def key(join_keys, values, project):
    entity = EntityKey(join_keys=join_keys, entity_values=values)
    return (serialize_entity_key(entity, entity_key_serialization_version=3) + project.encode()).hex()
out = {
    "string": key(["user_id"], [Value(string_val="u1")], "podscore"),
    "int64": key(["show_number"], [Value(int64_val=-42)], "p"),
    "compound": key(["user_id", "episode_id"], [Value(string_val="u7"), Value(string_val="e3")], "podscore"),
    "fields": {f: struct.pack("<I", mmh3.hash(f, signed=False)).hex() for f in request["features"]},
    "values": {
        "string": Value(string_val="AU").SerializeToString().hex(),
        "string_list": python_values_to_proto_values([["t1", "t22"]], ValueType.STRING_LIST)[0].SerializeToString().hex(),
        "empty_list": python_values_to_proto_values([[]], ValueType.STRING_LIST)[0].SerializeToString().hex(),
        "float_list": python_values_to_proto_values([[0.25, -1.5]], ValueType.FLOAT_LIST)[0].SerializeToString().hex(),
        "double": python_values_to_proto_values([1234.5], ValueType.DOUBLE)[0].SerializeToString().hex(),
        "int32": python_values_to_proto_values([3], ValueType.INT32)[0].SerializeToString().hex(),
        "null": python_values_to_proto_values([None], ValueType.STRING)[0].SerializeToString().hex(),
    },
}
json.dump(out, sys.stdout)
"#;
    let mapping = Mapping::default();
    let features: Vec<&String> = [&mapping.user, &mapping.show, &mapping.episode]
        .into_iter()
        .flat_map(|entity| entity.features.values())
        .collect();
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    serde_json::to_writer(child.stdin.take().unwrap(), &json!({"features": features})).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the Feast script failed");
    let feast: Value = serde_json::from_slice(&output.stdout).unwrap();

    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        feast["string"],
        hex(&feast::redis_key(
            "podscore",
            &[("user_id", EntityValue::String("u1"))]
        ))
    );
    assert_eq!(
        feast["int64"],
        hex(&feast::redis_key(
            "p",
            &[("show_number", EntityValue::Int64(-42))]
        ))
    );
    let compound = feast::redis_key(
        "podscore",
        &[
            ("user_id", EntityValue::String("u7")),
            ("episode_id", EntityValue::String("e3")),
        ],
    );
    assert_eq!(feast["compound"], hex(&compound));
    for feature in features {
        let (view, name) = feature.split_once(':').unwrap();
        assert_eq!(
            feast["fields"][feature],
            hex(&feast::feature_field(view, name)),
            "{feature}"
        );
    }
    use feast::proto::{FloatList, StringList, value::Val};
    let values = [
        ("string", Some(Val::StringVal("AU".into()))),
        (
            "string_list",
            Some(Val::StringListVal(StringList {
                val: vec!["t1".into(), "t22".into()],
            })),
        ),
        (
            "empty_list",
            Some(Val::StringListVal(StringList { val: vec![] })),
        ),
        (
            "float_list",
            Some(Val::FloatListVal(FloatList {
                val: vec![0.25, -1.5],
            })),
        ),
        ("double", Some(Val::DoubleVal(1234.5))),
        ("int32", Some(Val::Int32Val(3))),
        ("null", None),
    ];
    for (name, value) in values {
        assert_eq!(
            feast["values"][name],
            hex(&feast::encode_value(value)),
            "{name}"
        );
    }
}

/// The test snapshot loaded into a fresh Redis and saved (so that a restart reloads it),
/// and `podscore serve` reading that Redis under the given store deadline.
struct Serving {
    data: TestData,
    redis: RedisServer,
    server: Podscore,
    client: reqwest::Client,
}

impl Serving {
    fn start(store_timeout_ms: &str) -> Serving {
        let data = TestData::new();
        let redis = RedisServer::start();
        redis.load(&data.snapshot_dir());
        redis.cli(&["SAVE"]);
        let server = Podscore::serve(
            &root().join("models"),
            &[
                "--redis",
                &redis.url(),
                "--store-timeout-ms",
                store_timeout_ms,
            ],
        );
        Serving {
            data,
            redis,
            server,
            client: reqwest::Client::new(),
        }
    }
}

/// Redis killed mid-traffic: every request still answers 200 (degraded, on the cold-start
/// path), the fallback metric rises, `/readyz` stays 200. Redis restarted: answers are
/// whole again and the hit count climbs, without restarting podscore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_traffic_degrades_then_recovers_without_a_restart() {
    // Outages fail fast (refused connections), so the store deadline only needs to
    // cover a busy machine here.
    let Serving {
        data,
        mut redis,
        server,
        client,
    } = Serving::start("250");
    let request = &data.requests[0];
    let whole = whole_answer(&client, &server, request).await;

    redis.kill();
    let outage = Instant::now();
    let mut degraded = 0;
    let mut answered = 0;
    while outage.elapsed() < Duration::from_secs(2) && answered < 400 {
        let (status, body) = post(&client, &server, request).await;
        assert_eq!(status, 200, "no 5xx while Redis is down: {body}");
        answered += 1;
        if body["degraded"] == json!(true) {
            degraded += 1;
            assert!(
                body["candidates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["cold_start"] == json!(true))
            );
        }
        let ready = reqwest::get(server.url("/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(ready, 200, "readiness does not depend on Redis");
    }
    assert_eq!(
        degraded, answered,
        "every answer during the outage is degraded"
    );
    let fallbacks = counter(&server, "podscore_store_fallbacks_total", "").await;
    assert!(
        fallbacks >= f64::from(degraded),
        "{fallbacks} fallbacks for {degraded} degraded answers"
    );
    assert!(
        counter(
            &server,
            "podscore_store_fallbacks_total",
            "reason=\"circuit_open\""
        )
        .await
            > 0.0,
        "the breaker opened and spared the dead server"
    );

    redis.restart();
    let restarted = Instant::now();
    let recovered = whole_answer(&client, &server, request).await;
    eprintln!(
        "whole answers again {:?} after the restart",
        restarted.elapsed()
    );
    assert_eq!(
        recovered["candidates"], whole["candidates"],
        "whole answers again"
    );
    let hits_before = counter(&server, "podscore_feature_lookups_total", "result=\"hit\"").await;
    let misses_before = counter(&server, "podscore_feature_lookups_total", "result=\"miss\"").await;
    for _ in 0..10 {
        let (status, body) = post(&client, &server, request).await;
        assert_eq!(status, 200);
        assert!(body.get("degraded").is_none());
    }
    let hits =
        counter(&server, "podscore_feature_lookups_total", "result=\"hit\"").await - hits_before;
    let misses =
        counter(&server, "podscore_feature_lookups_total", "result=\"miss\"").await - misses_before;
    let cold = whole["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cold_start"] == json!(true))
        .count();
    assert!(
        hits > 0.0 && hits / (hits + misses) > 0.8,
        "hit ratio after recovery: {hits} hits, {misses} misses ({cold} cold candidates per request)"
    );
}

/// A Redis slower than the store deadline (every client paused): requests still answer
/// 200 within their own deadline, degraded, on the cold-start path; then recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_still_meets_the_request_deadline_on_the_cold_path() {
    let Serving {
        data,
        redis,
        server,
        client,
    } = Serving::start("20");
    let request = &data.requests[1];
    let whole = whole_answer(&client, &server, request).await;

    const PAUSE_MS: u64 = 3_000;
    const DEADLINE_MS: u64 = 300;
    redis.cli(&["CLIENT", "PAUSE", &PAUSE_MS.to_string(), "ALL"]);
    let paused = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let sent = Instant::now();
        let (status, body) = post_with_deadline(&client, &server, request, Some(DEADLINE_MS)).await;
        let took = sent.elapsed();
        slowest = slowest.max(took);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["degraded"], json!(true), "{body}");
        assert!(
            took < Duration::from_millis(DEADLINE_MS),
            "answered in {took:?}, past the {DEADLINE_MS} ms deadline"
        );
    }
    assert!(
        paused.elapsed() < Duration::from_millis(PAUSE_MS),
        "the pause lasted through every request"
    );
    assert!(
        counter(
            &server,
            "podscore_store_fallbacks_total",
            "reason=\"timeout\""
        )
        .await
            > 0.0
    );
    eprintln!("slowest answer while Redis was paused: {slowest:?}");

    tokio::time::sleep(Duration::from_millis(PAUSE_MS).saturating_sub(paused.elapsed())).await;
    let recovered = whole_answer(&client, &server, request).await;
    assert_eq!(recovered["candidates"], whole["candidates"]);
}

/// Data Redis refuses or that does not decode (a key of another type, a field that is not
/// a `feast.types.Value`) fails the requests that touch it, each on its own: the breaker
/// stays closed and every other entity still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_fails_only_the_lookups_that_touch_it() {
    let data = TestData::new();
    let redis = RedisServer::start();
    redis.load(&data.snapshot_dir());
    let layout = Mapping::default().layout().unwrap();
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let user_key = layout.user.key("u0");
    let _: () = redis::cmd("DEL")
        .arg(&user_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&user_key)
        .arg("not a hash")
        .query_async(&mut connection)
        .await
        .unwrap();
    let show_key = layout.show.key("s1");
    let tier = feast::feature_field("shows", "tier");
    let _: () = redis::cmd("HSET")
        .arg(&show_key)
        .arg(&tier[..])
        .arg(&b"\x18"[..])
        .query_async(&mut connection)
        .await
        .unwrap();

    let store = redis_store(RedisTarget::new(&redis.url(), false));
    let user = |id: &str| LookupKeys {
        user: Some(id.to_string()),
        ..LookupKeys::default()
    };
    for _ in 0..2 * podscore::store::DEFAULT_FAILURES_TO_OPEN {
        let error = store.lookup(&user("u0")).await.unwrap_err();
        assert!(error.to_string().contains("WRONGTYPE"), "{error}");
        let error = store
            .lookup(&LookupKeys {
                shows: vec!["s1".into()],
                ..LookupKeys::default()
            })
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("show `s1`: feature `shows:tier`"),
            "{error}"
        );
    }
    let found = store
        .lookup(&user("u7"))
        .await
        .expect("the breaker stayed closed");
    assert_eq!(found.user.as_deref(), data.snapshot.users.get("u7"));
}
