"""Fixtures of the integration tests beyond tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.secure_redis import TlsRedis, tls_redis_servers


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[Callable[..., TlsRedis]]:
    """Factory: ``tls_redis(client_certs="optional"|"yes")`` -> a started TLS-only
    redis-server with the ACL users of :mod:`tests.integration.secure_redis`."""
    yield from tls_redis_servers(tmp_path)
