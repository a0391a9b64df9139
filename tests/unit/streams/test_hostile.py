"""Hostile input (issue #9): URL policy, FFmpeg protocol whitelist, caps, key layout."""

from __future__ import annotations

import threading

import pytest

from visionflow.config import SourceConfig, parse_config
from visionflow.errors import ConfigError, SourceEndedError, SourceOpenError
from visionflow.streams.config import StreamConfig
from visionflow.streams.sources import VideoSource
from visionflow.streams.urls import PROTOCOL_WHITELIST, source_scheme

FFMPEG_TRICKS = [
    "concat:/tmp/a.mp4|/tmp/b.mp4",
    "data:video/mp4;base64,AAAAIGZ0eXA=",
    "subfile,,start,0,end,100,,:/tmp/a.mp4",
    "SUBFILE,,start,0,end,100,,:/tmp/a.mp4",
    "pipe:0",
    "tcp://10.0.0.1:554",
    "udp://239.0.0.1:1234",
    "rtp://10.0.0.1:5004",
    "ftp://u:hunter2@h/x",
    "cache:rtsp://cam/live",
    "crypto+file:/tmp/a.mp4",
    "file://concat:/tmp/a.mp4|/tmp/b.mp4",
    "file:data:video/mp4;base64,AA",
    "rtsp:/cam/live",  # a scheme without '//' is not the URL it looks like
    "a.mp4\n",
    "clip\x00.mp4",
    "C:clip.mp4",  # not a drive letter on Linux: FFmpeg reads protocol 'C'
]


@pytest.mark.parametrize("url", FFMPEG_TRICKS)
def test_ffmpeg_protocol_tricks_are_refused_at_config_time(url: str) -> None:
    with pytest.raises(ValueError):
        source_scheme(url)
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "streams": [{"id": "cam", "url": url}],
                "source": {"allowed_schemes": ["rtsp", "rtsps", "http", "https", "file"]},
            },
            "<t>",
        )
    message = str(info.value)
    assert "stream 'cam'" in message and "field 'url'" in message, message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("rtsp://u:p@cam:554/live", "rtsp"),
        ("RTSPS://cam/live", "rtsps"),
        ("http://cam/mjpeg", "http"),
        ("https://cam/live.m3u8", "https"),
        ("file:///data/a.mp4", "file"),
        ("file:clips/a.mp4", "file"),
        ("clips/a.mp4", "file"),
        ("/data/cam 1/a.mp4", "file"),
        ("./concat:odd-but-a-plain-file.mp4", "file"),  # FFmpeg: a path, no protocol
    ],
)
def test_schemes_as_allowed_schemes_names_them(url: str, scheme: str) -> None:
    assert source_scheme(url) == scheme
    assert StreamConfig(id="c", url=url).is_file is (scheme == "file")


def test_files_and_http_are_refused_unless_listed() -> None:
    for url, scheme in (("clips/a.mp4", "file"), ("https://u:hunter2@cam/x", "https")):
        with pytest.raises(ConfigError) as info:
            parse_config({"streams": [{"id": "lobby", "url": url}]}, "<site>")
        message = str(info.value)
        for part in ("<site>", "stream 'lobby'", repr(scheme), "source.allowed_schemes"):
            assert part in message, message
        assert "hunter2" not in message
        allowed = parse_config(
            {"streams": [{"id": "lobby", "url": url}], "source": {"allowed_schemes": [scheme]}}
        )
        assert allowed.streams[0].scheme == scheme
    assert parse_config({"streams": [{"id": "a", "url": "rtsps://cam/x"}]}).source.allowed_schemes
    with pytest.raises(ConfigError, match="allowed_schemes"):
        parse_config({"source": {"allowed_schemes": ["ftp"]}})


