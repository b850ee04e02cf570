"""The Python reference service of the benchmark (`tests/bench.sh`): `POST /score` for
a podscore bundle, written from the bundle's manifest alone, the way a competent Python
engineer would write it for production: Starlette on uvicorn (httptools, uvloop), one
worker process per core, orjson, feature rows precomputed per user, show and episode at
start so that a request is assembled by vectorized numpy gathers, and ONNX Runtime with
one intra-op thread per worker on the bundle's own `model.onnx`.

It serves what the benchmark sends: a user id, a context, and candidates with a kind, a
show id, an episode id and creative fields, every feature looked up in the snapshot.
Inline user, show and episode records (brand-new content) are not supported; a request
with one is answered 422. Its scores equal podscore's to 1e-6 (the benchmark checks it
on its own requests before it measures anything).

Run: REFERENCE_BUNDLE=models/podcast-mtl/1 REFERENCE_FEATURES=models/demo-features \\
     uvicorn --workers 2 --host 127.0.0.1 --port 8090 reference_service:app
"""

import datetime
import json
import math
import os
import pathlib

import numpy as np
import onnxruntime as ort
import orjson
import pyarrow.parquet as pq
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

HOURS = [f"h{hour:02}" for hour in range(24)]
# Day 0 of the Unix epoch was a Thursday.
WEEKDAYS = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"]
SUFFIX_OF_KIND = {"id": "ids", "id_bag": "bag_ids", "dense": "dense", "numeric": "dense"}


def numeric(transform, value):
    """podscore's numeric shaping, in float64 like the Rust code, then float32."""
    raw = transform["default"] if value is None else value
    raw = float(np.float32(raw)) if value is None else float(raw)
    shaped = math.log1p(max(raw, 0.0)) if transform["log1p"] else raw
    mean, std = float(np.float32(transform["mean"])), float(np.float32(transform["std"]))
    return np.float32((shaped - mean) / std)


