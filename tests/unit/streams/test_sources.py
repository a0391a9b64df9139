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
