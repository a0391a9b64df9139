"""Everything ``visionflow demo`` needs: bundled scenes, their config, a local Redis."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from visionflow.config import AppConfig, parse_config
from visionflow.scenes.clips import write_clip
from visionflow.scenes.generator import SceneSpec

#: (stream id, width, height, codec, seed)
DEMO_SCENES = (
    ("lobby", 640, 360, "h264", 11),
    ("parking", 1280, 720, "h264", 12),
    ("street", 960, 540, "hevc", 13),
    ("gate", 800, 600, "h264", 14),
)
DEMO_SECONDS = 12.0
#: the scenes are 30 fps; analysing 15 frames per second per camera keeps a 2-core laptop free
#: of drops (analysis_fps, not fps_cap: frames it will not use are not letterboxed, and shed
#: before decode where the stream allows)
DEMO_ANALYSIS_FPS = 15.0
#: where the demo's dashboard and API listen (a free port when this one is taken)
DEMO_API_LISTEN = ("127.0.0.1", 8080)

#: every camera tracks; the gate camera also has a zone and a line (events, counts), and
#: counts crossings its detector missed (infer_unseen_s: objects hidden as they crossed)
DEMO_ZONES: dict[str, dict[str, Any]] = {
    "gate": {
        "zones": [
            {
                "id": "yard",
                "points": [[0.05, 0.55], [0.45, 0.55], [0.45, 1], [0.05, 1]],
                "loiter_s": 3.0,
            }
        ],
        "lines": [{"id": "gate", "start": [0.5, 0.2], "end": [0.5, 1]}],
        "infer_unseen_s": 1.0,
    }
}


def cache_dir() -> Path:
    base = os.environ.get("VISIONFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "visionflow"
    )
    return Path(base)


def demo_folder(cache: Path | None = None) -> Path:
    """Where the demo keeps its rendered scenes (under ``cache``, default :func:`cache_dir`)."""
    return (cache or cache_dir()) / "demo"


def demo_clip_path(folder: Path, scene: tuple[str, int, int, str, int]) -> Path:
    """The cached clip of one of :data:`DEMO_SCENES` in ``folder``."""
    stream_id, width, height, codec, seed = scene
    return folder / f"{stream_id}-{width}x{height}-{codec}-s{seed}.mp4"


def demo_clips(folder: Path | None = None) -> list[tuple[str, Path]]:
    """Render the demo scenes once (cached) and return ``(stream id, clip path)``."""
    folder = folder or demo_folder()
    clips = []
    for scene in DEMO_SCENES:
        stream_id, width, height, codec, seed = scene
        path = demo_clip_path(folder, scene)
        if not path.is_file():
            write_clip(SceneSpec(width, height, seed=seed), path, DEMO_SECONDS, codec)  # type: ignore[arg-type]
        clips.append((stream_id, path))
    return clips


def demo_config(redis_url: str | None, clips: list[tuple[str, Path]]) -> AppConfig:
    raw = {
        "streams": [
            {
                "id": sid,
                "url": str(path),
                "loop": True,
                "analysis_fps": DEMO_ANALYSIS_FPS,
                "labels": {"site": "demo"},
                "tracking": DEMO_ZONES.get(sid, {}),
            }
            for sid, path in clips
        ],
        "redis": {"url": redis_url, "key_prefix": "visionflow"},
        "batching": {"max_batch": 8, "max_delay_ms": 20},
        "workers": {"ingest_processes": 2, "inference_workers": 1},
        "source": {"allowed_schemes": ["file"]},  # the demo reads rendered clips
        "api": {"listen": demo_listen()},
    }
    return parse_config(raw, "<demo>")


def demo_listen(host: str = DEMO_API_LISTEN[0], port: int = DEMO_API_LISTEN[1]) -> str:
    """``host:port`` when that port is free, else ``host:0`` (any free port)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return f"{host}:0"
    return f"{host}:{port}"
