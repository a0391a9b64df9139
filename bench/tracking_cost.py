#!/usr/bin/env python3
"""The tracking processor's CPU per frame: this tree against a baseline tree, interleaved.

    .venv/bin/python bench/tracking_cost.py [--baseline REF] [--rounds 7] [--frames 200]

(``--baseline`` defaults to ``HEAD``: name the commit before a change once it is committed.)

What a tracked stream costs the output process (issue 11: tracking must not move the data
plane's figures by more than 5 %): ``TrackingProcessor.process`` (the tracker, the zones and
lines, the detections given their ids) over the same synthetic frames — 8 streams, each with
``--objects`` objects (people and cars) walking both ways across a 640x360 frame and past
each other, boxes jittered by a pixel, scores 0.3-0.95 (some take the low-score stage, some
are dropped), 5 % of the detections missing (tracks lost and found again), 30 frames/s, the
frames of the streams interleaved as the output stage gets them — for three sections of
``tracking``: the tracker alone, a zone and a line (``bench/cpu_pipeline.py``'s ``SHAPES``),
and that with re-identification by appearance (a fixed descriptor per object).

The baseline is ``git archive REF`` (default ``HEAD``: the last commit, against the working
tree) unpacked into a temporary folder, or ``--baseline-tree`` (where there is no git, as on
the lent machines: a ``git archive`` unpacked beforehand).  Each (round, tree) is a fresh
process that imports that tree's ``visionflow`` and times every case (CPU time of the
process, the best of 3 passes); the trees alternate, the first one changing each round.  Per
case: the median µs per frame of each tree, and the ratio this / baseline per round
(geometric mean, lowest and highest).  Every child also returns a digest of what the
processor gave (track ids, events, count increments): the ``same output`` column says
whether the two trees agree frame for frame.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in the pipeline's processes

ROOT = Path(__file__).resolve().parents[1]
CASES = ("tracker", "zone + line", "zone + line + appearance")
STREAMS = 8
SIZE = (640, 360)
LABELS = ("person", "car")  # object j has class j % 2
MISSED = 0.05  # a detection missing from its frame (the tracker's lost-track path)


def frames(objects: int, count: int, tree_modules: dict[str, Any], looks: bool) -> list[Any]:
    """The synthetic frames (the same numbers in every process: one seed)."""
    import numpy as np

    Detection = tree_modules["Detection"]
    FrameRef, FrameResult = tree_modules["FrameRef"], tree_modules["FrameResult"]
    lb = tree_modules["letterbox_geometry"](*SIZE, 320, 320)
    rng = np.random.default_rng(7)
    x0 = rng.uniform(0, 580, (STREAMS, objects))
    y0 = rng.uniform(0, 200, (STREAMS, objects))
    vx = rng.uniform(-4, 4, (STREAMS, objects))
    jitter = rng.normal(0, 1, (count, STREAMS, objects, 4))
    scores = rng.uniform(0.3, 0.95, (count, STREAMS, objects))  # some low, some dropped
    missed = rng.uniform(0, 1, (count, STREAMS, objects)) < MISSED
    vectors = rng.uniform(0, 1, (STREAMS, objects, 64))
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    descriptors = vectors.astype(np.float16)
    out = []
    for seq in range(count):
        for s in range(STREAMS):
            dets = []
            for j in range(objects):
                if missed[seq, s, j]:
                    continue
                x = (x0[s, j] + vx[s, j] * seq) % 580
                box = np.array([x, y0[s, j], x + 60, y0[s, j] + 150]) + jitter[seq, s, j]
                look = descriptors[s, j].tobytes() if looks else None
                score = float(scores[seq, s, j])
                label = LABELS[j % len(LABELS)]
                dets.append(Detection(j % 2, label, score, *map(float, box), appearance=look))
            ref = FrameRef(f"s{s}", seq, seq / 30, 1e9 + seq / 30, 1.0, "p", 0, lb)
            out.append(FrameResult(ref, tuple(dets), 1.0, 1.0, 8, 0, 1e9))
    return out


def child(tree: Path, objects: int, count: int) -> dict[str, Any]:
    """In a fresh process: every case timed with ``tree`` 's visionflow."""
    sys.path.insert(0, str(tree))
    import visionflow.tracking.processor as processor_module
    from bench.cpu_pipeline import SHAPES
    from visionflow.pipeline.frames import Detection, FrameRef, FrameResult
    from visionflow.pipeline.letterbox import letterbox_geometry
    from visionflow.tracking.config import TrackingConfig
    from visionflow.tracking.processor import TrackingProcessor

    imported = Path(sys.modules["visionflow"].__file__ or "")
    assert imported == tree / "visionflow" / "__init__.py", f"wrong tree: {imported}"
    processor_module.seed_id = lambda now=None: 1  # type: ignore[assignment]  # ids: 1, 2, ...
    modules = {
        "Detection": Detection,
        "FrameRef": FrameRef,
        "FrameResult": FrameResult,
        "letterbox_geometry": letterbox_geometry,
    }
    sections = {
        "tracker": {},
        "zone + line": SHAPES,
        "zone + line + appearance": {**SHAPES, "appearance_s": 3.0},
    }
    out: dict[str, Any] = {}
    for case, section in sections.items():
        data = frames(objects, count, modules, looks="appearance" in case)
        config = TrackingConfig.model_validate(section)
        best, digest = math.inf, ""
        for _ in range(3):
            processor = TrackingProcessor({f"s{s}": config for s in range(STREAMS)})
            start = time.process_time()
            results = [processor.process([r])[0] for r in data]
            best = min(best, time.process_time() - start)
            digest = output_digest(results)
        out[case] = {"us_per_frame": 1e6 * best / len(data), "digest": digest}
    return out


