"""The dashboard at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by
Playwright for Python) against a running pipeline: real RTSP cameras, a real Redis, the API
served by ``visionflow run``.  Screenshots go to ``test-artifacts/dashboard/`` (git-ignored).

Where the pipeline does not yet write counts and snapshots itself, the test writes them into
Redis the way the output stage does (minute hashes, a JPEG encoded by PyAV) so the chart and
a tile's frame are drawn from real API answers."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import ROOT, wait_until
from tests.images import scene_jpeg
from tests.integration.helpers import http_get, visionflow_cli
from tests.unit.api.conftest import pipeline_status, stream_status, worker_status, write_status
from visionflow.redis_server import free_port
from visionflow.schema import COUNT_BUCKET_S, count_field, counts_key, snapshot_key, status_key
from visionflow.streams.state import StreamState
from visionflow.workers.status import StreamStatus

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
TOKEN = "dash-token-7c41"
DOM_WAIT_MS = 25_000


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page (1440x900) and the errors it reported (console errors, uncaught
    exceptions, failed requests)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (Debian package chromium; scripts/bootstrap.sh dev)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "failure.png").unlink(missing_ok=True)
    print(f"\ndashboard screenshots: {ARTIFACTS}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        page.vf_errors = errors  # for wait_dom's failure message
        page.on(
            "console",
            lambda m: (
                errors.append(f"console {m.type}: {m.text} {m.location}")
                if m.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}"))
        try:
            yield page, errors
        finally:
            browser.close()


def seed_counts(client: redis.Redis, prefix: str, streams: list[str]) -> None:
    """An hour of minute buckets, as the output stage keeps them."""
    now = int(time.time()) // COUNT_BUCKET_S * COUNT_BUCKET_S
    pipe = client.pipeline(transaction=False)
    for back in range(60):
        minute = now - back * COUNT_BUCKET_S
        wave = 1 + ((59 - back) % 20) / 10
        for n, sid in enumerate(streams):
            fields = {
                count_field(sid, "person"): int((9 + 3 * n) * wave),
                count_field(sid, "car"): int((5 + n) * (3 - wave)),
                count_field(sid, "bicycle"): (back * 7 + n) % 4,
            }
            pipe.hset(counts_key(prefix, minute), mapping=fields)  # type: ignore[arg-type]
        pipe.expire(counts_key(prefix, minute), 3600 * 2)
    pipe.execute()


def boxes(page: Any) -> list[Any]:
    """Every tile's id and box on the page (whole pixels)."""
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        ".tile",
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return [e.dataset.id, ...[r.x, r.y, r.width, r.height].map(Math.round)]; })",
    )


def tile(stream_id: str, extra: str = "") -> str:
    return f'.tile[data-id="{stream_id}"]{extra}'


def wait_dom(page: Any, selector: str, what: str, state: str = "visible") -> None:
    try:
        page.wait_for_selector(selector, timeout=DOM_WAIT_MS, state=state)
    except Exception:  # playwright's TimeoutError: say what the page showed instead
        shot = ARTIFACTS / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        states = page.eval_on_selector_all(
            ".tile", "els => els.map(e => e.dataset.id + ':' + e.dataset.state)"
        )
        errors = getattr(page, "vf_errors", [])
        pytest.fail(
            f"{what}: no {selector!r} within {DOM_WAIT_MS / 1000:.0f}s; tiles {states}; "
            f"page errors {errors}; {shot}"
        )


@contextlib.contextmanager
def pipeline(cfg: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(cfg))
    base = f"http://{cfg['api']['listen']}"
    with visionflow_cli("run", "-c", str(path), "--plain", env={"VF_API_TOKEN": TOKEN}) as lines:
        wait_until(
            lambda: (r := http_get(base, "/readyz")) is not None and r.status_code == 200,
            60,
            lambda: f"pipeline API never ready: {''.join(lines)[-3000:]}",
        )
        yield base


