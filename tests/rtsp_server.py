#!/usr/bin/python3
"""A small RTSP server for visionflow's tests, on GStreamer's gst-rtsp-server.

Run with Debian's /usr/bin/python3 (python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-{base,good,ugly,bad}):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 \
        --mount cam1=test:640x360@30 --mount truth=file:/tmp/clip.mp4 [--auth user:pass]

Mount kinds:
  test:WxH@FPS[:h264|h265]   live synthetic video (videotestsrc, moving ball), encoded live
  file:PATH                  an mp4 with H.264 or HEVC, streamed once in real time from frame 0

Every client gets its own media pipeline (not shared), so a file mount always starts at its
first frame.  Prints "READY <port>" on stdout once it listens.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also under PYTHONSAFEPATH
from mp4_codec import is_hevc  # noqa: E402


def launch_line(spec: str) -> str:
    kind, _, arg = spec.partition(":")
    if kind == "test":
        size_rate, _, codec = arg.partition(":")
        size, _, fps = size_rate.partition("@")
        width, _, height = size.partition("x")
        fps = fps or "30"
        if (codec or "h264") == "h265":
            enc = f"x265enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! h265parse ! rtph265pay"
        else:
            enc = (
                f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bframes=0 "
                "! video/x-h264,profile=constrained-baseline ! h264parse ! rtph264pay"
            )
        return (
            f"( videotestsrc is-live=true pattern=ball ! "
            f"video/x-raw,width={width},height={height},framerate={fps}/1 ! "
            f"videoconvert ! {enc} name=pay0 pt=96 config-interval=1 )"
        )
    if kind == "file":
        parse = "h265parse ! rtph265pay" if is_hevc(arg) else "h264parse ! rtph264pay"
        return f"( filesrc location={arg} ! qtdemux ! {parse} name=pay0 pt=96 config-interval=1 )"
    raise SystemExit(f"unknown mount kind {kind!r} in {spec!r}")


def add_auth(server: GstRtspServer.RTSPServer, factories: list, user: str, password: str) -> None:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "user")
    basic = GstRtspServer.RTSPAuth.make_basic(user, password)
    auth.add_basic(basic, token)
    server.set_auth(auth)
    for factory in factories:
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role("user")
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(permissions)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", action="append", default=[], help="name=kind:args")
    parser.add_argument("--auth", default=None, help="user:password required for every mount")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    factories = []
    for mount in args.mount:
        name, _, spec = mount.partition("=")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(spec))
        factory.set_shared(False)
        mounts.add_factory(f"/{name}", factory)
        factories.append(factory)
    if args.auth:
        user, _, password = args.auth.partition(":")
        add_auth(server, factories, user, password)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on port {args.port}")
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print(f"READY {args.port}", flush=True)
    sys.stdout.flush()
    loop.run()


if __name__ == "__main__":
    main()
