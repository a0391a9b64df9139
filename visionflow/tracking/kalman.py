"""A constant-velocity Kalman filter over boxes, batched over tracks, with time in seconds.

State per track: ``[cx, cy, a, h, vcx, vcy, va, vh]`` (centre, aspect ratio w/h, height, and
their velocities per second), as in ByteTrack/DeepSORT.  The noise model is ByteTrack's,
scaled to time: its per-frame process noise at a reference rate of 30 frames/s, accumulated
over ``dt`` seconds, so a seq gap (dropped frames) widens the uncertainty as it should.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
REF_FPS = 30.0
_W_POS = 1.0 / 20  # ByteTrack's std weights, relative to the box height
_W_VEL = 1.0 / 640  # ByteTrack's 1/160, lowered: see visionflow.tracking.bytetrack
_W_VEL_INIT = 1.0 / 160  # a new track's velocity is as uncertain as in ByteTrack


def xyxy_to_xyah(boxes: Array) -> Array:
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], axis=1)


def xyah_to_xyxy(state: Array) -> Array:
    cx, cy, a, h = state[:, 0], state[:, 1], state[:, 2], state[:, 3]
    w = a * h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _std(h: Array, pos: float, vel: float) -> Array:
    """Per-track standard deviations of the 8 state entries ``[N, 8]``."""
    a, va = np.full(len(h), 1e-2), np.full(len(h), 1e-5 * REF_FPS)
    return np.stack([pos * h, pos * h, a, pos * h, vel * h, vel * h, va, vel * h], axis=1)


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
    F = np.eye(8)
    F[[0, 1, 2, 3], [4, 5, 6, 7]] = dt
    steps = dt * REF_FPS
    h = mean[:, 3]
    std = _std(h, _W_POS, _W_VEL * REF_FPS)
    Q = np.zeros_like(cov)
    idx = np.arange(8)
    Q[:, idx, idx] = std**2 * steps
    new_mean = mean @ F.T
    new_cov = F @ cov @ F.T + Q
    return new_mean, new_cov


def update(mean: Array, cov: Array, measurements: Array) -> tuple[Array, Array]:
    """Correct ``[K, 8]`` tracks with their ``[K, 4]`` xyah measurements."""
    if len(mean) == 0:
        return mean, cov
    H = np.eye(4, 8)
    h = mean[:, 3]
    std = np.stack([_W_POS * h, _W_POS * h, np.full(len(h), 1e-1), _W_POS * h], axis=1)
    R = np.zeros((len(mean), 4, 4))
    idx = np.arange(4)
    R[:, idx, idx] = std**2
    S = H @ cov @ H.T + R  # [K, 4, 4]
    PHt = cov @ H.T  # [K, 8, 4]
    gain = np.linalg.solve(S, PHt.transpose(0, 2, 1)).transpose(0, 2, 1)  # [K, 8, 4]
    innovation = measurements - mean[:, :4]
    new_mean = mean + np.einsum("kij,kj->ki", gain, innovation)
    new_cov = cov - gain @ S @ gain.transpose(0, 2, 1)
    return new_mean, new_cov
