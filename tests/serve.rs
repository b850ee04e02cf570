//! The scoring service end to end: golden scores over HTTP, parity with `podscore score`,
//! every bad-input class with its exact error body, cold starts and their metrics,
//! overload, deadlines, model refusal and reload, a real listener, and arbitrary bodies.

mod common;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};

use common::{
    Golden, MODEL, Setup, TestServer, get, metric, post_json, score, send, stored_request,
};
use podscore::api;
use podscore::bundle::{Bundle, FieldScores};
use podscore::runtime::RuntimeConfig;
use podscore::service::golden::GOLDEN_TOLERANCE;
use podscore::service::request::ScoreResponse;
use podscore::service::{self, Reloader, Service};

fn served_version(server: &TestServer) -> Option<u32> {
    server
        .service
        .models()
        .models
        .get(MODEL)
        .map(|model| model.version())
}

fn assert_scores_match(response: &Value, expected: &[FieldScores]) {
    let candidates = response["candidates"].as_array().expect("candidates array");
    assert_eq!(candidates.len(), expected.len());
    for (index, (got, expected)) in candidates.iter().zip(expected).enumerate() {
        for (field, expected) in [
            ("stream", expected.stream),
            ("click", expected.click),
            ("like", expected.like),
            ("follow", expected.follow),
        ] {
            let got = got[field].as_f64();
            match (got, expected) {
                (Some(got), Some(expected)) => assert!(
                    (got - expected).abs() <= GOLDEN_TOLERANCE,
                    "candidate {index} {field}: got {got}, manifest says {expected}"
                ),
                (got, expected) => assert_eq!(got, expected, "candidate {index} {field}"),
            }
        }
    }
}

/// Golden requests score over HTTP what the bundle's manifest says, within 1e-5.
#[tokio::test]
async fn golden_requests_score_over_http_as_the_manifest_says() {
    let server = TestServer::start(Setup::default());
    let manifest = Bundle::read(&server.dir().join(MODEL).join("1"))
        .unwrap()
        .manifest;
    assert_eq!(manifest.golden.len(), 2);
    let app = server.app();
    for case in &manifest.golden {
        let reply = score(&app, &case.request).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["model"], json!({"name": MODEL, "version": 1}));
        assert_eq!(body["request_id"], case.request["request_id"]);
        assert_scores_match(&body, &case.expected);
    }
}

