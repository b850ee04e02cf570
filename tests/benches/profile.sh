#!/usr/bin/env bash
# Where podscore's time goes (not part of the test command; the README's performance
# section quotes it):
#
# 1. inference, instruction counts: callgrind on `Runtime::infer` with the shipped bundle
#    at each N (one thread, the bucket plan the server uses for that N), per call and per
#    function. Counts are stable on a busy machine, unlike timings; but valgrind hides
#    AVX-512 from the programs it runs, so tract runs its AVX2 kernels here;
# 2. inference, native: `perf record` (cpu-clock sampling) of the same calls with the
#    kernels the CPU really runs, shares per function;
# 3. the server: `perf record` of `podscore serve` while wrk sends 100-candidate requests
#    on 2 connections, shares per function and per kind of work.
#
# ONNX Runtime's Python wheel is stripped, so neither tool can name its functions; the
# comparison with it is tests/bench.sh's.
#
#   bash tests/benches/profile.sh [N ...]        # default: 100 1000
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/podscore-target}"
if [ $# -gt 0 ]; then counts=("$@"); else counts=(100 1000); fi
bundle=models/podcast-mtl/1
# Calls per count under callgrind (about 50x slower than native): enough to average over.
declare -A calls=([1]=200 [10]=100 [100]=20 [1000]=4)
# Functions listed per profile.
top=15
# perf's sampling rate (Hz) and the server profile's port.
frequency=1999
port=18480

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v perf >/dev/null || missing+=(linux-perf)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x "$root/.venv/bin/python" ] || python3 -m venv "$root/.venv"
"$root/.venv/bin/python" -m pip install -q --disable-pip-version-check \
  -r "$root/tests/requirements.txt" -r "$root/tests/benches/requirements.txt"

# shellcheck source=tests/benches/build_compare.sh
source "$root/tests/benches/build_compare.sh"
compare=$(build_compare "$root/.venv/bin/python")
work=$(mktemp -d /tmp/podscore-profile-XXXXXX)
trap 'rm -rf "$work"' EXIT
"$compare" --bundle "$bundle" --write-inputs "$work/inputs.json" --candidates "$(IFS=,; echo "${counts[*]}")"

# The server's bucket for N: the smallest of the runtime's buckets that holds N.
bucket_for() {
  "$compare" --bundle "$bundle" --inputs "$work/inputs.json" --candidates "$1" --threads 1 </dev/null |
    "$root/.venv/bin/python" -c 'import json, sys
hello = json.loads(sys.stdin.readline())
print(min(b for b in hello["buckets"] if b >= int(sys.argv[1])))' "$1"
}

callgrind_table() { # FILE CALLS
  local total
  total=$(callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$((total / $2)) instructions per call ($2 calls)"
  echo
  echo '| instructions per call | share | function (self) |'
  echo '|---|---|---|'
  callgrind_annotate --inclusive=no --threshold=100 "$1" 2>/dev/null |
    awk -v calls="$2" -v total="$total" -v top="$top" '
      /^-+$/ { section++ ; next }
      section >= 3 && $1 ~ /^[0-9,]+$/ && !/PROGRAM TOTALS/ && shown < top {
        count = $1; gsub(",", "", count)
        name = $0; sub(/^ *[0-9,]+ +\([ 0-9.]+%\) +/, "", name); sub(/^ *[0-9,]+ +/, "", name)
        sub(/^\?\?\?:/, "", name); sub(/^\.\/[^:]*:/, "", name); sub(/ \[[^]]*\]$/, "", name)
        if (length(name) > 100) name = substr(name, 1, 97) "..."
        printf "| %d | %.1f%% | `%s` |\n", count / calls, 100 * count / total, name
        shown++
      }'
  echo
}

perf_table() { # DATA
  echo '| share of samples | function (self) |'
  echo '|---|---|'
  perf report -i "$1" --no-children --sort symbol --stdio -g none 2>/dev/null |
    awk -v top="$top" '$1 ~ /%$/ && shown < top {
      share = $1; $1 = ""; $2 = ""; name = substr($0, 3); sub(/[ -]+$/, "", name)
      if (length(name) > 100) name = substr(name, 1, 97) "..."
      printf "| %s | `%s` |\n", share, name; shown++ }'
  echo
}

