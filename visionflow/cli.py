"""The visionflow command: run, validate, demo, snapshot, calibrate, consume, api, schema.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import redis
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from visionflow.config import AppConfig, load_config, substitute_env
from visionflow.errors import ConfigError, PublishError, VisionflowError
from visionflow.redis_client import connect, explain, probe
from visionflow.redis_server import EmbeddedRedis
from visionflow.schema import detections_key, events_key
from visionflow.streams.urls import redact_text, redact_url
from visionflow.workers.logs import setup_logging
from visionflow.workers.status import PipelineStatus, StreamStatus

if TYPE_CHECKING:
    from visionflow.api.server import ApiServer
    from visionflow.consumer import Delivery
    from visionflow.fleet.node import FleetNode
    from visionflow.streams.registry import StreamRegistry
    from visionflow.workers.reconcile import Reconciler
    from visionflow.workers.supervisor import Pipeline

app = typer.Typer(add_completion=False, no_args_is_help=True)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("visionflow.cli")

ConfigOpt = Annotated[Path, typer.Option("-c", "--config", help="YAML config file.")]
DurationOpt = Annotated[
    float, typer.Option("--duration", help="Stop after this many seconds (0: until Ctrl-C).")
]
PlainOpt = Annotated[
    bool, typer.Option("--plain", help="Print status lines instead of a live table.")
]
RedisUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="VISIONFLOW_REDIS_URL",
        help="Redis URL instead of the config's redis.url (default: $VISIONFLOW_REDIS_URL). "
        "Keep passwords off the command line: pass '${MY_ENV}' or '${file:/run/secrets/x}' "
        "(quoted), or set VISIONFLOW_REDIS_URL.",
        show_envvar=True,
    ),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"visionflow {package_version()}", highlight=False)
        raise typer.Exit()


def package_version() -> str:
    """The installed distribution's version (its metadata, as pip sees it)."""
    try:
        return metadata.version("visionflow")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The visionflow command: run, validate, demo, snapshot, calibrate, consume, schema.

    Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
    """


def _load(path: Path, redis_url: str | None = None) -> AppConfig:
    """The config, its redis.url replaced by ``redis_url`` (``${...}`` substituted) if given."""
    try:
        cfg = load_config(path)
        if redis_url:
            url = substitute_env(redis_url, "--redis-url", cfg.base_dir)
            cfg = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"url": url})})
        return cfg
    except ConfigError as exc:
        err_console.print(f"[bold red]invalid config[/]\n{exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(config: ConfigOpt) -> None:
    """Check a config file; exit 2 with a precise message when it is wrong."""
    cfg = _load(config)
    console.print(
        f"{config}: OK - {len(cfg.streams)} stream(s), engine {cfg.engine.backend}, "
        f"batch <= {cfg.batching.max_batch}"
    )


@app.command()
def schema(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the schema to this file instead of stdout."),
    ] = None,
) -> None:
    """Print the config file's JSON Schema, for editors that validate YAML as it is typed."""
    text = json.dumps(config_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    err_console.print(f"wrote {output}", highlight=False)


def config_schema() -> dict[str, Any]:
    """AppConfig's JSON Schema (draft 2020-12, as pydantic writes it), with its dialect named."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "visionflow config",
        **{k: v for k, v in AppConfig.model_json_schema().items() if k != "title"},
    }


@app.command()
def run(
    config: ConfigOpt,
    duration: DurationOpt = 0.0,
    plain: PlainOpt = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log at DEBUG level.")] = False,
    no_api: Annotated[
        bool,
        typer.Option(
            "--no-api",
            help="Do not serve the config's api: section (a separate `visionflow api` "
            "serves it, e.g. the compose file's api service).",
        ),
    ] = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Run the pipeline described by a config file, with a live status table."""
    cfg = _load(config, redis_url)
    setup_logging(logging.DEBUG if verbose else logging.INFO)
    with _redis_for(cfg) as url:
        _run_pipeline(cfg, url, duration, plain, False, config_path=config, serve_api=not no_api)


@app.command()
def demo(
    duration: DurationOpt = 0.0,
    plain: PlainOpt = False,
    redis_url: RedisUrlOpt = None,
    snapshot_dir: Annotated[
        Path | None,
        typer.Option("--snapshot-dir", help="At the end, save an annotated PNG of each stream."),
    ] = None,
) -> None:
    """Run the whole pipeline on bundled synthetic scenes and the bundled detector."""
    from visionflow.demo import demo_clips, demo_config

    setup_logging(logging.WARNING)
    console.print("[bold]visionflow demo[/]: preparing synthetic camera scenes (cached)…")
    clips = demo_clips()
    try:
        url = substitute_env(redis_url, "--redis-url") if redis_url else None
    except ConfigError as exc:
        err_console.print(f"[bold red]invalid --redis-url[/]\n{exc}", highlight=False)
        raise typer.Exit(2) from None
    cfg = demo_config(url, clips)
    with _redis_for(cfg, fallback=True) as url:
        _explain_redis(cfg, url)
        _run_pipeline(cfg, url, duration, plain, show_detections=True)
    if snapshot_dir is not None:
        for stream in cfg.streams:
            _snapshot(cfg, stream.id, snapshot_dir / f"{stream.id}.png", skip=60)


@app.command()
def snapshot(
    config: ConfigOpt,
    stream: Annotated[str, typer.Option("--stream", "-s", help="Stream id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    skip: Annotated[int, typer.Option("--skip", help="Frames to skip first.")] = 0,
) -> None:
    """Save one frame of a stream with the model's boxes drawn on it (PNG)."""
    cfg = _load(config)
    _snapshot(cfg, stream, out, skip)


def _snapshot(cfg: AppConfig, stream_id: str, out: Path, skip: int) -> None:
    from visionflow.snapshot import take_snapshot

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        path, detections = take_snapshot(cfg, stream_id, out, skip)
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    except VisionflowError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"wrote {path} ({len(detections)} detections)")


@app.command()
def calibrate(
    config: ConfigOpt,
    frames: Annotated[int, typer.Option("--frames", help="Frames to take in all.")] = 256,
    every: Annotated[
        int, typer.Option("--every", help="Keep one decoded frame in this many per stream.")
    ] = 15,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write (.npy); default: engine config."),
    ] = None,
) -> None:
    """Take INT8 calibration frames from the configured streams for the TensorRT backend."""
    from visionflow import calibrate as calib

    cfg = _load(config)
    setup_logging(logging.INFO)
    try:
        path = out or calib.default_path(cfg)
        images = calib.collect(cfg, frames, every)
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    except VisionflowError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    written = calib.write(path, images)
    console.print(f"wrote {written}: {len(images)} frames {images.shape[2]}x{images.shape[1]}")


@app.command()
def consume(
    config: ConfigOpt,
    group: Annotated[str, typer.Option("--group", "-g", help="Consumer group.")] = (
        "visionflow-consumers"
    ),
    consumer: Annotated[
        str | None, typer.Option("--consumer", help="Consumer name (default <host>-<pid>).")
    ] = None,
    stream: Annotated[
        list[str] | None,
        typer.Option("--stream", "-s", help="Stream id (repeatable; default: the config's)."),
    ] = None,
    from_start: Annotated[
        bool,
        typer.Option("--from-start", help="A group created now starts at the oldest entry."),
    ] = False,
    max_entries: Annotated[
        int, typer.Option("--max", help="Exit after this many entries (0: until Ctrl-C).")
    ] = 0,
    redis_url: RedisUrlOpt = None,
    claim_idle_ms: Annotated[
        int, typer.Option("--claim-idle-ms", help="Take over entries pending this long.")
    ] = 30_000,
    max_deliveries: Annotated[
        int, typer.Option("--max-deliveries", help="Dead-letter an entry delivered more often.")
    ] = 5,
) -> None:
    """Read detections through a consumer group and print one line per entry (XACK after)."""
    from pydantic import ValidationError

    from visionflow.consumer import ConsumerConfig, DetectionConsumer, check_url, describe

    cfg = _load(config, redis_url)
    try:
        settings: dict[str, object] = {
            "redis_url": check_url(cfg.redis.url),
            **cfg.redis.model_dump(include={"tls_ca_file", "tls_cert_file", "tls_key_file"}),
            "key_prefix": cfg.redis.key_prefix,
            "group": group,
            "streams": stream or [s.id for s in cfg.streams],
            "start_id": "0" if from_start else "$",
            "claim_idle_ms": claim_idle_ms,
            "max_deliveries": max_deliveries,
        }
        if consumer:
            settings["consumer"] = consumer
        consumer_cfg = ConsumerConfig.model_validate(settings)
    except (ConfigError, ValidationError) as exc:
        err_console.print(f"[red]{redact_text(str(exc))}[/]", highlight=False)
        raise typer.Exit(2) from None
    setup_logging(logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    reader = DetectionConsumer(consumer_cfg)
    err_console.print(f"consuming {', '.join(consumer_cfg.streams)} from {describe(consumer_cfg)}")
    try:
        reader.refresh_streams()  # fails here, not in a retry loop, when Redis is unreachable
        reader.run(_printer(stop), stop, max_entries or None)
    except KeyboardInterrupt:
        pass
    except redis.RedisError as exc:
        err_console.print(f"[red]{explain(exc)}[/]", highlight=False)
        raise typer.Exit(1) from None
    except VisionflowError as exc:
        err_console.print(f"[red]{redact_text(str(exc))}[/]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        c = reader.counters
        err_console.print(
            f"consumed {c.consumed}, acked {c.acked}, failed {c.failed}, claimed {c.claimed}, "
            f"dead-lettered {c.dead_lettered}, trimmed while pending {c.trimmed_while_pending}",
            highlight=False,
        )
        reader.close()


@app.command()
def api(
    config: ConfigOpt,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT instead of the config's api.listen.")
    ] = None,
) -> None:
    """Serve the operator API alone, reading only Redis (may run on another host)."""
    from pydantic import ValidationError

    from visionflow.api.config import ApiConfig
    from visionflow.api.server import bind, redis_app, serve_foreground, url_of
    from visionflow.streams.registry import StreamRegistry

    cfg = _load(config)
    try:
        api_cfg = cfg.api or ApiConfig()
        if listen:
            api_cfg = ApiConfig.model_validate({**api_cfg.model_dump(), "listen": listen})
        redis_url = cfg.redis.url
        if not redis_url:
            raise ConfigError(f"{config}: redis.url is not set: visionflow api reads Redis")
        cfg = cfg.model_copy(update={"api": api_cfg})
        app_ = redis_app(cfg, redis_url, StreamRegistry.from_config(cfg, redis_url))
        sock = bind(api_cfg)
    except (ConfigError, ValidationError) as exc:
        err_console.print(f"[bold red]invalid config[/]\n{redact_text(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    setup_logging(logging.INFO)
    err_console.print(
        f"visionflow api on {url_of(sock)} (routes at {url_of(sock)}docs), reading "
        f"{redact_url(redis_url)} prefix {cfg.redis.key_prefix}",
        highlight=False,
    )
    serve_foreground(app_, sock)


def _printer(stop: threading.Event) -> Callable[[Delivery], None]:
    """The handler of ``consume``: one line per entry; a closed stdout (``| head``) stops it,
    the entry it could not print left pending for another consumer."""

    def handle(delivery: Delivery) -> None:
        try:
            _print_delivery(delivery)
        except BrokenPipeError:
            stop.set()
            # the interpreter's final flush of stdout would fail again
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            raise

    return handle


def _print_delivery(delivery: Delivery) -> None:
    entry = delivery.entry
    when = datetime.fromtimestamp(entry.capture_ts, UTC).isoformat(timespec="milliseconds")
    labels = ", ".join(f"{d['label']} {d['score']:.2f}" for d in entry.detections)
    redelivered = f" (delivery {delivery.delivery_count})" if delivery.delivery_count > 1 else ""
    print(
        f"{delivery.stream_id} seq={entry.seq} {when} id={entry.entry_id} "
        f"n={len(entry.detections)} [{labels}]{redelivered}",
        flush=True,
    )


@contextlib.contextmanager
def _redis_for(cfg: AppConfig, fallback: bool = False) -> Iterator[str]:
    """The configured Redis; a private server for this run when none is configured (or, with
    ``fallback`` -- the demo -- when the configured one is unreachable).  ``visionflow run``
    never swaps a configured Redis for a private one: its consumers would see nothing, and
    the spool already keeps detections until the configured server is back.  One that
    answers but refuses us (login, ACL, TLS) is an error either way."""
    try:
        why = probe(cfg.redis.url, cfg.redis) if cfg.redis.url else "none configured"
    except PublishError as exc:
        err_console.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(1) from None
    if cfg.redis.url and (why is None or not fallback):
        if why is not None:
            err_console.print(
                f"[yellow]Redis at {redact_url(cfg.redis.url)} is not reachable yet ({why}); "
                "detections are spooled until it is[/]",
                highlight=False,
            )
        yield cfg.redis.url
        return
    if cfg.fleet is not None:  # a private server would make a fleet of one
        err_console.print("[red]fleet: redis.url must name the fleet's shared Redis, and it "
                          "is not reachable[/]")  # fmt: skip
        raise typer.Exit(1)
    if cfg.redis.url:
        err_console.print(
            f"[yellow]Redis at {redact_url(cfg.redis.url)} is not reachable ({why}); "
            "starting a private local server instead[/]",
            highlight=False,
        )
    try:
        server = EmbeddedRedis().start()
    except VisionflowError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    try:
        yield server.url
    finally:
        server.stop()


def _explain_redis(cfg: AppConfig, url: str) -> None:
    port = url.rsplit(":", 1)[1].split("/")[0]
    first = cfg.streams[0].id
    key = detections_key(cfg.redis.key_prefix, first)
    zoned = [s.id for s in cfg.streams if s.tracking and (s.tracking.zones or s.tracking.lines)]
    events = (
        f"  redis-cli -p {port} XRANGE {events_key(cfg.redis.key_prefix, zoned[0])} - +"
        "     (tracking events: enter, exit, loiter, cross)\n"
        if zoned
        else ""
    )
    console.print(
        f"Detections go to Redis at [bold]{url}[/]. Read them from another terminal with:\n"
        f"  redis-cli -p {port} XREVRANGE {key} + - COUNT 1     (valkey-cli works the same)\n"
        f"  redis-cli -p {port} HGETALL {cfg.redis.key_prefix}:status:{first}\n"
        f"{events}"
        "Press Ctrl-C to stop."
    )


def _open_registry(cfg: AppConfig, url: str) -> tuple[StreamRegistry, AppConfig]:
    """The runtime registry and the config to start with: its streams are the desired set
    (the file's merged with the registry), or the file's when Redis cannot be read now
    (the reconciler applies the registry once it can)."""
    from visionflow.streams.registry import StreamRegistry

    timeout = cfg.fleet.redis_timeout_s if cfg.fleet is not None else None
    registry = StreamRegistry.from_config(cfg, url, timeout)
    try:
        desired = registry.desired()
    except redis.RedisError as exc:
        log.warning("stream registry not readable (%s): starting with the config file's "
                    "streams", redact_text(str(exc)))  # fmt: skip
        return registry, cfg
    return registry, cfg.model_copy(update={"streams": list(desired.streams)})


def _run_pipeline(
    cfg: AppConfig,
    url: str,
    duration: float,
    plain: bool,
    show_detections: bool,
    config_path: Path | None = None,
    serve_api: bool = True,
) -> None:
    from visionflow.workers.reconcile import Reconciler as Reconciler_
    from visionflow.workers.supervisor import Pipeline as Pipeline_

    try:
        registry, start_cfg = _open_registry(cfg, url)
        if cfg.fleet is not None:  # a fleet node reads only the streams it leases
            start_cfg = start_cfg.model_copy(update={"streams": []})
        pipeline = Pipeline_(start_cfg, url, log_level=logging.getLogger().level)
        api = _start_api(cfg, url, pipeline, registry) if serve_api else None
    except ConfigError as exc:
        err_console.print(f"[bold red]invalid config[/]\n{exc}")
        raise typer.Exit(2) from None
    if cfg.fleet is None:
        node, reconciler = None, Reconciler_(pipeline, registry, cfg, config_path)
    else:
        node, reconciler = _fleet_node(cfg, url, pipeline, registry, config_path)
    try:
        _drive(pipeline, reconciler, cfg, url, duration, plain, show_detections, node)
    finally:
        if api is not None:
            api.stop()
        registry.close()


def _fleet_node(
    cfg: AppConfig,
    url: str,
    pipeline: Pipeline,
    registry: StreamRegistry,
    config_path: Path | None,
) -> tuple[FleetNode, Reconciler]:
    """This process as a fleet node: the reconciler runs only the streams it leases."""
    from visionflow.fleet.node import FleetNode, OwnedTarget, fleet_client
    from visionflow.workers.reconcile import Reconciler as Reconciler_

    assert cfg.fleet is not None
    client = fleet_client(url, cfg.fleet, cfg.redis)
    node = FleetNode(cfg.fleet, client, cfg.redis.key_prefix, registry, pipeline)
    target = OwnedTarget(pipeline, node)
    reconciler = Reconciler_(target, registry, cfg, config_path, scope=node.scope)
    node.apply = reconciler.rescope
    console.print(f"fleet node [bold]{node.node_id}[/] (lease timeout {cfg.fleet.lease_ttl_s:g}s)")
    return node, reconciler


def _start_api(
    cfg: AppConfig, url: str, pipeline: Pipeline, registry: StreamRegistry
) -> ApiServer | None:
    """The operator API in a thread of this process, when the config has ``api:``; stream
    changes go through the runtime registry, which the reconciler applies."""
    if cfg.api is None:
        return None
    from visionflow.api.server import ApiServer, bind, pipeline_app

    app_ = pipeline_app(cfg, url, pipeline.status, registry)
    server = ApiServer(app_, bind(cfg.api)).start()
    console.print(
        f"Dashboard and API: [bold]{server.url}[/] (routes at {server.url}docs)", highlight=False
    )
    return server


def _drive(
    pipeline: Pipeline,
    reconciler: Reconciler,
    cfg: AppConfig,
    url: str,
    duration: float,
    plain: bool,
    show_detections: bool,
    node: FleetNode | None = None,
) -> None:
    signals = _StopSignals()
    stop = signals.stop
    signals.install()
    try:
        pipeline.start()
        reconciler.start()
        signals.phase = "waiting"
        if not stop.is_set():
            pipeline.wait_ready()
        if node is not None and not stop.is_set():
            node.start()  # takes streams only once the model is loaded
        signals.phase = "running"
        reader = connect(url, cfg.redis, socket_timeout=1, decode_responses=True)
        deadline = time.monotonic() + duration if duration > 0 else None
        if plain or not console.is_terminal:
            _plain_loop(pipeline, stop, deadline)
        else:
            with Live(console=console, refresh_per_second=2) as live:
                while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    latest = _latest(reader, cfg) if show_detections else {}
                    live.update(render_status(pipeline.status(), latest))
                    stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    except VisionflowError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    finally:
        signals.phase = "stopping"
        console.print("stopping...")
        try:
            reconciler.stop()
            if node is not None:  # hand the streams over before the pipeline goes
                node.drain()
            pipeline.stop()
        finally:
            signals.restore()
    final = pipeline.status()
    console.print(render_status(final, {}))


class _StopSignals:
    """SIGTERM is handled like Ctrl-C (SIGINT): the pipeline stops cleanly -- readers stop,
    in-flight batches drain, the output stage flushes (Redis, else the spool) within its
    deadline -- and the command exits 0.

    While the pipeline starts, a signal only marks the stop (it is stopped as soon as
    :meth:`Pipeline.start` returns); while waiting for the workers it interrupts the wait;
    while running it ends the status loop.  Once stopping, further signals are ignored (a
    second Ctrl-C or a service manager's repeated SIGTERM must not cut the flush short;
    :meth:`Pipeline.stop` is bounded on its own)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.phase = "starting"  # starting | waiting | running | stopping
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.phase == "stopping":
            err_console.print(f"{name}: already stopping (draining and flushing)")
            return
        self.stop.set()
        log.info("%s: stopping", name)
        if self.phase == "waiting":
            raise KeyboardInterrupt


def _plain_loop(pipeline: object, stop: threading.Event, deadline: float | None) -> None:
    from visionflow.workers.supervisor import Pipeline

    assert isinstance(pipeline, Pipeline)
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        status = pipeline.status()
        parts = [f"{s.stream_id}:{s.state}:{s.fps:.0f}fps:{s.published}pub" for s in status.streams]
        workers = [f"w{w.worker_id}:{w.batches}b/{w.mean_batch:.1f}" for w in status.workers]
        console.print(" ".join(parts + workers), highlight=False)
        stop.wait(2.0)


def _latest(reader: redis.Redis, cfg: AppConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for stream in cfg.streams:
            rows = reader.xrevrange(detections_key(cfg.redis.key_prefix, stream.id), count=1)
            if rows:
                fields: dict[str, str] = rows[0][1]  # type: ignore[index,assignment]
                dets = json.loads(fields["detections"])
                labels = ", ".join(f"{d['label']} {d['score']:.2f}" for d in dets[:4])
                out[stream.id] = f"seq {fields['seq']}: {len(dets)} [{labels}]"
    except redis.RedisError:
        pass
    return out


def _latency_cell(s: StreamStatus) -> str:
    """Capture -> written, recent p50/p99 in ms ("-" until an entry was written)."""
    total = s.latency.get("total")
    return f"{total.p50:.0f}/{total.p99:.0f}" if total else "-"


def render_status(status: PipelineStatus, latest: dict[str, str]) -> Group:
    """The status table: one row per stream, one per worker."""
    streams = Table(title=f"streams - model {status.model_id}", expand=False)
    for col in (
        "stream", "state", "decode", "fps", "frames", "published", "in flight", "drops",
        "p50/p99 ms", "last error",
    ):  # fmt: skip
        streams.add_column(col)
    if latest:
        streams.add_column("latest detections")
    colours = {
        "streaming": "green",
        "backoff": "yellow",
        "stalled": "magenta",
        "failed": "red",
        "disabled": "bright_black",
    }
    for s in status.streams:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(s.drops.items())) or "0"
        row = [
            s.stream_id,
            f"[{colours.get(str(s.state), 'white')}]{s.state}[/]",
            s.decode,
            f"{s.fps:.1f}",
            str(s.frames),
            str(s.published),
            str(s.in_flight),
            drops,
            _latency_cell(s),
            (s.last_error or "")[:60],
        ]
        if latest:
            row.append(latest.get(s.stream_id, ""))
        streams.add_row(*row)
    workers = Table(title="inference workers")
    for col in (
        "worker",
        "state",
        "backend",
        "placement",
        "batches",
        "mean batch",
        "in flight",
        "restarts",
    ):
        workers.add_column(col)
    for w in status.workers:
        workers.add_row(
            str(w.worker_id),
            w.state,
            f"{w.backend} {w.device}",
            w.placement or "-",
            str(w.batches),
            f"{w.mean_batch:.2f}",
            str(w.inflight),
            str(w.restarts),
        )
    redis_line = (
        f"redis: {'connected' if status.redis_connected else '[red]unavailable[/]'}"
        f" - {status.redis_pending} pending"
        + (f" - {status.redis_error}" if status.redis_error and not status.redis_connected else "")
    )
    return Group(streams, workers, redis_line)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ConfigError as exc:  # pragma: no cover - safety net
        err_console.print(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
