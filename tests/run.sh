#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh Debian machine, then runs
# formatting, lints and every test. The README and .ci/run call exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Builds are slow on 2 cores: keep the target directory outside the checkout so that
# repeated runs and fresh clones on the same machine reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/podscore-target}"

# promtool checks the /metrics exposition (Debian package prometheus).
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# ONNX Runtime and the ONNX checker, for the cross-runtime parity test.
if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/tests/requirements.txt"
export PODSCORE_PYTHON="$root/.venv/bin/python"
# Tests train in process: one candle compute thread (see rerun_with_one_candle_thread in
# src/main.rs for why).
export CANDLE_NUM_THREADS=1

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --check
cargo clippy --release --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
