#!/usr/bin/env python3
"""Everything issue 4 measures on the lent GPU, in one call.

    python bench/gpu_bench.py --out DIR [--sections env,clips,decode_cpu,...]

Each section runs in its own subprocess with a time limit and writes ``DIR/<section>.json``,
so one failing part (a missing wheel, a driver quirk) never loses the others; a summary table
is printed at the end and ``DIR/gpu_bench.json`` collects everything.

Sections:
  env         GPU, driver, libraries, NVML discovery (visionflow.gpu.discovery)
  clips       a 1080p30 H.264 scene clip (mp4 and Annex-B), rendered with visionflow's generator
  decode_cpu  PyAV decode fps for 1/8/32/64 concurrent streams (one process each)
  decode_nvdec PyNvVideoCodec fed packet by packet from PyAV (the live path), same counts
  decode_dali DALI mixed video decoder on keyframe-aligned 1 s segments, same counts (batched)
  preprocess  GPU letterbox 1080p -> 640x640 fp16 NCHW (torch), batch 32
  infer       YOLOv8n (random weights, scripts/build_yolov8n.py) through visionflow's torch-cuda
              backend: images/s per batch size 1..64, eager vs CUDA graphs in the same run,
              and host-uint8 vs device-frame input to NMS
  decode_probe what ``decode: auto`` measures and picks on this machine
  e2e_*       the visionflow pipeline (torch-cuda worker, valkey-server), streams added in
              steps of 1080p30 until drops: nvdec with frames on the GPU (CUDA IPC), nvdec
              through host memory, CPU decode, DALI; most streams with 0 drops, p50/p99
  baseline    Ultralytics-style loop (capture thread per stream, CPU decode, all streams
              stacked into one batch, same model eager on the same GPU): streams sustained

All figures come from the ``torch-cuda`` backend (PyTorch on CUDA running the ONNX model);
none from TensorRT, which cannot be installed on the lent machines.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_section  # noqa: E402

SECTIONS = [
    "env",
    "clips",
    "infer",
    "preprocess",
    "input_kernel",
    "letterbox_gpu",
    "decode_cpu",
    "decode_nvdec",
    "decode_dali",
    "decode_probe",
    "e2e_nvdec",
    "e2e_nvdec_host",
    "e2e_cpu",
    "e2e_cpu_2w",
    "e2e_nvdec_2w",
    "e2e_dali",
    "e2e_nvdec_settled",
    "baseline",
]
LIMITS = {
    "env": 60,
    "clips": 120,
    "infer": 240,
    "preprocess": 60,
    "input_kernel": 60,
    "letterbox_gpu": 90,
    "decode_cpu": 90,
    "decode_nvdec": 120,
    "decode_dali": 120,
    "decode_probe": 120,
    "e2e_nvdec": 420,
    "e2e_nvdec_host": 330,
    "e2e_cpu": 330,
    "e2e_cpu_2w": 200,
    "e2e_nvdec_2w": 180,
    "e2e_dali": 240,
    "e2e_nvdec_settled": 240,
    "baseline": 150,
}
COUNTS = (1, 8, 32, 64)
CLIP_S = 10.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------- helpers
def clip_paths(work: Path) -> tuple[Path, Path]:
    return work / "scene-1080p30.mp4", work / "scene-1080p30.h264"


def _render(args: tuple[int, int]) -> Any:
    from visionflow.scenes.generator import SceneGenerator, SceneSpec

    start, stop = args
    gen = SceneGenerator(SceneSpec(1920, 1080, seed=42), horizon_s=CLIP_S + 1)
    return [gen.render(i)[0] for i in range(start, stop)]


def section_clips(work: Path) -> dict[str, Any]:
    import av

    mp4, annexb = clip_paths(work)
    n = int(CLIP_S * 30)
    t0 = time.time()
    with mp.get_context("fork").Pool(min(16, os.cpu_count() or 4)) as pool:
        chunks = pool.map(_render, [(i, min(n, i + 20)) for i in range(0, n, 20)])
    frames = [f for chunk in chunks for f in chunk]
    render_s = time.time() - t0
    for path, fmt in ((mp4, "mp4"), (annexb, "h264")):
        with av.open(str(path), "w", format=fmt) as out:
            st = out.add_stream("libx264", rate=30)
            st.width, st.height, st.pix_fmt = 1920, 1080, "yuv420p"
            st.options = {"preset": "ultrafast", "bf": "0", "g": "30", "crf": "23"}
            for i, img in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                vf.pts = i
                out.mux(st.encode(vf))
            out.mux(st.encode(None))
    return {
        "frames": n,
        "render_s": round(render_s, 1),
        "mp4_mb": round(mp4.stat().st_size / 1e6, 1),
    }


def section_env(work: Path) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
        "cpus": os.cpu_count(),
    }
    smi = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,mig.mode.current",
            "--format=csv,noheader",
        ],
        capture_output=True,
        text=True,
    )
    out["nvidia_smi"] = smi.stdout.strip()
    for mod in ("av", "nvidia.dali", "PyNvVideoCodec", "onnx2torch", "redis", "pynvml"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            out[mod] = getattr(m, "__version__", "present")
        except Exception as exc:
            out[mod] = f"missing: {exc}"
    from visionflow.gpu.discovery import discover

    out["slots"] = [s.__dict__ for s in discover()]
    return out


# ---------------------------------------------------------------------------- decode
def _cpu_decoder(path: str, seconds: float, queue: Any) -> None:
    import av

    count, deadline = 0, time.time() + seconds
    while time.time() < deadline:
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for _ in c.decode(s):
                count += 1
                if time.time() >= deadline:
                    break
    queue.put(count)


def _nvdec_decoder(path: str, seconds: float, queue: Any) -> None:
    """Live-path decoder: PyAV demuxes Annex-B packets, PyNvVideoCodec decodes each one."""
    import av
    import numpy as np
    import PyNvVideoCodec as nvc

    dec = nvc.CreateDecoder(
        gpuid=0,
        codec=nvc.cudaVideoCodec.H264,
        usedevicememory=True,
        latency=nvc.DisplayDecodeLatencyType.LOW,
    )
    count, deadline, lat = 0, time.time() + seconds, []
    while time.time() < deadline:
        with av.open(path, format="h264") as c:
            for pkt in c.demux(video=0):
                if pkt.size == 0:
                    continue
                buf = np.frombuffer(bytes(pkt), np.uint8)
                p = nvc.PacketData()
                p.bsl_data, p.bsl = buf.ctypes.data, buf.size
                p.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE
                t0 = time.perf_counter()
                frames = dec.Decode(p)
                if frames:
                    lat.append((time.perf_counter() - t0) * 1000)
                count += len(frames)
                if time.time() >= deadline:
                    break
    queue.put((count, float(np.median(lat)) if lat else None))


def _run_decoders(target: Any, path: Path, n: int, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(str(path), seconds, q)) for _ in range(n)]
    t0 = time.time()
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    wall = time.time() - t0
    frames = sum(r[0] if isinstance(r, tuple) else r for r in results)
    lat = [r[1] for r in results if isinstance(r, tuple) and r[1] is not None]
    out: dict[str, Any] = {
        "streams": n,
        "fps": round(frames / seconds, 1),
        "per_stream_fps": round(frames / seconds / n, 1),
        "wall_s": round(wall, 1),
    }
    if lat:
        out["median_packet_to_frame_ms"] = round(sorted(lat)[len(lat) // 2], 2)
    return out


def section_decode_cpu(work: Path) -> dict[str, Any]:
    mp4, _ = clip_paths(work)
    return {"runs": [_run_decoders(_cpu_decoder, mp4, n, 6.0) for n in COUNTS]}


def section_decode_nvdec(work: Path) -> dict[str, Any]:
    _, annexb = clip_paths(work)
    return {"runs": [_run_decoders(_nvdec_decoder, annexb, n, 6.0) for n in COUNTS]}


def _segments(mp4: Path) -> list[bytes]:
    """Cut the clip into keyframe-aligned 1 s segments, each remuxed into a small mp4."""
    import io

    import av

    segments: list[bytes] = []
    with av.open(str(mp4)) as src:
        vs = src.streams.video[0]
        buf = out = ost = None
        for pkt in src.demux(vs):
            if pkt.dts is None:
                continue
            if pkt.is_keyframe:
                if out is not None:
                    out.close()
                    segments.append(buf.getvalue())
                buf = io.BytesIO()
                out = av.open(buf, "w", format="mp4")
                ost = out.add_stream_from_template(vs)
            pkt.stream = ost
            out.mux(pkt)
        if out is not None:
            out.close()
            segments.append(buf.getvalue())
    return segments


def section_decode_dali(work: Path) -> dict[str, Any]:
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    mp4, _ = clip_paths(work)
    segments = [np.frombuffer(s, np.uint8) for s in _segments(mp4)]
    runs = []
    for n in COUNTS:

        @pipeline_def(batch_size=n, num_threads=4, device_id=0, prefetch_queue_depth=1)
        def pipe() -> Any:
            enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
            return fn.experimental.decoders.video(enc, device="mixed")

        p = pipe()
        p.build()
        i, frames, seg_ms = 0, 0, []
        t_end = time.time() + 6.0
        t0 = time.time()
        while time.time() < t_end:
            batch = [segments[(i + k) % len(segments)] for k in range(n)]
            i += n
            ts = time.perf_counter()
            p.feed_input("enc", batch)
            (out,) = p.run()
            out.as_tensor() if hasattr(out, "as_tensor") else None
            seg_ms.append((time.perf_counter() - ts) * 1000)
            frames += sum(out[k].shape()[0] for k in range(n))
        elapsed = time.time() - t0
        runs.append(
            {
                "streams": n,
                "fps": round(frames / elapsed, 1),
                "per_stream_fps": round(frames / elapsed / n, 1),
                "segment_decode_ms_median": round(float(np.median(seg_ms)), 1),
                "frames_per_segment": int(segments and 30),
            }
        )
        del p
    return {
        "runs": runs,
        "segments": len(segments),
        "added_latency_note": "a segment can only be decoded once its last packet arrived: "
        "1 s (one GOP at 30 fps) + segment decode time",
    }


# ---------------------------------------------------------------------------- compute
def _model(work: Path) -> Path:
    from scripts.build_yolov8n import build

    path = work / "yolov8n-biasinit.onnx"
    if not path.is_file():
        build(path)
    return path


def _device_ms(engine: Any, x: Any, iters: int) -> float:
    import torch

    for _ in range(5):
        engine.forward(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        engine.forward(x)
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end) / iters)


def _wall_ms(fn: Any, iters: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters * 1000


def section_infer(work: Path) -> dict[str, Any]:
    """Eager vs CUDA graphs in the same run, then the two ways frames reach the engine."""
    import numpy as np
    import torch

    from visionflow.engines import Thresholds
    from visionflow.engines.torch_cuda import TorchCudaConfig, TorchCudaEngine

    model = _model(work)
    t0 = time.time()
    eager = TorchCudaEngine(TorchCudaConfig(precision="fp16", cuda_graphs=False), model, 64)
    eager_load = time.time() - t0
    t0 = time.time()
    graphs = TorchCudaEngine(TorchCudaConfig(precision="fp16", cuda_graphs=True), model, 64)
    graphs_load = time.time() - t0
    rows = []
    thresholds = Thresholds(0.5, 0.45, 100)
    for b in (1, 2, 4, 8, 16, 32, 64):
        x = torch.rand(b, 3, 640, 640, device="cuda", dtype=torch.float16)
        iters = max(10, 400 // b)
        e_ms, g_ms = _device_ms(eager, x, iters), _device_ms(graphs, x, iters)
        host = list(np.random.randint(0, 255, (b, 640, 640, 3), np.uint8))
        device = [torch.from_numpy(im).cuda() for im in host]
        h_ms = _wall_ms(lambda h=host: graphs.detect(h, thresholds), 10)
        d_ms = _wall_ms(lambda d=device: graphs.detect(d, thresholds), 10)
        rows.append(
            {
                "batch": b,
                "eager_images_per_s": round(b / e_ms * 1000, 1),
                "graphs_images_per_s": round(b / g_ms * 1000, 1),
                "graphs_vs_eager": round(e_ms / g_ms, 2),
                "host_u8_to_nms_images_per_s": round(b / h_ms * 1000, 1),
                "device_frames_to_nms_images_per_s": round(b / d_ms * 1000, 1),
            }
        )
        log(f"infer b{b}: {rows[-1]}")
    return {
        "backend": graphs.info.device,
        "graph_error": graphs.graph_error,
        "load_s": {"eager": round(eager_load, 1), "graphs": round(graphs_load, 1)},
        "rows": rows,
    }


def section_preprocess(work: Path) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    b = 32
    frames = torch.randint(0, 255, (b, 1080, 1920, 3), dtype=torch.uint8, device="cuda")

    def letterbox(x: torch.Tensor) -> torch.Tensor:
        chw = x.permute(0, 3, 1, 2).half()
        scaled = F.interpolate(chw, size=(360, 640), mode="bilinear", align_corners=False)
        out = torch.full((x.shape[0], 3, 640, 640), 114.0, device="cuda", dtype=torch.float16)
        out[:, :, 140:500, :] = scaled
        return out / 255.0

    for _ in range(5):
        letterbox(frames)
    torch.cuda.synchronize()
    iters = 50
    t0 = time.perf_counter()
    for _ in range(iters):
        letterbox(frames)
    torch.cuda.synchronize()
    fps = b * iters / (time.perf_counter() - t0)
    return {
        "what": "torch: uint8 HWC 1080p on GPU -> bilinear 640x360 -> pad 640x640 fp16 NCHW",
        "batch": b,
        "fps": round(fps, 1),
    }


def section_input_kernel(work: Path) -> dict[str, Any]:
    """The TensorRT backend's NVRTC input kernel (scattered uint8 640x640 frames -> fp16/fp32
    NCHW through a pointer table) against torch's permute+scale, batch 32, same card."""
    import torch

    from visionflow.gpu.cuda import check, runtime
    from visionflow.gpu.kernels import InputKernel

    rt = runtime()
    b, side, iters = 32, 640, 200
    slots = [
        torch.randint(0, 255, (side, side, 3), dtype=torch.uint8, device="cuda") for _ in range(b)
    ]
    table = torch.tensor([t.data_ptr() for t in slots], dtype=torch.int64, device="cuda")
    props = check(rt.cudaGetDeviceProperties(0), "props")
    kernel = InputKernel(props.major, props.minor)
    stream = torch.cuda.current_stream().cuda_stream
    result: dict[str, Any] = {"batch": b, "input": f"{b} separate {side}x{side}x3 uint8 slots"}

    def nvrtc(out: Any) -> None:
        half = out.dtype == torch.float16
        kernel.launch(table.data_ptr(), out.data_ptr(), b, side * side, half, stream)

    def torch_copy(out: Any) -> None:
        for i, t in enumerate(slots):  # what torch-cuda does with IPC slots
            out[i].copy_(t.permute(2, 0, 1))
        out.mul_(1.0 / 255.0)

    for dtype in (torch.float16, torch.float32):
        out = torch.empty((b, 3, side, side), dtype=dtype, device="cuda")
        for name, fn in (("nvrtc_kernel", nvrtc), ("torch_copy_scale", torch_copy)):
            for _ in range(10):
                fn(out)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(out)
            torch.cuda.synchronize()
            fps = b * iters / (time.perf_counter() - t0)
            result[f"{name}_{str(dtype).split('.')[-1]}_fps"] = round(fps, 1)
    kernel.close()
    return result


