"""`visionflow --version`, `visionflow schema` and help text free of reStructuredText markup."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from typer.testing import CliRunner

from visionflow.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
RST = re.compile(r"``|:(class|meth|func|attr|mod|data|exc|obj|ref):`")


def visionflow(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user starts it, importing this tree's code (not an installed copy)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "visionflow", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def schema_from_cli() -> dict[str, Any]:
    result = visionflow("schema")
    assert result.returncode == 0, result
    schema: dict[str, Any] = json.loads(result.stdout)
    return schema


def test_version_is_the_package_metadata_version():
    result = visionflow("--version")
    assert result.returncode == 0, result
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout.strip() == f"visionflow {metadata.version('visionflow')}"
    assert metadata.version("visionflow") == declared, "installed metadata lags pyproject.toml"


def test_schema_validates_every_bundled_example_and_rejects_mistakes():
    schema = schema_from_cli()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert EXAMPLES, "no example configs found under examples/"
    for path in EXAMPLES:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path.name}: {errors}"
    good = yaml.safe_load(EXAMPLES[0].read_text())
    typo = {**good, "batching": {**good.get("batching", {}), "max_btach": 8}}
    assert not validator.is_valid(typo), "an unknown key must fail (extra='forbid')"
    wrong_type = {**good, "batching": {"max_batch": "eight"}}
    assert not validator.is_valid(wrong_type), "a string where a number belongs must fail"
    assert not validator.is_valid({"streams": [{"id": "a"}]}), "a stream without url must fail"


def test_schema_output_writes_the_same_schema_to_a_file(tmp_path: Path):
    out = tmp_path / "sub" / "visionflow.schema.json"
    result = visionflow("schema", "--output", str(out))
    assert result.returncode == 0, result
    assert result.stdout == "", "with --output nothing goes to stdout"
    assert json.loads(out.read_text()) == schema_from_cli()


def _commands() -> list[str]:
    commands: dict[str, object] = getattr(typer.main.get_command(app), "commands", {})
    assert len(commands) >= 7, commands
    return sorted(commands)


def test_top_level_help_lists_version_and_schema():
    result = visionflow("--help")
    assert result.returncode == 0, result
    assert "--version" in result.stdout and "schema" in result.stdout
    assert not RST.search(result.stdout), result.stdout


@pytest.mark.parametrize("command", _commands())
def test_command_help_has_no_restructuredtext_markup(command: str):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert not RST.search(result.output), f"{command} --help:\n{result.output}"
    summary = result.output.split("Options")[0]
    assert len(summary.split()) > 4, f"{command} --help has no description:\n{result.output}"