def test_a_stream_added_at_run_time_is_held_to_the_policy_too(make_clip) -> None:
    """add_stream skips the config's check: the source itself refuses, permanently."""
    clip = make_clip(160, 96, 0.5, "h264", 3, 10)
    source = VideoSource(StreamConfig(id="late", url=str(clip)), SourceConfig(), threading.Event())
    with pytest.raises(SourceOpenError) as info:
        source.open()
    assert info.value.permanent
    assert "'late'" in str(info.value) and "'file'" in str(info.value)
    assert "source.allowed_schemes" in str(info.value)


@pytest.mark.parametrize(
    ("url", "whitelist"),
    [
        ("rtsp://cam/x", "rtsp,rtp,udp,tcp"),
        ("rtsps://cam/x", "rtsp,rtsps,rtp,udp,tcp,tls"),
        ("https://cam/x", "http,https,tcp,tls"),
        ("/data/a.mp4", "file"),
    ],
)
def test_ffmpeg_is_held_to_the_schemes_protocols(url: str, whitelist: str) -> None:
    policy = SourceConfig(allowed_schemes=["rtsp", "rtsps", "https", "file"])
    options = VideoSource(StreamConfig(id="c", url=url), policy, threading.Event())._options()
    assert options["protocol_whitelist"] == whitelist == PROTOCOL_WHITELIST[source_scheme(url)]


def test_the_whitelist_binds_ffmpeg(make_clip, monkeypatch) -> None:
    """With 'file' whitelisted only, FFmpeg itself refuses another protocol: a file URL
    that slipped past validation still cannot open concat:."""
    clip = make_clip(160, 96, 0.5, "h264", 3, 10)
    stream = StreamConfig(id="c", url=str(clip), realtime=False)
    source = VideoSource(stream, SourceConfig(allowed_schemes=["file"]), threading.Event())
    monkeypatch.setattr(source, "_target", lambda: f"concat:{clip}|{clip}")
    with pytest.raises(SourceOpenError):
        source.open()
    monkeypatch.undo()
    source.open()  # the same options open the plain file
    source.close()


def _read_all(source: VideoSource) -> int:
    count = 0
    with pytest.raises(SourceEndedError):
        for _ in source.frames():
            count += 1
    return count


@pytest.mark.parametrize(
    ("caps", "named"),
    [
        ({"max_width": 320}, "source.max_width 320"),
        ({"max_height": 200}, "source.max_height 200"),
        ({"max_fps": 24}, "source.max_fps 24"),
        ({"max_bitrate_kbps": 20}, "source.max_bitrate_kbps 20"),
    ],
)
def test_a_stream_over_a_cap_fails_for_good_naming_it(make_clip, caps, named) -> None:
    clip = make_clip(640, 360, 1.0, "h264", 5, 30)
    stream = StreamConfig(id="big", url=str(clip), realtime=False)
    within = SourceConfig(allowed_schemes=["file"])
    source = VideoSource(stream, within, threading.Event())
    source.open()
    assert _read_all(source) == 30  # the defaults take this clip
    over = SourceConfig(allowed_schemes=["file"], **caps)
    source = VideoSource(stream, over, threading.Event())
    with pytest.raises(SourceOpenError) as info:
        source.open()
    assert info.value.permanent and named in str(info.value) and "'big'" in str(info.value)


