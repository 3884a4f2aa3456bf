"""The files in cluster/: each validated the way its tool would, plus what they must mean.

- ``cluster/aws-gpu.yaml`` through Ray's own launcher validation (``prepare_config`` then
  ``validate_config``, what ``ray up`` runs before it talks to AWS);
- ``cluster/kuberay.yaml`` and ``cluster/kuberay-job.yaml`` against the KubeRay v1.7.0 CRD schemas
  in ``../shared/schemas`` with ``jsonschema``, made strict about unknown fields the way
  ``kubectl apply`` (field validation ``Strict``) is;
- that a GPU request of a job becomes a pending resource demand the autoscaler can answer with
  the GPU node types of these files, on a real local Ray cluster without GPUs.
"""

from __future__ import annotations

import copy
import os
import re
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
KUBERAY = CLUSTER / "kuberay.yaml"
KUBERAY_JOB = CLUSTER / "kuberay-job.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
SCHEMAS = Path(os.environ.get("XNER_SHARED_SCHEMAS", REPO.parent / "shared" / "schemas")) / "kuberay-v1.7.0"
SHARED_MOUNT = "/mnt/xner"
LOOPBACK = {"127.0.0.1", "localhost"}


def _load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ---------------------------------------------------------------- the cluster launcher (aws-gpu)


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


@pytest.fixture(scope="module")
def prepared(launcher) -> dict:
    """The config as ``ray up`` sees it: Ray's defaults merged in, then Ray's schema checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(launcher))
    validate_config(config)
    return config


def test_launcher_passes_rays_validation(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"head", "gpu_worker"}


def test_launcher_validation_is_not_a_rubber_stamp(launcher):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 1  # a typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = 99  # above the global max_workers
    with pytest.raises(ValueError):
        validate_config(prepare_config(bad))


def _commands(config: dict, key: str) -> str:
    return "\n".join(config.get(key, []))


def test_launcher_head_is_cpu_only_and_dashboard_on_loopback(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    start = _commands(prepared, "head_start_ray_commands")
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    assert hosts and set(hosts) <= LOOPBACK, start
    assert "0.0.0.0" not in LAUNCHER.read_text()
    # Ray's token auth on every node (the token file travels with file_mounts).
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in _commands(prepared, key)
    assert "~/.ray/auth_token" in prepared["file_mounts"]


def test_launcher_gpu_group_autoscales_on_gpu_demand(prepared):
    gpu = prepared["available_node_types"]["gpu_worker"]
    assert 0 <= gpu["min_workers"] < gpu["max_workers"] <= prepared["max_workers"]
    # The autoscaler launches this type for a {"GPU": 1} demand only if it advertises a GPU.
    assert gpu["resources"].get("GPU", 0) >= 1 and gpu["resources"].get("CPU", 0) >= 1
    # Jobs are told how many GPUs may come (the plan for derive_workers, cluster/README.md).
    max_gpus = gpu["max_workers"] * gpu["resources"]["GPU"]
    share = gpu["resources"]["CPU"] / gpu["resources"]["GPU"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = _commands(prepared, key)
        assert f"XNER_MAX_GPUS={max_gpus}" in commands
        per = float(re.search(r"XNER_CPUS_PER_GPU=(\S+)", commands).group(1))
        assert 0.5 <= per <= share - 1, "a GPU worker must fit a gpu_worker node with a CPU to spare"


def test_launcher_installs_the_project_and_shares_storage(prepared, launcher):
    assert prepared["file_mounts"].get("~/xner_ray") == "."
    assert "pip install -e ~/xner_ray" in _commands(launcher, "setup_commands")
    # Object storage through instance profiles, never keys in the file.
    for node_type in prepared["available_node_types"].values():
        assert "IamInstanceProfile" in node_type["node_config"]
    assert "AWS_SECRET_ACCESS_KEY" not in LAUNCHER.read_text()
    assert "s3://" in LAUNCHER.read_text()
    # The shared folder for out/, model folders, checkpoints and the model cache: mounted on the
    # host and into the container on every node, and the model cache points there.
    assert SHARED_MOUNT in _commands(launcher, "initialization_commands")
    assert f"-v {SHARED_MOUNT}:{SHARED_MOUNT}" in launcher["docker"]["run_options"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert f"XNER_CACHE_DIR={SHARED_MOUNT}/" in _commands(prepared, key)


# ------------------------------------------------------------------------------ KubeRay manifests


def _strict(schema):
    """Reject unknown fields like ``kubectl apply`` does: every object schema that lists its
    properties (and neither allows extra ones nor preserves unknown fields) gets
    ``additionalProperties: false``."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator(name: str):
    import jsonschema

    path = SCHEMAS / name
    if not path.is_file():
        pytest.skip(f"KubeRay CRD schemas not found at {SCHEMAS}")
    # 2.3 MB of YAML: the C loader when PyYAML has it (~10x faster).
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def raycluster_validator():
    return _crd_validator("ray.io_rayclusters.yaml")


