#!/usr/bin/env python3
"""The batcher's rotation under a backlog: queue wait of frames, simulated, two policies.

    .venv/bin/python bench/batcher_sim.py [--seconds 20]

A discrete-event simulation (no processes, no GPU, no sleeping: simulated time) of
:class:`~visionflow.pipeline.batcher.DynamicBatcher` in front of one inference worker:
``N`` streams at 30 fps with random phases (one frame every 33.3 ms each, 0–3 ms of jitter),
``max_batch`` 64, ``max_delay`` 15 ms, 8 frames buffered per stream, a worker that takes
``4 ms + 0.22 ms x frames`` per batch with at most 4 batches queued on it (about what one
compiled torch-cuda worker did on an H100: ~3,500 frames/s at batch 64), and **a stall of
``--stall-ms`` every 2 s** (a hiccup: a GC pause, a slow batch, a context switch).

Two rotations, same arrivals:

- ``advance_by_one`` (the policy before b104fa7): each batch starts one stream further than
  the previous batch's start;
- ``resume`` (this tree): each batch starts after the last stream the previous batch served.

Reported per stream count and policy: queue wait p50/p99/max (arrival at the batcher ->
the worker starts the batch) and frames dropped from a full buffer after the first 2 s.
Prints a table, writes ``bench/results/batcher_sim-<date>.json``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import table, write_result
from visionflow.pipeline.batcher import DynamicBatcher
from visionflow.pipeline.frames import FrameRef, Letterbox

LB = Letterbox(1, 1, 1, 1, 1.0, 0, 0, 1, 1)
FPS = 30.0


class AdvanceByOne(DynamicBatcher):
    """The rotation before b104fa7: the start moves one stream per batch."""

    def take(self) -> tuple[FrameRef, ...]:
        batch: list[FrameRef] = []
        streams = self._order
        if not streams or not self._waiting:
            return ()
        start = self._start % len(streams)
        rotation = [sid for sid in streams[start:] + streams[:start] if sid in self._busy]
        while len(batch) < self.max_batch and rotation:
            still = []
            for stream_id in rotation:
                if len(batch) >= self.max_batch:
                    break
                queue = self._queues[stream_id]
                batch.append(queue.popleft()[1])
                if queue:
                    still.append(stream_id)
                else:
                    self._busy.discard(stream_id)
            rotation = still
        self._waiting -= len(batch)
        self._start = start + 1
        return tuple(batch)


def arrivals(n: int, seconds: float, seed: int) -> list[tuple[float, int, int]]:
    rnd = random.Random(seed)
    out = []
    for stream in range(n):
        phase = rnd.random() / FPS
        for k in range(int(seconds * FPS)):
            out.append((phase + k / FPS + rnd.random() * 0.003, stream, k))
    return sorted(out)


def simulate(
    batcher: DynamicBatcher, events: list[tuple[float, int, int]], stall_s: float
) -> dict[str, Any]:
    """Feed ``events``; dispatch due batches to a worker with 4 batches of room."""
    waits: list[float] = []
    drops = 0
    finishes: list[float] = []  # finish times of batches on the worker, in order
    now = 0.0
    for t, stream, seq in events:
        while True:  # dispatch every batch due before this arrival
            due = batcher.time_until_due(now)
            if due is None:
                break
            finishes = [f for f in finishes if f > now]
            ready = now + due if len(finishes) < 4 else max(now + due, finishes[0])
            if ready > t:
                break
            now = ready
            finishes = [f for f in finishes if f > now]
            if len(finishes) >= 4 or batcher.time_until_due(now) != 0.0:
                continue
            frames = batcher.take()
            begin = max(now, finishes[-1]) if finishes else now
            cost = (4.0 + 0.22 * len(frames)) / 1000
            if int(begin / 2.0) != int((begin - cost) / 2.0):  # every 2 s: a hiccup
                cost += stall_s
            finishes.append(begin + cost)
            waits.extend(begin - f.capture_ts for f in frames)
        now = t
        frame = FrameRef(str(stream), seq, None, t, 0.0, "pool", 0, LB)
        if batcher.add(frame, t) is not None and t > 2.0:
            drops += 1
    w = np.array(waits[len(waits) // 10 :]) * 1000
    return {
        "wait_p50_ms": round(float(np.percentile(w, 50)), 1),
        "wait_p99_ms": round(float(np.percentile(w, 99)), 1),
        "wait_max_ms": round(float(w.max()), 1),
        "drops": drops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--stall-ms", type=float, default=100.0)
    parser.add_argument("--streams", default="96,104,112")
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.streams.split(",")):
        events = arrivals(n, args.seconds, seed=n)
        for name, cls in (("advance_by_one", AdvanceByOne), ("resume", DynamicBatcher)):
            r = simulate(cls(64, 0.015, 8), events, args.stall_ms / 1000)
            rows.append({"streams": n, "policy": name, **r})
    for row in rows:
        if row["policy"] == "resume":
            base = next(r for r in rows if r["streams"] == row["streams"] and r is not row)
            row["p99_vs_before"] = round(row["wait_p99_ms"] / base["wait_p99_ms"], 2)
    print(
        table(
            rows,
            [
                "streams",
                "policy",
                "wait_p50_ms",
                "wait_p99_ms",
                "wait_max_ms",
                "drops",
                "p99_vs_before",
            ],
        )
    )
    settings = {"seconds": args.seconds, "stall_ms": args.stall_ms, "max_batch": 64}
    path = write_result("batcher_sim", {"settings": settings, "rows": rows})
    print(f"wrote {path}")
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
