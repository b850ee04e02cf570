#!/usr/bin/env bash
# Load and fault script (not part of the test command): runs `podscore serve` on loopback
# with the shipped bundle and demo features, drives it with wrk (Debian's `wrk`), and
# prints the figures the README reports. Every phase is bounded in time; the whole run
# takes about 9 minutes plus the soak (SOAK_S, default 300 s). Needs an idle machine for
# figures worth quoting.
#
#   bash tests/load.sh [phase...]     phases: capacity overload reload sigterm soak idle
#                                     (default: all, in that order)
#
# Environment: CARGO_TARGET_DIR (the build holding release/podscore), PORT (default
# 18080), DURATION_S per wrk run (default 10), SOAK_S (default 300), CAPACITY_C (the
# capacity in connections when the capacity phase does not run; default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
binary="${CARGO_TARGET_DIR:-$root/target}/release/podscore"
[ -x "$binary" ] || { echo "error: no $binary; run cargo test --release --no-run first" >&2; exit 1; }
command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
# 2,000 idle connections need descriptors on both sides.
ulimit -n 8192 2>/dev/null || true
port="${PORT:-18080}"
duration="${DURATION_S:-10}"
soak="${SOAK_S:-300}"
base="http://127.0.0.1:$port"
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A 100-candidate request over ids of the demo snapshot (s1..s100, e1..e100, user u42).
python3 - "$work/body.json" <<'PY'
import json, sys
candidates = []
for i in range(1, 101):
    kind = "ad" if i % 2 else "promotion"
    creative = ({"creative_id": f"cr{i}", "campaign_id": f"cp{i % 7}", "format": "audio", "slot": "midroll"}
                if kind == "ad" else {"campaign_id": f"p{i % 5}", "slot": "home_shelf", "layout": "card"})
    candidates.append({"id": f"c{i}", "kind": kind, "show_id": f"s{i}", "episode_id": f"e{i}", "creative": creative})
body = {"user": {"id": "u42"},
        "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "home", "session_length_s": 420},
        "candidates": candidates}
