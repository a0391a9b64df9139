"""SiLU fusion of converted ONNX models (needs torch and onnx2torch: runs where they are
installed, the GPU machine; skipped elsewhere)."""

from __future__ import annotations

from typing import Any

import pytest

from visionflow.models import DEMO_MODEL

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

from visionflow.engines.torch_cuda import load_torch_module  # noqa: E402
from visionflow.engines.torch_fusion import fuse_silu  # noqa: E402


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (list, tuple)) else out


def _count(module: Any, kind: type) -> int:
    return sum(
        1
        for n in module.graph.nodes
        if n.op == "call_module" and isinstance(module.get_submodule(n.target), kind)
    )


def _silus(module: Any) -> int:
    return sum(1 for n in module.graph.nodes if n.target is torch.nn.functional.silu)


def test_every_sigmoid_product_of_the_demo_model_becomes_one_silu_with_the_same_output():
    module = load_torch_module(DEMO_MODEL, batch=2).eval()
    x = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = _first(module(x)).clone()
    sigmoids = _count(module, torch.nn.Sigmoid)
    fused = fuse_silu(module)
    assert fused >= 20, f"only {fused} of {sigmoids} sigmoids fused"
    assert _silus(module) == fused
    assert _count(module, torch.nn.Sigmoid) == sigmoids - fused  # the rest read elsewhere
    with torch.inference_mode():
        after = _first(module(x))
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    assert fuse_silu(module) == 0  # nothing left to fuse


class _Mixed(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: Any, y: Any) -> Any:
        s = torch.sigmoid(x)
        kept = s + 1.0  # this sigmoid is also read here: it must survive
        return x * s, torch.sigmoid(y) * x, kept, y * torch.sigmoid(y)


def test_only_products_of_a_value_and_its_own_sigmoid_are_fused():
    module = torch.fx.symbolic_trace(_Mixed())
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    expected = module(x, y)
    assert fuse_silu(module) == 2  # x * sigmoid(x) and y * sigmoid(y), not sigmoid(y) * x
    sigmoids = [n for n in module.graph.nodes if n.target is torch.sigmoid]
    assert len(sigmoids) == 2  # sigmoid(x) for `kept`, sigmoid(y) for the cross product
    for want, got in zip(expected, module(x, y), strict=True):
        assert torch.allclose(want, got, atol=1e-6)
