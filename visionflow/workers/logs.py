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
    try:  # route FFmpeg's own messages through Python logging (and so through redaction)
        import av.logging

        av.logging.set_level(av.logging.ERROR)
    except Exception:
        pass


def setup_child_logging(level: int) -> None:
    """Child processes log to stderr with the same format and redaction."""
    setup_logging(level)
