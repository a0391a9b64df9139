"""Every box checked against the generator's truth, through RTSP, the pipeline and Redis.

Four synthetic scenes (different resolutions, one HEVC) are served by the real RTSP server;
the pipeline's entries are read back from Redis and matched by stream and frame number
(``seq`` is the frame's index in the clip).  Precision and recall at IoU 0.5 must be >= 0.9
for every stream, and the match must be best at frame offset 0, so boxes mapped with a wrong
letterbox, frames of two streams swapped, or drifting sequence numbers all fail here.
"""

from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, last_entry, running
from visionflow.scenes.clips import load_truth
from visionflow.scenes.metrics import Scored, Truth, iou, precision_recall

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines
SECONDS = 8.0
FPS = 10  # a 2-core CI machine keeps up with 4 streams at this rate
SCENES = {  # stream id: (width, height, codec, seed)
    "small": (640, 360, "h264", 21),
    "hd": (1280, 720, "h264", 22),
    "hevc": (960, 540, "hevc", 23),
    "fullhd": (1920, 1080, "h264", 24),
}


def _frames(rows, truth, offset=0):
    out = []
    for entry in rows:
        index = entry.seq + offset
        if index not in truth:
            continue
        preds = [Scored(d["class_id"], d["score"], tuple(d["box"])) for d in entry.detections]
        truths = [Truth(t.class_id, (t.x1, t.y1, t.x2, t.y2), t.ignorable) for t in truth[index]]
        out.append((preds, truths))
    return out


def _mean_matched_iou(frames):
    total, count = 0.0, 0
    for preds, truths in frames:
        for truth in truths:
            if truth.ignore:
                continue
            best = max(
                (iou(p.box, truth.box) for p in preds if p.class_id == truth.class_id), default=0.0
            )
            total, count = total + best, count + 1
    return total / max(count, 1)


def test_detections_match_ground_truth_per_stream(
    rtsp, make_clip, redis_server, redis_client, key_prefix
):
    clips = {
        sid: make_clip(w, h, SECONDS, codec, seed, FPS)
        for sid, (w, h, codec, seed) in SCENES.items()
    }
    server = rtsp({sid: f"file:{path}" for sid, path in clips.items()})
    n_frames = int(SECONDS * FPS)
    cfg = config(
        [{"id": sid, "url": server.url(sid)} for sid in SCENES],
        redis_server,
        key_prefix,
        batching={"max_batch": 8, "max_delay_ms": 20, "buffer_per_stream": 64},
        workers={"slots_per_stream": 64, "inference_workers": 2},
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: all(
                (last := last_entry(redis_client, key_prefix, sid)) and last.seq >= n_frames - 3
                for sid in SCENES
            ),
            SECONDS + 40,
            lambda: (
                f"clips not fully processed: {[(s.stream_id, s.published, s.drops) for s in pipeline.status().streams]}"
            ),
        )
        status = pipeline.status()
    report = {}
    for sid in SCENES:
        rows = [e for e in entries(redis_client, key_prefix, sid) if e.seq < n_frames]
        assert all(e.stream_id == sid for e in rows)
        truth = load_truth(clips[sid])
        frames = _frames(rows, truth)
        assert len(frames) >= 0.9 * n_frames, (
            f"{sid}: only {len(frames)} of {n_frames} frames: {status.stream(sid)} {[e.seq for e in rows][:40]}"
        )
        pr = precision_recall(frames)
        alignment = {k: _mean_matched_iou(_frames(rows, truth, k)) for k in (-2, -1, 0, 1, 2)}
        report[sid] = (round(pr.precision, 3), round(pr.recall, 3), alignment)
        assert pr.precision >= 0.9 and pr.recall >= 0.9, f"{sid}: {pr} {report}"
        assert max(alignment, key=alignment.get) == 0, (
            f"{sid}: best frame offset is not 0: {alignment}"
        )
        assert status.stream(sid).drops == {}, status.stream(sid)
    print("truth check:", report)
