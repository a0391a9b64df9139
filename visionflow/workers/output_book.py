"""The status board's account of the output processes: what each has published and dropped.

Each output process (one per shard, :mod:`visionflow.workers.shards`) reports cumulative
counts twice a second (:class:`OutputStats`).  A restarted one counts from zero again, so what
its predecessor reported last is kept as a base the new counts add to: no counter goes
backwards.  A stream's results go to exactly one shard, so a stream's totals are the base plus
the sum over the shards' latest reports; Redis gauges (connected, pending, spool depth) are
combined over the shards.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

from visionflow.workers.latency import StageLatency
from visionflow.workers.messages import OutputStats
from visionflow.workers.status import PublishStats


def _empty() -> OutputStats:
    return OutputStats(time.time(), (), (), 0, False, None)


@dataclass
class _Shard:
    """One output process's latest report, unpacked."""

    stats: OutputStats = field(default_factory=_empty)
    published: Counter[str] = field(default_factory=Counter)
    drops: dict[str, Counter[str]] = field(default_factory=dict)
    latency: dict[str, dict[str, StageLatency]] = field(default_factory=dict)
    fenced: Counter[tuple[str, int]] = field(default_factory=Counter)  # (stream, generation)


class OutputBook:
    """Totals over every output process, the ones gone included (not thread-safe: the board
    holds its lock around every call)."""

    def __init__(self) -> None:
        self._shards: dict[int, _Shard] = {}
        self._base_published: Counter[str] = Counter()  # counts of output processes gone
        self._base_drops: dict[str, Counter[str]] = {}
        self._base_publish = PublishStats()
        self._base_fenced: Counter[tuple[str, int]] = Counter()

    def apply(self, msg: OutputStats) -> None:
        """A report; one from a new process of a shard first moves the old one's to the base."""
        old = self._shards.get(msg.shard)
        if old is not None and old.stats.pid and msg.pid != old.stats.pid:
            self._base_published.update(old.published)
            for sid, reasons in old.drops.items():
                self._base_drops.setdefault(sid, Counter()).update(reasons)
            self._base_publish = old.stats.publish.plus(self._base_publish)
            self._base_fenced.update(old.fenced)
        shard = self._shards[msg.shard] = _Shard(
            stats=msg,
            published=Counter(dict(msg.published)),
            latency={sid: dict(stages) for sid, stages in msg.latency},
            fenced=Counter({(sid, gen): n for sid, gen, n in msg.fenced}),
        )
        for sid, reason, n in msg.dropped:
            shard.drops.setdefault(sid, Counter())[reason] += n

    def totals(self, sid: str) -> tuple[int, Counter[str]]:
        """Published and output-side drops of ``sid`` since the board started."""
        drops = Counter(self._base_drops.get(sid, {}))
        published = self._base_published[sid]
        for shard in self._shards.values():
            drops.update(shard.drops.get(sid, {}))
            published += shard.published[sid]
        return published, drops

    def fenced(self, key: tuple[str, int]) -> int:
        """Fenced drops of one registration (stream, generation)."""
        return self._base_fenced[key] + sum(s.fenced[key] for s in self._shards.values())

    def latency(self, sid: str) -> dict[str, StageLatency]:
        """Per stage, the latency of ``sid``'s written entries (from the shard writing it)."""
        for shard in self._shards.values():
            found = shard.latency.get(sid)
            if found is not None:
                return found
        return {}

    def combined(self) -> OutputStats:
        """The shards' Redis side as one: connected only if every shard is, pending and the
        spool summed, the first error named; counts include the processes gone."""
        reports = [s.stats for _, s in sorted(self._shards.items())]
        if not reports:
            return replace(_empty(), publish=self._base_publish)
        publish = replace(self._base_publish, spool_entries=0, spool_bytes=0)  # gone: no gauge
        for report in reports:
            publish = _add_gauges(report.publish.plus(publish), publish)
        return replace(
            reports[0],
            pending=sum(r.pending for r in reports),
            connected=all(r.connected for r in reports),
            last_error=next((r.last_error for r in reports if r.last_error), None),
            held_batches=sum(r.held_batches for r in reports),
            final=all(r.final for r in reports),
            publish=publish,
        )


def _add_gauges(stats: PublishStats, before: PublishStats) -> PublishStats:
    """``plus`` keeps the newest process's gauges; over shards they add up."""
    return replace(
        stats,
        spool_entries=stats.spool_entries + before.spool_entries,
        spool_bytes=stats.spool_bytes + before.spool_bytes,
    )
