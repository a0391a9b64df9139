"""The api: section: listen, token, token_file."""

from __future__ import annotations

import pytest

from visionflow.api.auth import resolve_token
from visionflow.api.config import ApiConfig
from visionflow.config import parse_config
from visionflow.errors import ConfigError


def test_absent_by_default_and_loopback_when_given():
    assert parse_config({}).api is None
    api = parse_config({"api": {}}).api
    assert api is not None and (api.host, api.port) == ("127.0.0.1", 8080)


def test_token_from_env_is_hidden(monkeypatch, tmp_path):
    monkeypatch.setenv("VF_TOKEN", "tok-123")
    cfg = parse_config({"api": {"listen": "0.0.0.0:9000", "token": "${VF_TOKEN}"}})
    assert cfg.api is not None and resolve_token(cfg.api, tmp_path) == "tok-123"
    assert "tok-123" not in repr(cfg) and "tok-123" not in cfg.model_dump_json()


def test_token_file_is_read_relative_to_the_config(tmp_path):
    (tmp_path / "secret").write_text("  from-file\n")
    api = ApiConfig(listen="[::]:0", token_file="secret")
    assert resolve_token(api, tmp_path) == "from-file"
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_token(ApiConfig(token_file="missing"), tmp_path)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_token(ApiConfig(token_file="empty"), tmp_path)
    assert resolve_token(ApiConfig(), tmp_path) is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"listen": "0.0.0.0:8080"}, "reachable from other machines"),
        ({"listen": "8080"}, "not HOST:PORT"),
        ({"listen": "127.0.0.1:70000"}, "above 65535"),
        ({"token": "a", "token_file": "b"}, "not both"),
        ({"token": "  "}, "empty"),
        ({"tokn": "x"}, "tokn"),
    ],
)
def test_bad_sections_are_refused_with_the_field(section, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config({"api": section}, "site.yaml")
    assert "site.yaml" in str(err.value) and "api" in str(err.value)
