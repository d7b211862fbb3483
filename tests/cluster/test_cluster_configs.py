"""The cluster launcher configs and KubeRay manifests under cluster/ pass what reads them.

Launcher YAMLs go through the checks `ray up` makes before it calls the cloud (Ray's own
``prepare_config`` then ``validate_config`` against ray-schema.json). KubeRay manifests are checked
against the fields the RayCluster/RayJob CRDs require and know (tests/cluster/data/kuberay_api.json,
read from KubeRay's API types), plus what this project needs of them: images, GPUs, the run's
config, the runtime env and no secret written inline. No cluster is started.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parents[2]
LAUNCH = sorted((ROOT / "cluster" / "launch").glob("*.yaml"))
KUBERAY = sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))
API = json.loads((Path(__file__).parent / "data" / "kuberay_api.json").read_text())
SHARED = "/mnt/shared/"  # where every node and pod mounts the shared run storage

# Names that hold credentials, and values that look like one (OpenAI/Anthropic, AWS, GitHub, HF, GCP keys).
SECRET_NAME = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)(_|$)", re.I)
SECRET_VALUE = re.compile(r"sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{30,}|hf_[A-Za-z0-9]{30,}|"
                          r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\"private_key\"")


PYPROJECT = (ROOT / "pyproject.toml").read_text()


def ray_pin() -> str:
    (pin,) = re.findall(r'"ray\[[^\]]*\]==([\d.]+)"', PYPROJECT)
    return pin


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# ---------------------------------------------------------------- cluster launcher


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` runs on a config before any cloud call (commands._bootstrap_config)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_there_are_launcher_configs():
    assert {p.name for p in LAUNCH} >= {"aws.yaml", "gcp.yaml"}


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_launcher_config_passes_ray_up_validation(path):
    (config,) = load(path)
    prepared = ray_up_checks(config)

    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_groups = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_groups, "no worker group offers GPUs"
    for name, group in gpu_groups.items():
        assert group["min_workers"] == 0, f"{name}: GPU nodes must scale from zero"
        assert group["max_workers"] >= 1
    assert prepared["idle_timeout_minutes"] > 0

    head_start = " ".join(prepared["head_start_ray_commands"])
    worker_start = " ".join(prepared["worker_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-host=0.0.0.0" in head_start
    for start in (head_start, worker_start):
        assert "--metrics-export-port=" in start
        assert "RAY_AUTH_MODE=token" in start
    # Every node installs the project with the CUDA vLLM (the `gpu` extra pyproject.toml defines).
    assert re.search(r"^gpu = \[", PYPROJECT, re.M)
    for cmds in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert any(re.search(r"pip install .*selfcorrect\[gpu\]", c) for c in cmds), cmds
    # run_dir's shared file system: mounted on the host, then into the container.
    shared = SHARED.rstrip("/")
    assert any("mount" in c and f" {shared})" in c for c in prepared["initialization_commands"])
    assert f"-v {shared}:{shared}" in prepared["docker"]["run_options"]
    # Ray's images at the version the project pins: driver, workers and cluster agree.
    images = [v for k, v in prepared["docker"].items() if k.endswith("image")]
    assert images and all(i.startswith(f"rayproject/ray:{ray_pin()}-") for i in images), images


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_launcher_config_holds_no_credentials(path):
    text = path.read_text()
    assert not SECRET_VALUE.search(text)
    (config,) = load(path)
    assert not {"aws_access_key_id", "aws_secret_access_key"} & set(config["provider"])
    assert "gcp_credentials" not in config["provider"]
    assert "ssh_private_key" not in config.get("auth", {})
    commands = [c for k, v in config.items() if k.endswith("_commands") for c in v]
    for command in commands:
        # A key may be exported from a secret store ($(...)), never written as a literal.
        for name, value in re.findall(r"\b(\w+)=(\S+)", command):
            if SECRET_NAME.search(name):
                assert value.startswith("$"), f"{path.name}: {name} set inline in {command!r}"


def _unknown_key(c):
    c["idle_timeout_minute"] = 5  # a typo of idle_timeout_minutes


def _gpu_count_as_text(c):
    c["available_node_types"]["gpu"]["resources"]["GPU"] = "4"


def _missing_head_type(c):
    c["head_node_type"] = "no_such_type"


def _min_above_max(c):
    c["available_node_types"]["gpu"]["min_workers"] = c["max_workers"] + 1


def _no_node_config(c):
    del c["available_node_types"]["gpu"]["node_config"]


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        (_unknown_key, jsonschema.ValidationError),
        (_gpu_count_as_text, jsonschema.ValidationError),
        (_missing_head_type, ValueError),
        (_min_above_max, ValueError),
        (_no_node_config, jsonschema.ValidationError),
    ],
    ids=lambda v: getattr(v, "__name__", "").lstrip("_"),
)
def test_broken_launcher_config_is_refused(path, break_it: Callable[[dict], None], error):
    (config,) = load(path)
    ray_up_checks(config)  # the intact file passes: the refusal below is the breakage's
    broken = copy.deepcopy(config)
    break_it(broken)
    with pytest.raises(error):
        ray_up_checks(broken)


# ---------------------------------------------------------------- KubeRay


def crd_problems(kind: str, spec: dict[str, Any]) -> list[str]:
    """Fields the CRD requires but ``spec`` lacks, fields it does not know (dropped or refused by the
    API server), and values of the wrong type; each as 'path: problem'."""
    problems: list[str] = []
    objects = API["objects"]

    def check(obj: Any, schema: str, where: str) -> None:
        if not isinstance(obj, dict):
            problems.append(f"{where}: expected a mapping")
            return
        rule = objects[schema]
        problems.extend(f"{where}.{k}: required" for k in rule["required"] if k not in obj)
        if "known" in rule:
            problems.extend(f"{where}.{k}: unknown field" for k in obj if k not in rule["known"])
        for key, value in obj.items():
            types = API["types"]
            if key in types["integer"] and not (isinstance(value, int) and not isinstance(value, bool)):
                problems.append(f"{where}.{key}: expected an integer")
            if key in types["boolean"] and not isinstance(value, bool):
                problems.append(f"{where}.{key}: expected true/false")
            if key in types["string"] and not isinstance(value, str):
                problems.append(f"{where}.{key}: expected a string")
            if key in types["string_map"] and not (
                isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
            ):
                problems.append(f"{where}.{key}: every value must be a string (quote numbers)")
            if key in API["enums"] and value not in API["enums"][key]:
                problems.append(f"{where}.{key}: not one of {API['enums'][key]}")

    def check_pod(template: Any, where: str) -> None:
        pod = (template or {}).get("spec") if isinstance(template, dict) else None
        if not isinstance(pod, dict):
            problems.append(f"{where}.spec: required")
            return
        check(pod, "PodSpec", f"{where}.spec")
        for i, container in enumerate(pod.get("containers") or []):
            check(container, "Container", f"{where}.spec.containers[{i}]")

    def check_cluster(cluster: Any, where: str) -> None:
        check(cluster, "RayClusterSpec", where)
        if not isinstance(cluster, dict):
            return
        if "autoscalerOptions" in cluster:
            check(cluster["autoscalerOptions"], "AutoscalerOptions", f"{where}.autoscalerOptions")
        if "headGroupSpec" in cluster:
            check(cluster["headGroupSpec"], "HeadGroupSpec", f"{where}.headGroupSpec")
            check_pod(cluster["headGroupSpec"].get("template"), f"{where}.headGroupSpec.template")
        for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
            check(group, "WorkerGroupSpec", f"{where}.workerGroupSpecs[{i}]")
            if isinstance(group, dict):
                check_pod(group.get("template"), f"{where}.workerGroupSpecs[{i}].template")

    if kind == "RayCluster":
        check_cluster(spec, "spec")
    elif kind == "RayJob":
        check(spec, "RayJobSpec", "spec")
        if "submitterConfig" in spec:
            check(spec["submitterConfig"], "SubmitterConfig", "spec.submitterConfig")
        if "rayClusterSpec" in spec:
            check_cluster(spec["rayClusterSpec"], "spec.rayClusterSpec")
    else:
        problems.append(f"kind {kind!r}: not a KubeRay kind")
    return problems


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def pods(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(name, pod spec, worker group or None for the head)."""
    out = [("head", cluster["headGroupSpec"]["template"]["spec"], None)]
    out += [(g["groupName"], g["template"]["spec"], g) for g in cluster.get("workerGroupSpecs", [])]
    return out


