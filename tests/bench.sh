#!/usr/bin/env bash
# The performance benchmark (not part of the test command): podscore's inference against
# ONNX Runtime, and `POST /score` against a Python reference service, interleaved on this
# machine; see tests/benches/benchmark.py. Arguments go to benchmark.py (--help lists
# them). Exits non-zero when the N=100 inference ratio exceeds 1.5. Run it on an idle
# machine: it takes about 6 minutes and uses both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/podscore-target}"

if ! command -v wrk >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1; then
  echo "installing wrk and gcc (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends wrk gcc libc6-dev >/dev/null
fi
if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install -q --disable-pip-version-check \
  -r "$root/tests/requirements.txt" -r "$root/tests/benches/requirements.txt"

# shellcheck source=tests/benches/build_compare.sh
source "$root/tests/benches/build_compare.sh"
compare=$(build_compare "$root/.venv/bin/python")
exec "$root/.venv/bin/python" "$root/tests/benches/benchmark.py" \
  --podscore "$CARGO_TARGET_DIR/release/podscore" --compare "$compare" "$@"
