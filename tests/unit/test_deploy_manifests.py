"""deploy/ (Kubernetes, kustomize base) checked offline: every rendered resource against the
Kubernetes JSON schemas (kubernetes-validate, which ships them; strict: unknown fields fail),
and the wiring the fleet needs (GPUs, probes, drain grace, config and secrets)."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from visionflow.config import parse_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VERSIONS = ["1.29.0", "1.33.0"]
CLUSTER_SCOPED = {"Namespace"}


def render() -> list[dict[str, Any]]:
    """What ``kubectl kustomize deploy/`` gives for this base: the resources in order, with
    the kustomization's namespace and labels applied (no generators or patches are used)."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "labels", "resources"}
    labels: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        assert not entry.get("includeSelectors") and not entry.get("includeTemplates")
        labels.update(entry["pairs"])
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            meta = doc.setdefault("metadata", {})
            if doc["kind"] not in CLUSTER_SCOPED:
                meta["namespace"] = kustomization["namespace"]
            meta["labels"] = {**meta.get("labels", {}), **labels}
            docs.append(doc)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    match = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(match) == 1, f"{kind}/{name}: {len(match)} found"
    return match[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def app_config(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {
        "NODE_NAME": "gpu-node-1",
        "CAM_PASSWORD": "x",
        "REDIS_PASSWORD": "y",
    }.items():
        monkeypatch.setenv(name, value)
    text = find(docs, "ConfigMap", "visionflow-config")["data"]["visionflow.yaml"]
    return parse_config(yaml.safe_load(text), "deploy/configmap.yaml")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_matches_the_kubernetes_schema(version: str) -> None:
    docs = render()
    assert {d["kind"] for d in docs} >= {"StatefulSet", "DaemonSet", "Deployment", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    node = copy.deepcopy(find(render(), "DaemonSet", "visionflow-node"))
    node["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(node, VERSIONS[-1], strict=True)


def test_redis_persists_with_aof_on_a_volume() -> None:
    redis_set = find(render(), "StatefulSet", "redis")
    script = container(redis_set)["args"][0]
    words = shlex.split(script.splitlines()[-1])
    assert words[words.index("--appendonly") + 1] == "yes"
    data_dir = words[words.index("--dir") + 1]
    claim = redis_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container(redis_set)["volumeMounts"]}
    assert mounts[claim] == data_dir


@pytest.mark.parametrize(
    ("name", "gpu"),
    [("visionflow-node", "nvidia.com/gpu"), ("visionflow-node-mig", "nvidia.com/mig-1g.10gb")],
)
def test_nodes_get_a_gpu_a_stable_id_probes_and_time_to_drain(
    name: str, gpu: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render()
    node = find(docs, "DaemonSet", name)
    main = container(node)
    assert main["resources"]["limits"][gpu] == 1
    env = {e["name"]: e for e in main["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    cfg = app_config(docs, monkeypatch)
    assert cfg.fleet is not None and cfg.fleet.node_id == "gpu-node-1"
    grace = node["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= cfg.fleet.drain_timeout_s + 30, "SIGTERM must leave time to hand over"
    _probes_and_mounts(main, node, cfg)


def test_whole_gpu_and_mig_nodes_never_overlap() -> None:
    docs = render()

    def term(name: str) -> dict[str, Any]:
        affinity = find(docs, "DaemonSet", name)["spec"]["template"]["spec"]["affinity"]
        required = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        return required["nodeSelectorTerms"][0]["matchExpressions"][0]

    whole, mig = term("visionflow-node"), term("visionflow-node-mig")
    assert whole["key"] == mig["key"] == "nvidia.com/mig.strategy"
    assert (whole["operator"], mig["operator"]) == ("DoesNotExist", "In")


def test_the_api_is_its_own_deployment_behind_a_service(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render()
    api = find(docs, "Deployment", "visionflow-api")
    main = container(api)
    assert main["args"][0] == "api"
    _probes_and_mounts(main, api, app_config(docs, monkeypatch))
    service = find(docs, "Service", "visionflow-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"] for p in main["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def _probes_and_mounts(main: dict[str, Any], workload: dict[str, Any], cfg: Any) -> None:
    """Liveness on /healthz, readiness on /readyz at the API's port; the config file the
    command reads and the API token file are mounted from the ConfigMap and the Secret."""
    port = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert cfg.api is not None and cfg.api.port in port.values()
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert port[main["readinessProbe"]["httpGet"]["port"]] == cfg.api.port
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in main["volumeMounts"]}
    config_path = Path(main["args"][main["args"].index("-c") + 1])
    assert mounts[str(config_path.parent)]["configMap"]["name"] == "visionflow-config"
    token = Path(cfg.api.token_file)
    secret = mounts[str(token.parent)]["secret"]["secretName"]
    docs = render()
    assert token.name in find(docs, "Secret", secret)["stringData"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    for name in ("REDIS_PASSWORD_FILE", "CAM_PASSWORD_FILE"):
        path = Path(env[name])
        assert (
            path.parent == token.parent and path.name in find(docs, "Secret", secret)["stringData"]
        )
