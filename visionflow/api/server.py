"""Serving the API: in a thread of ``visionflow run`` / ``demo``, or alone (``visionflow api``)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import redis
import uvicorn
from fastapi import FastAPI
from redis.backoff import NoBackoff
from redis.retry import Retry

from visionflow.api.app import create_app
from visionflow.api.auth import resolve_token
from visionflow.api.config import ApiConfig
from visionflow.api.context import ApiContext
from visionflow.api.sources import PipelineSource, RedisSource
from visionflow.config import AppConfig
from visionflow.errors import ConfigError
from visionflow.redis_client import RedisTls, connect
from visionflow.streams.control import StreamControl
from visionflow.workers.status import PipelineStatus

log = logging.getLogger("visionflow.api")


def bind(api: ApiConfig) -> socket.socket:
    """The listening socket (bound now, so a taken port fails at start-up and port 0 is
    known before serving)."""
    host = api.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it a keep-alive client waited ~40 ms per
    # request (Nagle holding the response's second write until the client's delayed ACK)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, api.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"api.listen {api.listen!r}: cannot listen: {exc.strerror or exc}"
        ) from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _client(url: str, api: ApiConfig, tls: RedisTls) -> redis.Redis:
    """The API's Redis connection: short timeouts and no retry, so an unreachable Redis
    costs a request ``api.redis_timeout_s`` at most (then 503), not seconds of backoff."""
    timeout = api.redis_timeout_s
    return connect(  # rediss:// with redis.tls_* of the config
        url,
        tls,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _app(ctx: ApiContext, api: ApiConfig, cfg: AppConfig) -> FastAPI:
    return create_app(
        ctx,
        resolve_token(api, cfg.base_dir),
        protect_reads=api.reads_protected,
        trusted_hosts=api.trusted_hosts,
    )


def pipeline_app(
    cfg: AppConfig,
    redis_url: str,
    status: Callable[[], PipelineStatus],
    control: StreamControl | None = None,
) -> FastAPI:
    """The API of ``visionflow run``: status straight from the pipeline."""
    api = cfg.api or ApiConfig()
    ctx = ApiContext(
        PipelineSource(status, node_id=cfg.fleet.resolved_node_id() if cfg.fleet else None),
        _client(redis_url, api, cfg.redis),
        cfg.redis.key_prefix,
        control,
    )
    return _app(ctx, api, cfg)


def redis_app(cfg: AppConfig, redis_url: str, control: StreamControl | None = None) -> FastAPI:
    """The API of ``visionflow api``: everything read from Redis."""
    api = cfg.api or ApiConfig()
    client = _client(redis_url, api, cfg.redis)
    source = RedisSource(client, cfg.redis.key_prefix)
    ctx = ApiContext(source, client, cfg.redis.key_prefix, control, api.status_stale_s)
    return _app(ctx, api, cfg)


class ApiServer:
    """uvicorn in a daemon thread (no signal handlers: the main thread owns them)."""

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        self.sock, self.url = sock, url_of(sock)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="api", daemon=True)

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except Exception:  # never take the pipeline down
            log.exception("the operator API stopped")

    def start(self) -> ApiServer:
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def serve_foreground(app: FastAPI, sock: socket.socket) -> None:
    """``visionflow api``: uvicorn in the main thread (Ctrl-C / SIGTERM stop it)."""
    config = uvicorn.Config(app, log_level="info", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
