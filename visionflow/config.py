"""The whole configuration of a visionflow run, and loading it from YAML.

``load_config(path)`` reads YAML, substitutes ``${VAR}`` / ``${VAR:-default}`` from the
environment and ``${file:PATH}`` with a secret file's content in every string value,
validates with pydantic (``extra="forbid"`` everywhere) and raises
:class:`~visionflow.errors.ConfigError` whose message names the file, the stream id and the
field that is wrong.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from visionflow.api.config import ApiConfig
from visionflow.engines.base import EngineConfigBase
from visionflow.engines.ort import OnnxRuntimeConfig
from visionflow.engines.registry import EngineConfig
from visionflow.errors import ConfigError
from visionflow.fleet.config import FleetConfig
from visionflow.redis_client import RedisTls
from visionflow.streams.config import KEY_FAMILIES, StreamConfig
from visionflow.streams.urls import redact_text

BUILTIN_DEMO_MODEL = "builtin:demo"
ENV_REF = re.compile(
    r"\$\{(?:file:(?P<file>[^}]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?)\}"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisConfig(_Strict, RedisTls):
    """Where detections and status go."""

    url: str | None = Field(
        default=None,
        description="redis:// or rediss:// (TLS) URL, redis[s]://user:password@host:port/db for "
        "an ACL user; take the password from ${ENV} or ${file:/run/secrets/...}, never write "
        "it into the file. Empty: start a private local Redis-compatible server "
        "(valkey-server or redis-server) on a free port. Overridden by --redis-url / "
        "VISIONFLOW_REDIS_URL.",
    )
    key_prefix: str = Field(
        default="visionflow",
        pattern=r"^[A-Za-z0-9_.\-:]{1,64}$",
        description="Prefix of every key (<prefix>:detections:<stream_id>, "
        "<prefix>:status:<id>, ...; the layout is visionflow/schema.py). Segments between ':' "
        "must be non-empty and none may be a key family (a name of KEY_FAMILIES in "
        "visionflow/streams/config.py: streams, status, detections, registry, ...), so no "
        "prefix's keys fall inside another prefix's families.",
    )
    maxlen: int = Field(
        default=10_000, ge=1, description="Trim each detections stream to about this many entries."
    )
    approximate_trim: bool = Field(
        default=True, description="Use MAXLEN ~ (cheap, approximate) rather than exact trimming."
    )
    buffer_max_entries: int = Field(
        default=20_000,
        ge=1,
        description="Entries kept in memory while Redis is unreachable, per output process; the "
        "oldest are dropped (and counted) beyond this.",
    )
    pipeline_max_entries: int = Field(
        default=256, ge=1, description="Most entries sent to Redis in one pipelined round trip."
    )

    @field_validator("key_prefix")
    @classmethod
    def _prefix_outside_key_families(cls, prefix: str) -> str:
        for segment in prefix.split(":"):
            if not segment:
                raise ValueError(
                    f"key_prefix {prefix!r} has an empty segment (':' at an end or '::')"
                )
            if segment in KEY_FAMILIES:
                raise ValueError(
                    f"key_prefix {prefix!r} has the segment {segment!r}, a key family name "
                    f"({', '.join(KEY_FAMILIES)}): its keys would collide with another prefix's"
                )
        return prefix

    status_interval_s: float = Field(
        default=1.0, gt=0, description="How often per-stream status is written to Redis."
    )
    socket_timeout_s: float = Field(
        default=2.0, gt=0, description="Redis connect/read timeout; a dead server fails this fast."
    )
    spool_dir: str | None = Field(
        default=None,
        description="Directory of the durable spool: entries that could not be written to Redis "
        "are kept there (surviving a restart or a kill of the pipeline) and replayed in order "
        "when Redis is back. Empty (null): ~/.cache/visionflow/spool/<key_prefix>; '' turns "
        "the spool off (only the in-memory buffer, lost on exit).",
    )
    spool_max_mb: float = Field(
        default=256.0,
        gt=0,
        description="Most disk space the spool uses, per output process; beyond it the oldest "
        "segment (about an eighth) is dropped and its entries counted as spool_overflow.",
    )
    spool_after_s: float = Field(
        default=2.0,
        ge=0,
        description="Spill the in-memory buffer to the spool once Redis has been unreachable "
        "this long (or sooner, when the buffer is more than half full): a shorter blip costs no "
        "disk I/O. While Redis answers, a backlog is written from memory (spilled only while the "
        "spool is still being replayed and the buffer is more than half full).",
    )
    spool_fsync: Literal["always", "interval", "never"] = Field(
        default="interval",
        description="When spool appends are fsynced: 'always' (every append; survives power "
        "loss), 'interval' (every spool_fsync_interval_ms: a power loss can take that much), "
        "'never' (the OS decides). Every policy survives a crash or kill of the pipeline.",
    )
    spool_fsync_interval_ms: int = Field(
        default=1000, ge=1, description="Fsync period of the 'interval' spool_fsync policy."
    )
    counts_retention_s: int = Field(
        default=7 * 86400,
        ge=0,
        description="How long the per-minute counts (<prefix>:counts:<minute start>, boxes per "
        "stream and label) are kept: each bucket key expires this long after its last write. "
        "0 turns counts off. Best effort: counts made while Redis is unreachable are lost "
        "(detections are not: they have the spool).",
    )

    def spool_path(self) -> Path | None:
        """The spool directory, or None when the spool is off."""
        if self.spool_dir == "":
            return None
        if self.spool_dir is None:
            return Path("~/.cache/visionflow/spool").expanduser() / self.key_prefix
        return Path(self.spool_dir).expanduser()


class ModelConfig(_Strict):
    """The detector and how its output is read."""

    path: str = Field(
        default=BUILTIN_DEMO_MODEL,
        description="ONNX model file (input NCHW float; output [N, 4+C, A] as YOLOv8/YOLO11 "
        "or NMS-free [N, K, 6] as YOLOv10/YOLO26, see output_layout); 'builtin:demo' is the "
        "bundled demo detector. Relative paths are resolved against the config file's folder.",
    )
    output_layout: Literal["auto", "anchors", "end2end"] = Field(
        default="auto",
        description="How the model's output is read: 'anchors' [N, 4+C, A] (cx, cy, w, h and C "
        "class scores per anchor, NMS by visionflow), 'end2end' [N, K, 6] (x1, y1, x2, y2, "
        "score, class_id per row, already NMSed; the class count comes from class_names, the "
        "sidecar or the ONNX metadata), 'auto': last dim 6 -> end2end, else anchors. Any "
        "other output is rejected at start-up.",
    )
    input_size: tuple[int, int] | None = Field(
        default=None,
        description="Network input [width, height]; empty: read from the model (or 640x640 "
        "when the model's input is dynamic).",
    )
    class_names: list[str] | None = Field(
        default=None,
        description="Class names by id; empty: the model's <name>.json sidecar, else 'class_<i>'.",
    )
    model_id: str | None = Field(
        default=None, description="Model id written with each entry; empty: file stem + hash."
    )
    conf_threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Minimum class score; empty: the model sidecar's 'conf_threshold', else 0.25.",
    )
    iou_threshold: float = Field(default=0.45, gt=0, le=1, description="NMS IoU threshold.")
    max_detections: int = Field(default=300, ge=1, description="Most detections kept per frame.")

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        if size is not None and any(s <= 0 or s % 32 for s in size):
            raise ValueError(f"input_size {list(size)} must be positive multiples of 32")
        return size


class BatchingConfig(_Strict):
    """How frames of all streams are gathered into batches."""

    max_batch: int = Field(default=8, ge=1, le=256, description="Most frames in one batch.")
    max_delay_ms: float = Field(
        default=15.0,
        ge=0,
        le=10_000,
        description="A batch leaves at most this long after its oldest frame arrived.",
    )
    buffer_per_stream: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Frames waiting per stream; when full the oldest is dropped "
        "(reason 'inference_behind').",
    )
    max_inflight_per_worker: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Batches queued on one inference worker at once. Unset: twice the batches "
        "its engine runs at once (torch-cuda and onnxruntime: 2 x inflight, tensorrt: 2 x "
        "contexts), so a worker's next batches are already with it when one finishes "
        "instead of a round trip to the scheduler away (bench/README.md, issue 12); deeper "
        "queues publish more under overload at some latency (each frame may wait behind them).",
    )

    def worker_capacity(self, engine: EngineConfigBase) -> int:
        """Batches the scheduler keeps queued on one worker of ``engine``."""
        if self.max_inflight_per_worker is not None:
            return self.max_inflight_per_worker
        return 2 * engine.batches_at_once()

    batch_deadline_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A worker that has not finished a batch this long after it was sent is "
        "taken for hung (a wedged GPU call): it is killed, its batches go to the others and it "
        "is restarted. Keep it well above the slowest batch times the batches queued on a "
        "worker (a batch sent waits behind those before it; large CPU batches, first runs).",
    )


class WorkersConfig(_Strict):
    """How many processes do the work."""

    ingest_processes: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Decode processes (several streams each); 0: automatic, also for streams "
        "added at run time: one per 8 streams decoded on the CPU, one per 128 streams per GPU "
        "for NVDEC decode (each process is one more CUDA context on the card), at most the "
        "number of CPU cores. A set count is reached by streams added at run time too (a "
        "pipeline started with fewer streams opens the rest as streams arrive, each on the "
        "GPU with the fewest streams; a count below the number of GPUs leaves the others "
        "without decoding when the pipeline started with no streams).",
    )
    inference_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Inference worker processes for CPU backends (GPU: see workers_per_gpu).",
    )
    workers_per_gpu: int = Field(
        default=1,
        ge=1,
        le=16,
        description="GPU backends: inference workers per GPU, or per MIG instance when MIG is on "
        "(found through NVML); each is pinned with CUDA_VISIBLE_DEVICES=<uuid>.",
    )
    gpus: list[str | int] | None = Field(
        default=None,
        min_length=1,
        description="GPU backends and GPU decode: the GPUs / MIG instances to use, in this "
        "order, each as an NVML index (the GPU numbers nvidia-smi shows), a GPU UUID (GPU-...) "
        "or a MIG UUID (MIG-...); a unique start of a UUID will do. A listed GPU with MIG on "
        "stands for its MIG instances. Applied after CUDA_VISIBLE_DEVICES (honoured as CUDA "
        "reads it); checked at start-up against what NVML finds. Unset: every visible GPU / "
        "MIG instance.",
    )
    frame_transport: Literal["auto", "host", "device"] = Field(
        default="auto",
        description="How decoded frames reach inference workers: host (shared memory), device "
        "(GPU memory shared by CUDA IPC; needs GPU decode and the torch-cuda backend, not across "
        "MIG instances), or auto: device where possible, else host.",
    )
    slots_per_stream: int = Field(
        default=12,
        ge=2,
        le=256,
        description="Shared-memory frame slots per stream (waiting + in flight); when none is "
        "free a new frame is dropped (reason 'backpressure').",
    )

    @field_validator("gpus", mode="before")
    @classmethod
    def _no_booleans(cls, gpus: Any) -> Any:
        if isinstance(gpus, list) and any(isinstance(g, bool) for g in gpus):
            raise ValueError("entries are NVML indices or GPU-/MIG- UUIDs, not true/false")
        return gpus

    @field_validator("gpus")
    @classmethod
    def _gpu_entries(cls, gpus: list[str | int] | None) -> list[str | int] | None:
        if gpus is None:
            return None
        out: list[str | int] = []
        for raw in gpus:
            entry: str | int = raw.strip() if isinstance(raw, str) else raw
            if isinstance(entry, str) and entry.isdigit():
                entry = int(entry)
            if isinstance(entry, int) and entry < 0:
                raise ValueError(f"{raw!r} is not an NVML index (0, 1, ...)")
            if isinstance(entry, str) and not entry.startswith(("GPU-", "MIG-")):
                raise ValueError(
                    f"{raw!r} is neither an NVML index (0, 1, ...) nor a GPU-... / MIG-... UUID"
                )
            if entry in out:
                raise ValueError(f"{raw!r} is listed twice")
            out.append(entry)
        return out


SourceScheme = Literal["rtsp", "rtsps", "http", "https", "file"]


def _live_schemes() -> list[SourceScheme]:
    return ["rtsp", "rtsps"]


class SourceConfig(_Strict):
    """Timeouts, watchdog and reconnect policy applied to every stream."""

    open_timeout_s: float = Field(default=10.0, gt=0, description="Give up opening after this.")
    read_timeout_s: float = Field(
        default=5.0, gt=0, description="A read blocked this long is abandoned (frozen camera)."
    )
    analyze_duration_s: float | None = Field(
        default=None,
        gt=0,
        le=30,
        description="How long FFmpeg probes a network stream before reading it (its "
        "analyzeduration); empty: FFmpeg's default (5 s). 0.5-1 s makes every (re)connect, "
        "and a fleet hand-over, seconds faster (a 5 fps RTSP camera: 5.4 s -> 1.0 s to the "
        "first frame); too short for a camera that sends its codec parameters rarely fails "
        "the open (retried with backoff).",
    )
    stall_timeout_s: float = Field(
        default=8.0,
        gt=0,
        description="Watchdog: no decoded frame for this long marks the stream stalled and "
        "reopens it.",
    )
    backoff_initial_s: float = Field(default=0.5, gt=0, description="First retry delay.")
    backoff_max_s: float = Field(default=10.0, gt=0, description="Retry delay cap.")
    backoff_multiplier: float = Field(default=2.0, ge=1, description="Delay growth per failure.")
    backoff_jitter: float = Field(
        default=0.5, ge=0, le=1, description="Random fraction taken off each delay (0 = none)."
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        description="Consecutive failures before the stream is marked failed; empty: forever.",
    )
    decode_threads: int = Field(
        default=0, ge=0, le=64, description="Decoder threads per stream; 0: let FFmpeg choose."
    )
    shed_load: bool = Field(
        default=True,
        description="Shed load before decode (PyAV; NVDEC by packet, without nonref): below a "
        "stream's frame rate (analysis_fps or its fair share under overload) decode only "
        "keyframes or skip "
        "B-frames and the unused rest of each GOP. False: decode every frame and only "
        "discard unused frames after decode (the decode-everything baseline).",
    )
    shed_gop_prefix: bool = Field(
        default=False,
        description="When shedding takes a stream below half its frame rate, decode only the "
        "first round(target / keyframe rate) frames of each GOP and use them all (decode cost "
        "follows the target) instead of frames evenly spread (which needs most of each GOP "
        "decoded). The used frames then come in a burst at each keyframe: give "
        "batching.buffer_per_stream room for a GOP's share, or the bursts read as overload.",
    )
    shed_lag_limit_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Shedding when the decoder is behind (0: off, each stream's lag behind "
        "real time is only reported as lag_s; needs shed_load; PyAV and NVDEC): a live or "
        "real-time stream read more than this many seconds behind real time (against the "
        "session's best wall-clock-minus-pts offset; the least lag of the last second) is "
        "behind. When a quarter of the streams, and at least two, are behind and their lag "
        "grows by 0.04 s a second or more (a fit over their last 4 one-second control "
        "intervals behind, never fewer than 3), the decoder they share (NVDEC, the CPU) is "
        "taken as overloaded: the fair share is cut to 0.9 x min(capacity, served) and held "
        "(no growth, no other decoder cut) for four intervals, then judged: if those streams' "
        "lags did not slow by a quarter, decoding less did not help (a network slowdown, not "
        "the decoder), so the cut is undone and lags are ignored for 30 s (60, 120, ... up to "
        "8 min after further futile cuts in a row). The share does not grow while a quarter "
        "of the streams catch up (lag shrinking). While the shares come from a decoder cut (an "
        "inference cut below one keeps it so, a release ends it), "
        "a stream given one below its rate decodes only its GOPs' first frames (decode mode "
        "prefix, even with shed_gop_prefix off; nonkey at keyframe rates) until the share is "
        "lifted. Known limits: a network slowdown still costs a four-second cut now and then; "
        "cameras with GOPs over ~2 s may see a helpful cut judged futile (they then fall "
        "behind as with this off). Files read faster than real time are never behind.",
    )
    allowed_schemes: list[SourceScheme] = Field(
        default_factory=_live_schemes,
        min_length=1,
        description="What a stream URL may be: rtsp, rtsps, http, https, file (a local path "
        "or file:// URL). Files and http(s) are refused unless listed here (a config that "
        "reads files must say so). FFmpeg is held to the scheme's protocols "
        "(protocol_whitelist), and other FFmpeg protocols (concat:, data:, subfile, pipe:, "
        "tcp:, udp:, ...) are never accepted.",
    )
    max_width: int = Field(
        default=7680,
        ge=16,
        le=16384,
        description="Widest picture accepted (pixels); a wider stream fails at open, and the "
        "decoder refuses any frame larger than max_width x max_height pixels.",
    )
    max_height: int = Field(
        default=4320,
        ge=16,
        le=16384,
        description="Tallest picture accepted (pixels); a taller stream fails at open.",
    )
    max_fps: float = Field(
        default=240.0,
        gt=0,
        le=1000,
        description="Highest average frame rate a stream may declare; above it the stream "
        "fails at open.",
    )
    max_bitrate_kbps: int = Field(
        default=100_000,
        ge=1,
        description="Highest bitrate (kbit/s) a stream may declare, or a file may have on "
        "average (size / duration); above it the stream fails at open.",
    )
    max_reconnects_per_s: int | None = Field(
        default=5,
        ge=1,
        description="Connection attempts (first connects and reconnects of network streams) "
        "that all the streams of one ingest process may make in any one second together, so "
        "a site-wide outage does not end in a reconnect storm; a stream waits its turn "
        "before connecting. Local files are not limited. Empty: no limit.",
    )


class RegistryConfig(_Strict):
    """The runtime stream registry (kept in Redis) and hot reload of the config file."""

    poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="How often the pipeline checks the registry's version counter in Redis "
        "(one GET) and applies runtime stream changes.",
    )
    watch_config: bool = Field(
        default=True,
        description="Hot reload: re-read the config file when it changes; stream changes are "
        "applied, changes of other sections are logged as needing a restart.",
    )
    watch_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the config file's mtime/size is checked."
    )
    secret_key_file: str | None = Field(
        default=None,
        description="File holding the Fernet key that encrypts inline passwords of streams "
        "added at run time (the registry never stores them in plain text). Empty: the "
        "environment variable VISIONFLOW_REGISTRY_KEY (the key) or "
        "VISIONFLOW_REGISTRY_KEY_FILE (a file); with no key, such URLs are refused (use "
        "${ENV} references for the password instead).",
    )


class OutputConfig(_Strict):
    """The output stage: its processes, and what it makes besides detections."""

    snapshot_interval_s: float = Field(
        default=2.0,
        ge=0,
        description="How often each stream's latest frame, with its detection boxes drawn, is "
        "stored as a JPEG at <prefix>:snapshot:<stream_id> (expiring after five intervals, at "
        "least 10 s). The image is the frame as the model saw it (the letterboxed network "
        "input without its padding, e.g. 640x360 for a 16:9 camera and a 640 model). 0 turns "
        "snapshots off.",
    )
    processes: int | Literal["auto"] = Field(
        default="auto",
        description="Output processes (reorder, tracking, sinks), each writing a fixed part of "
        "the streams (each stream goes to the one with the fewest streams when it is "
        "registered, and stays there): one writes a few thousand entries a second, so a busy "
        "GPU needs more than one. Each has its own Redis buffer and spool (the folder "
        "shard-k inside spool_dir for process k > 0), so those limits apply per process. "
        "'auto': two per inference worker, at most one per eight CPU cores (one on a machine "
        "with fewer than 16).",
    )

    @field_validator("processes")
    @classmethod
    def _processes_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError(f"output.processes must be 'auto' or 1..64, not {value}")
        return value

    def resolved_processes(self, inference_workers: int, cpus: int | None = None) -> int:
        """How many output processes run, given the inference workers and CPU cores."""
        if isinstance(self.processes, int):
            return self.processes
        cpus = cpus if cpus is not None else (os.cpu_count() or 1)
        return max(1, min(2 * inference_workers, cpus // 8))


class AppConfig(_Strict):
    """A whole visionflow deployment: streams plus global settings."""

    streams: list[StreamConfig] = Field(
        default_factory=list, description="The streams to read (more can be added at run time)."
    )
    redis: RedisConfig = Field(default_factory=RedisConfig, description="Redis output.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The detector.")
    engine: EngineConfig = Field(
        default_factory=OnnxRuntimeConfig, description="Inference backend and its settings."
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="Dynamic batching."
    )
    workers: WorkersConfig = Field(default_factory=WorkersConfig, description="Processes.")
    source: SourceConfig = Field(default_factory=SourceConfig, description="Source policy.")
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig,
        description="Runtime stream registry in Redis and hot reload of this file.",
    )
    output: OutputConfig = Field(
        default_factory=OutputConfig,
        description="The output stage: how many processes, and the snapshots it makes.",
    )
    decode: Literal["auto", "cpu", "dali", "nvdec"] = Field(
        default="auto",
        description="Decoder: cpu (PyAV/FFmpeg), nvdec (NVDEC through PyNvVideoCodec, fed "
        "packet by packet, ~2 ms per frame), dali (NVDEC through DALI's clip decoder on "
        "keyframe-aligned segments: adds one GOP of latency), or auto: measured once per "
        "machine (visionflow.streams.probe) -- the lowest-latency GPU decoder that keeps up "
        "with real time, else cpu.",
    )
    api: ApiConfig | None = Field(
        default=None,
        description="Operator HTTP API served by visionflow run (and visionflow api); "
        "absent: no API.",
    )
    fleet: FleetConfig | None = Field(
        default=None,
        description="Run as one node of a fleet: processes with the same Redis and key prefix "
        "share the streams, each read by the one node holding its lease; absent: this process "
        "reads every stream.",
    )
    base_dir: Path = Field(
        default=Path("."),
        exclude=True,
        description="Folder relative paths are resolved against (the config file's folder).",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        seen: set[str] = set()
        for index, stream in enumerate(self.streams):
            if stream.id in seen:
                raise ValueError(f"streams[{index}]: duplicate stream id {stream.id!r}")
            seen.add(stream.id)
        allowed = self.source.allowed_schemes
        for index, stream in enumerate(self.streams):
            if stream.scheme not in allowed:
                raise ValueError(
                    f"stream {stream.id!r} (streams[{index}]): URL scheme {stream.scheme!r} "
                    "is not in source.allowed_schemes "
                    f"{list(allowed)} (add {stream.scheme!r} there to read it)"
                )
        return self

    def resolve(self, path: str) -> Path:
        """Resolve a path from the config against :attr:`base_dir`."""
        candidate = Path(os.path.expanduser(path))
        return candidate if candidate.is_absolute() else self.base_dir / candidate


def substitute_env(value: Any, where: str = "", base_dir: Path | None = None) -> Any:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` (a secret file's content,
    surrounding whitespace stripped; a relative PATH is under ``base_dir``) in every string
    inside ``value``.  Errors name the variable or file, never a value."""
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            if match.group("file") is not None:
                return _read_secret(match.group("file"), where, base_dir)
            name, default = match.group("name"), match.group("default")
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where or 'config'}: environment variable ${{{name}}} is not set")

        return ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {
            k: substitute_env(v, f"{where}.{k}" if where else str(k), base_dir)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, f"{where}[{i}]", base_dir) for i, v in enumerate(value)]
    return value


