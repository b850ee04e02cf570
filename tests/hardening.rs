//! Production hardening, each hole with the input that showed it: admission before
//! decoding with a bounded queue, deadlines that give slots back, bounded echoes, store-free
//! readiness and draining, connection limits and timeouts on a real listener (HTTP/1.1 and
//! HTTP/2), the bounded drain, and the `podscore serve` process's shutdown sequence, admin
//! listener and refused flags.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;

use common::{
    Golden, HangingStore, MODEL, Setup, TestServer, get, hold_slot, post_json, score, send,
    stored_request,
};
use podscore::api;
use podscore::serve::ServerLimits;
use podscore::service::{self, Reloader, Service};

fn one_slot(queue: usize) -> Setup {
    Setup {
        service: service::Config {
            max_inflight: 1,
            max_queue: queue,
            ..Setup::default().service
        },
        ..Setup::default()
    }
}

fn in_five_seconds() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A `/score` body of `count` minimal candidates.
fn candidates_body(count: usize) -> String {
    let candidate = r#"{"id":"c","kind":"ad"},"#;
    let mut body = String::with_capacity(count * candidate.len() + 32);
    body.push_str(r#"{"candidates":["#);
    for _ in 0..count {
        body.push_str(candidate);
    }
    body.pop();
    body.push_str("]}");
    body
}

// ---------------------------------------------------------------------------------------
// Admission.

/// Eight clients at once against one slot all get scores: requests wait in the queue while
/// their deadlines allow (before the queue, 4 clients on 2 slots saw 57% shed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_wait_in_the_queue_instead_of_being_shed() {
    let server = TestServer::start(one_slot(16));
    let app = server.app();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let app = app.clone();
        clients.spawn(async move { score(&app, &stored_request()).await.status });
    }
    let statuses = clients.join_all().await;
    assert_eq!(statuses, vec![StatusCode::OK; 8]);
}

/// A request whose deadline is shorter than the expected wait for a slot is answered 503
/// `queue_wait` with Retry-After at once, and counted as shed.
#[tokio::test]
async fn expected_wait_beyond_the_deadline_answers_503_at_once() {
    let server = TestServer::start(one_slot(16));
    let app = server.app();
    let _slot = hold_slot(&server.service).await;
    let request = Request::post("/score")
        .header("content-type", "application/json")
        .header("x-request-timeout-ms", "1")
        .body(Body::from(stored_request().to_string()))
        .unwrap();
    let started = Instant::now();
    let reply = send(&app, request).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.json()["error"]["code"], json!("queue_wait"));
    let metrics = send(&app, get("/metrics")).await.text();
    assert_eq!(
        common::metric(
            &metrics,
            r#"podscore_shed_requests_total{reason="queue_wait"}"#
        ),
        Some(1.0)
    );
}

/// Admission comes before the body is read or decoded: with the line full, a 2 MiB body
/// of a hundred thousand candidates is answered 503, not 422.
#[tokio::test]
async fn admission_comes_before_decoding() {
    let server = TestServer::start(one_slot(0));
    let app = server.app();
    let slot = hold_slot(&server.service).await;
    let body = candidates_body(90_000);
    assert!(body.len() < api::DEFAULT_MAX_BODY_BYTES);
    let reply = send(&app, post_json("/score", body.clone())).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["code"], json!("overloaded"));
    drop(slot);
    let reply = send(&app, post_json("/score", body)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.json()["error"],
        json!({"code": "too_many_candidates", "field": "candidates",
               "message": "more than 1000 candidates; at most 1000 per request"})
    );
}