def project_problems(doc: dict[str, Any]) -> list[str]:
    """What this project needs of a RayCluster/RayJob beyond the CRD."""
    problems: list[str] = []
    cluster = cluster_spec(doc)
    if cluster.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling: the GPU group must scale with demand")
    if cluster.get("rayVersion") != ray_pin():
        problems.append(f"rayVersion: {cluster.get('rayVersion')!r}, the project pins ray=={ray_pin()}")
    gpu_groups = 0
    for name, pod, group in pods(cluster):
        gpus = 0
        for c in pod["containers"]:
            if not c.get("image"):
                problems.append(f"{name}/{c['name']}: no image")
            resources = c.get("resources", {})
            limit = resources.get("limits", {}).get("nvidia.com/gpu")
            if limit is not None and resources.get("requests", {}).get("nvidia.com/gpu", limit) != limit:
                problems.append(f"{name}/{c['name']}: GPU requests must equal limits")
            gpus += int(limit or 0)
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]) and "value" in env:
                    problems.append(f"{name}/{c['name']}: {env['name']} inline; use valueFrom.secretKeyRef")
        if group is None:
            if gpus:
                problems.append("head: asks for GPUs; the head is a CPU pod")
        elif gpus:
            gpu_groups += 1
            if group["minReplicas"] != 0:
                problems.append(f"{name}: GPU pods must scale from zero (minReplicas 0)")
            if group["maxReplicas"] < 1:
                problems.append(f"{name}: maxReplicas must allow a GPU pod")
        elif "gpu" in name.lower():
            problems.append(f"{name}: a GPU group without nvidia.com/gpu limits")
    if not gpu_groups:
        problems.append("no worker group requests nvidia.com/gpu")
    return problems


