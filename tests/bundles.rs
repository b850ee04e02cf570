//! Bundle loading that no bundle can break, and reload that no reload can break: each
//! hole with the bundle that showed it (a symlink to `/dev/zero`, a FIFO as a vocabulary,
//! a vocabulary name that is a path, a vocabulary longer or shorter than its table, a
//! directory that disagrees with its manifest, a copy that keeps modification times, a
//! model added under an earlier name), fallback at start, range checks from the manifest,
//! and a reload under traffic.

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

/// A reload under traffic fails no request: clients scoring in a loop while version 2
/// is loaded and swapped in all get 200s, from version 1 and then version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_traffic_fails_no_request() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (app, stop) = (app.clone(), Arc::clone(&stop));
        clients.spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = score(&app, &stored_request()).await;
                answers.push((reply.status, reply.json()["model"]["version"].clone()));
            }
            answers
        });
    }
    common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Correct);
    let (service, reloader) = (server.service.clone(), Arc::clone(&server.reloader));
    let report = tokio::task::spawn_blocking(move || reloader.reload(&service))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.loaded, [(MODEL.to_string(), 2)]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers: Vec<(StatusCode, Value)> = clients.join_all().await.concat();
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    assert!(answers.iter().any(|(_, version)| *version == json!(1)));
    assert!(answers.iter().any(|(_, version)| *version == json!(2)));
}
