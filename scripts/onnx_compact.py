#!/usr/bin/env python3
"""Shrink an fp32 ONNX detector: fp16 initializers + Cast nodes, static output dims.

ONNX Runtime folds the Casts at session start, so inference still runs in fp32; only the file
halves.  Used by train_demo_model.py on its export (the bundled model must stay under 5 MB).
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def compact(path: str, num_outputs: int | None = None, anchors: int | None = None) -> None:
    model = onnx.load(path)
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < 64:
            continue
        array = numpy_helper.to_array(init).astype(np.float16)
        half_name = init.name + "__fp16"
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(array, half_name))
        casts.append(helper.make_node("Cast", [half_name], [init.name], to=TensorProto.FLOAT))
    for node in reversed(casts):
        graph.node.insert(0, node)
    if num_outputs is not None and anchors is not None:
        dims = graph.output[0].type.tensor_type.shape.dim
        dims[1].ClearField("dim_param")
        dims[1].dim_value = num_outputs
        dims[2].ClearField("dim_param")
        dims[2].dim_value = anchors
    onnx.checker.check_model(model)
    onnx.save(model, path)


if __name__ == "__main__":
    compact(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