def rayjob_problems(doc: dict[str, Any]) -> list[str]:
    """The RayJob's entrypoint names a config that exists and loads, and its runtime env is one Ray accepts."""
    from ray.runtime_env import RuntimeEnv

    from cluster.config import ConfigError, load_config

    problems: list[str] = []
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    if argv[:2] != ["selfcorrect", "run"] or len(argv) < 3:
        return [f"entrypoint: expected `selfcorrect run CONFIG ...`, got {spec['entrypoint']!r}"]
    config, overrides = argv[2], argv[3:]
    if not (ROOT / config).is_file() or not config.startswith("configs/"):
        problems.append(f"entrypoint: {config} is not a file in configs/")
    else:
        try:
            loaded = load_config(ROOT / config, overrides)
        except ConfigError as e:
            problems.append(f"entrypoint: {e}")
        else:
            if not any(o.startswith("run_dir=/") for o in overrides):
                problems.append("entrypoint: run_dir=/ABSOLUTE/shared/path missing (a retry resumes from it)")
            elif not loaded.run_dir.startswith(SHARED):
                problems.append(f"entrypoint: run_dir {loaded.run_dir} is not on the shared claim")
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}
        if not isinstance(env, dict):
            raise TypeError("not a mapping")
        problems += [f"runtimeEnvYAML: {k}: unknown field" for k in env if k not in RuntimeEnv.known_fields]
        # working_dir is the project inside the image, which the Dockerfile copies from this tree:
        # Ray checks that a local working_dir exists, so check it here as this repository.
        image_dir = re.search(r"^WORKDIR\s+(\S+)", (ROOT / "cluster/kuberay/Dockerfile").read_text(), re.M).group(1)
        if env.get("working_dir") == image_dir:
            env = {**env, "working_dir": str(ROOT)}
        RuntimeEnv(**env)
    except Exception as e:  # a YAML error or Ray's own refusal of a runtime env field
        problems.append(f"runtimeEnvYAML: {type(e).__name__}: {e}")
    else:
        problems += [
            f"runtimeEnvYAML: env_vars.{k} looks like a secret; Ray keeps the runtime env as job metadata"
            for k in (env.get("env_vars") or {})
            if SECRET_NAME.search(k)
        ]
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes: the job's cluster must go when it ends")
    if "backoffLimit" not in spec.get("submitterConfig", {}):
        problems.append("submitterConfig.backoffLimit: unset")
    return problems


def all_problems(doc: dict[str, Any]) -> list[str]:
    if doc.get("apiVersion") != API["apiVersion"]:
        return [f"apiVersion {doc.get('apiVersion')!r}, expected {API['apiVersion']}"]
    problems = crd_problems(doc["kind"], doc.get("spec", {}))
    if problems:
        return problems
    problems = project_problems(doc)
    return problems + (rayjob_problems(doc) if doc["kind"] == "RayJob" else [])


def ray_docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for p in KUBERAY for d in load(p) if d.get("apiVersion", "").startswith("ray.io/")}


def test_there_are_kuberay_manifests():
    assert set(ray_docs()) == {"RayCluster", "RayJob"}


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_is_valid(path):
    assert not SECRET_VALUE.search(path.read_text())
    for doc in load(path):
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path.name
        if doc["apiVersion"].startswith("ray.io/"):
            assert all_problems(doc) == [], path.name


