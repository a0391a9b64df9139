#!/usr/bin/env python3
"""Tracking: speed, accuracy against another tracker, and the cost in the output stage.

    .venv/bin/python -m pip install --target /tmp/trtarget trackers   # the other tracker
    .venv/bin/python bench/tracking.py [--trackers-path /tmp/trtarget] [--seconds 20]

Sections (one run, one JSON under ``bench/results/tracking-<date>.json``):

- ``speed``: visionflow's tracker (:class:`~visionflow.tracking.bytetrack.ByteTracker`), ms per
  frame with 1, 10 and 100 objects moving in a 1920x1080 frame (noisy boxes, 300 frames),
  and Roboflow ``trackers``' ByteTrack on the same boxes when it can be imported.
- ``descriptor``: CPU µs of the appearance descriptors (re-identification by appearance) of
  1, 5 and 20 boxes on a 320x320 network input, beside ``to_detections`` on the same boxes;
  per frame of a batch of 8 such frames, described frame by frame and together
  (``describe_batch``, what the inference worker does), and their ratio.
- ``accuracy``: synthetic scenes of each kind (crossing, occlusion, reenter; seeds not used
  for tuning), the bundled detector run once on every rendered frame, and the same
  detections given to every tracker; IDF1, MOTA and ID switches from ``motmetrics``
  (:mod:`visionflow.scenes.tracking_metrics`); with each detection its appearance
  descriptor, computed on the network input as the inference worker does
  (:mod:`visionflow.pipeline.appearance`).  Trackers: ``visionflow`` (defaults),
  ``visionflow-recover-reid`` (recovery of lost tracks by position and re-identification at
  the frame edge on, both off by default), ``visionflow-appearance`` (re-identification by
  appearance on, ``appearance_s`` 3, off by default), ``visionflow-plain`` (no match
  buffer: ByteTrack's plain IoU) and ``trackers-bytetrack``.
- ``truth``: the tracking processor (tracker, the zone and line of
  ``tests/integration/test_tracking_truth.py``) on the same detections: IDF1, ID switches and
  the zone/line counts' difference from the truth trajectories' counts (``count_diff`` over
  every count; ``count_diff_test_keys`` over those the truth test checks: the lines', and the
  zones' except on ``reenter``; ``fair_count_diff_test_keys`` the same with the events of
  objects less than half visible neither owed nor held against the tracker:
  :func:`~visionflow.scenes.tracking_metrics.fair_count_diff`), with the defaults,
  with recovery by position on, with that and re-identification at the edge on, and with
  re-identification by appearance on (with and without its gate on the IoU matching, and
  with the edge re-identification on as well, and that with ``appearance_reach`` 0: a lost
  track's id given back anywhere in the frame, as before that setting, or with
  ``infer_unseen_s`` 1: line crossings nobody saw inferred from the tracks' paths).
- ``failures``: where identities are lost, per scene, with re-identification by appearance
  on (``appearance_s`` 3, the truth section's processor): each truth object (at least half
  visible) is matched per frame to a tracked box (IoU >= 0.5, greedy by IoU), its frames
  split into visits (more than 2 frames missing); counted are the visits with no tracked box,
  the returns (between two tracked visits, each judged by the id most of its frames got)
  that kept the id or got another, and, inside a visit, switches to an id first matched there
  (``switch_new``: a track broken into a new one), back to an id the object had before
  (``switch_back``), or to one first matched on another object (``switch_other``: a swap).
- ``output_stage``: the output stage in-process (32 streams, batches of 32 results, a counting
  sink), µs per result with no processor (the stage before tracking), with the tracking
  processor but every stream untracked (the default), with every stream tracked, and with
  every stream tracked with re-identification by appearance (each detection carrying a
  descriptor, as the inference worker sends them), and every stream tracked with a zone and a
  line (``OUTPUT_SHAPES``), without and with ``infer_unseen_s`` 1.
- ``pipeline``: ``bench/cpu_pipeline.py``'s visionflow run (8 clips read flat out, the
  bundled detector, Redis), no stream tracked vs every stream tracked with a zone and a line
  vs that with ``appearance_s`` 3 (the inference worker describes every box as well),
  alternating: frames/s and CPU ms per frame (the data-plane figures), each ratio to
  untracked also round by round; ``--baseline-inflight`` adds untracked and appearance with
  ONNX Runtime's ``inflight`` 1 (the engine before it overlapped the worker's own work),
  ``--capacity-variant`` both with 2 batches queued per worker.
- ``install``: what ``trackers`` (with ``supervision``) would add to the environment.

``trackers`` is never a dependency of visionflow: it is imported from ``--trackers-path``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# as in the pipeline's processes (visionflow/workers/procs.py: CHILD_ENV), set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import counting_sink, table, write_result  # noqa: E402
from visionflow.pipeline.appearance import DIMS  # noqa: E402
from visionflow.scenes.generator import CLASSES, SceneGenerator, SceneSpec  # noqa: E402
from visionflow.scenes.tracking_metrics import (  # noqa: E402
    Predicted,
    fair_count_diff,
    score_tracks,
    truth_counts,
)
from visionflow.tracking.bytetrack import ByteTracker, TrackerParams  # noqa: E402
from visionflow.tracking.processor import descriptors  # noqa: E402

CACHE = ROOT / ".cache" / "bench-tracking"
HELD_OUT = {"crossing": 401, "occlusion": 402, "reenter": 403}
#: recovery of lost tracks by position and re-identification at the edge on (off by default)
RECOVER_REID = TrackerParams(recover_dist=1.0, reid_s=3.0)
#: re-identification by appearance on (off by default)
APPEARANCE = TrackerParams(appearance_s=3.0)
SIZE = (640.0, 360.0)  # of the accuracy section's scenes
#: boxes [N, 4], scores, class ids, appearance descriptors [N, DIMS] (zeros: none)
Dets = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Tracker = Callable[[Dets, float], list[tuple[int, int, tuple[float, float, float, float]]]]


# ---- trackers behind one call: (detections, t) -> [(track id, class id, box)] ----------------
def ours(params: TrackerParams, size: tuple[float, float] | None = None) -> Tracker:
    tracker = ByteTracker(params)

    def step(dets: Dets, t: float) -> list[tuple[int, int, tuple[float, float, float, float]]]:
        boxes, scores, classes, feats = dets
        out = tracker.update(boxes, scores, classes, t, size, feats)
        return [
            (int(i), int(c), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
            for i, c, b in zip(out.track_ids, classes, boxes, strict=True)
            if i >= 0
        ]

    return step


def theirs(fps: float) -> Tracker:
    import supervision as sv  # type: ignore[import-not-found]
    from trackers import ByteTrackTracker  # type: ignore[import-not-found]

    tracker = ByteTrackTracker(frame_rate=fps)

    def step(dets: Dets, t: float) -> list[tuple[int, int, tuple[float, float, float, float]]]:
        boxes, scores, classes, _ = dets
        det = sv.Detections(
            xyxy=boxes.astype(np.float32),
            confidence=scores.astype(np.float32),
            class_id=classes.astype(int),
        )
        out = tracker.update(det)
        return [
            (int(i), int(c), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
            for i, c, b in zip(out.tracker_id, out.class_id, out.xyxy, strict=True)
            if i >= 0
        ]

    return step


def trackers_available(path: str | None) -> str | None:
    """None when ``trackers`` imports, else why not."""
    if path:
        sys.path.append(path)  # after the venv: its numpy/scipy/av stay the ones in use
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import trackers  # type: ignore[import-not-found]  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ---- speed -------------------------------------------------------------------------------------
def synthetic(n: int, frames: int, seed: int = 0) -> list[Dets]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 0], [1800, 960], (n, 2))
    vel = rng.normal(0, 4, (n, 2))
    size = rng.uniform([30, 60], [120, 200], (n, 2))
    looks = rng.normal(0, 1, (n, DIMS))  # one look per object (used only with appearance on)
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    out = []
    for _ in range(frames):
        pos = (pos + vel) % [1800, 960]
        boxes = np.concatenate([pos, pos + size], axis=1) + rng.normal(0, 1.5, (n, 4))
        out.append((boxes, rng.uniform(0.3, 0.95, n), rng.integers(0, 3, n), looks))
    return out


def time_tracker(make: Callable[[], Tracker], frames: list[Dets], fps: float = 30.0) -> float:
    step = make()
    for i, dets in enumerate(frames[:10]):  # warm up (imports, first allocations)
        step(dets, i / fps)
    step = make()
    start = time.perf_counter()
    for i, dets in enumerate(frames):
        step(dets, i / fps)
    return (time.perf_counter() - start) / len(frames) * 1000


def speed(have_theirs: bool) -> list[dict[str, Any]]:
    rows = []
    for n in (1, 10, 100):
        frames = synthetic(n, 300)
        row: dict[str, Any] = {"objects": n}
        row["visionflow_ms"] = round(
            time_tracker(lambda: ours(TrackerParams(), (1920.0, 1080.0)), frames), 3
        )
        row["visionflow_recover_reid_ms"] = round(
            time_tracker(lambda: ours(RECOVER_REID, (1920.0, 1080.0)), frames), 3
        )
        row["visionflow_appearance_ms"] = round(
            time_tracker(lambda: ours(APPEARANCE, (1920.0, 1080.0)), frames), 3
        )
        if have_theirs:
            row["trackers_ms"] = round(time_tracker(lambda: theirs(30.0), frames), 3)
        rows.append(row)
    return rows


def descriptor_cost(repeats: int = 5) -> list[dict[str, Any]]:
    """CPU µs of the appearance descriptors of 1 / 5 / 20 boxes on a 320x320 network input
    (what the inference worker adds on a stream with ``appearance_s``), beside
    ``to_detections`` on the same boxes; and per frame of a batch of 8 such frames, described
    frame by frame (the worker before) and together (``describe_batch``, what it does now),
    with their ratio; best of ``repeats``."""
    from visionflow.pipeline.appearance import describe, describe_batch
    from visionflow.pipeline.letterbox import letterbox_geometry
    from visionflow.pipeline.postprocess import to_detections

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (320, 320, 3), dtype=np.uint8) for _ in range(8)]
    image = images[0]
    lb = letterbox_geometry(640, 360, 320, 320)
    rows = []
    for k in (1, 5, 20):
        xy, wh = rng.uniform(0, 250, (k, 2)), rng.uniform(10, 70, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        decoded = (boxes, np.full(k, 0.9, np.float32), np.zeros(k, np.intp))
        n = 400 // k
        batch = [boxes + i for i in range(len(images))]  # each frame its own boxes
        calls: dict[str, tuple[Callable[[], object], int]] = {
            "describe": (lambda b=boxes: describe(image, b), 1),
            "to_detections": (lambda d=decoded: to_detections(d, lb, ["a"]), 1),
            "batch_frame_by_frame": (
                lambda b=batch: [describe(i, x) for i, x in zip(images, b, strict=True)],
                len(images),
            ),
            "batch_together": (lambda b=batch: describe_batch(images, b), len(images)),
        }
        best = dict.fromkeys(calls, 1e9)
        for _ in range(repeats):
            for name, (call, frames) in calls.items():
                start = time.process_time()
                for _ in range(max(1, n // frames)):
                    call()
                best[name] = min(
                    best[name], (time.process_time() - start) / max(1, n // frames) / frames
                )
        rows.append(
            {
                "boxes": k,
                "describe_us": round(best["describe"] * 1e6, 1),
                "describe_us_per_box": round(best["describe"] / k * 1e6, 1),
                "to_detections_us": round(best["to_detections"] * 1e6, 1),
                "batch8_frame_by_frame_us_per_frame": round(best["batch_frame_by_frame"] * 1e6, 1),
                "batch8_together_us_per_frame": round(best["batch_together"] * 1e6, 1),
                "batch8_together_ratio": round(
                    best["batch_together"] / best["batch_frame_by_frame"], 2
                ),
            }
        )
    return rows


# ---- accuracy ----------------------------------------------------------------------------------
def coded_frames(
    spec: SceneSpec, seconds: float, input_size: tuple[int, int]
) -> Iterator[tuple[np.ndarray, Any, list[Any]]]:
    """(network input, letterbox, truth) per frame of the scene encoded as
    tests/integration/test_tracking_truth.py serves it (``write_clip``: H.264, yuv420p, crf
    23) and decoded and letterboxed as ingest does (``scale_frame_into``)."""
    import av

    from visionflow.pipeline.letterbox import letterbox_geometry, scale_frame_into
    from visionflow.scenes.clips import load_truth, write_clip

    path = (
        CACHE / f"{spec.kind}-{spec.seed}-{seconds}s-{spec.fps}fps-{spec.width}x{spec.height}.mp4"
    )
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        write_clip(spec, path, seconds)
    truth = load_truth(path)
    width, height = input_size
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            lb = letterbox_geometry(frame.width, frame.height, width, height)
            canvas = np.empty((height, width, 3), np.uint8)
            scale_frame_into(frame, canvas, lb)
            yield canvas, lb, truth[index]


def rendered_frames(
    spec: SceneSpec, seconds: float, input_size: tuple[int, int]
) -> Iterator[tuple[np.ndarray, Any, list[Any]]]:
    """(network input, letterbox, truth) per rendered frame (no video coding)."""
    from visionflow.pipeline.letterbox import letterbox_image

    gen = SceneGenerator(spec, seconds + 1)
    for index in range(gen.frame_count(seconds)):
        image, truth = gen.render(index)
        canvas, lb = letterbox_image(image, *input_size)
        yield canvas, lb, truth


@functools.cache
def bundled_model() -> tuple[Any, Any]:
    """The default config and its resolved model (the file read and hashed once a run, not
    once per scene and section)."""
    from visionflow.config import parse_config
    from visionflow.models import resolve_model

    cfg = parse_config({}, "<bench>")
    return cfg, resolve_model(cfg)


def detections(
    kind: str,
    seed: int,
    seconds: float,
    fps: int,
    width: int = 640,
    height: int = 360,
    coded: bool = False,
) -> list[Any]:
    """(truth, detections) per frame: the bundled detector on the rendered frames (or, with
    ``coded``, on the frames of the H.264 clip the pipeline's truth test serves, decoded as
    ingest does), with the appearance descriptors the inference worker would compute
    (cached)."""
    from visionflow.engines import create_engine
    from visionflow.pipeline.appearance import describe
    from visionflow.pipeline.letterbox import to_network_input
    from visionflow.pipeline.postprocess import decode_output, to_detections

    cfg, model = bundled_model()
    # -app4: colour histograms with the surroundings taken out; the model (its file's digest)
    # and the thresholds that kept its boxes name the file
    video = "-h264" if coded else ""
    keep = f"c{model.conf_threshold:g}-i{cfg.model.iou_threshold:g}"
    name = f"{kind}-{seed}-{seconds}s-{fps}fps-{width}x{height}{video}-app4-{model.model_id}-{keep}"
    path = CACHE / f"{name}.pkl"
    if path.is_file():
        return list(pickle.loads(path.read_bytes()))
    spec = SceneSpec(width, height, fps=fps, seed=seed, kind=kind)  # type: ignore[arg-type]
    frames = coded_frames if coded else rendered_frames
    out = []
    with create_engine(cfg.engine, model.path, 1) as engine:
        for canvas, lb, truth in frames(spec, seconds, model.input_size):
            raw = engine.infer(to_network_input(canvas[None], engine.info.input_dtype))
            decoded = decode_output(raw[0], model.conf_threshold, cfg.model.iou_threshold, 300)
            looks = describe(canvas, decoded[0])  # what the worker does, on the network input
            dets = to_detections(decoded, lb, model.class_names, looks)
            boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], np.float64).reshape(-1, 4)
            scores = np.array([d.score for d in dets], np.float64)
            classes = np.array([d.class_id for d in dets], np.int64)
            feats = descriptors(dets)  # as the output stage reads them
            if feats is None:
                feats = np.zeros((len(dets), DIMS))
            out.append((truth, (boxes, scores, classes, feats)))
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(out))
    return out


def score(make: Callable[[], Tracker], data: list[Any], fps: float) -> dict[str, Any]:
    step = make()
    frames = []
    for index, (truth, dets) in enumerate(data):
        tracks = step(dets, index / fps)
        frames.append((truth, [Predicted(i, c, b) for i, c, b in tracks]))
    return score_tracks(frames).as_dict()


def accuracy(
    seconds: float, fps: int, have_theirs: bool, seeds: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    contenders: dict[str, Callable[[], Tracker]] = {
        "visionflow": lambda: ours(TrackerParams(), SIZE),
        "visionflow-recover-reid": lambda: ours(RECOVER_REID, SIZE),
        "visionflow-appearance": lambda: ours(APPEARANCE, SIZE),
        "visionflow-plain": lambda: ours(TrackerParams(buffer=0.0), SIZE),
    }
    if have_theirs:
        contenders["trackers-bytetrack"] = lambda: theirs(float(fps))
    rows = []
    for kind, seed in seeds:
        data = detections(kind, seed, seconds, fps)
        for name, make in contenders.items():
            rows.append({"scene": kind, "seed": seed, "tracker": name, **score(make, data, fps)})
    return rows


# ---- the output stage's tracking against the truth: ids and zone/line counts ------------------
#: the zone and line of tests/integration/test_tracking_truth.py
TRUTH_SHAPES = {
    "zones": [{"id": "yard", "points": [[0.6, 0.3], [0.85, 0.3], [0.85, 1], [0.6, 1]]}],
    "lines": [{"id": "west", "start": [0.3, 0], "end": [0.3, 1]}],
}


def processed(data: list[Any], fps: int, overrides: dict[str, Any]) -> tuple[list[Any], Any]:
    """The tracking processor (tracker, zones, lines) on one scene's detections: per frame
    (truth, predictions), and the counts it wrote."""
    from collections import Counter

    from visionflow.pipeline.frames import Detection, FrameRef, FrameResult
    from visionflow.pipeline.letterbox import letterbox_geometry
    from visionflow.tracking.config import TrackingConfig
    from visionflow.tracking.processor import TrackingProcessor

    proc = TrackingProcessor({"s": TrackingConfig.model_validate({**TRUTH_SHAPES, **overrides})})
    lb = letterbox_geometry(int(SIZE[0]), int(SIZE[1]), 320, 320)
    frames, counts = [], Counter[tuple[str, str]]()
    for i, (truth, (boxes, scores, classes, feats)) in enumerate(data):
        dets = tuple(
            Detection(int(c), CLASSES[int(c)], float(sc), *map(float, b), appearance=as_bytes(look))
            for b, sc, c, look in zip(boxes, scores, classes, feats, strict=True)
        )
        ref = FrameRef("s", i, i / fps, T0 + i / fps, 1.0, "p", 0, lb)
        out = proc.process([FrameResult(ref, dets, 1.0, 1.0, 1, 0, 0.0)])[0]
        preds = [
            Predicted(d.track_id, d.class_id, (d.x1, d.y1, d.x2, d.y2))
            for d in out.detections
            if d.track_id is not None
        ]
        frames.append((truth, preds))
        counts.update((label, metric) for label, metric in out.counts if metric != "tracks")
    return frames, counts


def unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1."""
    out: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def as_bytes(look: np.ndarray) -> bytes | None:
    """A descriptor as a Detection carries it (float16 bytes), None for a row of zeros."""
    return look.astype(np.float16).tobytes() if look.any() else None


