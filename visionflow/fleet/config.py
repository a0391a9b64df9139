"""The ``fleet:`` section of a config file: this process as one node of a fleet."""

from __future__ import annotations

import hashlib
import socket

from pydantic import BaseModel, ConfigDict, Field, model_validator

NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


def default_node_id() -> str:
    """The host name (a pod's name on Kubernetes), made a valid node id: characters other
    than letters, digits, '_', '.', '-' become '-', and a long name is cut and suffixed
    with a short hash of the whole name (stable across restarts; no pid in it)."""
    host = socket.gethostname() or "node"
    clean = "".join(c if c.isalnum() or c in "_.-" else "-" for c in host).strip("-._") or "node"
    if len(clean) > 64:
        digest = hashlib.sha1(host.encode()).hexdigest()[:8]
        clean = f"{clean[:55]}-{digest}"
    return clean


class FleetConfig(BaseModel):
    """Several ``visionflow run`` processes with the same Redis and key prefix share the
    streams: each stream is read by exactly one node, which holds its lease in Redis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str | None = Field(
        default=None,
        pattern=NODE_ID_PATTERN,
        description="This node's id, unique in the fleet (1-64 letters, digits, '_', '.', "
        "'-'). Empty: the host name (a pod's name on Kubernetes). Two live processes must not "
        "share an id: they would both believe they hold the same leases.",
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        description="This node's share of the streams relative to the others (e.g. its GPU "
        "count, or the streams it was measured to sustain): streams are spread in proportion.",
    )
    capacity: int | None = Field(
        default=None,
        ge=0,
        description="Most streams this node takes whatever the weights say; empty: no limit. "
        "Streams no node has room for stay unassigned (shown by GET /fleet).",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="This node's placement labels (e.g. site: north, gpu: h100).",
    )
    placement_keys: list[str] = Field(
        default_factory=list,
        description="Label keys that pin streams: a stream whose labels have one of these "
        "keys runs only on nodes with the same value for it (e.g. [site]: a camera labelled "
        "site: north only on nodes labelled site: north). Other labels do not constrain.",
    )
    lease_ttl_s: float = Field(
        default=10.0,
        ge=1.0,
        le=300.0,
        description="Lease timeout: a stream whose node died is taken over by another node "
        "about this long after the node's last renewal. Leases are renewed every quarter of it "
        "(Redis calls of the fleet time out after an eighth); a node that cannot renew (Redis "
        "unreachable) stops the stream before its lease can expire.",
    )
    moves_per_s: float = Field(
        default=2.0,
        gt=0,
        description="Rebalancing rate: at most this many streams per second a node gives up "
        "to a less loaded node (a new node fills gradually, no storm).",
    )
    acquire_per_s: float = Field(
        default=50.0,
        gt=0,
        description="At most this many free streams (new, or of a dead node) a node takes "
        "per second.",
    )
    drain_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="On SIGTERM: how long to wait for in-flight frames to be written before "
        "the leases are released anyway.",
    )

    @model_validator(mode="after")
    def _keys_known(self) -> FleetConfig:
        for key in self.placement_keys:
            if not key:
                raise ValueError("placement_keys: empty key")
        return self

    @property
    def renew_interval_s(self) -> float:
        """The node's tick: renewal, heartbeat, planning."""
        return self.lease_ttl_s / 4

    @property
    def redis_timeout_s(self) -> float:
        """Socket timeout of the fleet's Redis calls (two fit in a tick)."""
        return self.lease_ttl_s / 8

    def resolved_node_id(self) -> str:
        return self.node_id or default_node_id()
