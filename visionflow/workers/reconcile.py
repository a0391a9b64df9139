"""Keeps a running pipeline's streams equal to the desired set: the runtime registry in Redis
merged with the config file, which is re-read when it changes (hot reload); in a fleet,
only the part of it this node holds leases for (``scope``, :mod:`visionflow.fleet.node`).

A thread polls the registry's version counter (one GET every ``registry.poll_interval_s``)
and the config file's mtime and size (every ``registry.watch_interval_s``).  When either
changed, it reads the desired set and applies the difference to the pipeline: new streams
are added, removed ones removed, changed ones updated in place
(:meth:`~visionflow.workers.supervisor.Pipeline.update_stream`); the other streams are not
touched.  An edited config file that does not validate is logged (pydantic's message, with
file, stream and field) and the running set is kept; sections other than ``streams`` need a
restart: their changes are logged as such, not applied.  An unreachable Redis is logged and
retried; the running set is kept meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import redis

from visionflow.config import AppConfig, load_config
from visionflow.errors import ConfigError
from visionflow.streams.backoff import Backoff
from visionflow.streams.config import StreamConfig
from visionflow.streams.registry import StreamRegistry
from visionflow.streams.urls import redact_text

log = logging.getLogger("visionflow.reconcile")


#: the part of the desired streams this process runs (a fleet node: the streams it leases)
Scope = Callable[[Sequence[StreamConfig]], Sequence[StreamConfig]]


class StreamTarget(Protocol):
    """What the reconciler drives (:class:`~visionflow.workers.supervisor.Pipeline`)."""

    def streams(self) -> dict[str, StreamConfig]: ...

    def add_stream(self, stream: StreamConfig) -> None: ...

    def update_stream(self, stream: StreamConfig) -> None: ...

    def remove_stream(self, stream_id: str) -> None: ...


@dataclass(frozen=True)
class StreamChanges:
    """What to do to go from the running streams to the desired ones."""

    add: tuple[StreamConfig, ...] = ()
    update: tuple[StreamConfig, ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.update or self.remove)

    def describe(self) -> str:
        parts = [
            f"{name} {', '.join(ids)}"
            for name, ids in (
                ("added", [s.id for s in self.add]),
                ("updated", [s.id for s in self.update]),
                ("removed", list(self.remove)),
            )
            if ids
        ]
        return "; ".join(parts) or "no change"


def diff(running: Mapping[str, StreamConfig], desired: Sequence[StreamConfig]) -> StreamChanges:
    """The changes that turn ``running`` into ``desired``."""
    wanted = {s.id: s for s in desired}
    return StreamChanges(
        add=tuple(s for s in desired if s.id not in running),
        update=tuple(s for s in desired if s.id in running and running[s.id] != s),
        remove=tuple(sid for sid in running if sid not in wanted),
    )


def restart_sections(running: AppConfig, edited: AppConfig) -> list[str]:
    """Top-level sections other than ``streams`` that differ (applied only by a restart)."""
    names = [n for n in AppConfig.model_fields if n not in ("streams", "base_dir")]
    return [n for n in names if getattr(running, n) != getattr(edited, n)]


class ConfigFileWatcher:
    """Notices edits of the config file by its mtime and size; validates them."""

    def __init__(self, path: Path, running: AppConfig) -> None:
        self.path, self.running = path, running
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def poll(self) -> AppConfig | None:
        """The edited config when the file changed and validates; None otherwise (an
        invalid edit is logged once, and the running set is kept)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return None
        self._seen = stamp
        try:
            edited = load_config(self.path)
        except ConfigError as exc:
            log.error(
                "config file %s changed but is invalid; keeping the running streams:\n%s",
                self.path,
                exc,
            )
            return None
        sections = restart_sections(self.running, edited)
        if sections:
            log.warning(
                "config file %s: changes to %s need a restart (not applied)",
                self.path,
                ", ".join(sections),
            )
        log.info("config file %s reloaded (%d streams)", self.path, len(edited.streams))
        return edited


