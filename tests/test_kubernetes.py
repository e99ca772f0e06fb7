"""The Kubernetes manifests (deploy/kubernetes/) render, are valid, and keep docs/deploy.md's promises.

Every overlay is rendered with `kubectl kustomize` alone, with each optional component and with all
of them, and every rendered object is checked against the Kubernetes 1.31 API schema
(kubernetes-validate, strict: unknown fields fail too). Prometheus Operator objects have no schema
there; their few fields that matter are checked by hand. Then the invariants: probes, the hardened
securityContext, no secret values in the manifests, resources, a termination grace longer than the
mirror's own shutdown, and an environment that the mirror's config loader accepts as it stands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mirror.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "config" / "prometheus-alerts.yml"
DOC = ROOT / "docs" / "deploy.md"

# The oldest release still supported upstream when these were written; the built-in preStop sleep
# (1.30) and topology spread matchLabelKeys are both in it.
KUBERNETES_VERSION = "1.31"
# Custom resources of the Prometheus Operator: not in the Kubernetes schema, checked by hand below.
CRD_API_VERSIONS = {"monitoring.coreos.com/v1"}

OVERLAYS = ("single-node", "s3-replicas")
COMPONENTS = ("monitoring", "network-policy", "ingress")
VARIANTS = [
    (overlay, components) for overlay in OVERLAYS for components in [(), *((c,) for c in COMPONENTS), COMPONENTS]
]

# What each piece adds, as (kind, name); ConfigMap names carry a content hash and are matched apart.
BASE = {("ServiceAccount", "hub-mirror"), ("Service", "hub-mirror"), ("ConfigMap", "hub-mirror")}
OVERLAY_OBJECTS = {
    "single-node": {("StatefulSet", "hub-mirror")},
    "s3-replicas": {
        ("Deployment", "hub-mirror"),
        ("HorizontalPodAutoscaler", "hub-mirror"),
        ("PodDisruptionBudget", "hub-mirror"),
    },
}
COMPONENT_OBJECTS = {
    "monitoring": {("ServiceMonitor", "hub-mirror"), ("PrometheusRule", "hub-mirror")},
    "network-policy": {("NetworkPolicy", "hub-mirror")},
    "ingress": {("Ingress", "hub-mirror")},
}

# Stand-ins for what the cluster fills in, to build the container's environment as the kubelet would.
POD_IP = "10.1.2.3"
SECRET_VALUE = "not-a-real-secret"
# Memory a fill peaks at on local disk (docs/benchmarks.md: 57-65 MiB), and how many fills at once
# the S3 overlay's limit is sized for (overlays/s3-replicas/memory.yaml).
LOCAL_FILL_PEAK = 65 * 2**20
S3_CONCURRENT_FILLS = 16

# The Secrets the manifests reference, and the key(s) each must hold; docs/deploy.md tells
# how to create each one.
SECRETS = {
    "hub-mirror-admin": {"token"},
    "hub-mirror-upstream": {"token"},
    "hub-mirror-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "hub-mirror-tls": set(),
}
# Every variant's rendered objects, by variant_id.
Rendered = dict[str, list[dict[str, Any]]]

SECRET_LIKE = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def variant_id(variant: tuple[str, tuple[str, ...]]) -> str:
    overlay, components = variant
    return "+".join((overlay, *components)) if len(components) < len(COMPONENTS) else f"{overlay}+all"


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    command = kustomize_command()
    assert command is not None
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"{' '.join(command)} {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def variant_directory(tmp: Path, variant: tuple[str, tuple[str, ...]]) -> Path:
    """A kustomization of the overlay plus the components, as a user would write one of their own."""
    overlay, components = variant
    if not components:
        return KUBE / "overlays" / overlay
    directory = tmp / variant_id(variant)
    directory.mkdir()
    # Kustomize refuses absolute paths to other kustomizations; relative ones may leave the root.
    rel = Path(os.path.relpath(KUBE, directory))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(rel / "overlays" / overlay)],
        "components": [str(rel / "components" / c) for c in components],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    if kustomize_command() is None:
        pytest.skip("neither kubectl nor kustomize is on PATH: the manifests cannot be rendered here")
    tmp = tmp_path_factory.mktemp("kustomizations")
    directories = {variant_id(v): variant_directory(tmp, v) for v in VARIANTS}
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(directories, pool.map(render, directories.values()), strict=True))


variants = pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)


# Accessors -------------------------------------------------------------------------------------------


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, [d["kind"] for d in found]
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return workload(docs)["spec"]["template"]["spec"]


def containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = pod_spec(docs)
    return [*spec.get("initContainers", []), *spec["containers"]]


def mirror_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(docs)["containers"] if c["name"] == "mirror"]
    return container


def settings(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The ConfigMap the mirror container reads its HUB_MIRROR_* settings from."""
    (ref,) = [e["configMapRef"]["name"] for e in mirror_container(docs)["envFrom"] if "configMapRef" in e]
    (configmap,) = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == ref]
    return configmap["data"]


