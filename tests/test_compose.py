"""The shipped docker-compose.yml cannot rot: real parsers accept it, and the stack's promises hold.

Two real parsers, both from PyPI in the `test` extra, neither needs a container engine:
- the Compose Specification's own JSON schema, as check-jsonschema vendors it (from the
  compose-spec repository via SchemaStore), checks every key and type;
- podman-compose (`--dry-run config`) reads it as `podman-compose up` would: `.env`, interpolation
  (a missing secret stops it with our message), profiles, depends_on conditions.
Then the invariants the docs promise: a healthcheck on every long-running service, images pinned,
no secret written inline, the mirror built from ./Dockerfile and running as a non-root user, every
mounted file present, and a readiness alert that reads a metric the mirror really exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mirror.config import load_config
from mirror.hub import health
from mirror.storage.base import StorageUnavailable
from mirror.storage.configured import build_storage
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.storage_faults import FaultyStorage
from tests.test_image import dockerfile_stages, stage_user

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
SECRETS = {
    "HUB_MIRROR_ADMIN_TOKEN": "admin-token-from-dot-env",
    "MINIO_ROOT_PASSWORD": "minio-pw-123",
    "GRAFANA_ADMIN_PASSWORD": "gf",
}
# Environment variable names whose values are secrets: they may only come from ${...}.
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET")


def compose_schema() -> dict[str, Any]:
    schema = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(schema.read_text())


def podman_compose(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`podman-compose --dry-run ARGS` in `cwd`, with none of this machine's variables leaking in."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)}
    code = "import sys, podman_compose; sys.argv[0] = 'podman-compose'; podman_compose.main()"
    return subprocess.run(
        [sys.executable, "-c", code, "--dry-run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def project(tmp_path: Path, env: dict[str, str] | None) -> Path:
    """A copy of the compose project in tmp_path, with `env` as its .env (none when None)."""
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    if env is not None:
        (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return tmp_path


def test_the_compose_spec_schema_accepts_it() -> None:
    schema = compose_schema()
    assert "Compose Specification" in schema.get("title", ""), "not the compose-spec schema"
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert errors == []
    # Guards the test itself: the schema rejects what compose would reject.
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["mirror"]["healthchek"] = {}
    assert not validator.is_valid(broken)


def test_podman_compose_reads_it_with_the_dot_env(tmp_path: Path) -> None:
    result = podman_compose(project(tmp_path, SECRETS), "--profile", "gpu", "config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == set(SERVICES)
    mirror = config["services"]["mirror"]
    # The token reached the mirror from .env, by interpolation.
    assert mirror["environment"]["HUB_MIRROR_ADMIN_TOKEN"] == SECRETS["HUB_MIRROR_ADMIN_TOKEN"]
    assert mirror["environment"]["AWS_SECRET_ACCESS_KEY"] == SECRETS["MINIO_ROOT_PASSWORD"]
    # The context is the project directory (podman-compose makes it absolute), the target a stage.
    assert (Path(mirror["build"]["context"]), mirror["build"]["target"]) == (tmp_path, "mirror")
    assert mirror["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_a_missing_secret_stops_compose_with_a_clear_message(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = podman_compose(project(tmp_path, env), "config")
    assert result.returncode != 0
    assert f"set {missing} in .env (cp .env.example .env)" in result.stderr


def test_env_example_names_every_variable_compose_requires() -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    assert required == set(SECRETS)
    example = (ROOT / ".env.example").read_text()
    for name in required:
        assert re.search(rf"^{name}=$", example, re.M), f".env.example has no empty {name}= line to fill in"


def one_shot(name: str) -> bool:
    """An init container: never restarted, and what depends on it waits for it to complete."""
    waited = [
        s["depends_on"][name]["condition"]
        for s in SERVICES.values()
        if isinstance(s.get("depends_on"), dict) and name in s["depends_on"]
    ]
    return SERVICES[name].get("restart") == "no" and waited == ["service_completed_successfully"] * len(waited) != []


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_or_is_a_one_shot_init(name: str) -> None:
    service = SERVICES[name]
    if one_shot(name):
        assert "healthcheck" not in service
        return
    test = service.get("healthcheck", {}).get("test")
    assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert not service["healthcheck"].get("disable")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_depends_on_names_a_service_and_a_condition_it_can_meet(name: str) -> None:
    for target, spec in (SERVICES[name].get("depends_on") or {}).items():
        assert target in SERVICES, f"{name} depends on unknown service {target}"
        assert isinstance(spec, dict) and "condition" in spec, f"{name} -> {target}: say which condition"
        if spec["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[target], f"{target} can never become healthy"
        if spec["condition"] == "service_completed_successfully":
            assert one_shot(target)


def test_no_inline_dockerfile_and_built_services_use_a_real_stage() -> None:
    assert "dockerfile_inline" not in COMPOSE_FILE.read_text()
    stages = dockerfile_stages()
    built = {name: s for name, s in SERVICES.items() if "build" in s}
    assert set(built) == {"mirror", "smoke"}
    for name, service in built.items():
        assert service["build"]["context"] == "." and "dockerfile" not in service["build"]
        assert service["build"]["target"] in stages, f"{name}: no stage {service['build']['target']} in Dockerfile"


@pytest.mark.parametrize("name", ["mirror", "smoke"])
def test_built_services_run_as_a_non_root_user(name: str) -> None:
    service = SERVICES[name]
    user = service.get("user", stage_user(service["build"]["target"]))
    assert user is not None and user.split(":")[0] not in ("0", "root"), f"{name} runs as {user!r}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name: str) -> None:
    image = SERVICES[name]["image"]
    repository, _, tag = image.partition("@")[0].rpartition(":")
    assert repository and tag and "/" not in tag, f"{name}: {image} has no tag"
    assert tag != "latest", f"{name}: {image} is not pinned"
    if "build" in SERVICES[name]:
        assert tag == VERSION, f"{name}: built images carry the package version {VERSION}, not {tag}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_secret_value_is_written_inline(name: str) -> None:
    for key, value in (SERVICES[name].get("environment") or {}).items():
        if SECRET_NAME.search(key):
            # Only from the environment / .env: required (:?) or empty by default (:-).
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*|:-)\}", str(value)), f"{name}: {key}={value!r} is inline"


def bind_mounts() -> list[tuple[str, str, str]]:
    mounts = []
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                mounts.append((name, source, target))
    return mounts


@pytest.mark.parametrize(("name", "source", "target"), bind_mounts())
def test_every_mounted_file_is_in_the_repository(name: str, source: str, target: str) -> None:
    assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_loads_the_alert_rules_it_is_given() -> None:
    prometheus = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    mounted = {target for name, _, target in bind_mounts() if name == "prometheus"}
    for rule_file in prometheus["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounted
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert "mirror:8090" in targets


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    grafana = ROOT / "config" / "grafana"
    datasources = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["url"], d["isDefault"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090", True)
    ]
    (provider,) = yaml.safe_load((grafana / "dashboards" / "hub-mirror.yml").read_text())["providers"]
    mounts = {source: target for name, source, target in bind_mounts() if name == "grafana"}
    dashboard = mounts["./config/grafana-dashboard.json"]
    assert Path(dashboard).parent == Path(provider["options"]["path"])
    assert mounts["./config/grafana/dashboards"] == "/etc/grafana/provisioning/dashboards"
    assert mounts["./config/grafana/datasources"] == "/etc/grafana/provisioning/datasources"
    assert json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())["uid"] == "hub-mirror"


# --- HubMirrorUnready: the alert reads hub_mirror_ready, which the mirror keeps current itself. --------


def unready_rule() -> dict[str, Any]:
    groups = yaml.safe_load((ROOT / "config" / "prometheus-alerts.yml").read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == "HubMirrorUnready"]
    return rule


def test_the_unready_alert_needs_no_blackbox_exporter() -> None:
    expr = unready_rule()["expr"]
    assert "probe_success" not in expr
    assert "hub_mirror_ready" in expr and "up{" in expr


UNIT_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'hub_mirror_ready{{job="hub-mirror", instance="ok:8090"}}'
        values: '1x15'
      - series: 'up{{job="hub-mirror", instance="ok:8090"}}'
        values: '1x15'
      - series: 'hub_mirror_ready{{job="hub-mirror", instance="full:8090"}}'
        values: '1 0x14'
      - series: 'up{{job="hub-mirror", instance="full:8090"}}'
        values: '1x15'
      # The process is gone: scrapes fail, hub_mirror_ready is no more.
      - series: 'hub_mirror_ready{{job="hub-mirror", instance="gone:8090"}}'
        values: '1 stale'
      - series: 'up{{job="hub-mirror", instance="gone:8090"}}'
        values: '1 0x14'
    alert_rule_test:
      - eval_time: 4m
        alertname: HubMirrorUnready
        exp_alerts: []
      - eval_time: 10m
        alertname: HubMirrorUnready
        exp_alerts:
          - exp_labels: {{severity: page, job: hub-mirror, instance: "full:8090"}}
          - exp_labels: {{severity: page, job: hub-mirror, instance: "gone:8090"}}
"""


