#!/usr/bin/env python3
"""visionflow vs a naive baseline on the CPU: same streams, same model, one run.

    .venv/bin/python bench/cpu_pipeline.py [--streams 8] [--seconds 20] [--size 640x360]

Streams are synthetic H.264 clips (visionflow's scene generator) read as fast as they decode
(``realtime: false``, looped), so both sides run flat out.

- **baseline**: one thread per stream, PyAV decode, letterbox, ONNX Runtime at batch 1 (one
  shared session), one ``XADD`` per frame — the loop most people write first;
- **visionflow**: the real pipeline (ingest processes, shared memory, dynamic batching,
  ONNX Runtime worker, pipelined Redis writes).

Reports frames published per second, CPU seconds per published frame (all processes), and the
ratios.  Writes ``bench/results/cpu_pipeline-<date>.json``.  A private Redis-compatible server
is started for the run.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import table, write_result
from visionflow.config import AppConfig, parse_config
from visionflow.engines import create_engine
from visionflow.engines.ort import OnnxRuntimeConfig
from visionflow.models import resolve_model
from visionflow.pipeline.letterbox import (
    letterbox_geometry,
    scale_frame_into,
    to_network_input,
)
from visionflow.pipeline.postprocess import detections_for_frame
from visionflow.redis_server import EmbeddedRedis
from visionflow.scenes.clips import write_clip
from visionflow.scenes.generator import SceneSpec
from visionflow.workers.supervisor import Pipeline


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_clips(n: int, width: int, height: int, folder: Path) -> list[Path]:
    clips = []
    for i in range(n):
        path = folder / f"bench-{width}x{height}-s{100 + i}.mp4"
        if not path.is_file():
            write_clip(SceneSpec(width, height, seed=100 + i), path, 10.0, "h264")
        clips.append(path)
    return clips


def run_baseline(clips: list[Path], seconds: float, redis_url: str) -> dict[str, float]:
    config = parse_config({})
    model = resolve_model(config)
    # ONNX Runtime's own defaults, as a naive loop would have them (spinning threads, one
    # batch at a time)
    engine = create_engine(OnnxRuntimeConfig(spin=True, inflight=1), model.path, 1)
    client = redis.Redis.from_url(redis_url)
    width, height = model.input_size
    stop = threading.Event()
    counts = [0] * len(clips)

    def worker(index: int, clip: Path) -> None:
        canvas = np.empty((height, width, 3), np.uint8)
        while not stop.is_set():
            with av.open(str(clip)) as container:
                for frame in container.decode(video=0):
                    if stop.is_set():
                        return
                    lb = letterbox_geometry(frame.width, frame.height, width, height)
                    scale_frame_into(frame, canvas, lb)
                    out = engine.infer(to_network_input(canvas[None]))
                    dets = detections_for_frame(
                        out[0], lb, model.class_names, model.conf_threshold, 0.45, 300
                    )
                    client.xadd(
                        f"baseline:detections:{index}",
                        {"seq": counts[index], "n": len(dets)},
                        maxlen=1000,
                        approximate=True,
                    )
                    counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(clips)]
    cpu0, t0 = cpu_seconds(), time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    frames = sum(counts)
    return {
        "frames": frames,
        "seconds": elapsed,
        "fps": frames / elapsed,
        "cpu_ms_per_frame": 1000 * cpu / max(frames, 1),
        "decoded": frames,
        "dropped": 0,
    }


#: every stream's ``tracking`` section per mode (bench/tracking.py, bench/cpu_processes.py):
#: untracked, a zone and a line, and that with re-identification by appearance (the
#: inference worker then describes every box)
SHAPES: dict[str, Any] = {
    "zones": [{"id": "z", "points": [[0.6, 0.3], [0.9, 0.3], [0.9, 1], [0.6, 1]]}],
    "lines": [{"id": "l", "start": [0.3, 0], "end": [0.3, 1]}],
}
TRACKING_MODES: dict[str, dict[str, Any] | None] = {
    "off": None,
    "on": SHAPES,
    "appearance": {**SHAPES, "appearance_s": 3.0},
}


def visionflow_config(
    clips: list[Path],
    redis_url: str,
    batch: int,
    tracking: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    capacity: int | None = None,
) -> AppConfig:
    """The visionflow run's config: every clip a stream read flat out (``tracking``: a stream
    ``tracking`` section given to every stream; ``engine``: the engine section, else the
    default; ``capacity``: ``batching.max_inflight_per_worker``, else the default)."""
    streams = [
        {"id": f"s{i}", "url": str(c), "loop": True, "realtime": False}
        | ({"tracking": tracking} if tracking is not None else {})
        for i, c in enumerate(clips)
    ]
    return parse_config(
        {
            "streams": streams,
            "redis": {"url": redis_url, "key_prefix": "bench"},
            "source": {"allowed_schemes": ["file"]},
            "batching": {"max_batch": batch, "max_delay_ms": 10, "buffer_per_stream": 4}
            | ({"max_inflight_per_worker": capacity} if capacity is not None else {}),
            "workers": {"inference_workers": 1},
        }
        | ({"engine": engine} if engine is not None else {})
    )


def run_visionflow(
    clips: list[Path],
    seconds: float,
    redis_url: str,
    batch: int,
    tracking: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    capacity: int | None = None,
) -> dict[str, float]:
    """``tracking``: a stream ``tracking`` section given to every stream; ``engine``: the
    engine section; ``capacity``: batches queued per worker (bench/tracking.py)."""
    config = visionflow_config(clips, redis_url, batch, tracking, engine, capacity)
    cpu0 = cpu_seconds()
    pipeline = Pipeline(config, redis_url, log_level=logging.WARNING)
    pipeline.start()
    pipeline.wait_ready(120)
    time.sleep(3)  # warm-up: decoders and the engine reach steady state
    before = pipeline.status()
    t0 = time.monotonic()
    time.sleep(seconds)
    after = pipeline.status()
    elapsed = time.monotonic() - t0
    pipeline.stop()
    cpu = cpu_seconds() - cpu0  # whole run incl. warm-up: an upper bound per frame
    published = sum(s.published for s in after.streams) - sum(s.published for s in before.streams)
    total_published = sum(s.published for s in pipeline.status().streams)
    decoded = sum(s.frames for s in after.streams) - sum(s.frames for s in before.streams)
    workers = after.workers
    return {
        "frames": published,
        "seconds": elapsed,
        "fps": published / elapsed,
        "cpu_ms_per_frame": 1000 * cpu / max(total_published, 1),
        "decoded": decoded,
        "dropped": sum(sum(s.drops.values()) for s in after.streams)
        - sum(sum(s.drops.values()) for s in before.streams),
        "mean_batch": sum(w.frames for w in workers) / max(1, sum(w.batches for w in workers)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--clips", type=Path, default=Path(".cache/bench-clips"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    clips = make_clips(args.streams, width, height, args.clips)
    with EmbeddedRedis() as server:
        baseline = run_baseline(clips, args.seconds, server.url)
        ours = run_visionflow(clips, args.seconds, server.url, args.batch)
    rows = [
        {"pipeline": name, **{k: round(v, 2) for k, v in r.items()}}
        for name, r in (("baseline (thread/stream, batch 1)", baseline), ("visionflow", ours))
    ]
    ratios = {
        "fps_ratio": round(ours["fps"] / baseline["fps"], 2),
        "cpu_per_frame_ratio": round(ours["cpu_ms_per_frame"] / baseline["cpu_ms_per_frame"], 2),
    }
    print(
        table(
            rows,
            [
                "pipeline",
                "fps",
                "cpu_ms_per_frame",
                "frames",
                "decoded",
                "dropped",
                "mean_batch",
                "seconds",
            ],
        )
    )
    print(
        f"visionflow / baseline: {ratios['fps_ratio']}x frames/s, "
        f"{ratios['cpu_per_frame_ratio']}x CPU per published frame"
    )
    path = write_result(
        "cpu_pipeline",
        {
            "command": " ".join(sys.argv),
            "streams": args.streams,
            "size": args.size,
            "model": "builtin:demo (320x320)",
            "baseline": baseline,
            "visionflow": ours,
            "ratios": ratios,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
