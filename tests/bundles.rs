//! Bundle loading that no bundle can break, and reload that no reload can break: each
//! hole with the bundle that showed it (a symlink to `/dev/zero`, a FIFO as a vocabulary,
//! a vocabulary name that is a path, a vocabulary longer or shorter than its table, a
//! directory that disagrees with its manifest, a copy that keeps modification times, a
//! model added under an earlier name, a graph that makes tract panic while loading),
//! fallback at start, range checks from the manifest,
//! a reload under traffic, and the admin routes (reload, rollback, token).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use common::{Golden, MODEL, Setup, TestServer, score, stored_request};
use podscore::bundle::{self, Bundle, BundleError};
use podscore::features::{Bounds, NumericStats, RawValue, Transform};
use podscore::service::{self, Reloader, Service};
use podscore::store::SnapshotStore;

fn served_version(server: &TestServer) -> Option<u32> {
    server
        .service
        .models()
        .get(Some(MODEL))
        .map(|model| model.version())
}

/// Rewrites `dir`'s manifest through `edit`.
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(bundle::MANIFEST_FILE);
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

/// The one refusal of a reload pass over `server`'s models, with version 1 still served.
fn refused(server: &TestServer) -> String {
    let report = server.reloader.reload(&server.service).unwrap();
    assert!(report.loaded.is_empty(), "{:?}", report.loaded);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(served_version(server), Some(1));
    report.failed[0].reason.clone()
}

