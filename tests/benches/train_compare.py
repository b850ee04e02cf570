"""Training throughput against PyTorch, interleaved: podscore's training step (the
`train_step` criterion bench, one candle compute thread as `podscore train` uses) and
PyTorch's on the same network (tests/benches/torch_reference.py: 2 threads with the
default Adam, and fused Adam), alternating the order every round, because this machine's
speed drifts between runs. Not part of the test command.

    python tests/benches/train_compare.py --train-step BINARY [--extra NAME=BINARY ...] \\
        [--torch-python PYTHON] [--rounds 4] [--json FILE]

BINARY is the built bench (`cargo build --release --bench train_step`, then
$CARGO_TARGET_DIR/release/deps/train_step-*); `--extra` adds another build of it (a
branch under test) to every round. PYTHON needs `torch` and `numpy`. Prints rows per
second per round and the ratio of podscore (1 thread) to PyTorch's 2-thread default Adam.
"""

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BATCH = 1024
# Criterion's median line: `time:   [25.1 ms 25.3 ms 25.6 ms]`.
TIME_LINE = re.compile(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]")
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


def candle_rows_per_s(binary, measurement_s):
    """One run of the criterion bench with one candle compute thread: rows/s of its
    median step time."""
    output = subprocess.run(
        [binary, "--bench", "--warm-up-time", "2", "--measurement-time", str(measurement_s)],
        check=True, capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, CANDLE_NUM_THREADS="1"),
    ).stdout
    match = TIME_LINE.search(output)
    if not match:
        raise SystemExit(f"no criterion time line in the output of {binary}:\n{output}")
    return BATCH / (float(match.group(1)) * UNIT_SECONDS[match.group(2)])


def torch_rows_per_s(python, steps, fused):
    command = [python, str(ROOT / "tests/benches/torch_reference.py"), "--threads", "2", "--steps", str(steps)]
    if fused:
        command.append("--fused")
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return float(output.rsplit("rows_per_s=", 1)[1].split()[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-step", required=True, help="the built train_step bench binary")
    parser.add_argument("--extra", action="append", default=[], help="NAME=BINARY: another build to compare")
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="PyTorch steps per run")
    parser.add_argument("--measurement-s", type=int, default=8, help="criterion measurement time per run")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()

    sides = {
        "podscore": lambda: candle_rows_per_s(args.train_step, args.measurement_s),
        "torch-adam-2t": lambda: torch_rows_per_s(args.torch_python, args.steps, fused=False),
        "torch-fused-adam-2t": lambda: torch_rows_per_s(args.torch_python, args.steps, fused=True),
    }
    for extra in args.extra:
        name, _, binary = extra.partition("=")
        sides[name] = lambda binary=binary: candle_rows_per_s(binary, args.measurement_s)
    rounds = []
    for index in range(args.rounds):
        order = list(sides) if index % 2 == 0 else list(sides)[::-1]
        measured = {name: sides[name]() for name in order}
        rounds.append(measured)
        print(f"round {index + 1}: " + ", ".join(f"{name} {measured[name]:.0f}" for name in sides)
              + f" rows/s; podscore / torch Adam {measured['podscore'] / measured['torch-adam-2t']:.2f}", flush=True)
    summary = {}
    for name in sides:
        values = [r[name] for r in rounds]
        summary[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    ratios = {name: [r[name] / r["torch-adam-2t"] for r in rounds] for name in sides if not name.startswith("torch")}
    for name, values in ratios.items():
        print(f"{name} / PyTorch 2-thread Adam per round: {', '.join(f'{v:.2f}' for v in values)} "
              f"(median {statistics.median(values):.2f})")
    print("medians (rows/s): " + ", ".join(f"{name} {row['median']:.0f}" for name, row in summary.items()))
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "summary": summary, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