def test_shared_claim_is_read_write_many():
    claims = {d["metadata"]["name"]: d for p in KUBERAY for d in load(p) if d["kind"] == "PersistentVolumeClaim"}
    for doc in ray_docs().values():
        for _, pod, _ in pods(cluster_spec(doc)):
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    claim = claims[volume["persistentVolumeClaim"]["claimName"]]
                    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_images_match_the_ray_pin():
    dockerfile = (ROOT / "cluster" / "kuberay" / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert base.startswith(f"rayproject/ray:{ray_pin()}-")
    assert re.search(r'pip install .*selfcorrect\[gpu\]', dockerfile)


def _walk(doc: Any, path: tuple[str, ...]) -> tuple[Any, Any]:
    """The container of ``path``'s last step, and that step as a key or list index."""
    node = doc
    for p in path[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = path[-1]
    return node, int(last) if isinstance(node, list) else last


def _drop(*path: str) -> Callable[[dict], None]:
    def f(doc: dict) -> None:
        node, key = _walk(doc, path)
        del node[key]

    return f


def _set(value: Any, *path: str) -> Callable[[dict], None]:
    def f(doc: dict) -> None:
        node, key = _walk(doc, path)
        node[key] = value

    return f


def _in_cluster(kind: str, *path: str) -> tuple[str, ...]:
    return ("spec", *path) if kind == "RayCluster" else ("spec", "rayClusterSpec", *path)


WORKER = ("workerGroupSpecs", "0")
WORKER_C = (*WORKER, "template", "spec", "containers", "0")
BREAKAGES = [
    ("head template", lambda k: _drop(*_in_cluster(k, "headGroupSpec", "template")), "required"),
    ("typo minReplica", lambda k: _set(0, *_in_cluster(k, *WORKER, "minReplica")), "unknown field"),
    ("unquoted num-cpus", lambda k: _set(6, *_in_cluster(k, "headGroupSpec", "rayStartParams", "num-cpus")), "string"),
    ("maxReplicas as text", lambda k: _set("8", *_in_cluster(k, *WORKER, "maxReplicas")), "integer"),
    ("container name", lambda k: _drop(*_in_cluster(k, *WORKER_C, "name")), "required"),
    ("container image", lambda k: _drop(*_in_cluster(k, *WORKER_C, "image")), "no image"),
    ("no GPU limit", lambda k: _drop(*_in_cluster(k, *WORKER_C, "resources", "limits", "nvidia.com/gpu")), "GPU"),
    ("GPUs always on", lambda k: _set(1, *_in_cluster(k, *WORKER, "minReplicas")), "scale from zero"),
    ("no autoscaler", lambda k: _set(False, *_in_cluster(k, "enableInTreeAutoscaling")), "enableInTreeAutoscaling"),
    ("inline key", lambda k: _set({"name": "OPENAI_API_KEY", "value": "x"}, *_in_cluster(k, *WORKER_C, "env", "0")),
     "secretKeyRef"),
]
JOB_BREAKAGES = [
    ("missing config", _set("selfcorrect run configs/nope.yaml run_dir=/mnt/shared/x", "spec", "entrypoint"),
     "not a file"),
    ("bad override", _set("selfcorrect run configs/score.yaml run_dir=/mnt/shared/x generate.nn=1", "spec",
                          "entrypoint"), "unknown key"),
    ("relative run_dir", _set("selfcorrect run configs/score.yaml", "spec", "entrypoint"), "run_dir"),
    ("runtime env not YAML", _set("working_dir: [unclosed", "spec", "runtimeEnvYAML"), "runtimeEnvYAML"),
    ("runtime env value", _set("working_dir: 3\n", "spec", "runtimeEnvYAML"), "runtimeEnvYAML"),
    ("runtime env typo", _set("working_dirr: /home/ray/selfcorrect\n", "spec", "runtimeEnvYAML"), "unknown field"),
    ("working_dir not in image", _set("working_dir: /opt/elsewhere\n", "spec", "runtimeEnvYAML"), "not a valid path"),
    ("key in runtime env", _set("env_vars: {OPENAI_API_KEY: x}\n", "spec", "runtimeEnvYAML"), "secret"),
    ("no submitter retries", _drop("spec", "submitterConfig", "backoffLimit"), "backoffLimit"),
]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
@pytest.mark.parametrize(("what", "make", "expect"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_broken_kuberay_manifest_is_refused(kind, what, make, expect):
    doc = ray_docs()[kind]
    assert all_problems(doc) == []  # the intact manifest passes: the problem below is the breakage's
    broken = copy.deepcopy(doc)
    make(kind)(broken)
    problems = all_problems(broken)
    assert any(expect in p for p in problems), (what, problems)


@pytest.mark.parametrize(("what", "make", "expect"), JOB_BREAKAGES, ids=[b[0] for b in JOB_BREAKAGES])
def test_broken_rayjob_is_refused(what, make, expect):
    doc = ray_docs()["RayJob"]
    broken = copy.deepcopy(doc)
    make(broken)
    problems = all_problems(broken)
    assert any(expect in p for p in problems), (what, problems)
