//! The API as serving ecosystems speak it: `/score` in protobuf as well as JSON (the same
//! scores, bit for bit), bids, gRPC `Scorer/Score`, and the KServe Open Inference
//! Protocol over REST and gRPC, checked against ONNX Runtime on the same tensors, with
//! each of the protocol's error cases.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use prost::Message;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_types::StatusExt;

use common::{MODEL, Setup, TestServer, get, golden_requests, post_json, send, stored_request};
use podscore::api::protobuf;
use podscore::bundle::Bundle;
use podscore::features::ScopeTensors;
use podscore::graph::{self, Values};
use podscore::grpc;
use podscore::model::testing;
use podscore::proto::inference as oip;
use podscore::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use podscore::proto::podscore::v1 as pb;
use podscore::proto::podscore::v1::scorer_client::ScorerClient;
use podscore::service::request::ScoreRequest;

/// How far the served outputs may be from ONNX Runtime's on the same tensors.
const ORT_TOLERANCE: f64 = 1e-5;

fn protobuf_request(uri: &str, body: Vec<u8>, accept: Option<&str>) -> Request<Body> {
    let mut request = Request::post(uri).header("content-type", protobuf::MEDIA_TYPE);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.body(Body::from(body)).expect("valid request")
}

fn message_of(json: &Value) -> pb::ScoreRequest {
    let request: ScoreRequest = serde_json::from_value(json.clone()).expect("a valid request");
    let message = protobuf::message_from_request(&request);
    assert_eq!(
        protobuf::request_from_message(message.clone()).expect("converts back"),
        request,
        "the protobuf form carries every field"
    );
    message
}

/// The fields of a candidate's scores that must match bit for bit.
const SCORE_FIELDS: [&str; 5] = [
    "stream",
    "click",
    "like",
    "follow",
    "expected_cost_per_stream",
];

/// Each candidate's scores in a JSON answer, read exactly: the number's text parsed by
/// Rust's correctly rounded `f64` parser. (serde_json's own float parsing, without its
/// `float_roundtrip` feature, may land one unit in the last place off the shortest
/// round-trip text the server writes.)
fn json_scores(body: &[u8]) -> Vec<Vec<Option<u64>>> {
    #[derive(serde::Deserialize)]
    struct Answer {
        candidates: Vec<std::collections::HashMap<String, Box<serde_json::value::RawValue>>>,
    }
    let answer: Answer = serde_json::from_slice(body).expect("a JSON answer");
    answer
        .candidates
        .iter()
        .map(|candidate| {
            SCORE_FIELDS
                .iter()
                .map(|field| {
                    let text = candidate.get(*field)?.get();
                    (text != "null").then(|| text.parse::<f64>().expect("a number").to_bits())
                })
                .collect()
        })
        .collect()
}

fn message_scores(candidate: &pb::CandidateScores) -> Vec<Option<u64>> {
    [
        candidate.stream,
        candidate.click,
        candidate.like,
        candidate.follow,
        candidate.expected_cost_per_stream,
    ]
    .iter()
    .map(|value| value.map(f64::to_bits))
    .collect()
}

/// Requests the tests score: the golden ones, and a stored one with bids and `order`.
fn requests() -> Vec<Value> {
    let mut with_bids = stored_request();
    with_bids["candidates"][0]["bid"] = json!(2.5);
    with_bids["candidates"][1]["bid"] = json!(0.75);
    with_bids["order"] = json!(true);
    let mut requests = golden_requests();
    requests.push(stored_request());
    requests.push(with_bids);
    requests
}

