"""The bundled demo model and how a configured model is resolved."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionflow.config import BUILTIN_DEMO_MODEL, AppConfig
from visionflow.errors import ConfigError, ModelError
from visionflow.pipeline.frames import Size

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


def _sidecar(path: Path) -> dict[str, object]:
    side = path.with_suffix(".json")
    if side.is_file():
        data = json.loads(side.read_text())
        return data if isinstance(data, dict) else {}
    return {}


def _shapes(path: Path) -> tuple[tuple[int, int] | None, int]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable ONNX model: {exc}") from None
    shape = session.get_inputs()[0].shape
    out = session.get_outputs()[0].shape
    size = (shape[3], shape[2]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
    if len(shape) == 4 and len(out) == 3 and not isinstance(out[1], int):
        out = _probe_output(session, size or (640, 640))  # symbolic dims: run it once
    if len(shape) != 4 or shape[1] != 3 or len(out) != 3 or out[1] <= 4:
        raise ModelError(
            f"{path}: expected input [N,3,H,W] and output [N,4+C,A], got {shape} -> {out}"
        )
    return size, int(out[1]) - 4


def _probe_output(session: Any, size: tuple[int, int]) -> list[int]:
    import numpy as np

    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    dummy = np.zeros((1, 3, size[1], size[0]), dtype)
    return list(session.run(None, {inp.name: dummy})[0].shape)


def resolve_model(config: AppConfig) -> ResolvedModel:
    """Locate the model, read its input size and classes, derive its id."""
    model = config.model
    path = DEMO_MODEL if model.path == BUILTIN_DEMO_MODEL else config.resolve(model.path)
    if not path.is_file():
        raise ConfigError(f"model.path: model file not found: {path}")
    size, num_classes = _shapes(path)
    side = _sidecar(path)
    if model.input_size is not None:
        if size is not None and tuple(model.input_size) != size:
            raise ConfigError(
                f"model.input_size {list(model.input_size)} does not match the model's fixed "
                f"input {list(size)}"
            )
        size = tuple(model.input_size)  # type: ignore[assignment]
    size = size or (640, 640)
    sidecar_names = side.get("classes")
    names: list[str] = list(model.class_names or [])
    if not names and isinstance(sidecar_names, list):
        names = [str(n) for n in sidecar_names]
    names = names or [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(
            f"model.class_names has {len(names)} names but the model has {num_classes} classes"
        )
    threshold = model.conf_threshold or side.get("conf_threshold") or 0.25
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return ResolvedModel(
        path=path,
        model_id=model.model_id or f"{path.stem}-{digest}",
        class_names=tuple(names),
        input_size=Size(*size),
        num_classes=num_classes,
        conf_threshold=float(threshold),  # type: ignore[arg-type]
    )
