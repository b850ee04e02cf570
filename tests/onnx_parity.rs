//! The exported graph computes the model: tract and ONNX Runtime agree with the
//! plain-Rust reference forward pass, and the runtime rejects inputs that do not fit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use podscore::features::ScopeTensors;
use podscore::graph::Values;
use podscore::model::testing::{self, RandomBundle, VocabularySizes};
use podscore::model::{self};
use podscore::onnx::{self, ExportError, WeightTensor};
use podscore::runtime::{Runtime, RuntimeConfig, RuntimeError};

/// The bound on served probabilities.
const PROBABILITY_TOLERANCE: f64 = 1e-5;
/// Logits may differ a little more than probabilities (sigmoid flattens), but not much:
/// only the order of float additions differs between the implementations.
const LOGIT_TOLERANCE: f32 = 1e-4;

fn bundle() -> (RandomBundle, Vec<u8>) {
    let bundle = testing::random_bundle(VocabularySizes::small(), 7);
    let onnx = onnx::export(&bundle.manifest, &bundle.weights).expect("a random bundle exports");
    (bundle, onnx)
}

/// Random assembled inputs, with hand-edited rows on the cold-start paths: row 0 fully
/// unknown (every id 0, every bag empty), row 1 with known ids but empty bags, and, when
/// `empty_request_bags`, a request whose history, follows and searches are all empty.
fn inputs(
    bundle: &RandomBundle,
    candidates: usize,
    seed: u64,
    empty_request_bags: bool,
) -> (ScopeTensors, ScopeTensors) {
    let (mut request, mut candidate_tensors) =
        testing::random_inputs(&bundle.manifest, &bundle.vocabularies, candidates, seed);
    let bag = candidate_tensors.widths.bag;
    let ids = candidate_tensors.widths.ids;
    if candidates >= 1 {
        candidate_tensors.ids[..ids].fill(0);
        candidate_tensors.bag_ids[..bag].fill(0);
        candidate_tensors.bag_mask[..bag].fill(0.0);
    }
    if candidates >= 2 {
        candidate_tensors.bag_mask[bag..2 * bag].fill(0.0);
    }
    if empty_request_bags {
        request.bag_ids.fill(0);
        request.bag_mask.fill(0.0);
    }
    (request, candidate_tensors)
}

fn sigmoid(logit: f32) -> f64 {
    podscore::bundle::sigmoid(f64::from(logit))
}

/// Largest |sigmoid(a) - sigmoid(b)| and |a - b| over all logits.
fn differences(expected: &[f32], actual: &[f32]) -> (f64, f32) {
    assert_eq!(expected.len(), actual.len(), "logit counts differ");
    expected
        .iter()
        .zip(actual)
        .fold((0.0, 0.0), |(probability, logit), (e, a)| {
            (
                probability.max((sigmoid(*e) - sigmoid(*a)).abs()),
                logit.max((e - a).abs()),
            )
        })
}

fn assert_matches_reference(
    bundle: &RandomBundle,
    runtime: &Runtime,
    request: &ScopeTensors,
    candidates: &ScopeTensors,
    what: &str,
) {
    let expected = model::forward(&bundle.manifest, &bundle.weights, request, candidates);
    let actual = runtime
        .infer(request, candidates)
        .expect("valid inputs infer");
    assert_eq!(
        (actual.rows, actual.heads),
        (candidates.rows, bundle.manifest.heads.len()),
        "{what}: output shape"
    );
    let (probability, logit) = differences(&expected, &actual.values);
    println!(
        "{what}: max |p_tract - p_reference| = {probability:.3e}, max logit difference {logit:.3e}"
    );
    assert!(
        probability <= PROBABILITY_TOLERANCE,
        "{what}: probabilities differ by {probability}"
    );
    assert!(logit <= LOGIT_TOLERANCE, "{what}: logits differ by {logit}");
    // Random weights must give outputs that vary, or the comparison proves nothing.
    let spread = expected.iter().fold(f32::MIN, |a, b| a.max(*b))
        - expected.iter().fold(f32::MAX, |a, b| a.min(*b));
    assert!(
        candidates.rows * bundle.manifest.heads.len() == 1 || spread > 0.01,
        "{what}: logits barely vary ({spread})"
    );
}

