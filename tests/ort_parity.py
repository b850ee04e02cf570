"""ONNX Runtime parity for podscore's exported model.

Usage: ort_parity.py MODEL.onnx CASES.json

CASES.json holds {"tolerance": t, "cases": [{"name", "inputs": {name: {"dtype",
"shape", "data"}}, "expected_probabilities": [...], "rows", "heads"}]}, written by
tests/onnx_parity.rs from the plain-Rust reference forward pass. A case may also hold
"expected_logits" (compared raw) and "calibrated": [{"column", "slope", "intercept",
"values"}] (compared with sigmoid(slope * logit + intercept) of that column): what
tests/protocols.rs writes from the server's KServe outputs. This script runs the
full ONNX checker on the model, runs every case on ONNX Runtime's CPU provider, and
exits non-zero when the checker fails or any sigmoid(logit) differs by more than the
tolerance. Exit codes: 0 ok, 1 mismatch, 2 checker failed, 3 packages missing.
"""

import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as error:
    print(f"missing Python package: {error}; install onnx, onnxruntime and numpy", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    model_path, cases_path = sys.argv[1], sys.argv[2]
    model = onnx.load(model_path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # the checker raises several types; all mean failure
        print(f"onnx.checker full check failed: {error}", file=sys.stderr)
        return 2

    with open(cases_path) as file:
        spec = json.load(file)
    tolerance = float(spec["tolerance"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    graph_inputs = {value.name for value in session.get_inputs()}

    worst_overall = 0.0
    for case in spec["cases"]:
        feeds = {}
        for name, tensor in case["inputs"].items():
            feeds[name] = np.asarray(tensor["data"], dtype=tensor["dtype"]).reshape(tensor["shape"])
        if set(feeds) != graph_inputs:
            print(f"case {case['name']}: inputs {sorted(feeds)} but graph has {sorted(graph_inputs)}", file=sys.stderr)
            return 1
        (logits,) = session.run(["logits"], feeds)
        expected_shape = (case["rows"], case["heads"])
        if logits.shape != expected_shape:
            print(f"case {case['name']}: output shape {logits.shape}, expected {expected_shape}", file=sys.stderr)
            return 1
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        expected = np.asarray(case["expected_probabilities"], dtype=np.float64).reshape(expected_shape)
        worst = float(np.max(np.abs(probabilities - expected)))
        worst_overall = max(worst_overall, worst)
        print(f"case {case['name']}: {expected_shape[0]} rows, max |p_ort - p_reference| = {worst:.3g}")
        if "expected_logits" in case:
            served = np.asarray(case["expected_logits"], dtype=np.float64).reshape(expected_shape)
            worst_logit = float(np.max(np.abs(logits.astype(np.float64) - served)))
            print(f"case {case['name']}: max |logit_ort - logit_served| = {worst_logit:.3g}")
            if not worst_logit <= tolerance:
                print(f"case {case['name']}: logits differ by {worst_logit}, tolerance {tolerance}", file=sys.stderr)
                return 1
            print(f"case {case['name']}: logits within {tolerance}")
        for head in case.get("calibrated", []):
            column = logits[:, head["column"]].astype(np.float64)
            calibrated = 1.0 / (1.0 + np.exp(-(head["slope"] * column + head["intercept"])))
            served = np.asarray(head["values"], dtype=np.float64)
            worst_head = float(np.max(np.abs(calibrated - served)))
            if not worst_head <= tolerance:
                print(f"case {case['name']}: calibrated column {head['column']} differs by {worst_head}", file=sys.stderr)
                return 1
        if not worst <= tolerance:
            row, column = np.unravel_index(np.argmax(np.abs(probabilities - expected)), expected_shape)
            print(
                f"case {case['name']}: row {row} head {column}: onnxruntime {probabilities[row, column]:.8f}, "
                f"reference {expected[row, column]:.8f}, tolerance {tolerance}",
                file=sys.stderr,
            )
            return 1
    print(f"onnx.checker full check passed; onnxruntime {ort.__version__} within {worst_overall:.3g} of the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
