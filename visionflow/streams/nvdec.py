"""GPU decode with NVDEC: PyAV demuxes, PyNvVideoCodec decodes packet by packet.

The live path: every packet PyAV reads (RTSP, files; mp4/mkv packets are turned into Annex-B
by FFmpeg's ``*_mp4toannexb`` bitstream filter) goes straight to an NVDEC decoder in low-latency
mode, so a frame is out ~2 ms after its packet (bench/README.md), instead of after a whole GOP
as with DALI's clip decoders.  Colour conversion (NV12 -> RGB, BT.601 limited range like
swscale's default, so the model sees what the CPU path gives it), scaling and padding run on the
GPU, straight into the stream's frame slot: a device slot (CUDA IPC, the default when the
inference worker is on the same GPU) keeps the frame on the GPU all the way into the engine;
a host slot (MIG, or an engine that reads host memory) costs one device-to-host copy of the
network-size image.
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
from visionflow.streams.sources import DecodedFrame, VideoSource

_ANNEXB = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
log = logging.getLogger("visionflow.nvdec")


class NvdecSource(VideoSource):
    """A :class:`VideoSource` whose frames are decoded by NVDEC on GPU ``gpu``."""

    gpu = 0
    supports_skip = False  # NVDEC gets every packet; only the "used or not" gate applies

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
        self._decoder = nvc.CreateDecoder(
            gpuid=self.gpu,
            codec=codecs[name],
            usedevicememory=True,
            latency=nvc.DisplayDecodeLatencyType.LOW,
        )
        self._size = (video.codec_context.width, video.codec_context.height)
        self._pending: deque[int | None] = deque()
        self._time_base = video.time_base

    def _decode_packet(self, packet: Any) -> list[Any]:
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
        write_device_image(self._torch.from_dlpack(decoded.frame), dst, letterbox)


def write_device_image(surface: Any, dst: Any, letterbox: Letterbox) -> None:
    """Letterbox a device frame into ``dst``: a device slot (written in place, then the stream
    synchronised, so the frame is complete before anyone hears of it) or a host array.  An
    NV12 surface into a device slot takes one fused kernel (:mod:`visionflow.gpu.
    letterbox_kernel`); anything else, or a kernel that cannot load here, the torch path."""
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
    kernel = _letterbox_kernel(surface.device)
    if kernel is None:
        return False
    pitch = int(surface.stride(0))
    rows = surface.shape[0] * 2 // 3  # decoder surfaces may pad the height (360 -> 368)
    base = int(surface.data_ptr())
    out = int(dst.__cuda_array_interface__["data"][0])
    try:
        kernel.launch(base, base + rows * pitch, pitch, lb, out, PAD_VALUE, stream.cuda_stream)
    except EngineError as exc:  # never lose the stream over the fast path: torch from now on
        log.warning("fused NV12 letterbox kernel failed (%s); using torch in this process", exc)
        with _KERNEL_LOCK:
            _KERNELS[_device_index(surface.device)] = None
        return False
    return True


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
