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


class _Plane:
    def __init__(self, shape: tuple[int, ...], ptr: int, pitch: int | None = None) -> None:
        strides = None if pitch is None else (pitch, *([1] * (len(shape) - 1)))
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": "|u1", "data": (ptr, False), "strides": strides,
            "version": 3,
        }  # fmt: skip


class _Frame:
    """Stands in for PyNvVideoCodec's decoded frame (its planes are asked for only there)."""

    def __init__(self, planes: list[_Plane]) -> None:
        self._planes = planes

    def cuda(self) -> list[_Plane]:
        return self._planes


_Frame.__module__ = "_PyNvVideoCodec"  # as the real class reports it


def test_nv12_planes_from_one_array_or_from_two_planes():
    from visionflow.streams.nvdec import nv12_planes

    # one [rows * 3/2, W] array, padded height (368 rows for 360) and a pitch past the width
    whole = _Plane((552, 640), 0x10000, pitch=768)
    assert nv12_planes(whole) == (0x10000, 0x10000 + 368 * 768, 768, 640, 368)
    # two planes: luma, then interleaved chroma at its own address
    two = _Frame([_Plane((360, 640), 0x20000, 1024), _Plane((180, 320, 2), 0x90000, 1024)])
    assert nv12_planes(two) == (0x20000, 0x90000, 1024, 640, 360)
    # what the fast path cannot read falls back (None): not uint8, one plane, no interface
    rgb = _Plane((360, 640, 3), 0x1000)
    assert nv12_planes(rgb) is None
    assert nv12_planes(_Frame([_Plane((360, 640), 0x1000)])) is None
    assert nv12_planes(object()) is None
    # planes of different pitches cannot go through the one-pitch kernel
    skew = _Frame([_Plane((360, 640), 0x20000, 1024), _Plane((180, 320, 2), 0x90000, 768)])
    assert nv12_planes(skew) is None


@pytest.mark.gpu
def test_frames_letterboxed_from_their_planes_equal_the_dlpack_path_and_the_decoder_is_kept(
    make_clip,
):
    import torch

    from visionflow.streams.nvdec import nv12_planes, write_device_image
    from visionflow.workers.ingest import make_source

    clip = make_clip(640, 360, 1.0)
    stream = StreamConfig(id="c", url=str(clip), realtime=False)
    source = make_source(stream, SourceConfig(allowed_schemes=["file"]), threading.Event(), "nvdec")
    lb = letterbox_geometry(640, 360, 320, 320)
    decoders, counts, fast_path = [], [], []
    for _ in range(2):  # the second pass reopens the file, as a looping stream does
        source.open()
        n = 0
        try:
            for decoded in source.frames():
                fast_path.append(nv12_planes(decoded.frame) is not None)
                fast = torch.empty((320, 320, 3), dtype=torch.uint8, device="cuda")
                source.write_letterboxed(decoded, fast, lb)
                slow = torch.empty_like(fast)
                write_device_image(torch.from_dlpack(decoded.frame), slow, lb)
                torch.cuda.synchronize()
                assert torch.equal(fast, slow), f"frame {n}: planes path differs from dlpack"
                n += 1
        except Exception as exc:  # end of file
            assert "end of file" in str(exc)
        finally:
            source.close()
        decoders.append(source._decoder)
        counts.append(n)
    assert counts == [30, 30]
    assert all(fast_path), "decoded frames did not describe their planes: fast path unused"
    assert decoders[0] is decoders[1], "the decoder was re-created on reopening"
