"""tests/mp4_codec.py: the test RTSP server's codec sniffing reads the box tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mp4_codec import is_hevc, sample_entries
from visionflow.scenes.clips import write_clip
from visionflow.scenes.generator import SceneSpec


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_the_sample_entry_names_the_codec(tmp_path: Path, codec: str) -> None:
    path = tmp_path / f"{codec}.mp4"
    write_clip(SceneSpec(320, 240, fps=10, seed=3), path, 0.5, codec)  # type: ignore[arg-type]
    entries = list(sample_entries(path.read_bytes()))
    assert entries == ([b"avc1"] if codec == "h264" else [b"hev1"])
    assert is_hevc(str(path)) == (codec == "hevc")


def test_hvc1_inside_the_coded_frames_does_not_make_an_h264_clip_hevc(tmp_path: Path) -> None:
    path = tmp_path / "h264.mp4"
    write_clip(SceneSpec(320, 240, fps=10, seed=3), path, 0.5, "h264")
    data = bytearray(path.read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + 100 : mdat + 104] = b"hvc1"  # as the seed-801 occlusion clip's frames held
    path.write_bytes(bytes(data))
    assert b"hvc1" in path.read_bytes() and not is_hevc(str(path))


def test_a_file_with_no_sample_entry_is_an_error_not_h264(tmp_path: Path) -> None:
    path = tmp_path / "cut.mp4"
    write_clip(SceneSpec(320, 240, fps=10, seed=3), path, 0.5, "h264")
    data = path.read_bytes()
    path.write_bytes(data[: data.find(b"stsd")])  # cut before the sample entries
    with pytest.raises(ValueError, match="no sample entry"):
        is_hevc(str(path))
