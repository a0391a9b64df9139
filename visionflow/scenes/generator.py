"""Deterministic camera-like synthetic scenes with ground-truth boxes.

A scene is a textured, slowly changing background with sensor noise, on which objects of a
few classes (person-, car- and bicycle-like shapes of varying size, colour and aspect ratio)
enter, cross, leave and occlude each other.  Scene kinds (``SceneSpec.kind``), for tracking:
``crossing`` (objects crossing the frame both ways, passing each other), ``occlusion`` (the
same with a pillar in the middle of the frame, in front of everything, that objects walk
behind and come out of) and ``reenter`` (every object, once it has left, comes back through
the edge it left by, with the same identity).  Every frame is a pure function of
``(spec, index)``: frame 1234 can be rendered without rendering the 1233 before it, so the
truth of a looped or restarted clip is always known exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import numpy.typing as npt

CLASSES: tuple[str, ...] = ("person", "car", "bicycle")
#: (min, max) of width / height per class
_ASPECT = {0: (0.33, 0.48), 1: (1.7, 2.5), 2: (1.4, 1.8)}
#: (min, max) of object height as a fraction of the frame height, per class
_HEIGHT = {0: (0.16, 0.42), 1: (0.12, 0.30), 2: (0.12, 0.26)}
MIN_VISIBLE = 0.5  # truth boxes less visible than this are marked ignorable
SceneKind = Literal["crossing", "occlusion", "reenter"]
SCENE_KINDS: tuple[SceneKind, ...] = ("crossing", "occlusion", "reenter")
_PILLAR = (0.46, 0.54, 0.15)  # occlusion scenes: pillar x from, x to, top (fractions)


@dataclass(frozen=True)
class SceneSpec:
    """What to generate: size, rate, seed and crowd density."""

    width: int = 640
    height: int = 360
    fps: float = 30.0
    seed: int = 0
    objects_per_frame: float = 4.0  # average number on screen
    mean_crossing_s: float = 6.0  # average time an object stays visible
    noise_sigma: float = 4.0
    kind: SceneKind = "crossing"


@dataclass(frozen=True)
class TruthBox:
    """A ground-truth object in one frame (frame pixels, xyxy)."""

    object_id: int
    class_id: int
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    visible: float  # fraction of the object's pixels that can be seen

    @property
    def ignorable(self) -> bool:
        """Mostly hidden or off-screen: a detector may or may not find it."""
        return self.visible < MIN_VISIBLE


@dataclass(frozen=True)
class _Track:
    object_id: int
    class_id: int
    start: float  # seconds
    duration: float
    x0: float  # top-left at start, pixels
    y0: float
    vx: float  # pixels per second
    vy: float
    w: float
    h: float
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]


class SceneGenerator:
    """Renders frames and their truth for one :class:`SceneSpec`."""

    def __init__(self, spec: SceneSpec, horizon_s: float = 600.0) -> None:
        self.spec = spec
        self._horizon = horizon_s
        self._tracks = self._plan_tracks(horizon_s)

    # ---- planning -------------------------------------------------------------------
    def _plan_tracks(self, horizon_s: float) -> list[_Track]:
        spec = self.spec
        rng = np.random.default_rng([spec.seed, 1])
        rate = spec.objects_per_frame / spec.mean_crossing_s  # arrivals per second
        tracks: list[_Track] = []
        t = -spec.mean_crossing_s  # objects already on screen at frame 0
        while t < horizon_s:
            t += float(rng.exponential(1.0 / rate))
            tracks.append(self._new_track(len(tracks), t, rng))
        if spec.kind == "reenter":
            back = np.random.default_rng([spec.seed, 5])
            tracks += [self._return_of(tr, back) for tr in tracks]
        return tracks

    def _return_of(self, track: _Track, rng: np.random.Generator) -> _Track:
        """The same object coming back, after 0.2-0.8 s, through the edge it left by."""
        end_x = track.x0 + track.vx * track.duration
        gone = float(rng.uniform(0.2, 0.8))
        return dataclasses.replace(
            track,
            start=track.start + track.duration + gone,
            x0=end_x,
            vx=-track.vx,  # the same speed, the other way, across the whole frame
            y0=track.y0 + track.vy * track.duration,
            vy=-track.vy,
        )

    def _new_track(self, object_id: int, start: float, rng: np.random.Generator) -> _Track:
        W, H = self.spec.width, self.spec.height
        class_id = int(rng.integers(0, len(CLASSES)))
        h = float(rng.uniform(*_HEIGHT[class_id])) * H
        w = h * float(rng.uniform(*_ASPECT[class_id]))
        duration = float(rng.uniform(0.6, 1.4)) * self.spec.mean_crossing_s
        ground = float(rng.uniform(0.35, 1.0))  # feet between 35% and 100% of the height
        y_feet = ground * H
        left_to_right = bool(rng.integers(0, 2))
        x_start, x_end = (-w, W) if left_to_right else (W, -w)
        vy = float(rng.normal(0, 0.02)) * H / duration
        colour = tuple(int(c) for c in rng.integers(20, 236, 3))
        colour2 = tuple(int(c) for c in rng.integers(20, 236, 3))
        return _Track(
            object_id=object_id,
            class_id=class_id,
            start=start,
            duration=duration,
            x0=x_start,
            y0=y_feet - h,
            vx=(x_end - x_start) / duration,
            vy=vy,
            w=w,
            h=h,
            colour=colour,  # type: ignore[arg-type]
            colour2=colour2,  # type: ignore[arg-type]
        )

    def _alive(self, t: float) -> list[_Track]:
        if t > self._horizon:
            raise ValueError(f"frame time {t:.1f}s is past the planned horizon {self._horizon}s")
        alive = [tr for tr in self._tracks if tr.start <= t < tr.start + tr.duration]
        # far objects (smaller, higher feet) first; nearer ones are drawn over them
        return sorted(alive, key=lambda tr: (tr.y0 + tr.h, tr.object_id))

    # ---- background -----------------------------------------------------------------
    @cached_property
    def _background(self) -> npt.NDArray[np.float32]:
        W, H = self.spec.width, self.spec.height
        rng = np.random.default_rng([self.spec.seed, 2])
        yy = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
        sky = np.array(rng.uniform(120, 200, 3), np.float32)
        ground = np.array(rng.uniform(60, 130, 3), np.float32)
        horizon = float(rng.uniform(0.25, 0.4))
        blend = np.clip((yy - horizon) * 12, 0, 1)
        base = sky * (1 - blend) + ground * blend
        texture = np.zeros((H, W), np.float32)
        for cells, amp in ((4, 18.0), (16, 10.0), (64, 5.0)):
            coarse = rng.normal(0, 1, (cells + 1, cells + 1)).astype(np.float32)
            texture += amp * _bilinear_upsample(coarse, H, W)
        background: npt.NDArray[np.float32] = np.clip(base + texture[:, :, None], 0, 255)
        return background.astype(np.float32)

    @cached_property
    def _noise_tile(self) -> npt.NDArray[np.int16]:
        H, W = self.spec.height, self.spec.width
        rng = np.random.default_rng([self.spec.seed, 3])
        return rng.normal(0, self.spec.noise_sigma, (H, W, 3)).astype(np.int16)

    # ---- rendering ------------------------------------------------------------------
    def frame_count(self, seconds: float) -> int:
        return round(seconds * self.spec.fps)

    def render(self, index: int) -> tuple[npt.NDArray[np.uint8], list[TruthBox]]:
        """Frame ``index`` as ``[H, W, 3]`` RGB uint8, and its truth boxes."""
        spec = self.spec
        t = index / spec.fps
        gain = 0.9 + 0.1 * math.sin(2 * math.pi * t / 23.0)
        pan = int(t * 3) % spec.width
        image = np.roll(self._background, pan, axis=1) * gain
        owner = np.full((spec.height, spec.width), -1, np.int32)
        tracks = self._alive(t)
        areas: dict[int, int] = {}
        for track in tracks:
            areas[track.object_id] = _draw(image, owner, track, t)
        if spec.kind == "occlusion":
            self._draw_pillar(image, owner)
        rng = np.random.default_rng([spec.seed, 4, index])
        dy, dx = (int(v) for v in rng.integers(0, [spec.height, spec.width]))
        noisy = image + np.roll(self._noise_tile, (dy, dx), axis=(0, 1))
        frame = np.clip(noisy, 0, 255).astype(np.uint8)
        visible = np.bincount(owner.ravel() + 1, minlength=len(self._tracks) + 1)
        return frame, self._truth(tracks, t, areas, visible)

    def _draw_pillar(self, image: npt.NDArray[np.float32], owner: npt.NDArray[np.int32]) -> None:
        W, H = self.spec.width, self.spec.height
        x0, x1, top = round(_PILLAR[0] * W), round(_PILLAR[1] * W), round(_PILLAR[2] * H)
        image[top:, x0:x1] = (96.0, 88.0, 80.0)
        owner[top:, x0:x1] = -1

    def truth(self, index: int) -> list[TruthBox]:
        """Truth of frame ``index`` without keeping the pixels."""
        return self.render(index)[1]

    def _truth(
        self,
        tracks: list[_Track],
        t: float,
        areas: dict[int, int],
        visible: npt.NDArray[np.int64],
    ) -> list[TruthBox]:
        W, H = self.spec.width, self.spec.height
        boxes = []
        for track in tracks:
            x, y = _position(track, t)
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(float(W), x + track.w), min(float(H), y + track.h)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            full = max(areas[track.object_id], 1)
            seen = int(visible[track.object_id + 1])
            boxes.append(
                TruthBox(
                    object_id=track.object_id,
                    class_id=track.class_id,
                    label=CLASSES[track.class_id],
                    x1=round(x1, 2),
                    y1=round(y1, 2),
                    x2=round(x2, 2),
                    y2=round(y2, 2),
                    visible=round(seen / full, 3),
                )
            )
        return boxes


def _position(track: _Track, t: float) -> tuple[float, float]:
    dt = t - track.start
    return track.x0 + track.vx * dt, track.y0 + track.vy * dt


def _bilinear_upsample(grid: npt.NDArray[np.float32], H: int, W: int) -> npt.NDArray[np.float32]:
    gy = np.linspace(0, grid.shape[0] - 1, H, dtype=np.float32)
    gx = np.linspace(0, grid.shape[1] - 1, W, dtype=np.float32)
    y0 = np.minimum(gy.astype(np.int32), grid.shape[0] - 2)
    x0 = np.minimum(gx.astype(np.int32), grid.shape[1] - 2)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    out: npt.NDArray[np.float32] = (
        a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy + d * fx * fy
    ).astype(np.float32)
    return out


def _draw(
    image: npt.NDArray[np.float32], owner: npt.NDArray[np.int32], track: _Track, t: float
) -> int:
    """Paint one object (painter's order) and return its total mask area in pixels."""
    x, y = _position(track, t)
    x0, y0 = math.floor(x), math.floor(y)
    w, h = max(2, round(track.w)), max(2, round(track.h))
    mask, paint = _shape(track, w, h)
    H, W = owner.shape
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(W, x0 + w), min(H, y0 + h)
    if sx1 > sx0 and sy1 > sy0:
        m = mask[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        p = paint[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        region = image[sy0:sy1, sx0:sx1]
        region[m] = p[m]
        owner[sy0:sy1, sx0:sx1][m] = track.object_id
    return int(mask.sum())


def _shape(track: _Track, w: int, h: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
    """Mask and colours of an object of ``w`` x ``h`` pixels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1 = np.array(track.colour, np.float32)
    c2 = np.array(track.colour2, np.float32)
    paint = np.empty((h, w, 3), np.float32)
    if track.class_id == 0:  # person: head, shirt, trousers
        head_r = 0.11 * h
        head = (xx - w / 2) ** 2 + (yy - head_r) ** 2 <= head_r**2
        torso = (yy >= 2 * head_r * 0.9) & (np.abs(xx - w / 2) <= w * 0.5 * (1 - 0.15 * (yy / h)))
        mask = head | torso
        paint[:] = np.where((yy < 0.55 * h)[:, :, None], c1, c2)
        paint[head] = (224, 172, 140)
    elif track.class_id == 1:  # car: body, cabin with windows, wheels
        body = (yy >= 0.4 * h) & (yy <= 0.85 * h)
        cabin = (yy >= 0.05 * h) & (yy < 0.4 * h) & (xx >= 0.2 * w) & (xx <= 0.8 * w)
        wheel_r = 0.17 * h
        wheels = np.zeros_like(body)
        for cx in (0.22 * w, 0.78 * w):
            wheels |= (xx - cx) ** 2 + (yy - (h - wheel_r)) ** 2 <= wheel_r**2
        mask = body | cabin | wheels
        paint[:] = c1
        window = cabin & (yy > 0.1 * h) & (yy < 0.36 * h)
        paint[window] = c2 * 0.5 + 60
        paint[wheels] = (25, 25, 25)
    else:  # bicycle: two rings, frame bars, rider-less
        wheel_r = 0.24 * w
        mask = np.zeros((h, w), bool)
        cy = h - wheel_r
        for cx in (wheel_r, w - wheel_r):
            d2 = (xx - cx) ** 2 + (yy - cy) ** 2
            mask |= (d2 <= wheel_r**2) & (d2 >= (0.7 * wheel_r) ** 2)
        bar = max(2.0, 0.06 * h)
        top = 0.25 * h
        mask |= (np.abs(yy - top) <= bar) & (xx >= 0.3 * w) & (xx <= 0.75 * w)
        mask |= np.abs((yy - cy) - (xx - wheel_r) * (top - cy) / (0.4 * w)) <= bar * 1.2
        mask &= yy >= 0.15 * h
        mask[: int(0.2 * h) + 1, int(0.68 * w) : int(0.78 * w) + 1] = True  # handlebar stem
        paint[:] = c1
    return mask, paint
