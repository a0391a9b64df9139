"""The discriminated union of every backend's config (key: ``backend``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _EngineBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxRuntimeConfig(_EngineBase):
    """ONNX Runtime on the CPU (or any execution provider it was built with)."""

    backend: Literal["onnxruntime"] = Field(
        default="onnxruntime", description="Inference backend: ONNX Runtime."
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Threads inside one operator; 0: ONNX Runtime's choice.",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="Execution providers in order of preference.",
    )


class TensorRTConfig(_EngineBase):
    """NVIDIA TensorRT engines built from the ONNX model (needs the tensorrt package)."""

    backend: Literal["tensorrt"] = Field(
        default="tensorrt", description="Inference backend: TensorRT."
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp16", description="Engine precision; int8 needs calibration frames."
    )
    engine_dir: str = Field(
        default="~/.cache/visionflow/engines",
        description="Engine repository; engines are keyed by model, GPU, TensorRT version, "
        "precision and profile and rebuilt on mismatch.",
    )
    workspace_mb: int = Field(default=2048, ge=64, description="Builder workspace limit (MiB).")
    contexts: int = Field(
        default=2, ge=1, le=16, description="Execution contexts, each on its own CUDA stream."
    )
    opt_batch: int | None = Field(
        default=None, ge=1, description="Optimisation-profile 'opt' batch; empty: max_batch."
    )
    calibration_frames: int = Field(
        default=256, ge=8, description="INT8: frames taken from the streams for calibration."
    )
    calibration_cache: str | None = Field(
        default=None, description="INT8: calibration cache file; empty: beside the engine."
    )
    calibration_images: str | None = Field(
        default=None,
        description="INT8: letterboxed frames from the configured streams (.npy, written by "
        "'visionflow calibrate -c CONFIG'), read when no calibration cache exists yet; "
        "empty: calibration.npy in engine_dir.",
    )
    nms_in_engine: bool = Field(
        default=True,
        description="Run NMS inside the engine (TensorRT's INMSLayer) so only kept detections "
        "are copied to the host; false: copy the raw output and decode on the CPU.",
    )
    nms_max_per_class: int = Field(
        default=300, ge=1, le=5000, description="In-engine NMS: most boxes kept per class."
    )
    device: int = Field(default=0, ge=0, description="CUDA device ordinal inside the worker.")


class TorchCudaConfig(_EngineBase):
    """PyTorch on CUDA running the same ONNX model (converted in memory), fp16, CUDA graphs."""

    backend: Literal["torch-cuda"] = Field(
        default="torch-cuda", description="Inference backend: PyTorch on a CUDA GPU."
    )
    precision: Literal["fp32", "fp16"] = Field(default="fp16", description="Compute precision.")
    cuda_graphs: bool = Field(
        default=True,
        description="Capture one CUDA graph per batch bucket (powers of two up to max_batch) "
        "at start and replay it; if a model cannot be captured the worker logs why and runs "
        "eagerly.",
    )
    device: int = Field(default=0, ge=0, description="CUDA device ordinal inside the worker.")


EngineConfig = OnnxRuntimeConfig | TensorRTConfig | TorchCudaConfig
