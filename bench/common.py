"""Shared by the benchmarks: machine description, result files, tables."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    """What ran the benchmark (CPU model, cores, GPU if any)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        gpu = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": gpu,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": source_digest(),
        "commit": git_commit(),
    }


def source_digest(root: Path = ROOT) -> str:
    """A digest of ``visionflow/``'s Python files (paths and contents): which code ran, also
    where there is no git (the lent machines get a copy of the working tree)."""
    digest = hashlib.sha256()
    for path in sorted((root / "visionflow").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_commit(root: Path = ROOT) -> str | None:
    """``HEAD``'s commit, with ``+changes`` when the working tree differs from it; None
    without git (one ``git status``: its header names the commit)."""
    try:
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "-uno"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = status.stdout.splitlines()
    head = [ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")]
    if status.returncode != 0 or not head or head[0] == "(initial)":
        return None
    changed = any(not ln.startswith("#") for ln in lines)
    return head[0] + ("+changes" if changed else "")


def write_result(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, sep, *body])


def run_section(fn: Any, name: str, work: Path, out: Path) -> None:
    """Run one benchmark section, writing ``out/<name>.json`` whatever happens."""
    import traceback

    try:
        result = {"ok": True, **fn(work)}
    except Exception as exc:
        result = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "trace": traceback.format_exc()[-3000:],
        }
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))


def run_sections(
    script: str, names: list[str], limits: dict[str, int], work: Path, out: Path, log: Any
) -> dict[str, Any]:
    """Each section in its own subprocess (``script --section NAME``) with its time limit, so
    one failing part (a missing wheel, a driver quirk) never loses the others."""
    import sys

    summary: dict[str, Any] = {}
    for name in names:
        log(f"section {name} (limit {limits[name]} s)")
        cmd = [sys.executable, script, "--out", str(out), "--work", str(work), "--section", name]
        try:
            subprocess.run(cmd, timeout=limits[name], check=False)
        except subprocess.TimeoutExpired:
            (out / f"{name}.json").write_text(json.dumps({"ok": False, "error": "timeout"}))
        path = out / f"{name}.json"
        summary[name] = (
            json.loads(path.read_text()) if path.is_file() else {"ok": False, "error": "no result"}
        )
        log(f"{name}: {json.dumps(summary[name], default=str)[:800]}")
    return summary


def counting_sink() -> Any:
    """A sink that only counts what reaches it per stream (benches of the output stage
    without Redis); imported late so that bench drivers load without the package."""
    from collections import Counter

    from visionflow.workers.sinks import Sink

    class CountingSink(Sink):
        name = "count"

        def __init__(self) -> None:
            self.published: Counter[str] = Counter()
            self.dropped: Counter[str] = Counter()

        def write(self, results: Any) -> None:
            for r in results:
                self.published[r.frame.stream_id] += 1

    return CountingSink()
