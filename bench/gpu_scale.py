#!/usr/bin/env python3
"""Issue 12 on the lent GPU machine: streams per GPU, scaling over GPUs, a worker killed.

    python bench/gpu_scale.py --out DIR [--sections clips,ramp_1gpu,ramp_all,kill]

The pipeline under test: 1080p30 H.264 real-time streams (a looped scene clip), NVDEC decode
with frames kept on the GPU (CUDA IPC), the ``torch-cuda`` backend (PyTorch running the
YOLOv8n-architecture ONNX model, fp16, CUDA graphs), valkey-server as Redis.  Every figure
comes from torch-cuda; none from TensorRT (not installable on the lent machines).

Sections (each in its own subprocess with a time limit, ``DIR/<section>.json``):
  clips       the 1080p30 clip (bench/gpu_bench.py's renderer)
  ramp_1gpu   ``workers.gpus: [0]``: streams added in steps until a window shows drops or p99 >
              250 ms, then straight to 2x the sustained count (published fps there vs the peak,
              slowest stream vs the fair share, p99); ``VF_RAMP_LEVELS`` the steps,
              ``VF_RAMP_ENGINE`` engine settings as JSON (``{"compile": true}``),
              ``VF_RAMP_INGEST`` ingest processes (default 0: automatic),
              ``VF_RAMP_OVERRIDES`` other settings by section as JSON,
              ``VF_RAMP_STAGGER_S`` spreads each step's new streams over that many seconds
              (default 0: all at once, every stream's clip in phase; 1.0: one GOP, keyframes
              and frame times spread as unsynchronised cameras' are), ``VF_RAMP_TOP`` an
              overload step measured after the levels whatever they gave (a lease whose
              first level already drops still gets its 2x figure), ``VF_RAMP_LATE_S``
              measures that step again this much later (the first window moves to
              ``early``: a controller still converging vs settled); every step records
              ``governor_trace``, the controller once a second, and
              ``trace_published_fps``, the published rate over the trace after the first
              window (the sawtooth of the controller averaged over tens of seconds; one 8 s
              window can land on a peak or a trough of it)
  ramp_all    the same over every GPU (``workers.gpus`` unset)
  kill        every GPU, a fixed stream count; one inference worker is SIGKILLed mid-run:
              batches per worker before/after, drops by reason, ledger violations, and the
              accounting identity after stop
  engine      where an inference worker's time goes: the torch-cuda engine at batch 32 from host
              frames, one batch at a time vs two in flight, NMS candidates 1024 vs 256, and the
              model's forward alone (CUDA graph replay)
  ramp_1gpu_c256  ramp_1gpu with ``nms_candidates: 256``
  procs       GPU 0, 64 streams, one window each: 8 ingest processes with the torch letterbox
              and with the fused NV12 kernel, 4 processes fused, 8 fused with 256 NMS
              candidates (each ingest process is its own CUDA context on the GPU)
  scale       1 GPU vs every GPU, ``VF_SCALE_STREAMS`` (160) streams, one window each
              (published fps ratio)
  variants    ``VF_VARIANT_STREAMS`` (128) streams on GPU 0, one window per config variant
              of ``VF_VARIANTS`` (``name=batching.max_inflight_per_worker:4,...;...``)
  procs_n     ``VF_PROCS_STREAMS`` (96) streams on GPU 0 with each ingest process count in
              ``VF_PROCS`` (``1,2,4``)
  nvdec_gil   does PyNvVideoCodec's ``Decode`` hold the GIL: N decoding threads of one
              process vs one, beside a pure-Python counting thread
  profile     ``py-spy record`` (GIL-holding samples, and all active ones) of the ingest
              processes and the worker at ``VF_DIAG_STREAMS`` streams, ``VF_DIAG_PROCS``
              ingest processes
  diag        stream states, CPU share per process and py-spy stack dumps at many streams
  legacy_1gpu the pipeline before the rework (``--legacy DIR``, a ``git archive`` of it) on GPU 0,
              same ramp: the baseline in the same call

Each window also samples NVML (GPU busy %, NVDEC %) and the scheduling process's CPU share,
to say which component limits at the top.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_section  # noqa: E402

LIMITS = {
    "clips": 150,
    "engine": 240,
    "ramp_1gpu": 560,
    "ramp_1gpu_c256": 560,
    "ramp_all": 560,
    "kill": 300,
    "legacy_1gpu": 420,
    "procs": 420,
    "per_gpu": 420,
    "scale": 560,
    "diag": 300,
    "nvdec_gil": 120,
    "procs_n": 560,
    "variants": 580,
    "profile": 240,
}
P99_MS = 250.0
# streams a pipeline starts with before the rest are added (as the ramps do): 128 streams
# opened at once on one GPU kept the inference worker from getting ready within 300 s
START_STREAMS = 32


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class NvmlSampler:
    """Mean GPU and NVDEC utilisation per GPU over a window (5 samples a second)."""

    def __init__(self) -> None:
        self.samples: list[list[tuple[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
            while not self._stop.wait(0.2):
                self.samples.append(
                    [
                        (
                            pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                            pynvml.nvmlDeviceGetDecoderUtilization(h)[0],
                        )
                        for h in handles
                    ]
                )
        except Exception as exc:  # NVML missing: report nothing rather than fail the run
            log(f"nvml sampling off: {exc}")

    def __enter__(self) -> NvmlSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sampling (again: nothing more)."""
        self._stop.set()
        self._thread.join(timeout=2)

    def summary(self) -> dict[str, list[float]]:
        if not self.samples:
            return {}
        n = len(self.samples[0])
        return {
            "gpu_busy_pct": [
                round(sum(s[i][0] for s in self.samples) / len(self.samples), 1) for i in range(n)
            ],
            "nvdec_pct": [
                round(sum(s[i][1] for s in self.samples) / len(self.samples), 1) for i in range(n)
            ],
        }


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def measured_window(p: Any, client: Any, prefix: str, seconds: float) -> dict[str, Any]:
    from bench.gpu_bench import _window

    c0, t0 = _cpu(), time.monotonic()
    share: list[float] = []
    governor: list[dict[str, Any] | None] = []
    nv = NvmlSampler()

    def window_closed() -> None:  # before the window's entries are read in this process
        nv.stop()
        share.append(round((_cpu() - c0) / (time.monotonic() - t0), 2))
        governor.append(_governor(p))  # before reading entries back can move it

    with nv:
        r = _window(p, client, prefix, seconds, at_end=window_closed)
    r["scheduler_cpu_share"] = share[0] if share else None
    r.update(nv.summary())
    status = p.status()
    r["ledger_violations"] = getattr(status, "ledger_violations", None)
    r["decode_modes"] = _modes(status.streams)  # each stream's shedding mode at the end
    r["shedding"] = _shedding(status.streams)
    r["redis_pending"] = status.redis_pending
    r["governor"] = governor[0] if governor else None
    r["ingest_processes"] = len(getattr(p, "_ingest_plans", {}))
    return r