def _letterbox_planes_first(surface: Any, lb: Any) -> Any:
    """An alternative to ``nvdec.gpu_letterbox`` tried in round 5: scale the NV12 planes first
    (luma full size, chroma half size) and convert to RGB at the network size, so the float work
    covers one full-size plane instead of three.  Measured slower (more kernel launches; the
    per-frame letterbox is launch-bound), so ``gpu_letterbox`` kept RGB first."""
    import torch
    import torch.nn.functional as F

    from visionflow.streams.nvdec import _fill_padding

    h, w = lb.src_h, lb.src_w
    size = (lb.scaled_h, lb.scaled_w)

    def scale(planes: Any) -> Any:
        return F.interpolate(planes[None].float(), size=size, mode="bilinear", antialias=True)[0]

    rows = surface.shape[0] * 2 // 3
    luma = (scale(surface[None, :h, :w])[0] - 16.0) * 1.164
    u, v = scale(surface[rows : rows + h // 2, :w].reshape(h // 2, w // 2, 2).permute(2, 0, 1))
    u, v = u - 128.0, v - 128.0
    rgb = torch.stack([luma + 1.596 * v, luma - 0.392 * u - 0.813 * v, luma + 2.017 * u])
    out = torch.empty((lb.dst_h, lb.dst_w, 3), dtype=torch.uint8, device=surface.device)
    _fill_padding(out, lb)
    out[lb.pad_y : lb.pad_y + lb.scaled_h, lb.pad_x : lb.pad_x + lb.scaled_w] = (
        rgb.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0)
    )
    return out


def section_letterbox_gpu(work: Path) -> dict[str, Any]:
    """NVDEC's per-frame letterbox (1080p NV12 -> 640x640 RGB uint8): ``gpu_letterbox`` (RGB
    first) vs scaling the planes first, one frame at a time as ingest does it, and 8 threads at
    once on the default stream vs a CUDA stream each."""
    import threading

    import torch

    from visionflow.pipeline.letterbox import letterbox_geometry
    from visionflow.streams.nvdec import gpu_letterbox

    lb = letterbox_geometry(1920, 1080, 640, 640)
    surface = torch.randint(0, 255, (1080 * 3 // 2, 1920), dtype=torch.uint8, device="cuda")
    diff = (gpu_letterbox(surface, lb).int() - _letterbox_planes_first(surface, lb).int()).abs()
    result: dict[str, Any] = {
        "mean_abs_diff_planes_vs_rgb_first": round(float(diff.float().mean()), 3)
    }

    def frames_per_s(fn: Any, threads: int, own_stream: bool, iters: int = 200) -> float:
        def worker() -> None:
            stream = torch.cuda.Stream() if own_stream else torch.cuda.current_stream()
            with torch.cuda.stream(stream):
                for _ in range(iters):
                    fn(surface, lb)
                    stream.synchronize()  # ingest waits for each frame before announcing it

        for _ in range(5):
            fn(surface, lb)
        torch.cuda.synchronize()
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return round(threads * iters / (time.perf_counter() - t0), 1)

    for name, fn in (("planes_first", _letterbox_planes_first), ("rgb_first", gpu_letterbox)):
        result[f"{name}_1_thread_fps"] = frames_per_s(fn, 1, False)
        result[f"{name}_8_threads_default_stream_fps"] = frames_per_s(fn, 8, False)
        result[f"{name}_8_threads_own_streams_fps"] = frames_per_s(fn, 8, True)
    return result


# ---------------------------------------------------------------------------- end to end
def _latency(
    client: Any, prefix: str, ids: list[str], since: float, until: float
) -> tuple[float, float, int, dict[str, float], dict[str, float]]:
    """p50/p99 of capture→publish over the entries captured in ``[since, until)``, sample
    count, the p50 of each latency component (decode, queue, inference, publish) to show where
    the time goes, and the mean of each component over the slowest 1 % of entries (those at or
    above p99: where the tail comes from).

    Only the window's entries: reading and parsing every entry takes seconds of the GIL of
    this process, which is the pipeline's scheduling process, so frames captured while it
    runs wait for their batch (before this bound, those frames made the queue tail)."""
    import numpy as np

    from visionflow.schema import detections_key, parse_entry

    rows: list[dict[str, float]] = []
    for sid in ids:
        # entry ids are capture milliseconds: read the window's entries only
        window = client.xrange(detections_key(prefix, sid), int(since * 1000), int(until * 1000))
        for eid, fields in window:
            e = parse_entry(eid, fields)
            if since <= e.capture_ts < until and "total" in e.latency_ms:
                rows.append(dict(e.latency_ms))
    if not rows:
        return 0.0, 0.0, 0, {}, {}
    totals = [r["total"] for r in rows]
    p50, p99 = float(np.percentile(totals, 50)), float(np.percentile(totals, 99))
    keys = sorted({k for r in rows for k in r} - {"total"})
    medians = {k: round(float(np.percentile([r[k] for r in rows if k in r], 50)), 1) for k in keys}
    tail = [r for r in rows if r["total"] >= p99]
    tail_means = {
        k: round(float(np.mean([r[k] for r in tail if k in r])), 1)
        for k in keys
        if any(k in r for r in tail)
    }
    return p50, p99, len(totals), medians, tail_means


LATENCY_GRACE_S = 1.5  # after a window, before reading its entries: its last frames land


def _window(
    p: Any,
    client: Any,
    prefix: str,
    seconds: float,
    at_end: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Counters over one measuring window of a running pipeline.  ``at_end`` is called when
    the window closes, before its entries are read (what this process does then is the
    measurement's, not the pipeline's)."""
    first = p.status()
    before = {s.stream_id: (s.frames, s.total_drops, s.published) for s in first.streams}
    before_workers = first.workers
    t0 = time.time()
    time.sleep(seconds)
    after = p.status()
    t1 = time.time()
    if at_end is not None:
        at_end()
    time.sleep(LATENCY_GRACE_S)
    ids = [s.stream_id for s in after.streams]
    frames = sum(s.frames - before.get(s.stream_id, (0, 0, 0))[0] for s in after.streams)
    drops = sum(s.total_drops - before.get(s.stream_id, (0, 0, 0))[1] for s in after.streams)
    published = sum(s.published - before.get(s.stream_id, (0, 0, 0))[2] for s in after.streams)
    p50, p99, counted, parts, tail = _latency(client, prefix, ids, t0, t1)
    batches_before = {w.worker_id: w.batches for w in before_workers}
    reasons: dict[str, int] = {}
    for s in after.streams:
        for k, v in s.drops.items():
            reasons[k] = reasons.get(k, 0) + v
    batches = sum(w.batches for w in after.workers)
    return {
        "streams": len(ids),
        "decoded_fps": round(frames / seconds, 1),
        "published_fps": round(published / seconds, 1),
        "min_stream_fps": round(min((s.fps for s in after.streams), default=0.0), 1),
        "min_stream_window_fps": round(
            min(
                (
                    (s.frames - before.get(s.stream_id, (0, 0, 0))[0]) / seconds
                    for s in after.streams
                ),
                default=0.0,
            ),
            1,
        ),
        "drops_by_stream": {
            s.stream_id: s.total_drops - before.get(s.stream_id, (0, 0, 0))[1]
            for s in after.streams
            if s.total_drops > before.get(s.stream_id, (0, 0, 0))[1]
        },
        "drops": drops,
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "latency_samples": counted,
        # entries of the window's frames in Redis when read (1.5 s after it): below 1, the
        # latest are missing and p50/p99 are lower bounds
        "latency_coverage": round(counted / published, 2) if published else None,
        "p50_parts_ms": parts,
        "p99_tail_parts_ms": tail,
        "batches_per_worker": [
            w.batches - batches_before.get(w.worker_id, 0) for w in after.workers
        ],
        "mean_batch": round(sum(w.frames for w in after.workers) / max(1, batches), 2),
        "drops_by_reason_total": reasons,
        "decode": sorted({s.decode for s in after.streams}),
    }


def _sustained(r: dict[str, Any]) -> bool:
    """0 drops in the window and every stream at its 30 fps (on average, 5% slack)."""
    return bool(r["drops"] == 0 and r["decoded_fps"] >= 28.5 * r["streams"])


def _ramp(
    work: Path,
    url: str,
    decode: str,
    levels: list[int],
    transport: str = "auto",
    window_s: float = 8.0,
    engine: dict[str, Any] | None = None,
    model: Path | None = None,
    workers_per_gpu: int = 1,
    settle_s: float = 5.0,
) -> dict[str, Any]:
    """One pipeline; streams added level by level until a window shows drops twice."""
    import logging

    import redis

    from visionflow.config import parse_config
    from visionflow.streams.config import StreamConfig
    from visionflow.workers.supervisor import Pipeline

    mp4, _ = clip_paths(work)
    prefix = f"ramp{decode}{transport}{workers_per_gpu}"

    def stream(i: int) -> dict[str, Any]:
        return {"id": f"c{i}", "url": str(mp4), "loop": True, "realtime": True}

    cfg = parse_config(
        {
            "streams": [stream(i) for i in range(levels[0])],
            "redis": {"url": url, "key_prefix": prefix, "maxlen": 20000},
            "source": {"allowed_schemes": ["file"]},
            "model": {
                "path": str(model or _model(work)),
                "conf_threshold": 0.5,
                "max_detections": 50,
            },
            "engine": engine or {"backend": "torch-cuda", "precision": "fp16"},
            "batching": {"max_batch": 64, "max_delay_ms": 15, "buffer_per_stream": 8},
            "decode": decode,
            "workers": {
                "ingest_processes": 14,
                "frame_transport": transport,
                "workers_per_gpu": workers_per_gpu,
            },
        }
    )
    client = redis.Redis.from_url(url)
    p = Pipeline(cfg, url, log_level=logging.WARNING)
    p.start()
    p.wait_ready(240)
    runs, failures = [], 0
    try:
        for level in levels:
            for i in range(len(p.status().streams), level):
                p.add_stream(StreamConfig.model_validate(stream(i)))
            time.sleep(settle_s)  # new streams connect, queues settle
            r = _window(p, client, prefix, window_s)
            runs.append(r)
            log(f"ramp {decode}/{transport}/{workers_per_gpu}w: {r}")
            ok = _sustained(r)
            failures = 0 if ok else failures + 1
            if failures >= 2:
                break
    finally:
        p.stop()
        client.flushdb()
    ok_runs = [r for r in runs if _sustained(r)]
    best = max(ok_runs, key=lambda r: r["streams"], default=None)
    return {
        "decode": decode,
        "transport": transport,
        "workers_per_gpu": workers_per_gpu,
        "runs": runs,
        "sustained_streams_at_0_drops": best["streams"] if best else 0,
        "at_sustained": best,
    }


def _e2e(
    decode: str,
    levels: list[int],
    transport: str = "auto",
    workers_per_gpu: int = 1,
    settle_s: float = 5.0,
) -> Any:
    def section(work: Path) -> dict[str, Any]:
        from visionflow.redis_server import EmbeddedRedis

        with EmbeddedRedis() as server:
            return _ramp(
                work,
                server.url,
                decode,
                levels,
                transport,
                workers_per_gpu=workers_per_gpu,
                settle_s=settle_s,
            )

    return section


section_e2e_nvdec = _e2e("nvdec", [16, 32, 48, 64, 80, 96, 112, 128])
section_e2e_nvdec_host = _e2e("nvdec", [16, 32, 48, 64, 80, 96, 112], transport="host")
section_e2e_cpu = _e2e("cpu", [16, 32, 48, 64, 80])
# two inference processes on the one GPU: host-side batch work of one overlaps the other's
section_e2e_cpu_2w = _e2e("cpu", [32, 48, 64, 80, 96], workers_per_gpu=2)
section_e2e_nvdec_2w = _e2e("nvdec", [16, 32, 48, 64], workers_per_gpu=2)
section_e2e_dali = _e2e("dali", [4, 8, 16, 24])
# NVDEC decoders take seconds to come up when many start at once: a longer settle separates
# start-up from steady state
section_e2e_nvdec_settled = _e2e("nvdec", [24, 32, 40, 48], settle_s=20.0)


def section_decode_probe(work: Path) -> dict[str, Any]:
    """What ``decode: auto`` picks on this machine, with the figures it picked by."""
    import dataclasses
    import tempfile

    from visionflow.streams.probe import resolve_auto

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.time()
        choice = resolve_auto(Path(cache))
        return {"probe_s": round(time.time() - t0, 1), **dataclasses.asdict(choice)}


def _baseline_once(work: Path, n: int, seconds: float) -> dict[str, Any]:
    import threading

    import av
    import numpy as np
    import torch

    from visionflow.engines.torch_cuda import gpu_decode, load_torch_module
    from visionflow.pipeline.letterbox import letterbox_geometry, scale_frame_into

    mp4, _ = clip_paths(work)
    module = load_torch_module(_model(work)).eval().cuda().half()
    latest: list[Any] = [None] * n
    stop = threading.Event()

    def capture(i: int) -> None:  # like cv2.VideoCapture on a camera: real time, keep latest
        while not stop.is_set():
            with av.open(str(mp4)) as c:
                t0 = time.time()
                for k, frame in enumerate(c.decode(video=0), start=1):
                    wait = t0 + k / 30 - time.time()
                    if wait > 0:
                        time.sleep(wait)
                    latest[i] = (k, frame)
                    if stop.is_set():
                        return

    threads = [threading.Thread(target=capture, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(2)
    done = [0] * n
    last_seen = [0] * n
    canvas = np.empty((n, 640, 640, 3), np.uint8)
    t0 = time.time()
    loops = 0
    while time.time() - t0 < seconds:
        snap = list(latest)
        for i, item in enumerate(snap):
            if item is None:
                continue
            k, frame = item
            lb = letterbox_geometry(frame.width, frame.height, 640, 640)
            scale_frame_into(frame, canvas[i], lb)
            if k != last_seen[i]:
                done[i] += 1
                last_seen[i] = k
        x = torch.from_numpy(canvas).cuda().permute(0, 3, 1, 2).half() / 255.0
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            out = module(x)
        gpu_decode(out[0] if isinstance(out, (list, tuple)) else out, 0.5, 0.45, 50)
        loops += 1
    stop.set()
    elapsed = time.time() - t0
    per_stream = [d / elapsed for d in done]
    return {
        "streams": n,
        "loop_hz": round(loops / elapsed, 1),
        "min_stream_fps": round(min(per_stream), 1),
        "mean_stream_fps": round(sum(per_stream) / n, 1),
    }


def section_baseline(work: Path) -> dict[str, Any]:
    runs = []
    for n in (2, 4, 8, 16, 32):
        r = _baseline_once(work, n, 8.0)
        runs.append(r)
        log(f"baseline {r}")
        if r["min_stream_fps"] < 28.5:
            break
    ok = [r for r in runs if r["min_stream_fps"] >= 28.5]
    return {"runs": runs, "sustained_streams": max((r["streams"] for r in ok), default=0)}


# ---------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vf-gpu-work"))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--section", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.section:
        run_section(globals()[f"section_{args.section}"], args.section, args.work, args.out)
        return
    from bench.common import machine, run_sections

    summary = run_sections(__file__, args.sections.split(","), LIMITS, args.work, args.out, log)
    (args.out / "gpu_bench.json").write_text(
        json.dumps({"machine": machine(), **summary}, indent=2, default=str)
    )


if __name__ == "__main__":
    main()