/// `model.onnx` linked to `/dev/zero` (which read until out of memory) is refused at
/// once as outside the bundle.
#[test]
fn a_graph_linked_outside_the_bundle_is_refused() {
    let server = TestServer::start(Setup::default());
    let dir = common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Correct);
    std::fs::remove_file(dir.join(bundle::MODEL_FILE)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join(bundle::MODEL_FILE)).unwrap();
    let started = Instant::now();
    let reason = refused(&server);
    assert!(reason.contains("outside the bundle"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A FIFO as a vocabulary (which hung the reload pass, then shutdown) is refused without
/// being opened.
#[test]
fn a_fifo_as_a_vocabulary_is_refused_without_hanging() {
    let server = TestServer::start(Setup::default());
    let dir = common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Correct);
    let vocabulary = dir.join(bundle::VOCAB_DIR).join("show_id.txt");
    std::fs::remove_file(&vocabulary).unwrap();
    let made = Command::new("mkfifo").arg(&vocabulary).status().unwrap();
    assert!(made.success(), "mkfifo (coreutils) makes the FIFO");
    let started = Instant::now();
    let reason = refused(&server);
    assert!(reason.contains("not a regular file"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A vocabulary name that is a path (an absolute name read any `.txt` on the machine) is
/// refused; so is a file over its size cap.
#[test]
fn vocabulary_names_must_be_plain_and_files_within_their_caps() {
    let server = TestServer::start(Setup::default());
    let dir = common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Correct);
    edit_manifest(&dir, |manifest| {
        for feature in manifest["features"].as_array_mut().unwrap() {
            if feature["transform"]["vocab"] == json!("user_country") {
                feature["transform"]["vocab"] = json!("/etc/podscore-country");
            }
        }
    });
    let reason = refused(&server);
    assert!(reason.contains("is not a plain name"), "{reason}");

    let root = dir.canonicalize().unwrap();
    let error = bundle::read_file(&root, &dir.join(bundle::MODEL_FILE), 10).unwrap_err();
    assert!(matches!(error, BundleError::Invalid { .. }), "{error}");
    assert!(error.to_string().contains("cap"), "{error}");
}

/// A vocabulary longer than its embedding table (ids a client could push past the table)
/// or shorter (known ids silently cold) is refused.
#[test]
fn vocabularies_must_match_their_tables() {
    for extra in [true, false] {
        let server = TestServer::start(Setup::default());
        let dir = common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Correct);
        let path = dir.join(bundle::VOCAB_DIR).join("campaign_id.txt");
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = if extra {
            format!("{text}campaign_extra\n")
        } else {
            text.lines()
                .skip(1)
                .map(|line| format!("{line}\n"))
                .collect()
        };
        std::fs::write(&path, changed).unwrap();
        let reason = refused(&server);
        assert!(reason.contains("its embedding table"), "{reason}");
    }
}

/// A directory whose version differs from its manifest's (which was republished every
/// poll) is refused once and not retried while unchanged.
#[test]
fn a_directory_must_agree_with_its_manifest() {
    let server = TestServer::start(Setup::default());
    let copy = server.dir().join(MODEL).join("2");
    copy_dir(&server.dir().join(MODEL).join("1"), &copy);
    let reason = refused(&server);
    assert!(
        reason.contains("the directory says podcast-mtl/2, the manifest podcast-mtl/1"),
        "{reason}"
    );
    let again = server.reloader.reload(&server.service).unwrap();
    assert!(again.failed.is_empty() && again.loaded.is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .args(["-a"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A refused bundle replaced by a good one whose files keep the old modification times
/// (`cp -a`, `rsync -t`; it was refused forever) is retried and served: refusals are
/// remembered by content, not by time.
#[test]
fn a_refused_bundle_is_retried_when_its_content_changes_whatever_its_times() {
    let server = TestServer::start(Setup::default());
    let staging = tempfile::TempDir::new().unwrap();
    let bad = common::write_bundle(staging.path(), MODEL, 2, 5, Golden::Wrong);
    let good = common::write_bundle(&staging.path().join("good"), MODEL, 2, 5, Golden::Correct);
    let target = server.dir().join(MODEL).join("2");
    copy_dir(&bad, &target);
    let reason = refused(&server);
    assert!(reason.contains("golden"), "{reason}");
    // The good bundle's files, stamped with the bad one's times.
    for file in [bundle::MANIFEST_FILE, bundle::MODEL_FILE] {
        std::fs::copy(good.join(file), target.join(file)).unwrap();
        let touched = Command::new("touch")
            .arg("-r")
            .arg(bad.join(file))
            .arg(target.join(file))
            .status()
            .unwrap();
        assert!(touched.success());
    }
    let report = server.reloader.reload(&server.service).unwrap();
    assert_eq!(
        report.loaded,
        [(MODEL.to_string(), 2)],
        "{:?}",
        report.failed
    );
}

/// At start the highest version that loads is served, whichever versions above it fail.
#[test]
fn start_falls_back_to_the_highest_version_that_loads() {
    let server = TestServer::start(Setup {
        bundles: vec![
            (1, Golden::Correct),
            (2, Golden::Correct),
            (3, Golden::Wrong),
        ],
        ..Setup::default()
    });
    assert_eq!(served_version(&server), Some(2));
    let broken = server.dir().join(MODEL).join("4");
    copy_dir(&server.dir().join(MODEL).join("2"), &broken);
    std::fs::write(broken.join(bundle::MODEL_FILE), b"not a graph").unwrap();
    let models = server.dir().to_path_buf();
    let restarted = Service::new(
        service::Config {
            max_inflight: 1,
            ..service::Config::default()
        },
        Arc::new(SnapshotStore::empty()),
    )
    .unwrap();
    let report = Reloader::with_runtime(&models, None, common::runtime_config())
        .reload(&restarted)
        .unwrap();
    assert_eq!(report.loaded, [(MODEL.to_string(), 2)]);
    assert_eq!(report.failed.len(), 2);
}

/// The default model is fixed at start: a model added later under an earlier name
/// (a model named `aaa`, which used to take over unnamed requests) does not change it.
#[tokio::test]
async fn the_default_model_is_fixed_at_start() {
    let server = TestServer::start(Setup::default());
    let newcomer = server.dir().join("aaa").join("1");
    copy_dir(&server.dir().join(MODEL).join("1"), &newcomer);
    edit_manifest(&newcomer, |manifest| manifest["name"] = json!("aaa"));
    let report = server.reloader.reload(&server.service).unwrap();
    assert_eq!(
        report.loaded,
        [("aaa".to_string(), 1)],
        "{:?}",
        report.failed
    );
    let body = score(&server.app(), &stored_request()).await.json();
    assert_eq!(body["model"]["name"], json!(MODEL));
}

/// Values outside what the bundle accepts are 422s naming the field: an embedding of
/// ±3.4e38 (scored 200 with confident probabilities before) and a negative session length.
#[tokio::test]
async fn implausible_values_are_refused_with_their_field() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let mut huge = stored_request();
    huge["candidates"][1]["show"] = json!({"embedding": vec![3.4e38_f64; common::EMBEDDING_DIM]});
    let reply = score(&app, &huge).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json()["error"]["code"], json!("out_of_range"));
    assert_eq!(
        reply.json()["error"]["field"],
        json!("candidates[1].show.embedding")
    );
    let mut negative = stored_request();
    negative["context"]["session_length_s"] = json!(-5);
    let reply = score(&app, &negative).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    assert_eq!(
        reply.json()["error"]["field"],
        json!("context.session_length_s")
    );
    assert_eq!(score(&app, &stored_request()).await.status, StatusCode::OK);
}

/// The trainer's bounds: the observed range widened by its width, never below zero for
/// counts; a bundle without them (the shipped one) falls back to plausibility ranges.
#[test]
fn bounds_are_recorded_from_training_values() {
    let mut counts = NumericStats::new(true);
    assert_eq!(counts.bounds(), None);
    for value in [0.0, 10.0, 1000.0] {
        counts.observe(RawValue::Number(value));
    }
    let bounds = counts.bounds().unwrap();
    assert_eq!(bounds.min, 0.0);
    let width = 1000f64.ln_1p();
    assert!((bounds.max - (2.0 * width).exp_m1()).abs() < 1e-6 * bounds.max);
    let mut plain = NumericStats::new(false);
    for value in [-2.0, 3.0] {
        plain.observe(RawValue::Number(value));
    }
    assert_eq!(
        plain.bounds(),
        Some(Bounds {
            min: -7.0,
            max: 8.0
        })
    );

    let shipped =
        Bundle::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/podcast-mtl/1")).unwrap();
    for spec in &shipped.manifest.features {
        match spec.transform {
            Transform::Numeric { log1p: true, .. } => {
                assert_eq!(spec.accepted().unwrap().min, 0.0)
            }
            Transform::Dense { .. } | Transform::Numeric { .. } => {
                assert!(spec.accepted().is_some())
            }
            _ => assert!(spec.accepted().is_none()),
        }
    }
}

/// Clients scoring the stored request in a loop until stopped; each answer's status and
/// the model version that gave it.
struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: tokio::task::JoinSet<Vec<(StatusCode, Value)>>,
}

impl Traffic {
    fn start(app: &axum::Router, clients: usize) -> Traffic {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (app, stop) = (app.clone(), Arc::clone(&stop));
            set.spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = score(&app, &stored_request()).await;
                    answers.push((reply.status, reply.json()["model"]["version"].clone()));
                }
                answers
            });
        }
        Traffic { stop, clients: set }
    }

    /// Stops the clients after a last 200 ms of traffic and returns every answer, after
    /// checking that each was a 200.
    async fn stop(self) -> Vec<Value> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers: Vec<(StatusCode, Value)> = self.clients.join_all().await.concat();
        assert!(!answers.is_empty());
        let failed: Vec<_> = answers
            .iter()
            .filter(|(status, _)| *status != StatusCode::OK)
            .collect();
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            failed.first()
        );
        answers.into_iter().map(|(_, version)| version).collect()
    }
}