def _governor(p: Any) -> dict[str, Any] | None:
    """The fair-share controller at the window's end: capacity, whether it is a decoder cut,
    and cuts by signal and futile decoder cuts undone *since the pipeline started*."""
    governor = getattr(p, "governor", None)
    c = getattr(governor, "controller", None)
    if c is None:
        return None
    return {
        "capacity": None if c.capacity is None else round(c.capacity, 1),
        "inference_cuts": getattr(c, "inference_cuts", None),
        "decoder_cuts": getattr(c, "decoder_cuts", None),
        "futile_cuts": getattr(c, "futile_cuts", None),
        "decoder_limited": getattr(c, "decoder_limited", None),
    }


class GovernorTrace:
    """The fair-share controller once a second while a step settles (a background thread):
    how the capacity, the decoder flag and the cuts moved, with the streams' median lag and
    the ledger's published total, to tell a controller still converging from one settled."""

    def __init__(self, p: Any, every_s: float = 1.0) -> None:
        self.p, self.every_s = p, every_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="governor-trace", daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> GovernorTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                status = self.p.status()
            except Exception as e:  # a sample lost, not the run
                self.samples.append({"t": self.age(), "error": repr(e)})
                continue
            lags = spread(
                [s.lag_s for s in status.streams if getattr(s, "lag_s", None) is not None]
            )
            self.samples.append(
                {
                    "t": self.age(),
                    **(_governor(self.p) or {}),
                    "lag_median_s": lags["median"] if lags else None,
                    "published": sum(getattr(s, "published", 0) for s in status.streams),
                    "modes": _modes(status.streams),
                }
            )

    def age(self) -> float:
        """Seconds since the trace started."""
        return round(time.monotonic() - self._t0, 1)

    def published_rate(self, after: float, until: float | None = None) -> float | None:
        """Frames published per second between the first sample at or after ``after`` s and
        the last one at or before ``until`` (None: the last; None back: fewer than two)."""
        points = [(s["t"], s["published"]) for s in self.samples if "published" in s]
        points = [pt for pt in points if pt[0] >= after and (until is None or pt[0] <= until)]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return None
        return round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]), 1)


def _modes(streams: Any) -> dict[str, int]:
    """How many streams are in each shedding mode."""
    modes: dict[str, int] = {}
    for s in streams:
        mode = getattr(s, "decode_mode", "all")
        modes[mode] = modes.get(mode, 0) + 1
    return modes