/// Decoding stops at the candidate maximum: the count pass refuses a list one over the
/// maximum, and a list at the maximum decodes.
#[test]
fn decoding_stops_at_the_candidate_maximum() {
    let decode = |count| {
        api::extract::decode_score_request(candidates_body(count).as_bytes(), 10)
            .map(|request| request.candidates.len())
            .map_err(|error| error.describe().1)
    };
    assert_eq!(decode(10), Ok(10));
    assert_eq!(decode(11), Err("too_many_candidates"));
    assert_eq!(decode(100_000), Err("too_many_candidates"));
    let broken = api::extract::decode_score_request(br#"{"candidates": [1, 2"#, 10);
    assert_eq!(broken.unwrap_err().describe().1, "malformed_json");
}

fn hanging_store_service(max_inflight: usize) -> (Service, tempfile::TempDir) {
    let models = tempfile::TempDir::new().unwrap();
    common::write_bundle(models.path(), MODEL, 1, 8, Golden::Correct);
    let config = service::Config {
        store_timeout: Duration::from_secs(30),
        max_inflight,
        max_queue: 0,
        ..service::Config::default()
    };
    let service = Service::new(config, Arc::new(HangingStore { ready: false })).unwrap();
    Reloader::with_runtime(models.path(), None, common::runtime_config())
        .reload(&service)
        .unwrap();
    (service, models)
}

/// A request answered 504 gives its slot back at once: the next request is admitted.
#[tokio::test]
async fn a_request_answered_504_gives_its_slot_back() {
    let (service, _models) = hanging_store_service(1);
    let app = api::app(service.clone(), api::Config::default());
    let request = Request::post("/score")
        .header("content-type", "application/json")
        .header("x-request-timeout-ms", "50")
        .body(Body::from(stored_request().to_string()))
        .unwrap();
    let reply = send(&app, request).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(service.admission().in_line(), 0);
    assert!(service.admission().try_admit().is_some());
}

/// A request whose deadline has passed when its inference task starts costs no inference.
#[tokio::test]
async fn an_expired_request_costs_no_inference() {
    let server = TestServer::start(Setup::default());
    let model = Arc::clone(server.service.models().get(None).unwrap());
    let raw = serde_json::from_value(stored_request()).unwrap();
    let request = service::validate::validate(raw, &service::validate::Limits::default()).unwrap();
    let features = service::lookup::look_up(
        server.service.store(),
        request,
        Duration::from_secs(1),
        server.service.metrics(),
    )
    .await;
    let passed = Instant::now() - Duration::from_millis(1);
    assert!(matches!(
        service::infer::infer_before(&model, &features, Some(passed)),
        Err(service::infer::InferError::Expired)
    ));
    assert!(service::infer::infer_before(&model, &features, Some(in_five_seconds())).is_ok());
}

// ---------------------------------------------------------------------------------------
// Echoes.

/// A 10 KB `x-request-id` ending in a tab and non-ASCII bytes is echoed (and logged) sanitized and
/// capped; one with nothing usable is replaced by a generated id.
#[tokio::test]
async fn request_ids_are_capped_and_sanitized() {
    let server = TestServer::start(Setup::default());
    let app = server.app();
    let mut long = format!("id-{}", "x".repeat(10_000)).into_bytes();
    long.extend_from_slice(b"\t\x80\xff");
    let reply = send(
        &app,
        Request::get("/healthz")
            .header("x-request-id", long.as_slice())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let echoed = reply.header("x-request-id").unwrap();
    assert_eq!(echoed.len(), api::MAX_REQUEST_ID_BYTES);
    assert!(echoed.starts_with("id-xxx"));
    let reply = send(
        &app,
        Request::get("/healthz")
            .header("x-request-id", &b"\t \x80\xff"[..])
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.header("x-request-id").unwrap().len(), 36, "a UUID");
}

/// A megabyte-long unknown key is named in the error truncated: the error body stays
/// under a kilobyte (it was 2 MB).
#[tokio::test]
async fn long_unknown_keys_are_echoed_truncated() {
    let server = TestServer::start(Setup::default());
    let key = "k".repeat(1 << 20);
    let body = format!(r#"{{"candidates": [], "{key}": 1}}"#);
    let reply = send(&server.app(), post_json("/score", body)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body.len() < 1024, "{} bytes", reply.body.len());
    let error = &reply.json()["error"];
    assert_eq!(error["code"], json!("unknown_field"));
    assert!(error["field"].as_str().unwrap().starts_with("kkkk"));
    assert!(error["field"].as_str().unwrap().ends_with('…'));
}

// ---------------------------------------------------------------------------------------
// Readiness.

/// Readiness does not depend on the feature store, even one that reports itself unable
/// to serve (a store that is down means cold starts, not an unready fleet), and turns 503
/// when draining.
#[tokio::test]
async fn readiness_ignores_the_store_and_flips_when_draining() {
    let (service, _models) = hanging_store_service(2);
    let app = api::app(service.clone(), api::Config::default());
    let reply = send(&app, get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"status": "ready", "models": 1, "store": "hanging"})
    );
    service.start_draining();
    let reply = send(&app, get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["code"], json!("not_ready"));
    assert_eq!(send(&app, get("/healthz")).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// A real listener.

struct Listening {
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<std::io::Result<usize>>,
    _server: TestServer,
}

async fn listen(limits: ServerLimits, api_config: api::Config) -> Listening {
    let mut server = TestServer::start(Setup::default());
    server.api = api_config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = server.app();
    let running = tokio::spawn(async move {
        podscore::serve::serve(listener, app, &limits, async {
            let _ = stopped.await;
        })
        .await
    });
    Listening {
        address,
        stop,
        running,
        _server: server,
    }
}

/// Reads until the peer closes or `within` passes; `None` when it stayed open. Blocking:
/// the client side of these tests runs on blocking threads beside the server.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => break,
        }
    }
    Some(String::from_utf8_lossy(&received).into_owned())
}