@pytest.fixture(scope="module")
def rayjob_validator():
    return _crd_validator("ray.io_rayjobs.yaml")


@pytest.fixture(scope="module")
def kuberay_docs() -> list[dict]:
    return _load_all(KUBERAY) + _load_all(KUBERAY_JOB)


@pytest.fixture(scope="module")
def raycluster(kuberay_docs) -> dict:
    (rc,) = _of_kind(kuberay_docs, "RayCluster")
    return rc


def _errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_every_kuberay_manifest_matches_the_operators_crds(kuberay_docs, raycluster_validator,
                                                         rayjob_validator):
    validators = {"RayCluster": raycluster_validator, "RayJob": rayjob_validator}
    kinds = [d["kind"] for d in kuberay_docs]
    assert "RayCluster" in kinds and "RayJob" in kinds
    for doc in kuberay_docs:
        assert doc.get("apiVersion") and doc.get("metadata", {}).get("name"), doc
        if doc["kind"] in validators:
            assert doc["apiVersion"] == "ray.io/v1"
            assert _errors(validators[doc["kind"]], doc) == [], doc["metadata"]["name"]
        else:  # plain Kubernetes objects of this file
            assert doc["kind"] in {"ServiceAccount", "PersistentVolumeClaim", "NetworkPolicy"}


def test_crd_validation_catches_mistakes(raycluster, raycluster_validator):
    bad = copy.deepcopy(raycluster)
    bad["spec"]["enableInTreeAutoscalling"] = True  # typo
    assert _errors(raycluster_validator, bad)
    bad = copy.deepcopy(raycluster)
    bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert _errors(raycluster_validator, bad)
    bad = copy.deepcopy(raycluster)
    bad["spec"]["authOptions"]["mode"] = "password"
    assert _errors(raycluster_validator, bad)


def _containers(raycluster: dict):
    spec = raycluster["spec"]
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def test_kuberay_autoscales_gpu_workers_within_min_max(raycluster):
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] < group["maxReplicas"], group["groupName"]
        # A fixed replica count would fight the autoscaler.
        assert group.get("replicas", group["minReplicas"]) == group["minReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) >= 1:
            gpu_groups.append((group, int(limits["nvidia.com/gpu"])))
            assert container["resources"]["requests"].get("nvidia.com/gpu") == limits["nvidia.com/gpu"]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    max_gpus = sum(g["maxReplicas"] * n for g, n in gpu_groups)
    head = spec["headGroupSpec"]
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    assert head["rayStartParams"].get("num-gpus") == "0"
    share = min(float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) / n
                for g, n in gpu_groups)
    for name, pod in _containers(raycluster):
        env = _env(pod["containers"][0])
        assert env.get("XNER_MAX_GPUS") == str(max_gpus), name
        assert 0.5 <= float(env["XNER_CPUS_PER_GPU"]) <= share - 1, name


def test_kuberay_dashboard_is_not_exposed(raycluster, kuberay_docs):
    head = raycluster["spec"]["headGroupSpec"]
    host = head["rayStartParams"].get("dashboard-host", "127.0.0.1")
    if host not in LOOPBACK:
        # Listening on the pod IP (the operator and the RayJob submitter need it): then only with
        # Ray's token auth, a ClusterIP service and no ingress.
        assert raycluster["spec"].get("authOptions", {}).get("mode") == "token"
        assert raycluster["spec"]["authOptions"].get("secretName")
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert not _of_kind(kuberay_docs, "Ingress")
    for svc in _of_kind(kuberay_docs, "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_kuberay_gets_the_code_in(raycluster, kuberay_docs):
    images = {pod["containers"][0]["image"] for _, pod in _containers(raycluster)}
    (rayjob,) = _of_kind(kuberay_docs, "RayJob")
    runtime_env = yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "{}") or {}
    assert isinstance(runtime_env, dict)
    stock = {i for i in images if i.startswith("rayproject/ray")}
    # Either the project's image on every pod, or the code shipped with the job.
    assert not stock or runtime_env.get("working_dir"), images
    assert len(images) == 1, "head and workers must run the same code"
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG RAY_IMAGE=rayproject/ray:2\.60\.0-py311\s*$", text, re.M)
    assert re.search(r"^FROM \$\{RAY_IMAGE\}", text, re.M)
    assert re.search(r"^COPY .* \. ", text, re.M) and re.search(r"pip install .*\s\.(\s|$)", text)
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", "outputs"} <= set(ignored)