def spread(values: list[float]) -> dict[str, float] | None:
    """Min, median and max of ``values`` (None: none)."""
    if not values:
        return None
    v = sorted(values)
    return {"min": round(v[0], 2), "median": round(v[len(v) // 2], 2), "max": round(v[-1], 2)}


def _shedding(streams: Any) -> dict[str, Any]:
    """What the streams' shedding policies see at the window's end: the fair share (target
    fps: None = no limit), the source rate measured from packets, and frames not analysed."""

    targets = [s.target_fps for s in streams if getattr(s, "target_fps", None) is not None]
    sources = [s.source_fps for s in streams if getattr(s, "source_fps", None) is not None]
    return {
        "target_fps": spread(targets),
        "no_target": len(streams) - len(targets),
        "source_fps": spread(sources),
        "lag_s": spread([s.lag_s for s in streams if getattr(s, "lag_s", None) is not None]),
        "skipped_analysis_total": sum(getattr(s, "skipped_analysis", 0) for s in streams),
    }


def ok(r: dict[str, Any]) -> bool:
    """0 drops in the window, every stream near 30 fps, p99 within 250 ms."""
    return bool(
        r["drops"] == 0 and r["decoded_fps"] >= 28.5 * r["streams"] and r["p99_ms"] <= P99_MS
    )


def _config(
    work: Path,
    url: str,
    prefix: str,
    n: int,
    gpus: list[int] | None,
    engine: dict[str, Any] | None = None,
    ingest_processes: int = 0,
    workers_per_gpu: int = 1,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Any:
    from bench.gpu_bench import _model
    from visionflow.config import parse_config

    mp4 = live_clip(work)
    workers: dict[str, Any] = {
        "ingest_processes": ingest_processes,
        "frame_transport": "auto",
        "workers_per_gpu": workers_per_gpu,
    }
    if gpus is not None:
        workers["gpus"] = gpus
    config: dict[str, Any] = {
        "streams": [stream(mp4, i) for i in range(n)],
        "redis": {"url": url, "key_prefix": prefix, "maxlen": 5000},
        "source": {"allowed_schemes": ["file"]},
        "model": {"path": str(_model(work)), "conf_threshold": 0.5, "max_detections": 50},
        "engine": {"backend": "torch-cuda", "precision": "fp16", **(engine or {})},
        "batching": {"max_batch": 64, "max_delay_ms": 15, "buffer_per_stream": 8},
        "decode": "nvdec",
        "workers": workers,
    }
    for section, values in (overrides or {}).items():
        config[section] = {**config.get(section, {}), **values}
    return parse_config(config)


def live_clip(work: Path) -> Path:
    """The clip every stream loops: the mp4 (default; NVDEC readers turn its packets into
    Annex B with FFmpeg's bitstream filter) or, with ``VF_CLIP=ts``, the same packets in MPEG-TS,
    which arrive in Annex B as an RTSP camera's do (no filter on the reader's thread)."""
    from bench.gpu_bench import clip_paths

    mp4, _ = clip_paths(work)
    if os.environ.get("VF_CLIP", "mp4") != "ts":
        return mp4
    ts = mp4.with_suffix(".ts")
    if not ts.is_file():
        _remux(mp4, ts)
    return ts


def _remux(src: Path, dst: Path) -> None:
    """``src``'s video packets into an MPEG-TS file (no re-encoding; the muxer inserts the
    Annex B filter itself)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mpegts") as out:
        video = inp.streams.video[0]
        st = out.add_stream_from_template(video)
        for packet in inp.demux(video):
            if packet.dts is None:
                continue
            packet.stream = st
            out.mux(packet)


def stream(mp4: Path, i: int) -> dict[str, Any]:
    return {"id": f"c{i:03d}", "url": str(mp4), "loop": True, "realtime": True}


def ramp(
    work: Path,
    gpus: list[int] | None,
    levels: list[int],
    settle_s: float = 15.0,
    window_s: float = 8.0,
    engine: dict[str, Any] | None = None,
    ingest_processes: int = 0,
    overrides: dict[str, dict[str, Any]] | None = None,
    stagger_s: float = 0.0,
    top: int = 0,
    late_s: float = 0.0,
) -> dict[str, Any]:
    import logging

    import redis

    from visionflow.redis_server import EmbeddedRedis
    from visionflow.streams.config import StreamConfig
    from visionflow.workers.supervisor import Pipeline

    mp4 = live_clip(work)
    runs: list[dict[str, Any]] = []
    with EmbeddedRedis() as server:
        prefix = "scale"
        first = 1 if stagger_s > 0 else levels[0]  # staggered: the rest are added spread out
        cfg = _config(
            work, server.url, prefix, first, gpus, engine, ingest_processes, overrides=overrides
        )
        client = redis.Redis.from_url(server.url)
        p = Pipeline(cfg, server.url, log_level=logging.WARNING)
        p.start()
        p.wait_ready(300)
        try:
            best = 0
            plan = list(levels)
            while plan:
                level = plan.pop(0)
                have = len(p.status().streams)
                for i in range(have, level):
                    p.add_stream(StreamConfig.model_validate(stream(mp4, i)))
                    if stagger_s > 0:
                        time.sleep(stagger_s / (level - have))
                is_top = bool(top) and level >= top
                with GovernorTrace(p) as trace:  # every step alike: the same load on each
                    time.sleep(settle_s)
                    r = _timed_window(p, client, prefix, window_s, trace)
                    if is_top and late_s > 0:  # the same step again, once the controller settled
                        time.sleep(late_s)
                        early = r
                        r = {**_timed_window(p, client, prefix, window_s, trace), "early": early}
                r["governor_trace"] = trace.samples
                # after the first window when there is a later one, else over the window itself
                if "early" in r:
                    rate = trace.published_rate(r["early"]["ended_s"])
                else:
                    rate = trace.published_rate(r["started_s"], r["ended_s"])
                r["trace_published_fps"] = rate
                r["sustained"] = ok(r)
                runs.append(r)
                log(f"ramp gpus={gpus} {json.dumps(r)[:400]}")
                if r["sustained"]:
                    best = max(best, level)
                    if top and not plan and level < top:
                        plan = [top]  # every level held: the overload step still runs
                elif top and level < top:
                    plan = [top]  # the overload step asked for, whatever the levels gave
                elif best and 2 * best > level:
                    plan = [2 * best]  # overload: straight to twice the sustained count
                else:
                    break
        finally:
            p.stop()
    peak = max((r["published_fps"] for r in runs), default=0.0)
    top = runs[-1] if runs else {}
    return {
        "gpus": gpus,
        "engine": engine or {},
        "ingest_processes": ingest_processes or "auto",
        "overrides": overrides or {},
        "stagger_s": stagger_s,
        "runs": runs,
        "sustained_streams": best,
        "peak_published_fps": peak,
        "at_top": {
            "streams": top.get("streams"),
            "published_fps": top.get("published_fps"),
            "vs_peak": round(top.get("published_fps", 0) / peak, 3) if peak else None,
            "p99_ms": top.get("p99_ms"),
            "slowest_stream_fps": top.get("min_stream_window_fps"),
            # the published rate over the whole trace after the first window (tens of
            # seconds: the controller's sawtooth averaged out), against the same of the peak
            "trace_published_fps": top.get("trace_published_fps"),
        },
    }


def _timed_window(
    p: Any, client: Any, prefix: str, seconds: float, trace: GovernorTrace
) -> dict[str, Any]:
    """:func:`measured_window`, with when it started and ended on the trace's clock."""
    started = trace.age()
    r = measured_window(p, client, prefix, seconds)
    return {**r, "started_s": started, "ended_s": trace.age()}


def section_engine(work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from bench.gpu_bench import _model
    from visionflow.engines.base import Thresholds
    from visionflow.engines.torch_cuda import TorchCudaConfig, TorchCudaEngine

    frames = [np.random.randint(0, 255, (640, 640, 3), np.uint8) for _ in range(32)]
    t = Thresholds(0.5, 0.45, 50)
    out: dict[str, Any] = {}
    for candidates in (1024, 256):
        engine = TorchCudaEngine(
            TorchCudaConfig(nms_candidates=candidates), _model(work), max_batch=32
        )
        for _ in range(5):
            engine.detect(frames, t)
        n = 40
        t0 = time.perf_counter()
        for _ in range(n):
            engine.detect(frames, t)
        sync = 32 * n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        pending = []
        for _ in range(n):
            if len(pending) == 2:
                pending.pop(0).result()
            pending.append(engine.submit(frames, t))
        for p in pending:
            p.result()
        piped = 32 * n / (time.perf_counter() - t0)
        slot = engine._ring.slots[0]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            engine._forward_static(slot, 32)
        torch.cuda.synchronize()
        forward = 32 * n / (time.perf_counter() - t0)
        out[f"candidates_{candidates}"] = {
            "detect_img_s": round(sync, 1),
            "two_in_flight_img_s": round(piped, 1),
            "forward_only_img_s": round(forward, 1),
        }
        log(f"engine {candidates}: {out[f'candidates_{candidates}']}")
        engine.close()
    return out


def one_window(
    work: Path,
    prefix: str,
    streams: int,
    gpus: list[int] | None = None,
    settle_s: float = 15.0,
    **config: Any,
) -> dict[str, Any]:
    """A pipeline on ``gpus`` (GPU 0 unless given; ``[]``: every GPU) with ``streams``
    streams (``config``: the rest of :func:`_config`'s arguments), 15 s to settle, then one
    measured 8 s window."""
    import logging

    import redis

    from visionflow.redis_server import EmbeddedRedis
    from visionflow.workers.supervisor import Pipeline

    with EmbeddedRedis() as server:
        chosen = [0] if gpus is None else (gpus or None)
        first = min(streams, START_STREAMS)
        cfg = _config(work, server.url, prefix, first, chosen, **config)
        p = Pipeline(cfg, server.url, log_level=logging.WARNING)
        p.start()
        try:
            p.wait_ready(300)
            _add_streams(work, p, first, streams)
            streaming_after = _await_streaming(p, 90)
            time.sleep(settle_s)
            r = measured_window(p, redis.Redis.from_url(server.url), prefix, 8)
            states = [str(s.state) for s in p.status().streams]
            r["states"] = {state: states.count(state) for state in set(states)}
            r["ingest_processes"] = len(list(p.group.processes("ingest")))
            r["all_streaming_after_s"] = streaming_after
            return r
        finally:
            p.stop()


def _await_streaming(p: Any, timeout: float) -> float | None:
    """Seconds until every stream streams (None: not within ``timeout``: the window then
    measures streams still starting, and says so)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if all(str(s.state) == "streaming" for s in p.status().streams):
            return round(time.monotonic() - start, 1)
        time.sleep(0.5)
    return None


def _add_streams(work: Path, p: Any, first: int, streams: int) -> None:
    from visionflow.streams.config import StreamConfig

    mp4 = live_clip(work)
    for i in range(first, streams):
        p.add_stream(StreamConfig.model_validate(stream(mp4, i)))


def section_procs(work: Path, streams: int = 64) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = ((8, None, "0"), (8, None, "1"), (4, None, "1"), (8, {"nms_candidates": 256}, "1"))
    for procs, engine, fused in runs:
        label = f"{procs}_procs" + ("_c256" if engine else "") + ("_fused" if fused == "1" else "")
        os.environ["VISIONFLOW_FUSED_LETTERBOX"] = fused  # inherited by the ingest processes
        out[label] = one_window(work, "procs", streams, engine=engine, ingest_processes=procs)
        log(f"procs {label}: {json.dumps(out[label])[:300]}")
    return out


def section_scale(work: Path) -> dict[str, Any]:
    """1 GPU vs every GPU in the same call, at a stream count that offers more than twice
    what one GPU decodes (NVDEC: ~2,340 fps of this clip on one H100, i.e. ~78 streams; 160
    streams offer 4,800): the scaling is the ratio of published fps, not capped by the offered
    load, provided each window's ``all_streaming_after_s`` is not None."""
    out: dict[str, Any] = {}
    streams = int(os.environ.get("VF_SCALE_STREAMS", "160"))
    per_gpu = int(os.environ.get("VF_SCALE_INGEST_PER_GPU", "0"))  # 0: the automatic plan
    gpus = _gpu_count()
    one = one_window(work, "scale", streams, gpus=[0], settle_s=20, ingest_processes=per_gpu)
    log(f"scale {streams} on GPU 0: {json.dumps(one)[:500]}")
    every = one_window(
        work, "scale", streams, gpus=[], settle_s=20, ingest_processes=per_gpu * gpus
    )
    log(f"scale {streams} on every GPU: {json.dumps(every)[:500]}")
    ratio = every["published_fps"] / one["published_fps"] if one["published_fps"] else None
    key = f"{streams}_streams" + (f"_{per_gpu}_ingest_per_gpu" if per_gpu else "")
    out[key] = {"one_gpu": one, "all_gpus": every, "ratio": ratio}
    log(f"scale {streams}: 1 GPU {one['published_fps']} fps, all {every['published_fps']}")
    return out


def _gpu_count() -> int:
    import torch

    return int(torch.cuda.device_count())


def section_per_gpu(work: Path) -> dict[str, Any]:
    """GPU 0, fused kernel: one vs two inference workers on the card at 64 and 96 streams
    (with the fused kernel the card is ~65 % busy at 64 streams, so the worker process is the
    suspect)."""
    out: dict[str, Any] = {}
    for streams, per_gpu in ((64, 1), (64, 2), (96, 2), (96, 3)):
        label = f"{streams}_streams_{per_gpu}_workers"
        out[label] = one_window(work, "pergpu", streams, workers_per_gpu=per_gpu)
        log(f"per_gpu {label}: {json.dumps(out[label])[:300]}")
    return out


def _packets(annexb: Path) -> list[bytes]:
    import av

    with av.open(str(annexb), format="h264") as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


def _decode_loop(packets: list[bytes], until: float, counts: list[int], i: int) -> None:
    import numpy as np
    import PyNvVideoCodec as nvc

    dec = nvc.CreateDecoder(
        gpuid=0,
        codec=nvc.cudaVideoCodec.H264,
        usedevicememory=True,
        latency=nvc.DisplayDecodeLatencyType.LOW,
    )
    arrays = [np.frombuffer(b, np.uint8) for b in packets]
    while time.monotonic() < until:
        for a in arrays:
            pd = nvc.PacketData()
            pd.bsl_data, pd.bsl = a.ctypes.data, a.size
            pd.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE
            counts[i] += len(dec.Decode(pd))
            if time.monotonic() >= until:
                break


def _ticker(until: float, out: list[int]) -> None:
    n = 0
    while time.monotonic() < until:
        for _ in range(1000):
            n += 1
    out.append(n)


def section_nvdec_gil(work: Path) -> dict[str, Any]:
    """Does ``Decoder.Decode`` hold the GIL?  N threads of one process, each with its own
    decoder, decoding the 1080p clip flat out for 5 s (aggregate fps vs 1 thread), beside a
    pure-Python counting thread (its loop rate vs alone: the GIL left to other threads)."""
    import threading

    from bench.gpu_bench import clip_paths

    _, annexb = clip_paths(work)
    packets = _packets(annexb)
    alone: list[int] = []
    _ticker(time.monotonic() + 2, alone)
    out: dict[str, Any] = {"ticks_per_s_alone": alone[0] / 2, "runs": []}
    for n in (1, 2, 4, 8, 16):
        counts = [0] * n
        until = time.monotonic() + 5
        ticks: list[int] = []
        threads = [
            threading.Thread(target=_decode_loop, args=(packets, until, counts, i))
            for i in range(n)
        ] + [threading.Thread(target=_ticker, args=(until, ticks))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        run = {
            "threads": n,
            "fps": round(sum(counts) / 5, 1),
            "ticks_vs_alone": round(ticks[0] / 5 / out["ticks_per_s_alone"], 3),
            "wall_s": round(wall, 1),
        }
        out["runs"].append(run)
        log(f"nvdec_gil {run}")
    return out


def parse_variants(spec: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``name=section.key:value,...;name2=...`` -> {name: {section: {key: value}}} (values are
    JSON when they parse as JSON, else strings)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for item in filter(None, (v.strip() for v in spec.split(";"))):
        name, _, body = item.partition("=")
        overrides: dict[str, dict[str, Any]] = {}
        for pair in filter(None, body.split(",")):
            dotted, _, raw = pair.partition(":")
            section, _, key = dotted.partition(".")
            try:
                value: Any = json.loads(raw)
            except ValueError:
                value = raw
            overrides.setdefault(section, {})[key] = value
        out[name] = overrides
    return out


def section_variants(work: Path) -> dict[str, Any]:
    """``VF_VARIANT_STREAMS`` (128) streams on GPU 0, one window per config variant in
    ``VF_VARIANTS`` (``name=section.key:value,...;...``; an empty body is the defaults), in
    the order given: knobs compared in the same call."""
    streams = int(os.environ.get("VF_VARIANT_STREAMS", "128"))
    out: dict[str, Any] = {"streams": streams}
    for name, overrides in parse_variants(os.environ.get("VF_VARIANTS", "defaults=")).items():
        r = one_window(work, f"v{len(out)}", streams, settle_s=20, overrides=overrides)
        out[name] = {"overrides": overrides, **r}
        log(f"variant {name} {overrides}: {json.dumps(r)[:600]}")
    return out


def section_procs_n(work: Path) -> dict[str, Any]:
    """``VF_PROCS_STREAMS`` streams (default 96) on GPU 0 with each count of ingest processes
    in ``VF_PROCS`` (default ``1,2,4``): fewer processes, fewer CUDA contexts on the card."""
    streams = int(os.environ.get("VF_PROCS_STREAMS", "96"))
    out: dict[str, Any] = {"streams": streams}
    for procs in (int(n) for n in os.environ.get("VF_PROCS", "1,2,4").split(",")):
        r = one_window(work, f"p{streams}", streams, settle_s=20, ingest_processes=procs)
        out[f"{procs}_procs"] = r
        log(f"procs_n {streams} streams, {procs} procs: {json.dumps(r)[:500]}")
    return out


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def section_diag(work: Path) -> dict[str, Any]:
    """Why many streams collapse: stream states and errors, every process's CPU share over
    10 s, and a py-spy stack dump of each child (``WORK/diag-*.txt``).  ``VF_DIAG_STREAMS``
    (default 96) streams on ``VF_DIAG_GPUS`` (``0`` by default, ``all``: every GPU)."""
    streams = int(os.environ.get("VF_DIAG_STREAMS", "96"))
    gpus = None if os.environ.get("VF_DIAG_GPUS", "0") == "all" else [0]
    import collections
    import logging
    import multiprocessing
    import shutil

    import redis

    from visionflow.redis_server import EmbeddedRedis
    from visionflow.workers.supervisor import Pipeline

    out: dict[str, Any] = {}
    with EmbeddedRedis() as server:
        first = min(streams, START_STREAMS)
        cfg = _config(work, server.url, "diag", first, gpus)
        p = Pipeline(cfg, server.url, log_level=logging.WARNING)
        p.start()
        try:
            p.wait_ready(300)
            _add_streams(work, p, first, streams)
            time.sleep(20)
            children = {c.pid: c.name for c in multiprocessing.active_children() if c.pid}
            before = {pid: _proc_cpu(pid) for pid in children}
            main0, t0 = _cpu(), time.monotonic()
            spy = shutil.which("py-spy")
            dumper = threading.Timer(
                4.0, _dump_stacks, (spy, work, {**children, os.getpid(): "main"})
            )
            if spy:
                dumper.start()  # during the window, not after it
            window = measured_window(p, redis.Redis.from_url(server.url), "diag", 10)
            if spy:
                dumper.join()
            elapsed = time.monotonic() - t0
            out["window"] = window
            out["cpu_share"] = {
                children[pid]: round((_proc_cpu(pid) - before[pid]) / elapsed, 2)
                for pid in children
                if Path(f"/proc/{pid}").exists()
            }
            out["cpu_share"]["main"] = round((_cpu() - main0) / elapsed, 2)
            status = p.status()
            out["states"] = dict(collections.Counter(str(s.state) for s in status.streams))
            out["errors"] = dict(
                collections.Counter((s.last_error or "")[:120] for s in status.streams)
            )
            out["frames_min_max"] = [
                min(s.frames for s in status.streams),
                max(s.frames for s in status.streams),
            ]
        finally:
            p.stop()
    brief = {k: v for k, v in out.get("window", {}).items() if k != "drops_by_stream"}
    log(f"diag window: {json.dumps(brief)}")
    log(f"diag: {json.dumps({k: v for k, v in out.items() if k != 'window'})[:3000]}")
    return out


def section_profile(work: Path) -> dict[str, Any]:
    """Where one ingest process's time goes at ``VF_DIAG_STREAMS`` streams (default 96) with
    ``VF_DIAG_PROCS`` ingest processes (default 1): ``py-spy record`` for 8 s of each ingest
    process and the inference worker, once counting only samples holding the GIL and once
    every active thread (collapsed stacks in ``WORK/profile-<name>-{gil,active}.txt``)."""
    import logging
    import multiprocessing
    import shutil

    import redis

    from visionflow.redis_server import EmbeddedRedis
    from visionflow.workers.supervisor import Pipeline

    streams = int(os.environ.get("VF_DIAG_STREAMS", "96"))
    procs = int(os.environ.get("VF_DIAG_PROCS", "1"))
    spy = shutil.which("py-spy") or "py-spy"
    with EmbeddedRedis() as server:
        first = min(streams, START_STREAMS)
        cfg = _config(work, server.url, "prof", first, [0], ingest_processes=procs)
        p = Pipeline(cfg, server.url, log_level=logging.WARNING)
        p.start()
        try:
            p.wait_ready(300)
            _add_streams(work, p, first, streams)
            _await_streaming(p, 60)
            time.sleep(10)
            children = {
                c.pid: c.name
                for c in multiprocessing.active_children()
                if c.pid and ("ingest" in c.name or "inference" in c.name)
            }
            spies = [
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        "8",
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--format",
                        "raw",
                        *flags,
                        "--output",
                        str(work / f"profile-{name}-{kind}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for pid, name in children.items()
                for kind, flags in (("gil", ["--gil"]), ("active", []))
            ]
            window = measured_window(p, redis.Redis.from_url(server.url), "prof", 8)
            for proc in spies:
                proc.wait(timeout=60)
        finally:
            p.stop()
    brief = {k: v for k, v in window.items() if k != "drops_by_stream"}
    log(f"profile window: {json.dumps(brief)[:800]}")
    return {"window": brief, "processes": sorted(children.values())}


def _dump_stacks(spy: str | None, work: Path, processes: dict[int, str]) -> None:
    for pid, name in processes.items():
        dump = subprocess.run(
            [spy or "py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        )
        (work / f"diag-{name}.txt").write_text(dump.stdout + dump.stderr)


def section_ramp_1gpu_c256(work: Path) -> dict[str, Any]:
    return ramp(work, [0], [32, 64, 96, 112, 128], engine={"nms_candidates": 256})


def section_clips(work: Path) -> dict[str, Any]:
    from bench.gpu_bench import clip_paths, section_clips

    mp4, _ = clip_paths(work)
    return {"cached": True} if mp4.is_file() else section_clips(work)


def section_ramp_1gpu(work: Path) -> dict[str, Any]:
    # NVDEC decodes ~2,340 fps of this clip on one H100 (~78 streams): steps around that
    levels = os.environ.get("VF_RAMP_LEVELS", "32,48,64,72,80,96")
    engine = json.loads(os.environ.get("VF_RAMP_ENGINE", "{}"))  # e.g. {"compile": true}
    procs = int(os.environ.get("VF_RAMP_INGEST", "0"))  # ingest processes (0: automatic)
    overrides = json.loads(os.environ.get("VF_RAMP_OVERRIDES", "{}"))  # {"batching": {...}}
    stagger = float(os.environ.get("VF_RAMP_STAGGER_S", "0"))
    return ramp(
        work,
        [0],
        [int(n) for n in levels.split(",")],
        engine=engine,
        ingest_processes=procs,
        overrides=overrides,
        stagger_s=stagger,
        top=int(os.environ.get("VF_RAMP_TOP", "0")),
        late_s=float(os.environ.get("VF_RAMP_LATE_S", "0")),
    )


def section_ramp_all(work: Path) -> dict[str, Any]:
    return ramp(work, None, [64, 96, 128, 160, 192, 224, 256])


def section_kill(work: Path, streams: int = 64) -> dict[str, Any]:
    import logging

    import redis

    from visionflow.redis_server import EmbeddedRedis
    from visionflow.workers.supervisor import Pipeline

    per_gpu = int(os.environ.get("VF_KILL_WORKERS_PER_GPU", "1"))  # 2: a kill on one GPU
    with EmbeddedRedis() as server:
        cfg = _config(work, server.url, "kill", streams, None, workers_per_gpu=per_gpu)
        client = redis.Redis.from_url(server.url)
        p = Pipeline(cfg, server.url, log_level=logging.WARNING)
        p.start()
        p.wait_ready(300)
        try:
            time.sleep(15)
            before = measured_window(p, client, "kill", 8)
            victim = p.group.children["inference-0"].process
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            during = measured_window(p, client, "kill", 8)
            time.sleep(10)
            after = measured_window(p, client, "kill", 8)
        finally:
            p.stop()
        final = p.status()
    return {
        "streams": streams,
        "before": before,
        "during_kill": during,
        "after_restart": after,
        "killed_at": killed_at,
        "worker_restarts": [w.restarts for w in final.workers],
        "ledger_violations": final.ledger_violations,
        "drops_by_reason": _reasons(final),
        "unaccounted_streams": [s.stream_id for s in final.streams if not s.accounted],
        "in_flight_after_stop": sum(s.in_flight for s in final.streams),
    }


def _reasons(status: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in status.streams:
        for k, v in s.drops.items():
            out[k] = out.get(k, 0) + v
    return out


def section_legacy_1gpu(work: Path) -> dict[str, Any]:
    """The pre-rework pipeline in a child whose PYTHONPATH puts its tree first."""
    legacy = Path(os.environ.get("VF_LEGACY", ROOT / ".legacy"))
    code = (
        f"import sys, json; sys.path[:0] = [{str(legacy)!r}, {str(ROOT)!r}]\n"
        "from bench.gpu_bench import _ramp\nfrom visionflow.redis_server import EmbeddedRedis\n"
        "from pathlib import Path\n"
        "if __name__ == '__main__':\n"
        "    with EmbeddedRedis() as s:\n"
        f"        r = _ramp(Path({str(work)!r}), s.url, 'nvdec', [32, 48, 64, 80], settle_s=15.0)\n"
        "    print('RESULT ' + json.dumps(r, default=str))\n"
    )
    script = work / "legacy_ramp.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": f"{legacy}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["CUDA_VISIBLE_DEVICES"] = "0"
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=400
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    return {"error": out.stderr[-3000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vf-gpu-work"))
    parser.add_argument("--sections", default="clips,ramp_1gpu,ramp_all,kill")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.section:
        run_section(globals()[f"section_{args.section}"], args.section, args.work, args.out)
        return
    from bench.common import machine, run_sections

    summary = {"machine": machine()}
    summary.update(
        run_sections(__file__, args.sections.split(","), LIMITS, args.work, args.out, log)
    )
    (args.out / "gpu_scale.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
