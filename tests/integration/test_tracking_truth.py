"""Track ids, zone and line counts checked against the scenes' truth, RTSP -> pipeline -> Redis.

One held-out synthetic scene of each kind (crossing, occlusion, objects leaving and coming
back) is served by the real RTSP server; every stream tracks, with a zone and a line.  The
entries' track ids are scored with MOT metrics against the generator's object identities
(``seq`` is the frame's index in the clip), and the per-minute counts the pipeline wrote to
Redis are compared with the counts of the truth trajectories under the same zone/line rules.

Bounds (measured, see README "Tracking"): IDF1 >= 0.95 on the crossing scene (0.992 with the
bundled detector retrained on crowded scenes, 2026-11-27; 0.96 with the one before), >= 0.94
with the pillar (0.985; 0.93 before), >= 0.9 for objects that leave and come back (the issue's
goal; 0.958, re-identification by appearance on for that stream only, ``appearance_s`` 3, off
by default; 0.76 with the detector before, which merged overlapping cars into one box and
missed people in front of cars).  ``VF_TRUTH_APPEARANCE=all`` turns appearance on for every
stream and ``VF_TRUTH_SEEDS=401,402`` adds a run per seed (a scene of each kind), which only
prints its figures (to measure; the bounds are those of the test's scenes).  Counts: the
truth counts every object, also one crossing while hidden behind another or one the
detector misses: off by at most 1 per 100 rounded up, the issue's goal (1 of the 82 checked
here; measured 0 of 82 in three runs with ``infer_unseen_s`` 1, which infers crossings no
track saw; 2 of 82 before it, both a person's line crossings on the reenter scene that the
detector missed, so a broken inference fails this; 6 of 82 with the detector before),
checked over the lines of every scene and the zone of the first two (a returning object
that is not re-identified is one object to the truth but two tracks, so its zone counts
differ).  The counts in Redis are all the pipeline wrote, so the clip must be read once:
the server streams it once per session, and the stream's reconnect after its end is put off
(20 s backoff) past the pipeline's stop (a run on a loaded machine once failed with counts
off by 26: a stream that ended first reconnected and counted a second pass while another
was still finishing).
It also prints how far the counts lie outside the band between the truth's counts of
objects at least half visible at their events and its full counts (``fair_count_diff``:
an event of a hidden object neither owed nor held against the pipeline; measuring only, the
bound is on the full counts).
``scripts/tracking_mutations.sh`` breaks the ids and the line direction on
purpose and shows this test failing.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, running
from visionflow.scenes.clips import load_truth, write_clip
from visionflow.scenes.generator import SceneSpec
from visionflow.scenes.tracking_metrics import (
    Predicted,
    fair_count_diff,
    score_tracks,
    truth_counts,
)
from visionflow.schema import events_key
from visionflow.tracking.config import TrackingConfig

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines
SECONDS = 15.0
FPS = 10
W, H = 640, 360
SCENES = {"crossing": 501, "occlusion": 502, "reenter": 503}  # kind: held-out seed
#: VF_TRUTH_SEEDS=401,402: also one run per seed with a scene of each kind (for measuring)
MORE = [
    {kind: int(seed) for kind in SCENES}
    for seed in os.environ.get("VF_TRUTH_SEEDS", "").split(",")
    if seed.strip()
]
TRACKING = {
    "zones": [{"id": "yard", "points": [[0.6, 0.3], [0.85, 0.3], [0.85, 1], [0.6, 1]]}],
    "lines": [{"id": "west", "start": [0.3, 0], "end": [0.3, 1]}],
    "infer_unseen_s": 1.0,  # crossings of objects hidden (or missed) as they crossed
}
REID = {"appearance_s": 3.0}  # on where objects come back (off by default)
#: VF_TRUTH_APPEARANCE=all: every stream re-identifies by appearance (for measuring it)
ALL = os.environ.get("VF_TRUTH_APPEARANCE") == "all"


def tracking_of(kind: str) -> dict[str, object]:
    return {**TRACKING, **REID} if kind == "reenter" or ALL else TRACKING


MIN_IDF1 = {"crossing": 0.95, "occlusion": 0.94, "reenter": 0.9}
MAX_MISCOUNT = 0.01  # of the truth's crossings and zone entries/exits (the goal)


def clip(folder: Path, kind: str, seed: int) -> Path:
    path = folder / f"track-{kind}-{W}x{H}-{SECONDS}s-{FPS}fps-s{seed}.mp4"
    if not path.is_file():
        write_clip(SceneSpec(W, H, fps=FPS, seed=seed, kind=kind), path, SECONDS)  # type: ignore[arg-type]
    return path


def counts_in_redis(client, prefix: str, stream_id: str) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for key in client.scan_iter(f"{prefix}:counts:*"):
        for field, n in client.hgetall(key).items():
            sid, label, metric = field.split("|")
            if sid == stream_id and metric != "tracks":
                out[(label, metric)] += int(n)
    return out


@pytest.mark.parametrize(
    "scenes", [SCENES, *MORE], ids=lambda s: "-".join(str(v) for v in dict.fromkeys(s.values()))
)
def test_tracks_and_counts_match_the_truth(
    scenes, rtsp, clip_dir, redis_server, redis_client, key_prefix
):
    clips = {kind: clip(clip_dir, kind, seed) for kind, seed in scenes.items()}
    server = rtsp({kind: f"file:{path}" for kind, path in clips.items()})
    n_frames = int(SECONDS * FPS)
    cfg = config(
        [{"id": k, "url": server.url(k), "tracking": tracking_of(k)} for k in scenes],
        redis_server,
        key_prefix,
        batching={"max_batch": 8, "max_delay_ms": 20, "buffer_per_stream": 64},
        workers={"slots_per_stream": 64},
        source={"backoff_initial_s": 20, "backoff_max_s": 20},  # one pass of each clip
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: all(
                any(e.seq >= n_frames - 2 for e in entries(redis_client, key_prefix, k))
                for k in scenes
            ),
            SECONDS + 40,
            lambda: f"clips not fully processed: {pipeline.status().streams}",
        )
    tracking = TrackingConfig.model_validate(TRACKING)
    report, idf1, total_diff, total_crossings, total_fair = {}, {}, 0, 0, 0
    every_off = every_count = 0  # also the zones on reenter (not checked: see above)
    for kind in scenes:
        rows = [e for e in entries(redis_client, key_prefix, kind) if e.seq < n_frames]
        truth = load_truth(clips[kind])
        assert len(rows) >= 0.95 * n_frames, f"{kind}: {len(rows)} of {n_frames} frames"
        assert all("track_id" in d for e in rows for d in e.detections if d["score"] >= 0.6)
        score = score_tracks(
            (
                truth[e.seq],
                [
                    Predicted(d["track_id"], d["class_id"], tuple(d["box"]))
                    for d in e.detections
                    if d.get("track_id") is not None
                ],
            )
            for e in rows
        )
        frames = [(e.seq, e.capture_ts, truth[e.seq]) for e in rows]
        expected = truth_counts(frames, tracking, W, H, FPS)
        visible = truth_counts(frames, tracking, W, H, FPS, visible_only=True)
        got = counts_in_redis(redis_client, key_prefix, kind)
        events = redis_client.xlen(events_key(key_prefix, kind))
        report[kind] = (score.as_dict(), dict(expected), dict(got), events)
        idf1[kind] = round(score.idf1, 4)
        lines = {k for k in expected | got if k[1].startswith("line:")}
        zones = {k for k in expected | got if k[1].startswith("zone:")}
        checked = lines | (zones if kind != "reenter" else set())  # see above
        total_diff += sum(abs(expected[k] - got[k]) for k in checked)
        total_crossings += sum(expected[k] for k in checked)
        total_fair += fair_count_diff(expected, visible, got, checked)
        every_off += sum(abs(expected[k] - got[k]) for k in lines | zones)
        every_count += sum(expected[k] for k in lines | zones)
        assert sum(expected[k] for k in lines) >= 5, f"{kind}: too few crossings to check"
    print("tracking truth:", report, f"counts off by {total_diff} of {total_crossings}")
    print(
        f"tracking truth {scenes}: IDF1 {idf1}, counts off by {total_diff} of "
        f"{total_crossings} (every zone and line: {every_off} of {every_count}; events of "
        f"objects less than half visible neither owed nor held against: {total_fair})"
    )
    if scenes is not SCENES:
        return  # VF_TRUTH_SEEDS: measuring (the bounds below are those of the test's scenes)
    for kind, (score_dict, *_) in report.items():
        assert score_dict["idf1"] >= MIN_IDF1[kind], f"{kind}: {report[kind]}"
    allowed = max(1, math.ceil(total_crossings * MAX_MISCOUNT))
    assert total_diff <= allowed, f"counts differ by {total_diff} (> {allowed}): {report}"