def _read_secret(name: str, where: str, base_dir: Path | None) -> str:
    path = Path(os.path.expanduser(name.strip()))
    if not path.is_absolute():
        path = (base_dir or Path(".")) / path
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{where or 'config'}: secret file {path}: {reason}") from None
    if not secret:
        raise ConfigError(f"{where or 'config'}: secret file {path} is empty")
    return secret


def _describe_location(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """Turn a pydantic error location into 'streams[2] (id 'cam3'), field 'fps_cap''."""
    parts = [p for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    if len(parts) >= 2 and parts[0] == "streams" and isinstance(parts[1], int):
        streams = raw.get("streams") or []
        index = parts[1]
        sid = (
            streams[index].get("id")
            if index < len(streams) and isinstance(streams[index], dict)
            else None
        )
        head = f"stream {sid!r} (streams[{index}])" if sid else f"streams[{index}]"
        field = ".".join(str(p) for p in parts[2:])
        return f"{head}, field {field!r}" if field else head
    return f"field {'.'.join(str(p) for p in parts)!r}" if parts else "top level"


def parse_config(raw: Any, source: str = "<config>", base_dir: Path | None = None) -> AppConfig:
    """Validate an already-parsed YAML document; errors name ``source``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        raw = substitute_env(raw, "", base_dir)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{source}: {_describe_location(err['loc'], raw)}: {redact_text(err['msg'])}"
            for err in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from None
    config = config.model_copy(update={"base_dir": base_dir or Path(".")})
    return config.model_copy(update={"redis": _absolute_tls(config)})


def _absolute_tls(config: AppConfig) -> RedisConfig:
    """The redis section with relative TLS file paths made absolute against the config's
    folder (the processes that open them may run elsewhere)."""
    r = config.redis
    paths = {
        field: str(config.resolve(value))
        for field in ("tls_ca_file", "tls_cert_file", "tls_key_file")
        if (value := getattr(r, field))
    }
    return r.model_copy(update=paths) if paths else r


def load_config(path: str | Path) -> AppConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path), path.resolve().parent)