T0 = 1_800_000_000.0  # capture time of frame 0: the start of a counts bucket


def checked_keys(kind: str, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The counts tests/integration/test_tracking_truth.py checks: every line's, and the
    zones' except on ``reenter`` (there an object that is not re-identified is one to the
    truth but two tracks, so its zone counts differ)."""
    lines = {k for k in keys if k[1].startswith("line:")}
    zones = {k for k in keys if k[1].startswith("zone:")}
    return lines | (zones if kind != "reenter" else set())


def truth_rows(
    seconds: float, fps: int, seeds: list[tuple[str, int]], coded: bool = False
) -> list[dict[str, Any]]:
    """IDF1 and the zone/line counts' difference from the truth's, as in
    tests/integration/test_tracking_truth.py but offline (no video coding unless ``coded``),
    defaults vs the tracker without re-identification and recovery."""
    from visionflow.tracking.config import TrackingConfig

    shapes = TrackingConfig.model_validate(TRUTH_SHAPES)
    rows = []
    for kind, seed in seeds:
        data = detections(kind, seed, seconds, fps, coded=coded)
        frames_in = [(i, T0 + i / fps, truth) for i, (truth, _) in enumerate(data)]
        width, height = int(SIZE[0]), int(SIZE[1])
        expected = truth_counts(frames_in, shapes, width, height, fps)
        visible = truth_counts(frames_in, shapes, width, height, fps, visible_only=True)
        variants = (
            ("defaults", {}),
            ("recover_dist 1", {"recover_dist": 1.0}),
            ("recover_dist 1, reid_s 3", {"recover_dist": 1.0, "reid_s": 3.0}),
            ("appearance_s 3, no gate", {"appearance_s": 3.0, "appearance_gate": 0.0}),
            ("appearance_s 3", {"appearance_s": 3.0}),
            ("appearance_s 3, reid_s 3", {"appearance_s": 3.0, "reid_s": 3.0}),
            (
                "appearance_s 3, reid_s 3, reach 0",
                {"appearance_s": 3.0, "reid_s": 3.0, "appearance_reach": 0.0},
            ),
            (
                "appearance_s 3, reid_s 3, infer_unseen_s 1",
                {"appearance_s": 3.0, "reid_s": 3.0, "infer_unseen_s": 1.0},
            ),
        )
        for name, overrides in variants:
            frames, got = processed(data, fps, overrides)
            keys = set(expected) | set(got)
            checked = checked_keys(kind, keys)
            rows.append(
                {
                    "scene": kind,
                    "seed": seed,
                    "video": "h264" if coded else "rendered",
                    "tracker": name,
                    **score_tracks(frames).as_dict(),
                    "count_diff": sum(abs(expected[k] - got[k]) for k in keys),
                    "truth_counts": sum(expected[k] for k in keys),
                    "count_diff_test_keys": sum(abs(expected[k] - got[k]) for k in checked),
                    "fair_count_diff_test_keys": fair_count_diff(expected, visible, got, checked),
                    "truth_counts_test_keys": sum(expected[k] for k in checked),
                }
            )
    return rows


# ---- where identities are lost -----------------------------------------------------------------
VISIT_GAP = 2  # more frames than this without the object end a visit


def matched_ids(frames: list[Any]) -> dict[int, list[tuple[int, int | None]]]:
    """Per truth object at least half visible, per frame it is in: the track id of the tracked
    box matched to it (IoU >= 0.5, greedy by IoU, one box per object) or None."""
    from collections import defaultdict

    from visionflow.tracking.bytetrack import iou_matrix

    out: dict[int, list[tuple[int, int | None]]] = defaultdict(list)
    for index, (truth, preds) in enumerate(frames):
        seen = [t for t in truth if not t.ignorable]
        if not seen:
            continue
        if not preds:
            for t in seen:
                out[t.object_id].append((index, None))
            continue
        t_boxes = np.array([[t.x1, t.y1, t.x2, t.y2] for t in seen])
        ious = iou_matrix(t_boxes, np.array([p.box for p in preds]))
        taken: set[int] = set()
        for i in np.argsort(-ious.max(axis=1)):
            j = int(np.argmax(ious[i]))
            hit = ious[i, j] >= 0.5 and j not in taken
            if hit:
                taken.add(j)
            out[seen[int(i)].object_id].append((index, preds[j].track_id if hit else None))
    return out


def identity_failures(per_object: dict[int, list[tuple[int, int | None]]]) -> dict[str, int]:
    """Visits never tracked; returns (between two tracked visits, each judged by the id most
    of its frames got) that kept the id or got another; and switches inside a visit to an id
    first matched there (``switch_new``), back to an id the object had before, or to an id
    first matched on another object (see the ``failures`` section)."""
    first_seen: dict[int, tuple[int, int]] = {}  # track id -> (frame, truth object)
    for obj, seq in per_object.items():
        for index, tid in seq:
            if tid is not None and (tid not in first_seen or index < first_seen[tid][0]):
                first_seen[tid] = (index, obj)
    keys = ("return_kept", "return_other_id", "untracked_visit", "switch_new")
    out = dict.fromkeys((*keys, "switch_back", "switch_other"), 0)
    for obj, seq in per_object.items():
        visits: list[list[tuple[int, int | None]]] = [[]]
        for item in seq:  # more than VISIT_GAP frames missing: a new visit
            if visits[-1] and item[0] - visits[-1][-1][0] - 1 > VISIT_GAP:
                visits.append([])
            visits[-1].append(item)
        ids = [_main_id(v) for v in visits]
        out["untracked_visit"] += ids.count(None)
        tracked = [tid for tid in ids if tid is not None]  # a return: between tracked visits
        for before, after in itertools.pairwise(tracked):
            out["return_kept" if before == after else "return_other_id"] += 1
        for visit in visits:
            tracked = [(index, tid) for index, tid in visit if tid is not None]
            for (_, prev), (index, tid) in itertools.pairwise(tracked):
                if tid != prev:
                    out[_switch_kind(first_seen[tid], index, obj)] += 1
    return out


def _switch_kind(first: tuple[int, int], index: int, obj: int) -> str:
    """A switch at frame ``index`` of object ``obj`` to an id first seen ``first``."""
    if first[1] != obj:
        return "switch_other"
    return "switch_new" if first[0] == index else "switch_back"


def _main_id(visit: list[tuple[int, int | None]]) -> int | None:
    """The track id most of a visit's frames got (None: never tracked)."""
    ids = [tid for _, tid in visit if tid is not None]
    return max(set(ids), key=ids.count) if ids else None