/// Runs a blocking client script beside the server.
async fn client<T: Send + 'static>(script: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(script).await.unwrap()
}

const HEALTH_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n";

/// Half-sent headers (slow loris) and an idle kept-alive connection are closed after the
/// header timeout (before, a half-sent header was still open 45 s later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_idle_connections_are_closed() {
    let limits = ServerLimits {
        header_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let listening = listen(limits, api::Config::default()).await;
    let address = listening.address;
    client(move || {
        let mut loris = TcpStream::connect(address).unwrap();
        loris
            .write_all(b"POST /score HTTP/1.1\r\nhost: test\r\ncontent-")
            .unwrap();
        let started = Instant::now();
        assert!(
            read_until_closed(&mut loris, Duration::from_secs(5)).is_some(),
            "a half-sent header is closed"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));

        let mut idle = TcpStream::connect(address).unwrap();
        idle.write_all(HEALTH_REQUEST).unwrap();
        let answered = read_until_closed(&mut idle, Duration::from_secs(5))
            .expect("an idle kept-alive connection is closed");
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    })
    .await;
}

/// A body that trickles is answered 408 after the body timeout, or 504 when the request's
/// deadline comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bodies_are_cut_off() {
    let api_config = api::Config {
        body_timeout: Duration::from_millis(200),
        ..api::Config::default()
    };
    let listening = listen(ServerLimits::default(), api_config).await;
    let address = listening.address;
    client(move || {
        for (deadline_header, status) in [("", "408"), ("x-request-timeout-ms: 100\r\n", "504")] {
            let mut stream = TcpStream::connect(address).unwrap();
            let head = format!(
                "POST /score HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                 {deadline_header}content-length: 100\r\nconnection: close\r\n\r\n{{\"candid"
            );
            stream.write_all(head.as_bytes()).unwrap();
            let answer = read_until_closed(&mut stream, Duration::from_secs(5))
                .expect("the server answers and closes");
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{answer}"
            );
        }
    })
    .await;
}