/// tract on the exported file gives the reference probabilities within 1e-5 for 1, 7 and
/// 1000 candidates, unknown ids and empty bags included.
#[test]
fn tract_matches_reference_for_1_7_and_1000_candidates() {
    let (bundle, onnx) = bundle();
    let runtime = Runtime::load(&bundle.manifest, &onnx, &RuntimeConfig::default()).expect("loads");
    for (candidates, seed, empty_request_bags) in [(1, 1, false), (7, 2, true), (1000, 3, false)] {
        let (request, candidate_tensors) = inputs(&bundle, candidates, seed, empty_request_bags);
        assert_matches_reference(
            &bundle,
            &runtime,
            &request,
            &candidate_tensors,
            &format!("N={candidates}"),
        );
    }
}

/// Rows of several scope tensors, one after another.
fn stacked(parts: &[ScopeTensors]) -> ScopeTensors {
    let mut out = parts[0].clone();
    for part in &parts[1..] {
        out.rows += part.rows;
        out.ids.extend_from_slice(&part.ids);
        out.bag_ids.extend_from_slice(&part.bag_ids);
        out.bag_mask.extend_from_slice(&part.bag_mask);
        out.dense.extend_from_slice(&part.dense);
        out.cold_start.extend_from_slice(&part.cold_start);
    }
    out
}

/// The evaluator's row-wise runtime scores each candidate row for its own request row:
/// rows of five requests (one with empty bags) in one call, padded to a bucket and on
/// the symbolic plan, give each request's logits from the serving runtime to 1e-5. A
/// request row count other than the candidates' is refused, as 1 is by the server's.
#[test]
fn row_wise_runtime_scores_each_row_for_its_own_request() {
    let (bundle, onnx) = bundle();
    let serving = Runtime::load(&bundle.manifest, &onnx, &RuntimeConfig::default()).expect("loads");
    let mut requests = Vec::new();
    let mut candidates = Vec::new();
    let mut expected = Vec::new();
    for (count, seed) in [(1, 11), (7, 12), (3, 13), (20, 14), (2, 15)] {
        let (request, candidate_tensors) = inputs(&bundle, count, seed, seed == 13);
        expected.extend(
            serving
                .infer(&request, &candidate_tensors)
                .expect("infers")
                .values,
        );
        requests.extend(std::iter::repeat_n(request, count));
        candidates.push(candidate_tensors);
    }
    let (requests, candidates) = (stacked(&requests), stacked(&candidates));
    assert_eq!(requests.rows, 33);
    for buckets in [vec![48], vec![]] {
        let row_wise = Runtime::load_row_wise(
            &bundle.manifest,
            &onnx,
            &RuntimeConfig {
                buckets: buckets.clone(),
                ..RuntimeConfig::default()
            },
        )
        .expect("loads row-wise");
        let actual = row_wise
            .infer(&requests, &candidates)
            .expect("infers row-wise");
        assert_eq!(
            (actual.rows, actual.heads),
            (33, bundle.manifest.heads.len())
        );
        let (probability, logit) = differences(&expected, &actual.values);
        println!(
            "row-wise, buckets {buckets:?}: max probability difference {probability:.3e}, logit {logit:.3e}"
        );
        assert!(
            probability <= PROBABILITY_TOLERANCE && logit <= LOGIT_TOLERANCE,
            "buckets {buckets:?}: row-wise logits differ by {logit}"
        );
        let one = inputs(&bundle, 4, 16, false);
        assert_eq!(
            row_wise
                .infer(&one.0, &one.1)
                .expect_err("one request row for four"),
            RuntimeError::Rows {
                scope: "request",
                expected: 4,
                got: 1
            }
        );
    }
    // The serving runtime still takes exactly one request row.
    assert!(matches!(
        serving.infer(&requests, &candidates),
        Err(RuntimeError::Rows {
            expected: 1,
            got: 33,
            ..
        })
    ));
}

