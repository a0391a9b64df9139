#!/usr/bin/env python3
"""The torch-cuda engine's forward alone, model variants side by side on one GPU.

    python bench/torch_model.py --out DIR [--work /tmp/vf-gpu-work] [--seconds 5]

The YOLOv8n-architecture model (``scripts/build_yolov8n.py``, random weights, 640x640) as the
``torch-cuda`` backend runs it: fp16, channels-last, CUDA-graph replay, batches of 64 and 16.
Variants, each a fresh engine in this process, timed one after another over ``--seconds``:

* ``unfused``: the onnx2torch conversion as it comes (``fuse_activations: false``,
  ``compile: false``): every SiLU is a sigmoid kernel and a multiply kernel - the baseline;
* ``fused``: the engine's default, ``x * sigmoid(x)`` rewritten as one ``silu``;
* ``fused+compiled``: ``compile: true``, each bucket also through ``torch.compile`` (inductor,
  default mode) before its CUDA graph is captured.

(``torch.backends.cudnn.benchmark`` was tried too and changed nothing: 5,943 vs 5,944 img/s.)

Prints a table and writes JSON (images/s per variant and batch, ratio to ``unfused`` of the
same batch) with the machine and date.  The random weights make outputs useless for comparing
results: that each variant computes what ONNX Runtime does is tested on the demo model
(``tests/unit/engines/test_torch_cuda.py``, ``test_torch_fusion.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table, write_result  # noqa: E402

BATCHES = (64, 16)
VARIANTS = (("unfused", False, False), ("fused", True, False), ("fused+compiled", True, True))


def _rate(torch: Any, run: Any, batch: int, seconds: float) -> float:
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            run()
        torch.cuda.synchronize()
        done += 10 * batch
    return done / (time.perf_counter() - start)


def _engine_variant(
    torch: Any, model: Path, fuse: bool, compiled: bool, seconds: float
) -> dict[int, Any]:
    from visionflow.engines.torch_cuda import TorchCudaConfig, TorchCudaEngine

    config = TorchCudaConfig(fuse_activations=fuse, compile=compiled)
    started = time.perf_counter()
    engine = TorchCudaEngine(config, model, max(BATCHES))
    built = f"built in {time.perf_counter() - started:.0f} s"
    slot = engine._ring.slots[0]
    out: dict[int, Any] = {}
    for batch in BATCHES:
        bucket = slot.buckets[batch]
        torch.manual_seed(0)
        bucket.static_in.copy_(torch.rand_like(bucket.static_in))
        rate = _rate(torch, lambda b=batch: engine._forward_static(slot, b), batch, seconds)
        failed = engine.compile_error and f"NOT COMPILED: {engine.compile_error}"
        out[batch] = (rate, engine.graph_error or failed or built)
    engine.close()
    return out


def _progress(name: str, variants: dict[str, dict[int, Any]]) -> None:
    rates = ", ".join(f"b{b}: {r[0]:.0f} img/s" for b, r in variants[name].items())
    print(f"{name}: {rates}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="results folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vf-gpu-work"), help="model cache")
    ap.add_argument("--seconds", type=float, default=5.0, help="timing window per variant")
    args = ap.parse_args(argv)
    import torch

    from bench.gpu_bench import _model

    args.work.mkdir(parents=True, exist_ok=True)
    model = _model(args.work)
    variants: dict[str, dict[int, Any]] = {}
    for name, fuse, compiled in VARIANTS:
        variants[name] = _engine_variant(torch, model, fuse, compiled, args.seconds)
        _progress(name, variants)
    rows = []
    for name, by_batch in variants.items():
        for batch, (rate, note) in by_batch.items():
            base_rate = variants["unfused"][batch][0]
            rows.append(
                {
                    "variant": name,
                    "batch": batch,
                    "img_per_s": round(rate, 1),
                    "ratio": round(rate / base_rate, 3),
                    "note": note or "",
                }
            )
    print(table(rows, ["variant", "batch", "img_per_s", "ratio", "note"]))
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    print(f"dynamo graph breaks: {sum(breaks.values())} {list(breaks)[:5]}")
    payload = {
        "graph_breaks": breaks,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(f"wrote {write_result('torch_model', payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
