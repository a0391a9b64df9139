"""Encoding synthetic scenes to video files, with a truth index by frame number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import av

from visionflow.scenes.generator import SceneGenerator, SceneSpec, TruthBox

Codec = Literal["h264", "hevc"]
_ENCODERS = {"h264": "libx264", "hevc": "libx265"}


def write_clip(
    spec: SceneSpec,
    path: str | Path,
    seconds: float,
    codec: Codec = "h264",
    crf: int = 23,
    gop: int | None = None,
) -> Path:
    """Render ``seconds`` of the scene into ``path`` (mp4) and ``path`` + ``.truth.json``.

    The truth file maps every frame number to its boxes; frame ``n`` of the file is frame
    ``n`` of the generator.  No B-frames, so decode order is display order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = SceneGenerator(spec, horizon_s=seconds + 1)
    count = generator.frame_count(seconds)
    truth: dict[str, list[dict[str, object]]] = {}
    tmp = path.with_suffix(".partial" + path.suffix)
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(_ENCODERS[codec], rate=round(spec.fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = spec.width, spec.height
        stream.pix_fmt = "yuv420p"
        keyint = gop or round(spec.fps)
        if codec == "h264":
            stream.options = {"preset": "ultrafast", "crf": str(crf), "bf": "0", "g": str(keyint)}
        else:
            stream.options = {
                "preset": "ultrafast",
                "crf": str(crf),
                "x265-params": f"bframes=0:keyint={keyint}:log-level=error",
            }
        for index in range(count):
            image, boxes = generator.render(index)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
            truth[str(index)] = [_box_json(b) for b in boxes]
        container.mux(stream.encode(None))
    tmp.replace(path)
    meta = {"spec": spec.__dict__, "codec": codec, "frames": count, "truth": truth}
    truth_path(path).write_text(json.dumps(meta))
    return path


def truth_path(clip: str | Path) -> Path:
    return Path(str(clip) + ".truth.json")


def load_truth(clip: str | Path) -> dict[int, list[TruthBox]]:
    """Read the truth index written beside a clip."""
    meta = json.loads(truth_path(clip).read_text())
    return {int(k): [TruthBox(**b) for b in v] for k, v in meta["truth"].items()}


def _box_json(box: TruthBox) -> dict[str, object]:
    return dict(box.__dict__)