/// Padding to a bucket changes nothing: bucketed plans, the symbolic plan and the
/// reference agree, and counts above the largest bucket run on the symbolic plan.
#[test]
fn bucketed_and_symbolic_plans_agree_and_large_calls_work() {
    let (bundle, onnx) = bundle();
    let bucketed = Runtime::load(
        &bundle.manifest,
        &onnx,
        &RuntimeConfig {
            buckets: vec![8, 4, 16],
            ..RuntimeConfig::default()
        },
    )
    .expect("loads");
    assert_eq!(bucketed.buckets(), vec![4, 8, 16], "buckets are sorted");
    let symbolic = Runtime::load(
        &bundle.manifest,
        &onnx,
        &RuntimeConfig {
            buckets: vec![],
            ..RuntimeConfig::default()
        },
    )
    .expect("loads");
    for (candidates, seed) in [(1, 11), (3, 12), (8, 13), (9, 14), (17, 15), (300, 16)] {
        let (request, candidate_tensors) = inputs(&bundle, candidates, seed, false);
        let from_bucket = bucketed
            .infer(&request, &candidate_tensors)
            .expect("bucketed infers");
        let from_symbolic = symbolic
            .infer(&request, &candidate_tensors)
            .expect("symbolic infers");
        let (probability, _) = differences(&from_symbolic.values, &from_bucket.values);
        assert!(
            probability <= PROBABILITY_TOLERANCE,
            "N={candidates}: plans differ by {probability}"
        );
        assert_matches_reference(
            &bundle,
            &bucketed,
            &request,
            &candidate_tensors,
            &format!("bucketed N={candidates}"),
        );
    }
    assert_eq!(bucketed.padded_rows(3), 4);
    assert_eq!(
        bucketed.padded_rows(17),
        17,
        "above the largest bucket: symbolic, unpadded"
    );
}

/// A runtime allowed two threads for lone calls (not the default since one thread measured
/// faster below 1,000 candidates) gives the reference logits, alone and beside another
/// call, with both bucketed and symbolic plans.
#[test]
fn threaded_calls_match_the_reference() {
    let (bundle, onnx) = bundle();
    let runtime = Arc::new(
        Runtime::load(
            &bundle.manifest,
            &onnx,
            &RuntimeConfig {
                buckets: vec![16, 64],
                threads: 2,
                threaded_from: 16,
            },
        )
        .expect("loads"),
    );
    for (candidates, seed) in [(9, 31), (50, 32), (300, 33)] {
        let (request, candidate_tensors) = inputs(&bundle, candidates, seed, false);
        assert_matches_reference(
            &bundle,
            &runtime,
            &request,
            &candidate_tensors,
            &format!("threaded N={candidates}"),
        );
    }
    let (request, candidates) = inputs(&bundle, 300, 34, false);
    let alone = runtime.infer(&request, &candidates).expect("infers");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| runtime.infer(&request, &candidates).expect("infers")))
            .collect();
        for handle in handles {
            let logits = handle.join().expect("no thread panics");
            let (probability, _) = differences(&alone.values, &logits.values);
            assert!(
                probability <= PROBABILITY_TOLERANCE,
                "concurrent threaded calls differ by {probability}"
            );
        }
    });
}

/// A call with no candidates answers no rows instead of failing.
#[test]
fn zero_candidates_give_zero_rows() {
    let (bundle, onnx) = bundle();
    let runtime = Runtime::load(&bundle.manifest, &onnx, &RuntimeConfig::default()).expect("loads");
    let (request, candidates) = inputs(&bundle, 0, 5, false);
    let logits = runtime
        .infer(&request, &candidates)
        .expect("empty calls infer");
    assert_eq!((logits.rows, logits.values.len()), (0, 0));
}

/// One runtime serves concurrent calls from many threads with the same results.
#[test]
fn shared_runtime_serves_threads_alike() {
    let (bundle, onnx) = bundle();
    let runtime =
        Arc::new(Runtime::load(&bundle.manifest, &onnx, &RuntimeConfig::default()).expect("loads"));
    let (request, candidates) = inputs(&bundle, 20, 21, false);
    let alone = runtime.infer(&request, &candidates).expect("infers");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..10)
                        .map(|_| runtime.infer(&request, &candidates).expect("infers"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for logits in handle.join().expect("no thread panics") {
                assert_eq!(logits, alone, "concurrent calls give the same logits");
            }
        }
    });
}

