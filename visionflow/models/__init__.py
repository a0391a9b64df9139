"""The bundled demo model and how a configured model is resolved."""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionflow.config import BUILTIN_DEMO_MODEL, AppConfig, ModelConfig
from visionflow.errors import ConfigError, ModelError
from visionflow.pipeline.frames import Size
from visionflow.pipeline.layouts import OutputLayout, anchors_num_classes, detect_layout

MODELS_DIR = Path(__file__).resolve().parent
DEMO_MODEL = MODELS_DIR / "demo-detector.onnx"


@dataclass(frozen=True)
class ResolvedModel:
    """A model file with what the pipeline needs to know about it."""

    path: Path
    model_id: str
    class_names: tuple[str, ...]
    input_size: Size
    num_classes: int
    conf_threshold: float
    #: how the output is read (``anchors`` [N, 4+C, A] or ``end2end`` [N, K, 6])
    layout: OutputLayout = OutputLayout.ANCHORS


@dataclass(frozen=True)
class _ModelIO:
    """What the ONNX file says about itself."""

    input_size: tuple[int, int] | None  # (width, height); None when dynamic
    output_shape: tuple[object, ...]  # probed when its per-image dims are symbolic
    metadata_names: list[str] | None  # Ultralytics' ``names`` metadata entry


def _sidecar(path: Path) -> dict[str, object]:
    side = path.with_suffix(".json")
    if side.is_file():
        data = json.loads(side.read_text())
        return data if isinstance(data, dict) else {}
    return {}


def _metadata_names(metadata: dict[str, str]) -> list[str] | None:
    """Class names from Ultralytics' ONNX metadata (``names``: ``"{0: 'person', ...}"``)."""
    raw = metadata.get("names")
    if not raw:
        return None
    try:
        value = ast.literal_eval(raw)
        if isinstance(value, dict):
            return [str(value[k]) for k in sorted(value)]  # by class id
    except (ValueError, SyntaxError, TypeError):  # not a literal, or ids not comparable
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def _read_io(path: Path) -> _ModelIO:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable ONNX model: {exc}") from None
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or shape[1] != 3:
        raise ModelError(f"{path}: expected input [N, 3, H, W], got {shape}")
    size = (shape[3], shape[2]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
    out: list[object] = list(session.get_outputs()[0].shape)
    if len(out) == 3 and not all(isinstance(d, int) for d in out[1:]):
        out = list(_probe_output(session, size or (640, 640)))  # symbolic dims: run it once
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return _ModelIO(size, tuple(out), _metadata_names(metadata))


def _probe_output(session: Any, size: tuple[int, int]) -> list[int]:
    import numpy as np

    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    dummy = np.zeros((1, 3, size[1], size[0]), dtype)
    return list(session.run(None, {inp.name: dummy})[0].shape)


def _layout(path: Path, shape: tuple[object, ...], override: str) -> OutputLayout:
    try:
        return detect_layout(shape, override)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


def _class_names(
    config: ModelConfig, side: dict[str, object], io: _ModelIO, layout: OutputLayout
) -> tuple[str, ...]:
    """Names from config, sidecar or ONNX metadata, checked against an anchors output."""
    sidecar = side.get("classes")
    sources: list[tuple[str, list[str] | None]] = [
        ("model.class_names", config.class_names),
        (
            "the model's sidecar 'classes'",
            list(map(str, sidecar)) if isinstance(sidecar, list) else None,
        ),
        ("the model's ONNX metadata 'names'", io.metadata_names),
    ]
    source, names = next(((s, n) for s, n in sources if n), ("", None))
    if layout is OutputLayout.END_TO_END:
        if not names:
            raise ConfigError(
                f"model.class_names: the model's end2end output {list(io.output_shape)} does "
                "not say how many classes it has and neither model.class_names, a .json "
                "sidecar nor the ONNX metadata 'names' lists them"
            )
        return tuple(names)
    num_classes = anchors_num_classes(io.output_shape)
    if not names:
        return tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ConfigError(
            f"{source} has {len(names)} names but the model has {num_classes} classes "
            f"(output {list(io.output_shape)})"
        )
    return tuple(names)


def resolve_model(config: AppConfig) -> ResolvedModel:
    """Locate the model, read its input size, output layout and classes, derive its id."""
    model = config.model
    path = DEMO_MODEL if model.path == BUILTIN_DEMO_MODEL else config.resolve(model.path)
    if not path.is_file():
        raise ConfigError(f"model.path: model file not found: {path}")
    io = _read_io(path)
    layout = _layout(path, io.output_shape, model.output_layout)
    size = io.input_size
    side = _sidecar(path)
    if model.input_size is not None:
        if size is not None and tuple(model.input_size) != size:
            raise ConfigError(
                f"model.input_size {list(model.input_size)} does not match the model's fixed "
                f"input {list(size)}"
            )
        size = tuple(model.input_size)  # type: ignore[assignment]
    size = size or (640, 640)
    names = _class_names(model, side, io, layout)
    threshold = model.conf_threshold or side.get("conf_threshold") or 0.25
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return ResolvedModel(
        path=path,
        model_id=model.model_id or f"{path.stem}-{digest}",
        class_names=names,
        input_size=Size(*size),
        num_classes=len(names),
        conf_threshold=float(threshold),  # type: ignore[arg-type]
        layout=layout,
    )
