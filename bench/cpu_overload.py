#!/usr/bin/env python3
"""CPU overload: shed load before decode vs decode everything then drop, same run (issue 12).

    .venv/bin/python bench/cpu_overload.py [--streams 10] [--seconds 30] [--analysis-fps F]

N live RTSP cameras (1280x720 at 25 fps, H.264, a keyframe every second: by default a
synthetic camera scene rendered once, streamed in real time, so that the server's CPU goes to
packetising, not to encoding) served by ``tests/rtsp_server.py`` (GStreamer, run with
``/usr/bin/python3``) -> the full pipeline
(:class:`visionflow.workers.supervisor.Pipeline`, ONNX Runtime, bundled demo model) -> a
private ``redis-server``.  Two modes, one after the other on the same machine:

- ``decode-all``: ``source.shed_load: false`` and no ``analysis_fps``: every frame is decoded
  and letterboxed, the scheduler drops what inference cannot take (``inference_behind``);
- ``shed``: ``source.shed_load: true``: the scheduler's fair-share controller gives each
  stream a target (or ``--analysis-fps`` fixes one): frames beyond it are not decoded
  (``nonkey`` when the target is near the keyframe rate, GOP tails otherwise) or discarded
  before the letterbox.

Reports published frames/s, per-stream published fps (min/max vs the equal share of what
was published), drops by reason, decode modes and p50/p99 capture->publish latency from the
entries' ``latency_ms``; writes ``bench/results/cpu_overload-<date>.json``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import table, write_result
from visionflow.config import parse_config
from visionflow.redis_server import EmbeddedRedis, free_port
from visionflow.scenes.clips import write_clip
from visionflow.scenes.generator import SceneSpec
from visionflow.schema import detections_key, parse_entry
from visionflow.workers.supervisor import Pipeline

ROOT = Path(__file__).resolve().parents[1]


def start_rtsp(mounts: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    args = ["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), "--port", str(port)]
    for name, spec in mounts.items():
        args += ["--mount", f"{name}={spec}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY"):
            return proc, port
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the RTSP server did not start (needs gst-rtsp-server for /usr/bin/python3)")


def scene_clip(size: str, fps: int, seconds: float, folder: Path) -> Path:
    """A synthetic camera scene (textured background, noise, moving objects), H.264 with a
    keyframe every second, rendered once and cached."""
    width, height = (int(v) for v in size.split("x"))
    path = folder / f"overload-{width}x{height}-{fps}fps-{seconds:.0f}s.mp4"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_clip(SceneSpec(width, height, fps=fps, seed=7), path, seconds, "h264")
    return path


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def run_mode(
    mode: str, ids: list[str], port: int, redis_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    shed = mode != "decode-all"
    prefix = f"overload-{mode}"
    lag = {"shed_lag_limit_s": 0.0} if mode == "shed-lag-off" else {}
    streams = [
        {
            "id": sid,
            "url": f"rtsp://127.0.0.1:{port}/{sid}",
            **({"analysis_fps": args.analysis_fps} if shed and args.analysis_fps else {}),
        }
        for sid in ids
    ]
    # without --analysis-fps the shed mode finds each stream's fair share by itself (the
    # scheduler's FairShareController -> SetAnalysisRates -> StreamReader.set_share)
    config = parse_config(
        {
            "streams": streams,
            "redis": {"url": redis_url, "key_prefix": prefix},
            "batching": {"max_batch": 8, "max_delay_ms": 20, "buffer_per_stream": args.buffer},
            "workers": {"inference_workers": 1},
            "source": {"shed_load": shed, "shed_gop_prefix": shed and args.gop_prefix, **lag},
        }
    )
    pipeline = Pipeline(config, redis_url, log_level=logging.WARNING)
    pipeline.start()
    try:
        pipeline.wait_ready(120)
        time.sleep(args.warmup)
        before, t0, wall0 = pipeline.status(), time.monotonic(), time.time()
        time.sleep(args.seconds)
        after, elapsed, wall1 = pipeline.status(), time.monotonic() - t0, time.time()
        modes = Counter(s.decode_mode for s in after.streams)
    finally:
        pipeline.stop()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    latencies: list[float] = []
    per_stream: dict[str, float] = {}
    for sid in ids:
        b, a = before.stream(sid), after.stream(sid)
        per_stream[sid] = (a.published - b.published) / elapsed
        for entry_id, fields in client.xrange(detections_key(prefix, sid)):
            entry = parse_entry(entry_id, fields)
            if wall0 <= entry.capture_ts <= wall1:
                latencies.append(float(entry.latency_ms["total"]))
    drops: Counter[str] = Counter()
    for sid in ids:
        drops.update(after.stream(sid).drops)
        drops.subtract(before.stream(sid).drops)
    published = sum(per_stream.values())
    fair = published / len(ids)
    announced = sum(after.stream(s).frames - before.stream(s).frames for s in ids) / elapsed
    return {
        "mode": mode,
        "shed_lag_limit_s": config.source.shed_lag_limit_s if shed else None,
        "seconds": round(elapsed, 1),
        "published_fps": round(published, 2),
        "announced_fps": round(announced, 2),
        "fair_share_fps": round(fair, 3),
        "stream_fps_min": round(min(per_stream.values()), 3),
        "stream_fps_max": round(max(per_stream.values()), 3),
        "min_vs_fair": round(min(per_stream.values()) / fair, 3) if fair else None,
        "max_vs_fair": round(max(per_stream.values()) / fair, 3) if fair else None,
        "per_stream_fps": {k: round(v, 3) for k, v in per_stream.items()},
        "drops_per_s": {k: round(v / elapsed, 2) for k, v in drops.items() if v},
        "decode_modes": dict(modes),
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p99_ms": percentile(latencies, 0.99),
        "latency_mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument(
        "--buffer", type=int, default=2, help="batching.buffer_per_stream (both modes)"
    )
    parser.add_argument(
        "--gop-prefix", action="store_true", help="shed mode: source.shed_gop_prefix (burst)"
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument(
        "--source",
        choices=("scene", "test"),
        default="scene",
        help="scene: a synthetic camera clip streamed in real time (pre-encoded, so the RTSP "
        "server does not encode); test: videotestsrc encoded live by the server",
    )
    parser.add_argument("--clips", type=Path, default=ROOT / ".cache" / "bench-clips")
    parser.add_argument(
        "--lag-off",
        action="store_true",
        help="also run shed with source.shed_lag_limit_s 0 (the decoder-behind signal off; "
        "it is on by default)",
    )
    parser.add_argument(
        "--analysis-fps",
        type=float,
        default=None,
        help="shed mode: a fixed analysis_fps per stream (default: none, the fair-share "
        "controller finds each stream's share)",
    )
    args = parser.parse_args()
    ids = [f"cam{i}" for i in range(args.streams)]
    if args.source == "scene":
        # every client gets its own pipeline, so each mode's run starts at the clip's frame 0
        clip = scene_clip(args.size, args.fps, 2 * (args.warmup + args.seconds) + 30, args.clips)
        spec = f"file:{clip}"
    else:
        spec = f"test:{args.size}@{args.fps}"
    rtsp, port = start_rtsp(dict.fromkeys(ids, spec))
    try:
        with EmbeddedRedis(binary=shutil.which("redis-server")) as server:
            modes = ["decode-all", "shed"] + (["shed-lag-off"] if args.lag_off else [])
            results = [run_mode(m, ids, port, server.url, args) for m in modes]
    finally:
        rtsp.kill()
        rtsp.wait()
    base, shed = results[:2]
    ratio = round(shed["published_fps"] / max(base["published_fps"], 1e-9), 2)
    columns = [
        "mode",
        "published_fps",
        "announced_fps",
        "fair_share_fps",
        "stream_fps_min",
        "stream_fps_max",
        "min_vs_fair",
        "max_vs_fair",
        "latency_p50_ms",
        "latency_p99_ms",
    ]
    print(table(results, columns))
    for r in results:
        print(f"{r['mode']}: drops/s {r['drops_per_s']}, decode modes {r['decode_modes']}")
    print(f"shed / decode-all: {ratio}x published frames/s")
    path = write_result(
        "cpu_overload",
        {
            "command": " ".join(sys.argv),
            "streams": args.streams,
            "camera": f"rtsp {args.source} {args.size}@{args.fps} h264, keyframe every "
            f"{args.fps} frames",
            "model": "builtin:demo (320x320), onnxruntime, 1 inference worker",
            "analysis_fps": args.analysis_fps,
            "buffer_per_stream": args.buffer,
            "shed_gop_prefix": args.gop_prefix,
            "results": results,
            "ratio_published_fps": ratio,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