/// Tensors whose widths, row counts or lengths do not fit the manifest are refused with
/// a typed error naming the scope or input, before tract runs.
#[test]
fn mismatched_shapes_are_rejected() {
    let (bundle, onnx) = bundle();
    let runtime = Runtime::load(&bundle.manifest, &onnx, &RuntimeConfig::default()).expect("loads");
    let (request, candidates) = inputs(&bundle, 5, 31, false);

    let mut wider = candidates.clone();
    wider.widths.dense += 1;
    wider.dense.extend(std::iter::repeat_n(0.0, wider.rows));
    let error = runtime
        .infer(&request, &wider)
        .expect_err("wider dense is refused");
    assert!(
        matches!(
            error,
            RuntimeError::Widths {
                scope: "candidate",
                ..
            }
        ),
        "{error}"
    );

    let mut two_requests = request.clone();
    two_requests.rows = 2;
    two_requests.ids.extend_from_within(..);
    two_requests.bag_ids.extend_from_within(..);
    two_requests.bag_mask.extend_from_within(..);
    two_requests.dense.extend_from_within(..);
    let error = runtime
        .infer(&two_requests, &candidates)
        .expect_err("two request rows are refused");
    assert_eq!(
        error,
        RuntimeError::Rows {
            scope: "request",
            expected: 1,
            got: 2
        }
    );

    let mut short = candidates.clone();
    short.ids.pop();
    let error = runtime
        .infer(&request, &short)
        .expect_err("a short ids tensor is refused");
    assert!(
        matches!(&error, RuntimeError::Length { input, .. } if input == "candidate_ids"),
        "{error}"
    );

    let mut not_finite = candidates.clone();
    not_finite.dense[not_finite.widths.dense * 3] = f32::NAN;
    let error = runtime
        .infer(&request, &not_finite)
        .expect_err("NaN is refused");
    assert!(
        matches!(&error, RuntimeError::NotFinite { input, row: 3 } if input == "candidate_dense"),
        "{error}"
    );
}

/// Ids outside their table (too large or negative) are refused with the feature's name
/// instead of reaching tract's Gather, which would panic.
#[test]
fn out_of_range_ids_are_rejected() {
    let (bundle, onnx) = bundle();
    let runtime = Runtime::load(&bundle.manifest, &onnx, &RuntimeConfig::default()).expect("loads");
    let (request, candidates) = inputs(&bundle, 4, 41, false);
    let spec_of = |name: &str| {
        bundle
            .manifest
            .features
            .iter()
            .find(|spec| spec.name == name)
            .expect("feature exists")
    };

    let episode = spec_of("episode_id");
    let table_rows = bundle.weights.tensors[&onnx::embedding_weight_name("episode_id")].shape[0];
    let mut too_large = candidates.clone();
    too_large.ids[2 * too_large.widths.ids + episode.slot] = table_rows as i64;
    let error = runtime
        .infer(&request, &too_large)
        .expect_err("an id past the table is refused");
    assert_eq!(
        error,
        RuntimeError::IdOutOfRange {
            feature: "episode_id".into(),
            row: 2,
            id: table_rows as i64,
            table_rows
        }
    );
    assert!(
        error.to_string().contains("episode_id"),
        "the message names the feature: {error}"
    );

    let history = spec_of("user_history");
    let mut negative = request.clone();
    negative.bag_ids[history.slot + 3] = -1;
    let error = runtime
        .infer(&negative, &candidates)
        .expect_err("a negative bag id is refused");
    assert!(
        matches!(&error, RuntimeError::IdOutOfRange { feature, id: -1, .. } if feature == "user_history"),
        "{error}"
    );

    // The largest valid id still works.
    let mut largest = candidates.clone();
    largest.ids[episode.slot] = table_rows as i64 - 1;
    runtime
        .infer(&request, &largest)
        .expect("the last row of a table is in range");
}

