"""The benchmark behind the README's performance section; run it through `bash
tests/bench.sh` (which installs and builds what it needs). Not part of the test command.

In one run, on one machine, interleaved (A B B A rounds):

1. inference: podscore's runtime (`Runtime::infer` on the shipped bundle, in process, via
   tests/benches/inference_compare.rs) against ONNX Runtime (Python `onnxruntime`, one
   intra-op thread, `session.run` on the same feeds) at N = 1, 10, 100, 1000; per round the
   median of each, the ratio podscore / ONNX Runtime, and the medians over rounds.
   podscore runs as served, one thread a call like ONNX Runtime (with --threads T a lone
   call of 1,024 padded rows or more may use T threads, and one thread is measured beside
   it); tract's per-node profile at N = 100 and 1000 and three
   minimal graphs (one product; a concatenation feeding it; the exported graph's copy
   between them) in tract and ONNX Runtime show where the difference lies;
2. efficiency: FLOP per candidate counted from the graph's matrix products, the
   GFLOP/s each side reaches, against the core's FP32 peak from an FMA loop
   (tests/benches/fma_peak.c);
3. end to end: `POST /score` with 100 candidates (half ads, half promotions, a known user
   and known shows of the demo snapshot) against `podscore serve` and the Python reference
   service (tests/benches/reference_service.py, 2 uvicorn workers), both on 127.0.0.1,
   driven by wrk (tests/benches/score.lua): connections swept for the highest throughput
   at p99 <= 10 ms with no error answer, and latency percentiles at fixed request rates;
   then podscore's stages (Server-Timing) of lone requests with 100 and 1000 candidates.

Prints Markdown tables and writes every number to --json. Exits 1 when podscore's
inference (as served) takes more than --max-ratio (1.5) times ONNX Runtime's at N = 100,
so that it can serve as a regression check; 2 when the two services disagree on a score.
Run it on an idle machine: the threads and the services need both cores.
"""

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Inference.


