"""The curated public API: every name in ``visionflow.__all__`` resolves."""

from __future__ import annotations

import visionflow


def test_every_public_name_resolves_and_errors_share_one_base():
    for name in visionflow.__all__:
        assert getattr(visionflow, name) is not None, name
    assert issubclass(visionflow.ModelError, visionflow.VisionflowError)
    assert visionflow.Pipeline.__module__ == "visionflow.workers.supervisor"
