from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_until
from visionflow.config import parse_config
from visionflow.engines import EngineCapabilities, Thresholds, create_engine
from visionflow.engines.ort import OnnxRuntimeConfig, stage_network_input
from visionflow.errors import ConfigError, EngineError, ModelError
from visionflow.models import DEMO_MODEL, resolve_model
from visionflow.pipeline.letterbox import letterbox_image, to_network_input
from visionflow.pipeline.postprocess import decode_output, detections_for_frame
from visionflow.scenes.generator import SceneGenerator, SceneSpec


def test_demo_model_resolves_with_classes_threshold_and_size():
    model = resolve_model(parse_config({}))
    assert model.class_names == ("person", "car", "bicycle")
    assert model.input_size == (320, 320) and 0 < model.conf_threshold < 1
    assert DEMO_MODEL.stat().st_size <= 5 * 1024 * 1024


def test_dynamic_batch_gives_identical_per_image_output():
    with create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 8) as engine:
        x = np.random.default_rng(0).random((3, 3, 320, 320), dtype=np.float32)
        batched = engine.infer(x)
        single = engine.infer(x[1:2])
    assert batched.shape == (3, 7, 2100) and engine.info.num_classes == 3
    np.testing.assert_allclose(batched[1], single[0], atol=1e-4)


@pytest.mark.parametrize(("spin", "entry"), [(False, "0"), (True, "1")])
def test_intra_op_threads_sleep_between_operators_unless_told_to_spin(spin, entry):
    with create_engine(OnnxRuntimeConfig(spin=spin), DEMO_MODEL, 1) as engine:
        options = engine._session.get_session_options()  # type: ignore[attr-defined]
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry


def test_demo_model_finds_the_generated_objects():
    image, truth = SceneGenerator(SceneSpec(640, 360, seed=99), horizon_s=30).render(200)
    canvas, lb = letterbox_image(image, 320, 320)
    model = resolve_model(parse_config({}))
    with create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 1) as engine:
        out = engine.infer(to_network_input(canvas[None]))
    dets = detections_for_frame(out[0], lb, model.class_names, model.conf_threshold, 0.45, 100)
    visible = [t for t in truth if not t.ignorable]
    found = sum(
        any(
            d.class_id == t.class_id and abs(d.x1 - t.x1) < 15 and abs(d.y2 - t.y2) < 15
            for d in dets
        )
        for t in visible
    )
    assert visible and found >= len(visible) - 1, (dets, visible)


def test_bad_model_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        create_engine(OnnxRuntimeConfig(), bad, 1)
    with pytest.raises(ModelError, match="not found"):
        create_engine(OnnxRuntimeConfig(), tmp_path / "none.onnx", 1)
    with pytest.raises(ConfigError, match="model file not found"):
        resolve_model(parse_config({"model": {"path": str(tmp_path / "none.onnx")}}))
    with pytest.raises(ConfigError, match=r"3 classes"):
        resolve_model(parse_config({"model": {"class_names": ["a"]}}))
    assert Path(DEMO_MODEL).with_suffix(".json").is_file()


class DeviceFrame:
    """Looks like a frame in GPU memory (``__cuda_array_interface__``); never dereferenced."""

    __cuda_array_interface__ = {  # noqa: RUF012 - read-only here
        "shape": (320, 320, 3),
        "typestr": "|u1",
        "data": (0, True),
        "version": 3,
    }


def _frames(count: int) -> list[np.ndarray]:
    scene = SceneGenerator(SceneSpec(640, 360, seed=7), horizon_s=30)
    return [letterbox_image(scene.render(i * 37)[0], 320, 320)[0] for i in range(count)]


