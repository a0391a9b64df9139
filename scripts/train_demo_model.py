#!/usr/bin/env python3
"""Train visionflow's bundled demo detector on synthetic scenes and export it to ONNX.

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python scripts/train_demo_model.py            # ~20-25 min on 2 CPU cores

The model is a small anchor-free detector (stride 8/16/32 heads, FCOS-style centre sampling,
GIoU box loss, IoU-aware class targets).  Its ONNX export ends in the YOLOv8 output layout
``[N, 4 + C, A]`` (cx, cy, w, h in input pixels, sigmoid class scores), so the pipeline serves
it with exactly the post-processing it uses for real YOLOv8/YOLO11 exports.  Evaluation runs
the exported ONNX file through ONNX Runtime and visionflow's own letterbox + NMS code on
held-out scenes (other seeds), and writes the model card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from onnx_compact import compact  # scripts/ is on sys.path when run as a script
from torch import nn

from visionflow.pipeline.letterbox import (
    letterbox_image,
    to_network_input,
    unletterbox_boxes,
)
from visionflow.pipeline.postprocess import decode_output
from visionflow.scenes.generator import CLASSES, SceneGenerator, SceneSpec
from visionflow.scenes.metrics import Scored, Truth, mean_average_precision, precision_recall

INPUT = 320
STRIDES = (8, 16, 32)
NC = len(CLASSES)
ASPECTS = ((16, 9), (4, 3), (1, 1), (21, 9), (3, 4))
OUT_DIR = Path(__file__).resolve().parents[1] / "visionflow" / "models"


# ---------------------------------------------------------------------------- model
def conv(c1: int, c2: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = conv(c, c), conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class TinyDet(nn.Module):
    """Backbone (5 stride-2 stages) + top-down neck + one head per stride."""

    def __init__(self, nc: int = NC, export: bool = False) -> None:
        super().__init__()
        self.nc, self.export = nc, export
        self.s1 = nn.Sequential(conv(3, 16, 3, 2), conv(16, 32, 3, 2), Res(32))
        self.s3 = nn.Sequential(conv(32, 64, 3, 2), Res(64))
        self.s4 = nn.Sequential(conv(64, 96, 3, 2), Res(96))
        self.s5 = nn.Sequential(conv(96, 128, 3, 2), Res(128), Res(128))
        self.l4 = conv(128 + 96, 96, 1)
        self.l3 = conv(96 + 64, 64, 1)
        self.heads = nn.ModuleList(
            nn.Sequential(conv(c, c), conv(c, c), nn.Conv2d(c, 4 + nc, 1)) for c in (64, 96, 128)
        )
        for head in self.heads:
            last = head[-1]
            assert isinstance(last, nn.Conv2d)
            nn.init.constant_(last.bias[4:], -4.0)  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.s3(self.s1(x))
        p4 = self.s4(p3)
        p5 = self.s5(p4)
        n4 = self.l4(torch.cat([F.interpolate(p5, scale_factor=2.0), p4], 1))
        n3 = self.l3(torch.cat([F.interpolate(n4, scale_factor=2.0), p3], 1))
        raw = [h(f) for h, f in zip(self.heads, (n3, n4, p5), strict=True)]
        return decode(raw, self.export)


def anchors_for(raw: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    points, strides = [], []
    for r, s in zip(raw, STRIDES, strict=True):
        h, w = r.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        points.append(torch.stack([(xs + 0.5) * s, (ys + 0.5) * s], -1).reshape(-1, 2).float())
        strides.append(torch.full((h * w,), float(s)))
    return torch.cat(points), torch.cat(strides)


def decode(raw: list[torch.Tensor], export: bool) -> torch.Tensor:
    """Heads -> [N, 4 + C, A] (cx, cy, w, h in pixels; scores sigmoid when exporting)."""
    n = raw[0].shape[0]
    flat = torch.cat([r.reshape(n, 4 + NC, -1) for r in raw], 2)
    points, strides = anchors_for(raw)
    ltrb = F.softplus(flat[:, :4]) * strides[None, None, :] * 2.0
    x1y1 = points.T[None] - ltrb[:, :2]
    x2y2 = points.T[None] + ltrb[:, 2:]
    box = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1)
    cls = flat[:, 4:].sigmoid() if export else flat[:, 4:]
    return torch.cat([box, cls], 1)


# ---------------------------------------------------------------------------- data
def render_sample(
    seed: int, rng: np.random.Generator, compress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A list of letterboxed 320x320 frames from one random scene, with xyxy+cls truth."""
    aw, ah = ASPECTS[int(rng.integers(0, len(ASPECTS)))]
    scale = min(INPUT / aw, INPUT / ah)
    w, h = int(aw * scale) // 2 * 2, int(ah * scale) // 2 * 2
    upscale = int(rng.choice([1, 2])) if compress else 1
    spec = SceneSpec(
        width=w * upscale,
        height=h * upscale,
        seed=seed,
        objects_per_frame=float(rng.uniform(1.5, 5)),
        noise_sigma=float(rng.uniform(1, 7)),
    )
    gen = SceneGenerator(spec, horizon_s=40)
    indices = sorted(rng.choice(np.arange(0, 900), 24, replace=False).tolist())
    images, truths = [], []
    frames = [gen.render(i) for i in indices]
    if compress:
        frames = [
            (img, b)
            for img, (_, b) in zip(
                _h264_roundtrip([f for f, _ in frames], int(rng.integers(18, 33))),
                frames,
                strict=True,
            )
        ]
    for img, boxes in frames:
        canvas, lb = letterbox_image(img, INPUT, INPUT)  # exactly the ingest path
        t = [
            [
                b.x1 * lb.scale + lb.pad_x,
                b.y1 * lb.scale + lb.pad_y,
                b.x2 * lb.scale + lb.pad_x,
                b.y2 * lb.scale + lb.pad_y,
                b.class_id,
                0.0 if b.ignorable else 1.0,
            ]
            for b in boxes
        ]
        images.append(canvas)
        truths.append(np.asarray(t, np.float32).reshape(-1, 6))
    return images, truths  # type: ignore[return-value]


