"""Logging set-up shared by every process, with credential redaction always on."""

from __future__ import annotations

import logging
import sys

from visionflow.streams.urls import RedactingFilter

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, stream: object = None) -> None:
    """Configure the root logger once: redacting handler to stderr (or ``stream``)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    # FFmpeg's own log lines are deliberately not routed into Python logging: PyAV's log
    # callback takes the GIL from FFmpeg's frame-decoding threads, and container.close() of a
    # frame-threaded RTSP decoder then deadlocks the whole process now and then (found by
    # `visionflow calibrate`: 1 close in 5 to every close hung in trials; PyAV #909, #751).  Errors
    # still carry FFmpeg's error text through PyAV's exceptions.


def setup_child_logging(level: int) -> None:
    """Child processes log to stderr with the same format and redaction."""
    setup_logging(level)