def test_kuberay_shares_storage_and_uses_object_storage(raycluster, kuberay_docs):
    pvcs = {p["metadata"]["name"]: p for p in _of_kind(kuberay_docs, "PersistentVolumeClaim")}
    for name, pod in _containers(raycluster):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
        assert SHARED_MOUNT in mounts, name
        claim = claims[mounts[SHARED_MOUNT]]
        assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], name
        env = _env(pod["containers"][0])
        assert env.get("XNER_CACHE_DIR", "").startswith(SHARED_MOUNT + "/"), name
        assert pod.get("serviceAccountName"), name  # S3 credentials from the account's role
    (rayjob,) = _of_kind(kuberay_docs, "RayJob")
    entry = rayjob["spec"]["entrypoint"]
    assert re.search(r"--set store=s3://", entry)
    assert re.search(rf"--set out={SHARED_MOUNT}/", entry)
    assert re.search(rf"--set train_teacher\.out={SHARED_MOUNT}/", entry)
    assert "AWS_SECRET_ACCESS_KEY" not in KUBERAY.read_text() + KUBERAY_JOB.read_text()


def test_rayjob_targets_the_raycluster(raycluster, kuberay_docs):
    (rayjob,) = _of_kind(kuberay_docs, "RayJob")
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": raycluster["metadata"]["name"]}
    assert rayjob["spec"].get("shutdownAfterJobFinishes") is not True
    job_env = (yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "{}") or {}).get("env_vars", {})
    head_env = _env(raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0])
    for key, value in job_env.items():
        assert head_env.get(key, value) == value, key
    (submitter,) = rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"]
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert (env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
            == raycluster["spec"]["authOptions"]["secretName"])


# NetworkPolicy semantics (networking.k8s.io/v1): the rules a CNI applies, for one peer.

def _matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if ((op == "In" and value not in expr["values"])
                or (op == "NotIn" and value in expr.get("values", []))
                or (op == "Exists" and expr["key"] not in labels)
                or (op == "DoesNotExist" and expr["key"] in labels)):
            return False
    return True


def _admits(policy: dict, *, policy_ns: str, dst_labels: dict, src_ns: dict, src_pod: dict,
            port: int) -> bool:
    spec = policy["spec"]
    if not _matches(spec["podSelector"], dst_labels) or "Ingress" not in spec.get("policyTypes", ["Ingress"]):
        return True  # the policy does not isolate this pod
    for rule in spec.get("ingress", []):
        ports = rule.get("ports")
        if ports and not any(p.get("port") in (None, port) and p.get("protocol", "TCP") == "TCP"
                             for p in ports):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                continue
            if "namespaceSelector" in peer:
                ns_ok = _matches(peer["namespaceSelector"], src_ns)
            else:
                ns_ok = src_ns.get("kubernetes.io/metadata.name") == policy_ns
            if ns_ok and _matches(peer.get("podSelector"), src_pod):
                return True
    return False


def test_networkpolicy_admits_operator_and_cluster_only(raycluster, kuberay_docs):
    (policy,) = _of_kind(kuberay_docs, "NetworkPolicy")
    cluster = raycluster["metadata"]["name"]
    ns = "xner"  # any namespace the manifests are applied to

    def ns_labels(name):
        return {"kubernetes.io/metadata.name": name}

    head = {"ray.io/cluster": cluster, "ray.io/node-type": "head"}
    worker = {"ray.io/cluster": cluster, "ray.io/node-type": "worker"}
    assert _matches(policy["spec"]["podSelector"], head) and _matches(policy["spec"]["podSelector"], worker)

    def admits(src_ns, src_pod, port, dst=head):
        return _admits(policy, policy_ns=ns, dst_labels=dst, src_ns=ns_labels(src_ns),
                       src_pod=src_pod, port=port)

    # The operator in its own namespace polls the dashboard / job API.
    operator_ns = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                   for r in policy["spec"]["ingress"] for p in r.get("from", [])
                   if "namespaceSelector" in p]
    assert operator_ns and operator_ns[0] != ns
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    assert admits(operator_ns[0], operator, 8265)
    # Ray's own traffic between its pods, on any port (GCS 6379, raylets, object managers...).
    for port in (6379, 8076, 10001, 20000):
        assert admits(ns, worker, port) and admits(ns, head, port, dst=worker)
    # A RayJob submitter pod of this namespace reaches the job server.
    assert admits(ns, {"batch.kubernetes.io/job-name": "xner-rikd-demo"}, 8265)
    # Nobody else: other namespaces, and other pods on Ray's internal ports.
    assert not admits("default", {"app": "web"}, 8265)
    assert not admits(operator_ns[0], {"app": "something-else"}, 8265)
    assert not admits(ns, {"app": "web"}, 6379)
    assert not admits(operator_ns[0], operator, 6379)


