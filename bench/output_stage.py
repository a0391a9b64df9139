#!/usr/bin/env python3
"""The output process's throughput: entries/s written to Redis, and its CPU µs per entry.

    nice -n 19 .venv/bin/python bench/output_stage.py [--streams 64] [--frames 64] \\
        [--detections 0,10,50] [--seconds 6] [--repeats 2] [--baseline 5857b58] [--profile]

A private redis-server on a free port (:class:`visionflow.redis_server.EmbeddedRedis`).  For
each D in ``--detections``: batches of ``--frames`` results (one frame of each of
``--streams`` streams per batch, D detections each, as the inference worker's post-processing
makes them) are pickled once, then each tree under test runs the real output process
(:func:`visionflow.workers.output.output_main`, spawned, with the pipeline's sinks: detections,
counts, tracking events) and a driver that writes those pickles into its results channel (a
pipe, as an inference worker's sender thread does) as fast as the process reads them.  So the
whole per-entry path is measured: unpickling, reorder, processors, the sinks, encoding, the
``XADD`` pipelines, the latency book.  entries/s is the rate at which the process's own
published count grows (from its stats, twice a second) between 10 % and 90 % of the run;
CPU µs per entry is its CPU time (all threads, ``/proc/<pid>/stat``) over the same window.
The sink's memory buffer is made large enough that neither tree spills its backlog to the
spool: trees before 54b7a55 spilled a backlog past half the buffer (10,000 entries by
default) to disk even with Redis up, and then measured the disk (~40 entries/s, entries
dropped); since 54b7a55 only an outage spills.
Each tree runs in its own interpreter with ``PYTHONPATH`` pointing at it; the baseline is the
tree of ``--baseline`` (``git archive``), runs alternate with the current tree, and the median
of ``--repeats`` is reported with ratios.  Both trees must write the same entries: ids and
fields (bar ``latency_ms``' publish and total, which are times) of one stream are compared.

``--profile``: cProfile of the current tree's stage in-process instead (the stage on the main
thread, the detections sink's writer thread profiled too), top functions by own time.

Prints a table, writes ``bench/results/output_stage-<date>.json``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["person", "bicycle", "car", "motorcycle", "bus", "truck", "dog", "backpack"]
PREFIX = "bench"


# ---- payloads (current tree: the classes pickle by module path, the same in both) ------------
def make_payloads(path: Path, streams: int, frames: int, detections: int, batches: int) -> None:
    """``batches`` pickled :class:`BatchResult` messages, each length-prefixed, into ``path``."""
    from visionflow.pipeline.frames import BatchResult, Detection, FrameRef, FrameResult, Letterbox

    rng = random.Random(detections)
    t0 = time.time()
    with path.open("wb") as out:
        for b in range(batches):
            results = []
            for f in range(frames):
                sid = f"cam-{f % streams:03d}"
                seq = b * (frames // streams or 1) + f // streams
                capture = t0 + seq / 30
                box = Letterbox(1920, 1080, 640, 640, 1 / 3, 0, 140, 640, 360)
                frame = FrameRef(sid, seq, seq / 30, capture, 3.2, "pool", f, box)
                dets = []
                for _ in range(detections):
                    x, y = rng.uniform(0, 1800), rng.uniform(0, 1000)
                    c = rng.randrange(len(LABELS))
                    dets.append(
                        Detection(
                            class_id=c,
                            label=LABELS[c],
                            score=round(rng.uniform(0.5, 1.0), 4),
                            x1=round(x, 1),
                            y1=round(y, 1),
                            x2=round(x + rng.uniform(5, 120), 1),
                            y2=round(y + rng.uniform(5, 80), 1),
                        )
                    )
                results.append(
                    FrameResult(frame, tuple(dets), 12.5, 40.25, frames, 0, capture + 0.08)
                )
            data = pickle.dumps(BatchResult(b + 1, 0, tuple(results)), pickle.HIGHEST_PROTOCOL)
            out.write(struct.pack("<I", len(data)) + data)


def read_payloads(path: Path) -> list[bytes]:
    raw, out, pos = path.read_bytes(), [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


# ---- one measured run (in a child interpreter whose PYTHONPATH is the tree under test) -------
def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spec_for(url: str, spool: str) -> Any:
    from visionflow.config import RedisConfig
    from visionflow.workers.output import OutputSpec

    # a memory buffer neither tree fills: a backlog of half of it would be spilled to the
    # spool (meant for outages), and the result would depend on the disk and the run's length
    config = RedisConfig(url=url, key_prefix=PREFIX, spool_dir=spool, buffer_max_entries=10**7)
    return OutputSpec(config, url, "bench")


def child(args: argparse.Namespace) -> dict[str, Any]:
    import multiprocessing as mp

    import redis

    import visionflow
    from visionflow.workers.channels import ResultsChannel
    from visionflow.workers.output import output_main

    payloads = read_payloads(Path(args.payloads))
    total = len(payloads) * args.frames
    client = redis.Redis.from_url(args.redis_url)
    client.flushall()
    ctx = mp.get_context("spawn")
    inbox, control = ctx.Queue(), ctx.Queue()
    reader, writer = ctx.Pipe(duplex=False)
    with tempfile.TemporaryDirectory(prefix="vf-bench-spool-") as spool:
        spec = spec_for(args.redis_url, spool)
        proc = ctx.Process(target=output_main, args=(spec, inbox, control, 30), daemon=True)
        proc.start()
        control.get(timeout=60)  # its first stats: it serves
        assert proc.pid is not None
        pid = proc.pid
        inbox.put(ResultsChannel(1, 0, reader))

        def produce() -> None:
            for payload in payloads:
                writer.send_bytes(payload)

        samples: list[tuple[float, int, float]] = []  # (stats ts, published, process CPU s)
        sender = threading.Thread(target=produce, daemon=True)
        sender.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            stats = control.get(timeout=60)
            published = sum(n for _, n in stats.published)
            samples.append((stats.ts, published, cpu_s(pid)))
            if published >= total:
                break
        inbox.put(None)
        final = control.get(timeout=60)
        while not final.final:
            final = control.get(timeout=60)
        proc.join(30)
    lo = next(s for s in samples if s[1] >= 0.1 * total)
    hi = [s for s in samples if s[1] <= 0.9 * total][-1]
    if hi[1] - lo[1] < 0.3 * total:  # too few stats in the run: whole run instead
        lo, hi = samples[0], samples[-1]
    written = sum(client.xlen(k) for k in client.scan_iter(f"{PREFIX}:detections:*"))
    return {
        "tree": str(Path(visionflow.__file__).parents[1]),
        "entries": total,
        "written": written,
        "published": sum(n for _, n in final.published),
        "dropped": sum(n for *_, n in final.dropped),
        "replayed": final.publish.replayed,  # spilled to the spool (a backlog of half the
        # buffer) and written from there
        "entries_per_s": round((hi[1] - lo[1]) / (hi[0] - lo[0]), 1),
        "cpu_us_per_entry": round((hi[2] - lo[2]) / (hi[1] - lo[1]) * 1e6, 1),
        "window_entries": hi[1] - lo[1],
        "digest": digest(client),
    }


def digest(client: Any) -> str:
    """What one stream holds, bar the times of writing (ids and every other field)."""
    import hashlib

    h = hashlib.sha256()
    for entry_id, fields in client.xrange(f"{PREFIX}:detections:cam-000"):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        latency = json.loads(f.pop("latency_ms"))
        latency.pop("publish"), latency.pop("total")
        h.update(json.dumps([entry_id.decode(), f, latency], sort_keys=True).encode())
    return h.hexdigest()[:16]


# ---- profile (current tree, in-process) ------------------------------------------------------
def profile(args: argparse.Namespace, payloads: list[bytes], url: str) -> None:
    import cProfile
    import gc
    import pstats

    import redis

    from visionflow.workers.output import build_stage
    from visionflow.workers.sinks import RedisStreamSink

    redis.Redis.from_url(url).flushall()
    with tempfile.TemporaryDirectory(prefix="vf-bench-spool-") as spool:
        stage = build_stage(spec_for(url, spool))
        gc.freeze()  # as output_main does (where the tree under test does not, no matter)
        sink = stage.primary
        assert isinstance(sink, RedisStreamSink)
        writer_prof = cProfile.Profile()
        run = sink._run

        def profiled() -> None:
            writer_prof.enable()
            try:
                run()
            finally:
                writer_prof.disable()

        sink.thread = threading.Thread(target=profiled, daemon=True)
        stage.start()
        main_prof = cProfile.Profile()
        t0 = time.perf_counter()
        main_prof.enable()
        for payload in payloads:
            stage.on_result(pickle.loads(payload))
            while sink.pending > 4 * args.frames:  # the writer keeps up: as the process would
                time.sleep(0.001)
        main_prof.disable()
        while sink.pending:
            time.sleep(0.01)
        took = time.perf_counter() - t0
        stage.stop(5.0)
    n = len(payloads) * args.frames
    print(f"\nprofile D={args.profile_d}: {n} entries in {took:.2f} s ({n / took:.0f}/s)")
    for name, prof in (("stage (main thread)", main_prof), ("redis writer thread", writer_prof)):
        print(f"\n---- {name}")
        pstats.Stats(prof).sort_stats("tottime").print_stats(22)


# ---- driver ----------------------------------------------------------------------------------
def run_child(tree: Path, args: argparse.Namespace, payloads: Path, url: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--payloads", str(payloads), "--redis-url", url]
    cmd += ["--frames", str(args.frames)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({tree}): {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["tree"]).resolve() != tree.resolve():
        raise RuntimeError(f"child imported visionflow from {result['tree']}, not {tree}")
    if result["written"] != result["entries"] or result["published"] != result["entries"]:
        raise RuntimeError(f"not every entry was written: {result}")
    return result


def batches_for(detections: int, args: argparse.Namespace) -> int:
    """Enough batches for about ``--seconds`` at a rough guess of the rate."""
    guess = 9000 / (1 + detections / 12)  # entries/s, this VM, baseline tree
    return max(20, int(guess * args.seconds / args.frames))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--frames", type=int, default=64, help="results per batch")
    parser.add_argument("--detections", default="0,10,50")
    parser.add_argument("--seconds", type=float, default=6.0, help="rough length of one run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", default="5857b58", help="commit of the baseline tree")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-d", type=int, default=50)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--payloads", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # no sys.path change: visionflow comes from PYTHONPATH (the tree under test)
        print(json.dumps(child(args)))
        return
    sys.path.insert(0, str(ROOT))
    from bench.common import table, write_result
    from visionflow.redis_server import EmbeddedRedis

    ds = [int(d) for d in args.detections.split(",")]
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="vf-bench-") as tmp:
        work = Path(tmp)
        if args.profile:
            path = work / "payloads.bin"
            make_payloads(path, args.streams, args.frames, args.profile_d,
                          batches_for(args.profile_d, args))  # fmt: skip
            profile(args, read_payloads(path), server.url)
            return
        base = work / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        trees = {"baseline": base, "current": ROOT}
        rows, runs = [], []
        for d in ds:
            path = work / f"payloads-{d}.bin"
            make_payloads(path, args.streams, args.frames, d, batches_for(d, args))
            got: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
            for i in range(args.repeats):
                order = ["baseline", "current"] if i % 2 == 0 else ["current", "baseline"]
                for name in order:
                    r = run_child(trees[name], args, path, server.url)
                    got[name].append(r)
                    runs.append({"detections": d, "tree": name, **r})
                    print(f"D={d} {name}: {r['entries_per_s']} entries/s, "
                          f"{r['cpu_us_per_entry']} CPU us/entry", file=sys.stderr)  # fmt: skip
            digests = {r["digest"] for rs in got.values() for r in rs}
            med = {
                name: {
                    k: round(statistics.median(r[k] for r in rs), 1)
                    for k in ("entries_per_s", "cpu_us_per_entry")
                }
                for name, rs in got.items()
            }
            rows.append(
                {
                    "D": d,
                    "entries": got["current"][0]["entries"],
                    "baseline/s": med["baseline"]["entries_per_s"],
                    "current/s": med["current"]["entries_per_s"],
                    "ratio": round(
                        med["current"]["entries_per_s"] / med["baseline"]["entries_per_s"], 2
                    ),
                    "baseline CPU us": med["baseline"]["cpu_us_per_entry"],
                    "current CPU us": med["current"]["cpu_us_per_entry"],
                    "CPU ratio": round(
                        med["current"]["cpu_us_per_entry"] / med["baseline"]["cpu_us_per_entry"],
                        2,
                    ),
                    "same entries": len(digests) == 1,
                }
            )
    print(table(rows, list(rows[0])))
    summary = {
        "streams": args.streams,
        "frames_per_batch": args.frames,
        "repeats": args.repeats,
        "baseline": args.baseline,
        "load_avg_1m": os.getloadavg()[0],
        "rows": rows,
        "runs": runs,
    }
    path = write_result("output_stage", summary)
    print(f"wrote {path}", file=sys.stderr)
    print(json.dumps({"rows": rows, "file": str(path)}))


if __name__ == "__main__":
    main()
