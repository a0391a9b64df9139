#!/usr/bin/env python3
"""Fuzz the ingest decode path with mutated H.264 / HEVC inputs (issue #9, "Hostile input").

    .venv/bin/python bench/fuzz_ingest.py [--n 10000] [--seed 1] [--deadline 10] [--batch 200]

Two small valid clips (H.264 and HEVC, visionflow's scene generator) are written as MP4 and
as Annex-B elementary streams; input ``i`` is one of the four, mutated with a generator seeded
by ``(seed, i)``: bit flips, truncation, duplicated / removed / swapped NAL units, garbage
headers, garbage inserted mid-stream (so any input can be regenerated from its index).

Each input is written to a file and read through the real ingest decode path --
``visionflow.streams.sources.VideoSource`` (PyAV/FFmpeg, the CPU decoder an ingest process
uses) with a ``SourceConfig`` that allows files -- until it ends or raises.  Inputs run in
child processes, a batch per child, and every child also reads one *healthy* stream on its
own thread the whole time, as an ingest process reads its other cameras.  The parent
watches each child:

- an input the child has not finished ``--deadline`` seconds after starting it is a **hang**
  (the child is killed, the batch goes on in a new child);
- a child that dies mid-input (segfault, abort, killed for memory) is a **crash** of that
  input;
- otherwise the input is **ok** (it ended; the decoder may have concealed damage) or
  **error** (a ``SourceError``: refused, undecodable; what a stream's state machine turns
  into backoff or failed) -- an exception of any other type is counted as **unexpected**.

Reported: the counts, inputs per second, the peak RSS of any child, each child's RSS growth
from its first to its last input (a leak shows as growth), and the healthy streams' frames
(a crash takes its batch's healthy stream down: that is what "no crash of another stream"
measures).  Crashing and hanging inputs are kept under ``--keep`` for replay.  Writes
``bench/results/fuzz_ingest-<date>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASES = ("h264.mp4", "hevc.mp4", "h264.h264", "hevc.hevc")
MUTATIONS = (
    "bitflip",
    "truncate",
    "nal_dup",
    "nal_drop",
    "nal_swap",
    "garbage_header",
    "garbage_insert",
    "zero_run",
)
START = b"\x00\x00\x01"
HEALTHY_FPS = 30


# ---- inputs -------------------------------------------------------------------------
def make_bases(folder: Path, width: int = 320, height: int = 192) -> dict[str, bytes]:
    """The four valid inputs: H.264 / HEVC as MP4 and as Annex-B elementary streams."""
    import av

    from visionflow.scenes.clips import write_clip
    from visionflow.scenes.generator import SceneSpec

    bases: dict[str, bytes] = {}
    for codec in ("h264", "hevc"):
        mp4 = folder / f"base-{codec}.mp4"
        write_clip(SceneSpec(width, height, fps=15, seed=3), mp4, 2.0, codec, gop=10)  # type: ignore[arg-type]
        bases[f"{codec}.mp4"] = mp4.read_bytes()
        raw = folder / f"base.{codec}"
        with av.open(str(mp4)) as src, av.open(str(raw), "w", format=codec) as dst:
            out = dst.add_stream_from_template(src.streams.video[0])
            for packet in src.demux(src.streams.video[0]):
                if packet.dts is None:
                    continue
                packet.stream = out
                dst.mux(packet)
        bases[f"{codec}.{codec}"] = raw.read_bytes()
    write_clip(SceneSpec(160, 96, fps=HEALTHY_FPS, seed=4), folder / "healthy.mp4", 2.0)
    return bases


def _nal_units(data: bytes) -> list[bytes]:
    """Split an Annex-B stream at its start codes (each unit keeps its start code)."""
    cuts, at = [], data.find(START)
    while at != -1:
        begin = at - 1 if at > 0 and data[at - 1] == 0 else at
        cuts.append(begin)
        at = data.find(START, at + 3)
    if not cuts:
        return [data]
    units = [data[a:b] for a, b in zip(cuts, [*cuts[1:], len(data)], strict=True)]
    return [data[: cuts[0]], *units] if cuts[0] else units


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation of ``data`` (Annex-B NAL mutations find start codes in MP4 too:
    the clip's parameter sets and slices are there, length-prefixed)."""
    kind = rng.choice(MUTATIONS)
    buf = bytearray(data)
    n = len(buf)
    if kind == "bitflip":
        for _ in range(rng.choice((1, 2, 4, 16, 64, 256))):
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[rng.randrange(1, n) :]
    elif kind == "garbage_header":
        size = rng.randrange(1, min(n, 512))
        buf[:size] = rng.randbytes(size)
    elif kind == "garbage_insert":
        at = rng.randrange(n)
        buf[at:at] = rng.randbytes(rng.randrange(1, 4096))
    elif kind == "zero_run":
        at = rng.randrange(n)
        size = rng.randrange(1, 2048)
        buf[at : at + size] = bytes(min(size, n - at))
    else:
        units = _nal_units(data)
        if len(units) < 2:
            return mutate(data, rng)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(units))
            if kind == "nal_dup":
                units.insert(i, units[i] * rng.randrange(1, 4))
            elif kind == "nal_drop" and len(units) > 1:
                del units[i]
            elif kind == "nal_swap":
                j = rng.randrange(len(units))
                units[i], units[j] = units[j], units[i]
        buf = bytearray(b"".join(units))
        if rng.random() < 0.5 and buf:  # and damage one unit's header byte
            i = rng.randrange(len(buf))
            buf[i] = rng.randrange(256)
    return kind, bytes(buf)


