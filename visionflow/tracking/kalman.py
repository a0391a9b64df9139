"""A constant-velocity Kalman filter over boxes, batched over tracks, with time in seconds.

State per track: ``[cx, cy, a, h, vcx, vcy, va, vh]`` (centre, aspect ratio w/h, height, and
their velocities per second), as in ByteTrack/DeepSORT.  The noise model is ByteTrack's,
scaled to time: its per-frame process noise at a reference rate of 30 frames/s, accumulated
over ``dt`` seconds, so a seq gap (dropped frames) widens the uncertainty as it should.

The transition, the noises and the measurement never couple two of the four quantities (each
moves with its own velocity; the noises are diagonal; the measurement picks each value), and a
new track's covariance is diagonal: so the 8x8 covariance is four independent 2x2 blocks, one
per quantity, and only those are kept.  A covariance here is ``[N, 3, 4]``: per track, per
quantity, the value's variance, the value/velocity covariance and the velocity's variance
(:func:`full_covariance` gives the 8x8 matrices).  The same filter as ByteTrack's matrix
form, with a few numpy calls on ``[N, 4]`` arrays instead of batched 8x8 products and solves.
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
_ASPECT_STD = 1e-2  # the aspect ratio's noise is absolute, not relative to the height
_ASPECT_VEL_STD = 1e-5 * REF_FPS
_MEASURE_ASPECT_STD = 1e-1


def _read_only(a: Array) -> Array:
    """``a``, made read-only (module constants and cached steps are shared)."""
    a.flags.writeable = False
    return a


# the measurement noise's variance per quantity: height**2 x _R_SCALE + _R_FIXED
_R_SCALE = _read_only(np.array([_W_POS**2, _W_POS**2, 0.0, _W_POS**2]))
_R_FIXED = _read_only(np.array([0.0, 0.0, _MEASURE_ASPECT_STD**2, 0.0]))


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


def empty_covariance() -> Array:
    """No tracks' covariances (``[0, 3, 4]``)."""
    return np.zeros((0, 3, 4))


def initiate(measurements: Array) -> tuple[Array, Array]:
    """New tracks from ``[N, 4]`` xyah measurements: means ``[N, 8]``, covariances
    ``[N, 3, 4]`` (diagonal: no value/velocity covariance yet)."""
    n = len(measurements)
    mean = np.concatenate([measurements, np.zeros((n, 4))], axis=1)
    h = measurements[:, 3][:, None]
    cov = np.zeros((n, 3, 4))
    cov[:, 0] = (2 * _W_POS * h) ** 2
    cov[:, 0, 2] = _ASPECT_STD**2
    cov[:, 2] = (10 * _W_VEL_INIT * REF_FPS * h) ** 2
    cov[:, 2, 2] = _ASPECT_VEL_STD**2
    return mean, cov


def predict(mean: Array, cov: Array, dt: float) -> tuple[Array, Array]:
    """Move every track ``dt`` seconds ahead."""
    if len(mean) == 0 or dt <= 0:
        return mean, cov
    move, noise_scale, noise_fixed, transition_t = _step(dt)
    h2 = mean[:, 3] ** 2
    # per quantity [p, c, v] -> [p + 2 dt c + dt^2 v, c + dt v, v], plus the process noise
    new_cov = move @ cov + (h2[:, None, None] * noise_scale + noise_fixed)
    return mean @ transition_t, new_cov


@functools.lru_cache(maxsize=64)
def _step(dt: float) -> tuple[Array, Array, Array, Array]:
    """What moving ``dt`` seconds ahead does (read-only: cached, a stream's frames are mostly
    the same time apart): the 3x3 map of each quantity's ``[p, c, v]``; the process noise
    over ``dt`` as ``[3, 4]`` terms scaled by the height squared and fixed ones; the 8x8
    transition, transposed (means are rows)."""
    steps = dt * REF_FPS  # ByteTrack's per-frame noise, accumulated
    move = np.array([[1.0, 2 * dt, dt * dt], [0.0, 1.0, dt], [0.0, 0.0, 1.0]])
    scale, fixed = np.zeros((3, 4)), np.zeros((3, 4))
    scale[0] = _W_POS**2 * steps
    scale[2] = (_W_VEL * REF_FPS) ** 2 * steps
    scale[:, 2] = 0.0
    fixed[0, 2] = _ASPECT_STD**2 * steps
    fixed[2, 2] = _ASPECT_VEL_STD**2 * steps
    transition = np.eye(8)
    transition[[0, 1, 2, 3], [4, 5, 6, 7]] = dt
    return (
        _read_only(move),
        _read_only(scale),
        _read_only(fixed),
        _read_only(transition.T.copy()),
    )


def update(mean: Array, cov: Array, measurements: Array) -> tuple[Array, Array]:
    """Correct ``[K, 8]`` tracks (means, and ``[K, 3, 4]`` covariance blocks) with their
    ``[K, 4]`` xyah measurements."""
    if len(mean) == 0:
        return mean, cov
    r = mean[:, 3:4] ** 2 * _R_SCALE + _R_FIXED  # [K, 4] the measurement's variance
    s = cov[:, 0] + r  # the innovation's variance
    gain = cov[:, :2] / s[:, None]  # [K, 2, 4]: for each value and its velocity
    innovation = measurements - mean[:, :4]
    new_mean = mean + (gain * innovation[:, None]).reshape(len(mean), 8)
    # P - K S K', blockwise: p r / s, c r / s, v - c^2 / s (p r / s rather than p - p^2 / s,
    # which cancels where the measurement is far more precise than the prediction)
    new_cov = np.empty_like(cov)
    new_cov[:, :2] = cov[:, :2] * (r / s)[:, None]
    new_cov[:, 2] = cov[:, 2] - gain[:, 1] * cov[:, 1]
    return new_mean, new_cov


def full_covariance(cov: Array) -> Array:
    """The ``[N, 8, 8]`` covariance matrices of ``[N, 3, 4]`` blocks (for checks and
    readers used to the matrix form)."""
    out = np.zeros((len(cov), 8, 8))
    values, velocities = np.arange(4), np.arange(4, 8)
    out[:, values, values] = cov[:, 0]
    out[:, values, velocities] = cov[:, 1]
    out[:, velocities, values] = cov[:, 1]
    out[:, velocities, velocities] = cov[:, 2]
    return out