def output_digest(results: list[Any]) -> str:
    """What the processor gave, frame by frame: every detection's track id, every event
    whole, the count increments (each stream's first id is 1: :func:`child` fixes it)."""
    import dataclasses

    h = hashlib.sha256()
    for r in results:
        ids = [d.track_id for d in r.detections]
        events = [dataclasses.astuple(e) for e in r.events]
        h.update(repr((r.frame.stream_id, ids, events, list(r.counts))).encode())
    return h.hexdigest()[:16]


def baseline_tree(ref: str, folder: Path) -> Path:
    """``git archive ref`` unpacked into ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_child(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree)]
    command += ["--objects", str(args.objects), "--frames", str(args.frames)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"child for {tree} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarise(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for case in CASES:
        this = [r["this"][case]["us_per_frame"] for r in rounds]
        base = [r["baseline"][case]["us_per_frame"] for r in rounds]
        ratios = [a / b for a, b in zip(this, base, strict=True)]
        digests = {(r["this"][case]["digest"], r["baseline"][case]["digest"]) for r in rounds}
        rows.append(
            {
                "case": case,
                "baseline_us": round(statistics.median(base), 1),
                "this_us": round(statistics.median(this), 1),
                "ratio": round(math.exp(statistics.fmean(math.log(x) for x in ratios)), 3),
                "ratio_low": round(min(ratios), 3),
                "ratio_high": round(max(ratios), 3),
                "same_output": all(a == b for a, b in digests),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git ref of the baseline tree")
    parser.add_argument(
        "--baseline-tree", type=Path, default=None, help="a baseline tree already unpacked"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--objects", type=int, default=4, help="per frame of every stream")
    parser.add_argument("--frames", type=int, default=200, help="per stream")
    parser.add_argument("--out", type=Path, default=None, help="results folder (bench/results)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.objects, args.frames)))
        return
    sys.path.insert(0, str(ROOT))
    from bench.common import table, write_result

    with tempfile.TemporaryDirectory(prefix="vf-baseline-") as folder:
        base = args.baseline_tree or baseline_tree(args.baseline, Path(folder))
        trees = {"this": ROOT, "baseline": base.resolve()}
        rounds = []
        for number in range(args.rounds):
            order = ["this", "baseline"] if number % 2 == 0 else ["baseline", "this"]
            rounds.append({name: run_child(trees[name], args) for name in order})
            print(f"round {number}: " + json.dumps(rounds[-1]), flush=True)
    rows = summarise(rounds)
    print(table(rows, list(rows[0])))
    path = write_result(
        "tracking_cost",
        {"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds, "rows": rows},
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
