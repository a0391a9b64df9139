"""ConsumerConfig: strict, documented, and the dead-letter key template checked up front."""

from __future__ import annotations

import os
import socket

import pytest
from pydantic import ValidationError

from visionflow.consumer import ConsumerConfig, DetectionConsumer, describe


def test_defaults_name_the_consumer_after_host_and_pid():
    cfg = ConsumerConfig(redis_url="redis://localhost:6379/0")
    assert cfg.consumer == f"{socket.gethostname()}-{os.getpid()}"
    assert (cfg.start_id, cfg.streams) == ("$", [])


def test_unknown_fields_and_bad_values_are_rejected():
    with pytest.raises(ValidationError, match="extra_forbidden"):
        ConsumerConfig(redis_url="redis://h", max_delivery=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="max_deliveries"):
        ConsumerConfig(redis_url="redis://h", max_deliveries=0)
    with pytest.raises(ValidationError, match="start_id"):
        ConsumerConfig(redis_url="redis://h", start_id="1-0")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"only \{prefix\} and \{stream_id\}"):
        ConsumerConfig(redis_url="redis://h", dead_letter_key="{prefix}:dl:{camera}")


def test_every_field_is_described():
    for name, field in ConsumerConfig.model_fields.items():
        assert field.description, name


def test_dead_letter_key_and_description_keep_the_password_out():
    cfg = ConsumerConfig(
        redis_url="redis://u:hunter2@h:6379/0",
        key_prefix="site",
        dead_letter_key="{prefix}:dl:{stream_id}",
    )
    consumer = DetectionConsumer(cfg)  # connects lazily: no server needed
    assert consumer.dead_letter_key("cam1") == "site:dl:cam1"
    text = describe(cfg)
    assert "hunter2" not in text and "u:***@h:6379" in text
    consumer.close()