/// A reload under traffic fails no request: clients scoring in a loop while version 2
/// is loaded and swapped in all get 200s, from version 1 and then version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_traffic_fails_no_request() {
    let server = TestServer::start(Setup::default());
    let traffic = Traffic::start(&server.app(), 3);
    common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Correct);
    let (service, reloader) = (server.service.clone(), Arc::clone(&server.reloader));
    let report = tokio::task::spawn_blocking(move || reloader.reload(&service))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.loaded, [(MODEL.to_string(), 2)]);
    let versions = traffic.stop().await;
    assert!(versions.contains(&json!(1)));
    assert!(versions.contains(&json!(2)));
}

/// A graph that makes tract panic while loading (a `Flatten` whose axis is past the
/// tensor's rank: tract-hir indexes out of bounds) is that bundle's failure, caught and
/// remembered rather than retried every pass, while traffic keeps being served by
/// version 1 with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_that_panics_while_loading_is_refused_under_traffic() {
    use prost::Message;

    let server = TestServer::start(Setup::default());
    let traffic = Traffic::start(&server.app(), 3);
    let dir = common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Correct);
    let graph = dir.join(bundle::MODEL_FILE);
    let mut model =
        tract_onnx::pb::ModelProto::decode(&std::fs::read(&graph).unwrap()[..]).unwrap();
    let flatten = model
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|node| node.op_type == "Flatten")
        .expect("the exported graph flattens");
    flatten
        .attribute
        .iter_mut()
        .find(|attribute| attribute.name == "axis")
        .expect("Flatten has an axis")
        .i = 99;
    std::fs::write(&graph, model.encode_to_vec()).unwrap();

    let pass = || {
        let (service, reloader) = (server.service.clone(), Arc::clone(&server.reloader));
        tokio::task::spawn_blocking(move || reloader.reload(&service).unwrap())
    };
    let report = pass().await.unwrap();
    assert!(report.loaded.is_empty(), "{:?}", report.loaded);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert!(
        report.failed[0].reason.contains("panicked while loading"),
        "{}",
        report.failed[0].reason
    );
    let again = pass().await.unwrap();
    assert!(
        again.loaded.is_empty() && again.failed.is_empty(),
        "{again:?}"
    );
    let versions = traffic.stop().await;
    assert!(versions.iter().all(|version| *version == json!(1)));
    assert_eq!(served_version(&server), Some(1));
}