/// The real server on 127.0.0.1 (port 0), serving the shipped models directory with the
/// demo features, scores the shipped bundle's golden cases as candle computed them at
/// training (within 1e-5), and the README's example request with every field in range.
#[tokio::test]
async fn shipped_bundle_scores_over_http_as_the_trained_model() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = podscore::store::SnapshotStore::open(&root.join("models/demo-features")).unwrap();
    let config = service::Config {
        max_inflight: 2,
        ..service::Config::default()
    };
    let service = Service::new(config, Arc::new(store)).unwrap();
    Reloader::new(&root.join("models"), None)
        .reload(&service)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = api::app(service, api::Config::default());
    let limits = podscore::serve::ServerLimits::default();
    let running = tokio::spawn(async move {
        podscore::serve::serve(listener, app, &limits, async {
            let _ = stopped.await;
        })
        .await
    });
    let client = reqwest::Client::new();
    let post = |body: &Value| {
        client
            .post(format!("http://{address}/score"))
            .json(body)
            .send()
    };
    let manifest = Bundle::read(&root.join("models/podcast-mtl/1"))
        .unwrap()
        .manifest;
    for case in &manifest.golden {
        let response = post(&case.request).await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_scores_match(&response.json::<Value>().await.unwrap(), &case.expected);
    }
    let readme_request = json!({"request_id": "r-1", "user": {"id": "u42"},
        "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "home", "session_length_s": 420},
        "candidates": [
            {"id": "c1", "kind": "ad", "show_id": "s17", "episode_id": "e9",
             "creative": {"creative_id": "cr3", "campaign_id": "cp1", "format": "audio", "slot": "midroll"}},
            {"id": "c2", "kind": "promotion", "show_id": "s2",
             "creative": {"campaign_id": "p7", "slot": "home_shelf", "layout": "card"}}]});
    let response = post(&readme_request).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], json!({"name": "podcast-mtl", "version": 1}));
    for candidate in body["candidates"].as_array().unwrap() {
        assert_eq!(
            candidate["cold_start"],
            json!(false),
            "s17 and s2 are in the demo snapshot"
        );
        for field in ["stream", "click", "like", "follow"] {
            let value = candidate[field].as_f64().unwrap();
            assert!(value > 0.0 && value < 1.0, "{field}: {value}");
        }
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A response has one entry per candidate in request order, calibrated probabilities in
/// [0, 1], per-stage timings in the body and in Server-Timing, and the request id echoed.
#[tokio::test]
async fn responses_keep_request_order_and_report_stage_timings() {
    let server = TestServer::start(Setup::default());
    let request = post_json("/score", stored_request().to_string());
    let (mut parts, body) = request.into_parts();
    parts
        .headers
        .insert("x-request-id", "req-42".parse().unwrap());
    let reply = send(&server.app(), Request::from_parts(parts, body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-request-id"), Some("req-42"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let timing = reply.header("server-timing").expect("Server-Timing header");
    for stage in [
        "decode;dur=",
        "features;dur=",
        "inference;dur=",
        "encode;dur=",
    ] {
        assert!(timing.contains(stage), "{timing}");
    }
    let response: ScoreResponse =
        serde_json::from_slice(&reply.body).expect("body is a ScoreResponse");
    assert_eq!(response.request_id.as_deref(), Some("r-1"));
    let ids: Vec<&str> = response.candidates.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c1", "c2"]);
    for candidate in &response.candidates {
        for probability in [
            candidate.scores.stream,
            candidate.scores.click,
            candidate.scores.like,
            candidate.scores.follow,
        ] {
            let probability = probability.expect("the default heads fill every field");
            assert!((0.0..=1.0).contains(&probability));
        }
        assert!(!candidate.cold_start, "known shows are not cold starts");
    }
    assert!(response.timings_us.inference > 0 || response.timings_us.features > 0);
}

/// Without an x-request-id, the server generates one and returns it.
#[tokio::test]
async fn request_ids_are_generated_when_absent() {
    let server = TestServer::start(Setup::default());
    let reply = send(&server.app(), get("/healthz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply
        .header("x-request-id")
        .expect("a generated request id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
}

/// `podscore score` prints the same scores the server answers for the same request, with
/// the same feature snapshot read back from Parquet.
#[tokio::test]
async fn score_command_matches_the_server() {
    let server = TestServer::start(Setup {
        runtime: RuntimeConfig::default(),
        ..Setup::default()
    });
    let features = server.dir().join("features");
    podscore::logs::write_snapshot(&features, &common::snapshot()).expect("snapshot writes");
    let request = stored_request();
    let file = server.dir().join("request.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_podscore"))
        .args(["score", "--request"])
        .arg(&file)
        .arg("--models")
        .arg(server.dir())
        .arg("--features")
        .arg(&features)
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "podscore score failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let offline: Value =
        serde_json::from_slice(&output.stdout).expect("stdout is the response JSON");
    let online = score(&server.app(), &request).await;
    assert_eq!(online.status, StatusCode::OK);
    let online = online.json();
    assert_eq!(offline["candidates"], online["candidates"]);
    assert_eq!(offline["model"], online["model"]);
    assert_eq!(offline["request_id"], json!("r-1"));
}

/// `podscore score` exits non-zero with the error body on an invalid request.
#[test]
fn score_command_reports_invalid_requests() {
    let server = TestServer::start(Setup::default());
    let file = server.dir().join("bad.json");
    std::fs::write(&file, r#"{"candidates": []}"#).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_podscore"))
        .args(["score", "--no-features", "--request"])
        .arg(&file)
        .arg("--models")
        .arg(server.dir())
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("empty_candidates"),
        "{stderr}"
    );
}

/// One bad-input case: what is sent, and the exact status and body expected.
async fn check(app: &axum::Router, request: Request<Body>, status: StatusCode, body: Value) {
    let reply = send(app, request).await;
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.json(), body);
}

fn error(code: &str, message: &str, field: Option<&str>) -> Value {
    json!({"error": {"code": code, "message": message, "field": field}})
}

fn with_candidates(candidates: Value) -> String {
    json!({"user": {"id": "u1"}, "candidates": candidates}).to_string()
}

/// Every bad-input class answers its status and its exact JSON error body, with the
/// field path where there is one.
#[tokio::test]
async fn bad_input_gets_its_status_and_error_body() {
    let server = TestServer::start(Setup {
        service: service::Config {
            limits: podscore::service::validate::Limits {
                max_candidates: 3,
                ..Default::default()
            },
            ..Setup::default().service
        },
        api: api::Config {
            max_body_bytes: 4096,
            ..api::Config::default()
        },
        ..Setup::default()
    });
    let app = server.app();
    let ad = |id: &str| json!({"id": id, "kind": "ad", "show_id": "show_1"});
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;

    check(
        &app,
        post_json("/score", r#"{"candidates": ["#),
        StatusCode::BAD_REQUEST,
        error(
            "malformed_json",
            "malformed JSON: EOF while parsing a list",
            None,
        ),
    )
    .await;
    check(
        &app,
        post_json("/score", "not json"),
        StatusCode::BAD_REQUEST,
        error("malformed_json", "malformed JSON: expected ident", None),
    )
    .await;
    check(
        &app,
        Request::post("/score")
            .header("content-type", "text/plain")
            .body(Body::from(with_candidates(json!([ad("c1")]))))
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        error(
            "unsupported_media_type",
            "unsupported content type `text/plain`; send application/json or application/x-protobuf",
            None,
        ),
    )
    .await;
    check(
        &app,
        Request::post("/score").body(Body::from("{}")).unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        error(
            "unsupported_media_type",
            "unsupported content type (none); send application/json or application/x-protobuf",
            None,
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            format!(
                r#"{{"request_id": "{}", "candidates": []}}"#,
                "x".repeat(5000)
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE,
        error("body_too_large", "request body over 4096 bytes", None),
    )
    .await;
    check(
        &app,
        post_json("/score", r#"{"user": {"id": "u1"}}"#),
        unprocessable,
        error(
            "missing_field",
            "missing field `candidates`",
            Some("candidates"),
        ),
    )
    .await;
    check(
        &app,
        post_json("/score", with_candidates(json!([ad("c0"), {"id": "c1"}]))),
        unprocessable,
        error(
            "missing_field",
            "missing field `kind`",
            Some("candidates[1].kind"),
        ),
    )
    .await;
    check(
        &app,
        post_json("/score", with_candidates(json!([{"id": "c0", "kind": 5}]))),
        unprocessable,
        error(
            "wrong_type",
            "invalid type: integer `5`, expected a string",
            Some("candidates[0].kind"),
        ),
    )
    .await;
    check(
        &app,
        post_json("/score", r#"{"candidates": {"id": "c0"}}"#),
        unprocessable,
        error(
            "wrong_type",
            "invalid type: map, expected a sequence",
            Some("candidates"),
        ),
    )
    .await;
    check(
        &app,
        post_json("/score", r#"[1, 2]"#),
        unprocessable,
        error("wrong_type", "the body must be a JSON object", None),
    )
    .await;
    check(
        &app,
        post_json("/score", with_candidates(json!([{"id": "c0", "kind": "ad", "colour": "red"}]))),
        unprocessable,
        error(
            "unknown_field",
            "unknown field `colour`, expected one of `id`, `kind`, `show_id`, `episode_id`, `show`, `episode`, `creative`, `bid`",
            Some("candidates[0].colour"),
        ),
    )
    .await;
    check(
        &app,
        post_json("/score", with_candidates(json!([]))),
        unprocessable,
        error(
            "empty_candidates",
            "at least one candidate is required",
            Some("candidates"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            with_candidates(json!([ad("c0"), ad("c1"), ad("c2"), ad("c3")])),
        ),
        unprocessable,
        error(
            "too_many_candidates",
            "more than 3 candidates; at most 3 per request",
            Some("candidates"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            with_candidates(json!([ad("c0"), ad("c1"), {"id": "c2", "kind": "banner"}])),
        ),
        unprocessable,
        error(
            "unknown_kind",
            "unknown candidate kind `banner`; expected `ad` or `promotion`",
            Some("candidates[2].kind"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            r#"{"candidates": [{"id": "c0", "kind": "ad", "show": {"streams_30d": 1e400}}]}"#,
        ),
        unprocessable,
        error(
            "not_finite",
            "number out of range",
            Some("candidates[0].show.streams_30d"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            r#"{"candidates": [{"id": "c0", "kind": "ad", "show": {"embedding": [0.5, 1e39]}}]}"#,
        ),
        unprocessable,
        error(
            "not_finite",
            "number is not finite",
            Some("candidates[0].show.embedding[1]"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            with_candidates(
                json!([{"id": "c0", "kind": "ad", "show": {"embedding": [0.5, 0.25, 1.0]}}]),
            ),
        ),
        unprocessable,
        error(
            "wrong_dimension",
            "feature `show_embedding`: expected 16 values, got 3 (row 0)",
            Some("candidates[0].show.embedding"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            with_candidates(json!([{"id": "c".repeat(257), "kind": "ad"}])),
        ),
        unprocessable,
        error(
            "string_too_long",
            "string of 257 characters; at most 256 allowed",
            Some("candidates[0].id"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            json!({"context": {"host_genre": "g".repeat(257)}, "candidates": [ad("c0")]})
                .to_string(),
        ),
        unprocessable,
        error(
            "string_too_long",
            "string of 257 characters; at most 256 allowed",
            Some("context.host_genre"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            json!({"context": {"timestamp": "last tuesday"}, "candidates": [ad("c0")]}).to_string(),
        ),
        unprocessable,
        error(
            "invalid_timestamp",
            "not an RFC 3339 timestamp: premature end of input",
            Some("context.timestamp"),
        ),
    )
    .await;
    check(
        &app,
        post_json(
            "/score",
            json!({"model": "nope", "candidates": [ad("c0")]}).to_string(),
        ),
        unprocessable,
        error(
            "unknown_model",
            "no model named `nope` is served",
            Some("model"),
        ),
    )
    .await;
    check(
        &app,
        Request::post("/score")
            .header("content-type", "application/json")
            .header("x-request-timeout-ms", "soon")
            .body(Body::from(with_candidates(json!([ad("c0")]))))
            .unwrap(),
        StatusCode::BAD_REQUEST,
        error(
            "invalid_header",
            "x-request-timeout-ms must be a whole number of milliseconds",
            Some("x-request-timeout-ms"),
        ),
    )
    .await;
    check(
        &app,
        get("/nowhere"),
        StatusCode::NOT_FOUND,
        error("not_found", "no route for /nowhere", None),
    )
    .await;
    check(
        &app,
        get("/score"),
        StatusCode::METHOD_NOT_ALLOWED,
        error(
            "method_not_allowed",
            "method not allowed on this route",
            None,
        ),
    )
    .await;
    check(
        &app,
        get("/v2/models/nope"),
        StatusCode::NOT_FOUND,
        // The Open Inference Protocol's error body: the message alone.
        json!({"error": "no model named `nope` is served"}),
    )
    .await;

    // The server keeps serving after all of that.
    let reply = score(&app, &stored_request()).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// A deadline already passed answers 504, with the error body.
#[tokio::test]
async fn passed_deadline_answers_504() {
    let server = TestServer::start(Setup::default());
    let request = Request::post("/score")
        .header("content-type", "application/json")
        .header("x-request-timeout-ms", "0")
        .body(Body::from(stored_request().to_string()))
        .unwrap();
    check(
        &server.app(),
        request,
        StatusCode::GATEWAY_TIMEOUT,
        error(
            "deadline_exceeded",
            "the request's deadline passed before scoring finished",
            None,
        ),
    )
    .await;
}

/// With the admission line full (every slot taken, no queue), a request is shed at once
/// with 503 and Retry-After, counted as shed; once the slot frees, requests score again.
#[tokio::test]
async fn overload_answers_503_with_retry_after() {
    let server = TestServer::start(Setup {
        service: service::Config {
            max_inflight: 1,
            max_queue: 0,
            ..Setup::default().service
        },
        ..Setup::default()
    });
    let app = server.app();
    let slot = common::hold_slot(&server.service).await;
    let started = std::time::Instant::now();
    let reply = score(&app, &stored_request()).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shedding does not wait"
    );
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.json(),
        error(
            "overloaded",
            "too many requests in flight; retry shortly",
            None
        )
    );
    drop(slot);
    assert_eq!(score(&app, &stored_request()).await.status, StatusCode::OK);
    let metrics = send(&app, get("/metrics")).await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_shed_requests_total{reason="overloaded"}"#
        ),
        Some(1.0)
    );
}

/// Zero inference slots, which used to shed every request while `/readyz` answered 200,
/// is refused when the service is built.
#[test]
fn zero_inference_slots_are_refused_at_start() {
    let error = Service::new(
        service::Config {
            max_inflight: 0,
            ..service::Config::default()
        },
        Arc::new(podscore::store::SnapshotStore::empty()),
    )
    .unwrap_err();
    assert!(error.to_string().contains("at least 1"), "{error}");
}

/// A candidate whose show the store has never seen takes the cold-start path, is flagged
/// in the response, and is counted in /metrics with the store miss.
#[tokio::test]
async fn unseen_show_takes_the_cold_start_path_and_is_counted() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let request = json!({
        "user": {"id": "u1"},
        "candidates": [
            {"id": "known", "kind": "promotion", "show_id": "show_1"},
            {"id": "new", "kind": "ad", "show_id": "brand-new-show"}
        ]
    });
    let reply = score(&app, &request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["candidates"][0]["cold_start"], json!(false));
    assert_eq!(body["candidates"][1]["cold_start"], json!(true));
    assert!(
        body["candidates"][1]["stream"].as_f64().is_some(),
        "cold starts are scored, not refused"
    );
    let metrics = send(&app, get("/metrics")).await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_cold_start_candidates_total{kind="ad"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_cold_start_candidates_total{kind="promotion"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_feature_lookups_total{entity="show",result="hit"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_feature_lookups_total{entity="show",result="miss"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_feature_lookups_total{entity="user",result="hit"}"#
        ),
        Some(1.0)
    );
}

/// An unknown user is a miss, not an error.
#[tokio::test]
async fn unknown_user_is_scored_and_counted_as_a_miss() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let request = json!({"user": {"id": "stranger"}, "candidates": [{"id": "c", "kind": "ad", "show_id": "show_2"}]});
    assert_eq!(score(&app, &request).await.status, StatusCode::OK);
    let metrics = send(&app, get("/metrics")).await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_feature_lookups_total{entity="user",result="miss"}"#
        ),
        Some(1.0)
    );
}

/// A store slower than its timeout does not fail the request: every candidate goes cold,
/// and the fallback and the lookups are counted.
#[tokio::test]
async fn slow_store_falls_back_to_cold_start_with_a_metric() {
    let models = tempfile::TempDir::new().unwrap();
    common::write_bundle(models.path(), MODEL, 1, 8, Golden::Correct);
    let config = service::Config {
        store_timeout: Duration::from_millis(10),
        max_inflight: 2,
        ..service::Config::default()
    };
    let service = Service::new(config, Arc::new(common::HangingStore { ready: true })).unwrap();
    Reloader::with_runtime(models.path(), None, common::runtime_config())
        .reload(&service)
        .unwrap();
    let app = api::app(service, api::Config::default());
    let reply = score(&app, &stored_request()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["candidates"][0]["cold_start"], json!(true));
    assert_eq!(body["candidates"][1]["cold_start"], json!(true));
    let metrics = send(&app, get("/metrics")).await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_store_fallbacks_total{reason="timeout"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"podscore_feature_lookups_total{entity="show",result="error"}"#
        ),
        Some(2.0)
    );
}

/// Inline features win over the store: sending the stored values inline changes nothing,
/// overriding one user field changes the scores.
#[tokio::test]
async fn inline_features_override_the_store_field_by_field() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let stored = score(&app, &stored_request()).await.json();
    let mut same = stored_request();
    same["user"]["country"] = json!("country_1");
    same["candidates"][1]["show"] = json!({"streams_30d": 2000.0});
    assert_eq!(
        score(&app, &same).await.json()["candidates"],
        stored["candidates"]
    );
    let mut different = stored_request();
    different["user"]["history"] = json!(["show_40", "show_41"]);
    assert_ne!(
        score(&app, &different).await.json()["candidates"],
        stored["candidates"]
    );
}

/// Every metric family the README's "Metrics" table names is exported, and `promtool check metrics` accepts
/// the exposition.
#[tokio::test]
async fn metrics_pass_promtool() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    assert_eq!(score(&app, &stored_request()).await.status, StatusCode::OK);
    let reply = send(&app, get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = reply.text();
    for family in [
        "podscore_http_requests_total",
        "podscore_http_request_duration_seconds",
        "podscore_stage_duration_seconds",
        "podscore_candidates_per_request",
        "podscore_http_requests_in_flight",
        "podscore_shed_requests_total",
        "podscore_feature_lookups_total",
        "podscore_store_fallbacks_total",
        "podscore_cold_start_candidates_total",
        "podscore_predicted_probability",
        "podscore_model_info",
        "podscore_model_reloads_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    for stage in ["decode", "features", "inference", "encode"] {
        let series = format!("podscore_stage_duration_seconds_count{{stage=\"{stage}\"}}");
        assert_eq!(metric(&text, &series), Some(1.0), "{series}");
    }
    assert!(
        text.contains(r#"podscore_stage_duration_seconds_bucket{stage="decode",le="0.00005"}"#)
    );
    assert_eq!(
        metric(
            &text,
            r#"podscore_http_requests_total{route="/score",status="200"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            &format!("podscore_model_info{{name=\"{MODEL}\",version=\"1\"}}")
        ),
        Some(1.0)
    );

    let mut promtool = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => panic!(
            "promtool is required for this test and was not found ({error}); \
             install it with `apt-get install -y prometheus`"
        ),
    };
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A bundle whose golden outputs are wrong is refused at start and on reload, and the
/// good version keeps serving; a newer good version then replaces it.
#[tokio::test]
async fn wrong_golden_bundle_is_refused_and_the_good_one_keeps_serving() {
    let server = TestServer::start(Setup {
        bundles: vec![(1, Golden::Correct), (2, Golden::Wrong)],
        ..Setup::default()
    });
    assert_eq!(
        served_version(&server),
        Some(1),
        "v2 fails its golden check"
    );
    let app = server.app();
    let listed = send(&app, get("/v1/models")).await.json();
    assert_eq!(listed["models"][0]["name"], json!(MODEL));
    assert_eq!(listed["models"][0]["version"], json!(1));

    common::write_bundle(server.dir(), MODEL, 3, 99, Golden::Wrong);
    let report = server.reloader.reload(&server.service).unwrap();
    assert!(report.loaded.is_empty());
    assert_eq!(
        served_version(&server),
        Some(1),
        "a refused reload keeps the served model"
    );
    assert_eq!(score(&app, &stored_request()).await.status, StatusCode::OK);

    common::write_bundle(server.dir(), MODEL, 4, 100, Golden::Correct);
    let report = server.reloader.reload(&server.service).unwrap();
    assert_eq!(report.loaded, [(MODEL.to_string(), 4)]);
    assert_eq!(served_version(&server), Some(4));
    let body = score(&app, &stored_request()).await.json();
    assert_eq!(body["model"]["version"], json!(4));

    let metrics = send(&app, get("/metrics")).await.text();
    assert_eq!(
        metric(&metrics, r#"podscore_model_reloads_total{result="failed"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(&metrics, r#"podscore_model_reloads_total{result="loaded"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("podscore_model_info{{name=\"{MODEL}\",version=\"4\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("podscore_model_info{{name=\"{MODEL}\",version=\"1\"}}")
        ),
        None
    );
}

/// A bundle with a missing graph is refused like one with wrong golden outputs.
#[tokio::test]
async fn unloadable_bundle_is_refused() {
    let server = TestServer::start(Setup::default());
    let dir = common::write_bundle(server.dir(), MODEL, 2, 5, Golden::Correct);
    std::fs::write(dir.join("model.onnx"), b"not a graph").unwrap();
    let report = server.reloader.reload(&server.service).unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(served_version(&server), Some(1));
}

/// With no loadable model, readiness and scoring answer 503 not_ready with Retry-After;
/// liveness still answers 200.
#[tokio::test]
async fn no_model_is_not_ready() {
    let server = TestServer::start(Setup {
        bundles: vec![(1, Golden::Wrong)],
        ..Setup::default()
    });
    let app = server.app();
    assert_eq!(send(&app, get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(
        send(&app, get("/v2/health/live")).await.status,
        StatusCode::OK
    );
    for path in ["/readyz", "/v2/health/ready"] {
        let reply = send(&app, get(path)).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(reply.header("retry-after"), Some("1"));
        let error = &reply.json()["error"];
        if path == "/readyz" {
            assert_eq!(error["code"], json!("not_ready"));
        } else {
            // The Open Inference Protocol's error body: the message alone.
            assert!(error.as_str().unwrap().contains("no model is loaded"));
        }
    }
    let reply = score(&app, &stored_request()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["code"], json!("not_ready"));
}

/// Health, model metadata and the OpenAPI document answer as documented.
#[tokio::test]
async fn health_models_and_openapi_answer() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    assert_eq!(
        send(&app, get("/healthz")).await.json(),
        json!({"status": "live"})
    );
    assert_eq!(
        send(&app, get("/readyz")).await.json(),
        json!({"status": "ready", "models": 1, "store": "snapshot"})
    );
    let listed = send(&app, get("/v1/models")).await.json();
    assert_eq!(listed["models"][0]["default"], json!(true));
    assert_eq!(
        listed["models"][0]["manifest"]["heads"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let metadata = send(&app, get(&format!("/v2/models/{MODEL}"))).await.json();
    assert_eq!(metadata["name"], json!(MODEL));
    assert_eq!(metadata["versions"], json!(["1"]));
    assert_eq!(
        metadata["outputs"][0],
        json!({"name": "logits", "datatype": "FP32", "shape": [-1, 5]})
    );
    let inputs: Vec<&str> = metadata["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| input["name"].as_str().unwrap())
        .collect();
    assert!(
        inputs.contains(&"request_ids") && inputs.contains(&"candidate_dense"),
        "{inputs:?}"
    );
    let openapi = send(&app, get("/openapi.json")).await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert!(openapi.json()["paths"]["/score"]["post"].is_object());
}

/// A real listener on port 0 serves requests with ids and timings, and the server stops
/// when its shutdown future resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_listener_serves_and_shuts_down() {
    let server = TestServer::start(Setup::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = server.app();
    let limits = podscore::serve::ServerLimits::default();
    let running = tokio::spawn(async move {
        podscore::serve::serve(listener, app, &limits, async {
            let _ = stopped.await;
        })
        .await
    });
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{address}/score"))
        .header("x-request-id", "listener-1")
        .json(&stored_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "listener-1");
    assert!(response.headers().contains_key("server-timing"));
    let body: ScoreResponse = response.json().await.unwrap();
    assert_eq!(body.candidates.len(), 2);
    let health = client
        .get(format!("http://{address}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the server stops after shutdown")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Arbitrary bodies.

static FUZZ: LazyLock<(TestServer, tokio::runtime::Runtime)> = LazyLock::new(|| {
    let server = TestServer::start(Setup {
        api: api::Config {
            max_body_bytes: 64 * 1024,
            ..api::Config::default()
        },
        ..Setup::default()
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (server, runtime)
});

const FIELD_NAMES: &[&str] = &[
    "request_id",
    "model",
    "user",
    "context",
    "candidates",
    "id",
    "kind",
    "show_id",
    "episode_id",
    "show",
    "episode",
    "creative",
    "country",
    "platform",
    "age_bucket",
    "history",
    "follows",
    "search_topics",
    "timestamp",
    "surface",
    "session_length_s",
    "host_genre",
    "genres",
    "topics",
    "embedding",
    "streams_30d",
    "tier",
    "duration_s",
    "creative_id",
    "campaign_id",
    "format",
    "slot",
    "layout",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|number| json!(number)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |number| number.is_finite())
            .prop_map(|number| json!(number)),
        prop::sample::select(
            &[
                "ad",
                "promotion",
                "show_1",
                "u1",
                "2026-11-28T10:15:00Z",
                ""
            ][..]
        )
        .prop_map(|text| json!(text)),
        ".{0,300}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        3 => prop::sample::select(FIELD_NAMES).prop_map(str::to_string),
                        1 => "[a-z_]{0,12}",
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Request-shaped bodies: known fields at the right places, arbitrary values in them.
fn request_shaped() -> impl Strategy<Value = Value> {
    let candidate = (
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        any::<bool>(),
    )
        .prop_map(|(show_id, show, creative, embedding, is_ad)| {
            json!({
                "id": "c",
                "kind": if is_ad { "ad" } else { "promotion" },
                "show_id": show_id,
                "show": {"embedding": embedding, "genres": show},
                "creative": creative,
            })
        });
    (json_value(), json_value(), prop::collection::vec(candidate, 0..6))
        .prop_map(|(user, context, candidates)| json!({"user": user, "context": context, "candidates": candidates}))
}

/// A valid request (stored features, or everything inline) with one hostile but
/// well-formed value anywhere in it: extreme numbers, long strings, huge lists, deep
/// nesting, long keys (`common::hostile`).
fn hostile_request() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop::sample::select(vec![stored_request(), common::golden_requests()[0].clone()]);
    (
        valid,
        common::hostile::path(),
        common::hostile::hostile_value(),
    )
        .prop_map(|(valid, path, raw)| common::hostile::splice(&valid, &path, &raw))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|value| value.to_string().into_bytes()),
        request_shaped().prop_map(|value| value.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..512),
        hostile_request(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// No body, however malformed or hostile, gets a 500 or stops the server; every
    /// refusal is the JSON error format.
    #[test]
    fn arbitrary_bodies_never_yield_500(body in body()) {
        let (server, runtime) = &*FUZZ;
        let reply = runtime.block_on(send(&server.app(), post_json("/score", body)));
        prop_assert_ne!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", reply.text());
        if reply.status != StatusCode::OK {
            let error: Value = serde_json::from_slice(&reply.body).expect("error bodies are JSON");
            prop_assert!(error["error"]["code"].is_string(), "{}", error);
            prop_assert!(error["error"]["message"].is_string(), "{}", error);
        }
    }
}