/// The exporter refuses weights that do not fit the architecture, naming the weight.
#[test]
fn export_rejects_missing_misshaped_and_extra_weights() {
    let (bundle, _) = bundle();
    let mut missing = bundle.weights.clone();
    missing.tensors.remove("encoder.1.bias");
    assert_eq!(
        onnx::export(&bundle.manifest, &missing),
        Err(ExportError::MissingWeight {
            name: "encoder.1.bias".into()
        })
    );

    let mut misshaped = bundle.weights.clone();
    misshaped.tensors.insert(
        "tower.click.0.weight".into(),
        WeightTensor::zeros(vec![128, 63]),
    );
    let error =
        onnx::export(&bundle.manifest, &misshaped).expect_err("a misshaped tower is refused");
    assert!(
        matches!(&error, ExportError::WrongShape { name, .. } if name == "tower.click.0.weight"),
        "{error}"
    );
    assert!(
        error.to_string().contains("[128, 64]"),
        "the message says the shape needed: {error}"
    );

    let mut extra = bundle.weights.clone();
    extra.tensors.insert(
        "tower.unknown_head.0.weight".into(),
        WeightTensor::zeros(vec![1]),
    );
    assert!(matches!(
        onnx::export(&bundle.manifest, &extra),
        Err(ExportError::UnexpectedWeight { .. })
    ));

    let mut not_finite = bundle.weights.clone();
    not_finite
        .tensors
        .get_mut("batch_norm.shift")
        .expect("exists")
        .data[0] = f32::INFINITY;
    assert!(matches!(
        onnx::export(&bundle.manifest, &not_finite),
        Err(ExportError::NotFinite { .. })
    ));
}

/// A graph exported for another feature set is refused at load, not at the first call.
#[test]
fn loading_a_graph_for_another_manifest_fails() {
    let (bundle, onnx) = bundle();
    let mut other = bundle.manifest.clone();
    other.features.retain(|spec| spec.name != "creative_layout");
    let error =
        Runtime::load(&other, &onnx, &RuntimeConfig::default()).expect_err("mismatch is refused");
    assert!(
        matches!(error, RuntimeError::ModelMismatch { .. }),
        "{error}"
    );
    let error = Runtime::load(
        &bundle.manifest,
        b"not an onnx file",
        &RuntimeConfig::default(),
    )
    .expect_err("garbage is refused");
    assert!(
        matches!(
            error,
            RuntimeError::Load { .. } | RuntimeError::ModelMismatch { .. }
        ),
        "{error}"
    );
}

fn tensor_json<T: serde::Serialize>(
    dtype: &str,
    rows: usize,
    columns: usize,
    data: &[T],
) -> serde_json::Value {
    serde_json::json!({"dtype": dtype, "shape": [rows, columns], "data": data})
}

fn graph_feeds(
    manifest: &podscore::bundle::Manifest,
    request: &ScopeTensors,
    candidates: &ScopeTensors,
) -> serde_json::Map<String, serde_json::Value> {
    podscore::graph::inputs(&manifest.features)
        .into_iter()
        .map(|input| {
            let tensors = match input.scope {
                podscore::features::Scope::Request => request,
                podscore::features::Scope::Candidate => candidates,
            };
            let value = match input.values(tensors) {
                Values::Int64(values) => tensor_json("int64", tensors.rows, input.columns, values),
                Values::Float32(values) => {
                    tensor_json("float32", tensors.rows, input.columns, values)
                }
            };
            (input.name(), value)
        })
        .collect()
}

/// The Python that runs `tests/ort_parity.py`: `PODSCORE_PYTHON`, else `.venv/bin/python`.
/// Missing is a failure, not a skip: `bash tests/run.sh` installs it.
fn python() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("PODSCORE_PYTHON")
        .map_or_else(|| root.join(".venv/bin/python"), PathBuf::from);
    assert!(
        python.exists(),
        "ONNX Runtime parity needs a Python with onnx, onnxruntime and numpy at {} (or set PODSCORE_PYTHON). \
         Run `bash tests/run.sh`, which installs them, or: \
         python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt",
        python.display()
    );
    (root, python)
}

