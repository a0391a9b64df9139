#!/usr/bin/env python3
"""Train visionflow's bundled demo detector on synthetic scenes and export it to ONNX.

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python scripts/train_demo_model.py --scenes 480 --iters 2400 --batch 32 \
        --workers 15 --conf 0.75        # the bundled model, on a GPU

The bundled model took 462 s on an H200 (16 cores) with the per-image loss this script had
then; with today's batched loss 3,200 steps on 720 scenes took 115 s there.  Without a GPU it
trains on the CPU, far slower (not timed with these settings; the model before, 1,600 steps of
16, took 17.5 min on 2 cores).  The scenes take the three kinds the tracking benchmark uses in
turn (crossing, occlusion behind a pillar, objects that leave and come back), with 1.5-8 first
passes on screen on average (twice that on ``reenter``, where each object comes back), so that
partly covered objects and crowds are in the training data (a model trained on sparse
crossing scenes merged two overlapping cars into one box and missed people in front of cars,
and the tracker lost their identities).  A retrain gives a similar model, not the same one
(float rounding and non-deterministic kernels compound over the steps).

``--min-visible`` sets how visible an object must be to be taught as one (its box); less
visible ones are neither object nor background.  The bundled model used 0.5, the evaluation's
rule.  Teaching partly hidden objects (so that the tracker keeps them behind others) was tried
on 2026-11-27 (H200, 480 scenes / 2,400 steps unless said).  Zone/line counts off, by a scratch
script over ``bench/tracking.py``'s functions with the tracker as it was before
``appearance_reach``, on the held-out seeds crossing 401, occlusion 402, reenter 403 and 601
and on the fresh seeds 701-708 of each kind: the bundled model 5 of 134 and 13 of 612; 0.25:
5 and 17; 0.25 with 960 scenes / 4,800 steps: 3 and 16; 0.15: 5 and 10, but through the
pipeline (``appearance_reach`` on) its IDF1 on the truth test's ``reenter`` scene fell to
0.900 (0.958 with the bundled model).  None was kept, nor three more at 960 scenes / 4,800
steps (0.15, 0.3 and 0.5, the last a control with more data; README "Tracking" has the
figures, with the tracker's ``appearance_reach``).

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
import multiprocessing
import time
from collections.abc import Callable
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
from visionflow.scenes.generator import CLASSES, SCENE_KINDS, SceneGenerator, SceneKind, SceneSpec
from visionflow.scenes.metrics import Scored, Truth, mean_average_precision, precision_recall

INPUT = 320
STRIDES = (8, 16, 32)
NC = len(CLASSES)
FRAMES_PER_SCENE = 24
MAX_CROWD = 20.0  # --crowd's upper bound (a scene plans its objects by this rate)
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
        dev = r.device
        ys, xs = torch.meshgrid(
            torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij"
        )
        points.append(torch.stack([(xs + 0.5) * s, (ys + 0.5) * s], -1).reshape(-1, 2).float())
        strides.append(torch.full((h * w,), float(s), device=dev))
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
Sample = tuple[list[np.ndarray], list[np.ndarray]]  # frames, and per frame its truth rows


def render_sample(
    seed: int, rng: np.random.Generator, compress: bool, kind: SceneKind, crowd: tuple[float, float]
) -> Sample:
    """24 letterboxed 320x320 frames from one random scene of ``kind`` with ``crowd`` (min,
    max) objects on screen on average, with xyxy+cls+visible truth (the fraction of the
    object's pixels that can be seen, off-frame pixels counting as unseen; the box is the
    object's, clipped to the frame, not only its visible part)."""
    aw, ah = ASPECTS[int(rng.integers(0, len(ASPECTS)))]
    scale = min(INPUT / aw, INPUT / ah)
    w, h = int(aw * scale) // 2 * 2, int(ah * scale) // 2 * 2
    upscale = int(rng.choice([1, 2])) if compress else 1
    spec = SceneSpec(
        width=w * upscale,
        height=h * upscale,
        seed=seed,
        objects_per_frame=float(rng.uniform(*crowd)),
        noise_sigma=float(rng.uniform(1, 7)),
        kind=kind,
    )
    gen = SceneGenerator(spec, horizon_s=40)
    indices = sorted(rng.choice(np.arange(0, 900), FRAMES_PER_SCENE, replace=False).tolist())
    images: list[np.ndarray] = []
    truths: list[np.ndarray] = []
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
                b.visible,
            ]
            for b in boxes
        ]
        images.append(canvas)
        truths.append(np.asarray(t, np.float32).reshape(-1, 6))
    return images, truths


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