/// The same request as JSON and as protobuf gets bit-identical scores, in whichever type
/// `Accept` asks for (the request's own by default).
#[tokio::test]
async fn json_and_protobuf_give_bit_identical_scores() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    for request in requests() {
        let json_reply = common::score(&app, &request).await;
        assert_eq!(json_reply.status, 200, "{}", json_reply.text());
        let json_body = json_reply.json();
        let exact = json_scores(&json_reply.body);
        let body = message_of(&request).encode_to_vec();

        let reply = send(&app, protobuf_request("/score", body.clone(), None)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("content-type"), Some(protobuf::MEDIA_TYPE));
        let message = pb::ScoreResponse::decode(reply.body.clone()).expect("a protobuf answer");
        let candidates = json_body["candidates"].as_array().unwrap();
        assert_eq!(message.candidates.len(), candidates.len());
        for ((scores, expected), exact) in message.candidates.iter().zip(candidates).zip(&exact) {
            assert_eq!(scores.id, expected["id"].as_str().unwrap());
            assert_eq!(&message_scores(scores), exact);
            assert_eq!(scores.cold_start, expected["cold_start"].as_bool().unwrap());
        }
        assert_eq!(
            message.request_id.as_deref(),
            json_body["request_id"].as_str()
        );
        let model = message.model.as_ref().unwrap();
        assert_eq!((model.name.as_str(), model.version), (MODEL, 1));
        assert!(message.timings_us.is_some(), "timings are appended last");
        let order: Vec<&str> = json_body["order"]
            .as_array()
            .map(|ids| ids.iter().map(|id| id.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(message.order, order);

        // Protobuf in, JSON out.
        let reply = send(
            &app,
            protobuf_request("/score", body, Some("application/json")),
        )
        .await;
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let mut answer = reply.json();
        let mut expected = json_body.clone();
        answer.as_object_mut().unwrap().remove("timings_us");
        expected.as_object_mut().unwrap().remove("timings_us");
        assert_eq!(answer, expected);
    }
}

/// Unknown body types are 415, unacceptable answers 406, broken protobuf 400, an
/// unspecified kind and too many candidates 422 at their path: always in the JSON error
/// shape.
#[tokio::test]
async fn protobuf_errors_keep_the_json_error_shape() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let error = |reply: &common::Reply| {
        let body = reply.json();
        (
            reply.status.as_u16(),
            body["error"]["code"].as_str().unwrap().to_string(),
            body["error"]["field"].as_str().map(str::to_string),
        )
    };
    let text = Request::post("/score")
        .header("content-type", "text/plain")
        .body(Body::from("hello"))
        .unwrap();
    assert_eq!(
        error(&send(&app, text).await),
        (415, "unsupported_media_type".into(), None)
    );
    let body = message_of(&stored_request()).encode_to_vec();
    let reply = send(&app, protobuf_request("/score", body, Some("text/html"))).await;
    assert_eq!(error(&reply), (406, "not_acceptable".into(), None));
    let reply = send(
        &app,
        protobuf_request("/score", vec![0x0a, 0xff, 0x01], None),
    )
    .await;
    assert_eq!(error(&reply), (400, "malformed_protobuf".into(), None));
    let mut message = message_of(&stored_request());
    message.candidates[1].kind = 0;
    let reply = send(
        &app,
        protobuf_request("/score", message.encode_to_vec(), None),
    )
    .await;
    assert_eq!(
        error(&reply),
        (
            422,
            "unknown_kind".into(),
            Some("candidates[1].kind".into())
        )
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));

    // Too many candidates are refused from a scan of the wire, as in JSON.
    let many = pb::ScoreRequest {
        candidates: vec![pb::Candidate::default(); 1001],
        ..pb::ScoreRequest::default()
    };
    let reply = send(&app, protobuf_request("/score", many.encode_to_vec(), None)).await;
    assert_eq!(
        error(&reply),
        (422, "too_many_candidates".into(), Some("candidates".into()))
    );
}

/// A bid adds `expected_cost_per_stream = bid / stream`; `order` ranks by it with
/// unbid candidates last; without bids the answer has neither.
#[tokio::test]
async fn bids_give_expected_cost_per_stream_and_order() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let plain = common::score(&app, &stored_request()).await.json();
    for candidate in plain["candidates"].as_array().unwrap() {
        assert!(candidate.get("expected_cost_per_stream").is_none());
    }
    assert!(plain.get("order").is_none());

    let mut request = stored_request();
    let candidates = request["candidates"].as_array_mut().unwrap();
    let mut third = candidates[0].clone();
    third["id"] = json!("c3");
    candidates.push(third);
    candidates[0]["bid"] = json!(3.0);
    candidates[1]["bid"] = json!(0.5);
    request["order"] = json!(true);
    let reply = common::score(&app, &request).await;
    let answer = reply.json();
    let scored = answer["candidates"].as_array().unwrap();
    for (exact, bid) in json_scores(&reply.body).iter().zip([3.0, 0.5]) {
        let stream = f64::from_bits(exact[0].unwrap());
        assert_eq!(exact[4], Some((bid / stream).to_bits()));
    }
    assert!(scored[2].get("expected_cost_per_stream").is_none());
    let cost = |index: usize| scored[index]["expected_cost_per_stream"].as_f64().unwrap();
    let expected = if cost(0) <= cost(1) {
        ["c1", "c2", "c3"]
    } else {
        ["c2", "c1", "c3"]
    };
    assert_eq!(answer["order"], json!(expected));

    request["candidates"][0]["bid"] = json!(-1.0);
    let reply = common::score(&app, &request).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["error"]["field"], "candidates[0].bid");
}

