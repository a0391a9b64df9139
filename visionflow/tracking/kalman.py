"""A constant-velocity Kalman filter over boxes, batched over tracks, with time in seconds.

State per track: ``[cx, cy, a, h, vcx, vcy, va, vh]`` (centre, aspect ratio w/h, height, and
their velocities per second), as in ByteTrack/DeepSORT.  The noise model is ByteTrack's,
scaled to time: its per-frame process noise at a reference rate of 30 frames/s, accumulated
over ``dt`` seconds, so a seq gap (dropped frames) widens the uncertainty as it should.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
REF_FPS = 30.0
_W_POS = 1.0 / 20  # ByteTrack's std weights, relative to the box height
_W_VEL = 1.0 / 640  # ByteTrack's 1/160, lowered: see visionflow.tracking.bytetrack
_W_VEL_INIT = 1.0 / 160  # a new track's velocity is as uncertain as in ByteTrack
_DIAG = np.arange(8)


def xyxy_to_xyah(boxes: Array) -> Array:
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    columns = (boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h)
    return _columns(columns, len(boxes))


def xyah_to_xyxy(state: Array) -> Array:
    cx, cy, a, h = state[:, 0], state[:, 1], state[:, 2], state[:, 3]
    w = a * h
    return _columns((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), len(state))


def _columns(columns: tuple[Array, ...], n: int) -> Array:
    """``np.stack(columns, axis=1)`` (the same dtype), written column by column: cheaper for
    the few rows of a frame."""
    out: Array = np.empty((n, len(columns)), np.result_type(*columns))
    for i, column in enumerate(columns):
        out[:, i] = column
    return out


def _std(h: Array, pos: float, vel: float) -> Array:
    """Per-track standard deviations of the 8 state entries ``[N, 8]``."""
    out = np.empty((len(h), 8))
    out[:, [0, 1, 3]] = (pos * h)[:, None]
    out[:, [4, 5, 7]] = (vel * h)[:, None]
    out[:, 2], out[:, 6] = 1e-2, 1e-5 * REF_FPS
    return out


def initiate(measurements: Array) -> tuple[Array, Array]:
    """New tracks from ``[N, 4]`` xyah measurements: means ``[N, 8]``, covariances ``[N, 8, 8]``."""
    n = len(measurements)
    mean = np.concatenate([measurements, np.zeros((n, 4))], axis=1)
    h = measurements[:, 3]
    std = _std(h, 2 * _W_POS, 10 * _W_VEL_INIT * REF_FPS)
    cov = np.zeros((n, 8, 8))
    idx = np.arange(8)
    cov[:, idx, idx] = std**2
    return mean, cov


def predict(mean: Array, cov: Array, dt: float) -> tuple[Array, Array]:
    """Move every track ``dt`` seconds ahead."""
    if len(mean) == 0 or dt <= 0:
        return mean, cov
    F = _transition(dt)
    steps = dt * REF_FPS
    h = mean[:, 3]
    std = _std(h, _W_POS, _W_VEL * REF_FPS)
    new_mean = mean @ F.T
    new_cov = F @ cov @ F.T
    new_cov[:, _DIAG, _DIAG] += std**2 * steps  # the process noise Q (diagonal)
    return new_mean, new_cov


@functools.lru_cache(maxsize=64)
def _transition(dt: float) -> Array:
    """The constant-velocity transition over ``dt`` seconds (read-only: cached, a stream's
    frames are mostly the same time apart)."""
    F = np.eye(8)
    F[[0, 1, 2, 3], [4, 5, 6, 7]] = dt
    F.flags.writeable = False
    return F


def update(mean: Array, cov: Array, measurements: Array) -> tuple[Array, Array]:
    """Correct ``[K, 8]`` tracks with their ``[K, 4]`` xyah measurements."""
    if len(mean) == 0:
        return mean, cov
    h = mean[:, 3]
    R = np.zeros((len(mean), 4, 4))
    R[:, [0, 1, 3], [0, 1, 3]] = ((_W_POS * h) ** 2)[:, None]
    R[:, 2, 2] = 1e-1**2
    # the measurement picks the state's first 4 entries (H = [I 0]): H P H' and P H' are
    # blocks of P
    S = cov[:, :4, :4] + R  # [K, 4, 4]
    PHt = cov[:, :, :4]  # [K, 8, 4]
    gain = np.linalg.solve(S, PHt.transpose(0, 2, 1)).transpose(0, 2, 1)  # [K, 8, 4]
    innovation = measurements - mean[:, :4]
    new_mean = mean + np.einsum("kij,kj->ki", gain, innovation)
    new_cov = cov - gain @ S @ gain.transpose(0, 2, 1)
    return new_mean, new_cov
