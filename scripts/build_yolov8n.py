#!/usr/bin/env python3
"""Build the public YOLOv8n architecture in plain PyTorch (random weights) and export ONNX.

    python scripts/build_yolov8n.py [--out .cache/models/yolov8n-random.onnx] [--imgsz 640]

For throughput figures at a realistic cost: the same layers as Ultralytics' ``yolov8n.yaml``
(depth 0.33, width 0.25, 80 classes; Conv/C2f/SPPF backbone, PAN neck, decoupled DFL head),
3.16 M parameters and ~8.7 GFLOPs at 640×640, exported with dynamic batch in the standard
output layout ``[N, 84, 8400]``.  No dependency on the ``ultralytics`` package; not
committed (generated on demand and cached).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

DEFAULT_OUT = Path(".cache/models/yolov8n-random.onnx")


class Conv(nn.Sequential):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2, eps=1e-3), nn.SiLU()
        )


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c = c1 // 2
        self.cv1, self.cv2 = Conv(c1, c, 1), Conv(c * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Decoupled head with distribution focal loss decoding, as YOLOv8 exports it."""

    reg_max = 16

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[int, ...]) -> None:
        super().__init__()
        self.nc, self.strides = nc, strides
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
            for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch
        )
        for box, cls, s in zip(self.cv2, self.cv3, strides, strict=True):  # Detect.bias_init
            box[-1].bias.data[:] = 1.0
            cls[-1].bias.data[:nc] = math.log(5 / nc / (640 / s) ** 2)
        self.dfl = nn.Conv2d(self.reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(self.reg_max, dtype=torch.float).view(1, -1, 1, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        n = feats[0].shape[0]
        outs = [
            torch.cat((b(f), c(f)), 1).view(n, 4 * self.reg_max + self.nc, -1)
            for f, b, c in zip(feats, self.cv2, self.cv3, strict=True)
        ]
        x = torch.cat(outs, 2)
        box, cls = x.split((4 * self.reg_max, self.nc), 1)
        a = box.shape[-1]
        dist = self.dfl(box.view(n, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(n, 4, a)
        points, stride = self._anchors(feats)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = points - lt, points + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride
        return torch.cat((dbox, cls.sigmoid()), 1)

    def _anchors(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        points, strides = [], []
        for f, s in zip(feats, self.strides, strict=True):
            h, w = f.shape[2:]
            sy, sx = torch.meshgrid(
                torch.arange(h, device=f.device) + 0.5,
                torch.arange(w, device=f.device) + 0.5,
                indexing="ij",
            )
            points.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(s), device=f.device))
        return torch.cat(points).T.unsqueeze(0), torch.cat(strides).T.unsqueeze(0)


class YOLOv8n(nn.Module):
    def __init__(self, nc: int = 80) -> None:
        super().__init__()
        self.b0, self.b1 = Conv(3, 16, 3, 2), Conv(16, 32, 3, 2)
        self.b2 = C2f(32, 32, 1, True)
        self.b3, self.b4 = Conv(32, 64, 3, 2), C2f(64, 64, 2, True)
        self.b5, self.b6 = Conv(64, 128, 3, 2), C2f(128, 128, 2, True)
        self.b7, self.b8 = Conv(128, 256, 3, 2), C2f(256, 256, 1, True)
        self.b9 = SPPF(256, 256, 5)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.h12 = C2f(384, 128, 1, False)
        self.h15 = C2f(192, 64, 1, False)
        self.h16, self.h18 = Conv(64, 64, 3, 2), C2f(192, 128, 1, False)
        self.h19, self.h21 = Conv(128, 128, 3, 2), C2f(384, 256, 1, False)
        self.detect = Detect(nc, (64, 128, 256), (8, 16, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h12 = self.h12(torch.cat((self.up(p5), p4), 1))
        h15 = self.h15(torch.cat((self.up(h12), p3), 1))
        h18 = self.h18(torch.cat((self.h16(h15), h12), 1))
        h21 = self.h21(torch.cat((self.h19(h18), p5), 1))
        return self.detect([h15, h18, h21])


def count_flops(model: nn.Module, imgsz: int) -> float:
    """2 × multiply-accumulates of every convolution (the convention Ultralytics reports)."""
    macs = 0

    def hook(module: nn.Conv2d, _inp: object, out: torch.Tensor) -> None:
        nonlocal macs
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        macs += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, imgsz, imgsz))
    for h in handles:
        h.remove()
    return 2 * macs / 1e9


def build(out: Path = DEFAULT_OUT, imgsz: int = 640, seed: int = 0) -> tuple[Path, int, float]:
    torch.manual_seed(seed)
    model = YOLOv8n().eval()
    params = sum(p.numel() for p in model.parameters())
    gflops = count_flops(model, imgsz)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, imgsz, imgsz),),
        str(out),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return out, params, gflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()
    path, params, gflops = build(args.out, args.imgsz)
    print(f"wrote {path}: {params / 1e6:.2f} M parameters, {gflops:.2f} GFLOPs at {args.imgsz}")


if __name__ == "__main__":
    main()
