"""Graph rewrites that make an ``onnx2torch`` module cheaper to run, without changing what it
computes (used by the ``torch-cuda`` backend).

ONNX before opset 24 has no SiLU: exporters write ``Mul(x, Sigmoid(x))``, which onnx2torch
turns into two modules and PyTorch into two elementwise kernels, each reading and writing a
whole activation tensor.  :func:`fuse_silu` rewrites the pair as one ``silu`` call: one kernel,
one read and one write.  On a YOLO-style network, where every convolution is followed by a
SiLU, that is most of the elementwise memory traffic.
"""

from __future__ import annotations

import operator
from typing import Any


def _submodule(module: Any, node: Any) -> Any:
    return module.get_submodule(node.target) if node.op == "call_module" else None


def _is_sigmoid_of(module: Any, node: Any, x: Any) -> bool:
    """Whether ``node`` computes ``sigmoid(x)`` (module or function form)."""
    import torch

    if getattr(node, "op", None) not in ("call_module", "call_function"):
        return False
    if tuple(node.args) != (x,) or node.kwargs:
        return False
    if node.op == "call_module":
        return isinstance(_submodule(module, node), torch.nn.Sigmoid)
    return node.target in (torch.sigmoid, torch.nn.functional.sigmoid)


def _is_plain_mul(module: Any, node: Any) -> bool:
    """Whether ``node`` is an elementwise product of its two arguments (onnx2torch's ``Mul``
    module without the old-style broadcast, ``torch.mul`` or ``*``)."""
    import torch

    if len(node.args) != 2 or node.kwargs:
        return False
    if node.op == "call_module":
        sub = _submodule(module, node)
        return getattr(sub, "math_op_function", None) is torch.mul and (
            getattr(sub, "broadcast", None) != 1
        )
    return node.op == "call_function" and node.target in (torch.mul, operator.mul)


def fuse_silu(module: Any) -> int:
    """Rewrite every ``x * sigmoid(x)`` of an fx ``GraphModule`` as ``silu(x)``, in place.

    A sigmoid still read elsewhere (a class score, say) is kept for that reader.  Matched:
    the module and function forms (``nn.Sigmoid``/``torch.sigmoid`` times onnx2torch's ``Mul``,
    ``torch.mul`` or ``*``), not the method forms (``x.sigmoid()``), which onnx2torch does not
    emit.  When anything is fused, dead nodes anywhere in the graph are removed too.  Returns
    how many products were rewritten.
    """
    import torch

    graph = module.graph
    fused = 0
    for node in list(graph.nodes):
        if not _is_plain_mul(module, node):
            continue
        first, second = node.args
        x = first if _is_sigmoid_of(module, second, first) else None
        if x is None and _is_sigmoid_of(module, first, second):
            x = second
        if x is None:
            continue
        with graph.inserting_before(node):
            silu = graph.call_function(torch.nn.functional.silu, (x,))
        node.replace_all_uses_with(silu)
        graph.erase_node(node)
        fused += 1
    if fused:
        graph.eliminate_dead_code()
        module.delete_all_unused_submodules()
        module.recompile()
    return fused