// ---------------------------------------------------------------------------------------
// The admin routes.

fn admin(server: &TestServer, token: Option<&str>) -> axum::Router {
    podscore::api::admin::admin_app(
        server.service.clone(),
        Arc::clone(&server.reloader),
        token.map(str::to_string),
    )
}

fn post(uri: &str, token: Option<&str>) -> axum::http::Request<axum::body::Body> {
    let mut request = axum::http::Request::post(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(axum::body::Body::empty()).unwrap()
}

/// `POST /admin/reload` under traffic: a bundle that fails its golden check is answered
/// 422 `bundle_refused` with its reason and counted as failed while version 1 keeps
/// serving; a good one is answered 200 and served; no client request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_under_traffic_refuses_a_bad_bundle_and_serves_a_good_one() {
    let server = TestServer::start(Setup::default());
    let admin = admin(&server, None);
    let traffic = Traffic::start(&server.app(), 3);

    common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Wrong);
    let refused = common::send(&admin, post("/admin/reload", None)).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text()
    );
    let body = refused.json();
    assert_eq!(body["error"]["code"], "bundle_refused");
    assert_eq!(body["failed"][0]["version"], 2);
    assert!(
        body["failed"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("golden")
    );
    assert_eq!(body["served"], json!([{"model": MODEL, "version": 1}]));

    common::write_bundle(server.dir(), MODEL, 3, 6, Golden::Correct);
    let loaded = common::send(&admin, post("/admin/reload", None)).await;
    assert_eq!(loaded.status, StatusCode::OK, "{}", loaded.text());
    assert_eq!(
        loaded.json()["loaded"],
        json!([{"model": MODEL, "version": 3}])
    );

    let versions = traffic.stop().await;
    assert!(versions.contains(&json!(1)) && versions.contains(&json!(3)));
    assert!(!versions.contains(&json!(2)));
    let metrics = server.service.metrics().render().unwrap();
    let count = |result: &str| {
        common::metric(
            &metrics,
            &format!("podscore_model_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(count("failed"), Some(1.0));
    assert_eq!(count("loaded"), Some(2.0));
}

/// `POST /admin/rollback` under traffic serves the version below (read and proven from
/// disk), holds the version it replaced back from later reloads until a newer one comes,
/// and fails no request; with no earlier version it is a 409, for a model not served a
/// 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rollback_serves_the_previous_version_and_holds_the_newer_one_back() {
    let server = TestServer::start(Setup {
        bundles: vec![(1, Golden::Correct), (2, Golden::Correct)],
        ..Setup::default()
    });
    assert_eq!(served_version(&server), Some(2));
    let admin = admin(&server, None);
    let traffic = Traffic::start(&server.app(), 3);

    let rolled = common::send(&admin, post("/admin/rollback", None)).await;
    assert_eq!(rolled.status, StatusCode::OK, "{}", rolled.text());
    let body = rolled.json();
    assert_eq!(
        (&body["model"], &body["from"], &body["to"]),
        (&json!(MODEL), &json!(2), &json!(1))
    );
    assert_eq!(served_version(&server), Some(1));

    let again = common::send(&admin, post("/admin/reload", None)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.json()["loaded"], json!([]));
    assert_eq!(served_version(&server), Some(1));

    let versions = traffic.stop().await;
    assert!(versions.contains(&json!(2)) && versions.contains(&json!(1)));

    let nothing = common::send(
        &admin,
        post(&format!("/admin/rollback?model={MODEL}"), None),
    )
    .await;
    assert_eq!(nothing.status, StatusCode::CONFLICT, "{}", nothing.text());
    assert_eq!(nothing.json()["error"]["code"], "nothing_earlier");
    let unknown = common::send(&admin, post("/admin/rollback?model=nope", None)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");

    common::write_bundle(server.dir(), MODEL, 3, 6, Golden::Correct);
    let newer = common::send(&admin, post("/admin/reload", None)).await;
    assert_eq!(
        newer.json()["loaded"],
        json!([{"model": MODEL, "version": 3}])
    );
}

/// With a token set, admin requests without it or with a wrong one (one byte off, or a
/// prefix) are 401 with `WWW-Authenticate: Bearer` and change nothing; the right one is
/// served.
#[tokio::test]
async fn admin_routes_need_the_token_when_one_is_set() {
    let server = TestServer::start(Setup {
        bundles: vec![(1, Golden::Correct), (2, Golden::Correct)],
        ..Setup::default()
    });
    let admin = admin(&server, Some("s3cret-token"));
    for token in [None, Some("s3cret-tokem"), Some("s3cret"), Some("")] {
        let refused = common::send(&admin, post("/admin/rollback", token)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
        assert_eq!(refused.json()["error"]["code"], "unauthorized");
    }
    assert_eq!(served_version(&server), Some(2));
    let accepted = common::send(&admin, post("/admin/rollback", Some("s3cret-token"))).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text());
    assert_eq!(served_version(&server), Some(1));
}

/// The public router has no admin route: `POST /admin/reload` and `/admin/rollback` are
/// 404 there and change nothing.
#[tokio::test]
async fn admin_routes_are_absent_from_the_public_router() {
    let server = TestServer::start(Setup {
        bundles: vec![(1, Golden::Correct), (2, Golden::Correct)],
        ..Setup::default()
    });
    let app = server.app();
    for uri in ["/admin/reload", "/admin/rollback"] {
        let reply = common::send(&app, post(uri, None)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(reply.json()["error"]["code"], "not_found");
    }
    assert_eq!(served_version(&server), Some(2));
}
