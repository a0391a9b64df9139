#!/usr/bin/env python3
"""The control plane alone: scheduler, ledger and output stage, null engine, synthetic frames.

    .venv/bin/python bench/control_plane.py [--seconds 10] [--streams 32] [--ingest 2]

No decode and no GPU: synthetic ingest processes fill real shared-memory frame slots and
announce them as fast as slots come free (a lossless source, so the pipeline's own throughput
sets the pace); inference workers run a null engine (no detections); the output stage counts
results.  Everything between -- announcing, batching, dispatching, slot freeing, the ledger,
results to the output stage, status -- is the real code.

Two implementations in one run, each in its own Python process:

- ``new``: this tree's :class:`~visionflow.workers.supervisor.Pipeline`;
- ``legacy``: the ``Pipeline`` of ``--legacy-rev`` (default: the commit before the data-plane
  rework), extracted with ``git archive``, with the same synthetic ingest and null engine
  patched into its process targets and its Redis writes replaced by counting.

Reported per implementation: frames resolved per second by the scheduler (inferred) and the
scheduling process's CPU microseconds per frame (user + system, all its threads).  Prints a
table, writes ``bench/results/control_plane-<date>.json``; the last line printed is JSON with
``frames_per_s`` and ``cpu_us_per_frame`` of ``new``, plus the ratios to ``legacy``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEGACY_REV = "2201dbc"  # the last commit before the data-plane rework (#12)
HEARTBEAT_S = 0.5


# ---- shared by both implementations (children import this file as __mp_main__) ---------
def _synthetic_frames(
    index: int, run_id: str, stream_ids: list[str], slots: int, size: tuple[int, int]
) -> tuple[dict[str, Any], Any]:
    from visionflow.pipeline.framepool import FramePool
    from visionflow.pipeline.letterbox import letterbox_geometry

    width, height = size
    pools = {
        sid: FramePool(f"vf-{run_id}-{index}-{i}", slots, height, width, create=True)
        for i, sid in enumerate(stream_ids)
    }
    return pools, letterbox_geometry(1280, 720, width, height)


def _produce(
    index: int,
    pools: dict[str, Any],
    letterbox: Any,
    emit: Any,
    heartbeat: Any,
    commands: Any,
    snapshot_interval_s: float = 0.0,
) -> None:
    """Fill free slots round-robin until the ``None`` command; heartbeat twice a second;
    mark one frame per stream per ``snapshot_interval_s`` for a snapshot (0: none)."""
    from visionflow.pipeline.frames import FrameRef

    seqs = dict.fromkeys(pools, -1)
    frames = dict.fromkeys(pools, 0)
    next_snapshot = dict.fromkeys(pools, 0.0)
    next_beat = 0.0
    while True:
        now = time.monotonic()
        if now >= next_beat:
            heartbeat(frames)
            next_beat = now + HEARTBEAT_S
            try:
                if commands.get_nowait() is None:
                    break
            except queue.Empty:
                pass
        produced = 0
        wall = time.time()
        for sid, pool in pools.items():
            slot = pool.acquire()
            if slot is None:
                continue
            pool.publish(slot)
            seqs[sid] += 1
            frames[sid] += 1
            produced += 1
            marked = {}  # only this tree's FrameRef has the field (legacy never marks)
            if snapshot_interval_s > 0 and next_snapshot[sid] <= now:
                next_snapshot[sid] = now + snapshot_interval_s
                marked = {"snapshot": True}
            emit(FrameRef(sid, seqs[sid], None, wall, 0.1, pool.name, slot, letterbox, **marked))
        if not produced:
            time.sleep(0.001)
    heartbeat(frames)
    for pool in pools.values():
        pool.close()


def _stats(sid: str, frames: int) -> Any:
    from visionflow.streams.state import StreamState
    from visionflow.workers.messages import StreamStats

    return StreamStats(
        sid, StreamState.STREAMING, 0.0, frames, 0, 0, 0, 0, None, time.time(), 1280, 720
    )


def _empty_detections(n: int) -> list[Any]:
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.intp))
    return [empty] * n


def _engine_info() -> Any:
    from visionflow.engines.base import EngineInfo

    return EngineInfo("null", "cpu", 320, 320, "float32", 64, 3)


# ---- new: this tree's pipeline ---------------------------------------------------------------
def new_ingest_main(spec: Any, queues: Any, log_level: int) -> None:
    from visionflow.workers.ingest import Announcer
    from visionflow.workers.messages import IngestHeartbeat

    ids = [s.id for s in spec.streams]
    pools, letterbox = _synthetic_frames(spec.index, spec.run_id, ids, spec.slots, spec.input_size)
    announcer = Announcer(spec.index, queues.frames, spec.announce_interval_s)
    announcer.start()

    def beat(frames: dict[str, int]) -> None:
        stats = tuple(_stats(sid, n) for sid, n in frames.items())
        queues.control.put(IngestHeartbeat(spec.index, time.time(), stats))

    _produce(
        spec.index,
        pools,
        letterbox,
        announcer.put,
        beat,
        queues.commands,
        spec.snapshot_interval_s,
    )
    announcer.stop()


class NullEngine:
    """Takes any batch, finds nothing."""

    def __init__(self) -> None:
        from visionflow.engines.base import EngineCapabilities

        self.capabilities = EngineCapabilities(max_inflight=2)
        self.info = _engine_info()

    def submit(self, frames: Any, thresholds: Any) -> Any:
        from visionflow.engines.base import CompletedBatch

        return CompletedBatch(tuple(_empty_detections(len(frames))))

    def close(self) -> None:
        pass


def new_worker_main(spec: Any, queues: Any, log_level: int) -> None:
    from dataclasses import replace

    from visionflow.pipeline.framepool import PoolCache
    from visionflow.workers.channels import ShardedWriter
    from visionflow.workers.inference import WorkerLoop
    from visionflow.workers.messages import WorkerReady

    queues = replace(queues, output=ShardedWriter(queues.output))  # its results pipes
    engine = NullEngine()
    queues.control.put(WorkerReady(spec.worker_id, engine.info, os.getpid()))
    pools = PoolCache(spec.input_size[1], spec.input_size[0], spec.slots)
    WorkerLoop(engine, pools, spec, queues).run()  # type: ignore[arg-type]
    queues.output.close()
    queues.output.join_thread(5.0)
    pools.close()


def new_output_main(spec: Any, inbox: Any, control: Any, log_level: int) -> None:
    sys.path.insert(0, str(ROOT))  # a spawned child: main() did not run here
    from bench.common import counting_sink
    from visionflow.workers.output import OutputStage, serve

    snapshots = None
    if spec.snapshot_interval_s > 0:  # the real writer: draw, encode; its SET fails (no Redis)
        from visionflow.workers.snapshots import SnapshotWriter

        snapshots = SnapshotWriter(spec.redis, spec.redis_url, spec.snapshot_interval_s)
    stage = OutputStage([counting_sink()], first_batch_id=spec.first_batch_id, snapshots=snapshots)
    serve(stage, inbox, control, 1.0)


def run_new(args: argparse.Namespace) -> dict[str, Any]:
    from visionflow.workers import board, supervisor

    board.RedisStatusWriter.write = lambda self, final=False: None  # type: ignore[method-assign]

    class BenchPipeline(supervisor.Pipeline):
        def _spawn(self, target: Any, name: str, *a: Any) -> Any:
            fake = {
                supervisor.ingest_main: new_ingest_main,
                supervisor.inference_main: new_worker_main,
                supervisor.output_main: new_output_main,
            }
            return super()._spawn(fake.get(target, target), name, *a)

    pipeline = BenchPipeline(_config(args), "redis://127.0.0.1:1/0", log_level=logging.WARNING)

    def counted() -> int:
        with pipeline.loop.lock:
            return sum(s.inferred for s in pipeline.scheduler.ledger.snapshots().values())

    return _measure(pipeline, counted, args)


# ---- legacy: the pipeline before the rework -------------------------------------------------
def legacy_ingest_main(
    index: int, run_id: str, streams: Any, policy: Any, input_size: Any, slots: int,
    outbox: Any, commands: Any, log_level: int, plan: Any = None,
) -> None:  # fmt: skip
    from visionflow.workers.messages import IngestHeartbeat

    ids = [s.id for s in streams]
    pools, letterbox = _synthetic_frames(index, run_id, ids, slots, input_size)

    def beat(frames: dict[str, int]) -> None:
        stats = tuple(_stats(sid, n) for sid, n in frames.items())
        outbox.put(IngestHeartbeat(index, time.time(), stats))

    _produce(index, pools, letterbox, outbox.put, beat, commands)


def legacy_worker_main(spec: Any, tasks: Any, outbox: Any, log_level: int) -> None:
    from visionflow.pipeline.frames import BatchRequest, BatchResult, FrameResult
    from visionflow.workers.messages import WorkerReady

    outbox.put(WorkerReady(spec.worker_id, _engine_info(), os.getpid()))
    while True:
        request = tasks.get()
        if request is None:
            break
        if not isinstance(request, BatchRequest):
            continue
        n, now = len(request.frames), time.time()
        results = tuple(
            FrameResult(f, (), 0.0, 0.0, n, spec.worker_id, now) for f in request.frames
        )
        outbox.put(BatchResult(request.batch_id, spec.worker_id, results))


def run_legacy(args: argparse.Namespace) -> dict[str, Any]:
    from visionflow.workers import publisher, supervisor

    publisher.RedisPublisher._write = lambda self, batch: None  # type: ignore[attr-defined]
    publisher.RedisPublisher._write_status = lambda self: None  # type: ignore[attr-defined]
    supervisor.ingest_main = legacy_ingest_main  # type: ignore[attr-defined]
    supervisor.inference_main = legacy_worker_main  # type: ignore[attr-defined]
    pipeline = supervisor.Pipeline(
        _config(args), "redis://127.0.0.1:1/0", log_level=logging.WARNING
    )

    def counted() -> int:
        with pipeline._lock:  # type: ignore[attr-defined]
            return sum(w.frames for w in pipeline.dispatcher.workers.values())  # type: ignore[attr-defined]

    return _measure(pipeline, counted, args)


# ---- both ------------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> Any:
    from visionflow import config as vf_config

    parse_config = vf_config.parse_config
    streams = [{"id": f"s{i:03d}", "url": f"rtsp://synthetic/{i}"} for i in range(args.streams)]
    output: dict[str, Any] = {"snapshot_interval_s": args.snapshot_interval}
    output_config = getattr(vf_config, "OutputConfig", None)  # absent from the legacy tree
    if output_config is not None and "processes" in output_config.model_fields:
        # one output process: its stand-in below
        output["processes"] = 1  # reports as shard 0 (the legacy tree has one, no setting)
    sections: dict[str, Any] = {"output": output} if output_config is not None else {}
    return parse_config(
        {
            "streams": streams,
            "redis": {"url": "redis://127.0.0.1:1/0"},
            **sections,
            "batching": {"max_batch": args.max_batch, "max_delay_ms": 5, "buffer_per_stream": 8},
            "workers": {
                "ingest_processes": args.ingest,
                "inference_workers": args.workers,
                "slots_per_stream": 12,
            },
        },
        "<bench>",
    )


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _measure(pipeline: Any, counted: Any, args: argparse.Namespace) -> dict[str, Any]:
    pipeline.start()
    try:
        pipeline.wait_ready(60)
        time.sleep(args.warmup)
        n0, c0, t0 = counted(), _cpu(), time.monotonic()
        time.sleep(args.seconds)
        n1, c1, t1 = counted(), _cpu(), time.monotonic()
    finally:
        pipeline.stop()
    frames = n1 - n0
    return {
        "frames": frames,
        "seconds": round(t1 - t0, 3),
        "frames_per_s": round(frames / (t1 - t0), 1),
        "cpu_us_per_frame": round((c1 - c0) / max(frames, 1) * 1e6, 2),
        "scheduler_cpu_share": round((c1 - c0) / (t1 - t0), 3),
    }


def _legacy_tree(rev: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="vf-legacy-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "visionflow"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def _child(impl: str, args: argparse.Namespace, legacy: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    if legacy is not None:
        env["PYTHONPATH"] = f"{legacy}{os.pathsep}{env.get('PYTHONPATH', '')}"
    argv = [sys.executable, __file__, "--impl", impl, *_forward(args)]
    out = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=args.seconds * 4 + 180
    )
    if out.returncode != 0:
        raise SystemExit(f"{impl} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _forward(args: argparse.Namespace) -> list[str]:
    keys = ("seconds", "warmup", "streams", "ingest", "workers", "max_batch", "snapshot_interval")
    return [x for k in keys for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]


def compare_snapshots(args: argparse.Namespace) -> None:
    """``new`` with snapshots off, then on (``--snapshot-interval``, default 2 s), one run."""
    sys.path.insert(0, str(ROOT))
    from bench.common import table, write_result

    interval = args.snapshot_interval or 2.0
    args.snapshot_interval = 0.0
    off = _child("new", args, None)
    args.snapshot_interval = interval
    on = _child("new", args, None)
    rows = {"snapshots off": off, f"snapshots every {interval:g} s": on}
    ratio = {
        "frames_per_s": round(on["frames_per_s"] / max(off["frames_per_s"], 1e-9), 3),
        "cpu_us_per_frame": round(on["cpu_us_per_frame"] / max(off["cpu_us_per_frame"], 1e-9), 3),
    }
    columns = ["run", "frames_per_s", "cpu_us_per_frame", "scheduler_cpu_share", "frames"]
    print(table([{"run": k, **v} for k, v in rows.items()], columns))
    print(f"on / off: {ratio['frames_per_s']}x frames/s, {ratio['cpu_us_per_frame']}x CPU/frame")
    params = {
        k: getattr(args, k) for k in ("seconds", "warmup", "streams", "ingest", "workers")
    } | {"snapshot_interval": interval}
    path = write_result(
        "control_plane_snapshots", {"params": params, "results": rows, "ratio_on_vs_off": ratio}
    )
    print(f"wrote {path.relative_to(ROOT)}")
    print(json.dumps({"on": on, "off": off, "ratio": ratio}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--ingest", type=int, default=2, help="synthetic ingest processes")
    parser.add_argument("--workers", type=int, default=2, help="null inference workers")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--legacy-rev", default=LEGACY_REV)
    parser.add_argument("--impl", choices=["both", "new", "legacy", "snapshots"], default="both")
    parser.add_argument(
        "--snapshot-interval",
        type=float,
        default=0.0,
        help="new: mark a frame per stream this often for an annotated snapshot (0: off); "
        "--impl snapshots: the interval compared with snapshots off",
    )
    args = parser.parse_args()
    if args.impl == "snapshots":
        compare_snapshots(args)
        return
    if args.impl == "new":
        print(json.dumps(run_new(args)))
        return
    if args.impl == "legacy":
        print(json.dumps(run_legacy(args)))
        return
    sys.path.insert(0, str(ROOT))
    from bench.common import table, write_result

    legacy = _legacy_tree(args.legacy_rev)
    rows = {"legacy": _child("legacy", args, legacy), "new": _child("new", args, None)}
    ratio = {
        "frames_per_s": round(
            rows["new"]["frames_per_s"] / max(rows["legacy"]["frames_per_s"], 1e-9), 2
        ),
        "cpu_us_per_frame": round(
            rows["new"]["cpu_us_per_frame"] / max(rows["legacy"]["cpu_us_per_frame"], 1e-9), 3
        ),
    }
    print(
        table(
            [{"impl": k, **v} for k, v in rows.items()],
            [
                "impl",
                "frames_per_s",
                "cpu_us_per_frame",
                "scheduler_cpu_share",
                "frames",
                "seconds",
            ],
        )
    )
    print(
        f"new / legacy: {ratio['frames_per_s']}x frames/s, "
        f"{ratio['cpu_us_per_frame']}x CPU per frame"
    )
    params = {
        k: getattr(args, k)
        for k in ("seconds", "warmup", "streams", "ingest", "workers", "max_batch", "legacy_rev")
    }
    path = write_result(
        "control_plane", {"params": params, "results": rows, "ratio_new_vs_legacy": ratio}
    )
    print(f"wrote {path.relative_to(ROOT)}")
    print(json.dumps({**rows["new"], "vs_legacy": ratio}))


if __name__ == "__main__":
    main()
