"""The NVDEC source: colour conversion and letterbox anywhere torch is, decode on a GPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from visionflow.config import SourceConfig
from visionflow.pipeline.letterbox import letterbox_geometry, letterbox_image
from visionflow.scenes.generator import SceneGenerator, SceneSpec
from visionflow.streams.config import StreamConfig


def test_nv12_letterbox_matches_the_cpu_path():
    torch = pytest.importorskip("torch")
    av = pytest.importorskip("av")
    from visionflow.streams.nvdec import gpu_letterbox

    image, _ = SceneGenerator(SceneSpec(640, 360, seed=3), horizon_s=20).render(100)
    nv12 = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="nv12")
    expected, lb = letterbox_image(nv12.to_ndarray(format="rgb24"), 320, 320)
    got = gpu_letterbox(torch.from_numpy(nv12.to_ndarray()), lb).numpy()
    assert got.shape == expected.shape == (320, 320, 3)
    assert (got[: lb.pad_y] == 114).all()
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.mean() < 3 and np.percentile(diff, 99) < 20, (diff.mean(), np.percentile(diff, 99))


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", ["nvdec", "dali"])
def test_gpu_decoded_frames_match_pyav_frames(make_clip, decoder):
    from visionflow.workers.ingest import make_source

    clip = make_clip(640, 360, 2.0)
    stream = StreamConfig(id="c", url=str(clip), realtime=False)
    outs = []
    for name in ("cpu", decoder):
        source = make_source(
            stream, SourceConfig(allowed_schemes=["file"]), threading.Event(), name
        )
        source.target_size = (320, 320)
        source.open()
        frames = []
        try:
            for decoded in source.frames():
                canvas = np.empty((320, 320, 3), np.uint8)
                source.write_letterboxed(decoded, canvas, letterbox_geometry(640, 360, 320, 320))
                frames.append((decoded.pts, canvas))
        except Exception as exc:  # end of file
            assert "end of file" in str(exc)
        finally:
            source.close()
        outs.append(frames)
    cpu, gpu = outs
    assert len(cpu) == len(gpu) == 60
    for (pts_c, a), (pts_g, b) in zip(cpu, gpu, strict=True):
        assert pts_c == pytest.approx(pts_g)
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 4


@pytest.mark.parametrize("decoder", ["nvdec", "dali"])
def test_a_missing_gpu_decoder_library_fails_the_stream_for_good(make_clip, decoder):
    import importlib.util

    from visionflow.errors import SourceOpenError
    from visionflow.workers.ingest import make_source

    needed = {"nvdec": "PyNvVideoCodec", "dali": "nvidia.dali"}[decoder]
    try:
        present = importlib.util.find_spec(needed) is not None
    except ModuleNotFoundError:  # the parent package ("nvidia") is missing too
        present = False
    if present and importlib.util.find_spec("torch") is not None:
        pytest.skip(f"{needed} and torch are installed here")
    stream = StreamConfig(id="c", url=str(make_clip(320, 180, 1.0)), realtime=False)
    source = make_source(stream, SourceConfig(allowed_schemes=["file"]), threading.Event(), decoder)
    with pytest.raises(SourceOpenError, match=f"decode '{decoder}' needs") as caught:
        source.open()
    assert caught.value.permanent
