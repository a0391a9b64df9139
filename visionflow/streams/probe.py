"""``decode: auto``: pick the decoder by measuring the decoders on this machine.

Once per machine (cached in ``~/.cache/visionflow/decode-probe.json``, keyed by GPU, driver
and library versions) a 1080p H.264 clip of synthetic scenes is decoded by every decoder that
can run here.  For each: throughput of one decoder (frames/s) and the latency it adds to a
frame (packet read -> frame ready; for DALI that includes waiting for the rest of the GOP).
The choice: the GPU decoder with the lowest added latency whose one-decoder throughput is at
least ``REALTIME_MARGIN`` x 30 fps (it keeps up with a camera with room to spare); GPU decode
is preferred because it frees the CPU cores and keeps frames on the GPU.  No such decoder
(no NVDEC, libraries missing, too slow): ``cpu``.  The reason, with the figures, is logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visionflow.errors import SourceEndedError

log = logging.getLogger("visionflow.probe")
REALTIME_MARGIN = 4.0
CAMERA_FPS = 30.0
PROBE_SECONDS = 3.0
PROBE_GOP = 30  # frames per GOP of the probe clip: 1 s at 30 fps, a common camera setting
GPU_DECODERS = ("nvdec", "dali")


@dataclass(frozen=True)
class DecoderFigures:
    """One decoder measured on the probe clip (``error`` when it could not run)."""

    decoder: str
    fps: float = 0.0
    added_latency_ms: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class DecoderChoice:
    """What ``decode: auto`` resolved to, and why."""

    decoder: str
    reason: str
    figures: tuple[DecoderFigures, ...]


def choose(figures: list[DecoderFigures]) -> DecoderChoice:
    """The decision rule, separate from measuring so it can be tested on recorded figures."""
    needed = REALTIME_MARGIN * CAMERA_FPS
    usable = [
        f for f in figures if f.decoder in GPU_DECODERS and f.error is None and f.fps >= needed
    ]
    summary = ", ".join(
        f"{f.decoder}: {f.error}"
        if f.error
        else f"{f.decoder}: {f.fps:.0f} fps, +{f.added_latency_ms:.1f} ms"
        for f in figures
    )
    if not usable:
        reason = f"no GPU decoder keeps up with {needed:.0f} fps ({summary})"
        return DecoderChoice("cpu", reason, tuple(figures))
    best = min(usable, key=lambda f: f.added_latency_ms)
    reason = f"lowest added latency that keeps up ({summary})"
    return DecoderChoice(best.decoder, reason, tuple(figures))


def _probe_clip(cache: Path) -> Path:
    clip = cache / "probe-1080p.mp4"
    if not clip.is_file():
        from visionflow.scenes.clips import write_clip
        from visionflow.scenes.generator import SceneSpec

        spec = SceneSpec(width=1920, height=1080, fps=CAMERA_FPS, seed=7)
        write_clip(spec, clip, seconds=3.0, crf=28, gop=PROBE_GOP)
    return clip


def _measure(decoder: str, clip: Path) -> DecoderFigures:
    from visionflow.config import SourceConfig
    from visionflow.streams.config import StreamConfig
    from visionflow.workers.ingest import make_source

    stream = StreamConfig(id="probe", url=str(clip), realtime=False)
    source = make_source(stream, SourceConfig(allowed_schemes=["file"]), threading.Event(), decoder)
    source.target_size = (640, 640)
    frames, waits, t0 = 0, [], time.perf_counter()
    try:
        source.open()
        t0 = time.perf_counter()
        for decoded in source.frames():
            frames += 1
            waits.append(decoded.decode_ms)
            if time.perf_counter() - t0 > PROBE_SECONDS:
                break
    except SourceEndedError:  # the whole clip decoded within the probe time
        pass
    except Exception as exc:
        return DecoderFigures(decoder, error=f"{type(exc).__name__}: {exc}"[:200])
    finally:
        source.close()
    elapsed = time.perf_counter() - t0
    if not frames:
        return DecoderFigures(decoder, error="no frame decoded")
    if decoder == "dali":  # live, a GOP arrives in real time: on average a frame also waits
        waits = [w + 1000.0 * PROBE_GOP / CAMERA_FPS / 2 for w in waits]  # for half of it
    waits.sort()
    return DecoderFigures(decoder, round(frames / elapsed, 1), round(waits[len(waits) // 2], 2))


def _cache_key() -> str:
    parts = []
    try:
        from visionflow.gpu.discovery import discover

        parts += [s.uuid for s in discover()]
    except Exception as exc:  # no NVML, no GPU
        parts.append(f"no-gpu:{type(exc).__name__}")
    for module in ("av", "PyNvVideoCodec", "nvidia.dali", "torch"):
        try:
            mod = __import__(module, fromlist=["__version__"])
            parts.append(f"{module}={getattr(mod, '__version__', '?')}")
        except Exception:
            parts.append(f"{module}=missing")
    return "|".join(parts)


def resolve_auto(cache_dir: Path | None = None) -> DecoderChoice:
    """Measure (or read the cached measurement) and choose."""
    cache = cache_dir or Path.home() / ".cache" / "visionflow"
    key = _cache_key()
    cached = cache / "decode-probe.json"
    try:
        data = json.loads(cached.read_text())
        if data.get("key") == key:
            figs = tuple(DecoderFigures(**f) for f in data["figures"])
            return DecoderChoice(data["decoder"], data["reason"] + " (cached)", figs)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if "no-gpu" in key:
        choice = choose([DecoderFigures(d, error="no NVIDIA GPU (NVML)") for d in GPU_DECODERS])
    else:
        clip = _probe_clip(cache)
        choice = choose([_measure(d, clip) for d in ("cpu", *GPU_DECODERS)])
    try:
        cache.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"key": key, **asdict(choice)}
        cached.write_text(json.dumps(record, indent=1))
    except OSError as exc:
        log.warning("cannot cache the decoder probe in %s: %s", cached, exc)
    log.info("decode auto -> %s: %s", choice.decoder, choice.reason)
    return choice
