"""Plane geometry for zones and lines (pure functions over points ``(x, y)``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2


def cross(o: Point, a: Point, b: Point) -> float:
    """z of (a - o) x (b - o): > 0 when ``b`` is right of o->a on the image (y down)."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Whether segments a-b and c-d intersect (touching counts)."""
    d1, d2 = cross(c, d, a), cross(c, d, b)
    d3, d4 = cross(a, b, c), cross(a, b, d)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True

    def on(p: Point, q: Point, r: Point) -> bool:  # r on segment p-q, given collinear
        return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(
            p[1], q[1]
        )

    return (
        (d1 == 0 and on(c, d, a))
        or (d2 == 0 and on(c, d, b))
        or (d3 == 0 and on(a, b, c))
        or (d4 == 0 and on(a, b, d))
    )


def polygon_area(points: Sequence[Point]) -> float:
    """Unsigned area (shoelace)."""
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


@dataclass(frozen=True, eq=False)
class Polygon:
    """A polygon's edges, worked out once for :meth:`contains` (a zone is tested every frame)."""

    x1: npt.NDArray[np.float64]  # [K] start of each edge
    y1: npt.NDArray[np.float64]
    dx: npt.NDArray[np.float64]  # [K] end - start
    dy: npt.NDArray[np.float64]
    y2: npt.NDArray[np.float64]  # [K] end's y

    @classmethod
    def of(cls, polygon: npt.NDArray[np.float64]) -> Polygon:
        """From ``[K, 2]`` vertices."""
        x1, y1 = polygon[:, 0].copy(), polygon[:, 1].copy()
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        return cls(x1, y1, x2 - x1, y2 - y1, y2)

    def contains(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Even-odd rule for ``[N, 2]`` points (vectorised)."""
        x, y = points[:, 0:1], points[:, 1:2]
        straddles = (self.y1 > y) != (self.y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at_x = self.x1 + (y - self.y1) * self.dx / self.dy
        hits = straddles & (x < at_x)
        inside: npt.NDArray[np.bool_] = (hits.sum(axis=1) % 2) == 1
        return inside


def anchor_of(box: Box, bottom: bool, size: tuple[float, float]) -> Point:
    """The point of ``box`` that is in a zone or crosses a line: its bottom centre (``bottom``,
    the feet) or its centre, taken inside the frame of ``size`` (width, height): the feet of a
    box cut by the frame's bottom edge lie on it, in no pixel, and move to the middle of the
    last row of pixels, so a zone drawn to that edge holds them (:meth:`Polygon.contains`
    leaves points on a bottom or right edge out; a point past the right edge, which a box
    clipped to the frame never has, likewise moves into the last column).  Top and left edges
    need nothing: points on them count as inside."""
    x1, y1, x2, y2 = box
    x, y = (x1 + x2) / 2, y2 if bottom else (y1 + y2) / 2
    return min(x, size[0] - 0.5), min(y, size[1] - 0.5)


def line_length(start: Point, end: Point) -> float:
    """Length of the segment start-end."""
    return float(np.hypot(end[0] - start[0], end[1] - start[1]))


def signed_distance(point: Point, start: Point, end: Point, length: float | None = None) -> float:
    """Distance of ``point`` from the line start->end, > 0 on its right (image, y down);
    ``length``: the line's (:func:`line_length`), where the caller keeps it."""
    length = line_length(start, end) if length is None else length
    return cross(start, end, point) / length


def at_border(box: Box, size: tuple[float, float], edge: float) -> bool:
    """Whether ``box`` is within ``edge`` x the frame's ``size`` (width, height) of a border
    (the scalar of :func:`visionflow.tracking.bytetrack.edge_mask`, for one box)."""
    mx, my = edge * size[0], edge * size[1]
    return box[0] <= mx or box[1] <= my or box[2] >= size[0] - mx or box[3] >= size[1] - my
