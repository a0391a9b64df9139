#!/usr/bin/env python3
"""Where the CPU pipeline's CPU goes, per process: tracking modes, ONNX Runtime's threads and
whether they spin (issue 11: tracking's cost on the data plane).

    .venv/bin/python bench/cpu_processes.py [--rounds 2] [--seconds 12] \
        [--modes off,on,appearance] [--threads 0] [--spin both]

``bench/cpu_pipeline.py``'s visionflow run (8 synthetic 640x360 H.264 clips read flat out, the
bundled detector on ONNX Runtime, one inference worker, a private Redis), one pipeline per
(mode, threads, spin), alternating within each round: every stream untracked (``off``),
tracked with a zone and a line (``on``), or that with re-identification by appearance
(``appearance``: the inference worker describes every box).  Per run: frames/s published and,
over the measured window, each process's CPU (``psutil``) as cores and as ms per published
frame (the pipeline's children by name — ``inference-0``, ``ingest-0``, ``output`` or
``output-N`` where there are several —, ``main``: the scheduler, ``redis``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# as in the pipeline's processes (visionflow/workers/procs.py: CHILD_ENV), set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table, write_result  # noqa: E402


def cpu_of(process: Any) -> float:
    """A process's user + system CPU seconds (0 once it is gone)."""
    import psutil

    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def run(
    clips: list[Path], server: Any, mode: str, threads: int, spin: bool, seconds: float
) -> dict[str, Any]:
    """One pipeline: 3 s to warm up, then ``seconds`` measured."""
    from bench.cpu_pipeline import TRACKING_MODES, visionflow_config
    from visionflow.workers.supervisor import Pipeline

    engine = {"backend": "onnxruntime", "intra_op_threads": threads, "spin": spin}
    config = visionflow_config(clips, server.url, 8, TRACKING_MODES[mode], engine)
    pipeline = Pipeline(config, server.url, log_level=logging.WARNING)
    pipeline.start()
    try:
        pipeline.wait_ready(120)
        time.sleep(3)
        return {"mode": mode, "threads": threads, "spin": spin, **window(pipeline, server, seconds)}
    finally:
        pipeline.stop()


def processes(pipeline: Any, server: Any) -> dict[str, Any]:
    """The pipeline's processes by role (``psutil.Process``), this one (``main``: the
    scheduler) and the Redis server's."""
    import psutil

    procs = {
        name: psutil.Process(child.process.pid)
        for name, child in pipeline.group.children.items()
        if child.process is not None and child.process.pid is not None
    }
    procs["main"] = psutil.Process()
    procs["redis"] = psutil.Process(server.process.pid)
    return procs


def window(pipeline: Any, server: Any, seconds: float) -> dict[str, Any]:
    """Frames/s published and each process's CPU over ``seconds``; a process that was
    replaced (restarted) in the window fails the run rather than reading as negative CPU."""
    procs = processes(pipeline, server)
    cpu0 = {name: cpu_of(p) for name, p in procs.items()}
    before, t0 = pipeline.status(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = pipeline.status(), time.monotonic() - t0
    cpu1 = {name: cpu_of(p) for name, p in procs.items()}
    now = processes(pipeline, server)
    moved = [n for n in procs if n not in now or now[n].pid != procs[n].pid]
    if moved:
        raise RuntimeError(f"processes replaced during the window: {moved}")
    published = sum(s.published for s in after.streams) - sum(s.published for s in before.streams)
    used = {name: cpu1[name] - cpu0[name] for name in procs}
    return {
        "fps": round(published / elapsed, 1),
        "cores": {name: round(v / elapsed, 2) for name, v in used.items()},
        "cpu_ms_per_frame": {
            name: round(1000 * v / max(published, 1), 3) for name, v in used.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, choices=range(1, 100), metavar="N")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured per run")
    parser.add_argument("--modes", default="off,on,appearance")
    parser.add_argument("--threads", default="0", help="intra_op_threads values, comma-separated")
    parser.add_argument("--spin", choices=("off", "on", "both"), default="both")
    args = parser.parse_args()
    from bench.cpu_pipeline import make_clips
    from visionflow.redis_server import EmbeddedRedis

    clips = make_clips(8, 640, 360, ROOT / ".cache" / "bench-clips")
    spins = {"off": [False], "on": [True], "both": [False, True]}[args.spin]
    rows = []
    with EmbeddedRedis() as server:
        for r in range(args.rounds):
            for spin in spins:
                for threads in (int(t) for t in args.threads.split(",")):
                    for mode in args.modes.split(","):
                        row = {
                            "round": r,
                            **run(clips, server, mode, threads, spin, args.seconds),
                        }
                        rows.append(row)
                        print(row, flush=True)
    flat = [
        {k: v for k, v in row.items() if k not in ("cores", "cpu_ms_per_frame")}
        | {f"cores_{k}": v for k, v in row["cores"].items()}
        for row in rows
    ]
    print(table(flat, list(flat[0])))
    print(f"wrote {write_result('cpu_processes', {'args': vars(args), 'runs': rows})}")


if __name__ == "__main__":
    main()
