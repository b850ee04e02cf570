#!/usr/bin/env bash
# Instructions per `/score` request in process (callgrind on the `request_path` bench: the
# router, decode, validation, look-up, assembly, inference on one thread, encoding), for
# the request-path work of the performance issue. Not part of the test command.
#
# Instruction counts do not depend on what else runs on the machine, unlike timings, so
# they compare levers on a shared machine; valgrind hides AVX-512, so tract runs its AVX2
# kernels here and inference's share is not the native one. Each N runs twice, with few
# and with more calls, and the difference per call is reported, so that start-up (bundle
# load, plan compilation, golden checks) cancels out. `Runtime::infer`'s inclusive count
# is split off the same way: what is left is the request path around inference.
#
#   bash tests/benches/request_path.sh [N ...]        # default: 100
#   REQUEST_PATH_BENCH=/path/to/a/copy bash tests/benches/request_path.sh   # an earlier build (A/B)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/podscore-target}"
if [ $# -gt 0 ]; then counts=("$@"); else counts=(100); fi
# Calls per run (few, more) per N: callgrind runs about 50x slower than native.
declare -A few=([1]=5 [10]=5 [100]=3 [1000]=1)
declare -A more=([1]=45 [10]=35 [100]=13 [1000]=4)

if ! command -v valgrind >/dev/null; then
  echo "installing valgrind (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
bench=${REQUEST_PATH_BENCH:-$(cargo test --release --locked --no-run --bench request_path --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "request_path" and message.get("executable"):
        print(message["executable"])')}
work=$(mktemp -d /tmp/podscore-request-path-XXXXXX)
trap 'rm -rf "$work"' EXIT

# Total instructions of a callgrind file, and Runtime::infer's inclusive count in it. awk
# reads to the end: stopping early would kill callgrind_annotate with SIGPIPE, which
# pipefail turns into the script's exit.
total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
inference() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk '/podscore::runtime::Runtime::infer/ && $1 ~ /^[0-9,]+$/ && !found {gsub(",", "", $1); print $1; found = 1}'
}

echo '| N | instructions per request | in `Runtime::infer` | the rest of the request |'
echo '|---|---|---|---|'
for n in "${counts[@]}"; do
  a=${few[$n]:-2}
  b=${more[$n]:-6}
  for k in "$a" "$b"; do
    valgrind --tool=callgrind --callgrind-out-file="$work/$n.$k" \
      "$bench" --candidates "$n" --calls "$k" >/dev/null 2>"$work/$n.$k.log" ||
      { cat "$work/$n.$k.log" >&2; exit 1; }
  done
  per_call=$((($(total "$work/$n.$b") - $(total "$work/$n.$a")) / (b - a)))
  infer=$((($(inference "$work/$n.$b") - $(inference "$work/$n.$a")) / (b - a)))
  printf '| %d | %d | %d | %d |\n' "$n" "$per_call" "$infer" "$((per_call - infer))"
done
