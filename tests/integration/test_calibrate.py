"""``visionflow calibrate``: INT8 calibration frames from the configured streams (real RTSP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_cli import visionflow
from visionflow.pipeline.letterbox import PAD_VALUE, letterbox_geometry

pytestmark = pytest.mark.integration


def test_calibrate_takes_letterboxed_frames_from_every_readable_stream(
    rtsp, make_clip, tmp_path: Path
):
    clip = make_clip(640, 360, 4.0)
    server = rtsp({"scene": f"file:{clip}", "ball": "test:640x360@30"})
    out = tmp_path / "engines" / "calibration.npy"
    config = tmp_path / "site.yaml"
    config.write_text(
        "engine: {backend: tensorrt, engine_dir: " + str(tmp_path / "engines") + "}\n"
        "source: {open_timeout_s: 3, read_timeout_s: 3}\n"
        "streams:\n"
        "  - id: broken\n"
        "    url: rtsp://user:secret@127.0.0.1:9/none\n"
        f"  - id: scene\n    url: {server.url('scene')}\n"
        f"  - id: ball\n    url: {server.url('ball')}\n"
    )
    result = visionflow("calibrate", "-c", str(config), "--frames", "8", "--every", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout, result.stdout
    assert "skipping broken" in result.stderr, result.stderr[-2000:]
    assert "secret" not in result.stdout + result.stderr

    images = np.load(out)
    assert images.shape == (8, 320, 320, 3) and images.dtype == np.uint8
    lb = letterbox_geometry(640, 360, 320, 320)
    assert (images[:, : lb.pad_y] == PAD_VALUE).all(), "letterbox padding missing"
    scene, ball = images[:4], images[4:]  # the broken stream's share went to the other two
    assert not np.array_equal(scene[0], scene[3]), "frames of one stream should be apart in time"
    assert abs(float(scene.mean()) - float(ball.mean())) > 5, "both streams should contribute"


def test_calibrate_without_tensorrt_needs_an_out_path(tmp_path: Path):
    config = tmp_path / "site.yaml"
    config.write_text("streams:\n  - id: a\n    url: rtsp://127.0.0.1:9/x\n")
    result = visionflow("calibrate", "-c", str(config))
    assert result.returncode == 2 and "give --out" in result.stderr, result


def test_calibrate_exits_1_when_no_stream_gives_a_frame(tmp_path: Path):
    config = tmp_path / "site.yaml"
    config.write_text(
        "engine: {backend: tensorrt, engine_dir: " + str(tmp_path) + "}\n"
        "source: {open_timeout_s: 2}\n"
        "streams:\n  - id: a\n    url: rtsp://user:secret@127.0.0.1:9/x\n"
    )
    result = visionflow("calibrate", "-c", str(config), "--frames", "4")
    assert result.returncode == 1 and "no configured stream gave a frame" in result.stderr, result
    assert "secret" not in result.stdout + result.stderr
    assert not (tmp_path / "calibration.npy").exists()