def make_input(bases: dict[str, bytes], seed: int, index: int) -> tuple[str, str, bytes]:
    rng = random.Random(f"{seed}:{index}")
    base = BASES[index % len(BASES)]
    kind, data = mutate(bases[base], rng)
    if rng.random() < 0.2:  # sometimes a second mutation on top
        second, data = mutate(data, rng)
        kind = f"{kind}+{second}"
    return base, kind, data


# ---- the child: one batch of inputs plus a healthy stream -------------------------------
def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _policy() -> Any:
    from visionflow.config import SourceConfig

    return SourceConfig(
        allowed_schemes=["file"],
        open_timeout_s=5,
        read_timeout_s=5,
        stall_timeout_s=5,
        decode_threads=1,
    )


def _healthy(path: str, stop: threading.Event, counter: list[int]) -> None:
    """A steady stream in the same process: a real-time file read again at each end."""
    from visionflow.errors import SourceEndedError
    from visionflow.streams.config import StreamConfig
    from visionflow.streams.sources import VideoSource

    source = VideoSource(StreamConfig(id="healthy", url=path, realtime=True), _policy(), stop)
    while not stop.is_set():
        source.open()
        try:
            for _ in source.frames():
                counter[0] += 1
        except SourceEndedError:
            pass
        finally:
            source.close()