def test_dashboard_shows_streams_turns_a_stopped_camera_red_and_a_new_one_appears(
    rtsp, redis_client, redis_server, key_prefix, tmp_path, browser_page
):
    page, errors = browser_page
    cam_a = rtsp({"gate": "test:320x240@10"})
    cam_b = rtsp({"dock": "test:320x240@10"})  # its own process: stopped below
    cfg = {
        "streams": [
            {"id": "gate", "url": cam_a.url("gate"), "labels": {"site": "north"}},
            {"id": "dock", "url": cam_b.url("dock"), "labels": {"site": "south"}},
        ],
        "redis": {"url": redis_server, "key_prefix": key_prefix, "spool_dir": ""},
        "source": {
            "open_timeout_s": 3,
            "read_timeout_s": 2,
            "stall_timeout_s": 2,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 0.5,
            "max_retries": 2,
        },
        # reads protected: the page gets the token once from ?token= and sends it as a header
        "api": {
            "listen": f"127.0.0.1:{free_port()}",
            "token": "${VF_API_TOKEN}",
            "protect_reads": True,
        },
    }
    seed_counts(redis_client, key_prefix, ["gate", "dock"])
    redis_client.set(snapshot_key(key_prefix, "gate"), scene_jpeg(640, 360, seed=3), ex=600)
    with pipeline(cfg, tmp_path) as base:
        assert httpx.get(base + "/streams").status_code == 401  # reads need the token
        page.goto(base + f"/?token={TOKEN}")
        assert TOKEN not in page.url, "the token stayed in the address bar"
        for sid in ("gate", "dock"):
            wait_dom(page, tile(sid, '[data-state="streaming"]'), f"{sid} never shown streaming")
        wait_dom(page, tile("gate", " img:not([hidden])"), "gate's snapshot never drawn")
        wait_dom(page, "#legend li", "the counts chart has no legend")
        assert "person" in page.inner_text("#legend")
        wait_dom(page, ".health[data-ok='yes']", "health never shown ready")
        wait_dom(page, "#workers tr[data-worker='0']", "worker 0 not listed")
        before = boxes(page)
        polls = int(page.get_attribute("body", "data-polls") or 0)
        page.wait_for_function(f"+document.body.dataset.polls >= {polls + 2}", timeout=DOM_WAIT_MS)
        assert boxes(page) == before, "tiles moved or changed size while their numbers updated"
        page.screenshot(path=str(ARTIFACTS / "1-streaming.png"), full_page=True)

        cam_b.stop()  # the camera goes away: reconnects fail, then the stream is failed
        wait_dom(page, tile("dock", " .badge[data-tone='bad']"), "stopped camera's badge not red")
        ids = page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.id)")
        assert ids[0] == "dock", f"the failed stream is not sorted first: {ids}"
        assert page.inner_text(tile("dock", " .state")) in ("failed", "stopped")
        assert page.inner_text(tile("dock", " .error")).strip() not in ("", "no errors")
        page.screenshot(path=str(ARTIFACTS / "2-camera-stopped.png"), full_page=True)

        added = httpx.post(
            base + "/streams",
            json={"id": "yard", "url": cam_a.url("gate")},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert added.status_code == 201, added.text
        wait_dom(page, tile("yard"), "the stream added through the API has no tile")
        wait_dom(page, tile("yard", '[data-state="streaming"]'), "the added stream never streams")
        page.keyboard.press("/")  # the shortcut to the filter box
        page.keyboard.type("yard")
        wait_dom(page, tile("gate"), "filter did not hide gate", state="hidden")
        assert page.is_visible(tile("yard"))
        page.keyboard.press("Escape")
        wait_dom(page, tile("gate"), "clearing the filter did not show gate again")
        page.screenshot(path=str(ARTIFACTS / "3-stream-added.png"), full_page=True)
    assert not errors, "the page reported errors:\n" + "\n".join(errors)


def hundred_streams(t: float) -> tuple[StreamStatus, ...]:
    """100 cameras: 3 failed, 4 reconnecting, the rest streaming at varied rates."""
    out = []
    for i in range(1, 101):
        sid = f"cam-{i:03d}"
        if i in (17, 58, 91):
            changes: dict[str, Any] = {
                "state": StreamState.FAILED,
                "fps": 0.0,
                "analysis_fps": 0.0,
                "last_frame_ts": t - 95 - i,
                "last_error": f"rtsp://10.0.{i}.7/live: cannot open: Connection refused "
                "(gave up after 5 retries)",
            }
        elif i in (5, 33, 64, 77):
            changes = {"state": StreamState.BACKOFF, "fps": 0.0, "analysis_fps": 0.0}
            changes["last_frame_ts"] = t - 4 - i % 7
        else:
            changes = {"fps": 24.0 + (i % 7) * 0.4, "analysis_fps": 5.0 + (i % 3) * 2.5}
        changes["url"] = f"rtsp://10.0.{i}.7/live"
        changes["labels"] = {"site": ("north", "south", "dock")[i % 3]}
        changes["published"] = 1000 * i + 17
        changes["drops"] = {"inference_behind": i % 5} if i % 4 == 0 else {}
        out.append(stream_status(sid, **changes))
    return tuple(out)


@contextlib.contextmanager
def status_writer(url: str, prefix: str, client: redis.Redis) -> Iterator[None]:
    """What the pipeline's status writer does every second: 100 streams, 2 workers, and
    each streaming stream's latency_ms."""
    stop = threading.Event()

    def write() -> None:
        streams = hundred_streams(time.time())
        workers = (worker_status(0, device="cuda:0"), worker_status(1, device="cuda:1"))
        write_status(url, prefix, pipeline_status(streams, workers))
        pipe = client.pipeline(transaction=False)
        for n, s in enumerate(streams):
            if s.state == StreamState.STREAMING:
                p50 = 38.0 + n % 9 * 2.5
                total = {"p50": p50, "p99": p50 * 2.4, "count": 500, "sum": p50 * 500}
                pipe.hset(
                    status_key(prefix, s.stream_id), "latency_ms", json.dumps({"total": total})
                )
        pipe.execute()

    def run() -> None:
        while not stop.wait(1.0):
            write()

    write()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def test_dashboard_at_100_streams_from_visionflow_api(
    redis_client, redis_server, key_prefix, tmp_path, browser_page
):
    """``visionflow api`` alone, reading the status 100 cameras' pipeline keeps in Redis."""
    page, errors = browser_page
    ids = [f"cam-{i:03d}" for i in range(1, 101)]
    seed_counts(redis_client, key_prefix, ids[:12])
    for n, sid in enumerate(ids[:16]):
        jpeg = scene_jpeg(480, 270, seed=n + 1, index=60 + n * 7, noise=1.0)
        redis_client.set(snapshot_key(key_prefix, sid), jpeg, ex=600)
    port = free_port()
    cfg = {"streams": [], "redis": {"url": redis_server, "key_prefix": key_prefix}}
    path = tmp_path / "api.yaml"
    path.write_text(json.dumps(cfg))
    base = f"http://127.0.0.1:{port}"
    with (
        status_writer(redis_server, key_prefix, redis_client),
        visionflow_cli("api", "-c", str(path), "--listen", f"127.0.0.1:{port}") as lines,
    ):
        wait_until(
            lambda: (r := http_get(base, "/readyz")) is not None and r.status_code == 200,
            30,
            lambda: f"visionflow api never ready: {''.join(lines)[-3000:]}",
        )
        page.goto(base + "/")
        page.wait_for_function(
            "document.querySelectorAll('.tile').length === 100", timeout=DOM_WAIT_MS
        )
        wait_dom(page, tile("cam-001", " img:not([hidden])"), "cam-001's snapshot never drawn")
        order = page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.id)")
        assert order[:3] == ["cam-017", "cam-058", "cam-091"], f"failed not first: {order[:8]}"
        assert order[3:7] == ["cam-005", "cam-033", "cam-064", "cam-077"], order[:8]
        assert page.inner_text("#n-bad") == "3" and page.inner_text("#n-warn") == "4"
        page.screenshot(path=str(ARTIFACTS / "4-hundred-streams.png"))
        page.click("#chips button[data-show='bad']")
        shown = page.eval_on_selector_all(
            ".tile:not([hidden])", "els => els.map(e => e.dataset.id)"
        )
        assert shown == ["cam-017", "cam-058", "cam-091"], shown
        page.click("#chips button[data-show='all']")
        page.fill("#filter", "dock")
        shown = page.eval_on_selector_all(".tile:not([hidden])", "els => els.length")
        assert shown == 33, f"{shown} tiles for site=dock, expected 33"
        page.fill("#filter", "")
        page.locator(tile("cam-010")).scroll_into_view_if_needed()  # frames load once on screen
        wait_dom(page, tile("cam-010", " img:not([hidden])"), "cam-010's snapshot not loaded")
        page.evaluate("window.scrollTo(0, 0)")
        page.click(".density button[data-density='compact']")
        page.screenshot(path=str(ARTIFACTS / "5-hundred-compact.png"))
    assert not errors, "the page reported errors:\n" + "\n".join(errors)