/// Runs ONNX Runtime and the full ONNX checker on `onnx` for each case (inputs and
/// expected probabilities); fails unless every probability is within tolerance.
fn run_onnx_runtime(python: &Path, root: &Path, onnx: &[u8], cases: Vec<serde_json::Value>) {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let model_path = directory.path().join("model.onnx");
    let cases_path = directory.path().join("cases.json");
    std::fs::write(&model_path, onnx).expect("writes the model");
    let spec = serde_json::json!({"tolerance": PROBABILITY_TOLERANCE, "cases": cases});
    std::fs::write(&cases_path, serde_json::to_vec(&spec).expect("serializes"))
        .expect("writes the cases");

    let output = std::process::Command::new(python)
        .arg(root.join("tests/ort_parity.py"))
        .arg(&model_path)
        .arg(&cases_path)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tests/ort_parity.py failed ({}):\n{stdout}\n{stderr}\n(exit 3 means missing packages: run the test driver)",
        output.status
    );
    println!("{stdout}");
    assert!(
        stdout.contains("full check passed"),
        "the checker ran: {stdout}"
    );
}

/// ONNX Runtime on the same file and inputs gives the reference probabilities within
/// 1e-5, and `onnx.checker.check_model(full_check=True)` accepts the file.
#[test]
fn onnx_runtime_matches_reference_and_checker_passes() {
    let (root, python) = python();
    let (bundle, onnx) = bundle();
    let heads = bundle.manifest.heads.len();
    let cases: Vec<serde_json::Value> = [(1, 51, false), (7, 52, true), (1000, 53, false)]
        .into_iter()
        .map(|(candidates, seed, empty_request_bags)| {
            let (request, candidate_tensors) =
                inputs(&bundle, candidates, seed, empty_request_bags);
            let logits = model::forward(
                &bundle.manifest,
                &bundle.weights,
                &request,
                &candidate_tensors,
            );
            let probabilities: Vec<f64> = logits.iter().map(|logit| sigmoid(*logit)).collect();
            serde_json::json!({
                "name": format!("N={candidates}"),
                "rows": candidates,
                "heads": heads,
                "inputs": graph_feeds(&bundle.manifest, &request, &candidate_tensors),
                "expected_probabilities": probabilities,
            })
        })
        .collect();
    run_onnx_runtime(&python, &root, &onnx, cases);
}

/// The exporter refuses manifests it cannot lay out: a head column used twice, or an
/// input column no feature owns (it would reach a Gather unchecked).
#[test]
fn export_rejects_inconsistent_manifests() {
    let (bundle, _) = bundle();
    let mut repeated_head = bundle.manifest.clone();
    repeated_head.heads[1].index = 0;
    let error = onnx::export(&repeated_head, &bundle.weights)
        .expect_err("a repeated head index is refused");
    assert!(
        matches!(error, ExportError::InvalidArchitecture { .. }),
        "{error}"
    );

    let mut gap = bundle.manifest.clone();
    let last_id = gap
        .features
        .iter_mut()
        .rfind(|spec| spec.input == "candidate_ids")
        .expect("candidate id features exist");
    last_id.slot += 1;
    let error = onnx::export(&gap, &bundle.weights).expect_err("an unowned column is refused");
    assert!(
        error.to_string().contains("belongs to no feature"),
        "{error}"
    );
}

/// On the shipped bundle, trained by candle and exported by podscore, ONNX Runtime gives
/// tract's probabilities within 1e-5 for N = 1, 7 and 1000 (unknown ids and empty bags
/// included), and the full checker accepts the file.
#[test]
fn onnx_runtime_matches_tract_on_the_shipped_bundle() {
    let (root, python) = python();
    let bundle =
        podscore::bundle::Bundle::read(&root.join("models/podcast-mtl/1")).expect("shipped bundle");
    let runtime = podscore::runtime::Runtime::load(
        &bundle.manifest,
        &bundle.onnx,
        &podscore::runtime::RuntimeConfig::default(),
    )
    .expect("loads in tract");
    let cases = [(1usize, 61u64), (7, 62), (1000, 63)]
        .into_iter()
        .map(|(rows, seed)| {
            let (request, mut candidates) =
                model::testing::random_inputs(&bundle.manifest, &bundle.vocabularies, rows, seed);
            // The first candidate is all unknown ids and empty bags: the cold-start path.
            let widths = candidates.widths;
            candidates.ids[..widths.ids].fill(0);
            candidates.bag_ids[..widths.bag].fill(0);
            candidates.bag_mask[..widths.bag].fill(0.0);
            let logits = runtime.infer(&request, &candidates).expect("tract infers");
            let probabilities: Vec<f64> =
                logits.values.iter().map(|logit| sigmoid(*logit)).collect();
            serde_json::json!({
                "name": format!("shipped N={rows}"),
                "rows": rows,
                "heads": logits.heads,
                "inputs": graph_feeds(&bundle.manifest, &request, &candidates),
                "expected_probabilities": probabilities,
            })
        })
        .collect();
    run_onnx_runtime(&python, &root, &bundle.onnx, cases);
}

