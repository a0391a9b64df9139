from __future__ import annotations

import threading
import time

import pytest

from visionflow.config import SourceConfig
from visionflow.errors import SourceEndedError, SourceOpenError
from visionflow.streams.config import StreamConfig
from visionflow.streams.sources import VideoSource


def test_a_slow_consumer_is_not_a_stalled_source(make_clip):
    clip = make_clip(160, 96, 1.0, "h264", 3, 10)
    source = VideoSource(
        StreamConfig(id="f", url=str(clip), realtime=False),
        SourceConfig(stall_timeout_s=0.3, allowed_schemes=["file"]),
        threading.Event(),
    )
    source.open()
    seen = 0
    with pytest.raises(SourceEndedError):
        for _ in source.frames():
            seen += 1
            if seen <= 2:
                time.sleep(0.6)  # the consumer (waiting for a free slot) is slow, the file is not
    assert seen == 10


def test_missing_file_is_permanent_and_redacted(tmp_path):
    source = VideoSource(
        StreamConfig(id="f", url=str(tmp_path / "none.mp4")),
        SourceConfig(allowed_schemes=["file"]),
        threading.Event(),
    )
    with pytest.raises(SourceOpenError) as info:
        source.open()
    assert info.value.permanent and "none.mp4" in str(info.value)


@pytest.mark.parametrize("strict", [True, False])
def test_streams_open_with_pyav_before_and_after_19(monkeypatch, strict):
    """PyAV 19 took ``av.open``'s ``metadata_errors`` away (passing it fails every stream);
    before 19 it is what keeps non-UTF-8 metadata from failing the open."""
    from visionflow.streams import sources

    calls = []
    monkeypatch.setattr(sources, "_STRICT_METADATA", strict)
    monkeypatch.setattr(sources.av, "open", lambda *a, **kw: calls.append((a, kw)) or "opened")
    assert sources._open_input("rtsp://cam", {"rtsp_transport": "tcp"}, (5.0, 2.0)) == "opened"
    ((args, kwargs),) = calls
    assert args == ("rtsp://cam",) and kwargs.pop("options") == {"rtsp_transport": "tcp"}
    assert kwargs.pop("timeout") == (5.0, 2.0)
    assert kwargs == ({"metadata_errors": "replace"} if strict else {})
