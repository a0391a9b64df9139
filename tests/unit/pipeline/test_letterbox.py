from __future__ import annotations

import numpy as np

from visionflow.pipeline.letterbox import (
    PAD_VALUE,
    letterbox_geometry,
    letterbox_image,
    paste_letterboxed,
    to_network_input,
    unletterbox_boxes,
)


def test_geometry_of_a_wide_frame():
    lb = letterbox_geometry(1920, 1080, 640, 640)
    assert lb.scale == 640 / 1920
    assert (lb.scaled_w, lb.scaled_h, lb.pad_x, lb.pad_y) == (640, 360, 0, 140)


def test_geometry_of_a_tall_frame():
    lb = letterbox_geometry(720, 1280, 320, 320)
    assert (lb.scaled_w, lb.scaled_h, lb.pad_x, lb.pad_y) == (180, 320, 70, 0)


def test_boxes_map_back_exactly_and_are_clipped():
    lb = letterbox_geometry(1920, 1080, 640, 640)
    net = np.array([[100, 140, 200, 240], [-10, 100, 50, 700]], np.float32)
    out = unletterbox_boxes(net, lb)
    np.testing.assert_allclose(out[0], [300, 0, 600, 300], atol=1e-4)
    np.testing.assert_allclose(out[1], [0, 0, 150, 1080], atol=1e-4)


def test_paste_fills_padding_and_image_lands_in_the_middle():
    lb = letterbox_geometry(40, 20, 32, 32)
    dst = np.zeros((32, 32, 3), np.uint8)
    paste_letterboxed(dst, np.full((lb.scaled_h, lb.scaled_w, 3), 7, np.uint8), lb)
    assert (dst[: lb.pad_y] == PAD_VALUE).all() and (
        dst[lb.pad_y + lb.scaled_h :] == PAD_VALUE
    ).all()
    assert (dst[lb.pad_y : lb.pad_y + lb.scaled_h] == 7).all()


def test_letterbox_image_keeps_content_position():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 150:190] = 255  # a white block right of centre
    canvas, lb = letterbox_image(image, 64, 64)
    ys, xs = np.nonzero(canvas[..., 0] > 200)
    assert lb.pad_y == 16
    assert abs(xs.mean() / lb.scale - 170) < 3 and abs((ys.mean() - lb.pad_y) / lb.scale - 50) < 3


def test_network_input_is_nchw_unit_range():
    x = to_network_input(np.full((2, 4, 5, 3), 255, np.uint8))
    assert x.shape == (2, 3, 4, 5) and x.dtype == np.float32 and float(x.max()) == 1.0
    assert to_network_input(np.zeros((1, 2, 2, 3), np.uint8), "float16").dtype == np.float16