def environment(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env in order with $(VAR)."""
    env = dict(settings(docs))
    for entry in mirror_container(docs).get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"])
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "status.podIP", source
            env[entry["name"]] = POD_IP
        elif "secretKeyRef" in source:
            env[entry["name"]] = SECRET_VALUE
        else:
            raise AssertionError(f"unexpected env source {source}")
    return env


def mirror_config(docs: list[dict[str, Any]]) -> Config:
    return load_config(environ=environment(docs))


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (128Mi, 1Gi, 250m, 2) as a number."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match[1]) * units.get(match[2], 1)


def port_number(container: dict[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


# Rendering and schemas -------------------------------------------------------------------------------


@variants
def test_renders_the_expected_objects(rendered: Rendered, variant: tuple) -> None:
    overlay, components = variant
    docs = rendered[variant_id(variant)]
    expected = BASE | OVERLAY_OBJECTS[overlay]
    for component in components:
        expected |= COMPONENT_OBJECTS[component]
    got = [
        (
            d["kind"],
            re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"]) if d["kind"] == "ConfigMap" else d["metadata"]["name"],
        )
        for d in docs
    ]
    assert sorted(got) == sorted(expected)


@variants
def test_every_object_is_valid_for_the_kubernetes_api(rendered: Rendered, variant: tuple) -> None:
    for doc in rendered[variant_id(variant)]:
        if doc["apiVersion"] in CRD_API_VERSIONS:
            continue  # no schema in kubernetes-validate; see test_monitoring_objects
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            ) from None


def test_the_schema_check_rejects_unknown_fields(rendered: Rendered) -> None:
    """Strict validation is what catches a misspelt field (kubectl would drop it silently)."""
    doc = workload(rendered["s3-replicas"])
    doc = yaml.safe_load(yaml.safe_dump(doc))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@variants
def test_the_workload_reads_the_generated_configmap(rendered: Rendered, variant: tuple) -> None:
    docs = rendered[variant_id(variant)]
    names = {c["metadata"]["name"] for c in of_kind(docs, "ConfigMap")}
    refs = {e["configMapRef"]["name"] for e in mirror_container(docs)["envFrom"] if "configMapRef" in e}
    assert refs and refs <= names
    assert all(re.search(r"-[a-z0-9]{10}$", name) for name in names), "generated names roll the pods on change"


def test_the_image_is_the_project_version(rendered: Rendered) -> None:
    # pyproject.toml's [project] version (tomllib is 3.11+; the project supports 3.10).
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1]
    for overlay in OVERLAYS:
        assert mirror_container(rendered[overlay])["image"] == f"ghcr.io/example/hub-mirror:{version}"


def test_pods_run_as_the_images_user(rendered: Rendered) -> None:
    """runAsUser/runAsGroup/fsGroup must be the Dockerfile's USER, or the cache volume is not writable."""
    dockerfile = ROOT / "Dockerfile"
    stage = re.search(
        r"^FROM \S+ AS mirror\n(.*?)(?=^FROM |\Z)", dockerfile.read_text() if dockerfile.exists() else "", re.M | re.S
    )
    if stage is None:
        pytest.skip("no Dockerfile with a `mirror` stage to compare with")
    user = re.findall(r"^USER (\d+):(\d+)", stage[1], re.M)
    assert user, "the mirror stage sets no numeric USER"
    uid, gid = map(int, user[-1])
    for overlay in OVERLAYS:
        pod = pod_spec(rendered[overlay])
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
        assert pod["securityContext"]["fsGroup"] == gid


# The pod --------------------------------------------------------------------------------------------


@variants
def test_probes_use_healthz_and_readyz(rendered: Rendered, variant: tuple) -> None:
    container = mirror_container(rendered[variant_id(variant)])
    port = port_number(container, "http")
    assert port == 8090
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(container, get["port"]) == port, probe
    # /readyz may take the storage check (up to 10 s) plus the upstream probe (3 s) before it answers.
    assert container["readinessProbe"]["timeoutSeconds"] >= 13


@variants
def test_every_container_is_hardened(rendered: Rendered, variant: tuple) -> None:
    docs = rendered[variant_id(variant)]
    pod = pod_spec(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    for container in containers(docs):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True, container["name"]
        assert (sc["runAsUser"], sc["runAsGroup"]) == (10001, 10001), container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        # A read-only root needs a writable /tmp.
        volumes = {v["name"]: v for v in pod["volumes"]}
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]], container["name"]


