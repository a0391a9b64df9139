"""bench/common.py's record of which code ran: a digest of visionflow/ and the git commit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.common import ROOT, git_commit, machine, source_digest


def copy_sources(to: Path) -> Path:
    shutil.copytree(ROOT / "visionflow", to / "visionflow", ignore=shutil.ignore_patterns("*.onnx"))
    return to


def test_the_source_digest_names_the_code_not_the_folder(tmp_path: Path) -> None:
    a, b = copy_sources(tmp_path / "a"), copy_sources(tmp_path / "b")
    assert source_digest(a) == source_digest(b) == source_digest(ROOT)
    kalman = b / "visionflow" / "tracking" / "kalman.py"
    kalman.write_text(kalman.read_text() + "\n# changed\n")
    assert source_digest(b) != source_digest(a)
    (a / "visionflow" / "notes.txt").write_text("not code")
    assert source_digest(a) == source_digest(ROOT)  # only the Python files count


def test_the_commit_is_none_without_git_and_marks_changes(tmp_path: Path) -> None:
    assert git_commit(copy_sources(tmp_path / "plain")) is None
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_commit(repo) == head.strip()
    (repo / "a.py").write_text("x = 2\n")
    assert git_commit(repo) == head.strip() + "+changes"


def test_every_result_file_says_which_code_ran() -> None:
    record = machine()
    assert record["source"] == source_digest(ROOT)
    assert len(record["source"]) == 16
