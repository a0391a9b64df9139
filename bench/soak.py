"""Soak (issue #9): N real RTSP cameras through the whole CPU pipeline into a real Redis for a
long time, with a chaos event every few minutes, then the books.

Not part of the test suite.  Run it in the background and read the table at the end::

    .venv/bin/python bench/soak.py --streams 4 --size 160x120 --fps 5 --minutes 35

Parts: one ``tests/rtsp_server.py`` per camera (so killing one camera touches no other),
camera 0 behind :class:`tests.tcp_proxy.TcpProxy` (for link stalls; in a child process of its
own), a private ``redis-server`` with ``appendonly yes`` + ``appendfsync always`` (a SIGKILL
loses nothing it acknowledged), the :class:`~visionflow.workers.supervisor.Pipeline` in this
process with a durable spool.  This process is the pipeline's main process, the one whose RSS
is measured as ``main``: what the soak itself keeps lives elsewhere (samples and Redis lags
are appended to files and read back after the stop, the proxy's threads and the video bytes
they carry are in the proxy's process), so its growth is the pipeline's.  Chaos, in rotation
every ``--chaos-every`` seconds after ``--warmup``:

- ``camera_restart``: camera 1's server killed, back after ``--down`` seconds;
- ``redis_restart``: redis-server SIGKILLed, back after ``--down`` seconds (results spooled);
- ``worker_kill``: inference worker 0 SIGKILLed (its batches re-sent, it is restarted);
- ``ingest_kill``: ingest process 0 SIGKILLed (restarted, its cameras reconnect);
- ``link_stall``: camera 0's link stalled for ``--down`` seconds through the proxy.

Measured: recovery (reconnect) time per affected stream and event, drops by reason, lost
(published by the pipeline but not in Redis, by per-stream seq: must be 0), duplicates (a seq
twice in Redis), the accounting identity after the stop, RSS (and its anonymous part: the
heap) and open-fd growth per process per hour after the warm-up (least squares over samples;
each incarnation of a restarted process separately, the longest-lived one reported; also
after one full rotation of the chaos events, once each fault has been met),
``/dev/shm`` segments of this run left after the stop, CUDA IPC mappings (only where a GPU is
present: none on a CPU run), and the Redis lag (now minus the newest entry's capture time,
streaming streams only), in and out of chaos windows.  ``--probe S`` adds what this process's
memory is made of every S seconds (glibc, pymalloc, threads, objects by type)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.common import table, write_result  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402
from visionflow.config import AppConfig, parse_config  # noqa: E402
from visionflow.redis_server import free_port  # noqa: E402
from visionflow.schema import detections_key, parse_entry  # noqa: E402
from visionflow.streams.state import StreamState  # noqa: E402
from visionflow.workers.supervisor import Pipeline  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
EVENTS = ("camera_restart", "redis_restart", "worker_kill", "ingest_kill", "link_stall")
PREFIX = "soak"
Sample = tuple[float, float, int, float, float]  # (s, RSS MiB, fds, anon MiB, file MiB)
HEAP_PARTS = ("visionflow", "redis", "multiprocessing")  # whose allocations --tracemalloc follows


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ---------------------------------------------------------------------------- parts
class Camera:
    """One ``tests/rtsp_server.py`` process serving one live test mount on a fixed port."""

    def __init__(self, spec: str) -> None:
        self.spec, self.port = spec, free_port()
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        args = [SYSTEM_PYTHON, str(ROOT / "tests" / "rtsp_server.py"), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*args, "--mount", f"cam={self.spec}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("READY"):
                self.process.stdout.close()  # nothing more is read: never block the server
                return
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError(f"RTSP server did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


class ProxyProcess:
    """:class:`tests.tcp_proxy.TcpProxy` in a child process (``soak.py --proxy-child PORT``):
    its pump threads, new ones at each reconnect, and the video bytes they carry must not
    live in the process the soak measures (that one hosts the pipeline's main process).
    Commands ``stall`` / ``pass`` go through the child's stdin, each answered ``OK``."""

    def __init__(self, upstream_port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--proxy-child", str(upstream_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError(f"proxy child did not start: {line}")
        self.port = int(line[1])

    def _command(self, what: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(what + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if answer != "OK":
            raise RuntimeError(f"proxy child answered {answer!r} to {what!r}")

    def stall(self) -> None:
        self._command("stall")

    def passthrough(self) -> None:
        self._command("pass")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()  # EOF: the child closes the proxy and exits
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def proxy_child(upstream_port: int) -> int:
    """The child side of :class:`ProxyProcess`."""
    with TcpProxy(upstream_port) as proxy:
        print(f"PORT {proxy.port}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "stall":
                proxy.stall()
            elif command == "pass":
                proxy.passthrough()
            print("OK" if command in ("stall", "pass") else f"unknown {command}", flush=True)
    return 0


class DurableRedis:
    """redis-server, ``appendfsync always``, restartable on the same port and directory."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        args += ["--protected-mode", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    client.close()
                    return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def soak_config(urls: list[str], redis_url: str, spool: Path) -> AppConfig:
    raw: dict[str, Any] = {
        "streams": [{"id": f"cam{i}", "url": url} for i, url in enumerate(urls)],
        "redis": {
            "url": redis_url,
            "key_prefix": PREFIX,
            "maxlen": 10_000_000,  # never trimmed: every entry stays to be counted
            "approximate_trim": False,
            "spool_dir": str(spool),
        },
        "source": {
            "open_timeout_s": 5,
            "read_timeout_s": 3,
            "stall_timeout_s": 4,
            "backoff_initial_s": 0.5,
            "backoff_max_s": 4,
        },
        "workers": {"ingest_processes": 2, "inference_workers": 2},
    }
    return parse_config(raw, "<soak>")


# ---------------------------------------------------------------------------- probes
def proc_sample(pid: int) -> tuple[float, int, float, float] | None:
    """(RSS in MiB, open fds, anonymous RSS in MiB, file-backed RSS in MiB) of a live process:
    heap growth shows in the anonymous part; the file-backed part (shared libraries' pages
    faulted in as code paths first run) settles."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    kib = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            kib[key] = int(value.split()[0])
    if "VmRSS" not in kib:
        return None
    return kib["VmRSS"] / 1024, fds, kib.get("RssAnon", 0) / 1024, kib.get("RssFile", 0) / 1024


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600


def cuda_ipc_mappings(pids: list[int]) -> int | None:
    """Mappings of CUDA IPC handles (``/dev/nvidia*`` shared regions) in the given processes;
    None where no GPU is present."""
    if not Path("/dev/nvidiactl").exists():
        return None
    count = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            count += sum(
                1 for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "nvidia" in line
            )
    return count


class SampleLog:
    """Rows of numbers (and names) appended to a tab-separated file as they come, read back
    once at the end: a long run's samples cost the measured process a file buffer, not a list
    that grows for hours."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", buffering=1)

    def write(self, *values: object) -> None:
        self._file.write("\t".join(map(str, values)) + "\n")

    def read(self) -> list[tuple[Any, ...]]:
        self._file.flush()
        rows = []
        for line in self.path.read_text().splitlines():
            rows.append(tuple(_number(v) for v in line.split("\t")))
        return rows

    def close(self) -> None:
        self._file.close()


def _number(text: str) -> Any:
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None)
    with contextlib.suppress(AttributeError):
        libc.mallinfo2.restype = _Mallinfo2
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p] * 2
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc


def pymalloc_stats() -> dict[str, int]:
    """CPython's small-object allocator: arenas (1 MiB each) and bytes in live blocks, free
    blocks and empty pools (``sys._debugmallocstats``, which writes to fd 2: captured for an
    instant, so a line another thread writes to stderr then is lost: diagnosis only)."""
    keys = {
        "# arenas allocated current": "arenas",
        "# bytes in allocated blocks": "live_bytes",
        "# bytes in available blocks": "free_block_bytes",
        "unused pools": "unused_pool_bytes",
    }
    with tempfile.TemporaryFile("w+") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read()
    out: dict[str, int] = {}
    for line in text.splitlines():
        for key, name in keys.items():
            if line.startswith(key) or (name == "unused_pool_bytes" and key in line):
                with contextlib.suppress(ValueError):
                    out[name] = int(line.rsplit("=", 1)[1].replace(",", "").strip())
    return out


def heap_probe(collect: bool = False) -> dict[str, Any]:
    """What this process's memory is made of, for ``--probe``: glibc's totals (``mallinfo2``:
    bytes in use, free inside the heaps, mmapped), its arenas (``malloc_info``), pymalloc's
    arenas, the resident size of ``[heap]`` and of anonymous mappings, threads, pymalloc
    blocks and objects by type."""
    out: dict[str, Any] = {}
    libc = _libc()
    with contextlib.suppress(AttributeError):
        mi = libc.mallinfo2()
        out["malloc"] = {
            "in_use_kib": mi.uordblks // 1024,
            "free_kib": mi.fordblks // 1024,
            "arena_kib": mi.arena // 1024,
            "mmapped_kib": mi.hblkhd // 1024,
            "top_pad_kib": mi.keepcost // 1024,
        }
    with tempfile.NamedTemporaryFile("r", suffix=".xml") as xml, contextlib.suppress(Exception):
        f = libc.fopen(xml.name.encode(), b"w")
        libc.malloc_info(0, f)
        libc.fclose(f)
        out["arenas"] = xml.read().count("<heap nr=")
    out["pymalloc"] = pymalloc_stats()
    heap = anon = anon_n = 0
    name = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:
            name = fields[5] if len(fields) > 5 else ""
            anon_n += name == ""
        elif fields and fields[0] == "Rss:":
            kib = int(fields[1])
            heap += kib if name == "[heap]" else 0
            anon += kib if name == "" else 0
    out["heap_rss_kib"], out["anon_rss_kib"], out["anon_maps"] = heap, anon, anon_n
    out["threads"] = len(os.listdir("/proc/self/task"))
    out["thread_names"] = dict(Counter(t.name.rstrip("0123456789-") for t in threading.enumerate()))
    out["pymalloc_blocks"] = sys.getallocatedblocks()
    out["gc_counts"] = gc.get_count()
    out["gc_collections"] = [g["collections"] for g in gc.get_stats()]
    out["types"] = dict(Counter(type(o).__name__ for o in gc.get_objects()))
    if collect:  # what of the above was cyclic garbage not yet collected
        out["gc_freed"] = gc.collect()
        out["pymalloc_after_gc"] = pymalloc_stats()
        out["pymalloc_blocks_after_gc"] = sys.getallocatedblocks()
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------------------- the run
class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        spec = f"test:{args.size}@{args.fps}"
        self.cameras = [Camera(spec) for _ in range(args.streams)]
        self.redis = DurableRedis(work / "redis")
        (work / "redis").mkdir()
        self.proxy: ProxyProcess | None = None
        self.pipeline: Pipeline | None = None
        self.client: redis.Redis | None = None
        # the samples go to files, read back after the stop: the driver's bookkeeping must not
        # grow the heap of the process it measures (it hosts the pipeline's main process)
        self.sample_log = SampleLog(work / "samples.tsv")
        self.lag_log = SampleLog(work / "lags.tsv")
        self.probe_log = (work / "probe.jsonl").open("a", buffering=1) if args.probe else None
        self._next_probe = 0.0
        self._probe_prev: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.windows: list[tuple[float, float]] = []  # chaos windows (monotonic)
        self.shm_peak = 0
        self.t0 = time.monotonic()
        self.heap_base: tracemalloc.Snapshot | None = None
        self.heap_reports: list[dict[str, Any]] = []
        self._heap_prev: tracemalloc.Snapshot | None = None
        self._next_heap = 0.0

    # ---- helpers -------------------------------------------------------------------
    @property
    def p(self) -> Pipeline:
        assert self.pipeline is not None
        return self.pipeline

    def status(self) -> Any:
        return self.p.status()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> float | None:
        """Seconds until ``predicate`` held (sampling on the way), None past ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            self.maybe_sample()
            time.sleep(0.2)
        return None

    def streaming_and_publishing(self, stream_ids: list[str], timeout: float) -> float | None:
        marks = {s.stream_id: s.published for s in self.status().streams}

        def back() -> bool:
            st = {s.stream_id: s for s in self.status().streams}
            return all(
                st[i].state is StreamState.STREAMING and st[i].published > marks[i]
                for i in stream_ids
            )

        return self.wait(back, timeout)

    def idle(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.maybe_sample()
            time.sleep(min(1.0, max(0.0, until - time.monotonic())))

    # ---- sampling ------------------------------------------------------------------
    _next_sample = 0.0

    def maybe_sample(self) -> None:
        now = time.monotonic()
        if now < self._next_sample:
            return
        self._next_sample = now + self.args.sample
        pids = {"main": os.getpid()}
        for key, child in list(self.p.group.children.items()):
            with contextlib.suppress(Exception):
                if child.alive and child.process.pid:
                    pids[key] = child.process.pid
        for role, pid in pids.items():
            got = proc_sample(pid)
            if got is not None:
                rss, fds, anon, file = got
                self.sample_log.write(role, pid, round(now - self.t0, 2), rss, fds, anon, file)
        self.shm_peak = max(self.shm_peak, len(self.shm_segments()))
        self.sample_lag(now)
        self.maybe_heap(now)
        self.maybe_probe(now)

    def maybe_heap(self, now: float) -> None:
        """With ``--tracemalloc S``: every S seconds after the warm-up, the Python allocations
        of this process that grew most since the first snapshot (by line), printed and kept."""
        every = self.args.tracemalloc
        if not every or now - self.t0 < self.args.warmup or now < self._next_heap:
            return
        self._next_heap = now + every
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        if self.heap_base is None:
            self.heap_base = snap
            return
        top = snap.compare_to(self.heap_base, "lineno")[:15]
        rows = [
            {
                "where": str(d.traceback[0]),
                "kib": round(d.size_diff / 1024, 1),
                "count": d.count_diff,
            }
            for d in top
        ]
        grown = self.grown_containers()
        self.heap_reports.append({"t_s": round(now - self.t0), "top": rows, "containers": grown})
        say(f"heap growth since the first snapshot ({round(now - self.t0)} s):")
        for r in rows:
            say(f"  {r['kib']:>9} KiB {r['count']:>7}  {r['where']}")
        for c in grown:
            say(f"  container +{c['grew']} (now {c['len']}): {c['what']}")
        # late against late: what grew since the previous snapshot, by whole traceback, among
        # allocations made under visionflow, redis-py or multiprocessing
        ours = snap.filter_traces(
            [tracemalloc.Filter(True, f"*{part}*", all_frames=True) for part in HEAP_PARTS]
        )
        if self._heap_prev is not None:
            grew = ours.compare_to(self._heap_prev, "traceback")[:5]
            self.heap_reports[-1]["since_previous"] = [
                {
                    "kib": round(stat.size_diff / 1024, 1),
                    "count": stat.count_diff,
                    "traceback": stat.traceback.format()[-20:],
                }
                for stat in grew
            ]
            for stat in grew:
                kib = stat.size_diff / 1024
                say(f"  {kib:.1f} KiB ({stat.count_diff:+}) since the previous, at:")
                for line in stat.traceback.format()[-20:]:
                    say(f"    {line}")
        self._heap_prev = ours

    def probes(self) -> list[dict[str, Any]]:
        if self.probe_log is None:
            return []
        self.probe_log.flush()
        text = (self.work / "probe.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def maybe_probe(self, now: float) -> None:
        """With ``--probe S``: every S seconds, :func:`heap_probe` of this process as one line
        of ``probe.jsonl`` (object counts as the change since the previous line)."""
        if self.probe_log is None or now < self._next_probe:
            return
        self._next_probe = now + self.args.probe
        got = heap_probe(self.args.probe_gc)
        got["t_s"] = round(now - self.t0)
        got["rss_kib"] = round((proc_sample(os.getpid()) or (0.0,))[0] * 1024)
        types = got.pop("types")
        if self._probe_prev is not None:
            delta = {k: n - self._probe_prev.get(k, 0) for k, n in types.items()}
            got["types_delta"] = dict(sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:12])
        self._probe_prev = types
        if tracemalloc.is_tracing():
            got["traced_kib"] = tracemalloc.get_traced_memory()[0] // 1024
        self.probe_log.write(json.dumps(got) + "\n")
        say(
            f"probe rss={got['rss_kib']} KiB malloc={got.get('malloc')} arenas={got.get('arenas')}"
            f" heap_rss={got['heap_rss_kib']} anon_rss={got['anon_rss_kib']}"
            f" threads={got['threads']} blocks={got['pymalloc_blocks']} pymalloc={got['pymalloc']}"
            f" gc={got['gc_counts']} {got['gc_collections']} freed={got.get('gc_freed')}"
            f" after={got.get('pymalloc_after_gc')}"
            f" types={got.get('types_delta')}"
        )

    _lens: dict[int, int] | None = None

    def grown_containers(self) -> list[dict[str, Any]]:
        """Lists, dicts, sets and deques that grew most since the last call, each with what
        holds it (a leak's holder, not only where its items were allocated)."""
        import collections
        import gc

        kinds = (list, dict, set, collections.deque)
        lens = {id(o): len(o) for o in gc.get_objects() if isinstance(o, kinds)}
        before, self._lens = self._lens, lens
        if before is None:
            return []
        grew = sorted(
            ((n - before.get(i, 0), i) for i, n in lens.items() if n - before.get(i, 0) > 20),
            reverse=True,
        )[:5]
        by_id = {id(o): o for o in gc.get_objects() if id(o) in {i for _, i in grew}}
        out = []
        for delta, i in grew:
            obj = by_id.get(i)
            holders = [
                type(r).__name__ + (f" keys={list(r)[:6]}" if isinstance(r, dict) else "")
                for r in gc.get_referrers(obj)[:4]
                if r is not by_id and not isinstance(r, type(sys._getframe()))
            ]
            sample = repr(list(obj)[:2] if not isinstance(obj, dict) else list(obj.items())[:2])
            out.append(
                {
                    "grew": delta,
                    "len": lens[i],
                    "what": f"{type(obj).__name__} {sample[:160]} held by {holders}",
                }
            )
        return out

    def sample_lag(self, now: float) -> None:
        if self.client is None:
            self.client = redis.Redis.from_url(
                self.redis.url, decode_responses=True, socket_timeout=1, socket_connect_timeout=1
            )
        streaming = [s.stream_id for s in self.status().streams if s.state is StreamState.STREAMING]
        try:
            for sid in streaming:
                newest = self.client.xrevrange(detections_key(PREFIX, sid), count=1)
                if newest:
                    entry = parse_entry(*newest[0])
                    self.lag_log.write(round(now - self.t0, 2), time.time() - entry.capture_ts)
        except (redis.RedisError, OSError):
            pass  # Redis is down: the lag is measured once it is back

    def shm_segments(self) -> list[str]:
        return sorted(p.name for p in Path("/dev/shm").glob(f"vf-{self.p.run_id}*"))

    # ---- chaos ---------------------------------------------------------------------
    def chaos(self, kind: str) -> dict[str, Any]:
        down = self.args.down
        start = time.monotonic()
        result: dict[str, Any] = {"event": kind, "at_s": round(start - self.t0, 1)}
        recovery: dict[str, float | None] = {}
        if kind == "camera_restart":
            cam = self.cameras[1 % len(self.cameras)]
            cam.kill()
            self.idle(down)
            cam.start()
            recovery["cam1"] = self.streaming_and_publishing(["cam1"], 120)
        elif kind == "redis_restart":
            self.redis.kill()
            self.idle(down)
            self.redis.start()
            recovery["redis"] = self.wait(lambda: self.status().redis_connected, 120)
            backlog = 2 * len(self.cameras)  # in steady state a batch or two is on its way
            drained = self.wait(lambda: self.status().redis_pending <= backlog, 180)
            result["backlog_drained_s"] = None if drained is None else round(drained, 2)
        elif kind == "worker_kill":
            child = self.p.group.children["inference-0"]
            restarts = self.status().workers[0].restarts
            os.kill(child.process.pid, signal.SIGKILL)
            recovery["inference-0"] = self.wait(
                lambda: (w := self.status().workers[0]).restarts > restarts and w.state == "ready",
                120,
            )
        elif kind == "ingest_kill":
            child = self.p.group.children["ingest-0"]
            old = child.process
            os.kill(old.pid, signal.SIGKILL)
            self.wait(lambda: child.process is not old and child.alive, 60)
            ids = [s.id for s in self.p._ingest_streams[0]]
            for sid in ids:  # the restarted process reconnects each of its cameras
                recovery[sid] = self.streaming_and_publishing([sid], 120)
        elif kind == "link_stall":
            assert self.proxy is not None
            self.proxy.stall()
            self.idle(down)
            self.proxy.passthrough()
            recovery["cam0"] = self.streaming_and_publishing(["cam0"], 120)
        result["recovery_s"] = {k: None if v is None else round(v, 2) for k, v in recovery.items()}
        self.windows.append((start - self.t0, time.monotonic() - self.t0 + 10))
        return result

    # ---- the whole run -------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        for cam in self.cameras:
            cam.start()
        self.redis.start()
        self.proxy = ProxyProcess(self.cameras[0].port)
        urls = [f"rtsp://127.0.0.1:{self.proxy.port}/cam"]
        urls += [f"rtsp://127.0.0.1:{c.port}/cam" for c in self.cameras[1:]]
        cfg = soak_config(urls, self.redis.url, self.work / "spool")
        self.pipeline = Pipeline(cfg, self.redis.url, log_level=logging.WARNING)
        self.pipeline.start()
        self.pipeline.wait_ready(120)
        ids = [s.id for s in cfg.streams]
        self.t0 = time.monotonic()
        say(f"pipeline up: {len(ids)} streams {a.size}@{a.fps}; run {a.minutes} min")
        if self.streaming_and_publishing(ids, 120) is None:
            raise RuntimeError(f"not every stream came up: {self.status().streams}")
        end = self.t0 + a.minutes * 60
        next_chaos, turn = self.t0 + a.warmup, 0
        while time.monotonic() < end:
            if time.monotonic() >= next_chaos and end - time.monotonic() > a.down + 60:
                kind = EVENTS[turn % len(EVENTS)]
                say(f"chaos: {kind}")
                event = self.chaos(kind)
                say(f"  {event}")
                self.events.append(event)
                turn += 1
                next_chaos = time.monotonic() + a.chaos_every
            self.idle(min(5.0, max(0.0, end - time.monotonic())))
            st = self.status()
            say(
                "published "
                + " ".join(f"{s.stream_id}={s.published}({s.state})" for s in st.streams)
                + f" redis={'up' if st.redis_connected else 'down'} pending={st.redis_pending}"
            )
        self.maybe_sample()
        pids = sorted({pid for _, pid, *_ in self.sample_log.read()})
        say("stopping")
        self.pipeline.stop()
        return self.books(cuda_ipc_mappings(pids))

    def books(self, cuda_ipc: int | None) -> dict[str, Any]:
        samples: dict[tuple[str, int], list[Sample]] = {}
        for role, pid, t, rss, fds, anon, file in self.sample_log.read():
            samples.setdefault((str(role), int(pid)), []).append((t, rss, int(fds), anon, file))
        lags = [(t, lag) for t, lag in self.lag_log.read()]
        final = self.status()
        assert self.client is not None
        drops: Counter[str] = Counter()
        streams = []
        for s in final.streams:
            drops.update(s.drops)
            rows = self.client.xrange(detections_key(PREFIX, s.stream_id))
            seqs = [parse_entry(i, f).seq for i, f in rows]
            unique = set(seqs)
            streams.append(
                {
                    "stream": s.stream_id,
                    "frames": s.frames,
                    "published": s.published,
                    "in_redis": len(seqs),
                    "lost": s.published - len(unique),
                    "duplicates": len(seqs) - len(unique),
                    "in_order": seqs == sorted(seqs),
                    "drops": dict(s.drops),
                    "in_flight": s.in_flight,
                    "accounted": s.accounted and s.in_flight == 0,
                    "reconnects": s.reconnects,
                }
            )
        recoveries = [
            v
            for e in self.events
            if e["event"] in ("camera_restart", "ingest_kill", "link_stall")
            for v in e["recovery_s"].values()
            if v is not None
        ]
        failed = [e for e in self.events if any(v is None for v in e["recovery_s"].values())]
        in_chaos = lambda t: any(a <= t <= b for a, b in self.windows)  # noqa: E731
        steady = [lag for t, lag in lags if not in_chaos(t)]
        return {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
            "events": self.events,
            "events_not_recovered": len(failed),
            "reconnect_s": {
                "n": len(recoveries),
                "p50": percentile(recoveries, 0.5),
                "p99": percentile(recoveries, 0.99),
                "max": max(recoveries, default=None),
            },
            "streams": streams,
            "drops_by_reason": dict(drops),
            "lost": sum(r["lost"] for r in streams),
            "duplicates": sum(r["duplicates"] for r in streams),
            "accounted": all(r["accounted"] for r in streams),
            "ledger_violations": final.ledger_violations,
            "growth": self.growth(samples),
            "samples": {f"{role}:{pid}": pts for (role, pid), pts in samples.items()},
            "heap_growth": self.heap_reports,
            "probes": self.probes(),
            "shm_peak": self.shm_peak,
            "shm_left": self.shm_segments(),
            "cuda_ipc_mappings_left": cuda_ipc,
            "redis_lag_s": {
                "max_steady": max(steady, default=None),
                "p99_steady": percentile(steady, 0.99),
                "max_overall": max((lag for _, lag in lags), default=None),
            },
        }

    def growth(self, samples: dict[tuple[str, int], list[Sample]]) -> list[dict[str, Any]]:
        """Per role, the longest-lived incarnation's RSS (MiB/h; its anonymous part too) and fd
        (/h) slope after the warm-up (needs at least 10 minutes of samples)."""
        best: dict[str, tuple[str, int, list[Sample]]] = {}
        for (role, pid), points in samples.items():
            after = [p for p in points if p[0] >= self.args.warmup]
            if len(after) >= 3 and after[-1][0] - after[0][0] >= 600:
                held = best.get(role)
                if held is None or len(after) > len(held[2]):
                    best[role] = (role, pid, after)
        rows = []
        for role, pid, pts in sorted(best.values()):
            rows.append(
                {
                    "process": role,
                    "pid": pid,
                    "minutes": round((pts[-1][0] - pts[0][0]) / 60, 1),
                    "rss_mib_start": round(pts[0][1], 1),
                    "rss_mib_end": round(pts[-1][1], 1),
                    "rss_mib_per_h": round(slope_per_hour([(p[0], p[1]) for p in pts]), 2),
                    "rss_mib_per_h_2nd_half": round(
                        slope_per_hour([(p[0], p[1]) for p in pts[len(pts) // 2 :]]), 2
                    ),
                    "anon_mib_per_h_2nd_half": round(
                        slope_per_hour([(p[0], p[3]) for p in pts[len(pts) // 2 :]]), 2
                    ),
                    "rss_mib_per_h_after_cycle": self.after_cycle_slope(pts),
                    "file_mib_start": round(pts[0][4], 1),
                    "file_mib_end": round(pts[-1][4], 1),
                    "fds_start": pts[0][2],
                    "fds_end": pts[-1][2],
                    "fds_per_h": round(slope_per_hour([(p[0], float(p[2])) for p in pts]), 2),
                }
            )
        return rows

    def after_cycle_slope(self, pts: list[Sample]) -> float | None:
        """RSS slope (MiB/h) after one full rotation of the chaos events: what a process keeps
        growing once each fault has been met once (a high-water mark such as a buffer sized for
        the first Redis outage is paid in that first rotation); None under 10 minutes left."""
        start = self.args.warmup + len(EVENTS) * self.args.chaos_every
        after = [(p[0], p[1]) for p in pts if p[0] >= start]
        if len(after) < 3 or after[-1][0] - after[0][0] < 600:
            return None
        return round(slope_per_hour(after), 2)

    def close(self) -> None:
        self.sample_log.close()
        self.lag_log.close()
        if self.probe_log is not None:
            self.probe_log.close()
        if self.proxy is not None:
            self.proxy.close()
        for cam in self.cameras:
            cam.kill()
        self.redis.kill()
        if self.client is not None:
            self.client.close()


def show(rows: list[dict[str, Any]], columns: list[str]) -> None:
    print()
    print(table(rows, columns) if rows else f"(no rows for {', '.join(columns[:2])}...)")


STREAM_COLUMNS = ["stream", "frames", "published", "in_redis", "lost", "duplicates", "in_order",
                  "accounted", "reconnects", "drops"]  # fmt: skip
GROWTH_COLUMNS = ["process", "minutes", "rss_mib_start", "rss_mib_end", "rss_mib_per_h",
                  "rss_mib_per_h_2nd_half", "anon_mib_per_h_2nd_half",
                  "rss_mib_per_h_after_cycle", "file_mib_start",
                  "file_mib_end", "fds_start", "fds_end", "fds_per_h"]  # fmt: skip


def report(result: dict[str, Any]) -> None:
    show(result["streams"], STREAM_COLUMNS)
    show(result["events"], ["event", "at_s", "recovery_s", "backlog_drained_s"])
    show(result["growth"], GROWTH_COLUMNS)
    rec, lag = result["reconnect_s"], result["redis_lag_s"]
    print()
    print(f"reconnect s: n={rec['n']} p50={rec['p50']} p99={rec['p99']} max={rec['max']}")
    print(f"drops by reason: {result['drops_by_reason']}")
    print(
        f"lost={result['lost']} duplicates={result['duplicates']} "
        f"accounted={result['accounted']} ledger_violations={result['ledger_violations']}"
    )
    print(
        f"/dev/shm left={len(result['shm_left'])} (peak {result['shm_peak']}); "
        f"CUDA IPC mappings left={result['cuda_ipc_mappings_left']}"
    )
    print(
        f"redis lag s: max steady={lag['max_steady']} p99 steady={lag['p99_steady']} "
        f"max overall={lag['max_overall']}"
    )


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--proxy-child"]:
        return proxy_child(int(args_in[1]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--streams", type=int, default=4, help="cameras (at least 2)")
    ap.add_argument("--size", default="160x120", help="camera resolution WxH")
    ap.add_argument("--fps", type=int, default=5, help="camera frame rate")
    ap.add_argument("--minutes", type=float, default=35.0, help="how long to run")
    ap.add_argument("--warmup", type=float, default=300.0, help="seconds before the first chaos")
    ap.add_argument("--chaos-every", type=float, default=180.0, help="seconds between events")
    ap.add_argument("--down", type=float, default=20.0, help="seconds a fault lasts")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--out-dir", type=Path, default=None, help="results folder")
    ap.add_argument(
        "--tracemalloc",
        type=float,
        default=0.0,
        help="seconds between heap snapshots of this process (0: off; costs CPU and memory)",
    )
    ap.add_argument(
        "--probe",
        type=float,
        default=0.0,
        help="seconds between probes of this process's heap (glibc totals and arenas, pymalloc,"
        " threads, objects by type), kept under 'probes' in the result (0: off)",
    )
    ap.add_argument(
        "--probe-gc",
        action="store_true",
        help="with --probe: also run a full garbage collection at each probe and record what"
        " it freed (changes what it measures: diagnosis only)",
    )
    args = ap.parse_args(argv)
    if args.tracemalloc:
        tracemalloc.start(16)
    if args.streams < 2:
        ap.error("--streams must be at least 2 (camera 0 is behind the proxy, 1 is restarted)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="vf-soak-") as tmp:
        soak = Soak(args, Path(tmp))
        try:
            result = soak.run()
        finally:
            soak.close()
    path = write_result("soak", result, args.out_dir)  # first: the figures survive any report bug
    report(result)
    print(f"\nwrote {path}")
    ok = result["lost"] == 0 and result["duplicates"] == 0 and result["accounted"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