@variants
def test_no_secret_values_in_the_manifests(rendered: Rendered, variant: tuple) -> None:
    docs = rendered[variant_id(variant)]
    assert not of_kind(docs, "Secret"), "Secrets are created with kubectl, never shipped"
    for configmap in of_kind(docs, "ConfigMap"):
        assert not [k for k in configmap["data"] if SECRET_LIKE.search(k)], "secret-like key in a ConfigMap"
    for container in containers(docs):
        for source in container.get("envFrom", []):
            assert set(source) <= {"configMapRef", "secretRef"}, source
        for entry in container.get("env", []):
            if SECRET_LIKE.search(entry["name"]):
                assert "value" not in entry, f"{entry['name']} has a literal value"
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["key"] in SECRETS[ref["name"]], ref


def test_every_referenced_secret_is_documented(rendered: Rendered) -> None:
    docs = [d for variant in rendered.values() for d in variant]
    names = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    names |= {tls["secretName"] for d in docs if d["kind"] == "Ingress" for tls in d["spec"]["tls"]}
    assert names == set(SECRETS)
    text = DOC.read_text()
    for name in names:
        assert re.search(rf"kubectl[^\n]* create secret \w+ {name}\b", text), f"{DOC.name} does not create {name}"


@variants
def test_resources_are_set(rendered: Rendered, variant: tuple) -> None:
    for container in containers(rendered[variant_id(variant)]):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert quantity(resources["limits"]["memory"]) >= 2 * quantity(resources["requests"]["memory"])
        # At least the peak measured for a cold fill (docs/benchmarks.md).
        assert quantity(resources["requests"]["memory"]) >= LOCAL_FILL_PEAK


def test_s3_memory_limit_covers_the_multipart_buffers(rendered: Rendered) -> None:
    """Each S3 fill holds s3_part_size x (s3_parts_in_flight + 1) bytes; raising them must raise the limit."""
    docs = rendered["s3-replicas"]
    config = mirror_config(docs)
    per_fill = config.storage.s3_part_size * (config.storage.s3_parts_in_flight + 1)
    needed = LOCAL_FILL_PEAK + S3_CONCURRENT_FILLS * per_fill
    limit = quantity(mirror_container(docs)["resources"]["limits"]["memory"])
    assert limit >= needed, f"memory limit {limit / 2**20:.0f} MiB < {needed / 2**20:.0f} MiB of fills"
    assert limit > quantity(mirror_container(rendered["single-node"])["resources"]["limits"]["memory"])


@variants
def test_termination_grace_outlasts_the_mirrors_shutdown(rendered: Rendered, variant: tuple) -> None:
    docs = rendered[variant_id(variant)]
    config = mirror_config(docs)
    container = mirror_container(docs)
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert drain >= 3, "endpoints need a few seconds to drop the pod before SIGTERM closes the listener"
    # After SIGTERM: the grace, then up to 5 s more for aiohttp to close (mirror/cli.py: grace + 5).
    needed = drain + config.server.shutdown_grace + 5
    assert pod_spec(docs)["terminationGracePeriodSeconds"] > needed


