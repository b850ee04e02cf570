//! `podscore serve` as a process of the binary the tests built, on 127.0.0.1 (a free
//! port), for tests that want the real command and its real socket. Standalone (no other
//! test helper), so that test binaries include it with `#[path]` without the rest.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Loading a bundle takes about a second; a minute covers a loaded machine.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running `podscore serve`; killed when dropped.
pub struct HostServer {
    child: Child,
    /// `127.0.0.1:PORT`, from the server's `serving` log line.
    pub address: String,
}

impl HostServer {
    /// `podscore serve ARGS --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
    /// --reload-interval-s 0` in `dir`, once it has logged the address it serves on (the
    /// admin port is free too, so that servers run side by side).
    pub fn start(dir: &Path, args: &[&str]) -> HostServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_podscore"))
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--reload-interval-s", "0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("podscore serve starts");
        // The log line `serving` names the port; the rest of the log is read and dropped
        // so that the pipe never fills.
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "serving"
                    && let Some(address) = entry["fields"]["address"].as_str()
                {
                    let _ = sender.send(address.to_string());
                }
            }
        });
        let address = receiver.recv_timeout(READY_WITHIN).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "podscore serve logged no `serving` line with its address within {READY_WITHIN:?}"
            )
        });
        HostServer { child, address }
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
