"""Every overlay in k8s/ renders and passes every offline check; every broken fixture fails exactly its check.

The checks live in ``manifest_checks.py`` beside this file (also runnable: ``python tests/k8s/manifest_checks.py``).
The KubeRay CRDs are read from ``$EPIQ_K8S_CRDS`` or ``../shared/k8s-crds`` (never copied into the repository).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

import manifest_checks as mc

FIXTURES = Path(__file__).parent / "fixtures"

# fixture -> (checks that must report a problem, a phrase of the problem); every other check must pass on it
BROKEN = {
    "builtin-unknown-field": ({"builtin"}, "'imagePullPolicyy' was unexpected"),
    "builtin-wrong-type": ({"builtin"}, "'one' is not of type"),
    "crd-unknown-field": ({"crds"}, "unknown field spec.workerGroupSpecs[0].maxReplica"),
    "crd-unknown-field-in-pod": ({"crds"}, "unknown field spec.workerGroupSpecs[1].template.spec.containers[0].resource"),
    "crd-wrong-type": ({"crds"}, "spec.backoffLimit: 'none' is not of type 'integer'"),
    "crd-bad-enum": ({"crds"}, "'tokens' is not one of ['disabled', 'token']"),
    "resources-not-offered": ({"ray_resources"}, "asks for Ray resource 'inference', which no worker group offers"),
    "resources-too-few-replicas": ({"ray_resources"}, "the config starts 1 actor(s)"),
    "images-mismatch": ({"images"}, "not tagged with the project version"),
    "secrets-inline-env": ({"secrets"}, "env HF_TOKEN has a literal value"),
    "secrets-inline-secret": ({"secrets"}, "a Secret with its values in the manifests"),
    "secrets-url-credentials": ({"secrets"}, "a URL with credentials"),
    "wiring-config-not-mounted": ({"wiring", "ray_resources"}, "ConfigMap epiq-config has no key missing.yaml"),
    "wiring-wrong-cluster": ({"wiring"}, "does not select RayCluster/epiq"),
}


@pytest.fixture(scope="module", autouse=True)
def kuberay_crds() -> Path:
    directory = mc.crd_dir()
    if not (directory / "ray.io_rayclusters.yaml").is_file():
        pytest.skip(f"KubeRay CRDs not found in {directory} (set EPIQ_K8S_CRDS to the folder holding ray.io_*.yaml)")
    return directory


@pytest.fixture(scope="module")
def rendered() -> dict[str, mc.Objects]:
    return {overlay.name: mc.render(overlay) for overlay in mc.OVERLAYS}


def test_both_overlays_exist() -> None:
    assert {o.name for o in mc.OVERLAYS} == {"cpu-smoke", "gpu"}


@pytest.mark.parametrize("overlay", [o.name for o in mc.OVERLAYS])
def test_overlay_passes_every_check(rendered: dict[str, mc.Objects], overlay: str) -> None:
    problems = mc.run_checks(rendered[overlay])
    assert problems == {key: [] for key in mc.CHECKS}


@pytest.mark.parametrize("overlay", [o.name for o in mc.OVERLAYS])
def test_overlay_holds_cluster_job_redis_and_config(rendered: dict[str, mc.Objects], overlay: str) -> None:
    objs = rendered[overlay]
    assert sorted(mc.name(o) for o in objs) == sorted([
        "ConfigMap/epiq-config", "Service/epiq-redis", "StatefulSet/epiq-redis", "PersistentVolumeClaim/epiq-runs",
        "RayCluster/epiq", "RayJob/epiq-train"])
    cluster = mc.raycluster(objs)
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    offers = {g: mc.group_offer(spec) for g, spec in groups.items()}
    assert offers["rollout"]["rollout"] >= 1 and offers["rollout"]["memory_shard"] >= 1
    assert offers["inference"]["inference"] >= 1 and offers["learner"]["learner"] >= 1
    redis = mc.find(objs, "StatefulSet")[0]["spec"]
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and "$(REDIS_PASSWORD)" in args
    assert redis["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    job = mc.find(objs, "RayJob")[0]["spec"]
    assert job["entrypoint"].startswith("python -m cluster.train --config /etc/epiq/")


def test_gpu_overlay_puts_engines_and_learner_on_gpus(rendered: dict[str, mc.Objects]) -> None:
    cluster = mc.raycluster(rendered["gpu"])
    offers = {g["groupName"]: mc.group_offer(g) for g in cluster["spec"]["workerGroupSpecs"]}
    assert offers["inference"]["GPU"] == 1 and offers["learner"]["GPU"] == 1 and offers["rollout"]["GPU"] == 0
    cfg = mc.load_config(rendered["gpu"])
    assert (cfg.llm.gpus_per_engine, cfg.llm.dtype, cfg.llm.model) == (1, "bfloat16", "Qwen/Qwen2.5-7B-Instruct")
    cpu = mc.raycluster(rendered["cpu-smoke"])
    assert all(mc.group_offer(g)["GPU"] == 0 for g in cpu["spec"]["workerGroupSpecs"])
    assert mc.load_config(rendered["cpu-smoke"]).llm.model == "epiq-tiny"


@pytest.mark.parametrize("overlay", [o.name for o in mc.OVERLAYS])
def test_mounted_config_is_the_configs_file(rendered: dict[str, mc.Objects], overlay: str) -> None:
    text, problem = mc.mounted_config(rendered[overlay])
    assert problem is None
    assert text == (mc.ROOT / "configs" / f"k8s-{overlay}.yaml").read_text()


def test_scaling_rollouts_is_one_autoscaler_bound(rendered: dict[str, mc.Objects]) -> None:
    objs = copy.deepcopy(rendered["cpu-smoke"])
    config_map = mc.find(objs, "ConfigMap")[0]
    raw = yaml.safe_load(config_map["data"]["epiq.yaml"])
    raw["rollout"]["actors"] = 5
    config_map["data"]["epiq.yaml"] = yaml.safe_dump(raw)
    assert any("rollout: the config starts 5 actor(s)" in p for p in mc.check_ray_resources(objs))
    mc.raycluster(objs)["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 5
    assert mc.check_ray_resources(objs) == []


@pytest.mark.parametrize("fixture", sorted(BROKEN))
def test_broken_fixture_fails_its_check(fixture: str) -> None:
    expected, phrase = BROKEN[fixture]
    problems = mc.run_checks(mc.render(FIXTURES / fixture))
    failing = {key for key, found in problems.items() if found}
    assert failing == expected, problems
    assert any(phrase in line for key in expected for line in problems[key]), problems


def test_every_check_has_a_broken_fixture() -> None:
    assert set().union(*(checks for checks, _ in BROKEN.values())) == set(mc.CHECKS)
    assert {p.name for p in FIXTURES.iterdir() if p.is_dir()} == {*BROKEN, "render-error", "ok-external-redis"}


def test_kustomize_error_is_reported() -> None:
    with pytest.raises(RuntimeError, match="workerGroupSpecs/7/replicas"):
        mc.render(FIXTURES / "render-error")


def test_external_redis_switch_removes_the_statefulset() -> None:
    objs = mc.render(FIXTURES / "ok-external-redis")
    assert not mc.find(objs, "StatefulSet") and not mc.find(objs, "Service")
    assert mc.load_config(objs).redis.url == "rediss://my-redis.example.com:6380/0"
    assert mc.run_checks(objs) == {key: [] for key in mc.CHECKS}


def test_crds_are_read_from_the_configured_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  rendered: dict[str, mc.Objects], kuberay_crds: Path) -> None:
    (tmp_path / "ray.io_rayjobs.yaml").write_text((kuberay_crds / "ray.io_rayjobs.yaml").read_text())
    monkeypatch.setenv("EPIQ_K8S_CRDS", str(tmp_path))
    assert mc.crd_dir() == tmp_path
    assert mc.check_crds(rendered["cpu-smoke"]) == ["RayCluster/epiq: no CRD schema for ray.io/v1 RayCluster"]


def test_unknown_field_walker() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "items": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer"}}}}}}
    value = {"a": {"b": "ok", "c": 1}, "labels": {"any": "x"}, "free": {"whatever": {"deep": 1}},
             "items": [{"x": 1}, {"y": 2}], "top": 0}
    assert sorted(mc.unknown_fields(value, schema, "")) == [".a.c", ".items[1].y", ".top"]


def test_ray_resources_string_is_parsed_as_kuberay_passes_it() -> None:
    assert mc.parse_ray_resources('"{\\"rollout\\": 1, \\"memory_shard\\": 2}"') == {"rollout": 1.0, "memory_shard": 2.0}
    assert mc.parse_ray_resources('{"inference": 1}') == {"inference": 1.0}
    assert mc.quantity("500m") == 0.5 and mc.quantity(2) == 2.0


@pytest.mark.parametrize("flavour,extra", [("cpu", "cpu"), ("gpu", "gpu")])
def test_dockerfiles_install_the_project_extras(flavour: str, extra: str) -> None:
    text = (mc.ROOT / "docker" / f"Dockerfile.{flavour}").read_text()
    assert text.startswith("# epiq") and "FROM python:3.11" in text
    assert f'pip install ".[{extra}]"' in text
    assert "USER ray" in text  # uid 1000, as KubeRay's images; fsGroup 1000 on the head pod
