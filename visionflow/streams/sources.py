"""Reading one video source with PyAV: RTSP(S) over TCP, HTTP(S), local files.

Every blocking call is bounded: opening by ``open_timeout_s``, each read by
``read_timeout_s`` (PyAV's interrupt callback), and the whole "no decoded frame" case by the
``stall_timeout_s`` watchdog, so a frozen camera raises instead of hanging its thread.
Errors are classified into the :mod:`visionflow.errors` source tree and never carry the
URL's password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av

from visionflow.config import SourceConfig
from visionflow.errors import (
    SourceDecodeError,
    SourceEndedError,
    SourceError,
    SourceOpenError,
    SourceStalledError,
)
from visionflow.pipeline.letterbox import scale_frame_into
from visionflow.streams.config import StreamConfig
from visionflow.streams.shedding import ALL_MODES, SKIP_FRAME, DecodeMode, ShedPolicy
from visionflow.streams.urls import PROTOCOL_WHITELIST, redact_text, source_scheme

MAX_CONSECUTIVE_DECODE_ERRORS = 30
#: hostile metadata is not valid UTF-8 either: PyAV before 19 decodes it strictly unless told
#: to replace what it cannot read; 19 took the argument away and always reads metadata as
#: UTF-8 with ``surrogateescape`` (visionflow reads no container metadata)
_STRICT_METADATA = int(av.__version__.split(".")[0]) < 19


def _open_input(
    target: str, options: dict[str, str], timeout: tuple[float, float]
) -> av.container.InputContainer:
    """``av.open`` for reading, whichever PyAV (see :data:`_STRICT_METADATA`)."""
    if _STRICT_METADATA:
        return av.open(  # type: ignore[call-overload, unused-ignore]  # PyAV >= 19: no such argument
            target, options=options, timeout=timeout, metadata_errors="replace"
        )
    return av.open(target, options=options, timeout=timeout)


@dataclass(frozen=True)
class DecodedFrame:
    """A frame fresh out of the decoder (stays inside the ingest process)."""

    frame: Any  # av.VideoFrame
    pts: float | None
    decode_ms: float
    width: int
    height: int
    used: bool = True  # False: the shedding policy discards it (no letterbox, not announced)


class VideoSource:
    """Opens a stream and yields decoded frames until it stops, stalls or fails."""

    #: pace a real-time file packet by packet (decoders that buffer a GOP), not frame by frame
    pace_packets = False
    #: the network input size ``(width, height)``, for sources that letterbox while decoding
    target_size: tuple[int, int] | None = None
    #: the shedding modes this decoder can take (PyAV on the CPU: all of them)
    decode_modes: frozenset[DecodeMode] = ALL_MODES
    #: the decoder is FFmpeg's: a mode is also set as its ``skip_frame``
    uses_skip_frame = True
    #: the stream's load-shedding policy (set by its reader); None: every frame is used
    shed: ShedPolicy | None = None

    def __init__(self, stream: StreamConfig, policy: SourceConfig, stop: threading.Event) -> None:
        self.stream = stream
        self.policy = policy
        self._stop = stop
        self._container: Any = None
        self.decode_errors = 0
        self._last_frame = time.monotonic()
        self._mode: DecodeMode = "all"  # the skip mode the open codec context is in

    # ---- opening ----------------------------------------------------------------
    def _target(self) -> str:
        url = self.stream.url
        return url[len("file://") :] if url.lower().startswith("file://") else url

    def _options(self) -> dict[str, str]:
        """FFmpeg open options: timeouts, and ``protocol_whitelist`` for the URL's scheme (no
        nested open -- playlist, SDP, redirect -- may reach another protocol).  Raises a
        permanent :class:`SourceOpenError` for a scheme not in ``source.allowed_schemes``
        (a stream added at run time is checked here, as the config checks the others)."""
        try:
            scheme = source_scheme(self.stream.url)
        except ValueError as exc:
            raise SourceOpenError(f"stream {self.stream.id!r}: {exc}", permanent=True) from None
        if scheme not in self.policy.allowed_schemes:
            raise SourceOpenError(
                f"stream {self.stream.id!r}: URL scheme {scheme!r} of {self.stream.safe_url!r} "
                f"is not in source.allowed_schemes {list(self.policy.allowed_schemes)}",
                permanent=True,
            )
        options = {"protocol_whitelist": PROTOCOL_WHITELIST[scheme]}
        micros = str(int(self.policy.read_timeout_s * 1_000_000))
        if scheme in ("rtsp", "rtsps"):
            # no fflags=nobuffer: it discards the packets read while probing (~1 s of video)
            options.update(rtsp_transport="tcp", timeout=micros)
        elif scheme in ("http", "https"):
            options["rw_timeout"] = micros
        probe = self.policy.analyze_duration_s
        if probe is not None and scheme != "file":
            options["analyzeduration"] = str(int(probe * 1_000_000))
        return options

    def _check_caps(self, video: Any) -> None:
        """Fail the stream for good when it declares more than ``source.max_*`` allow, and
        make the decoder refuse any later frame above ``max_width * max_height`` pixels."""
        policy, codec = self.policy, video.codec_context
        if codec is None:  # a codec id FFmpeg has no decoder for (a damaged codec tag)
            self.close()
            raise SourceDecodeError(
                f"{self.stream.safe_url}: stream {self.stream.id!r}: no decoder for its video",
                permanent=self.stream.is_file,
            )
        exceeded: list[str] = []
        width, height = int(codec.width or 0), int(codec.height or 0)
        if width > policy.max_width:
            exceeded.append(f"width {width} > source.max_width {policy.max_width}")
        if height > policy.max_height:
            exceeded.append(f"height {height} > source.max_height {policy.max_height}")
        fps = float(video.average_rate or 0)
        if fps > policy.max_fps:
            exceeded.append(f"frame rate {fps:g} fps > source.max_fps {policy.max_fps:g}")
        bit_rate = int(video.bit_rate or 0) or int(self._container.bit_rate or 0)
        if bit_rate > policy.max_bitrate_kbps * 1000:
            exceeded.append(
                f"bitrate {bit_rate // 1000} kbit/s > source.max_bitrate_kbps "
                f"{policy.max_bitrate_kbps}"
            )
        if exceeded:
            self.close()
            raise SourceOpenError(
                f"stream {self.stream.id!r} ({self.stream.safe_url}) exceeds its caps: "
                + "; ".join(exceeded),
                permanent=True,
            )
        # a resolution change mid-stream cannot allocate past the caps either
        # FFmpeg checks max_pixels against the row stride aligned up to 64, not the width
        aligned_width = -(-policy.max_width // 64) * 64
        codec.options = {**codec.options, "max_pixels": str(aligned_width * policy.max_height)}

    def open(self) -> None:
        """Open the source; raises :class:`SourceOpenError` / :class:`SourceDecodeError`."""
        self.close()
        options = self._options()
        try:
            self._container = _open_input(
                self._target(), options, (self.policy.open_timeout_s, self.policy.read_timeout_s)
            )
        except FileNotFoundError as exc:
            raise self._open_error("file not found", exc, permanent=self.stream.is_file) from None
        except av.InvalidDataError as exc:
            raise self._decode_error("not a readable video", exc) from None
        except (av.FFmpegError, OSError) as exc:
            raise self._open_error("cannot open", exc) from None
        if not self._container.streams.video:
            self.close()
            raise SourceOpenError(f"{self.stream.safe_url}: no video stream", permanent=True)
        video = self._container.streams.video[0]
        self._check_caps(video)
        video.thread_type = "AUTO"
        if self.policy.decode_threads:
            video.thread_count = self.policy.decode_threads

    def _require(self, decoder: str, needs: str, *modules: str) -> list[Any]:
        """Import a GPU decoder's libraries, or fail the stream for good naming the missing one."""
        try:
            return [importlib.import_module(name) for name in modules]
        except ImportError as exc:
            self.close()
            raise SourceOpenError(
                f"{self.stream.safe_url}: decode '{decoder}' needs {needs}: {exc}", permanent=True
            ) from None

    def _open_error(
        self, what: str, exc: BaseException, permanent: bool = False
    ) -> SourceOpenError:
        return SourceOpenError(
            f"{self.stream.safe_url}: {what}: {redact_text(str(exc))}", permanent=permanent
        )

    def _decode_error(self, what: str, exc: BaseException) -> SourceDecodeError:
        return SourceDecodeError(
            f"{self.stream.safe_url}: {what}: {redact_text(str(exc))}",
            permanent=self.stream.is_file,
        )

    def close(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):  # closing a broken container must never raise
                self._container.close()
            self._container = None

    # ---- reading ----------------------------------------------------------------
    def frames(self) -> Iterator[DecodedFrame]:
        """Decoded frames, paced in real time for files that ask for it.

        Raises :class:`SourceStalledError` (watchdog or read timeout after frames came),
        :class:`SourceEndedError` (a finite file ended), :class:`SourceDecodeError`,
        :class:`SourceOpenError` (a live stream ended or broke).
        """
        if self._container is None:
            raise SourceOpenError(f"{self.stream.safe_url}: not open")
        video = self._container.streams.video[0]
        rate = float(video.average_rate or video.guessed_rate or 30)
        pace = self.stream.is_file and self.stream.realtime and not self.pace_packets
        start, count = time.monotonic(), 0
        self._last_frame = time.monotonic()
        shed = self.shed
        if shed is not None:
            shed.reset()
        self._mode = "all"
        for packet in self._demux(video):
            if shed is not None and not self._gate(shed, packet, video):
                count += pace  # the skipped frame's time still passes
                # the source is alive: not decoding on purpose is not silence for the watchdog
                self._last_frame = time.monotonic()
                continue
            t0 = time.perf_counter()
            try:
                decoded = self._decode_packet(packet)
                decoded += self._drain(video)
            except av.FFmpegError as exc:  # corrupt input: InvalidData, PatchWelcome, EINVAL...
                self.decode_errors += 1
                if self.decode_errors >= MAX_CONSECUTIVE_DECODE_ERRORS:
                    raise self._decode_error("too many undecodable packets", exc) from None
                continue
            decode_ms = (time.perf_counter() - t0) * 1000
            for frame in decoded:
                self.decode_errors = 0
                if pace:
                    count += 1
                    due = start + count / rate
                    if (wait := due - time.monotonic()) > 0 and self._stop.wait(wait):
                        return
                self._last_frame = time.monotonic()
                wrapped = self._wrap(frame, packet, decode_ms)
                if shed is not None and not shed.frame(wrapped.pts, _is_b_frame(frame)):
                    wrapped = dataclasses.replace(wrapped, used=False)
                yield wrapped
                # time the consumer kept us (a lossless file waiting for a free slot) is not
                # source silence: the watchdog restarts after it
                self._last_frame = time.monotonic()
            if self._stop.is_set():
                return

    def _gate(self, shed: ShedPolicy, packet: Any, video: Any) -> bool:
        """Ask the shedding policy whether to decode ``packet``; apply its decode mode."""
        if packet.size == 0 and packet.dts is None:
            return True  # the final flush: frames still inside the decoder come out
        pts = float(packet.pts * packet.time_base) if packet.pts is not None else None
        decode = shed.packet(pts, bool(packet.is_keyframe))
        if decode and shed.mode != self._mode:
            if self.uses_skip_frame:
                video.codec_context.skip_frame = SKIP_FRAME[shed.mode]
            self._mode = shed.mode
        return decode

    def _drain(self, video: Any) -> list[Any]:
        """Keyframes only: take the frame out now instead of after the decoder's frame-thread
        delay (several keyframes, i.e. seconds); the decoder is then ready for the next one."""
        if not self.uses_skip_frame or self._mode != "nonkey":
            return []
        codec = video.codec_context
        frames = list(codec.decode(None))
        codec.flush_buffers()
        for frame in frames:  # frames drained from the codec carry no time base of their own
            frame.time_base = video.time_base
        return frames

    def _decode_packet(self, packet: Any) -> list[Any]:
        """Decode one demuxed packet (PyAV, on the CPU)."""
        return list(packet.decode())

    def _wrap(self, frame: Any, packet: Any, decode_ms: float) -> DecodedFrame:
        pts = float(frame.pts * frame.time_base) if frame.pts is not None else None
        return DecodedFrame(frame, pts, decode_ms, frame.width, frame.height)

    def write_letterboxed(self, decoded: DecodedFrame, dst: Any, letterbox: Any) -> None:
        """Scale and pad ``decoded`` into ``dst`` (``[H, W, 3]`` uint8 network input)."""
        scale_frame_into(decoded.frame, dst, letterbox)

    def _demux(self, video: Any) -> Iterator[Any]:
        stall = self.policy.stall_timeout_s
        packets = self._container.demux(video)
        pace = self.pace_packets and self.stream.is_file and self.stream.realtime
        rate = float(video.average_rate or video.guessed_rate or 30)
        start, count = time.monotonic(), 0
        while not self._stop.is_set():
            if pace:
                count += 1
                if (wait := start + count / rate - time.monotonic()) > 0 and self._stop.wait(wait):
                    return
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.InvalidDataError as exc:
                self.decode_errors += 1
                if self.decode_errors >= MAX_CONSECUTIVE_DECODE_ERRORS:
                    raise self._decode_error("corrupt stream", exc) from None
                continue
            except (av.FFmpegError, OSError) as exc:  # read timeout, connection reset
                raise SourceStalledError(
                    f"{self.stream.safe_url}: read failed: {redact_text(str(exc))}"
                ) from None
            if time.monotonic() - self._last_frame > stall:
                raise SourceStalledError(
                    f"{self.stream.safe_url}: no frame for {stall:.0f}s (watchdog)"
                )
            if packet.size == 0 and packet.dts is None:  # flush packet at the end
                yield packet
                break
            yield packet
        if self._stop.is_set():
            return
        if self.stream.is_file:
            raise SourceEndedError(f"{self.stream.safe_url}: end of file")
        raise SourceOpenError(f"{self.stream.safe_url}: stream ended by the server")


def _is_b_frame(frame: Any) -> bool:
    """True for a PyAV B-frame (other decoders' frames: False)."""
    return getattr(getattr(frame, "pict_type", None), "name", "") == "B"


def classify(exc: SourceError) -> str:
    """Short reason key for counters and status ('open', 'stalled', 'decode', 'ended')."""
    if isinstance(exc, SourceStalledError):
        return "stalled"
    if isinstance(exc, SourceDecodeError):
        return "decode"
    if isinstance(exc, SourceEndedError):
        return "ended"
    return "open"
