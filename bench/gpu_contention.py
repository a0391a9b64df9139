#!/usr/bin/env python3
"""What limits one GPU's decode + inference: NVDEC, the GIL, or two CUDA contexts sharing SMs.

    python bench/gpu_contention.py --out DIR [--work /tmp/vf-gpu-work] [--seconds 6]

No pipeline, no Redis: the pieces of the NVDEC data plane alone, flat out, on GPU 0.

* ``decode`` processes: N threads, each with its own PyNvVideoCodec decoder on its own
  non-blocking CUDA stream (as ``visionflow.streams.nvdec`` does), feeding the 1080p30 H.264
  clip (``bench/gpu_bench.py``'s) from memory in a loop; optionally each frame letterboxed by the
  fused NV12 kernel into a 640x640 slot (``letterbox``), as an ingest process does.
* a ``model`` process: the torch-cuda engine's YOLOv8n-architecture forward (fp16, CUDA graph
  replay) at batch 64, as an inference worker runs it; optionally with decode threads of its
  own (one CUDA context for both: ``model+decode``).

Scenarios run one after another while the model process stays up (paused when a scenario has
no model); each reports decoded frames/s and model images/s over the same window.  Comparing
"decode alone" with "decode + model" in another process (two contexts) and in the same process
(one context) says whether time-slicing between contexts costs the card, and "decode" vs
"decode + letterbox" what the letterbox kernel launched from the ingest context costs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_scale import _packets  # noqa: E402

BATCH = 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Decoders:
    """``threads`` decoding threads in this process; ``counts[i]`` frames decoded by thread i."""

    def __init__(self, annexb: Path, threads: int, letterbox: bool) -> None:
        self.packets = _packets(annexb)
        self.counts = [0] * threads
        self.letterbox = letterbox
        self.stop = threading.Event()
        self.ready = threading.Barrier(threads + 1)
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]
        for t in self.threads:
            t.start()
        self.ready.wait(timeout=120)

    def _run(self, i: int) -> None:
        import numpy as np
        import PyNvVideoCodec as nvc
        import torch

        from visionflow.pipeline.letterbox import letterbox_geometry
        from visionflow.streams.nvdec import _launch, _primary_context, nv12_planes

        ctx = _primary_context(0)
        stream = torch.cuda.Stream(device=0)
        dec = nvc.CreateDecoder(
            gpuid=0,
            codec=nvc.cudaVideoCodec.H264,
            cudacontext=ctx,
            cudastream=stream.cuda_stream,
            usedevicememory=True,
            latency=nvc.DisplayDecodeLatencyType.LOW,
        )
        dst = torch.empty((640, 640, 3), dtype=torch.uint8, device=0)
        lb = letterbox_geometry(1920, 1080, 640, 640)
        arrays = [np.frombuffer(b, np.uint8) for b in self.packets]
        self.ready.wait()
        try:
            while not self.stop.is_set():
                for a in arrays:
                    pd = nvc.PacketData()
                    pd.bsl_data, pd.bsl = a.ctypes.data, a.size
                    pd.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE
                    for frame in dec.Decode(pd):
                        if self.letterbox:
                            planes = nv12_planes(frame)
                            assert planes is not None
                            y, uv, pitch, _, _ = planes
                            _launch(stream.device, y, uv, pitch, lb, dst, stream.cuda_stream)
                        stream.synchronize()
                        self.counts[i] += 1
                    if self.stop.is_set():
                        break
        except Exception as exc:  # reported, never silent
            self.errors.append(repr(exc))

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def _decode_main(annexb: str, threads: int, letterbox: bool, conn: Any) -> None:
    d = Decoders(Path(annexb), threads, letterbox)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg == "count":
            conn.send((time.monotonic(), sum(d.counts), d.errors[:3]))
        elif msg == "stop":
            d.close()
            conn.send("stopped")
            return


class Model:
    """The engine's forward at batch 64 by CUDA-graph replay, in a thread that runs while
    ``running`` is set; ``images`` counts images done."""

    def __init__(self, model: Path) -> None:
        import torch

        from visionflow.engines.torch_cuda import TorchCudaConfig, TorchCudaEngine

        self.torch = torch
        self.engine = TorchCudaEngine(TorchCudaConfig(), model, max_batch=BATCH)
        self.slot = self.engine._ring.slots[0]
        for _ in range(10):
            self.engine._forward_static(self.slot, BATCH)
        torch.cuda.synchronize()
        self.images = 0
        self.running = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.running.wait(timeout=0.1):
                continue
            self.engine._forward_static(self.slot, BATCH)
            self.torch.cuda.current_stream().synchronize()
            self.images += BATCH


def _model_main(model: str, annexb: str, conn: Any) -> None:
    m = Model(Path(model))
    own: Decoders | None = None
    conn.send("ready")
    while True:
        msg, arg = conn.recv()
        if msg == "run":
            m.running.set() if arg else m.running.clear()
            conn.send("ok")
        elif msg == "decode":  # decode threads in this process (one context for both)
            threads, letterbox = arg
            own = Decoders(Path(annexb), threads, letterbox) if threads else None
            conn.send("ok")
        elif msg == "undecode":
            if own is not None:
                own.close()
            own = None
            conn.send("ok")
        elif msg == "count":
            decoded = sum(own.counts) if own is not None else 0
            errors = own.errors[:3] if own is not None else []
            conn.send((time.monotonic(), m.images, decoded, errors))
        elif msg == "stop":
            m.stop.set()
            conn.send("stopped")
            return


def _ask(conn: Any, msg: Any, timeout: float = 180) -> Any:
    conn.send(msg)
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer to {msg!r} in {timeout:.0f}s")
    return conn.recv()


def scenario(
    ctx: Any,
    model_conn: Any,
    annexb: Path,
    name: str,
    decode: list[tuple[int, bool]],
    model: bool,
    own: tuple[int, bool] | None,
    seconds: float,
) -> dict[str, Any]:
    """One window: ``decode`` processes (threads, letterbox) beside the model process, the
    model running or paused, ``own`` decode threads inside the model process."""
    procs = []
    for threads, letterbox in decode:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_decode_main, args=(str(annexb), threads, letterbox, child))
        p.start()
        procs.append((p, parent))
    for _p, conn in procs:
        if not conn.poll(180) or conn.recv() != "ready":
            raise RuntimeError(f"{name}: a decode process did not start")
    if own is not None:
        _ask(model_conn, ("decode", own))
    _ask(model_conn, ("run", model))
    time.sleep(2.0)  # warm-up: every decoder past its first GOP, the model's clock settled
    starts = [_ask(conn, "count") for _, conn in procs]
    m0 = _ask(model_conn, ("count", None))
    time.sleep(seconds)
    ends = [_ask(conn, "count") for _, conn in procs]
    m1 = _ask(model_conn, ("count", None))
    _ask(model_conn, ("run", False))
    if own is not None:
        _ask(model_conn, ("undecode", None))
    errors = [e for _, _, errs in ends for e in errs] + list(m1[3])
    for p, conn in procs:
        _ask(conn, "stop", 30)
        p.join(timeout=30)
    wall = m1[0] - m0[0]
    decoded = sum((e[1] - s[1]) / (e[0] - s[0]) for s, e in zip(starts, ends, strict=True))
    decoded += (m1[2] - m0[2]) / wall
    row = {
        "scenario": name,
        "decode_processes": [{"threads": t, "letterbox": lb} for t, lb in decode],
        "model": model,
        "decode_in_model_process": own,
        "decoded_fps": round(decoded, 1),
        "model_img_s": round((m1[1] - m0[1]) / wall, 1),
        "errors": errors,
    }
    log(json.dumps(row))
    return row


SCENARIOS: list[tuple[str, list[tuple[int, bool]], bool, tuple[int, bool] | None]] = [
    ("model alone", [], True, None),
    ("decode 96 threads", [(96, False)], False, None),
    ("decode 96 + letterbox", [(96, True)], False, None),
    ("decode 128 + letterbox", [(128, True)], False, None),
    ("decode 2 procs x 64 + letterbox", [(64, True), (64, True)], False, None),
    ("decode 96 (other process) + model", [(96, False)], True, None),
    ("decode 96 + letterbox (other process) + model", [(96, True)], True, None),
    ("decode 96 + letterbox (model's process) + model", [], True, (96, True)),
    ("decode 96 (model's process) + model", [], True, (96, False)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vf-gpu-work"))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--only", default="", help="comma-separated scenario numbers (0-based)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    from bench.common import machine
    from bench.gpu_bench import _model, clip_paths, section_clips

    _mp4, annexb = clip_paths(args.work)
    if not annexb.is_file():
        section_clips(args.work)
    model = _model(args.work)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    mproc = ctx.Process(target=_model_main, args=(str(model), str(annexb), child))
    mproc.start()
    if not parent.poll(300) or parent.recv() != "ready":
        raise RuntimeError("the model process did not start")
    picked = {int(i) for i in args.only.split(",") if i.strip()}
    rows = [
        scenario(ctx, parent, annexb, name, decode, run, own, args.seconds)
        for i, (name, decode, run, own) in enumerate(SCENARIOS)
        if not picked or i in picked
    ]
    _ask(parent, ("stop", None), 30)
    mproc.join(timeout=30)
    print(f"\n{'scenario':<50} {'decoded fps':>12} {'model img/s':>12}")
    for r in rows:
        print(f"{r['scenario']:<50} {r['decoded_fps']:>12} {r['model_img_s']:>12}")
    summary = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "batch": BATCH,
        "window_s": args.seconds,
        "rows": rows,
    }
    (args.out / "gpu_contention.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
