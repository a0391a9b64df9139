"""The API's listening socket."""

from __future__ import annotations

import socket

from visionflow.api.config import ApiConfig
from visionflow.api.server import bind


def test_connections_to_the_api_do_not_wait_for_nagle():
    """Accepted connections must have TCP_NODELAY: without it a keep-alive client (a
    dashboard, a Prometheus scraper) waited ~40 ms per request for the delayed ACK that
    releases the response's second write (bench/api_poll.py: 144 -> 11 ms per poll)."""
    sock = bind(ApiConfig.model_validate({"listen": "127.0.0.1:0"}))
    client = socket.create_connection(sock.getsockname()[:2], timeout=5)
    try:
        accepted, _ = sock.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        client.close()
        sock.close()