# ------------------------------------------------- GPU requests become autoscaler resource demands


def _gpu_node_types() -> list[dict]:
    """What one GPU node of each config brings, as Ray resources."""
    launcher = yaml.safe_load(LAUNCHER.read_text())
    types = [launcher["available_node_types"]["gpu_worker"]["resources"]]
    (rc,) = _of_kind(_load_all(KUBERAY), "RayCluster")
    for group in rc["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)):
            types.append({"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"])})
    return types


def _fits(bundle: dict, node: dict) -> bool:
    return all(node.get(k, 0) >= v for k, v in bundle.items() if v)


def _pending_gpu_demands(ray, want_pg: bool, want_actor: bool, timeout_s: float = 15.0):
    from ray.autoscaler.v2.sdk import get_cluster_status

    gcs = ray.get_runtime_context().gcs_address
    deadline = time.monotonic() + timeout_s
    while True:
        demands = get_cluster_status(gcs).resource_demands
        pg = [r.bundle for d in demands.placement_group_demand for r in d.bundles_by_count
              if r.bundle.get("GPU")]
        actors = [r.bundle for d in demands.ray_task_actor_demand for r in d.bundles_by_count
                  if r.bundle.get("GPU")]
        if ((pg or not want_pg) and (actors or not want_actor)) or time.monotonic() > deadline:
            return pg, actors
        time.sleep(0.3)


def _worker_requests(res):
    """The two ways the project asks Ray for workers: Ray Train's ScalingConfig (as
    xner_ray.train.loop.fit builds it) and a Ray Data actor's options (as the labeling and
    projection pipelines pass them to map_batches)."""
    import ray.train

    scaling = ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                      resources_per_worker={"CPU": res.cpus_per_worker})
    actor = dict(num_cpus=res.cpus_per_worker, num_gpus=1 if res.use_gpu else 0)
    return scaling, actor


def _assert_pending_and_satisfiable(ray, scaling, actor_options):
    from ray.util.placement_group import placement_group, remove_placement_group

    worker_bundle = scaling._resources_per_worker_not_none
    assert worker_bundle.get("GPU", 0) >= 1, worker_bundle
    assert ray.cluster_resources().get("GPU", 0) == 0  # nothing here can run them

    @ray.remote
    class Teacher:
        def ping(self):
            return 1

    pg = placement_group([dict(worker_bundle)] * scaling.num_workers, strategy="PACK")
    teacher = Teacher.options(**actor_options).remote()
    try:
        pg_demand, actor_demand = _pending_gpu_demands(ray, want_pg=True, want_actor=True)
        assert pg_demand and actor_demand, (pg_demand, actor_demand)
        # ... and the autoscaler can answer each with a GPU node type of cluster/.
        for node in _gpu_node_types():
            for bundle in pg_demand + actor_demand:
                assert _fits(bundle, node), (bundle, node)
    finally:
        ray.kill(teacher)
        remove_placement_group(pg)


def test_gpu_requests_become_pending_resource_demands(ray_cluster):
    """A job's use_gpu workers on a cluster with no GPU yet: pending demands for the autoscaler,
    not errors -- shown with the request shapes the project builds."""
    from xner_ray.cluster import WorkerResources

    res = WorkerResources(num_workers=2, cpus_per_worker=1.0, use_gpu=True, torch_threads=1)
    scaling, actor = _worker_requests(res)
    _assert_pending_and_satisfiable(ray_cluster, scaling, actor)


def test_use_gpu_on_a_cluster_without_gpus_asks_for_them(ray_cluster):
    from xner_ray.cluster import derive_workers

    res = derive_workers(None, use_gpu=True)
    assert res.use_gpu and res.num_workers >= 1
    scaling, actor = _worker_requests(res)
    _assert_pending_and_satisfiable(ray_cluster, scaling, actor)
