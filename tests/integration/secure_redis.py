"""A private TLS-only ``redis-server`` with ACL users, for the Redis security tests.

Debian's redis-server 7.0 is built with TLS; certificates are made with ``openssl`` (CA,
server for 127.0.0.1/localhost, client) in the test's tmp_path, and the ACL file's users
get :func:`visionflow.redis_client.acl_rules` (the rules README documents): ``vf-publisher``,
``vf-consumer``, ``vf-noxadd`` (the publisher without XADD) and ``admin`` (everything, for
the test's own checks).  The default user is off.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_until
from visionflow.config import RedisConfig
from visionflow.consumer import ConsumerConfig
from visionflow.pipeline.frames import FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.redis_client import acl_rules
from visionflow.redis_server import free_port

PREFIX = "vfsec"
PASSWORDS = {
    "admin": "adm-Pw-41x",
    "vf-publisher": "pub-Pw-93k",
    "vf-consumer": "con-Pw-27q",
    "vf-noxadd": "nox-Pw-58z",
    "vf-fleet": "flt-Pw-16m",
}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(directory: Path) -> Path:
    """CA, server (127.0.0.1 / localhost) and client certificates, EC P-256, in ``directory``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=visionflow-test-ca", cwd=directory)  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=visionflow-test-{name}", cwd=directory)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *ext, cwd=directory)  # fmt: skip
    return directory


def acl_file(path: Path) -> Path:
    def user(name: str, rules: str) -> str:
        digest = hashlib.sha256(PASSWORDS[name].encode()).hexdigest()
        return f"user {name} reset on #{digest} {rules}"

    no_xadd = acl_rules("publisher", PREFIX).replace(" +xadd ", " ")
    lines = [
        "user default off",
        user("admin", "~* &* +@all"),
        user("vf-publisher", acl_rules("publisher", PREFIX)),
        user("vf-consumer", acl_rules("consumer", PREFIX)),
        user("vf-noxadd", no_xadd),
        user("vf-fleet", f"{acl_rules('publisher', PREFIX)} {acl_rules('fenced', PREFIX)}"),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class TlsRedis:
    port: int
    certs: Path
    process: subprocess.Popen[bytes]

    def url(self, user: str, password: str | None = None) -> str:
        return f"rediss://{user}:{password or PASSWORDS[user]}@127.0.0.1:{self.port}/0"

    @property
    def ca(self) -> str:
        return str(self.certs / "ca.crt")

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url("admin"), ssl_ca_certs=self.ca, decode_responses=True)


def tls_redis_servers(tmp_path: Path) -> Iterator[Callable[..., TlsRedis]]:
    """Factory: ``tls_redis(client_certs="optional"|"yes")`` -> a started TLS-only server."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    certs = make_certs(tmp_path)
    acl = acl_file(tmp_path / "users.acl")
    started: list[subprocess.Popen[bytes]] = []

    def start(client_certs: str = "optional") -> TlsRedis:
        port = free_port()
        args = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
        args += ["--tls-cert-file", str(certs / "server.crt")]
        args += ["--tls-key-file", str(certs / "server.key")]
        args += ["--tls-ca-cert-file", str(certs / "ca.crt")]
        args += ["--tls-auth-clients", client_certs, "--aclfile", str(acl)]
        args += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(process)
        server = TlsRedis(port, certs, process)
        client = redis.Redis.from_url(
            server.url("admin"),
            ssl_ca_certs=server.ca,
            ssl_certfile=str(certs / "client.crt"),
            ssl_keyfile=str(certs / "client.key"),
            socket_connect_timeout=0.5,
        )

        def up() -> bool:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 15, "TLS redis-server did not start", interval=0.1)
        client.close()
        return server

    yield start
    for process in started:
        process.kill()
        process.wait()


LB = letterbox_geometry(320, 240, 320, 320)


def results(stream: str, seqs: range) -> list[FrameResult]:
    return [
        FrameResult(
            FrameRef(stream, s, None, 1_700_000_000 + s * 0.1, 1.0, "p", 0, LB), (), 1, 1, 1, 0, 0
        )
        for s in seqs
    ]


def sink_config(server: TlsRedis, tmp_path: Path, **tls: str) -> RedisConfig:
    return RedisConfig(
        url=None,
        key_prefix=PREFIX,
        socket_timeout_s=1,
        spool_dir=str(tmp_path / "spool"),
        tls_ca_file=server.ca,
        **tls,  # type: ignore[arg-type]
    )


def publish(cfg: RedisConfig, url: str, count: int, stream: str = "cam") -> None:
    """Write ``count`` results of ``stream`` through a sink, as the pipeline does."""
    from visionflow.workers.sinks import RedisStreamSink

    sink = RedisStreamSink(cfg, url, "m")
    sink.start()
    try:
        sink.write(results(stream, range(count)))
        wait_until(lambda: sink.published[stream] == count, 15, lambda: f"{sink.last_error}")
    finally:
        sink.stop()


def consumer_config(server: TlsRedis, **settings: object) -> ConsumerConfig:
    """The consumer user's config over TLS, reading stream ``cam`` from the start."""
    base: dict[str, object] = {
        "redis_url": server.url("vf-consumer"),
        "tls_ca_file": server.ca,
        "key_prefix": PREFIX,
        "streams": ["cam"],
        "start_id": "0",
    }
    return ConsumerConfig.model_validate({**base, **settings})