/// HTTP/2 with prior knowledge (h2c) on the same listener: requests sent as concurrent
/// streams of one connection are scored as over HTTP/1.1, a body over the limit is still a
/// 413, and a connection that sends part of the preface and stalls is closed after the
/// header timeout like a half-sent HTTP/1 header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_within_the_same_limits() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let limits = ServerLimits {
        header_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    };
    let api_config = api::Config {
        max_body_bytes: 64 * 1024,
        ..api::Config::default()
    };
    let listening = listen(limits, api_config).await;
    let address = listening.address;
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("the server speaks HTTP/2 to a client with prior knowledge");
    tokio::spawn(connection);
    let post = |body: String| {
        let mut sender = sender.clone();
        async move {
            let request = hyper::Request::post(format!("http://{address}/score"))
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts.version, parts.status, body)
        }
    };
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..8 {
        streams.spawn(post(stored_request().to_string()));
    }
    for (version, status, body) in streams.join_all().await {
        assert_eq!(version, hyper::Version::HTTP_2);
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["candidates"].as_array().map(Vec::len), Some(2));
    }
    let (_, status, body) = post(format!("{{\"pad\": \"{}\"}}", "x".repeat(100 * 1024))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "body_too_large"
    );

    client(move || {
        let mut stalled = TcpStream::connect(address).unwrap();
        stalled.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
        let started = Instant::now();
        let answer = read_until_closed(&mut stalled, Duration::from_secs(5))
            .expect("a stalled preface is closed");
        assert_eq!(answer, "");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

/// Connections past the limit are closed at once; once one closes, new ones are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed() {
    let limits = ServerLimits {
        max_connections: 2,
        ..ServerLimits::default()
    };
    let listening = listen(limits, api::Config::default()).await;
    let address = listening.address;
    client(move || {
        let first = TcpStream::connect(address).unwrap();
        let _second = TcpStream::connect(address).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut third = TcpStream::connect(address).unwrap();
        let _ = third.write_all(HEALTH_REQUEST);
        let answer = read_until_closed(&mut third, Duration::from_secs(2))
            .expect("the third connection is closed at once");
        assert_eq!(answer, "", "closed without an answer");
        drop(first);
        std::thread::sleep(Duration::from_millis(100));
        let mut fourth = TcpStream::connect(address).unwrap();
        fourth
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .unwrap();
        let answer = read_until_closed(&mut fourth, Duration::from_secs(5)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await;
}

/// On shutdown a request in flight finishes, and a connection that never completes its
/// request (slow loris) holds the drain no longer than the drain bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_within_the_drain_bound() {
    let limits = ServerLimits {
        header_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_millis(800),
        ..ServerLimits::default()
    };
    let listening = listen(limits, api::Config::default()).await;
    let address = listening.address;
    let body = stored_request().to_string();
    let (mut in_flight, loris, rest) = client(move || {
        let (first, rest) = body.split_at(body.len() / 2);
        let mut in_flight = TcpStream::connect(address).unwrap();
        let head = format!(
            "POST /score HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{first}",
            body.len()
        );
        in_flight.write_all(head.as_bytes()).unwrap();
        let mut loris = TcpStream::connect(address).unwrap();
        loris
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: te")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        (in_flight, loris, rest.to_string())
    })
    .await;
    let started = Instant::now();
    listening.stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client(move || {
        assert!(
            TcpStream::connect(address).is_err(),
            "the listener is closed"
        );
        in_flight.write_all(rest.as_bytes()).unwrap();
        let answer = read_until_closed(&mut in_flight, Duration::from_secs(5))
            .expect("the in-flight request is answered and its connection closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await;
    let dropped = tokio::time::timeout(Duration::from_secs(5), listening.running)
        .await
        .expect("the drain is bounded")
        .unwrap()
        .unwrap();
    assert_eq!(dropped, 1, "the slow loris was dropped");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(loris);
}

// ---------------------------------------------------------------------------------------
// The process.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `podscore serve` on the shipped bundle and demo features, on a free loopback port (and
/// a free admin port unless `extra` names one).
fn spawn_serve(port: u16, extra: &[&str]) -> Child {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let admin: &[&str] = if extra.contains(&"--admin-listen") {
        &[]
    } else {
        &["--admin-listen", "127.0.0.1:0"]
    };
    Command::new(env!("CARGO_BIN_EXE_podscore"))
        .current_dir(root)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--reload-interval-s", "0"])
        .args(admin)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podscore starts")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn status_of(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|response| response.status().as_u16())
}

async fn wait_ready(client: &reqwest::Client, base: &str, child: &mut Child) {
    let started = Instant::now();
    while status_of(client, &format!("{base}/readyz")).await != Some(200) {
        assert!(child.try_wait().unwrap().is_none(), "podscore exited early");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "podscore did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            panic!("podscore did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM: `/readyz` turns 503 at once while the listener keeps accepting and scoring
/// for the pre-stop delay; then the process exits 0. A second signal exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_readiness_keeps_serving_then_exits_and_a_second_signal_exits_at_once() {
    let client = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_serve(
        port,
        &["--pre-stop-delay-ms", "1500", "--drain-timeout-ms", "2000"],
    );
    wait_ready(&client, &base, &mut child).await;
    let signalled = Instant::now();
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status_of(&client, &format!("{base}/readyz")).await,
        Some(503)
    );
    let scored = client
        .post(format!("{base}/score"))
        .json(&common_readme_request())
        .send()
        .await
        .expect("still accepting during the pre-stop delay");
    assert_eq!(scored.status().as_u16(), 200);
    assert!(signalled.elapsed() < Duration::from_millis(1500));
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "pre-stop delay kept"
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_serve(port, &["--pre-stop-delay-ms", "30000"]);
    wait_ready(&client, &base, &mut child).await;
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(143));
    assert!(signalled.elapsed() < Duration::from_secs(2));
}

/// The admin listener: an address reachable from the network without a token is refused
/// at start with a one-line cause; on loopback with a token, `POST /admin/reload` answers
/// there (401 without the token, 200 with it), and the public listener has no admin route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_loopback_only_unless_a_token_guards_it() {
    let exposed = Command::new(env!("CARGO_BIN_EXE_podscore"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert!(!exposed.status.success());
    let stderr = String::from_utf8_lossy(&exposed.stderr);
    assert!(stderr.contains("reachable from the network"), "{stderr}");

    let secrets = tempfile::TempDir::new().unwrap();
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, "tok-5f2a9c\n").unwrap();
    let client = reqwest::Client::new();
    let (port, admin_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let mut child = spawn_serve(
        port,
        &[
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    wait_ready(&client, &base, &mut child).await;
    let reload = |url: String, token: Option<&'static str>| {
        let mut request = client.post(url).timeout(Duration::from_secs(30));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let public = reload(format!("{base}/admin/reload"), Some("tok-5f2a9c"))
        .await
        .unwrap();
    assert_eq!(public.status().as_u16(), 404);
    let anonymous = reload(format!("{admin}/admin/reload"), None).await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let wrong = reload(format!("{admin}/admin/reload"), Some("tok-5f2a9d"))
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let accepted = reload(format!("{admin}/admin/reload"), Some("tok-5f2a9c"))
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 200);
    let body: Value = accepted.json().await.unwrap();
    assert_eq!(body["served"][0]["model"], "podcast-mtl", "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

fn common_readme_request() -> Value {
    json!({"request_id": "r-1", "user": {"id": "u42"},
        "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "home", "session_length_s": 420},
        "candidates": [
            {"id": "c1", "kind": "ad", "show_id": "s17", "episode_id": "e9",
             "creative": {"creative_id": "cr3", "campaign_id": "cp1", "format": "audio", "slot": "midroll"}}]})
}

/// `--max-inflight 0`, which shed every request while `/readyz` answered 200, is refused
/// at start with a one-line cause.
#[test]
fn serve_refuses_zero_inference_slots() {
    let output = Command::new(env!("CARGO_BIN_EXE_podscore"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["serve", "--listen", "127.0.0.1:0", "--max-inflight", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("max inflight must be at least 1"),
        "{stderr}"
    );
}