def failures(seconds: float, fps: int, seeds: list[tuple[str, int]]) -> list[dict[str, Any]]:
    rows = []
    for kind, seed in seeds:
        frames, _ = processed(detections(kind, seed, seconds, fps), fps, {"appearance_s": 3.0})
        rows.append({"scene": kind, "seed": seed, **identity_failures(matched_ids(frames))})
    return rows


# ---- the output stage --------------------------------------------------------------------------
def output_stage(per_frame: int, seconds: float = 3.0) -> list[dict[str, Any]]:
    from visionflow.pipeline.frames import BatchResult, Detection, FrameRef, FrameResult
    from visionflow.pipeline.letterbox import letterbox_geometry
    from visionflow.tracking.config import TrackingConfig
    from visionflow.tracking.processor import TrackingProcessor
    from visionflow.workers.output import OutputStage

    lb = letterbox_geometry(1280, 720, 320, 320)
    streams = [f"s{i:02d}" for i in range(32)]
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0, 1000, (len(streams), per_frame))
    # one look per object (what the worker sends on a stream with appearance_s)
    looks = [[as_bytes(v) for v in unit(rng.uniform(0, 1, (per_frame, DIMS)))] for _ in streams]

    def batch(batch_id: int, with_looks: bool = False) -> BatchResult:
        seq = batch_id
        results = []
        for s, sid in enumerate(streams):
            dets = tuple(
                Detection(
                    0,
                    "person",
                    0.9,
                    x + 3 * seq % 200,
                    100.0,
                    x + 3 * seq % 200 + 60,
                    260.0,
                    appearance=looks[s][j] if with_looks else None,
                )
                for j, x in enumerate(x0[s])
            )
            ref = FrameRef(sid, seq, None, 1e9 + seq / 10, 1.0, "p", 0, lb)
            results.append(FrameResult(ref, dets, 1.0, 1.0, 32, 0, 1e9))
        return BatchResult(batch_id, 0, tuple(results))

    looked = TrackingConfig(appearance_s=3.0)
    shapes = TrackingConfig.model_validate(OUTPUT_SHAPES)
    inferring = TrackingConfig.model_validate({**OUTPUT_SHAPES, "infer_unseen_s": 1.0})
    variants: dict[str, tuple[list[Any], bool]] = {
        "no processor (before tracking)": ([], False),
        "tracking processor, no stream tracked (default)": ([TrackingProcessor({})], False),
        "every stream tracked": (
            [TrackingProcessor({s: TrackingConfig() for s in streams})],
            False,
        ),
        "every stream tracked, appearance_s 3": (
            [TrackingProcessor({s: looked for s in streams})],
            True,
        ),
        "every stream tracked, a zone and a line": (
            [TrackingProcessor({s: shapes for s in streams})],
            False,
        ),
        "every stream tracked, a zone and a line, infer_unseen_s 1": (
            [TrackingProcessor({s: inferring for s in streams})],
            False,
        ),
    }
    rows = []
    for name, (processors, with_looks) in variants.items():
        stage = OutputStage([counting_sink()], processors=processors)
        n, spent, batch_id = 0, 0.0, 1
        while spent < seconds:
            work = batch(batch_id, with_looks)  # built outside the measured time
            start = time.process_time()
            n += stage.on_result(work)
            spent += time.process_time() - start
            batch_id += 1
        rows.append(
            {
                "detections_per_frame": per_frame,
                "variant": name,
                "us_per_result": round(spent / n * 1e6, 2),
                "results_per_cpu_s": round(n / spent),
            }
        )
    return rows


