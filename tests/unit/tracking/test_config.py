from __future__ import annotations

import pytest

from visionflow.config import parse_config
from visionflow.errors import ConfigError


def load(tracking):
    raw = {"streams": [{"id": "cam1", "url": "rtsp://h/s", "tracking": tracking}]}
    return parse_config(raw, "site.yaml")


def error(tracking) -> str:
    with pytest.raises(ConfigError) as info:
        load(tracking)
    return str(info.value)


def test_tracking_is_off_by_default_and_an_empty_section_turns_it_on():
    raw = {
        "streams": [
            {"id": "a", "url": "rtsp://h/a"},
            {"id": "b", "url": "rtsp://h/b", "tracking": {}},
        ]
    }
    cfg = parse_config(raw, "site.yaml")
    assert cfg.streams[0].tracking is None
    assert cfg.streams[1].tracking is not None and cfg.streams[1].tracking.lost_track_s == 1.0


def test_a_valid_zone_and_line_in_fractions_and_pixels():
    cfg = load(
        {
            "zones": [{"id": "door", "points": [[0, 0.5], [0.5, 0.5], [0.5, 1]], "loiter_s": 5}],
            "lines": [{"id": "gate", "start": [320, 0], "end": [320, 360], "units": "px"}],
        }
    )
    tracking = cfg.streams[0].tracking
    assert (
        tracking is not None and tracking.zones[0].id == "door" and tracking.lines[0].units == "px"
    )


@pytest.mark.parametrize(
    ("tracking", "expected"),
    [
        (
            {"zones": [{"id": "z", "points": [[0, 0], [1.5, 0], [1, 1]]}]},
            "field 'tracking.zones.0' : ",
        ),
        (
            {"zones": [{"id": "z", "points": [[0, 0], [1, 1], [1, 0], [0, 1]]}]},
            "edges 0-1 and 2-3 cross",
        ),
        ({"zones": [{"id": "z", "points": [[0, 0], [0.5, 0.5], [1, 1]]}]}, "has no area"),
        (
            {"zones": [{"id": "z", "points": [[0, 0], [1, 0], [0, 0]]}]},
            "point 2 [0.0, 0.0] repeats",
        ),
        ({"zones": [{"id": "z", "points": [[0, 0], [1, 0]]}]}, "at least 3 items"),
        ({"lines": [{"id": "l", "start": [0.2, 0.2], "end": [0.2, 0.2]}]}, "same point"),
        ({"lines": [{"id": "l", "start": [-1, 0], "end": [5, 5], "units": "px"}]}, "negative"),
        ({"lines": [{"id": "a:b", "start": [0, 0], "end": [1, 1]}]}, "should match pattern"),
        (
            {
                "lines": [
                    {"id": "l", "start": [0, 0], "end": [1, 1]},
                    {"id": "l", "start": [0, 1], "end": [1, 0]},
                ]
            },
            "lines[1]: duplicate line id 'l'",
        ),
        ({"low_thresh": 0.7, "high_thresh": 0.5}, "low_thresh 0.7 is above high_thresh 0.5"),
        (
            {"new_track_thresh": 0.4, "high_thresh": 0.5},
            "new_track_thresh 0.4 is below high_thresh 0.5: only detections scoring at least "
            "high_thresh can start a track",
        ),
        ({"zones": [{"id": "z", "points": [[0, 0], [1, 0], [1, 1]], "colour": "red"}]}, "colour"),
    ],
)
def test_invalid_shapes_are_refused_with_a_precise_message(tracking, expected):
    text = error(tracking)
    assert "site.yaml: stream 'cam1' (streams[0]), field 'tracking" in text
    if expected.startswith("field"):
        assert "point 1 [1.5, 0.0] is outside the frame" in text and "units 'fraction'" in text
    else:
        assert expected in text, text