def _scene(job: tuple[int, int, tuple[SceneKind, ...], tuple[float, float]]) -> Sample:
    """Scene ``k`` of the dataset (its own random generator: the same whatever the order).
    Kinds in turn; every other scene through H.264, so that each kind gets both (with an even
    number of kinds the alternation shifts by one every round of kinds)."""
    seed0, k, kinds, crowd = job
    rng = np.random.default_rng([seed0, k])
    shift = k // len(kinds) if len(kinds) % 2 == 0 else 0
    compress = bool((k + shift) % 2)
    return render_sample(seed0 * 100_000 + k, rng, compress, kinds[k % len(kinds)], crowd)


def build_dataset(
    n_scenes: int,
    seed0: int,
    kinds: tuple[SceneKind, ...],
    crowd: tuple[float, float],
    workers: int,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n_scenes`` scenes (kinds in turn, half through H.264), 24 frames each, rendered by
    ``workers`` processes."""
    jobs = [(seed0, k, kinds, crowd) for k in range(n_scenes)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            scenes = pool.map(_scene, jobs, chunksize=4)
    else:
        scenes = [_scene(job) for job in jobs]
    images: list[np.ndarray] = [im for ims, _ in scenes for im in ims]
    truths: list[np.ndarray] = [tr for _, trs in scenes for tr in trs]
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


def assign_batch(
    truth: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, min_visible: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS-style assignment for a batch at once, with no host synchronisation: ``truth``
    ``[N, M, 6]`` (rows padded with a zero-area box, which no anchor is inside) -> per image
    and anchor the index of its truth box (-1 background; an anchor inside several takes the
    smallest, at the stride that suits the box's size, within 2.5 strides of its centre)
    ``[N, A]`` and the ignore mask (boxes of objects less than ``min_visible`` visible:
    neither positive nor negative)."""
    boxes = truth[..., :4]  # [N, M, 4]
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    side = torch.max(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
    px, py = points[None, :, 0:1], points[None, :, 1:2]  # [1, A, 1]
    b = boxes[:, None]  # [N, 1, M, 4]
    inside = (px > b[..., 0]) & (px < b[..., 2]) & (py > b[..., 1]) & (py < b[..., 3])
    radius = 2.5 * strides[None, :, None]
    centre = ((px - cx[:, None]).abs() < radius) & ((py - cy[:, None]).abs() < radius)
    s, sd = strides[None, :, None], side[:, None]
    level = (
        ((s == 8) & (sd < 96)) | ((s == 16) & (sd >= 48) & (sd < 192)) | ((s == 32) & (sd >= 120))
    )
    cand = inside & centre & level  # [N, A, M]
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))[:, None]
    area = torch.where(cand, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(2)
    pos = torch.isfinite(best_area)
    target = torch.where(pos, best, torch.full_like(best, -1))
    ignore = pos & (torch.gather(truth[..., 5], 1, best) < min_visible)
    return target, ignore


def pad_truths(truths: list[torch.Tensor]) -> torch.Tensor:
    """Per-image truth rows ``[M_i, 6]`` -> ``[N, max M, 6]``, padded with zero boxes."""
    m = max(1, max(len(t) for t in truths))
    out = torch.zeros(len(truths), m, 6, device=truths[0].device)
    for i, t in enumerate(truths):
        out[i, : len(t)] = t
    return out


def loss_batch(
    pred: torch.Tensor,
    truths: list[torch.Tensor],
    points: torch.Tensor,
    strides: torch.Tensor,
    min_visible: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GIoU box loss (x5) over the positives not ignored + IoU-aware class BCE over every
    anchor (an ignored positive weighs nothing), divided by the count of positives not
    ignored; for the whole batch in tensor operations, with no per-image loop and no host
    synchronisation.  That count is returned as a tensor."""
    truth = pad_truths(truths)
    box = pred[:, :4].permute(0, 2, 1)
    xyxy = torch.cat([box[..., :2] - box[..., 2:] / 2, box[..., :2] + box[..., 2:] / 2], -1)
    logits = pred[:, 4:].permute(0, 2, 1)
    tgt, ign = assign_batch(truth, points, strides, min_visible)
    pos = tgt >= 0
    gt = torch.gather(truth, 1, tgt.clamp(min=0)[..., None].expand(-1, -1, 6))  # [N, A, 6]
    g, iou_ = giou(xyxy.reshape(-1, 4), gt[..., :4].reshape(-1, 4))
    g, iou_ = g.view(pos.shape), iou_.view(pos.shape)
    keep = pos & ~ign
    box_loss = ((1 - g) * keep).sum()
    onehot = F.one_hot(gt[..., 4].long(), NC).to(logits.dtype)
    cls_target = onehot * (iou_.detach().clamp(0.2) * keep)[..., None]
    weight = torch.where((pos & ign)[..., None], 0.0, 1.0).expand_as(logits)
    npos = keep.sum()
    cls_loss = F.binary_cross_entropy_with_logits(
        logits, cls_target, weight=weight, reduction="sum"
    )
    return (cls_loss + 5.0 * box_loss) / npos.clamp(min=1), npos


# ---------------------------------------------------------------------------- train / eval
def train(
    images: np.ndarray,
    truths: list[np.ndarray],
    iters: int,
    batch: int,
    seed: int,
    device: str = "cpu",
    min_visible: float = 0.5,
) -> TinyDet:
    torch.manual_seed(seed)
    model = TinyDet().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=iters, pct_start=min(0.5, max(0.05, 3 / iters))
    )
    rng = np.random.default_rng(seed)
    points = strides = None
    t0 = time.time()
    for step in range(iters):
        idx = rng.choice(len(images), batch, replace=False)
        x = torch.from_numpy(images[idx]).to(device).permute(0, 3, 1, 2).float() / 255.0
        tr = [torch.from_numpy(truths[i]).to(device) for i in idx]
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
                feats = [torch.zeros(1, 1, INPUT // s, INPUT // s, device=device) for s in STRIDES]
                points, strides = anchors_for(feats)
        loss, npos = loss_batch(pred, tr, points, strides, min_visible)
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
    return model.cpu()


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


def _kinds(text: str) -> tuple[SceneKind, ...]:
    """``--kinds``: comma-separated scene kinds, at least one, each known."""
    kinds = tuple(k for k in text.split(",") if k)
    unknown = [k for k in kinds if k not in SCENE_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(
            f"expected scene kinds from {', '.join(SCENE_KINDS)}, got {text!r}"
        )
    return kinds  # type: ignore[return-value]  # each checked against SCENE_KINDS above


def _crowd(text: str) -> tuple[float, float]:
    """``--crowd``: ``min,max`` objects on screen on average, 0 < min <= max <= MAX_CROWD."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected min,max (two numbers), got {text!r}") from None
    if not 0 < low <= high <= MAX_CROWD:
        raise argparse.ArgumentTypeError(f"expected 0 < min <= max <= {MAX_CROWD}, got {text!r}")
    return low, high


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _conf(text: str) -> float:
    """``--conf``: a score threshold strictly between 0 and 1."""
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected 0 < conf < 1, got {text!r}")
    return value


def _fraction(text: str) -> float:
    """``--min-visible``: a fraction in (0, 1]."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected 0 < fraction <= 1, got {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=_int_at_least(1), default=2400)
    ap.add_argument("--batch", type=_int_at_least(1), default=32)
    ap.add_argument("--scenes", type=_int_at_least(1), default=480)
    ap.add_argument("--seed", type=_int_at_least(0), default=7)
    ap.add_argument("--out", type=Path, default=OUT_DIR / "demo-detector.onnx")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate --out, rewrite its sidecar (its conf_threshold kept unless --conf)",
    )
    ap.add_argument(
        "--kinds",
        type=_kinds,
        default=SCENE_KINDS,
        help="scene kinds to train on, in turn, comma-separated (crossing; occlusion: a pillar; "
        "reenter: objects that come back, so crowds and partly hidden objects); default all",
    )
    ap.add_argument(
        "--crowd",
        type=_crowd,
        default=(1.5, 8.0),
        help="min,max first passes on screen on average (twice that on reenter)",
    )
    ap.add_argument(
        "--workers", type=_int_at_least(1), default=1, help="processes rendering scenes"
    )
    ap.add_argument(
        "--min-visible",
        type=_fraction,
        default=0.5,
        help="objects at least this visible are taught as objects (their box), those "
        "less visible are neither object nor background (default 0.5, as the evaluation's truth)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    mode.add_argument(
        "--no-eval",
        action="store_true",
        help="train and export only (the sidecar then has no eval: give --conf)",
    )
    ap.add_argument(
        "--conf",
        type=_conf,
        default=None,
        help="operating point written to the sidecar (default: the best F1 of the evaluation's "
        "thresholds 0.25-0.85)",
    )
    args = ap.parse_args()
    if args.no_eval and args.conf is None:
        ap.error("--no-eval: give --conf (the sidecar's operating point; nothing measures one)")
    if args.batch > args.scenes * FRAMES_PER_SCENE:
        ap.error(f"--batch {args.batch}: more than the {args.scenes * FRAMES_PER_SCENE} frames")
    return args


def write_sidecar(out: Path, meta: dict[str, object]) -> None:
    """The model's JSON sidecar (read by visionflow.models), with the file's digest."""
    meta["sha256_16"] = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


def main() -> None:
    args = parse_args()
    if args.eval_only:
        meta = json.loads(args.out.with_suffix(".json").read_text())
        meta["eval"] = evaluate(args.out, 25, seed0=args.seed + 1000)
        if args.conf is not None:
            meta["conf_threshold"] = args.conf
        meta.setdefault("conf_threshold", meta["eval"]["recommended_conf_threshold"])
        write_sidecar(args.out, meta)
        return
    t0 = time.time()
    images, truths = build_dataset(args.scenes, args.seed, args.kinds, args.crowd, args.workers)
    print(f"dataset: {len(images)} frames in {time.time() - t0:.0f}s", flush=True)
    model = train(images, truths, args.iters, args.batch, args.seed, args.device, args.min_visible)
    train_s = time.time() - t0
    export(model, args.out)
    compact(str(args.out), 4 + NC, sum((INPUT // s) ** 2 for s in STRIDES))
    metrics = None if args.no_eval else evaluate(args.out, 25, seed0=args.seed + 1000)
    conf = args.conf if args.conf is not None else metrics["recommended_conf_threshold"]  # type: ignore[index]
    train_meta = {
        "seed": args.seed,
        "iters": args.iters,
        "batch": args.batch,
        "frames": len(images),
        "seconds": round(train_s),
        "torch": torch.__version__,
        "device": args.device,
        "kinds": list(args.kinds),
        "crowd": list(args.crowd),
        "min_visible": args.min_visible,
    }
    meta = {"classes": list(CLASSES), "input_size": [INPUT, INPUT], "train": train_meta}
    write_sidecar(args.out, {**meta, "eval": metrics, "conf_threshold": conf})


if __name__ == "__main__":
    main()