def test_the_unready_alert_fires_for_bad_storage_and_for_a_dead_mirror(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    rules = tmp_path / "prometheus-alerts.yml"
    # The shipped rules without their annotations: promtool compares those too, the test is about labels.
    shipped = yaml.safe_load((ROOT / "config" / "prometheus-alerts.yml").read_text())
    for group in shipped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules.write_text(yaml.safe_dump(shipped))
    (tmp_path / "test.yml").write_text(UNIT_TEST.format(rules=rules.name))
    result = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


class Unwritable(FaultyStorage):
    """Storage whose readiness probe (write, read back, delete) fails while `broken` is set."""

    broken = False

    async def check_writable(self) -> None:
        if self.broken:
            raise StorageUnavailable("local storage: cannot write a probe object: disk full")
        await super().check_writable()


def ready_gauge(url: str) -> float | None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "hub_mirror_ready"]
    return values[0] if values else None


def wait_for(url: str, expected: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := ready_gauge(url)) != expected:
        assert time.monotonic() < deadline, f"hub_mirror_ready is {got}, expected {expected}"
        time.sleep(0.05)


def test_hub_mirror_ready_follows_storage_without_anyone_asking_readyz(
    hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "READINESS_INTERVAL", 0.1)
    overrides = {"upstream": {"url": hub.url, "probe_interval": 0}, "cache": {"dir": str(tmp_path / "cache")}}
    config = load_config(None, overrides, environ={})
    store = Unwritable(build_storage(config))
    server = MirrorThread(config, storage=store).start()
    try:
        wait_for(server.url, 1)
        store.broken = True
        wait_for(server.url, 0)  # the background check, no /readyz in between
        store.broken = False
        wait_for(server.url, 1)
        # /readyz decides the same way, and sets the gauge itself.
        monkeypatch.setattr(health, "READINESS_INTERVAL", 3600)
        time.sleep(0.3)  # the loop now sleeps for an hour
        store.broken = True
        try:
            urllib.request.urlopen(f"{server.url}/readyz", timeout=10)
            raise AssertionError("/readyz answered 2xx on unwritable storage")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        assert ready_gauge(server.url) == 0
    finally:
        server.stop()
