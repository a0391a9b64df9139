"""GPU decode with NVDEC: PyAV demuxes, PyNvVideoCodec decodes packet by packet.

The live path: every packet PyAV reads (RTSP, files; mp4/mkv packets are turned into Annex-B by
FFmpeg's ``*_mp4toannexb`` bitstream filter) that the stream's shedding policy keeps (under a
fair share, the rest of a GOP can be kept from the decoder) goes to an NVDEC decoder in
low-latency mode, so a frame is out ~2 ms after its packet (bench/README.md), instead of after a
whole GOP as with DALI's clip decoders. Colour conversion (NV12 -> RGB, BT.601 limited range
like swscale's default, so the model sees what the CPU path gives it), scaling and padding run
on the GPU, straight into the stream's frame slot: a device slot (CUDA IPC, the default when the
inference worker is on the same GPU) keeps the frame on the GPU all the way into the engine; a
host slot (MIG, or an engine that reads host memory) costs one device-to-host copy of the
network-size image.

Each source decodes and letterboxes on a non-blocking CUDA stream from torch's pool (handed to
the decoder with the process's primary context; the pool has 32 per device, so past 32
readers a few share one): on the legacy default stream every reader's synchronise waited for
every other reader's work, which capped one process at ~500 decoded frames/s
(bench/README.md, ``procs_96``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any

import numpy as np

from visionflow.errors import EngineError, SourceOpenError
from visionflow.pipeline.frames import Letterbox
from visionflow.pipeline.letterbox import PAD_VALUE
from visionflow.streams.shedding import PACKET_MODES
from visionflow.streams.sources import DecodedFrame, VideoSource

_ANNEXB = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
log = logging.getLogger("visionflow.nvdec")


class NvdecSource(VideoSource):
    """A :class:`VideoSource` whose frames are decoded by NVDEC on GPU ``gpu``."""

    gpu = 0
    # fed packet by packet: the rest of a GOP can be kept from NVDEC (prefix, nonkey), but
    # FFmpeg's skip_frame (nonref) does not apply.  A frame NVDEC returns one packet late
    # (see _decode_annexb) then comes out with the next packet fed, i.e. the next keyframe
    # (not measured on a GPU yet: it would show as that frame's lateness, not as decode_ms)
    decode_modes = PACKET_MODES
    uses_skip_frame = False
    _decoder_key: tuple[str, int, int, str] | None = None  # codec, size, format of the decoder
    _drained = False  # the last session ended at the end of a file with every frame out

    def open(self) -> None:
        super().open()
        av, nvc, torch = self._require(
            "nvdec", "PyNvVideoCodec and torch with CUDA", "av", "PyNvVideoCodec", "torch"
        )
        video = self._container.streams.video[0]
        name = video.codec_context.name
        codecs = {"h264": nvc.cudaVideoCodec.H264, "hevc": nvc.cudaVideoCodec.HEVC}
        if name not in codecs:
            self.close()
            raise SourceOpenError(
                f"{self.stream.safe_url}: nvdec cannot decode {name}", permanent=True
            )
        self._nvc, self._torch = nvc, torch
        fmt = self._container.format.name
        self._bsf = None
        if not any(f in fmt for f in ("h264", "hevc", "rtsp", "mpegts")):
            self._bsf = av.BitStreamFilterContext(_ANNEXB[name], video)
        ctx = video.codec_context
        key = (name, ctx.width, ctx.height, str(ctx.pix_fmt))
        if not (self._drained and self._decoder_key == key and ctx.width and ctx.height):
            self._new_decoder(codecs[name])
            self._decoder_key = key
        self._drained = False
        self._size = (ctx.width, ctx.height)
        self._pending: deque[int | None] = deque()
        self._time_base = video.time_base

    def _new_decoder(self, codec: Any) -> None:
        """A decoder on a CUDA stream from torch's pool (non-blocking; 32 per device, so past
        32 readers a process's readers share them).  It is kept when a file loops -- the
        last session read the file to its end with every frame out of the decoder, and the
        codec, size and pixel format are the same -- since creating one takes tens of
        milliseconds and holds the GIL, stalling every other reader of the process.  A camera
        that reconnects gets a new one (its stream may resume mid-GOP: the old decoder's
        reference frames would be wrong)."""
        self._decoder_key = None
        self._stream = self._torch.cuda.Stream(device=self.gpu)
        self._decoder = self._nvc.CreateDecoder(
            gpuid=self.gpu,
            codec=codec,
            cudacontext=_primary_context(self.gpu),
            cudastream=self._stream.cuda_stream,
            usedevicememory=True,
            latency=self._nvc.DisplayDecodeLatencyType.LOW,
        )

    def _decode_packet(self, packet: Any) -> list[Any]:
        end = packet.size == 0 and packet.dts is None  # the demuxer's final flush (read before
        try:  # the bitstream filter takes the packet over)
            frames = self._decode_annexb(packet)
        except Exception:
            self._decoder_key = None  # never reuse a decoder that failed
            raise
        if end:  # end of file: reusable if every frame came out
            self._drained = self.stream.is_file and not self._pending
        return frames

    def _decode_annexb(self, packet: Any) -> list[Any]:
        nvc = self._nvc
        frames: list[Any] = []
        pts = packet.pts  # read before filtering: the bitstream filter takes the packet over
        for annexb in self._bsf.filter(packet) if self._bsf is not None else [packet]:
            data = np.frombuffer(bytes(annexb), np.uint8)
            if not data.size:
                continue
            pd = nvc.PacketData()
            pd.bsl_data, pd.bsl = data.ctypes.data, data.size
            pd.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE
            self._pending.append(annexb.pts if annexb.pts is not None else pts)
            # frames leave the decoder in packet order (no B-frames in the low-latency mode),
            # sometimes one packet later: pair them with the oldest pending packet timestamp
            frames.extend((f, self._pending.popleft()) for f in self._decoder.Decode(pd))
        return frames

    def _wrap(self, frame: Any, packet: Any, decode_ms: float) -> DecodedFrame:
        surface, pts = frame
        seconds = float(pts * self._time_base) if pts is not None and self._time_base else None
        return DecodedFrame(surface, seconds, decode_ms, self._size[0], self._size[1])

    def write_letterboxed(self, decoded: DecodedFrame, dst: Any, letterbox: Letterbox) -> None:
        try:
            self._write(decoded, dst, letterbox)
        except Exception:
            self._decoder_key = None  # a CUDA error here may concern the decoder's stream too
            raise

    def _write(self, decoded: DecodedFrame, dst: Any, letterbox: Letterbox) -> None:
        stream = self._stream  # the decoder's: ordered after its copy of the frame
        if _fused_from_planes(decoded.frame, dst, letterbox, stream):
            stream.synchronize()
            return
        torch = self._torch
        with torch.cuda.stream(stream):
            write_device_image(torch.from_dlpack(decoded.frame), dst, letterbox)


def nv12_planes(frame: Any) -> tuple[int, int, int, int, int] | None:
    """``(y, uv, pitch, width, rows)`` of a decoded NV12 frame read from its CUDA array
    interface (no DLPack round trip through torch: that cost ~15 % of an ingest process's GIL
    time at 96 streams); None when the frame does not describe itself that way."""
    cai = getattr(frame, "__cuda_array_interface__", None)
    if cai is None:  # per-plane arrays, asked of PyNvVideoCodec's frames only (their class
        # lives in its extension module, ``_PyNvVideoCodec``)
        if "PyNvVideoCodec" in type(frame).__module__ and hasattr(frame, "cuda"):
            return _planes_of(frame.cuda())
        return None
    if not isinstance(cai, dict) or cai.get("typestr") != "|u1" or len(cai["shape"]) != 2:
        return None
    height, width = (int(n) for n in cai["shape"])
    pitch = int(cai["strides"][0]) if cai.get("strides") else width
    rows = height * 2 // 3  # decoder surfaces may pad the height (360 -> 368)
    y = int(cai["data"][0])
    return y, y + rows * pitch, pitch, width, rows


def _planes_of(planes: Any) -> tuple[int, int, int, int, int] | None:
    """The same from a list of per-plane arrays (luma ``[H, W]``, then interleaved chroma)."""
    if not isinstance(planes, (list, tuple)) or len(planes) != 2:
        return None
    luma, chroma = (getattr(p, "__cuda_array_interface__", None) for p in planes)
    if not isinstance(luma, dict) or not isinstance(chroma, dict):
        return None
    if luma.get("typestr") != "|u1" or chroma.get("typestr") != "|u1":
        return None
    rows, width = (int(n) for n in luma["shape"][:2])
    pitch = int(luma["strides"][0]) if luma.get("strides") else width
    chroma_pitch = int(chroma["strides"][0]) if chroma.get("strides") else width
    if chroma_pitch != pitch:  # the kernel reads both planes with one pitch
        return None
    return int(luma["data"][0]), int(chroma["data"][0]), pitch, width, rows


def _fused_from_planes(frame: Any, dst: Any, lb: Letterbox, stream: Any) -> bool:
    """The fused kernel straight from the frame's planes into a device slot (False: not a
    device slot, no plane description, or no kernel: the caller takes the torch path)."""
    if not hasattr(dst, "__cuda_array_interface__"):
        return False
    planes = nv12_planes(frame)
    if planes is None:
        return False
    y, uv, pitch, width, rows = planes
    if width < lb.src_w or rows < lb.src_h:
        return False
    return _launch(stream.device, y, uv, pitch, lb, dst, stream.cuda_stream)


def _launch(device: Any, y: int, uv: int, pitch: int, lb: Letterbox, dst: Any, stream: int) -> bool:
    """The fused kernel from NV12 planes into the device slot ``dst`` on ``stream``; False when
    it cannot load here or its launch fails (then torch from now on in this process: never lose
    the stream over the fast path)."""
    kernel = _letterbox_kernel(device)
    if kernel is None:
        return False
    out = int(dst.__cuda_array_interface__["data"][0])
    try:
        kernel.launch(y, uv, pitch, lb, out, PAD_VALUE, stream)
    except EngineError as exc:
        log.warning("fused NV12 letterbox kernel failed (%s); using torch in this process", exc)
        with _KERNEL_LOCK:
            _KERNELS[_device_index(device)] = None
        return False
    return True


def _primary_context(gpu: int) -> int:
    """The handle of the device's primary context (torch's), made current on this thread:
    PyNvVideoCodec takes a stream only together with the context it belongs to."""
    import torch
    from cuda.bindings import driver

    torch.cuda.set_device(gpu)
    torch.cuda.current_stream(gpu)  # makes torch's (primary) context current here
    err, ctx = driver.cuCtxGetCurrent()
    if err != driver.CUresult.CUDA_SUCCESS or not int(ctx):
        raise EngineError(f"no current CUDA context on GPU {gpu} ({err})")
    return int(ctx)


def write_device_image(surface: Any, dst: Any, letterbox: Letterbox) -> None:
    """Letterbox a device frame into ``dst``: a device slot (written in place on the current
    stream, then that stream synchronised, so the frame is complete before anyone hears of
    it) or a host array.  An NV12 surface into a device slot takes one fused kernel
    (:mod:`visionflow.gpu.letterbox_kernel`); anything else, or a kernel that cannot load
    here, the torch path."""
    import torch

    if hasattr(dst, "__cuda_array_interface__"):
        stream = torch.cuda.current_stream(surface.device)
        if not _fused_letterbox(surface, dst, letterbox, stream):
            gpu_letterbox(surface, letterbox, out=torch.as_tensor(dst, device=surface.device))
        stream.synchronize()
    else:
        dst[...] = gpu_letterbox(surface, letterbox).cpu().numpy()


_KERNELS: dict[int, Any] = {}  # device index -> LetterboxKernel, or None when unavailable
_KERNEL_LOCK = threading.Lock()


def _letterbox_kernel(device: Any) -> Any:
    """The fused kernel for ``device``, compiled once per process (None if it cannot be: the
    torch path is used then, and why is logged once)."""
    import torch

    index = _device_index(device)
    with _KERNEL_LOCK:
        if index not in _KERNELS and os.environ.get("VISIONFLOW_FUSED_LETTERBOX") == "0":
            _KERNELS[index] = None  # asked for the torch path (benchmarks compare the two)
        if index not in _KERNELS:
            try:
                from visionflow.gpu.letterbox_kernel import LetterboxKernel

                major, minor = torch.cuda.get_device_capability(index)
                _KERNELS[index] = LetterboxKernel(major, minor)
            except Exception as exc:  # no NVRTC, no cuda-python: the torch path still works
                log.warning("fused NV12 letterbox kernel unavailable (%s); using torch", exc)
                _KERNELS[index] = None
        return _KERNELS[index]


def _fused_letterbox(surface: Any, dst: Any, lb: Letterbox, stream: Any) -> bool:
    """One kernel from an NV12 surface ``[rows * 3/2, pitch-strided W]`` into the device slot."""
    if surface.ndim != 2 or surface.dtype.itemsize != 1 or surface.stride(1) != 1:
        return False
    pitch = int(surface.stride(0))
    rows = surface.shape[0] * 2 // 3  # decoder surfaces may pad the height (360 -> 368)
    base = int(surface.data_ptr())
    return _launch(surface.device, base, base + rows * pitch, pitch, lb, dst, stream.cuda_stream)


def _device_index(device: Any) -> int:
    import torch

    return int(device.index if device.index is not None else torch.cuda.current_device())


def copy_device_image(image: Any, dst: Any) -> None:
    """Copy a letterboxed ``[H, W, 3]`` uint8 device tensor into a device slot or host array."""
    import torch

    if hasattr(dst, "__cuda_array_interface__"):
        torch.as_tensor(dst, device=image.device).copy_(image)
        torch.cuda.current_stream(image.device).synchronize()
    else:
        dst[...] = image.cpu().numpy()


def gpu_letterbox(surface: Any, lb: Letterbox, out: Any = None) -> Any:
    """NV12 (``[H * 3/2, W]``) or RGB (``[H, W, 3]``) uint8 on the GPU -> letterboxed RGB uint8
    (into ``out`` when given, a ``[dst_h, dst_w, 3]`` uint8 device tensor)."""
    import torch
    import torch.nn.functional as F

    h, w = lb.src_h, lb.src_w
    if surface.ndim == 3 and surface.shape[-1] == 3:
        rgb = surface.permute(2, 0, 1).float()
    else:
        rows = surface.shape[0] * 2 // 3  # decoder surfaces may pad the height (360 -> 368)
        y = surface[:h, :w].float()
        uv = surface[rows : rows + h // 2, :w].reshape(h // 2, w // 2, 2)
        uv = uv.permute(2, 0, 1)[None].float()
        uv = F.interpolate(uv, size=(h, w), mode="nearest")[0] - 128.0
        luma = (y - 16.0) * 1.164
        u, v = uv[0], uv[1]
        rgb = torch.stack([luma + 1.596 * v, luma - 0.392 * u - 0.813 * v, luma + 2.017 * u])
    scaled = F.interpolate(
        rgb[None],
        size=(lb.scaled_h, lb.scaled_w),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0]
    if out is None:
        out = torch.empty((lb.dst_h, lb.dst_w, 3), dtype=torch.uint8, device=surface.device)
    _fill_padding(out, lb)
    out[lb.pad_y : lb.pad_y + lb.scaled_h, lb.pad_x : lb.pad_x + lb.scaled_w] = (
        scaled.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0)
    )
    return out


def _fill_padding(out: Any, lb: Letterbox) -> None:
    """Paint only the padding bands (the scaled image overwrites the rest)."""
    if lb.pad_y:
        out[: lb.pad_y].fill_(PAD_VALUE)
        out[lb.pad_y + lb.scaled_h :].fill_(PAD_VALUE)
    if lb.pad_x:
        out[:, : lb.pad_x].fill_(PAD_VALUE)
        out[:, lb.pad_x + lb.scaled_w :].fill_(PAD_VALUE)