@pytest.mark.parametrize("inflight", [1, 2])
def test_detect_is_submit_result_and_matches_infer_plus_cpu_decode(inflight):
    frames = _frames(3)
    t = Thresholds(0.5, 0.45, 100)
    with create_engine(OnnxRuntimeConfig(inflight=inflight), DEMO_MODEL, 4) as engine:
        # host frames, ``inflight`` batches at once
        assert engine.capabilities == EngineCapabilities(max_inflight=inflight)
        expected = [
            decode_output(o, t.conf, t.iou, t.max_detections)
            for o in engine.infer(to_network_input(np.stack(frames)))
        ]
        pending = engine.submit(frames, t)
        if inflight == 1:
            assert pending.done()  # synchronous: finished inside submit
        for frame in frames:
            frame[:] = 0  # the engine copied the frames: changing them now changes nothing
        detected = pending.result()
        assert engine.detect([], t) == []
        again = engine.detect(_frames(3), t)
    assert sum(len(b) for b, _, _ in detected) >= 3
    for got in (detected, again):
        for (eb, es, ec), (gb, gs, gc) in zip(expected, got, strict=True):
            assert np.allclose(eb, gb) and np.allclose(es, gs) and np.array_equal(ec, gc)


def test_batches_the_backend_cannot_take_are_clear_engine_errors():
    t = Thresholds(0.5, 0.45, 100)
    with create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 2) as engine:
        with pytest.raises(EngineError, match="cannot read frames in GPU memory"):
            engine.detect([np.zeros((320, 320, 3), np.uint8), DeviceFrame()], t)
        with pytest.raises(EngineError, match=r"frame 0 is <f4 \(320, 320, 3\)"):
            engine.detect([np.zeros((320, 320, 3), np.float32)], t)
        with pytest.raises(EngineError, match=r"frame 1 is \|u1 \(240, 320, 3\)"):
            engine.detect([np.zeros((320, 320, 3), np.uint8), np.zeros((240, 320, 3), np.uint8)], t)
        with pytest.raises(EngineError, match="exceeds max_batch 2"):
            engine.detect(_frames(3), t)
    with pytest.raises(ValueError, match="thresholds"):
        Thresholds(1.5, 0.45, 100)


class _Gate:
    """Wraps an engine's ``infer`` so that a batch waits (on the engine's thread) until the
    test lets it go, and records which thread ran it."""

    def __init__(self, infer):
        self.infer, self.go, self.threads = infer, threading.Event(), []
        self.entered = threading.Event()

    def __call__(self, batch):
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.go.wait(10), "the test never let the batch go"
        return self.infer(batch)


def test_with_two_in_flight_submit_returns_while_the_batch_runs_and_results_keep_order():
    t = Thresholds(0.5, 0.45, 100)
    with create_engine(OnnxRuntimeConfig(inflight=2), DEMO_MODEL, 4) as engine:
        other = _frames(4)[3:]  # not the first batch's first frame: each slot its own input
        want = [engine.detect(_frames(3), t), engine.detect(other, t)]
        gate = _Gate(engine.infer)
        engine.infer = gate  # type: ignore[method-assign]
        first, second = engine.submit(_frames(3), t), engine.submit(other, t)
        assert gate.entered.wait(10), "the first batch never started"
        assert not first.done() and not second.done()  # submit did not wait for the model
        with pytest.raises(EngineError, match=r"2 batch\(es\) already in flight"):
            engine.submit(_frames(1), t)  # the contract: at most max_inflight pending
        with pytest.raises(EngineError, match="submit order"):
            second.result()  # the oldest first
        gate.go.set()
        got = [first.result(), second.result()]
        assert all(name.startswith("onnxruntime") for name in gate.threads)
    for w, g in zip(want, got, strict=True):
        for (wb, ws, wc), (gb, gs, gc) in zip(w, g, strict=True):
            assert np.array_equal(wb, gb) and np.array_equal(ws, gs) and np.array_equal(wc, gc)


