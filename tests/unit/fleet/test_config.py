"""The fleet: section and the default node id."""

from __future__ import annotations

import pytest

from visionflow.config import parse_config
from visionflow.errors import ConfigError
from visionflow.fleet import config as fleet_config
from visionflow.fleet.config import FleetConfig, default_node_id


def test_default_node_id_is_the_host_name_made_valid_and_stable(monkeypatch):
    monkeypatch.setattr(fleet_config.socket, "gethostname", lambda: "gpu-node-1.dc:2")
    assert default_node_id() == "gpu-node-1.dc-2"
    long_name = "n" * 80
    monkeypatch.setattr(fleet_config.socket, "gethostname", lambda: long_name)
    first = default_node_id()
    assert len(first) <= 64 and first == default_node_id()  # no pid, no randomness
    assert FleetConfig().resolved_node_id() == first


def test_fleet_section_is_validated_with_named_fields():
    cfg = parse_config({"fleet": {"node_id": "a", "weight": 2, "lease_ttl_s": 4}})
    assert cfg.fleet is not None
    assert (cfg.fleet.renew_interval_s, cfg.fleet.redis_timeout_s) == (1.0, 0.5)
    assert parse_config({}).fleet is None  # no section: a single pipeline, no leases
    with pytest.raises(ConfigError, match=r"fleet\.node_id"):
        parse_config({"fleet": {"node_id": "a:b"}})
    with pytest.raises(ConfigError, match=r"fleet\.lease_ttl_s"):
        parse_config({"fleet": {"lease_ttl_s": 0.1}})
    with pytest.raises(ConfigError, match=r"fleet\.speed"):
        parse_config({"fleet": {"speed": 1}})
