//! Real processes for the Redis tests: `redis-server` on free loopback ports (one node, or
//! three forming a Redis Cluster), `podscore serve` on a free port, and the test
//! virtualenv's Feast. Each is killed when its handle drops. A missing `redis-server` or
//! Feast fails the test with the command that installs it. The store bench
//! (`tests/benches/store.rs`) starts its servers with these helpers too.

#![allow(
    dead_code,
    reason = "the tests and the store bench use different parts"
)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take to answer after it starts: redis-server starts in
/// milliseconds and podscore loads the shipped bundle in about a second, but the machine
/// is shared and may be busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

fn installed(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed: the Redis tests need a real server. Run `bash tests/run.sh`, \
             which installs it, or: apt-get install -y --no-install-recommends redis-server redis-tools"
        )
    })
}

/// One `redis-server` on 127.0.0.1, data in its own folder.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// A standalone server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with extra `redis-server` arguments (`--cluster-enabled yes`, ...).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: TempDir::new().expect("a temporary folder"),
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(installed("redis-server"))
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            // Snapshots only when a test asks (`SAVE`), so that a restart reloads them.
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .args(["--logfile", "redis.log"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let started = Instant::now();
        while self.try_cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "redis-server on port {} did not answer; its log: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL): nothing is saved, connections just drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and folder; it reloads the last `SAVE`.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new(installed("redis-cli"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `redis-cli` against this server; panics when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed on port {}", self.port))
    }

    /// `podscore features load` of the snapshot in `snapshot` into this server.
    pub fn load(&self, snapshot: &Path) -> Output {
        load_features(&self.url(), false, snapshot)
    }

    /// Every key and its hash, for byte comparisons.
    pub async fn hashes(&self) -> Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)> {
        let client = redis::Client::open(self.url()).expect("a URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut connection)
            .await
            .expect("KEYS");
        keys.sort();
        let mut all = Vec::new();
        for key in keys {
            let mut fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .expect("HGETALL");
            fields.sort();
            all.push((key, fields));
        }
        all
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster on loopback, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The cluster bus port is set explicitly: the default (port + 10000) may
                // be taken, or past 65535.
                let bus_port = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus_port,
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let output = Command::new(installed("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let started = Instant::now();
        while !nodes
            .iter()
            .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// Every node's URL, comma-separated, as `--redis` takes seeds.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `podscore features load --cluster` of the snapshot in `snapshot`.
    pub fn load(&self, snapshot: &Path) -> Output {
        load_features(&self.seeds(), true, snapshot)
    }

    /// Keys held across all nodes.
    pub fn key_count(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| node.cli(&["DBSIZE"]).parse::<u64>().expect("a count"))
            .sum()
    }
}

/// The podscore binary.
pub fn podscore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_podscore"))
}

/// Runs a podscore command and returns its output; panics with its stderr on failure.
pub fn run_podscore(args: &[&str]) -> Output {
    let output = podscore().args(args).output().expect("podscore runs");
    assert!(
        output.status.success(),
        "podscore {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `podscore features load`, into a cluster's seeds or one server's URL.
pub fn load_features(urls: &str, cluster: bool, snapshot: &Path) -> Output {
    let snapshot = snapshot.display().to_string();
    let mut args = vec!["features", "load", "--redis", urls, "--from", &snapshot];
    if cluster {
        args.push("--cluster");
    }
    run_podscore(&args)
}

/// `podscore serve` on a free loopback port, killed on drop.
pub struct Podscore {
    child: Child,
    pub address: String,
}

impl Podscore {
    /// Serves `models` with the given feature-store flags; returns once `/readyz` answers.
    pub fn serve(models: &Path, store_flags: &[&str]) -> Podscore {
        let mut child = podscore()
            .arg("serve")
            .arg("--models")
            .arg(models)
            .args(["--listen", "127.0.0.1:0", "--reload-interval-s", "0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(store_flags)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("podscore serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        // The log is JSON lines; the `serving` line carries the bound address. The
        // thread keeps draining the pipe so that the server never blocks on logging.
        std::thread::spawn(move || {
            let mut sender = Some(sender);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = serving_address(&line)
                    && let Some(sender) = sender.take()
                {
                    let _ = sender.send(address);
                }
            }
        });
        let address = receiver
            .recv_timeout(START_TIMEOUT)
            .expect("podscore serve logs its address");
        Podscore { child, address }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

fn serving_address(line: &str) -> Option<String> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    if entry["fields"]["message"] != "serving" {
        return None;
    }
    entry["fields"]["address"].as_str().map(str::to_string)
}

impl Drop for Podscore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test virtualenv's Python and its `feast` command: `PODSCORE_PYTHON` (set by
/// `tests/run.sh`), else `.venv/bin/python`.
pub fn feast_python() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("PODSCORE_PYTHON")
        .map_or_else(|| root.join(".venv/bin/python"), PathBuf::from);
    let feast = python.with_file_name("feast");
    assert!(
        python.exists() && feast.exists(),
        "the Feast tests need the Feast SDK beside {} (or set PODSCORE_PYTHON). Run \
         `bash tests/run.sh`, which installs it, or: .venv/bin/pip install -r tests/requirements.txt",
        python.display()
    );
    (python, feast)
}