def test_a_batch_that_fails_on_the_engine_thread_fails_its_result_and_frees_its_slot():
    t = Thresholds(0.5, 0.45, 100)
    with create_engine(OnnxRuntimeConfig(inflight=2), DEMO_MODEL, 4) as engine:
        infer = engine.infer

        def broken(batch):
            raise RuntimeError("onnxruntime: bad things")

        engine.infer = broken  # type: ignore[method-assign]
        failed = engine.submit(_frames(1), t)
        with pytest.raises(RuntimeError, match="bad things"):
            failed.result()
        with pytest.raises(RuntimeError, match="bad things"):
            failed.result()  # a second call: the same error, not a hang
        engine.infer = infer  # type: ignore[method-assign]
        after = [engine.submit(_frames(1), t) for _ in range(2)]  # both slots free again
        assert all(len(p.result()) == 1 for p in after)


def test_closing_with_batches_pending_finishes_the_running_one_and_fails_the_rest():
    t = Thresholds(0.5, 0.45, 100)
    engine = create_engine(OnnxRuntimeConfig(inflight=2), DEMO_MODEL, 4)
    gate = _Gate(engine.infer)
    engine.infer = gate  # type: ignore[method-assign]
    running, queued = engine.submit(_frames(1), t), engine.submit(_frames(1), t)
    assert gate.entered.wait(10), "the first batch never started"
    closing = threading.Thread(target=engine.close)
    closing.start()  # cancels the queued batch, then waits for the running one
    wait_until(queued.done, 10, "close() never cancelled the queued batch", interval=0.01)
    assert not running.done()
    gate.go.set()
    closing.join(10)
    assert not closing.is_alive(), "close() did not return"
    assert len(running.result()) == 1
    with pytest.raises(EngineError, match="closed before this batch ran"):
        queued.result()
    with pytest.raises(EngineError, match="the engine is closed"):
        engine.submit(_frames(1), t)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_staged_network_input_is_to_network_input_exactly(dtype):
    frames = _frames(3)
    staging = np.full((4, 3, 320, 320), np.nan, np.dtype(dtype))
    batch = stage_network_input(staging, frames)
    assert batch.shape == (3, 3, 320, 320) and np.shares_memory(batch, staging)
    assert np.array_equal(batch, to_network_input(np.stack(frames), dtype))
    assert np.isnan(staging[3]).all()  # rows past the batch untouched


def test_with_two_in_flight_the_engine_thread_runs_only_the_model(monkeypatch):
    import visionflow.engines.ort as ort
    import visionflow.pipeline.postprocess as postprocess

    threads: dict[str, list[str]] = {"staged": [], "decoded": []}

    def on_thread(name, fn):
        def recording(*args, **kwargs):
            threads[name].append(threading.current_thread().name)
            return fn(*args, **kwargs)

        return recording

    monkeypatch.setattr(ort, "stage_network_input", on_thread("staged", stage_network_input))
    monkeypatch.setattr(
        postprocess, "decode_output", on_thread("decoded", postprocess.decode_output)
    )
    frames = _frames(2)
    t = Thresholds(0.9, 0.45, 1)  # the batch's own thresholds reach the decode
    with create_engine(OnnxRuntimeConfig(inflight=2), DEMO_MODEL, 4) as engine:
        want = [
            decode_output(o, 0.9, 0.45, 1) for o in engine.infer(to_network_input(np.stack(frames)))
        ]
        gate = _Gate(engine.infer)
        engine.infer = gate  # type: ignore[method-assign]
        pending = engine.submit(frames, t)
        gate.go.set()
        got = pending.result()
    here = threading.current_thread().name
    assert gate.threads and all(n.startswith("onnxruntime") for n in gate.threads)
    assert threads == {"staged": [here], "decoded": [here] * 2}  # the worker's thread
    assert [len(b) for b, _, _ in got] == [1, 1]  # max_detections 1
    for (wb, ws, wc), (gb, gs, gc) in zip(want, got, strict=True):
        assert np.array_equal(wb, gb) and np.array_equal(ws, gs) and np.array_equal(wc, gc)
