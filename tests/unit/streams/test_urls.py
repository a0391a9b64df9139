from __future__ import annotations

import logging

from visionflow.streams.urls import RedactingFilter, redact_text, redact_url, url_secrets


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


SECRET_PARAMS = {
    "apikey": "k-1111",
    "pass": "p-2222",
    "access_token": "t-3333",
    "signature": "s-4444",
    "auth": "a-5555",
    "X-Amz-Credential": "c-6666",
    "client_secret": "s-7777",
    "PWD": "p-8888",
    "sig": "s-9999",
}


def test_every_secret_looking_query_parameter_is_redacted():
    query = "&".join(f"{k}={v}" for k, v in SECRET_PARAMS.items())
    url = f"rtsp://cam/live?channel=1&{query}&subtype=0"
    for out in (redact_url(url), redact_text(f"cannot open {url}: 401")):
        for name, value in SECRET_PARAMS.items():
            assert value not in out and f"{name}=***" in out, (name, out)
        assert "channel=1" in out and "subtype=0" in out  # plain parameters stay


def test_each_secret_parameter_alone_makes_a_url_sealed():
    from visionflow.streams.secrets import has_inline_secret

    for name, value in SECRET_PARAMS.items():
        assert has_inline_secret(f"rtsp://cam/live?{name}={value}"), name
        assert url_secrets(f"rtsp://cam/live?a=1&{name}={value}") == [value]
    assert not has_inline_secret("rtsp://cam/live?channel=1&subtype=0")