class Bundle:
    def __init__(self, bundle_dir: pathlib.Path, features_dir: pathlib.Path):
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        self.name, self.version = manifest["name"], manifest["version"]
        self.features = manifest["features"]
        self.vocab = {}
        for spec in self.features:
            name = spec["transform"].get("vocab")
            if name and name not in self.vocab:
                tokens = (bundle_dir / "vocab" / f"{name}.txt").read_text().splitlines()
                self.vocab[name] = {token: index + 1 for index, token in enumerate(tokens)}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(bundle_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {value.name: value for value in self.session.get_inputs()}
        self.width = {}
        for value in self.session.get_inputs():
            self.width[value.name] = value.shape[1]
        # Per kind and response field: (logit column, slope, intercept).
        self.heads = {}
        # A head serving both kinds may carry a scaling per kind (`calibration_by_kind`);
        # a kind it does not name takes the head's own.
        for head in manifest["heads"]:
            for kind in head["kinds"]:
                calibration = head.get("calibration_by_kind", {}).get(kind, head["calibration"])
                self.heads[(kind, head["field"])] = (
                    head["index"], calibration["slope"], calibration["intercept"]
                )
        self.cold_start_specs = [
            spec for spec in self.features if spec.get("marks_cold_start") and spec["scope"] == "candidate"
        ]
        self.users = self._table(features_dir / "users.parquet", "request", "user.")
        self.shows = self._table(features_dir / "shows.parquet", "candidate", "show.")
        self.episodes = self._table(features_dir / "episodes.parquet", "candidate", "episode.")

    def _empty(self, scope, rows):
        arrays = {}
        for suffix, dtype in (("ids", np.int64), ("bag_ids", np.int64), ("bag_mask", np.float32), ("dense", np.float32)):
            name = f"{scope}_{suffix}"
            if name in self.width:
                arrays[name] = np.zeros((rows, self.width[name]), dtype)
        return arrays

    def _write(self, arrays, spec, row, value):
        """One feature's value into row `row` of `arrays` (podscore's assembly)."""
        transform = spec["transform"]
        slot = spec["slot"]
        kind = transform["type"]
        if kind == "id":
            index = self.vocab[transform["vocab"]].get(value, 0) if isinstance(value, str) else 0
            arrays[spec["input"]][row, slot] = index
        elif kind == "id_bag":
            vocab = self.vocab[transform["vocab"]]
            tokens = list(value or [])[: transform["max_len"]]
            bag_ids = arrays[spec["input"]]
            bag_mask = arrays[spec["input"].replace("bag_ids", "bag_mask")]
            for offset, token in enumerate(tokens):
                bag_ids[row, slot + offset] = vocab.get(token, 0)
                bag_mask[row, slot + offset] = 1.0
        elif kind == "dense":
            if value is not None:
                arrays[spec["input"]][row, slot : slot + transform["dim"]] = np.asarray(value, np.float32)
        else:
            arrays[spec["input"]][row, slot] = numeric(transform, value)

    def _table(self, path, scope, prefix):
        """Rows of every feature an entity file feeds, plus a last row for an unknown id
        (the cold-start defaults). Each input column belongs to one feature, so the
        per-entity matrices of a request can be summed."""
        table = pq.read_table(path).to_pydict()
        ids = table["id"]
        specs = [spec for spec in self.features if spec["source"].startswith(prefix)]
        arrays = self._empty(scope, len(ids) + 1)
        for spec in specs:
            field = spec["source"][len(prefix):]
            column = ids if field == "id" else table.get(field, [None] * len(ids))
            for row, value in enumerate(column):
                self._write(arrays, spec, row, value)
            self._write(arrays, spec, len(ids), None)
        index = {entity: row for row, entity in enumerate(ids)}
        return index, arrays, len(ids)

    def score(self, body):
        request_id = body.get("request_id")
        user = body.get("user") or {}
        context = body.get("context") or {}
        candidates = body["candidates"]
        if not candidates:
            raise ValueError("at least one candidate is required")
        if any(key not in ("id",) for key in user) or any("show" in c or "episode" in c for c in candidates):
            raise ValueError("inline records are not supported by the reference service")

        user_index, user_arrays, unknown_user = self.users
        user_row = user_index.get(user.get("id"), unknown_user)
        request = {name: array[user_row : user_row + 1].copy() for name, array in user_arrays.items()}
        seconds = None
        if context.get("timestamp") is not None:
            stamp = datetime.datetime.fromisoformat(context["timestamp"].replace("Z", "+00:00"))
            seconds = int(stamp.timestamp())
        context_values = {
            "context.surface": context.get("surface"),
            "context.hour_of_day": None if seconds is None else HOURS[(seconds % 86400) // 3600],
            "context.day_of_week": None if seconds is None else WEEKDAYS[(seconds // 86400) % 7],
            "context.session_length_s": context.get("session_length_s"),
        }
        for spec in self.features:
            if spec["source"] in context_values:
                self._write(request, spec, 0, context_values[spec["source"]])

        show_index, show_arrays, unknown_show = self.shows
        episode_index, episode_arrays, unknown_episode = self.episodes
        show_rows = np.fromiter((show_index.get(c.get("show_id"), unknown_show) for c in candidates), np.int64, len(candidates))
        episode_rows = np.fromiter((episode_index.get(c.get("episode_id"), unknown_episode) for c in candidates), np.int64, len(candidates))
        feeds = {name: show_arrays[name][show_rows] + episode_arrays[name][episode_rows] for name in show_arrays}
        feeds.update(request)
        for spec in self.features:
            source = spec["source"]
            if source == "candidate.kind":
                for row, candidate in enumerate(candidates):
                    self._write(feeds, spec, row, candidate["kind"])
            elif source.startswith("creative."):
                field = source[len("creative."):]
                for row, candidate in enumerate(candidates):
                    self._write(feeds, spec, row, (candidate.get("creative") or {}).get(field))
        (logits,) = self.session.run(["logits"], {name: feeds[name] for name in self.inputs})
        cold_start = np.zeros(len(candidates), bool)
        for spec in self.cold_start_specs:
            cold_start |= feeds[spec["input"]][:, spec["slot"]] == 0

        scored = []
        logits = logits.astype(np.float64)
        for row, candidate in enumerate(candidates):
            kind = candidate["kind"]
            if kind not in ("ad", "promotion"):
                raise ValueError(f"candidates[{row}].kind: unknown kind {kind!r}")
            scores = {"id": candidate["id"], "kind": kind}
            for field in ("stream", "click", "like", "follow"):
                head = self.heads.get((kind, field))
                if head is None:
                    scores[field] = None
                else:
                    column, slope, intercept = head
                    scores[field] = 1.0 / (1.0 + math.exp(-(slope * logits[row, column] + intercept)))
            scores["cold_start"] = bool(cold_start[row])
            scored.append(scores)
        response = {"model": {"name": self.name, "version": self.version}, "candidates": scored}
        if request_id is not None:
            response["request_id"] = request_id
        return response


BUNDLE = Bundle(
    pathlib.Path(os.environ.get("REFERENCE_BUNDLE", "models/podcast-mtl/1")),
    pathlib.Path(os.environ.get("REFERENCE_FEATURES", "models/demo-features")),
)


async def score(request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
        answer = BUNDLE.score(body)
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as error:
        return Response(orjson.dumps({"error": {"code": "invalid", "message": str(error)}}), 422, media_type="application/json")
    return Response(orjson.dumps(answer), media_type="application/json")


async def ready(_: Request) -> Response:
    return Response(b"ok")


app = Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/readyz", ready)])