open(sys.argv[1], "w").write(json.dumps(body))
PY
cat >"$work/score.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local f = io.open("$work/body.json"); wrk.body = f:read("*a"); f:close()
statuses = {}
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
LUA
# Per-thread status counts are summed in done() through the threads' tables.
cat >>"$work/score.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, count in pairs(counts) do total[status] = (total[status] or 0) + count end
  end
  local parts = {}
  for status, count in pairs(total) do table.insert(parts, status .. "=" .. count) end
  table.sort(parts)
  io.write(string.format("statuses %s\n", table.concat(parts, " ")))
  io.write(string.format("rps %.0f p50_ms %.2f p99_ms %.2f max_ms %.2f\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
LUA

start_server() {
  local models="$1"; shift
  "$binary" serve --listen "127.0.0.1:$port" --models "$models" --reload-interval-s 0 --admin-listen 127.0.0.1:0 "$@" \
    >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    if curl -fsS "$base/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "error: the server did not become ready" >&2; cat "$work/server.log" >&2; exit 1
}
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$server_pid/status"; }
load() { # connections seconds [wrk options...]
  local connections=$1 seconds=$2; shift 2
  timeout $(( seconds + 30 )) wrk -t "$(( connections < 2 ? connections : 2 ))" -c "$connections" -d "${seconds}s" --latency "$@" -s "$work/score.lua" "$base/score" \
    | grep -E "^(statuses|rps|  Socket errors)" | tr '\n' ' '
  echo
}
field() { sed -n "s/.*$1 \([^ ]*\).*/\1/p"; }

phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(capacity overload reload sigterm soak idle)
models="$work/models"
cp -a models/podcast-mtl "$work/" && mkdir -p "$models" && mv "$work/podcast-mtl" "$models/"
unloaded_p99=""
# The capacity phase measures it; the other phases alone take CAPACITY_C (default 1).
capacity_c="${CAPACITY_C:-1}"
for phase in "${phases[@]}"; do
  case "$phase" in
  capacity)
    start_server "$models"
    unloaded=$(load 1 "$duration"); unloaded_p99=$(echo "$unloaded" | field p99_ms)
    echo "unloaded (1 connection): $unloaded"
    for c in 2 4 8 16; do
      line=$(load "$c" "$duration"); echo "$c connections: $line"
      p99=$(echo "$line" | field p99_ms)
      if [ -n "$p99" ] && awk -v p="$p99" 'BEGIN {exit !(p < 10)}' && ! echo "$line" | grep -q "503="; then capacity_c=$c; fi
    done
    echo "capacity: $capacity_c connections (the most with p99 under 10 ms and nothing shed)"
    stop_server ;;
  overload)
    start_server "$models"
    [ -n "$unloaded_p99" ] || unloaded_p99=$(load 1 "$duration" | field p99_ms)
    c=$(( capacity_c * 2 ))
    echo "2x capacity ($c connections, closed loop): $(load "$c" "$duration") (unloaded p99 $unloaded_p99 ms)"
    # Closed-loop clients only queue; clients with a budget (as ad servers have) let
    # admission shed what cannot be answered in time: 8x the connections, each request
    # with a deadline of 3x the unloaded p99.
    budget=$(awk -v p="$unloaded_p99" 'BEGIN {printf "%d", p * 3 + 0.5}')
    c=$(( capacity_c * 8 ))
    echo "8x capacity ($c connections, x-request-timeout-ms: $budget): $(load "$c" "$duration" -H "x-request-timeout-ms: $budget")"
    stop_server ;;
  reload)
    start_server "$models"
    c=$(( capacity_c > 1 ? capacity_c / 2 : 1 ))
    steady=$(load "$c" "$duration"); echo "steady ($c connections): $steady"
    ( sleep $(( duration / 3 )); cp -a "$models/podcast-mtl/1" "$work/2"
      sed -i 's/"version": 1,/"version": 2,/' "$work/2/manifest.json"
      mv "$work/2" "$models/podcast-mtl/2"; kill -HUP "$server_pid" ) &
    reloading=$!
    echo "reload under load ($c connections, SIGHUP at $(( duration / 3 )) s): $(load "$c" "$duration")"
    wait "$reloading"
    grep -q '"version":2' <(curl -fsS -H 'content-type: application/json' -d @"$work/body.json" "$base/score") \
      && echo "reload: version 2 serves" || echo "reload: version 2 NOT served"
    rm -rf "$models/podcast-mtl/2"
    stop_server ;;
  sigterm)
    start_server "$models" --pre-stop-delay-ms 2000 --drain-timeout-ms 5000
    ( sleep 3; kill -TERM "$server_pid"; date +%s.%N >"$work/term" ) &
    line=$(load "$capacity_c" 6)
    wait "$server_pid"; status=$?; ended=$(date +%s.%N)
    echo "SIGTERM under load ($capacity_c connections): $line exit $status, $(awk -v a="$(cat "$work/term")" -v b="$ended" 'BEGIN {printf "%.2f", b - a}') s from signal to exit (pre-stop 2 s)"
    echo "  (requests after the listener closed fail to connect; the load balancer stops routing during the pre-stop delay)"
    server_pid="" ;;
  soak)
    start_server "$models"
    load "$capacity_c" 20 >/dev/null
    before=$(rss_kib)
    line=$(load "$capacity_c" "$soak")
    after=$(rss_kib)
    echo "soak ${soak} s ($capacity_c connections): $line RSS ${before} KiB -> ${after} KiB ($(awk -v a="$before" -v b="$after" 'BEGIN {printf "%+.1f", (b - a) * 100 / a}')%)"
    stop_server ;;
  idle)
    start_server "$models"
    python3 - "$port" "$duration" <<'PY'
import socket, sys, time, http.client
port, seconds = int(sys.argv[1]), int(sys.argv[2])
idle = []
for _ in range(2000):
    s = socket.create_connection(("127.0.0.1", port)); idle.append(s)
loris = socket.create_connection(("127.0.0.1", port))
loris.sendall(b"POST /score HTTP/1.1\r\nhost: x\r\n")
latencies = []
deadline = time.time() + seconds
while time.time() < deadline:
    started = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/healthz"); status = c.getresponse().status; c.close()
    latencies.append((time.perf_counter() - started) * 1000)
    assert status == 200, status
    try:
        loris.sendall(b"x")
    except OSError:
        pass
    time.sleep(0.01)
latencies.sort()
print(f"2000 idle connections + a slow loris: /healthz p50 {latencies[len(latencies)//2]:.2f} ms "
      f"p99 {latencies[int(len(latencies)*0.99)]:.2f} ms over {len(latencies)} checks")
PY
    stop_server ;;
  *) echo "error: unknown phase $phase" >&2; exit 2 ;;
  esac
done