@pytest.mark.parametrize("size", [(640, 360), (800, 600), (352, 288)])
def test_the_decoder_is_capped_in_pixels_and_a_stream_at_the_caps_plays(make_clip, size) -> None:
    """max_pixels is set on the decoder, so a frame larger than the caps (after a mid-stream
    resolution change the open-time check never saw) is not allocated; a stream exactly at
    the caps still plays, also when its width is not a multiple of 64 (FFmpeg compares
    max_pixels with the row stride aligned up, not the width)."""
    w, h = size
    clip = make_clip(w, h, 1.0, "h264", 5, 30)
    policy = SourceConfig(allowed_schemes=["file"], max_width=w, max_height=h, max_fps=30)
    source = VideoSource(
        StreamConfig(id="c", url=str(clip), realtime=False), policy, threading.Event()
    )
    source.open()
    aligned = -(-w // 64) * 64
    assert source._container.streams.video[0].codec_context.options["max_pixels"] == str(
        aligned * h
    )
    assert _read_all(source) == 30


# ---- stream ids and the Redis key layout --------------------------------------------
NASTY_IDS = ["streams", "status", "worker", "detections", "deadletter", "0", "a.b", "a-b_c"]


def _keys(prefix: str, ids: list[str]) -> list[str]:
    from visionflow.consumer import ConsumerConfig
    from visionflow.schema import detections_key, status_key, streams_key, worker_key

    dead = ConsumerConfig(redis_url="redis://h", key_prefix=prefix).dead_letter_key
    keys = [streams_key(prefix)] + [worker_key(prefix, n) for n in range(3)]
    for sid in ids:
        keys += [detections_key(prefix, sid), status_key(prefix, sid)]
        keys.append(dead.format(prefix=prefix, stream_id=sid))
    return keys


def test_no_stream_id_produces_another_familys_key() -> None:
    ids = [StreamConfig(id=sid, url="rtsp://cam/x").id for sid in [*NASTY_IDS, "x" * 64]]
    for prefix in ("visionflow", "site:a", "a.b-c"):
        keys = _keys(prefix, ids)
        assert len(keys) == len(set(keys)), prefix


@pytest.mark.parametrize(
    "sid",
    [
        "a:b",
        "status:x",
        ":x",
        "a*",
        "a?",
        "a[b]",
        "a b",
        "cam\n",
        "cam\r",
        "-a",
        ".a",
        "_a",
        "",
        "x" * 65,
        "caméra",
        "cam٣",  # a non-ASCII digit
        "a/b",
        "a{b}",
    ],
)
def test_ids_that_could_bend_the_key_layout_are_refused(sid: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"streams": [{"id": sid, "url": "rtsp://cam/x"}]}, "<t>")
    assert "'id'" in str(info.value)


@pytest.mark.parametrize(
    "prefix", ["vf:detections", "status", "a:streams:b", "a:worker", "vf:", ":vf", "a::b"]
)
def test_a_prefix_cannot_reach_into_another_prefixs_families(prefix: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"redis": {"key_prefix": prefix}}, "<t>")
    assert "redis.key_prefix" in str(info.value) and repr(prefix) in str(info.value)


def test_prefixes_that_pass_never_share_keys() -> None:
    """Two valid prefixes, one nested in the other: no key of one is a key of the other."""
    outer = parse_config({"redis": {"key_prefix": "site"}}).redis.key_prefix
    inner = parse_config({"redis": {"key_prefix": "site:lobby"}}).redis.key_prefix
    ids = [*NASTY_IDS, "lobby"]
    assert not set(_keys(outer, ids)) & set(_keys(inner, ids))


def test_metadata_that_is_not_utf8_does_not_escape_the_source(tmp_path) -> None:
    """Found by bench/fuzz_ingest.py: PyAV decoded container metadata strictly, so a
    damaged title raised UnicodeDecodeError out of open() instead of a SourceError."""
    import av
    import numpy as np

    path = tmp_path / "meta.mp4"
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "QQQQQQQQ"
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
    data = path.read_bytes()
    assert data.count(b"QQQQQQQQ") == 1
    path.write_bytes(data.replace(b"QQQQQQQQ", b"\xff\xfe\xc3(\xed\xa0\x80Q"))
    policy = SourceConfig(allowed_schemes=["file"])
    source = VideoSource(
        StreamConfig(id="m", url=str(path), realtime=False), policy, threading.Event()
    )
    source.open()
    assert _read_all(source) == 5


@pytest.mark.parametrize(
    "url",
    ["rtsp:/admin:secret@cam/x", "file://admin:secret@host/x", "rtsp://u:se\tcret@cam/x",
     "ftp://admin:secret@cam/x", "http://admin:se/cret@cam/x"],
)  # fmt: skip
def test_a_refused_url_never_shows_its_password(url):
    from visionflow.config import parse_config
    from visionflow.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({"streams": [{"id": "a", "url": url}]})
    assert "secret" not in str(err.value) and "cret" not in str(err.value), str(err.value)
