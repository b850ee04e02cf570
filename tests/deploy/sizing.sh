#!/usr/bin/env bash
# Measures what the Kubernetes resources in deploy/k8s/base are sized from: CPU time per
# request and resident memory of `podscore serve` (shipped bundle, demo features) under
# a closed loop of wrk on loopback, for the README's 2-candidate request and for a
# 100-candidate one. CPU time is read from /proc (user + system), so the figure holds
# on a machine that other work shares. Not part of tests/run.sh; needs wrk (Debian).
#   bash tests/deploy/sizing.sh [PODSCORE_BINARY] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:-target/release/podscore}
seconds=${2:-20}
port=18471
work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

python3 - "$work" <<'PY'
import json, pathlib, re, sys
work = pathlib.Path(sys.argv[1])
readme = pathlib.Path("README.md").read_text()
example = readme[readme.index("curl -s localhost:8080/score"):].split("-d '", 1)[1].split("'", 1)[0]
request = json.loads(example)
(work / "2.json").write_text(json.dumps(request))
ad, promotion = request["candidates"]
candidates = []
for index in range(100):
    candidate = dict(ad if index % 2 == 0 else promotion, id=f"c{index}", show_id=f"s{index + 1}")
    candidate.pop("episode_id", None)
    candidates.append(candidate)
(work / "100.json").write_text(json.dumps(dict(request, candidates=candidates)))
PY

RUST_LOG=warn "$binary" serve --listen "127.0.0.1:$port" --reload-interval-s 0 --admin-listen 127.0.0.1:0 >/dev/null &
server=$!
until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do sleep 0.05; done
clock_ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server/stat"; }
rss_mb() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$server/status"; }
echo "idle after start: RSS $(rss_mb) MB"
for size in 2 100; do
  cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = io.open("$work/$size.json"):read("a")
LUA
  curl -sf "127.0.0.1:$port/score" -H 'content-type: application/json' -d @"$work/$size.json" >/dev/null
  before=$(cpu_ticks)
  out=$(wrk -t1 -c2 -d"${seconds}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port/score")
  after=$(cpu_ticks)
  requests=$(echo "$out" | awk '/requests in/ { print $1 }')
  non2xx=$(echo "$out" | awk '/Non-2xx/ { print $NF }')
  p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
  p99=$(echo "$out" | awk '$1 == "99%" { print $2 }')
  awk -v size="$size" -v r="$requests" -v t=$((after - before)) -v hz="$clock_ticks" -v s="$seconds" \
      -v p50="$p50" -v p99="$p99" -v bad="${non2xx:-0}" -v rss="$(rss_mb)" 'BEGIN {
    ms = 1000 * t / hz / r
    printf "%3d candidates: %d requests in %d s (%.0f/s, %s non-2xx), p50 %s, p99 %s; server CPU %.3f ms per request = %.0f requests/s per core; RSS %s MB\n",
      size, r, s, r / s, bad, p50, p99, ms, 1000 / ms, rss }'
done