#: the output stage section's zone and line (objects walk right across both)
OUTPUT_SHAPES = {
    "zones": [{"id": "z", "points": [[0.3, 0.1], [0.5, 0.1], [0.5, 0.5], [0.3, 0.5]]}],
    "lines": [{"id": "l", "start": [0.6, 0], "end": [0.6, 1]}],
}


# ---- the whole pipeline, tracking off and on --------------------------------------------------
def pipeline(
    rounds: int,
    seconds: float,
    streams: int,
    baseline_inflight: bool = False,
    capacity_variant: bool = False,
) -> list[dict[str, Any]]:
    """cpu_pipeline.py's visionflow run (files read flat out, bundled detector, Redis), with
    no stream tracked and with every stream tracked (a zone and a line each, then with
    appearance as well), alternating; ``baseline_inflight``: each round also runs no stream
    tracked and appearance on every stream with ONNX Runtime's ``inflight`` 1 (the engine
    before batches overlapped the inference worker's own work), row ``ort_inflight`` 1;
    ``capacity_variant``: and both with the default engine but 2 batches queued per worker
    (``batching.max_inflight_per_worker``; its default is 2 x the engine's inflight), row
    ``worker_capacity`` 2."""
    from bench.cpu_pipeline import TRACKING_MODES, make_clips, run_visionflow
    from visionflow.engines.ort import OnnxRuntimeConfig
    from visionflow.redis_server import EmbeddedRedis

    clips = make_clips(streams, 640, 360, ROOT / ".cache" / "bench-clips")
    default = OnnxRuntimeConfig().inflight
    runs: list[tuple[str, int, int | None]] = [(name, default, None) for name in TRACKING_MODES]
    if baseline_inflight:
        runs += [("off", 1, None), ("appearance", 1, None)]
    if capacity_variant:
        runs += [("off", default, 2), ("appearance", default, 2)]
    rows = []
    with EmbeddedRedis() as server:
        for r in range(rounds):
            for name, inflight, capacity in runs:
                engine = {"backend": "onnxruntime", "inflight": inflight}
                section = TRACKING_MODES[name]
                out = run_visionflow(clips, seconds, server.url, 8, section, engine, capacity)
                rows.append(
                    {
                        "round": r,
                        "tracking": name,
                        "ort_inflight": inflight,
                        "worker_capacity": capacity,
                        "mean_batch": round(out["mean_batch"], 2),
                        "fps": round(out["fps"], 1),
                        "cpu_ms_per_frame": round(out["cpu_ms_per_frame"], 2),
                        "dropped": out["dropped"],
                    }
                )
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of the means, each within one ``ort_inflight`` (the default's keys bare, the
    baseline's with ``_inflight1``), and the default's against the baseline's."""
    from visionflow.engines.ort import OnnxRuntimeConfig

    def mean(key: str, mode: str, inflight: int, capacity: int | None = None) -> float | None:
        values = [
            r[key]
            for r in rows
            if r["tracking"] == mode
            and r.get("ort_inflight", 1) == inflight
            and r.get("worker_capacity") == capacity
        ]
        return sum(values) / len(values) if values else None

    def ratio(key: str, a: str, ia: int, b: str, ib: int) -> float | None:
        top, bottom = mean(key, a, ia), mean(key, b, ib)
        return None if top is None or not bottom else round(top / bottom, 3)  # 0: runs failed

    def per_round(mode: str, inflight: int) -> list[float]:
        """frames/s of ``mode`` over untracked's, round by round (the noise beside the mean)."""
        fps = {
            (r["round"], r["tracking"]): r["fps"]
            for r in rows
            if r.get("ort_inflight", 1) == inflight and r.get("worker_capacity") is None
        }
        rounds = sorted({r for r, _ in fps})
        return [
            round(fps[r, mode] / fps[r, "off"], 3)
            for r in rounds
            if (r, mode) in fps and fps.get((r, "off"))
        ]

    out: dict[str, Any] = {}
    default = OnnxRuntimeConfig().inflight
    for inflight, suffix in ((default, ""), (1, "_inflight1")):
        for mode in ("on", "appearance"):
            for key, name in (("fps", "fps_ratio"), ("cpu_ms_per_frame", "cpu_per_frame_ratio")):
                value = ratio(key, mode, inflight, "off", inflight)
                if value is not None:
                    out[f"{name}_{mode}_off{suffix}"] = value
            if per_round(mode, inflight):
                out[f"fps_ratio_{mode}_off{suffix}_by_round"] = per_round(mode, inflight)
    for mode in ("off", "appearance"):
        value = ratio("fps", mode, default, mode, 1)
        if value is not None and default != 1:
            out[f"fps_ratio_{mode}_inflight{default}_vs_1"] = value
        capped, base = mean("fps", mode, default, 2), mean("fps", mode, default)
        if capped is not None and base:
            out[f"fps_ratio_{mode}_capacity2_vs_default"] = round(capped / base, 3)
    return out


# ---- install cost ------------------------------------------------------------------------------
def install_cost(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import importlib.metadata as md

    have = {
        d.metadata["Name"].lower().replace("_", "-")
        for d in md.distributions()
        if d.metadata["Name"]
    }
    extra: dict[str, float] = {}
    for dist in md.distributions(path=[path]):
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in have:
            continue
        size = sum(
            (Path(path) / str(f)).stat().st_size
            for f in dist.files or []
            if (Path(path) / str(f)).is_file()
        )
        extra[name] = round(size / 2**20, 1)
    return {
        "extra_packages_mb": dict(sorted(extra.items(), key=lambda kv: -kv[1])),
        "total_mb": round(sum(extra.values()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trackers-path", default=None, help="a --target dir holding 'trackers'")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each scene")
    parser.add_argument("--fps", type=int, default=10, help="frame rate of the scenes")
    parser.add_argument(
        "--seeds",
        default=",".join(f"{k}:{v}" for k, v in HELD_OUT.items()),
        help="scenes as kind:seed, comma-separated (a kind may repeat)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="pipeline runs per mode")
    parser.add_argument("--pipeline-seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=8, help="pipeline section's streams")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    parser.add_argument(
        "--baseline-inflight",
        action="store_true",
        help="pipeline section: also untracked and appearance with ONNX Runtime inflight 1",
    )
    parser.add_argument(
        "--capacity-variant",
        action="store_true",
        help="pipeline section: also untracked and appearance with 2 batches queued per worker",
    )
    parser.add_argument(
        "--coded",
        action="store_true",
        help="truth section: also on the scenes encoded (H.264) and decoded as the "
        "pipeline's truth test serves and ingest reads them",
    )
    args = parser.parse_args()
    seeds = [(k, int(v)) for k, v in (s.split(":") for s in args.seeds.split(","))]
    install = install_cost(args.trackers_path)  # before it is on sys.path
    why_not = trackers_available(args.trackers_path)
    have_theirs = why_not is None
    if why_not:
        print(f"trackers not importable ({why_not}): visionflow only")
    result: dict[str, Any] = {"args": vars(args), "trackers_import": why_not or "ok"}
    skip = set(args.skip.split(","))
    if "speed" not in skip:
        result["speed"] = speed(have_theirs)
        print(table(result["speed"], list(result["speed"][0])))
    if "descriptor" not in skip:
        result["descriptor"] = descriptor_cost()
        print(table(result["descriptor"], list(result["descriptor"][0])))
    if "accuracy" not in skip:
        result["accuracy"] = accuracy(args.seconds, args.fps, have_theirs, seeds)
        columns = ["scene", "seed", "tracker", "idf1", "mota", "id_switches", "frames", "objects"]
        print(table(result["accuracy"], columns))
    if "truth" not in skip:
        result["truth"] = truth_rows(args.seconds, args.fps, seeds)
        if args.coded:
            result["truth"] += truth_rows(args.seconds, args.fps, seeds, coded=True)
        columns = ["scene", "seed", "video", "tracker", "idf1", "mota", "id_switches"]
        columns += ["count_diff", "truth_counts", "count_diff_test_keys"]
        columns += ["fair_count_diff_test_keys", "truth_counts_test_keys"]
        print(table(result["truth"], columns))
    if "failures" not in skip:
        result["failures"] = failures(args.seconds, args.fps, seeds)
        print(table(result["failures"], list(result["failures"][0])))
    if "output_stage" not in skip:
        result["output_stage"] = output_stage(0) + output_stage(5)
        print(table(result["output_stage"], list(result["output_stage"][0])))
    if "pipeline" not in skip:
        rows = pipeline(
            args.rounds,
            args.pipeline_seconds,
            args.streams,
            args.baseline_inflight,
            args.capacity_variant,
        )
        result["pipeline"] = {"runs": rows, **summarise(rows)}
        print(table(rows, list(rows[0])))
        print(json.dumps(summarise(rows)))
    result["install"] = install
    print(json.dumps(result["install"]))
    print("wrote", write_result("tracking", result))


if __name__ == "__main__":
    main()
