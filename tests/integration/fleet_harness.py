"""Several ``visionflow run`` node processes of one fleet on this machine, and what the fleet
left in Redis (leases, node records, detections, hand-overs); used by
``tests/integration/test_fleet.py`` and ``bench/fleet.py``."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.integration.helpers import entries, last_entry, start_run
from visionflow.fleet.view import lease_holders
from visionflow.schema import Entry, fleet_handovers_key, fleet_nodes_key


@dataclass
class Node:
    node_id: str
    proc: subprocess.Popen[str]
    reader: threading.Thread
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)


class FleetHarness:
    """Node processes sharing ``cameras`` (stream id -> URL) through ``redis_url``."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        prefix: str,
        cameras: Mapping[str, str],
        lease_ttl_s: float = 3.0,
        fleet: Mapping[str, Any] | None = None,
        analyze_duration_s: float | None = 1.0,
    ) -> None:
        self.analyze_duration_s = analyze_duration_s
        self.workdir, self.redis_url, self.prefix = workdir, redis_url, prefix
        self.cameras, self.lease_ttl_s = dict(cameras), lease_ttl_s
        self.fleet = dict(fleet or {})
        self.nodes: dict[str, Node] = {}
        self.client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)

    def config(
        self, node_id: str, redis_url: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> Path:
        """The node's config: ``redis_url`` instead of the fleet's (a node behind a proxy),
        ``extra`` top-level sections added (``api``...)."""
        cfg = {
            "streams": [{"id": sid, "url": url} for sid, url in self.cameras.items()],
            "redis": {
                "url": redis_url or self.redis_url,
                "key_prefix": self.prefix,
                "spool_dir": str(self.workdir / f"spool-{node_id}"),
                "counts_retention_s": 0,
            },
            "source": {
                "open_timeout_s": 4,
                "read_timeout_s": 2,
                "stall_timeout_s": 3,
                "analyze_duration_s": self.analyze_duration_s,
            },
            "workers": {"inference_workers": 1, "ingest_processes": 1},
            "output": {"snapshot_interval_s": 0},
            "registry": {"watch_config": False},
            "fleet": {
                "node_id": node_id,
                "lease_ttl_s": self.lease_ttl_s,
                "moves_per_s": 2,
                **self.fleet,
            },
            **(extra or {}),
        }
        path = self.workdir / f"{node_id}.yaml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return path

    def start(
        self, node_id: str, redis_url: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> Node:
        path = self.config(node_id, redis_url, extra)
        node = Node(node_id, *start_run(path, lines := []), lines=lines)
        self.nodes[node_id] = node
        return node

    def kill(self, node_id: str, sig: int = signal.SIGKILL, wait_s: float = 60) -> int:
        node = self.nodes.pop(node_id)
        node.proc.send_signal(sig)
        return node.proc.wait(timeout=wait_s)

    def stop_all(self) -> None:
        for node_id in list(self.nodes):
            node = self.nodes[node_id]
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait(timeout=30)
            del self.nodes[node_id]
        self.client.close()

    def outputs(self) -> str:
        return "\n".join(f"--- {n.node_id}\n{n.output[-3000:]}" for n in self.nodes.values())

    # ---- what Redis says --------------------------------------------------------------
    def holders(self) -> dict[str, str]:
        """Stream -> the node holding its lease."""
        return lease_holders(self.client, self.prefix)

    def records(self) -> dict[str, dict[str, Any]]:
        raw = self.client.hgetall(fleet_nodes_key(self.prefix))
        return {k: json.loads(v) for k, v in raw.items()}

    def readers(self) -> dict[str, list[str]]:
        """Stream -> the live nodes whose last heartbeat says they read it."""
        out: dict[str, list[str]] = {}
        for nid, rec in self.records().items():
            if nid in self.nodes:
                for sid in rec.get("reading", []):
                    out.setdefault(sid, []).append(nid)
        return out

    def balanced(self, nodes: list[str], slack: int = 1) -> bool:
        """Every camera leased by one of ``nodes`` and read by exactly that node, counts
        within ``slack`` of each other."""
        holders = self.holders()
        if set(holders) != set(self.cameras) or set(holders.values()) - set(nodes):
            return False
        readers = self.readers()
        if any(readers.get(sid) != [node] for sid, node in holders.items()):
            return False
        counts = [list(holders.values()).count(n) for n in nodes]
        return max(counts) - min(counts) <= slack

    def entries(self, stream_id: str) -> list[Entry]:
        return entries(self.client, self.prefix, stream_id)

    def last_entry(self, stream_id: str) -> Entry | None:
        """The camera's newest detections entry (cheap to poll)."""
        return last_entry(self.client, self.prefix, stream_id)

    def handovers(self) -> list[dict[str, str]]:
        return [f for _, f in self.client.xrange(fleet_handovers_key(self.prefix))]


def seq_report(entries: list[Entry], handovers: list[dict[str, str]]) -> dict[str, int]:
    """One camera's detections across hand-overs: ``duplicates`` (a seq written twice),
    ``backwards`` (seq not increasing), ``unexplained`` (a jump over a hand-over that no
    record of ``handovers`` explains), ``gaps`` (seqs missing within one owner's run)."""
    seqs = [e.seq for e in entries]
    dups = len(seqs) - len(set(seqs))
    backwards = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    moves = [(int(h["last_seq"]), int(h["first_seq"])) for h in handovers]
    unexplained = 0
    for a, b in itertools.pairwise(seqs):
        jump = b - a
        if jump > 1 and any(last == a and first <= b for last, first in moves):
            continue
        if jump > 1 and not any(a <= last < b for last, _ in moves):
            continue  # a gap inside one owner's run (frames dropped), not a hand-over
        if jump > 1:
            unexplained += 1
    return {"duplicates": dups, "backwards": backwards, "unexplained": unexplained}
