"""Which shedding modes a stream's reader gives its policy, by decoder and settings."""

from __future__ import annotations

import queue
import uuid

import pytest

from visionflow.config import SourceConfig
from visionflow.pipeline.framepool import FramePool
from visionflow.streams.config import StreamConfig
from visionflow.streams.shedding import ALL_MODES, NO_MODES, PACKET_MODES
from visionflow.workers.ingest import StreamReader


@pytest.mark.parametrize(
    ("decode", "shed_load", "modes"),
    [
        ("cpu", True, ALL_MODES),  # PyAV: skip_frame and packet gates
        ("nvdec", True, PACKET_MODES),  # NVDEC: packet gates only (no nonref)
        ("dali", True, NO_MODES),  # DALI decodes whole GOPs
        ("cpu", False, NO_MODES),  # shed_load off: decode everything
        ("nvdec", False, NO_MODES),
    ],
)
def test_reader_gives_its_policy_the_decoders_modes(decode, shed_load, modes):
    pool = FramePool(f"vft-{uuid.uuid4().hex[:8]}", 2, 8, 8, create=True)
    try:
        reader = StreamReader(
            StreamConfig(id="cam", url="rtsp://cam/1"),
            SourceConfig(shed_load=shed_load),
            pool,
            lambda f: None,
            queue.Queue(),
            decode=decode,
        )
        assert reader.shed.modes == modes
        assert reader.shed.gates_packets is (modes != NO_MODES)
    finally:
        pool.close()