class Worker:
    """A line-protocol worker: one JSON request per line in, one JSON answer per line out."""

    def __init__(self, command, env=None):
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        self.hello = json.loads(self.process.stdout.readline())

    def run(self, candidates, calls):
        self.process.stdin.write(json.dumps({"candidates": candidates, "calls": calls}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args[0]} stopped")
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def ort_worker(model_path, inputs_path):
    """The ONNX Runtime side of the line protocol (run as a subprocess of this script)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    feeds = {}
    for count, graph_feeds in json.loads(pathlib.Path(inputs_path).read_text()).items():
        feeds[int(count)] = {
            name: np.asarray(tensor["data"], dtype=tensor["dtype"]).reshape(tensor["shape"])
            for name, tensor in graph_feeds.items()
        }
    print(json.dumps({"ready": True, "onnxruntime": ort.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        feed = feeds[request["candidates"]]
        times = []
        for _ in range(request["calls"]):
            started = time.perf_counter()
            (logits,) = session.run(["logits"], feed)
            times.append((time.perf_counter() - started) * 1e6)
        print(json.dumps({"times_us": times, "logits": logits.reshape(-1).tolist()}), flush=True)


def calls_for(candidates, seconds):
    """Calls per measurement so that each takes about `seconds` (at least 5)."""
    per_call_us = 40 + 5 * candidates
    return max(5, int(seconds * 1e6 / per_call_us))


def inference(args, work):
    inputs = work / "inputs.json"
    counts = ",".join(str(n) for n in args.candidates)
    subprocess.run(
        [args.compare, "--bundle", args.bundle, "--write-inputs", str(inputs), "--candidates", counts],
        check=True, cwd=ROOT,
    )
    def runtime_worker(threads):
        return Worker([args.compare, "--bundle", args.bundle, "--inputs", str(inputs), "--candidates", counts,
                       "--threads", str(threads)])

    # As served: a lone call may use every core (RuntimeConfig's default); and like for
    # like with ONNX Runtime's one intra-op thread.
    podscore = runtime_worker(args.threads)
    single = runtime_worker(1) if args.threads > 1 else None
    onnxruntime = Worker([sys.executable, __file__, "--ort-worker", str(pathlib.Path(args.bundle) / "model.onnx"), str(inputs)])
    log(f"inference: podscore buckets {podscore.hello['buckets']} (loaded in {podscore.hello['load_ms']:.0f} ms), "
        f"onnxruntime {onnxruntime.hello['onnxruntime']}")

    # Same numbers first: both sides must compute the same logits on these inputs.
    for count in args.candidates:
        ours, theirs = podscore.run(count, 1)["logits"], onnxruntime.run(count, 1)["logits"]
        worst = max(abs(a - b) for a, b in zip(ours, theirs))
        if len(ours) != len(theirs) or worst > 1e-4:
            raise SystemExit(f"tract and onnxruntime disagree at N={count}: max |logit difference| {worst}")

    sides = {"podscore": podscore, "onnxruntime": onnxruntime}
    if single:
        sides["podscore-1-thread"] = single
    rounds = []
    for round_index in range(args.rounds):
        order = list(sides.items())
        if round_index % 2:
            order.reverse()
        medians = {}
        for count in args.candidates:
            calls = calls_for(count, args.seconds_per_measure)
            for name, worker in order:
                times = worker.run(count, calls)["times_us"]
                medians.setdefault(name, {})[count] = statistics.median(times)
        rounds.append(medians)
        log(f"inference round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"N={n} {medians['podscore'][n]:.0f}/{medians['onnxruntime'][n]:.0f} us" for n in args.candidates))
    for worker in sides.values():
        worker.close()

    result = {"rounds": rounds, "summary": {}}
    for count in args.candidates:
        row = {}
        for name in sides:
            row[name] = statistics.median(r[name][count] for r in rounds)
        row["ratios"] = [r["podscore"][count] / r["onnxruntime"][count] for r in rounds]
        row["ratio"] = statistics.median(row["ratios"])
        if single:
            row["single_ratios"] = [r["podscore-1-thread"][count] / r["onnxruntime"][count] for r in rounds]
            row["single_ratio"] = statistics.median(row["single_ratios"])
        result["summary"][count] = row
    return result


# The reproductions' product: 13 blocks of the embedding width 16 (the first layer's
# input) into the encoder's 256 units.
REPRODUCTION_BLOCKS, REPRODUCTION_WIDTH, REPRODUCTION_COLUMNS = 13, 16, 256
REPRODUCTION_K = REPRODUCTION_BLOCKS * REPRODUCTION_WIDTH


def reproduction_models(work):
    """Minimal graphs for what stands between tract and ONNX Runtime here, each an ONNX
    file with rows `N` and random weights of the shipped model's shapes:

    - `matmul`: one product with bias and ReLU, [N, 208] x [208, 256] (the first layer's
      shape): the kernels alone;
    - `concat_split`: three pieces of 16-wide blocks, [N, 8, 16], [N, 3, 16], [N, 2, 16]
      (ids, pooled bags, padded dense, as in the exported graph) concatenated, flattened
      and multiplied by [208, 256], which tract splits into one product per piece;
    - `concat_copied`: the same with a constant-index Gather of the blocks between the
      concatenation and the product (the exported graph's workaround)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)

    def weight(name, rows, columns):
        return numpy_helper.from_array((rng.standard_normal((rows, columns)) * 0.05).astype(np.float32), name)

    def save(name, nodes, inputs, initializers):
        graph = helper.make_graph(
            nodes, name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *shape]) for input_name, shape in inputs],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", REPRODUCTION_COLUMNS])],
            initializers,
        )
        path = work / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
        return path, inputs

    bias = numpy_helper.from_array((rng.standard_normal(REPRODUCTION_COLUMNS) * 0.05).astype(np.float32), "bias")
    tail = [helper.make_node("Flatten", ["blocks"], ["features"], axis=1),
            helper.make_node("MatMul", ["features", "w"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["biased"]),
            helper.make_node("Relu", ["biased"], ["logits"])]
    models = {}
    models["matmul"] = save("matmul", [
        helper.make_node("Identity", ["x"], ["blocks"]), *tail,
    ], [("x", [REPRODUCTION_BLOCKS, REPRODUCTION_WIDTH])], [weight("w", REPRODUCTION_K, REPRODUCTION_COLUMNS), bias])
    pieces = [("ids", [8, 16]), ("bags", [3, 16]), ("dense", [2, 16])]
    models["concat_split"] = save("concat_split", [
        helper.make_node("Concat", [name for name, _ in pieces], ["blocks"], axis=1), *tail,
    ], pieces, [weight("w", REPRODUCTION_K, REPRODUCTION_COLUMNS), bias])
    order = numpy_helper.from_array(np.arange(REPRODUCTION_BLOCKS, dtype=np.int64), "order")
    models["concat_copied"] = save("concat_copied", [
        helper.make_node("Concat", [name for name, _ in pieces], ["joined"], axis=1),
        helper.make_node("Gather", ["joined", "order"], ["blocks"], axis=1), *tail,
    ], pieces, [weight("w", REPRODUCTION_K, REPRODUCTION_COLUMNS), bias, order])
    return models


def reproductions(args, work, candidates=(100, 1000)):
    """tract alone and ONNX Runtime on each reproduction graph, interleaved."""
    import numpy as np

    rng = np.random.default_rng(6)
    results = {}
    for name, (path, inputs) in reproduction_models(work).items():
        feeds = {
            str(count): {
                input_name: {"dtype": "float32", "shape": [count, *shape],
                             "data": rng.standard_normal(count * int(np.prod(shape))).astype(np.float32).tolist()}
                for input_name, shape in inputs
            }
            for count in candidates
        }
        feeds_path = work / f"{name}.feeds.json"
        feeds_path.write_text(json.dumps(feeds))
        sides = {
            "tract": Worker([args.compare, "--model", str(path), "--inputs", str(feeds_path)]),
            "onnxruntime": Worker([sys.executable, __file__, "--ort-worker", str(path), str(feeds_path)]),
        }
        medians = {side: {count: [] for count in candidates} for side in sides}
        for round_index in range(args.rounds):
            order = list(sides.items()) if round_index % 2 == 0 else list(sides.items())[::-1]
            for count in candidates:
                for side, worker in order:
                    times = worker.run(count, calls_for(count, args.seconds_per_measure))["times_us"]
                    medians[side][count].append(statistics.median(times))
        for worker in sides.values():
            worker.close()
        results[name] = {
            count: {side: statistics.median(medians[side][count]) for side in sides} for count in candidates
        }
        log(f"reproduction {name}: " + ", ".join(
            f"N={count} tract {results[name][count]['tract']:.0f} / onnxruntime {results[name][count]['onnxruntime']:.0f} us"
            for count in candidates))
    return results


def profiles(args, counts=(100, 1000)):
    """tract's per-node profile of the bundle's graph at each count."""
    result = {}
    for count in counts:
        output = subprocess.run(
            [args.compare, "--bundle", args.bundle, "--profile", str(count), "--calls", str(calls_for(count, 2.0))],
            check=True, capture_output=True, text=True, cwd=ROOT,
        ).stdout
        result[count] = json.loads(output)
    return result


def graph_flops(model_path, candidates):
    """FLOP of one call with `candidates` candidates: 2 * m * k * n per matrix product,
    from the graph's shapes with N set (element-wise work is not counted)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(model_path)
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "N":
                dim.dim_value = candidates
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for initializer in inferred.graph.initializer:
        shapes[initializer.name] = list(initializer.dims)
    flops = 0
    for node in inferred.graph.node:
        if node.op_type == "MatMul":
            left, right = shapes[node.input[0]], shapes[node.input[1]]
            out = shapes[node.output[0]]
            k = left[-1]
            elements = 1
            for dim in out:
                elements *= dim
            flops += 2 * elements * k
            assert right[-2] == k, (node.name, left, right)
    return flops


def fma_peak(work):
    binary = work / "fma_peak"
    source = ROOT / "tests/benches/fma_peak.c"
    flags = ["-O2", "-mfma", "-mavx2"]
    if "avx512f" in pathlib.Path("/proc/cpuinfo").read_text():
        flags.append("-mavx512f")
    subprocess.run(["gcc", *flags, str(source), "-o", str(binary)], check=True)
    return json.loads(subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout)


# ---------------------------------------------------------------------------------------
# End to end.


def request_body(features_dir, bundle_dir, candidates=100):
    """100 candidates, half ads and half promotions, for a known user with a history and
    known shows and episodes of the snapshot, with creatives the bundle knows."""
    import pyarrow.parquet as pq

    users = pq.read_table(pathlib.Path(features_dir) / "users.parquet", columns=["id", "history"]).to_pydict()
    user = next(u for u, history in zip(users["id"], users["history"]) if history and len(history) >= 5)
    episodes = pq.read_table(pathlib.Path(features_dir) / "episodes.parquet", columns=["id", "show_id"]).to_pydict()
    first_episode = {}
    for episode, show in zip(episodes["id"], episodes["show_id"]):
        first_episode.setdefault(show, episode)
    shows = [s for s in pq.read_table(pathlib.Path(features_dir) / "shows.parquet", columns=["id"]).column("id").to_pylist() if s in first_episode]
    def vocab(*names):
        """The first of `names` the bundle has: a vocabulary per feature (`campaign_id`)
        since issue 14, one per entity family (`campaign`) in older bundles."""
        folder = pathlib.Path(bundle_dir) / "vocab"
        path = next(folder / f"{name}.txt" for name in names if (folder / f"{name}.txt").exists())
        return path.read_text().split()
    campaigns = vocab("campaign_id", "campaign")
    ad_campaigns = [c for c in campaigns if c.startswith("cp")]
    promo_campaigns = [c for c in campaigns if c.startswith("p") and not c.startswith("cp")]
    creatives = vocab("creative_id", "creative")
    body = {
        "request_id": "bench",
        "user": {"id": user},
        "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "home", "session_length_s": 420},
        "candidates": [],
    }
    for index in range(candidates):
        show = shows[(index * 97) % len(shows)]
        if index % 2 == 0:
            creative = {"creative_id": creatives[index % len(creatives)], "campaign_id": ad_campaigns[index % len(ad_campaigns)],
                        "format": "audio", "slot": "midroll"}
            kind = "ad"
        else:
            creative = {"campaign_id": promo_campaigns[index % len(promo_campaigns)], "slot": "home_shelf", "layout": "card"}
            kind = "promotion"
        body["candidates"].append({"id": f"c{index}", "kind": kind, "show_id": show,
                                   "episode_id": first_episode[show], "creative": creative})
    return body


def wait_ready(url, process, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready after {seconds} s")


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def wrk(url, body_path, connections, seconds, rate=0):
    threads = min(2, connections)
    env = dict(os.environ, BENCH_BODY=str(body_path), BENCH_RATE=str(rate), BENCH_THREADS=str(threads))
    output = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "2s",
         "-s", str(ROOT / "tests/benches/score.lua"), url],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["connections"] = connections
    result["rate"] = rate
    result["requests_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("errors_4xx_5xx", "connect_errors", "read_errors", "write_errors", "timeouts"))
    return result


def stage_medians(url, body, requests):
    """`requests` sequential POSTs over one kept-alive connection: the median of each
    stage podscore reports in Server-Timing and of the client's whole round trip. What
    the stages leave out is the HTTP server (reading the request, admission, writing the
    answer), the hop to and from the blocking pool, and this client."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    payload = json.dumps(body).encode()
    stages, round_trips = {}, []
    for _ in range(requests):
        started = time.perf_counter()
        connection.request("POST", address.path, payload, {"content-type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        round_trips.append((time.perf_counter() - started) * 1e6)
        if answer.status != 200:
            raise SystemExit(f"{url} answered {answer.status} while timing the stages")
        for part in answer.getheader("server-timing", "").split(","):
            name, _, duration = part.strip().partition(";dur=")
            stages.setdefault(name, []).append(float(duration) * 1000)
    connection.close()
    result = {name: statistics.median(times) for name, times in stages.items()}
    result["stages_sum"] = sum(result.values())
    result["round_trip"] = statistics.median(round_trips)
    return result


def end_to_end(args, work):
    body = request_body(args.features, args.bundle)
    body_path = work / "body.json"
    body_path.write_text(json.dumps(body))
    env = dict(os.environ, RUST_LOG="warn")
    services = {}
    podscore = subprocess.Popen(
        [args.podscore, "serve", "--models", str(pathlib.Path(args.bundle).parents[1]), "--features", args.features,
         "--listen", f"127.0.0.1:{args.port}", "--admin-listen", "127.0.0.1:0"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    reference = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--workers", str(os.cpu_count() or 2), "--host", "127.0.0.1",
         "--port", str(args.port + 1), "--log-level", "warning", "--no-access-log", "reference_service:app"],
        cwd=ROOT / "tests/benches", env=dict(env, REFERENCE_BUNDLE=str(ROOT / args.bundle), REFERENCE_FEATURES=str(ROOT / args.features)),
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{args.port}/readyz", podscore)
        wait_ready(f"http://127.0.0.1:{args.port + 1}/readyz", reference)
        services = {"podscore": f"http://127.0.0.1:{args.port}/score", "python": f"http://127.0.0.1:{args.port + 1}/score"}
        # Same scores first.
        ours, theirs = post(services["podscore"], body), post(services["python"], body)
        worst = 0.0
        for a, b in zip(ours["candidates"], theirs["candidates"]):
            assert a["id"] == b["id"] and a["cold_start"] == b["cold_start"], (a, b)
            for field in ("stream", "click", "like", "follow"):
                worst = max(worst, abs(a[field] - b[field]))
        if len(ours["candidates"]) != len(theirs["candidates"]) or worst > 1e-6:
            log(f"the services disagree: max |probability difference| {worst}")
            sys.exit(2)
        log(f"end to end: the services agree within {worst:.1e}")

        sweep = {name: [] for name in services}
        for connections in args.connections:
            order = list(services.items()) if connections % 2 else list(services.items())[::-1]
            for name, url in order:
                result = wrk(url, body_path, connections, args.seconds)
                sweep[name].append(result)
                log(f"  {name:9} {connections:3} connections: {result['requests_per_s']:7.0f} req/s, p99 {result['p99_us'] / 1000:6.2f} ms, errors {result['errors']}")
        fixed = {name: [] for name in services}
        for rate in args.rates:
            for name, url in services.items():
                result = wrk(url, body_path, max(4, rate // 100), args.seconds, rate=rate)
                fixed[name].append(result)
                log(f"  {name:9} {rate:5} req/s offered: {result['requests_per_s']:7.0f} req/s, p50 {result['p50_us'] / 1000:.2f} ms, p99 {result['p99_us'] / 1000:.2f} ms, errors {result['errors']}")
        # Unloaded latency: one connection, one request at a time.
        unloaded = {name: wrk(url, body_path, 1, args.seconds) for name, url in services.items()}
        # Where a lone request's time goes, per candidate count.
        stages = {}
        for count in (100, 1000):
            stages[count] = stage_medians(services["podscore"], request_body(args.features, args.bundle, count),
                                          args.stage_requests)
            log(f"  podscore stages at N={count} (µs, medians): "
                + ", ".join(f"{name} {value:.0f}" for name, value in stages[count].items()))
    finally:
        podscore.send_signal(signal.SIGTERM)
        os.killpg(reference.pid, signal.SIGTERM)
        podscore.wait(timeout=30)
        reference.wait(timeout=30)

    best = {}
    for name, results in sweep.items():
        good = [r for r in results if r["p99_us"] <= 10_000 and r["errors"] == 0]
        best[name] = max(good, key=lambda r: r["requests_per_s"]) if good else None
    return {"body_candidates": len(body["candidates"]), "sweep": sweep, "fixed": fixed,
            "unloaded": unloaded, "stages": stages, "best_within_slo": best}


# ---------------------------------------------------------------------------------------
# Report.


def load_table(key, keys, results, percentiles):
    """A Markdown table of wrk runs: one row per key, per service its rate, latency
    percentiles and error answers."""
    header = f"| {key} | " + " | ".join(
        f"{name} req/s | " + " | ".join(percentiles) + " | errors" for name in results) + " |"
    lines = [header, "|---|" + ("---|" * (len(percentiles) + 2)) * len(results)]
    for index, value in enumerate(keys):
        cells = []
        for name in results:
            r = results[name][index]
            latencies = " | ".join(f"{r[p + '_us'] / 1000:.2f} ms" for p in percentiles)
            cells.append(f"{r['requests_per_s']:.0f} | {latencies} | {r['errors']}")
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    return lines


def report(result, args):
    lines = []
    peak = result["peak"]["gflops"]
    lines.append(f"Core FP32 peak (FMA loop, {result['peak']['lanes'] * 32} bits): {peak:.1f} GFLOP/s")
    lines.append("")
    inference = result["inference"]["summary"]
    threaded = args.threads > 1
    header = (f"| N | FLOP/call | podscore ({args.threads} threads when alone) | ONNX Runtime (1 thread) | "
              "ratio (per round) | podscore GFLOP/s | ORT GFLOP/s |")
    if threaded:
        header += " podscore, 1 thread | ratio |"
    lines.append(header)
    lines.append("|" + "---|" * (header.count("|") - 1))
    for count in args.candidates:
        row = inference[count]
        flops = result["flops"][str(count)]
        line = (f"| {count} | {flops / 1e6:.2f} M | {row['podscore']:.0f} µs | {row['onnxruntime']:.0f} µs | "
                f"**{row['ratio']:.2f}** ({', '.join(f'{r:.2f}' for r in row['ratios'])}) | "
                f"{flops / row['podscore'] / 1e3:.1f} ({flops / row['podscore'] / 1e3 / peak:.0%}) | "
                f"{flops / row['onnxruntime'] / 1e3:.1f} ({flops / row['onnxruntime'] / 1e3 / peak:.0%}) |")
        if threaded:
            line += f" {row['podscore-1-thread']:.0f} µs | {row['single_ratio']:.2f} |"
        lines.append(line)
    lines.append("")
    lines.append("GFLOP/s are per call; the share is of one core's peak (with threads, of one core too).")
    lines.append("")
    lines.append(f"FLOP per candidate (matrix products, marginal): {result['flops_per_candidate'] / 1e3:.0f} k")
    lines.append("")
    lines.append("Minimal reproductions (tract alone against ONNX Runtime, one thread each, medians):")
    lines.append("")
    lines.append("| graph | N | tract | ONNX Runtime | ratio | tract GFLOP/s | ORT GFLOP/s |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, by_count in result["reproductions"].items():
        for count, row in by_count.items():
            # Each graph is one [N, 208] x [208, 256] product (bias and ReLU fused).
            flops = 2 * count * REPRODUCTION_K * REPRODUCTION_COLUMNS
            lines.append(f"| {name} | {count} | {row['tract']:.0f} µs | {row['onnxruntime']:.0f} µs | {row['tract'] / row['onnxruntime']:.2f} | "
                         f"{flops / row['tract'] / 1e3:.1f} ({flops / row['tract'] / 1e3 / peak:.0%}) | "
                         f"{flops / row['onnxruntime'] / 1e3:.1f} ({flops / row['onnxruntime'] / 1e3 / peak:.0%}) |")
    for count, profile in result["profiles"].items():
        total = profile["median_total_us"]
        lines.append("")
        lines.append(f"tract's per-node profile at N = {count} ({profile['nodes_in_plan']} nodes, median call {total:.0f} µs; top 10):")
        lines.append("")
        lines.append("| node | operator | output | median | share | kernel |")
        lines.append("|---|---|---|---|---|---|")
        for node in profile["nodes"][:10]:
            kernel = node["info"].split("with [")[1].split("]")[0] if "with [" in node["info"] else ""
            lines.append(f"| {node['name']} | {node['op']} | {node['shape']} | {node['median_us']:.1f} µs | {node['median_us'] / total:.0%} | {kernel} |")
    if "end_to_end" in result:
        e2e = result["end_to_end"]
        lines.append("")
        lines.append(f"End to end, POST /score with {e2e['body_candidates']} candidates:")
        lines.append("")
        lines += load_table("connections", args.connections, e2e["sweep"], ("p50", "p99"))
        lines.append("")
        best = e2e["best_within_slo"]
        for name, r in best.items():
            lines.append(f"- {name}: best throughput at p99 <= 10 ms with no error: "
                         + (f"{r['requests_per_s']:.0f} req/s ({r['connections']} connections)" if r else "none"))
        if best.get("podscore") and best.get("python"):
            lines.append(f"- podscore / Python: **{best['podscore']['requests_per_s'] / best['python']['requests_per_s']:.2f}**")
        lines.append("")
        lines += load_table("offered req/s", args.rates, e2e["fixed"], ("p50", "p90", "p99"))
        lines.append("")
        for name, r in e2e["unloaded"].items():
            lines.append(f"- {name} unloaded (1 connection): p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms, {r['requests_per_s']:.0f} req/s")
        lines.append("")
        lines.append(f"podscore's stages of a lone request (Server-Timing, medians of {args.stage_requests} sequential requests):")
        lines.append("")
        lines.append("| N | decode | features | inference | encode | sum of stages | round trip (Python client) | outside the stages |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for count, row in e2e["stages"].items():
            cells = " | ".join(f"{row.get(name, 0) / 1000:.2f} ms" for name in ("decode", "features", "inference", "encode"))
            lines.append(f"| {count} | {cells} | {row['stages_sum'] / 1000:.2f} ms | {row['round_trip'] / 1000:.2f} ms | "
                         f"{(row['round_trip'] - row['stages_sum']) / 1000:.2f} ms |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--ort-worker":
        ort_worker(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--podscore", required=True, help="the podscore binary (release)")
    parser.add_argument("--compare", required=True, help="the inference_compare bench binary")
    parser.add_argument("--bundle", default="models/podcast-mtl/1")
    parser.add_argument("--features", default="models/demo-features")
    parser.add_argument("--candidates", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved inference rounds")
    parser.add_argument("--seconds-per-measure", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1,
                        help="the runtime's threads for a lone call of 1,024 padded rows or more "
                             "(default 1, as served); above 1, one thread is measured too")
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[200, 500, 1000, 2000])
    parser.add_argument("--seconds", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--stage-requests", type=int, default=200,
                        help="sequential requests per count for the Server-Timing stage medians")
    parser.add_argument("--port", type=int, default=18380)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--max-ratio", type=float, default=1.5, help="regression bound on the N=100 inference ratio")
    parser.add_argument("--json", type=pathlib.Path, help="write every number here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="podscore-bench-") as directory:
        work = pathlib.Path(directory)
        result = {"peak": fma_peak(work)}
        model = str(pathlib.Path(args.bundle) / "model.onnx")
        result["flops"] = {str(n): graph_flops(model, n) for n in args.candidates}
        result["flops_per_candidate"] = (graph_flops(model, 1001) - graph_flops(model, 1)) / 1000
        result["inference"] = inference(args, work)
        result["profiles"] = profiles(args)
        result["reproductions"] = reproductions(args, work)
        if not args.skip_end_to_end:
            result["end_to_end"] = end_to_end(args, work)
    text = report(result, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    ratio = result["inference"]["summary"].get(100, {}).get("ratio")
    if ratio is not None and ratio > args.max_ratio:
        log(f"inference ratio at N=100 is {ratio:.2f}, above {args.max_ratio}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
