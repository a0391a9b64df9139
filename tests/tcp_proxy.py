"""A small TCP proxy for fault injection (``tc netem`` is not available here).

Sits between the pipeline and an RTSP server.  visionflow opens RTSP with
``rtsp_transport=tcp``: the RTSP control messages and the interleaved RTP data share one TCP
connection, so forwarding each accepted connection byte for byte to the upstream server is all
an RTSP session needs.  Modes, switchable at any time and applying to every connection:

- ``pass``: forward as fast as the data comes;
- ``stall``: stop forwarding in both directions (the connections stay open: a link that went
  silent, not one that was cut); new connections are accepted but hang too;
- ``throttle``: server-to-client data limited to ``rate`` bytes per second;
- ``delay``: server-to-client data held ``delay_s`` seconds before it is forwarded (a slow
  reply: the request reached the server, its answer comes late).

:meth:`TcpProxy.cut` closes every connection (a link reset).  Used as a context manager.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

CHUNK = 4096


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._mode = "pass"
        self._rate = 0.0
        self._delay_s = 0.0
        self._closed = False
        self._sockets: list[socket.socket] = []
        self.connections = 0
        self.bytes_down = 0  # server -> client, forwarded
        self._thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._thread.start()

    # ---- control ---------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def passthrough(self) -> None:
        self._set("pass")

    def stall(self) -> None:
        self._set("stall")

    def throttle(self, bytes_per_s: float) -> None:
        self._rate = bytes_per_s
        self._set("throttle")

    def delay(self, seconds: float) -> None:
        self._delay_s = seconds
        self._set("delay")

    def _set(self, mode: str) -> None:
        with self._cond:
            self._mode = mode
            self._cond.notify_all()

    def cut(self) -> None:
        """Reset every open connection (the proxy keeps listening)."""
        with self._cond:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        _close(self._listener)
        self.cut()
        self._thread.join(timeout=2)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- forwarding ----------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)  # upstream down: the client sees the connection refused/reset
                continue
            with self._cond:
                self._sockets += [client, server]
                self.connections += 1
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while True:
                if not self._gate():
                    return
                data = src.recv(CHUNK if not down or self._mode != "throttle" else 512)
                if not data:
                    return
                if not self._gate():
                    return
                if down and self._mode == "throttle" and self._rate > 0:
                    time.sleep(len(data) / self._rate)  # the link's pace, not a synchronisation
                if down and self._mode == "delay":
                    time.sleep(self._delay_s)  # the reply's latency, not a synchronisation
                dst.sendall(data)
                if down:
                    self.bytes_down += len(data)
        except OSError:
            return
        finally:
            _close(src)
            _close(dst)

    def _gate(self) -> bool:
        """Wait while stalled; False once the proxy is closed."""
        with self._cond:
            while self._mode == "stall" and not self._closed:
                self._cond.wait()
            return not self._closed


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