/// A gRPC server on a port-0 listener, stopped when the returned sender drops.
async fn grpc_server(server: &TestServer) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    grpc_server_with_timeout(server, server.api.request_timeout).await
}

/// [`grpc_server`] with `request_timeout` as the server's cap on call deadlines.
async fn grpc_server_with_timeout(
    server: &TestServer,
    request_timeout: Duration,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = grpc::Config {
        max_message_bytes: server.api.max_body_bytes,
        request_timeout,
    };
    tokio::spawn(grpc::serve(
        listener,
        server.service.clone(),
        config,
        async {
            let _ = stopped.await;
        },
    ));
    (address, stop)
}

/// A client of the inference service on a gRPC server for `server`.
async fn inference_client(
    server: &TestServer,
) -> (
    GrpcInferenceServiceClient<tonic::transport::Channel>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (address, stop) = grpc_server(server).await;
    let client = GrpcInferenceServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    (client, stop)
}

/// gRPC `Score` gives the scores `/score` gives, bit for bit; its failures carry the
/// table's gRPC codes and details.
#[tokio::test]
async fn grpc_score_matches_http_score() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let (address, _stop) = grpc_server(&server).await;
    let mut client = ScorerClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    for request in requests() {
        let expected = json_scores(&common::score(&app, &request).await.body);
        let answer = client
            .score(message_of(&request))
            .await
            .expect("scores")
            .into_inner();
        assert_eq!(answer.candidates.len(), expected.len());
        for (scores, expected) in answer.candidates.iter().zip(&expected) {
            assert_eq!(&message_scores(scores), expected);
        }
    }

    let mut invalid = message_of(&stored_request());
    invalid.candidates[0].kind = 9;
    let status = client.score(invalid).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("podscore-error-code").unwrap(),
        "unknown_kind"
    );
    let violation = &status.get_details_bad_request().unwrap().field_violations[0];
    assert_eq!(violation.field, "candidates[0].kind");

    // A server whose request timeout (the cap on every call's deadline) is 1 ns: each
    // call is past its deadline on arrival. (A client-side timeout of 1 ns raced tonic's
    // own client timer, which answers CANCELLED when it fires first; the header's part in
    // the deadline is `grpc::tests`'.)
    let (late_address, _stop_late) =
        grpc_server_with_timeout(&server, Duration::from_nanos(1)).await;
    let mut late_client = ScorerClient::connect(format!("http://{late_address}"))
        .await
        .unwrap();
    let status = late_client
        .score(message_of(&stored_request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

/// gRPC calls go through `/score`'s admission line: with the line full, `Score` and
/// `ModelInfer` are shed as RESOURCE_EXHAUSTED with retry info (and counted as shed);
/// once the slot frees they are served. Not ready is UNAVAILABLE.
#[tokio::test]
async fn grpc_sheds_with_retry_info() {
    let mut setup = Setup::default();
    setup.service.max_inflight = 1;
    setup.service.max_queue = 0;
    let full = TestServer::start(setup);
    let (address, _stop) = grpc_server(&full).await;
    let mut client = ScorerClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let slot = common::hold_slot(&full.service).await;
    let status = client
        .score(message_of(&stored_request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.metadata().get("podscore-error-code").unwrap(),
        "overloaded"
    );
    assert!(status.get_details_retry_info().is_some());
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    let mut inference = GrpcInferenceServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let status = inference
        .model_infer(oip::ModelInferRequest {
            model_name: MODEL.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Metadata is never shed.
    inference
        .server_ready(oip::ServerReadyRequest {})
        .await
        .expect("health answers while the line is full");
    let metrics = send(&full.app(), get("/metrics")).await.text();
    assert_eq!(
        common::metric(
            &metrics,
            r#"podscore_shed_requests_total{reason="overloaded"}"#
        ),
        Some(2.0)
    );
    drop(slot);
    client
        .score(message_of(&stored_request()))
        .await
        .expect("scored once the slot is free");

    let empty = TestServer::start(Setup {
        bundles: vec![],
        ..Setup::default()
    });
    let (address, _stop) = grpc_server(&empty).await;
    let mut client = ScorerClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let status = client
        .score(message_of(&stored_request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.get_details_retry_info().is_some());
}

/// Random valid tensors for the served bundle, in the protocol's JSON form and as gRPC
/// input tensors, with the ONNX Runtime feed of each.
struct Tensors {
    rest: Vec<Value>,
    grpc: Vec<oip::model_infer_request::InferInputTensor>,
    feeds: serde_json::Map<String, Value>,
}

fn tensors(bundle: &Bundle, rows: usize, seed: u64) -> Tensors {
    let (request, candidates) =
        testing::random_inputs(&bundle.manifest, &bundle.vocabularies, rows, seed);
    let mut tensors = Tensors {
        rest: Vec::new(),
        grpc: Vec::new(),
        feeds: serde_json::Map::new(),
    };
    for input in graph::inputs(&bundle.manifest.features) {
        let scope: &ScopeTensors = match input.scope {
            podscore::features::Scope::Request => &request,
            podscore::features::Scope::Candidate => &candidates,
        };
        let shape = vec![scope.rows as i64, input.columns as i64];
        let mut contents = oip::InferTensorContents::default();
        let (datatype, dtype, data) = match input.values(scope) {
            Values::Int64(values) => {
                contents.int64_contents = values.to_vec();
                ("INT64", "int64", json!(values))
            }
            Values::Float32(values) => {
                contents.fp32_contents = values.to_vec();
                ("FP32", "float32", json!(values))
            }
        };
        tensors.rest.push(json!({
            "name": input.name(), "shape": shape, "datatype": datatype, "data": data,
        }));
        tensors
            .grpc
            .push(oip::model_infer_request::InferInputTensor {
                name: input.name(),
                datatype: datatype.into(),
                shape: shape.clone(),
                parameters: Default::default(),
                contents: Some(contents),
            });
        tensors.feeds.insert(
            input.name(),
            json!({"dtype": dtype, "shape": shape, "data": data}),
        );
    }
    tensors
}

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("PODSCORE_PYTHON")
        .map_or_else(|| root.join(".venv/bin/python"), PathBuf::from);
    assert!(
        python.exists(),
        "ONNX Runtime parity needs the test driver's Python at {} (or PODSCORE_PYTHON): run `bash tests/run.sh`",
        python.display()
    );
    python
}

/// `POST /v2/models/{name}/infer` and gRPC `ModelInfer` give ONNX Runtime's outputs on
/// the same tensors within 1e-5: the logits, and each head's calibrated probability.
#[tokio::test]
async fn kserve_infer_over_rest_and_grpc_matches_onnx_runtime() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let (mut client, _stop) = inference_client(&server).await;
    let bundle = Bundle::read(&server.dir().join(MODEL).join("1")).expect("the bundle reads");
    let heads = bundle.manifest.heads_by_column().unwrap();
    let mut cases = Vec::new();
    for (rows, seed) in [(1, 3), (7, 5), (40, 11)] {
        let tensors = tensors(&bundle, rows, seed);
        let reply = send(
            &app,
            post_json(
                &format!("/v2/models/{MODEL}/infer"),
                json!({"id": "case", "inputs": tensors.rest}).to_string(),
            ),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let rest = reply.json();
        assert_eq!(rest["model_name"], MODEL);
        assert_eq!(rest["model_version"], "1");
        assert_eq!(rest["id"], "case");
        let output = |name: &str| -> &Value {
            rest["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|output| output["name"] == name)
                .unwrap_or_else(|| panic!("no output {name}"))
        };
        assert_eq!(output("logits")["datatype"], "FP32");
        assert_eq!(output("logits")["shape"], json!([rows, heads.len()]));

        let answer = client
            .model_infer(oip::ModelInferRequest {
                model_name: MODEL.into(),
                model_version: String::new(),
                id: "case".into(),
                parameters: Default::default(),
                inputs: tensors.grpc,
                outputs: Vec::new(),
                raw_input_contents: Vec::new(),
            })
            .await
            .expect("infers")
            .into_inner();
        let grpc_output = |name: &str| {
            answer
                .outputs
                .iter()
                .find(|output| output.name == name)
                .and_then(|output| output.contents.clone())
                .unwrap_or_else(|| panic!("no gRPC output {name}"))
        };
        let grpc_logits: Vec<f64> = grpc_output("logits")
            .fp32_contents
            .iter()
            .map(|&value| f64::from(value))
            .collect();
        let rest_logits: Vec<f64> = output("logits")["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_f64().unwrap())
            .collect();
        for (transport, logits) in [("rest", &rest_logits), ("grpc", &grpc_logits)] {
            let calibrated: Vec<Value> = heads
                .iter()
                .map(|head| {
                    let values: Vec<f64> = if transport == "rest" {
                        output(&head.name)["data"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|value| value.as_f64().unwrap())
                            .collect()
                    } else {
                        grpc_output(&head.name).fp64_contents
                    };
                    json!({"column": head.index, "slope": head.calibration.slope,
                           "intercept": head.calibration.intercept, "values": values})
                })
                .collect();
            let probabilities: Vec<f64> = logits
                .iter()
                .map(|logit| 1.0 / (1.0 + (-logit).exp()))
                .collect();
            cases.push(json!({
                "name": format!("{transport}-{rows}"),
                "inputs": tensors.feeds,
                "rows": rows,
                "heads": heads.len(),
                "expected_probabilities": probabilities,
                "expected_logits": logits,
                "calibrated": calibrated,
            }));
        }
    }
    let directory = tempfile::tempdir().unwrap();
    let cases_path = directory.path().join("cases.json");
    std::fs::write(
        &cases_path,
        json!({"tolerance": ORT_TOLERANCE, "cases": cases}).to_string(),
    )
    .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new(python())
        .arg(root.join("tests/ort_parity.py"))
        .arg(bundle.dir.join("model.onnx"))
        .arg(&cases_path)
        .output()
        .expect("runs Python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ONNX Runtime disagrees with the served outputs:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("logits within"), "{stdout}");
}

/// Each of the protocol's error cases gets its error over REST (status, and the body
/// `{"error": "..."}` alone) and over gRPC (status code): unknown model or version, wrong
/// shape, wrong datatype, out-of-range id, missing input; none reaches tract.
#[tokio::test]
async fn kserve_errors_follow_the_protocol() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let (mut client, _stop) = inference_client(&server).await;
    let bundle = Bundle::read(&server.dir().join(MODEL).join("1")).unwrap();
    let valid = tensors(&bundle, 3, 17);
    let ids = valid
        .rest
        .iter()
        .position(|tensor| tensor["name"] == "candidate_ids")
        .unwrap();

    let mut wrong_shape = valid.rest.clone();
    wrong_shape[ids]["shape"] = json!([3, 999]);
    let mut wrong_datatype = valid.rest.clone();
    wrong_datatype[ids]["datatype"] = json!("FP32");
    let mut out_of_range = valid.rest.clone();
    out_of_range[ids]["data"][0] = json!(1_000_000_000);
    let mut missing = valid.rest.clone();
    missing.remove(ids);
    let mut bool_type = valid.rest.clone();
    bool_type[ids]["datatype"] = json!("BOOL");
    let cases = [
        (
            "unknown model",
            "/v2/models/nope/infer".to_string(),
            valid.rest.clone(),
            404,
            Code::NotFound,
        ),
        (
            "unknown version",
            format!("/v2/models/{MODEL}/versions/9/infer"),
            valid.rest.clone(),
            404,
            Code::NotFound,
        ),
        (
            "wrong shape",
            format!("/v2/models/{MODEL}/infer"),
            wrong_shape,
            400,
            Code::InvalidArgument,
        ),
        (
            "wrong datatype",
            format!("/v2/models/{MODEL}/infer"),
            wrong_datatype,
            400,
            Code::InvalidArgument,
        ),
        (
            "unsupported datatype",
            format!("/v2/models/{MODEL}/infer"),
            bool_type,
            400,
            Code::InvalidArgument,
        ),
        (
            "out-of-range id",
            format!("/v2/models/{MODEL}/infer"),
            out_of_range,
            400,
            Code::InvalidArgument,
        ),
        (
            "missing input",
            format!("/v2/models/{MODEL}/infer"),
            missing,
            400,
            Code::InvalidArgument,
        ),
    ];
    for (case, uri, inputs, status, code) in cases {
        let reply = send(&app, post_json(&uri, json!({"inputs": inputs}).to_string())).await;
        assert_eq!(reply.status, status, "{case}: {}", reply.text());
        let body = reply.json();
        let object = body.as_object().unwrap();
        assert_eq!(object.len(), 1, "{case}: {body}");
        assert!(object["error"].is_string(), "{case}: {body}");

        // The same case over gRPC.
        let (model_name, model_version) = match case {
            "unknown model" => ("nope".to_string(), String::new()),
            "unknown version" => (MODEL.to_string(), "9".to_string()),
            _ => (MODEL.to_string(), String::new()),
        };
        let grpc_inputs = inputs
            .iter()
            .map(|tensor| {
                let datatype = tensor["datatype"].as_str().unwrap().to_string();
                let values = tensor["data"].as_array().unwrap();
                let mut contents = oip::InferTensorContents::default();
                if datatype == "INT64" {
                    contents.int64_contents = values.iter().map(|v| v.as_i64().unwrap()).collect();
                } else {
                    contents.fp32_contents =
                        values.iter().map(|v| v.as_f64().unwrap() as f32).collect();
                }
                oip::model_infer_request::InferInputTensor {
                    name: tensor["name"].as_str().unwrap().into(),
                    datatype,
                    shape: tensor["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_i64().unwrap())
                        .collect(),
                    parameters: Default::default(),
                    contents: Some(contents),
                }
            })
            .collect();
        let status = client
            .model_infer(oip::ModelInferRequest {
                model_name,
                model_version,
                inputs: grpc_inputs,
                ..oip::ModelInferRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{case} over gRPC: {status:?}");
    }
}

/// Server and model metadata, health and readiness, by name and by version, over REST and
/// gRPC, from the graph contract.
#[tokio::test]
async fn kserve_metadata_health_and_readiness() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let metadata = send(&app, get("/v2")).await.json();
    assert_eq!(metadata["name"], "podscore");
    assert!(metadata["extensions"].is_array());
    for uri in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/podcast-mtl/ready",
        "/v2/models/podcast-mtl/versions/1/ready",
    ] {
        let reply = send(&app, get(uri)).await;
        assert_eq!(
            (uri, reply.status.as_u16(), reply.body.len()),
            (uri, 200, 0)
        );
    }
    for uri in [
        "/v2/models/nope/ready",
        "/v2/models/podcast-mtl/versions/2/ready",
        "/v2/models/podcast-mtl/versions/2",
    ] {
        let reply = send(&app, get(uri)).await;
        assert_eq!(reply.status, 404, "{uri}");
        assert!(reply.json()["error"].is_string());
    }
    let model = send(&app, get("/v2/models/podcast-mtl/versions/1"))
        .await
        .json();
    let bundle = Bundle::read(&server.dir().join(MODEL).join("1")).unwrap();
    let names: Vec<String> = graph::inputs(&bundle.manifest.features)
        .iter()
        .map(graph::Input::name)
        .collect();
    let listed: Vec<&str> = model["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| input["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, names);
    assert_eq!(model["outputs"][0]["name"], "logits");
    assert_eq!(model["outputs"][0]["shape"][0], -1);
    assert_eq!(
        model["outputs"].as_array().unwrap().len(),
        1 + bundle.manifest.heads.len()
    );

    let (mut client, _stop) = inference_client(&server).await;
    assert!(
        client
            .server_live(oip::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(oip::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = client
        .model_ready(oip::ModelReadyRequest {
            name: MODEL.into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);
    let status = client
        .model_ready(oip::ModelReadyRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let grpc_model = client
        .model_metadata(oip::ModelMetadataRequest {
            name: MODEL.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let grpc_names: Vec<String> = grpc_model
        .inputs
        .iter()
        .map(|input| input.name.clone())
        .collect();
    assert_eq!(grpc_names, names);
    assert_eq!(
        grpc_model.outputs.len(),
        model["outputs"].as_array().unwrap().len()
    );
    let server_metadata = client
        .server_metadata(oip::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server_metadata.name, "podscore");
}

/// The OpenAPI document is 3.1, generated, and lists every route the router serves: each
/// documented path and method reaches a handler (never the not-found or
/// method-not-allowed fallback), and no route is registered outside `api::routes`, whose
/// `routes!` registrations add route and entry together. Its error codes come from the
/// one table.
#[tokio::test]
async fn every_route_is_in_the_openapi_document() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let reply = send(&app, get("/openapi.json")).await;
    assert_eq!(reply.status, 200);
    let document = reply.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/score",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/models",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    for (path, operations) in paths {
        let uri = path.replace("{name}", MODEL).replace("{version}", "1");
        for method in operations.as_object().unwrap().keys() {
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let reply = send(&app, request).await;
            let code = serde_json::from_slice::<Value>(&reply.body)
                .ok()
                .and_then(|body| body["error"]["code"].as_str().map(str::to_string));
            assert!(
                !matches!(code.as_deref(), Some("not_found" | "method_not_allowed")),
                "{method} {path} is documented but not routed"
            );
        }
    }
    // Routes registered with axum's own `.route` would bypass the document. `admin.rs`
    // is the admin listener's own router (reload, rollback), on its own loopback port and
    // outside the public API this document describes.
    let api = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/api");
    for entry in std::fs::read_dir(&api).unwrap().flatten() {
        if entry.file_name() == "admin.rs" {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(
            !text.contains(".route("),
            "{} registers a route outside `routes!`",
            entry.path().display()
        );
    }
    // A candidate's scores are one object: the rule for manifest-named fields covers only
    // keys no property names, never `id`, `kind` or `cold_start`.
    let candidate = &document["components"]["schemas"]["CandidateScores"];
    assert!(candidate.get("allOf").is_none(), "{candidate}");
    for property in [
        "id",
        "kind",
        "cold_start",
        "stream",
        "click",
        "like",
        "follow",
    ] {
        assert!(
            candidate["properties"].get(property).is_some(),
            "CandidateScores lacks {property}: {candidate}"
        );
    }
    assert_eq!(candidate["required"], json!(["id", "kind", "cold_start"]));
    assert_eq!(
        candidate["additionalProperties"]["type"],
        json!(["number", "null"])
    );
    let (router_paths, generated) = podscore::api::routes();
    drop(router_paths);
    assert_eq!(generated.paths.paths.len(), paths.len());

    let codes: Vec<&str> = podscore::api::error::ErrorCode::all()
        .into_iter()
        .map(|code| code.describe().1)
        .collect();
    assert_eq!(
        document["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"],
        json!(codes)
    );
    assert_eq!(
        document["paths"]["/score"]["post"]["responses"]["503"]["x-error-codes"],
        json!(["overloaded", "queue_wait", "not_ready"])
    );
}

/// schemathesis (PyPI, installed by tests/run.sh) against the live server's
/// `/openapi.json`: every check, positive and negative modes, a bounded number of
/// examples per operation and a bounded run time. No answer is a 5xx, and every answer
/// conforms to the document.
#[test]
fn schemathesis_finds_no_failure_against_the_live_server() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await });

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = python();
    let schemathesis = python.with_file_name("schemathesis");
    assert!(
        schemathesis.exists(),
        "schemathesis is missing at {}: run `bash tests/run.sh`, which installs tests/requirements.txt",
        schemathesis.display()
    );
    let started = std::time::Instant::now();
    let output = std::process::Command::new("timeout")
        .arg(SCHEMATHESIS_TIMEOUT.as_secs().to_string())
        .arg(&schemathesis)
        .arg("--config-file")
        .arg(root.join("tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{address}/openapi.json"))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("runs schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    println!("schemathesis ran {:.0} s", started.elapsed().as_secs_f64());
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The longest the schemathesis run may take: it is bounded by examples per operation,
/// and this stops a stuck run.
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(300);
