"""Appearance descriptors in the inference worker: only for the streams tracking asks for,
the set kept current by messages from the supervisor."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np

from tests.unit.workers.test_inference_errors import FakeEngine, _drain, _spec
from visionflow.engines.base import EngineCapabilities, Thresholds
from visionflow.pipeline.frames import BatchRequest, BatchResult, FrameRef, Letterbox
from visionflow.tracking.config import TrackingConfig
from visionflow.workers.inference import WorkerLoop, WorkerQueues
from visionflow.workers.messages import AppearanceStreams
from visionflow.workers.supervisor import Pipeline


class _OneBox:
    def result(self) -> list[Any]:
        boxes = np.array([[4, 4, 20, 28]], np.float32)
        one = (boxes, np.array([0.9], np.float32), np.zeros(1, np.intp))
        return [one, one]

    def done(self) -> bool:
        return True


class BoxEngine(FakeEngine):
    """One box per frame; one batch at a time, so a message applies from the next batch
    (with more in flight, from the next batch finished)."""

    capabilities = EngineCapabilities(max_inflight=1)

    def submit(self, frames: list[Any], thresholds: Thresholds) -> _OneBox:
        return _OneBox()


class ColourPools:
    def get(self, name: str) -> Any:
        return self

    def image(self, slot: int) -> Any:
        image = np.zeros((32, 32, 3), np.uint8)
        image[:, :, 0] = 220  # red everywhere
        return image


def _batch(batch_id: int) -> BatchRequest:
    lb = Letterbox(32, 32, 32, 32, 1.0, 0, 0, 32, 32)
    frames = tuple(
        FrameRef(sid, batch_id, None, 0.0, 1.0, "pool", 0, lb) for sid in ("door", "street")
    )
    return BatchRequest(batch_id, frames, 0.0)


def test_only_the_streams_that_asked_get_descriptors_and_the_set_can_change():
    tasks: queue.Queue[object] = queue.Queue()
    for msg in (
        _batch(1),
        AppearanceStreams(frozenset({"street"})),
        _batch(2),
        AppearanceStreams(frozenset()),
        _batch(3),
        None,
    ):
        tasks.put(msg)
    queues = WorkerQueues(tasks, queue.Queue(), queue.Queue(), queue.Queue())
    spec = _spec()
    spec = type(spec)(**{**spec.__dict__, "appearance_streams": frozenset({"door"})})
    WorkerLoop(BoxEngine({}), ColourPools(), spec, queues).run()  # type: ignore[arg-type]
    described = {
        r.batch_id: {
            res.frame.stream_id: res.detections[0].appearance is not None for res in r.results
        }
        for r in _drain(queues.output)
        if isinstance(r, BatchResult)
    }
    assert described == {
        1: {"door": True, "street": False},
        2: {"door": False, "street": True},
        3: {"door": False, "street": False},
    }


def test_the_supervisor_sends_the_set_only_when_it_changes():
    pipeline = object.__new__(Pipeline)  # only the bookkeeping under test
    sent: queue.Queue[object] = queue.Queue()
    pipeline._tasks = {0: sent}  # type: ignore[attr-defined]
    pipeline._tracking = {"a": TrackingConfig()}  # type: ignore[attr-defined]
    pipeline._appearance = frozenset()  # type: ignore[attr-defined]
    pipeline._send_appearance()  # type: ignore[attr-defined]
    assert sent.empty()
    pipeline._tracking["b"] = TrackingConfig(appearance_s=3)  # type: ignore[attr-defined]
    pipeline._send_appearance()  # type: ignore[attr-defined]
    pipeline._send_appearance()  # type: ignore[attr-defined]
    assert _drain(sent) == [AppearanceStreams(frozenset({"b"}))]
    del pipeline._tracking["b"]  # type: ignore[attr-defined]
    pipeline._send_appearance()  # type: ignore[attr-defined]
    assert _drain(sent) == [AppearanceStreams(frozenset())]