def child(healthy: str) -> None:
    """Read input paths from stdin, one per line; report JSON lines on stdout."""
    import av

    from visionflow.errors import SourceError
    from visionflow.streams.config import StreamConfig
    from visionflow.streams.sources import VideoSource

    av.logging.set_level(None)  # FFmpeg's complaints about the damage are expected
    stop, counter = threading.Event(), [0]
    thread = threading.Thread(target=_healthy, args=(healthy, stop, counter), daemon=True)
    thread.start()
    policy = _policy()

    def say(**fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    say(event="ready", rss_kib=_rss_kib())
    for line in sys.stdin:
        path = line.strip()
        if not path:
            break
        say(event="start", path=path)
        t0, frames, outcome, error = time.monotonic(), 0, "ok", ""
        source = VideoSource(
            StreamConfig(id="fuzz", url=path, realtime=False), policy, threading.Event()
        )
        try:
            source.open()
            for _ in source.frames():
                frames += 1
        except SourceError as exc:
            kind = type(exc).__name__
            outcome = "ok" if kind == "SourceEndedError" else "error"
            error = kind if outcome == "ok" else f"{kind}: {str(exc)[:160]}"
        except Exception as exc:  # an ingest reader would log it and back off: count it
            outcome, error = "unexpected", f"{type(exc).__name__}: {str(exc)[:160]}"
        finally:
            source.close()
        say(
            event="done",
            path=path,
            outcome=outcome,
            error=error,
            frames=frames,
            seconds=round(time.monotonic() - t0, 4),
            rss_kib=_rss_kib(),
            healthy_frames=counter[0],
            healthy_alive=thread.is_alive(),
        )
    stop.set()
    thread.join(10)
    say(
        event="end",
        healthy_frames=counter[0],
        healthy_alive=thread.is_alive(),
        maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    )


# ---- the parent ---------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace, work: Path, bases: dict[str, bytes]) -> None:
        self.args, self.work, self.bases = args, work, bases
        self.counts: Counter[str] = Counter()
        self.by_mutation: dict[str, Counter[str]] = {}
        self.errors: Counter[str] = Counter()
        self.kept: list[dict[str, Any]] = []
        self.peak_rss_kib = 0
        self.rss_growth_kib: list[int] = []
        self.children = 0
        self.healthy: list[dict[str, Any]] = []
        self.slowest = 0.0
        self.frames = 0

    def record(self, index: int, meta: tuple[str, str], outcome: str, error: str = "") -> None:
        self.counts[outcome] += 1
        self.by_mutation.setdefault(meta[1].split("+")[0], Counter())[outcome] += 1
        if error:
            self.errors[error.split(":")[0]] += 1
        if outcome in ("crash", "hang", "unexpected"):
            keep = Path(self.args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            src = self.work / f"in-{index}.{meta[0].split('.')[-1]}"
            dst = keep / f"{outcome}-{index}-{meta[0].replace('.', '_')}"
            if src.exists():
                shutil.copyfile(src, dst)
            self.kept.append(
                {"index": index, "outcome": outcome, "base": meta[0], "mutation": meta[1]}
                | {"error": error, "file": str(dst)}
            )

    def batch(self, indices: list[int], healthy: str) -> None:
        meta: dict[int, tuple[str, str]] = {}
        for i in indices:
            base, kind, data = make_input(self.bases, self.args.seed, i)
            (self.work / f"in-{i}.{base.split('.')[-1]}").write_bytes(data)
            meta[i] = (base, kind)
        pending = list(indices)
        while pending:
            pending = self._child(pending, meta, healthy)
        for i in indices:
            (self.work / f"in-{i}.{meta[i][0].split('.')[-1]}").unlink(missing_ok=True)

    def _child(
        self, pending: list[int], meta: dict[int, tuple[str, str]], healthy: str
    ) -> list[int]:
        """Run ``pending`` in one child; returns the inputs still to run after a crash/hang."""
        self.children += 1
        ext = {i: meta[i][0].split(".")[-1] for i in pending}
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", healthy],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        assert proc.stdin is not None and proc.stdout is not None
        paths = {str(self.work / f"in-{i}.{ext[i]}"): i for i in pending}
        proc.stdin.write("".join(f"{p}\n" for p in paths) + "\n")
        proc.stdin.flush()
        current: int | None = None
        started = born = time.monotonic()
        healthy_frames, healthy_alive, lifetime = 0, False, 0.0
        first_rss: int | None = None
        last_rss = 0
        done: set[int] = set()
        deadline = self.args.deadline
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line:  # the child is gone
                    code = proc.wait()
                    if current is not None:
                        self.record(current, meta[current], "crash", f"exit {code}")
                        done.add(current)
                    elif code != 0:
                        self.counts["child_failed"] += 1
                    break
                msg = json.loads(line)
                if msg["event"] == "start":
                    current, started = paths[msg["path"]], time.monotonic()
                elif msg["event"] == "done":
                    index = paths[msg["path"]]
                    self.record(index, meta[index], msg["outcome"], msg["error"])
                    done.add(index)
                    current = None
                    self.frames += msg["frames"]
                    self.slowest = max(self.slowest, msg["seconds"])
                    last_rss = msg["rss_kib"]
                    first_rss = last_rss if first_rss is None else first_rss
                    self.peak_rss_kib = max(self.peak_rss_kib, last_rss)
                    healthy_frames, healthy_alive = msg["healthy_frames"], msg["healthy_alive"]
                    lifetime = time.monotonic() - born
                elif msg["event"] == "end":
                    # as the last input finished (the healthy thread is stopped after it)
                    self.healthy.append(
                        {"frames": healthy_frames, "alive": healthy_alive, "seconds": lifetime}
                    )
                    self.peak_rss_kib = max(self.peak_rss_kib, msg["maxrss_kib"])
            elif current is not None and time.monotonic() - started > deadline:
                proc.kill()
                proc.wait()
                self.record(current, meta[current], "hang", f"over {deadline}s")
                done.add(current)
                break
            elif current is None and time.monotonic() - started > 120:
                proc.kill()
                proc.wait()
                raise RuntimeError("a fuzz child said nothing for 120 s between inputs")
        if proc.poll() is None:
            proc.wait(30)
        if first_rss is not None:
            self.rss_growth_kib.append(last_rss - first_rss)
        return [i for i in pending if i not in done]


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vf-fuzz-"))
    try:
        bases = make_bases(work)
        healthy = str(work / "healthy.mp4")
        fuzz = Run(args, work, bases)
        t0 = time.monotonic()
        index = 0
        while index < args.n:
            if args.max_seconds and time.monotonic() - t0 > args.max_seconds:
                break
            batch = list(range(index, min(index + args.batch, args.n)))
            fuzz.batch(batch, healthy)
            index = batch[-1] + 1
            done = sum(fuzz.counts.values())
            rate = done / (time.monotonic() - t0)
            print(f"{done} inputs, {rate:.1f}/s, {dict(fuzz.counts)}", flush=True)
        seconds = time.monotonic() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(fuzz.counts[k] for k in ("ok", "error", "crash", "hang", "unexpected"))
    return {
        "inputs": total,
        "requested": args.n,
        "seed": args.seed,
        "deadline_s": args.deadline,
        "seconds": round(seconds, 1),
        "inputs_per_s": round(total / seconds, 2) if seconds else None,
        "counts": {k: fuzz.counts[k] for k in ("ok", "error", "crash", "hang", "unexpected")},
        "child_failed": fuzz.counts["child_failed"],
        "by_mutation": {k: dict(v) for k, v in sorted(fuzz.by_mutation.items())},
        "errors": dict(fuzz.errors.most_common(12)),
        "frames_decoded": fuzz.frames,
        "slowest_input_s": round(fuzz.slowest, 3),
        "peak_rss_mib": round(fuzz.peak_rss_kib / 1024, 1),
        "max_rss_growth_mib": round(max(fuzz.rss_growth_kib, default=0) / 1024, 1),
        "children": fuzz.children,
        "healthy": {
            "children": len(fuzz.healthy),
            "all_alive": all(h["alive"] for h in fuzz.healthy),
            "fps": HEALTHY_FPS,
            "frames": sum(h["frames"] for h in fuzz.healthy),
            "seconds": round(sum(h["seconds"] for h in fuzz.healthy), 1),
            # per child: frames delivered / frames due at HEALTHY_FPS over its life
            "min_delivery_ratio": round(
                min(
                    (
                        h["frames"] / (HEALTHY_FPS * h["seconds"])
                        for h in fuzz.healthy
                        if h["seconds"] > 2
                    ),
                    default=1.0,
                ),
                3,
            ),
        },
        "kept": fuzz.kept[:50],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="mutated inputs to run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--batch", type=int, default=200, help="inputs per child process")
    parser.add_argument("--max-seconds", type=float, default=0, help="stop starting batches after")
    parser.add_argument("--keep", default="fuzz-findings", help="where crash/hang inputs go")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: results/)")
    args = parser.parse_args()
    result = run(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(args.out)
    else:
        from bench.common import write_result

        print(write_result("fuzz_ingest", result))
    print(json.dumps({k: result[k] for k in ("inputs", "counts", "inputs_per_s")}))


if __name__ == "__main__":
    main()
