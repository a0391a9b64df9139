"""source.analyze_duration_s: FFmpeg's probing of network streams, shortened on request."""

from __future__ import annotations

import threading

from visionflow.config import SourceConfig
from visionflow.streams.config import StreamConfig
from visionflow.streams.sources import VideoSource


def options(url: str, **policy: object) -> dict[str, str]:
    config = SourceConfig(allowed_schemes=["rtsp", "https", "file"], **policy)  # type: ignore[arg-type]
    return VideoSource(StreamConfig(id="c", url=url), config, threading.Event())._options()


def test_network_streams_get_the_configured_probe_time_and_files_do_not():
    assert "analyzeduration" not in options("rtsp://cam/x")  # FFmpeg's default
    assert options("rtsp://cam/x", analyze_duration_s=0.5)["analyzeduration"] == "500000"
    assert options("https://cam/x", analyze_duration_s=1)["analyzeduration"] == "1000000"
    assert "analyzeduration" not in options("/data/a.mp4", analyze_duration_s=0.5)
