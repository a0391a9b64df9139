from __future__ import annotations

import logging

from visionflow.streams.urls import RedactingFilter, redact_text, redact_url


def test_redact_url_keeps_user_host_and_path():
    assert (
        redact_url("rtsp://admin:hunter2@10.0.0.5:554/live?x=1")
        == "rtsp://admin:***@10.0.0.5:554/live?x=1"
    )
    assert redact_url("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"
    assert redact_url("https://h/x?token=abc&a=1") == "https://h/x?token=***&a=1"
    assert redact_url("/data/clip.mp4") == "/data/clip.mp4"


def test_redact_text_finds_urls_anywhere():
    text = "Server returned 401: 'rtsp://u:p%40ss@h/x' and rtsps://a:b@c"
    out = redact_text(text)
    assert "p%40ss" not in out and ":b@" not in out and "u:***@h" in out


def test_logging_filter_redacts_messages_and_args(caplog):
    logger = logging.getLogger("vf-test-redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("opening %s", "rtsp://cam:s3cret@h/1")
    assert "s3cret" not in caplog.text and "cam:***@h" in caplog.text