/// Reading the weights back out of an exported graph gives exactly the weights that went
/// in, so `podscore reexport` loses nothing.
#[test]
fn read_weights_inverts_export() {
    let (bundle, onnx) = bundle();
    let read = onnx::read_weights(&bundle.manifest, &onnx).expect("reads its own export");
    assert_eq!(read, bundle.weights);
    let again = onnx::export(&bundle.manifest, &read).expect("exports again");
    assert!(
        again == onnx,
        "export(read(export(w))) must be the same file"
    );
}

/// A graph whose initializers do not fit the manifest is refused with the initializer's
/// name, not read into wrong weights.
#[test]
fn read_weights_refuses_a_graph_of_another_architecture() {
    let (bundle, onnx) = bundle();
    let mut narrower = bundle.manifest.clone();
    narrower.architecture.encoder = vec![32, 16];
    let error = onnx::read_weights(&narrower, &onnx).expect_err("the encoder widths differ");
    assert!(
        matches!(
            &error,
            onnx::ReadError::WrongInitializer { name, .. }
                | onnx::ReadError::Architecture(ExportError::WrongShape { name, .. })
                if name.starts_with("towers.") || name.starts_with("encoder.")
        ),
        "{error}"
    );
    assert!(matches!(
        onnx::read_weights(&bundle.manifest, b"not a model"),
        Err(onnx::ReadError::Decode(_)) | Err(onnx::ReadError::NoGraph)
    ));
}

/// The shipped bundle's graph is the one the current exporter writes from its weights:
/// a change to the graph's shape must come with a re-exported bundle
/// (`podscore reexport`), or this fails.
#[test]
fn the_shipped_bundle_is_in_the_current_graph() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle =
        podscore::bundle::Bundle::read(&root.join("models/podcast-mtl/1")).expect("shipped bundle");
    let weights = onnx::read_weights(&bundle.manifest, &bundle.onnx).expect("reads its weights");
    let exported = onnx::export(&bundle.manifest, &weights).expect("exports");
    assert!(
        exported == bundle.onnx,
        "models/podcast-mtl/1/model.onnx is not what this exporter writes; run `podscore reexport --bundle models/podcast-mtl/1 --out /tmp/re` and ship the result"
    );
}

/// `podscore reexport` writes the shipped bundle again: the new bundle passes its golden
/// check in tract, holds the same manifest but for rescored golden cases, and a bundle
/// already in the current graph comes out with the same `model.onnx`. A missing bundle or
/// an existing output fails with one line and writes nothing.
#[test]
fn reexport_writes_a_bundle_that_passes_its_golden_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = root.join("models/podcast-mtl/1");
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("podcast-mtl/1");
    let run = |bundle: &Path, out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_podscore"))
            .args(["reexport", "--bundle"])
            .arg(bundle)
            .arg("--out")
            .arg(out)
            .output()
            .expect("runs podscore")
    };
    let output = run(&shipped, &out);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let model = podscore::service::Model::open(&out, &RuntimeConfig::default())
        .expect("the re-exported bundle loads and passes its golden check");
    let old = podscore::bundle::Bundle::read(&shipped).unwrap();
    let new = podscore::bundle::Bundle::read(&out).unwrap();
    assert!(
        new.onnx == old.onnx,
        "the shipped bundle is already current"
    );
    let mut without_golden = model.manifest.clone();
    without_golden.golden = old.manifest.golden.clone();
    assert_eq!(without_golden, old.manifest);

    for (bundle, out, cause) in [
        (
            temp.path().join("absent"),
            temp.path().join("x"),
            "reading bundle",
        ),
        (shipped.clone(), out.clone(), "already exists"),
    ] {
        let output = run(&bundle, &out);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(cause),
            "{stderr}"
        );
    }
    assert!(!temp.path().join("x").exists());
}
