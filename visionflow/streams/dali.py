"""GPU decode through DALI: the live packet flow cut into keyframe-aligned segments.

DALI's video decoders take whole in-memory clips that start at a keyframe, not a packet
feed.  So this source demuxes with PyAV, collects the packets of one GOP, and when the next
keyframe arrives remuxes the finished GOP into a small in-memory MP4 and runs one DALI
pipeline on it: ``decoders.video`` (``device="mixed"``: NVDEC) -> ``resize`` -> ``slice`` with
padding (the letterbox, on the GPU), giving ``[F, H, W, 3]`` uint8 RGB network-size frames
that go device-to-device into the stream's frame slots.

The cost is latency: a frame can only leave once its whole GOP arrived (one GOP interval,
1-2 s on most cameras), plus the segment's decode.  Each frame's ``decode_ms`` counts from
the moment its packet was read, so that wait shows in every latency figure.  Measured on
the H100 (bench/README.md): hence ``nvdec`` (packet by packet) is preferred, and ``dali``
is there for the cases where DALI's pipeline is wanted anyway.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionflow.pipeline.frames import Letterbox
from visionflow.pipeline.letterbox import PAD_VALUE, letterbox_geometry
from visionflow.streams.nvdec import copy_device_image
from visionflow.streams.shedding import NO_MODES
from visionflow.streams.sources import DecodedFrame, VideoSource


@dataclass
class _Segment:
    """Packets of one GOP with the time each was read."""

    packets: list[Any]
    read_at: list[float]


def letterbox_pipeline(lb: Letterbox, device_id: int) -> Any:
    """A DALI pipeline: encoded clip bytes in, letterboxed ``[F, H, W, 3]`` uint8 out."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=2, device_id=device_id, prefetch_queue_depth=1)  # type: ignore[untyped-decorator]
    def pipe() -> Any:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        decoders = getattr(fn, "decoders", None)  # DALI >= 2.x; fn.experimental before
        video = getattr(decoders, "video", None) or fn.experimental.decoders.video
        frames = video(encoded, device="mixed")
        scaled = fn.resize(frames, resize_x=lb.scaled_w, resize_y=lb.scaled_h)
        return fn.slice(
            scaled,
            start=[-lb.pad_y, -lb.pad_x],
            shape=[lb.dst_h, lb.dst_w],
            axis_names="HW",
            out_of_bounds_policy="pad",
            fill_values=PAD_VALUE,
        )

    built = pipe()
    built.build()
    return built


def remux(stream: Any, packets: list[Any]) -> bytes:
    """The packets of one GOP as a small MP4 in memory."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        target = out.add_stream_from_template(stream)
        for packet in packets:
            packet.stream = target
            out.mux(packet)
    return buffer.getvalue()


def dali_to_torch(tensor: Any, torch: Any, device: int) -> Any:
    """A DALI ``TensorGPU`` as a torch tensor: zero-copy through ``__cuda_array_interface__``,
    else copied with DALI's own ``feed_ndarray``.  Synchronised: ready to read."""
    try:
        view = torch.as_tensor(tensor, device=f"cuda:{device}")
    except (TypeError, RuntimeError):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        view = torch.empty(tensor.shape(), dtype=torch.uint8, device=f"cuda:{device}")
        feed_ndarray(tensor, view)
    torch.cuda.synchronize(view.device)
    return view


class DaliSource(VideoSource):
    """A :class:`VideoSource` whose frames DALI decodes on the GPU, one GOP at a time."""

    gpu = 0
    pace_packets = True  # a file read in real time must feed packets like a camera
    decode_modes = NO_MODES  # whole GOPs are remuxed and decoded; only "used or not" applies
    uses_skip_frame = False

    def open(self) -> None:
        super().open()
        torch, _ = self._require("dali", "nvidia-dali and torch with CUDA", "torch", "nvidia.dali")
        self._torch = torch
        video = self._container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        dst_w, dst_h = self.target_size or (width, height)
        self._lb = letterbox_geometry(width, height, dst_w, dst_h)
        self._size = (width, height)
        self._video = video
        self._pipe = letterbox_pipeline(self._lb, self.gpu)
        self._segment = _Segment([], [])
        self._out: Any = None  # the last segment's output, alive while its frames are read

    def close(self) -> None:
        super().close()
        self._pipe = None

    def _decode_packet(self, packet: Any) -> list[Any]:
        flush = packet.size == 0 and packet.dts is None
        seg = self._segment
        if not flush and packet.dts is None:
            return []
        if (flush or packet.is_keyframe) and seg.packets:
            frames = self._decode_segment(seg)
            self._segment = _Segment([], [])
        else:
            frames = []
        if not flush:
            self._segment.packets.append(packet)
            self._segment.read_at.append(time.monotonic())
        return frames

    def _decode_segment(self, seg: _Segment) -> list[Any]:
        torch = self._torch
        data = np.frombuffer(remux(self._video, seg.packets), np.uint8)
        self._pipe.feed_input("encoded", [data])
        (out,) = self._pipe.run()
        frames = dali_to_torch(out.as_tensor(), torch, self.gpu)[0]
        self._out = out
        order = sorted(range(len(seg.packets)), key=lambda i: seg.packets[i].pts or 0)
        tb = self._video.time_base
        done = time.monotonic()
        return [
            (
                frames[k],
                float(seg.packets[i].pts * tb) if seg.packets[i].pts is not None else None,
                (done - seg.read_at[i]) * 1000,
            )
            for k, i in enumerate(order[: int(frames.shape[0])])
        ]

    def _wrap(self, frame: Any, packet: Any, decode_ms: float) -> DecodedFrame:
        image, pts, waited_ms = frame
        return DecodedFrame(image, pts, waited_ms, self._size[0], self._size[1])

    def write_letterboxed(self, decoded: DecodedFrame, dst: Any, letterbox: Letterbox) -> None:
        copy_device_image(decoded.frame, dst)