for n in "${counts[@]}"; do
  k=${calls[$n]:-10}
  bucket=$(bucket_for "$n")
  echo "### Inference at N=$n (bucket plan of $bucket rows, one thread)"
  echo
  printf 'callgrind: '
  printf '{"candidates": %d, "calls": %d}\n' "$n" "$k" |
    valgrind --tool=callgrind --callgrind-out-file="$work/tract.$n" --collect-atstart=no \
      --toggle-collect='podscore::runtime::Runtime::infer*' \
      "$compare" --bundle "$bundle" --inputs "$work/inputs.json" --candidates "$n" --threads 1 \
      --buckets "$bucket" >/dev/null 2>"$work/tract.$n.log"
  callgrind_table "$work/tract.$n" "$k"
  # Native: enough calls for about 3 s of samples.
  native=$((3000000 / (40 + 10 * n)))
  echo "perf, native ($native calls, samples of the whole process, load included):"
  echo
  printf '{"candidates": %d, "calls": %d}\n' "$n" "$native" |
    perf record -q -F "$frequency" -e cpu-clock -o "$work/native.$n" -- \
      "$compare" --bundle "$bundle" --inputs "$work/inputs.json" --candidates "$n" --threads 1 \
      --buckets "$bucket" >/dev/null 2>&1
  perf_table "$work/native.$n"
done

echo "### The server under load: POST /score with 100 candidates, wrk on 2 connections"
echo
"$root/.venv/bin/python" -B -c 'import json, sys
sys.path.insert(0, "tests/benches")
import benchmark
json.dump(benchmark.request_body("models/demo-features", sys.argv[1]), open(sys.argv[2], "w"))' "$bundle" "$work/body.json"
RUST_LOG=warn "$CARGO_TARGET_DIR/release/podscore" serve --models models --features models/demo-features \
  --listen "127.0.0.1:$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done
BENCH_BODY="$work/body.json" BENCH_THREADS=2 wrk -t2 -c2 -d14s -s tests/benches/score.lua \
  "http://127.0.0.1:$port/score" >"$work/wrk.txt" &
load=$!
sleep 3
perf record -q -F "$frequency" -e cpu-clock -p "$server" -o "$work/server" -- sleep 8 >/dev/null 2>&1
wait "$load"
kill "$server"
wait "$server" || true
tail -1 "$work/wrk.txt"
echo
perf report -i "$work/server" --no-children --sort dso,symbol --stdio -g none 2>/dev/null >"$work/server.txt"
"$root/.venv/bin/python" - "$work/server.txt" <<'EOF'
"""Shares of the server's samples by kind of work, from perf's per-function report."""
import collections
import re
import sys

KINDS = [
    ("tract: matrix kernels", r"mmm_f32|run_blocked|OutputStore|mmm::"),
    ("tract: packing, copies, other operators", r"tract_|ndarray|smallvec"),
    ("allocator (mimalloc)", r"\bmi_|_mi_|mimalloc"),
    ("JSON decode and encode", r"serde|zmij|ryu|itoa|from_utf8|skip_to_escape|parse_str"),
    ("feature look-up and assembly", r"podscore::(features|store|entities|service::lookup)"),
    ("hashing (SipHash maps)", r"sip::|hashbrown|hash_one|BuildHasher"),
    ("exp, log1p (numeric shaping, calibration)", r"\bexp|log1p|__ieee754|libm"),
    ("metrics (prometheus)", r"prometheus"),
    ("HTTP and tokio", r"hyper|tokio|axum|tower|http"),
    ("kernel (syscalls, scheduling, page faults)", r"\[k\]"),
    ("memcpy, memset, memcmp", r"mem(move|cpy|set|cmp)"),
    ("string formatting", r"fmt|format"),
]
shares = collections.Counter()
for line in open(sys.argv[1]):
    match = re.match(r"\s+([0-9.]+)%\s+(\S+)\s+(.*)", line)
    if not match:
        continue
    share, text = float(match.group(1)), match.group(2) + " " + match.group(3)
    kind = next((name for name, pattern in KINDS if re.search(pattern, text)), "other")
    shares[kind] += share
print("| kind of work | share of the server's samples |")
print("|---|---|")
for kind, share in shares.most_common():
    print(f"| {kind} | {share:.1f}% |")
print()
EOF
perf_table "$work/server"
