"""Hostile input (issue #9): a small fuzz run through the real ingest decode path.

The full run is ``bench/fuzz_ingest.py --n 10000``; here ~100 mutated H.264 / HEVC inputs
(MP4 and Annex-B; bit flips, truncation, NAL units duplicated / dropped / swapped, garbage)
are read by ``VideoSource`` in child processes, each child also reading a healthy stream on
another thread as an ingest process does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines


def test_mutated_h264_and_hevc_never_crash_hang_or_starve_a_healthy_stream(tmp_path: Path):
    out = tmp_path / "fuzz.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "fuzz_ingest.py"),
        "--n",
        "120",
        "--batch",
        "60",
        "--seed",
        "9",
        "--deadline",
        "10",
        "--keep",
        str(tmp_path / "findings"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    counts = result["counts"]
    assert result["inputs"] == 120, result
    assert counts["crash"] == 0 and counts["hang"] == 0, result["kept"]
    assert counts["unexpected"] == 0, result["kept"]  # only SourceErrors reach the reader
    # the mutations bite: some inputs are refused, some still decode (concealed damage)
    assert counts["error"] > 0 and counts["ok"] > 0 and result["frames_decoded"] > 0
    assert set(result["by_mutation"]) >= {"bitflip", "truncate", "nal_drop", "nal_dup"}
    assert result["slowest_input_s"] < 10
    # bounded memory: small clips stay far below this, and no child grows by much
    assert result["peak_rss_mib"] < 512 and result["max_rss_growth_mib"] < 64, result
    healthy = result["healthy"]
    assert healthy["children"] == 2 and healthy["all_alive"], healthy
    assert healthy["frames"] > 0, healthy


def test_a_crashing_child_is_counted_as_a_crash_not_lost(tmp_path: Path, monkeypatch):
    """The harness itself: a child killed mid-input is reported as that input's crash and
    the batch goes on in a new child (so the 0-crash assertion above can fail)."""
    sys.path.insert(0, str(ROOT))
    try:
        from bench import fuzz_ingest
    finally:
        sys.path.remove(str(ROOT))
    import argparse

    args = argparse.Namespace(seed=1, deadline=5.0, keep=str(tmp_path / "keep"))
    work = tmp_path / "work"
    work.mkdir()
    bases = fuzz_ingest.make_bases(work, 160, 96)
    run = fuzz_ingest.Run(args, work, bases)
    # a "decoder" that dies on input 1: the child runs an interpreter that kills itself there
    monkeypatch.setattr(
        fuzz_ingest, "__file__", str(_write_crashing_child(tmp_path, victim="in-1."))
    )
    run.batch([0, 1, 2], str(work / "healthy.mp4"))
    assert run.counts["crash"] == 1 and run.counts["ok"] + run.counts["error"] == 2
    assert run.kept[0]["index"] == 1 and Path(run.kept[0]["file"]).is_file()
    assert run.children == 2


def _write_crashing_child(tmp_path: Path, victim: str) -> Path:
    script = tmp_path / "crashing_child.py"
    script.write_text(
        "import json, os, signal, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "print(json.dumps({'event': 'ready', 'rss_kib': 1}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    path = line.strip()\n"
        "    if not path:\n"
        "        break\n"
        "    print(json.dumps({'event': 'start', 'path': path}), flush=True)\n"
        f"    if {victim!r} in os.path.basename(path):\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    print(json.dumps({'event': 'done', 'path': path, 'outcome': 'ok', 'error': '',\n"
        "        'frames': 1, 'seconds': 0.0, 'rss_kib': 1, 'healthy_frames': 1,\n"
        "        'healthy_alive': True}), flush=True)\n"
        "print(json.dumps({'event': 'end', 'healthy_frames': 1, 'healthy_alive': True,\n"
        "    'maxrss_kib': 1}), flush=True)\n"
    )
    return script
