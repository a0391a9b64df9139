from __future__ import annotations

import json

import numpy as np
import pytest

from visionflow.pipeline.frames import Detection, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.schema import _detection, detections_json, detections_key, encode_entry, parse_entry


def test_entry_round_trip_and_latency_breakdown():
    frame = FrameRef(
        "cam-1", 41, 1.4, 1000.0, 3.0, "p", 0, letterbox_geometry(1920, 1080, 640, 640)
    )
    det = Detection(0, "person", 0.91, 10.0, 20.0, 110.0, 220.0)
    result = FrameResult(
        frame, (det,), queue_ms=5.0, inference_ms=12.0, batch_size=4, worker_id=1, done_ts=1000.030
    )
    fields = encode_entry(result, "demo-1", publish_ts=1000.032)
    assert all(isinstance(v, str) for v in fields.values())
    latency = json.loads(fields["latency_ms"])
    assert latency["decode"] == 3.0 and latency["publish"] == 2.0 and latency["total"] == 32.0
    entry = parse_entry(b"1-0", {k.encode(): v.encode() for k, v in fields.items()})
    assert (entry.stream_id, entry.seq, entry.width, entry.height) == ("cam-1", 41, 1920, 1080)
    assert entry.detections == [
        {"label": "person", "class_id": 0, "score": 0.91, "box": [10.0, 20.0, 110.0, 220.0]}
    ]
    assert detections_key("vf", "cam-1") == "vf:detections:cam-1"


def test_detections_are_written_as_json_dumps_writes_them():
    """The detections field is written directly, not through json.dumps: the same text, for
    tracked and untracked boxes, any label, ints, and json's NaN / Infinity."""
    dets = [
        Detection(0, "person", 0.91, 10.0, 20.0, 110.5, 220.25),
        Detection(3, 'a "quoted" \\ läbel', 0.5, 0, 1, 2, 3, track_id=1800000000000001),
        Detection(7, "car", 1e-05, 1234.5, 0.1, 1920.0, 1080.0, track_id=2),
    ]
    odd = [
        Detection(1, "x", float("nan"), 0.0, float("inf"), 1.0, 2.0),
        Detection(True, "x", 0.5, True, 1.0, 2.0, 3.0, track_id=True),  # type: ignore[arg-type]
        Detection(None, "x", 0.5, 1.0, 1.0, 2.0, 3.0),  # type: ignore[arg-type]
        Detection(2, "x", np.float64(0.25), 1.0, 1.0, 2.0, 3.0),
    ]
    for case in ([], dets, *([*dets, o] for o in odd)):
        expected = json.dumps([_detection(d) for d in case], separators=(",", ":"))
        assert detections_json(case) == expected
    with pytest.raises(TypeError):  # json cannot write it, and neither does the direct path
        detections_json([Detection(2, "x", np.float32(0.25), 1.0, 1.0, 2.0, 3.0)])
