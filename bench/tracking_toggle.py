#!/usr/bin/env python3
"""Tracking's cost on the data plane, measured inside one running pipeline (issue 11's "per-
stream overhead must not move the data-plane figures by more than 5 %").

    .venv/bin/python bench/tracking_toggle.py [--cycles 12] [--window 6] [--settle 1.5] \
        [--modes off,on,appearance] [--streams 8] [--out DIR]

``bench/tracking.py``'s ``pipeline`` section starts a new pipeline for every run, and its runs
of one mode differ by about ±5 % (one standard deviation) from start to start: as much as
the effect to be measured.  Here one pipeline runs the whole time (``bench/cpu_pipeline.py``'s
visionflow run: 8 synthetic 640x360 H.264 clips read flat out, the bundled detector on ONNX
Runtime, one inference worker, a private Redis) and every stream's ``tracking`` section is
changed at run time (``Pipeline.update_stream``, as the operator API does: the output stage
starts or stops tracking, the inference worker starts or stops describing boxes, the streams
are not reopened).  Each cycle runs every mode once; the order is shuffled once and then
rotated by one each cycle, so over ``len(modes)`` cycles every mode takes every position once
(``position`` in each row).  After each change ``--settle`` seconds pass (batches already
queued finish under the old settings), then ``--window`` seconds are measured: the
entries added to the streams' detections streams in Redis (``XINFO STREAM``'s
``entries-added``, read at both ends), and the CPU of every process of the pipeline and of
Redis (``psutil``).  The
newest entries of every stream are read back before and after each window to check whether
they carry track ids as the mode says (at least one stream must have detections to tell; the
check cannot tell ``on`` from ``appearance``, whose descriptors never reach Redis).

Per mode, the ratio of its frames/s to untracked's **in the same cycle**, then the geometric
mean of those ratios over the cycles with a 95 % confidence interval (Student's t on their
logarithms): the bound is **shown** when the interval's lower end is at least 0.95,
**broken** when its upper end is below 0.95, and undecided otherwise.  The same for the CPU
per published frame (bound at 1.05).  Four intervals a run (two modes, two figures), none
corrected for the others.  The rotation balances the positions only over a multiple of
``len(modes)`` cycles, and each mode always follows the same one.  The runs of 2026-11-28
(bench/README.md) counted the frames from the output stage's reports, sent every 0.5 s, so the
ends of their 4-5 s windows were up to 0.5 s stale: noise, not bias (every mode had it), which
counting the entries in Redis takes out.  ``--resummarise FILE`` prints a results file's
summary again from its rows (with this script's statistics).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# as in the pipeline's processes (visionflow/workers/procs.py: CHILD_ENV), set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table, write_result  # noqa: E402
from bench.cpu_processes import cpu_of, processes  # noqa: E402

BOUND = 0.05  # the 5 %


def set_mode(pipeline: Any, mode: str) -> None:
    """Every stream's ``tracking`` section to ``mode``'s (``bench/cpu_pipeline.py``)."""
    from bench.cpu_pipeline import TRACKING_MODES
    from visionflow.tracking.config import TrackingConfig

    section = TRACKING_MODES[mode]
    tracking = TrackingConfig.model_validate(section) if section is not None else None
    for stream in pipeline.streams().values():
        pipeline.update_stream(stream.model_copy(update={"tracking": tracking}))


def tracked_now(client: Any, prefix: str, stream_ids: list[str]) -> dict[str, bool | None]:
    """Per stream: whether its newest entries' detections carry track ids (None: no detection
    in them, so it cannot tell)."""
    from visionflow.schema import detections_key, parse_entry

    out: dict[str, bool | None] = {}
    for sid in stream_ids:
        rows = client.xrevrange(detections_key(prefix, sid), count=5)
        dets = [d for entry_id, fields in rows for d in parse_entry(entry_id, fields).detections]
        out[sid] = any("track_id" in d for d in dets) if dets else None
    return out


def check_mode(seen: dict[str, bool | None], mode: str, when: str) -> None:
    """:class:`RuntimeError` unless the streams that can tell carry track ids iff ``mode``
    tracks, and at least one can tell."""
    known = {sid: tracked for sid, tracked in seen.items() if tracked is not None}
    if not known:
        raise RuntimeError(f"mode {mode} {when}: no stream had detections to check it by")
    wrong = sorted(sid for sid, tracked in known.items() if tracked != (mode != "off"))
    if wrong:
        raise RuntimeError(f"mode {mode} {when}: not in effect on {wrong}")


def entries_added(client: Any, prefix: str, stream_ids: list[str]) -> int:
    """Entries ever added to the streams' detections streams (Redis >= 7 ``XINFO STREAM``'s
    ``entries-added``: exact at the moment it is read and unmoved by trimming), summed."""
    from visionflow.schema import detections_key

    pipe = client.pipeline(transaction=False)
    for sid in stream_ids:
        pipe.xinfo_stream(detections_key(prefix, sid))
    return sum(int(info["entries-added"]) for info in pipe.execute())


def window(
    pipeline: Any, server: Any, seconds: float, count: Callable[[], int]
) -> dict[str, float]:
    """Frames/s published (``count()``: the entries in Redis, read at both ends of the
    window, not the output stage's reports, which come every 0.5 s) and CPU ms per published
    frame over ``seconds``: every process together, and each (``cpu_ms_per_frame.<name>``,
    :func:`bench.cpu_processes.processes`' names)."""
    procs = processes(pipeline, server)
    cpu0 = {name: cpu_of(p) for name, p in procs.items()}
    before, t0 = count(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = count(), time.monotonic() - t0
    cpu1 = {name: cpu_of(p) for name, p in procs.items()}
    now = processes(pipeline, server)
    moved = [n for n in procs if n not in now or now[n].pid != procs[n].pid]
    if moved:
        raise RuntimeError(f"processes replaced during the window: {moved}")
    published = max(after - before, 1)
    used = {name: cpu1[name] - cpu0[name] for name in procs}
    return {
        "fps": (after - before) / elapsed,
        "cpu_ms_per_frame": 1000 * sum(used.values()) / published,
        "cores": sum(used.values()) / elapsed,
    } | {f"cpu_ms_per_frame.{name}": 1000 * v / published for name, v in used.items()}


def interval(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of ``ratios`` and its 95 % confidence interval (Student's t on their
    logarithms; needs two values or more)."""
    from scipy import stats  # type: ignore[import-untyped]

    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = float(stats.t.ppf(0.975, len(logs) - 1)) * statistics.stdev(logs) / len(logs) ** 0.5
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def verdict(low: float, high: float, bound: float, higher_is_worse: bool) -> str:
    """'shown' (the whole interval within the bound), 'broken' (the whole interval past it)
    or 'undecided'."""
    if higher_is_worse:
        low, high, bound = -high, -low, -bound
    return "shown" if low >= bound else "broken" if high < bound else "undecided"


def summarise(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Per tracked mode, the ratios to untracked within each cycle, their geometric mean and
    its interval (:func:`interval`), and the verdict on the bound."""
    by = {(r["cycle"], r["mode"]): r for r in rows}
    cycles = sorted({r["cycle"] for r in rows})
    out: dict[str, Any] = {}
    for mode in (m for m in modes if m != "off"):
        for key, bound, worse_up in (
            ("fps", 1 - BOUND, False),
            ("cpu_ms_per_frame", 1 + BOUND, True),
        ):
            ratios = [
                by[c, mode][key] / by[c, "off"][key]
                for c in cycles
                if (c, mode) in by and (c, "off") in by and by[c, "off"][key]
            ]
            if len(ratios) < 2:
                continue
            if min(ratios) <= 0:  # a window published nothing: no log, and no bound kept
                out[f"{key}_{mode}_vs_off"] = {
                    "ratios": [round(v, 4) for v in ratios],
                    "verdict": "broken" if not worse_up else "undecided",
                }
                continue
            mean, low, high = interval(ratios)
            out[f"{key}_{mode}_vs_off"] = {
                "ratios": [round(v, 4) for v in ratios],
                "mean": round(mean, 4),
                "ci95": [round(low, 4), round(high, 4)],
                "bound": bound,
                "verdict": verdict(low, high, bound, worse_up),
            }
        out |= per_process(by, cycles, mode)
    return out


def per_process(
    by: dict[tuple[int, str], dict[str, Any]], cycles: list[int], mode: str
) -> dict[str, Any]:
    """Where ``mode`` 's CPU goes: per process, its CPU ms per frame minus untracked's in the
    same cycle, the mean and a 95 % interval (Student's t; no bound: which process pays)."""
    from scipy import stats  # type: ignore[import-untyped]

    out: dict[str, Any] = {}
    prefix = "cpu_ms_per_frame."  # each process's key (window())
    for key in sorted({k for c in cycles for k in by.get((c, mode), {}) if k.startswith(prefix)}):
        diffs = [
            by[c, mode][key] - by[c, "off"][key]
            for c in cycles
            if key in by.get((c, mode), {}) and key in by.get((c, "off"), {})
        ]
        if len(diffs) < 2:
            continue
        mean = statistics.fmean(diffs)
        half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs)
        half /= len(diffs) ** 0.5
        out[f"{key}_{mode}_minus_off"] = {
            "mean": round(mean, 4),
            "ci95": [round(mean - half, 4), round(mean + half, 4)],
        }
    return out


def orders(modes: list[str], cycles: int, seed: int) -> list[list[str]]:
    """Each cycle's order: ``modes`` shuffled once, then rotated by one each cycle (every mode
    in every position once per ``len(modes)`` cycles)."""
    base = modes[:]
    random.Random(seed).shuffle(base)
    return [base[c % len(base) :] + base[: c % len(base)] for c in range(cycles)]


def cycle(
    pipeline: Any, server: Any, client: Any, number: int, order: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One cycle: each mode in ``order`` set, settled, checked, measured and checked again."""
    prefix = pipeline.config.redis.key_prefix
    ids = list(pipeline.streams())
    rows = []
    for position, mode in enumerate(order):
        set_mode(pipeline, mode)
        time.sleep(args.settle)
        check_mode(tracked_now(client, prefix, ids), mode, f"cycle {number}, before its window")
        count = functools.partial(entries_added, client, prefix, ids)
        measured = window(pipeline, server, args.window, count)
        check_mode(tracked_now(client, prefix, ids), mode, f"cycle {number}, after its window")
        row = {"cycle": number, "position": position, "mode": mode}
        row |= {k: round(v, 3) for k, v in measured.items()}
        rows.append(row)
        print(row, flush=True)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run: its rows, its summary, and the error that stopped it early (if any:
    the rows measured before it are kept)."""
    import redis

    from bench.cpu_pipeline import make_clips, visionflow_config
    from visionflow.redis_server import EmbeddedRedis
    from visionflow.workers.supervisor import Pipeline

    modes = args.modes.split(",")
    if "off" not in modes:
        raise SystemExit("--modes must include 'off' (the baseline)")
    clips = make_clips(args.streams, 640, 360, ROOT / ".cache" / "bench-clips")
    rows: list[dict[str, Any]] = []
    error = None
    with EmbeddedRedis() as server:
        config = visionflow_config(clips, server.url, 8, None, {"backend": "onnxruntime"})
        client = redis.Redis.from_url(server.url)
        pipeline = Pipeline(config, server.url, log_level=logging.WARNING)
        pipeline.start()
        try:
            pipeline.wait_ready(120)
            time.sleep(args.warmup)
            for number, order in enumerate(orders(modes, args.cycles, args.seed)):
                rows += cycle(pipeline, server, client, number, order, args)
        except Exception as exc:  # a failed check, Redis gone...: keep the rows measured
            error = f"{type(exc).__name__}: {exc}"
            print(f"stopped early: {error}", flush=True)
        finally:
            pipeline.stop()
    try:
        summary = summarise(rows, modes)
    except Exception as exc:  # the rows are written whatever happens here
        summary, error = {}, error or f"summary failed: {type(exc).__name__}: {exc}"
    return {"rows": rows, "summary": summary, "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=12, help="each mode once per cycle")
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured per mode")
    parser.add_argument("--settle", type=float, default=1.5, help="seconds after each change")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the first")
    parser.add_argument("--modes", default="off,on,appearance")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11, help="of the modes' first order")
    parser.add_argument("--out", type=Path, default=None, help="results folder (bench/results)")
    parser.add_argument("--resummarise", type=Path, default=None, help="a results file")
    args = parser.parse_args()
    if args.resummarise is not None:
        saved = json.loads(args.resummarise.read_text())
        modes = list(dict.fromkeys(r["mode"] for r in saved["rows"]))
        report(summarise(saved["rows"], modes))
        return
    result = run(args)
    print(table(result["rows"], ["cycle", "position", "mode", "fps", "cpu_ms_per_frame", "cores"]))
    report(result["summary"])
    args_out = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_result("tracking_toggle", {"args": args_out, **result}, args.out)
    print(f"wrote {path}")
    if result["error"]:
        raise SystemExit(f"stopped early: {result['error']}")


def report(summary: dict[str, Any]) -> None:
    for name, s in summary.items():
        if "verdict" not in s:  # a process's share: a difference, no bound
            print(f"{name}: {s['mean']:+.3f} ms 95% CI {s['ci95']}")
            continue
        if "mean" not in s:
            print(f"{name}: a window published nothing: ratios {s['ratios']} -> {s['verdict']}")
            continue
        print(f"{name}: mean {s['mean']} 95% CI {s['ci95']} bound {s['bound']} -> {s['verdict']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