class Reconciler:
    """The thread that applies registry and config file changes to a running pipeline."""

    def __init__(
        self,
        target: StreamTarget,
        registry: StreamRegistry,
        config: AppConfig,
        config_path: Path | None = None,
        scope: Scope | None = None,
    ) -> None:
        self.target, self.registry, self.scope = target, registry, scope
        settings = config.registry
        self.poll_s, self.watch_s = settings.poll_interval_s, settings.watch_interval_s
        watch = config_path is not None and settings.watch_config
        self.watcher = ConfigFileWatcher(config_path, config) if watch and config_path else None
        self.version: int | None = None  # the registry version last applied
        self.applied = 0  # passes that changed something (for tests and status)
        self._last: tuple[StreamConfig, ...] = ()  # the desired set last read
        self._file_changed = False
        self._backoff = Backoff(0.5, 10.0, 2.0, 0.5)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failing: set[str] = set()  # "<stream>:<what>" of changes failing now
        self.thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.ident is not None:  # started
            self.thread.join(timeout=10)

    # ---- one pass ----------------------------------------------------------------------
    def check_file(self) -> bool:
        """Re-read an edited config file; True when its streams are now the file's (the
        next :meth:`sync` applies them whatever the registry's version)."""
        if self.watcher is None:
            return False
        edited = self.watcher.poll()
        if edited is None:
            return False
        self.registry.set_file_streams(edited.streams)
        self._file_changed = True
        return True

    def sync(self, force: bool = False) -> StreamChanges:
        """Apply the desired set if the registry's version moved, the config file changed
        since the last pass, or ``force``."""
        with self._lock:
            due = force or self._file_changed
            if not due and self.registry.version() == self.version:
                return StreamChanges()
            desired = self.registry.desired()
            self._last = desired.streams
            failed, changes = self._apply_scoped()
            # a change that failed is tried again on the next pass (the version is not taken
            # as applied), not only when some other write happens to bump the version
            self.version = -1 if failed else desired.version
            self._file_changed = False
            if changes:
                self.applied += 1
                log.info("streams reconciled (registry version %d): %s", desired.version,
                         changes.describe())  # fmt: skip
            return changes

    def rescope(self) -> StreamChanges:
        """Apply the scope again (a fleet node's leases changed): to the registry's desired
        set when it can be read, else to the last one read -- a node that lost its leases
        because Redis is unreachable must still be able to stop those streams."""
        with self._lock:
            try:
                desired = self.registry.desired()
            except (redis.RedisError, OSError) as exc:
                log.debug("registry unreachable (%s); scope applied to the last desired set",
                          redact_text(str(exc)))  # fmt: skip
            else:
                self._last, self.version = desired.streams, desired.version
            failed, changes = self._apply_scoped()
            if failed:
                self.version = -1  # the next sync tries again
            if changes:
                self.applied += 1
                log.info("streams reconciled (ownership): %s", changes.describe())
            return changes

    def _apply_scoped(self) -> tuple[bool, StreamChanges]:
        """(whether any change failed, the changes) of bringing the pipeline to the scope."""
        wanted = self._last if self.scope is None else self.scope(self._last)
        changes = diff(self.target.streams(), wanted)
        return self._apply(changes), changes

    def _apply(self, changes: StreamChanges) -> bool:
        """Removals first, then updates, then additions; one stream's failure is logged and
        the others go on.  True when any change failed."""
        results = [
            *(self._guard(sid, "remove", partial(self.target.remove_stream, sid))
              for sid in changes.remove),
            *(self._guard(s.id, "update", partial(self.target.update_stream, s))
              for s in changes.update),
            *(self._guard(s.id, "add", partial(self.target.add_stream, s)) for s in changes.add),
        ]  # fmt: skip
        return not all(results)

    def _guard(self, stream_id: str, what: str, action: Callable[[], None]) -> bool:
        """Run one change; a failure is logged at ERROR the first time, then at DEBUG while
        it keeps failing on every pass."""
        key = f"{stream_id}:{what}"
        try:
            action()
        except Exception as exc:
            level = logging.DEBUG if key in self._failing else logging.ERROR
            log.log(level, "stream %s: %s failed: %s", stream_id, what, redact_text(str(exc)))
            self._failing.add(key)
            return False
        self._failing.discard(key)
        return True

    # ---- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        next_file = 0.0
        while not self._stop.wait(min(self.poll_s, self.watch_s)):
            try:
                if time.monotonic() >= next_file:
                    next_file = time.monotonic() + self.watch_s
                    self.check_file()
                self.sync()
                self._backoff.reset()
            except (redis.RedisError, OSError) as exc:
                delay = self._backoff.next_delay()
                log.warning("stream registry unreachable (%s); retry in %.1fs",
                            redact_text(str(exc)), delay)  # fmt: skip
                self._stop.wait(delay)
            except Exception:
                log.exception("reconciler: unexpected error; the running streams are kept")
