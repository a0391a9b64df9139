"""Snapshots: the content crop of a slot, boxes drawn where the objects are, JPEG in Redis."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import redis

from tests.conftest import wait_until
from visionflow.config import RedisConfig
from visionflow.pipeline.crop import copy_content
from visionflow.pipeline.frames import (
    BatchResult,
    Detection,
    FrameImage,
    FrameRef,
    FrameResult,
)
from visionflow.pipeline.letterbox import letterbox_geometry, letterbox_image
from visionflow.schema import snapshot_key
from visionflow.workers.output import OutputStage
from visionflow.workers.sinks import Sink
from visionflow.workers.snapshots import SnapshotWriter, encode_jpeg, render, snapshot_ttl_s

LB = letterbox_geometry(640, 480, 320, 320)  # scale 0.5: content 320x240 at pad_y 40


def decode_jpeg(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), format="jpeg_pipe") as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def grey_frame_with_square() -> np.ndarray:
    """640x480 grey, a dark square at x 200..300, y 100..200 (original pixels)."""
    image = np.full((480, 640, 3), 128, np.uint8)
    image[100:200, 200:300] = 20
    return image


def slot_of(image: np.ndarray) -> np.ndarray:
    slot, lb = letterbox_image(image, 320, 320)
    assert lb == LB
    return slot


def result_for(box: tuple[float, float, float, float], seq: int = 0) -> FrameResult:
    frame = FrameRef("cam", seq, None, 1.0, 1.0, "p", 0, LB, snapshot=True)
    return FrameResult(frame, (Detection(0, "thing", 0.9, *box),), 1.0, 1.0, 1, 0, 1.0)


def test_copy_content_drops_the_padding_and_owns_its_memory() -> None:
    slot = slot_of(grey_frame_with_square())
    assert slot.shape == (320, 320, 3)
    content = copy_content(slot, LB)
    assert content.shape == (LB.scaled_h, LB.scaled_w, 3) == (240, 320, 3)
    assert not np.shares_memory(content, slot)
    assert content[75, 125].max() < 40 and content[10, 10].min() > 110  # square at half scale
    slot[:] = 0
    assert content[10, 10].min() > 110, "the copy must survive the slot being reused"


def test_encode_jpeg_round_trips_any_size() -> None:
    image = np.random.default_rng(1).integers(0, 255, (181, 321, 3), dtype=np.uint8)
    data = encode_jpeg(image)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    assert decode_jpeg(data).shape == (181, 321, 3)
    with pytest.raises(ValueError, match="RGB"):
        encode_jpeg(np.zeros((4, 4), np.uint8))


def test_boxes_land_on_the_object_in_the_snapshot() -> None:
    content = copy_content(slot_of(grey_frame_with_square()), LB)
    decoded = decode_jpeg(render(result_for((200, 100, 300, 200)), content))
    assert decoded.shape == (240, 320, 3)
    red = (decoded[..., 0].astype(int) - decoded[..., 1].astype(int)) > 100
    ys, xs = np.nonzero(red)
    assert ys.size > 0, "no box drawn"
    # the square is at (100..150, 50..100) in the snapshot's pixels: the box outlines it
    assert abs(xs.min() - 100) <= 2 and abs(xs.max() - 150) <= 3
    assert abs(ys.min() - 50) <= 2 and abs(ys.max() - 100) <= 3


def test_snapshot_ttl_is_a_few_intervals() -> None:
    assert snapshot_ttl_s(2.0) == 10 and snapshot_ttl_s(5.0) == 25 and snapshot_ttl_s(0.1) == 10


class _Null(Sink):
    def __init__(self) -> None:
        from collections import Counter

        self.published, self.dropped = Counter(), Counter()

    def write(self, results: object) -> None:
        pass


def test_output_stage_sends_the_newest_frame_to_redis_with_a_ttl(
    redis_server, redis_client, key_prefix
) -> None:
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix)
    writer = SnapshotWriter(cfg, redis_server, interval_s=2.0)
    stage = OutputStage([_Null()], snapshots=writer)
    content = copy_content(slot_of(grey_frame_with_square()), LB)
    stage.start()
    try:
        image = FrameImage("cam", 0, content)
        stage.on_result(BatchResult(1, 0, (result_for((200, 100, 300, 200)),), None, (image,)))
        key = snapshot_key(key_prefix, "cam")
        raw = redis.Redis.from_url(redis_server)
        try:
            data = wait_until(lambda: raw.get(key), 10, "no snapshot written")
            assert 0 < raw.ttl(key) <= 10
        finally:
            raw.close()
    finally:
        stage.stop(1.0)
    assert decode_jpeg(data).shape == (240, 320, 3)
    assert writer.written == 1 and writer.failed == 0


def test_snapshot_writer_survives_an_unreachable_redis() -> None:
    cfg = RedisConfig(url="redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    writer = SnapshotWriter(cfg, "redis://127.0.0.1:1/0", interval_s=1.0)
    content = np.zeros((24, 32, 3), np.uint8)
    writer.write(result_for((1, 1, 5, 5)), content)  # no exception
    writer.write(result_for((1, 1, 5, 5), seq=1), content)
    assert writer.failed == 2 and writer.written == 0
    writer.stop()


def test_ingest_marks_at_most_one_frame_per_interval() -> None:
    import queue
    import uuid

    from visionflow.config import SourceConfig
    from visionflow.pipeline.framepool import FramePool
    from visionflow.streams.config import StreamConfig
    from visionflow.workers.ingest import StreamReader

    pool = FramePool(f"vft-{uuid.uuid4().hex[:8]}", 2, 8, 8, create=True)
    try:
        stream = StreamConfig(id="cam", url="rtsp://cam/1")
        reader = StreamReader(
            stream, SourceConfig(), pool, lambda f: None, queue.Queue(), snapshot_interval_s=2.0
        )
        marks = [reader._snapshot_due(t) for t in (100.0, 100.5, 101.9, 102.0, 102.1, 104.5)]
        assert marks == [True, False, False, True, False, True]
        off = StreamReader(stream, SourceConfig(), pool, lambda f: None, queue.Queue())
        assert not any(off._snapshot_due(t) for t in (100.0, 200.0))
    finally:
        pool.close()
