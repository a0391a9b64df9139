"""Secrets in the config: ``${file:PATH}``, the CLI's --redis-url / VISIONFLOW_REDIS_URL, the
TLS fields, and the ACL rules README documents."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.exceptions import NoPermissionError
from typer.testing import CliRunner

from tests.conftest import ROOT
from visionflow.cli import _load, app
from visionflow.config import RedisConfig, load_config
from visionflow.errors import ConfigError
from visionflow.redis_client import acl_rules, denied, explain, fatal


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cams.yaml"
    path.write_text(text)
    return path


CONFIG = """
streams:
  - id: door
    url: rtsp://viewer:${file:secrets/cam}@10.0.0.5/live
redis:
  url: rediss://vf-publisher:${file:/SECRETS/redis}@redis.example:6380/0
  tls_ca_file: certs/ca.pem
"""


def test_secret_files_are_read_stripped_and_relative_to_the_config(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "cam").write_text("c4m-pw\n")
    (tmp_path / "redis").write_text("  r3d-pw\n")
    cfg = load_config(write(tmp_path, CONFIG.replace("/SECRETS", str(tmp_path))))
    assert cfg.streams[0].url == "rtsp://viewer:c4m-pw@10.0.0.5/live"
    assert cfg.redis.url == "rediss://vf-publisher:r3d-pw@redis.example:6380/0"
    assert cfg.redis.tls_ca_file == str(tmp_path / "certs" / "ca.pem")  # made absolute


@pytest.mark.parametrize("content", [None, "\n"])
def test_a_missing_or_empty_secret_file_names_the_field_and_file(tmp_path, content):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "redis").write_text("r3d-pw")
    if content is not None:
        (tmp_path / "secrets" / "cam").write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, CONFIG.replace("/SECRETS", str(tmp_path))))
    text = str(info.value)
    assert "streams[0].url" in text and "secrets/cam" in text
    assert ("empty" if content else "No such file") in text
    assert "r3d-pw" not in text


def test_tls_key_without_certificate_is_refused():
    with pytest.raises(ValueError, match="tls_key_file is set without tls_cert_file"):
        RedisConfig(tls_key_file="k.pem")


def test_tls_files_only_apply_to_rediss_urls():
    cfg = RedisConfig(tls_ca_file="/ca.pem", tls_cert_file="/c.pem", tls_key_file="/k.pem")
    assert cfg.tls_kwargs("redis://h:6379/0") == {}
    assert cfg.tls_kwargs("rediss://h:6380/0") == {
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
    }


def test_redis_url_option_substitutes_env_and_files(tmp_path, monkeypatch):
    path = write(tmp_path, "streams: [{id: a, url: 'rtsp://h/x'}]\nredis: {url: redis://old:1/0}")
    (tmp_path / "pw").write_text("f1le-pw\n")
    monkeypatch.setenv("VF_URL", "redis://u:env-pw@h:1/0")
    assert _load(path, "${VF_URL}").redis.url == "redis://u:env-pw@h:1/0"
    assert _load(path, "redis://u:${file:pw}@h:1/0").redis.url == "redis://u:f1le-pw@h:1/0"
    assert _load(path).redis.url == "redis://old:1/0"


def test_visionflow_redis_url_env_reaches_the_cli(tmp_path):
    """An unreachable URL given only in VISIONFLOW_REDIS_URL is the one the CLI tries (and
    reports, password redacted)."""
    path = write(tmp_path, "streams: [{id: a, url: 'rtsp://h/x'}]")
    url = "redis://u:env-pw@127.0.0.1:9/0"
    result = CliRunner().invoke(
        app, ["consume", "-c", str(path), "--max", "1"], env={"VISIONFLOW_REDIS_URL": url}
    )
    assert result.exit_code == 1, result.output
    assert "127.0.0.1:9" in result.output and "env-pw" not in result.output


def test_acl_denials_are_explained_with_command_and_key():
    exc = denied(NoPermissionError("No permissions to access a key"), "XADD", "p:detections:a")
    text = explain(exc)
    assert "permission denied by the Redis ACL" in text and "XADD p:detections:a" in text
    assert fatal(exc) and not fatal(redis.ConnectionError("Connection refused"))
    assert explain(redis.AuthenticationError("invalid username-password pair")).startswith(
        "Redis refused the login"
    )


def test_readme_documents_the_acl_rules():
    readme = (ROOT / "README.md").read_text()
    for role in ("publisher", "consumer", "fenced"):
        assert acl_rules(role) in readme, f"README lacks the {role} ACL rules"


def test_ffmpeg_log_is_off_and_when_on_goes_through_the_redacting_handler():
    """PyAV leaves FFmpeg's log off (level None): its messages reach visionflow only inside
    exceptions, which are redacted where they are caught.  Someone turning it on gets the
    lines as ``libav.*`` Python records, which the root handler redacts like any other."""
    import io
    import logging

    import av.logging

    from visionflow.workers.logs import setup_logging

    assert av.logging.get_level() is None
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging(logging.INFO, stream=out)
        logging.getLogger("libav.rtsp").error("opening rtsp://viewer:pa55@10.0.0.7/s failed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "viewer:***@10.0.0.7" in out.getvalue() and "pa55" not in out.getvalue()