def _h264_roundtrip(images: list[np.ndarray], crf: int) -> list[np.ndarray]:
    import io

    buf = io.BytesIO()
    h, w = images[0].shape[:2]
    with av.open(buf, "w", format="h264") as out:
        st = out.add_stream("libx264", rate=30)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": str(crf), "bf": "0"}
        for img in images:
            out.mux(st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(st.encode(None))
    buf.seek(0)
    with av.open(buf, "r", format="h264") as inp:
        return [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]


def build_dataset(n_scenes: int, seed0: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed0)
    images: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    for k in range(n_scenes):
        im, tr = render_sample(seed0 * 100_000 + k, rng, compress=bool(k % 2))
        images += im
        truths += tr
    return np.stack(images), truths


# ---------------------------------------------------------------------------- loss
def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ix1, iy1 = torch.max(a[:, 0], b[:, 0]), torch.max(a[:, 1], b[:, 1])
    ix2, iy2 = torch.min(a[:, 2], b[:, 2]), torch.min(a[:, 3], b[:, 3])
    inter = (ix2 - ix1).clamp(0) * (iy2 - iy1).clamp(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter + 1e-7
    iou_ = inter / union
    cx1, cy1 = torch.min(a[:, 0], b[:, 0]), torch.min(a[:, 1], b[:, 1])
    cx2, cy2 = torch.max(a[:, 2], b[:, 2]), torch.max(a[:, 3], b[:, 3])
    hull = (cx2 - cx1) * (cy2 - cy1) + 1e-7
    return iou_ - (hull - union) / hull, iou_


def assign(
    truth: torch.Tensor, points: torch.Tensor, strides: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: index of its truth box (-1 background), and ignore mask."""
    A = points.shape[0]
    target = torch.full((A,), -1, dtype=torch.long)
    ignore = torch.zeros(A, dtype=torch.bool)
    if truth.shape[0] == 0:
        return target, ignore
    boxes = truth[:, :4]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = torch.max(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    px, py = points[:, 0:1], points[:, 1:2]
    inside = (px > boxes[:, 0]) & (px < boxes[:, 2]) & (py > boxes[:, 1]) & (py < boxes[:, 3])
    radius = 2.5 * strides[:, None]
    centre = ((px - cx).abs() < radius) & ((py - cy).abs() < radius)
    s = strides[:, None]
    level = (
        ((s == 8) & (side < 96))
        | ((s == 16) & (side >= 48) & (side < 192))
        | ((s == 32) & (side >= 120))
    )
    cand = inside & centre & level
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(A, -1)
    area = torch.where(cand, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(1)
    pos = torch.isfinite(best_area)
    target[pos] = best[pos]
    ignore[pos] = truth[best[pos], 5] < 0.5
    return target, ignore


def loss_fn(
    pred: torch.Tensor, truths: list[torch.Tensor], points: torch.Tensor, strides: torch.Tensor
) -> tuple[torch.Tensor, float]:
    n = pred.shape[0]
    box = pred[:, :4].permute(0, 2, 1)
    xyxy = torch.cat([box[..., :2] - box[..., 2:] / 2, box[..., :2] + box[..., 2:] / 2], -1)
    logits = pred[:, 4:].permute(0, 2, 1)
    cls_target = torch.zeros_like(logits)
    weight = torch.ones_like(logits)
    box_loss = torch.zeros(())
    npos = 0
    for i in range(n):
        tgt, ign = assign(truths[i], points, strides)
        pos = tgt >= 0
        if pos.any():
            gt = truths[i][tgt[pos]]
            g, iou_ = giou(xyxy[i][pos], gt[:, :4])
            keep = ~ign[pos]
            box_loss = box_loss + ((1 - g) * keep).sum()
            cls_ids = gt[:, 4].long()
            idx = pos.nonzero().squeeze(1)
            cls_target[i, idx, cls_ids] = iou_.detach().clamp(0.2) * keep
            weight[i, idx[~keep]] = 0.0
            npos += int(keep.sum())
    norm = max(npos, 1)
    cls_loss = F.binary_cross_entropy_with_logits(
        logits, cls_target, weight=weight, reduction="sum"
    )
    return (cls_loss + 5.0 * box_loss) / norm, float(npos)


# ---------------------------------------------------------------------------- train / eval
def train(
    images: np.ndarray, truths: list[np.ndarray], iters: int, batch: int, seed: int
) -> TinyDet:
    torch.manual_seed(seed)
    model = TinyDet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=iters, pct_start=max(0.05, 3 / iters)
    )
    rng = np.random.default_rng(seed)
    points = strides = None
    t0 = time.time()
    for step in range(iters):
        idx = rng.choice(len(images), batch, replace=False)
        x = torch.from_numpy(to_network_input(images[idx]))
        tr = [torch.from_numpy(truths[i]) for i in idx]
        if rng.random() < 0.5:  # horizontal flip
            x = x.flip(3)
            tr = [
                torch.stack(
                    [INPUT - t[:, 2], t[:, 1], INPUT - t[:, 0], t[:, 3], t[:, 4], t[:, 5]], 1
                )
                if len(t)
                else t
                for t in tr
            ]
        pred = model(x)
        if points is None:
            with torch.no_grad():
                feats = [torch.zeros(1, 1, INPUT // s, INPUT // s) for s in STRIDES]
                points, strides = anchors_for(feats)
        loss, npos = loss_fn(pred, tr, points, strides)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == iters - 1:
            print(
                f"step {step:5d}/{iters} loss {loss.item():.3f} pos {npos:.0f} {time.time() - t0:.0f}s",
                flush=True,
            )
    return model


def export(model: TinyDet, path: Path) -> None:
    model.export = True
    model.eval()
    dummy = torch.zeros(1, 3, INPUT, INPUT)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def evaluate(path: Path, n_scenes: int, seed0: int) -> dict[str, object]:
    """Held-out scenes, full-resolution render -> ingest letterbox -> ONNX -> NMS -> frame px."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed0)
    frames = []
    sizes = [(640, 360), (1280, 720), (1920, 1080), (800, 600), (704, 576)]
    for k in range(n_scenes):
        w, h = sizes[k % len(sizes)]
        gen = SceneGenerator(SceneSpec(w, h, seed=seed0 * 1000 + k), horizon_s=60)
        for index in rng.choice(np.arange(0, 1500), 12, replace=False):
            img, boxes = gen.render(int(index))
            canvas, lb = letterbox_image(img, INPUT, INPUT)
            out = sess.run(None, {"images": to_network_input(canvas[None])})[0][0]
            b, s, c = decode_output(out, 0.001, 0.45, 300)
            b = unletterbox_boxes(b, lb)
            preds = [
                Scored(int(ci), float(si), tuple(map(float, bi)))
                for bi, si, ci in zip(b, s, c, strict=True)
            ]
            truth = [Truth(t.class_id, (t.x1, t.y1, t.x2, t.y2), t.ignorable) for t in boxes]
            frames.append((preds, truth))
    m, per_class = mean_average_precision(frames, NC)
    sweep = {}
    for thr in (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85):
        pr = precision_recall([([p for p in preds if p.score >= thr], tr) for preds, tr in frames])
        sweep[thr] = (round(pr.precision, 4), round(pr.recall, 4))

    def f1(t: float) -> float:
        p, r = sweep[t]
        return 2 * p * r / max(p + r, 1e-9)

    best = max(sweep, key=f1)
    return {
        "mAP50": round(m, 4),
        "AP50_per_class": dict(zip(CLASSES, [round(a, 4) for a in per_class], strict=True)),
        "precision_recall_by_threshold": {str(k): v for k, v in sweep.items()},
        "recommended_conf_threshold": best,
        "frames": len(frames),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--scenes", type=int, default=160)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=OUT_DIR / "demo-detector.onnx")
    ap.add_argument("--eval-only", action="store_true", help="evaluate --out, rewrite its sidecar")
    args = ap.parse_args()
    if args.eval_only:
        meta = json.loads(args.out.with_suffix(".json").read_text())
        meta["eval"] = evaluate(args.out, 25, seed0=args.seed + 1000)
        meta["conf_threshold"] = meta["eval"]["recommended_conf_threshold"]
        meta["sha256_16"] = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
        args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(meta, indent=2))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    images, truths = build_dataset(args.scenes, args.seed)
    print(f"dataset: {len(images)} frames in {time.time() - t0:.0f}s", flush=True)
    model = train(images, truths, args.iters, args.batch, args.seed)
    train_s = time.time() - t0
    export(model, args.out)
    compact(str(args.out), 4 + NC, sum((INPUT // s) ** 2 for s in STRIDES))
    metrics = evaluate(args.out, 25, seed0=args.seed + 1000)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    meta = {
        "classes": list(CLASSES),
        "input_size": [INPUT, INPUT],
        "sha256_16": digest,
        "train": {
            "seed": args.seed,
            "iters": args.iters,
            "batch": args.batch,
            "frames": len(images),
            "seconds": round(train_s),
            "torch": torch.__version__,
        },
        "eval": metrics,
        "conf_threshold": metrics["recommended_conf_threshold"],
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