def test_the_demo_tracks_every_camera_and_has_a_zone_and_a_line_on_one(tmp_path):
    from visionflow.demo import DEMO_SCENES, demo_config

    cfg = demo_config(
        "redis://127.0.0.1:1/0", [(s[0], tmp_path / f"{s[0]}.mp4") for s in DEMO_SCENES]
    )
    assert all(s.tracking is not None for s in cfg.streams)
    zoned = [s.id for s in cfg.streams if s.tracking and s.tracking.zones and s.tracking.lines]
    assert zoned == ["gate"]


def test_an_empty_label_list_means_every_label():
    from visionflow.tracking.analytics import Frame, Seen, StreamAnalytics

    cfg = load(
        {
            "zones": [{"id": "z", "points": [[0, 0], [1, 0], [1, 1], [0, 1]], "labels": []}],
            "lines": [{"id": "l", "start": [0.5, 0], "end": [0.5, 1], "labels": []}],
        }
    )
    tracking = cfg.streams[0].tracking
    assert tracking is not None and tracking.zones[0].labels is None
    analytics = StreamAnalytics(tracking, 640, 480)
    events, _ = analytics.step(Frame(0, 1.0, 0.0, [Seen(1, "dog", (10, 10, 50, 50))], [1]))
    assert [(e.kind, e.zone) for e in events] == [("enter", "z")]


@pytest.mark.parametrize(
    ("tracking", "field"),
    [
        ({"appearance_s": -1}, "appearance_s"),
        ({"appearance_s": 601}, "appearance_s"),
        ({"appearance_dist": 0}, "appearance_dist"),
        ({"appearance_dist": 1.5}, "appearance_dist"),  # the histograms' distance is 0..1
        ({"appearance_gate": 1.2}, "appearance_gate"),
        ({"appearance_size": 0}, "appearance_size"),
        ({"appearance_gate": -0.1}, "appearance_gate"),
        ({"appearance": True}, "appearance"),  # not a field: a typo must not pass silently
    ],
)
def test_invalid_appearance_settings_are_refused(tracking, field):
    assert field in error(tracking)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("appearance_reach", -1, "greater than or equal to 0"),
        ("appearance_reach", 101, "less than or equal to 100"),
        ("infer_unseen_s", -1, "greater than or equal to 0"),
        ("infer_unseen_s", 11, "less than or equal to 10"),
        ("merged_cover", 1.1, "less than or equal to 1"),
        ("merged_hold_s", -0.5, "greater than or equal to 0"),
        ("merged_hold_s", 61, "less than or equal to 60"),
    ],
)
def test_settings_out_of_bounds_are_refused_naming_the_bound(field, value, message):
    text = error({field: value})
    assert field in text and message in text


def test_appearance_settings_reach_the_tracker_and_are_off_by_default():
    default = load({}).streams[0].tracking
    assert default is not None and default.params().appearance_s == 0.0
    cfg = load({"appearance_s": 3, "appearance_dist": 0.15, "appearance_gate": 0.4})
    tracking = cfg.streams[0].tracking
    assert tracking is not None
    params = tracking.params()
    assert (params.appearance_s, params.appearance_dist, params.appearance_gate) == (3, 0.15, 0.4)
    assert (params.appearance_size, params.appearance_reach) == (0.3, 1.0)
    reach = load({"appearance_s": 3, "appearance_reach": 0}).streams[0].tracking
    assert reach is not None and reach.params().appearance_reach == 0.0


def test_infer_unseen_is_off_by_default():
    default = load({}).streams[0].tracking
    assert default is not None and default.infer_unseen_s == 0.0
    tracking = load({"infer_unseen_s": 1.5}).streams[0].tracking
    assert tracking is not None and tracking.infer_unseen_s == 1.5


def test_merged_box_settings_reach_the_tracker_and_are_on_by_default():
    default = load({}).streams[0].tracking
    assert default is not None
    assert (default.params().merged_cover, default.params().merged_hold_s) == (0.75, 0.5)
    off = load({"merged_cover": 0, "merged_hold_s": 2}).streams[0].tracking
    assert off is not None and (off.params().merged_cover, off.params().merged_hold_s) == (0, 2)
