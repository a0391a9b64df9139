"""Synthetic camera scenes with ground truth (used by the demo, tests and benchmarks)."""

from visionflow.scenes.generator import CLASSES, SceneGenerator, SceneSpec, TruthBox

__all__ = ["CLASSES", "SceneGenerator", "SceneSpec", "TruthBox"]
