from __future__ import annotations

import json

from visionflow.pipeline.frames import Detection, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.schema import detections_key, encode_entry, parse_entry


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