@variants
def test_the_environment_is_a_valid_mirror_configuration(rendered: Rendered, variant: tuple) -> None:
    overlay, components = variant
    docs = rendered[variant_id(variant)]
    pod = pod_spec(docs)
    container = mirror_container(docs)
    # Service links would add HUB_MIRROR_SERVICE_* variables the config loader reads as settings.
    assert pod["enableServiceLinks"] is False
    config = mirror_config(docs)  # raises ConfigError on anything the mirror would refuse at start
    assert config.server.host == "0.0.0.0"
    assert config.server.port == port_number(container, "http")
    assert config.admin.token == SECRET_VALUE
    # cache.dir is a mounted volume: the root filesystem is read-only.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert str(config.cache_dir) in mounts
    cache_volume = mounts[str(config.cache_dir)]
    if overlay == "single-node":
        assert config.storage.backend == "local"
        assert cache_volume in {t["metadata"]["name"] for t in workload(docs)["spec"]["volumeClaimTemplates"]}
        assert config.server.advertise_url == ""
    else:
        assert config.storage.backend == "s3"
        assert config.storage.s3_bucket
        assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[cache_volume]
        assert config.server.advertise_url == f"http://{POD_IP}:{config.server.port}"
    if "ingress" in components:
        (tls,) = one(docs, "Ingress")["spec"]["tls"]
        assert config.server.public_url == f"https://{tls['hosts'][0]}"
    else:
        assert config.server.public_url == ""


@variants
def test_the_service_selects_the_pods(rendered: Rendered, variant: tuple) -> None:
    docs = rendered[variant_id(variant)]
    service = one(docs, "Service")
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert workload(docs)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"]) == ("http", 8090)
    assert port_number(mirror_container(docs), port["targetPort"]) == 8090


# The overlays ---------------------------------------------------------------------------------------


def test_single_node_is_one_statefulset_with_a_volume(rendered: Rendered) -> None:
    docs = rendered["single-node"]
    statefulset = one(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1
    assert not of_kind(docs, "Deployment") and not of_kind(docs, "HorizontalPodAutoscaler")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    size = quantity(claim["spec"]["resources"]["requests"]["storage"])
    # Eviction keeps the blobs under the volume's size, with room for metadata and fills.
    assert 0 < mirror_config(docs).cache.max_bytes < size


def test_s3_replicas_scale_with_an_hpa_and_a_pdb(rendered: Rendered) -> None:
    docs = rendered["s3-replicas"]
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hub-mirror"}
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] > 3
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget = pdb["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == hpa["spec"]["minReplicas"] - 1

    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()


def test_s3_replicas_advertise_their_pod_ip(rendered: Rendered) -> None:
    env = [e["name"] for e in mirror_container(rendered["s3-replicas"])["env"]]
    # $(POD_IP) only expands if POD_IP comes earlier in the list.
    assert env.index("POD_IP") < env.index("HUB_MIRROR_SERVER_ADVERTISE_URL")
    (pod_ip,) = [e for e in mirror_container(rendered["s3-replicas"])["env"] if e["name"] == "POD_IP"]
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


# The components -------------------------------------------------------------------------------------


def test_prometheus_rule_is_exactly_the_alerts_file() -> None:
    """The component holds a copy of config/prometheus-alerts.yml's groups; any drift fails here."""
    rule = yaml.safe_load((KUBE / "components" / "monitoring" / "prometheusrule.yaml").read_text())
    expected = yaml.safe_load(ALERTS.read_text())["groups"]
    assert rule["spec"]["groups"] == expected, (
        "deploy/kubernetes/components/monitoring/prometheusrule.yaml differs from config/prometheus-alerts.yml: "
        "copy the file's groups under spec.groups"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_objects(rendered: Rendered, overlay: str) -> None:
    docs = rendered[f"{overlay}+monitoring"]
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # HubMirrorDown asks for up{job="hub-mirror"}; the operator names the job after the Service.
    assert 'job="hub-mirror"' in ALERTS.read_text() and service["metadata"]["name"] == "hub-mirror"
    rule = one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_allows_only_what_the_mirror_needs(rendered: Rendered, overlay: str) -> None:
    docs = rendered[f"{overlay}+network-policy"]
    policy = one(docs, "NetworkPolicy")["spec"]
    container = mirror_container(docs)
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (rule,) = policy["ingress"]
    assert [port_number(container, p["port"]) for p in rule["ports"]] == [8090]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 8090, 9000}
    # The in-cluster S3 endpoint of the s3 overlay is among them.
    endpoint = mirror_config(rendered["s3-replicas"]).storage.s3_endpoint
    assert int(endpoint.rsplit(":", 1)[1]) in egress_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_terminates_tls_in_front_of_the_service(rendered: Rendered, overlay: str) -> None:
    docs = rendered[f"{overlay}+ingress"]
    ingress = one(docs, "Ingress")["spec"]
    service = one(docs, "Service")
    (tls,) = ingress["tls"]
    assert tls["secretName"] == "hub-mirror-tls"
    for rule in ingress["rules"]:
        assert rule["host"] in tls["hosts"]
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
