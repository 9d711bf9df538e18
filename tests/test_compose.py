"""docker-compose.yml: valid against the Compose specification, and wired to real settings.

No Docker engine runs here, so the file is checked statically: the schema, the
references between services, and that each orchestrator process gets settings our
own Settings class accepts for production.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from orchestrator.cli import app
from orchestrator.metrics.processes import WORKER_PORT
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose, schema)


def test_the_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "temporal", "temporal-ui", "setup", "api", "worker"} <= set(services)
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for target in depends if isinstance(depends, list) else depends.keys():
            assert target in services, f"{name} depends on unknown service {target}"
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] == "postgres"
    # Kafka in, with the kafka profile: KRaft (no ZooKeeper), consumers beside the API.
    assert services["kafka"]["profiles"] == services["consumer"]["profiles"] == ["kafka"]
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert services["consumer"]["environment"]["ORCHESTRATOR_KAFKA"] == "kafka:9092"
    assert "kafka" in services["consumer"]["depends_on"]
    assert "kafka" in services["relay"]["depends_on"]


def _expand(value: str) -> str:
    # ${NAME:?message} / ${NAME:-default} as compose would, with a stand-in password.
    return re.sub(r"\$\{([A-Z_]+)(:[?-][^}]*)?\}", lambda m: f"<{m.group(1)}>", value)


@pytest.mark.parametrize("name", ["setup", "api", "worker", "consumer", "relay"])
def test_each_process_gets_the_settings_it_needs(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose["services"][name]
    environment = {k: _expand(str(v)) for k, v in service["environment"].items()}
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"ORCHESTRATOR_{key.upper()}", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # refuses unsafe production settings
    assert settings.environment == "production"
    assert settings.database_url
    assert "@postgres:5432/" in settings.database_url
    assert settings.temporal_address.split(":")[0] in compose["services"]
    assert str(settings.workspace) == "/workspace"
    assert any(v.endswith(":/workspace:ro") for v in map(_expand, service["volumes"]))
    commands = service["command"] if name != "setup" else service["command"][-1].split(" && ")
    for command in commands if name == "setup" else [" ".join(commands)]:
        words = command.split()
        assert words[0] == "orchestrator"
        known = {c.name or c.callback.__name__ for c in app.registered_commands}
        known |= {g.name for g in app.registered_groups}
        assert words[1] in known, command
    if name == "api":
        assert settings.api_host == "0.0.0.0"
        assert f"{settings.api_port}:{settings.api_port}" in service["ports"]


def test_the_image_installs_the_packages() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("orchestrator", "workflows", "channels"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "pip install --no-cache-dir ." in dockerfile


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> file or folder of this repository, for `./...` bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def test_temporal_runs_the_server_image_with_a_one_shot_schema_setup(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert all("auto-setup" not in s.get("image", "") for s in services.values())
    assert services["temporal"]["image"].startswith("temporalio/server:")
    schema = services["temporal-schema"]
    assert schema["image"].startswith("temporalio/admin-tools:")
    assert schema["image"].split(":")[1] == services["temporal"]["image"].split(":")[1]
    script = schema["command"][0]
    for step in ("create", "setup-schema -v 0.0", "update-schema -d"):
        assert f"--db $$db {step}" in script
    assert "for db in temporal temporal_visibility" in script
    assert schema["restart"] == "no"
    waits = services["temporal"]["depends_on"]["temporal-schema"]
    assert waits["condition"] == "service_completed_successfully"
    namespace = services["temporal-namespace"]
    assert "temporal operator namespace create -n default" in namespace["command"][0]
    assert services["setup"]["depends_on"]["temporal-namespace"] == {
        "condition": "service_completed_successfully"
    }


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue  # ours, built from this repository
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)*", image), (name, image)


def test_prometheus_scrapes_every_process_and_loads_the_rules(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = _mounts(services["prometheus"])
    assert all(path.is_file() for path in mounts.values()), mounts
    config = YAML(typ="safe").load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "/etc/prometheus/alerts.yml" in mounts
    defaults = Settings.model_fields
    ports = {"worker": WORKER_PORT}  # the others' metrics are off unless a port is set
    for name in ("consumer", "relay"):
        ports[name] = int(services[name]["environment"]["ORCHESTRATOR_METRICS_PORT"])
    targets: dict[str, set[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                found.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            found |= {(name, dns["port"]) for name in dns["names"]}
    for job, hosts in targets.items():
        for host, _ in hosts:
            assert host in services, (job, host)
    api_port = int(services["api"]["environment"]["ORCHESTRATOR_API_PORT"])
    assert targets["orchestrator-api"] == {("api", api_port)}
    assert targets["orchestrator-worker"] == {("worker", ports["worker"])}
    assert targets["temporal-sdk"] == {("worker", defaults["temporal_metrics_port"].default)}
    assert targets["orchestrator-consumer"] == {("consumer", ports["consumer"])}
    assert targets["orchestrator-relay"] == {("relay", ports["relay"])}
    assert targets["temporal-server"] == {
        ("temporal", int(services["temporal"]["environment"]["PROMETHEUS_ENDPOINT"].split(":")[1]))
    }
    # Scraped from other containers: they listen on every interface, not loopback.
    for name in ("worker", "consumer", "relay"):
        assert services[name]["environment"]["ORCHESTRATOR_METRICS_HOST"] == "0.0.0.0"


def test_grafana_is_provisioned_with_the_data_source_and_dashboard(
    compose: dict[str, Any],
) -> None:
    mounts = _mounts(compose["services"]["grafana"])
    assert all(path.is_dir() for path in mounts.values()), mounts
    provisioning = "/etc/grafana/provisioning"
    yaml = YAML(typ="safe")
    sources = yaml.load((mounts[f"{provisioning}/datasources"] / "prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.load((mounts[f"{provisioning}/dashboards"] / "orchestrator.yml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    dashboards = mounts[folder]
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert (dashboards / Path(home).relative_to(folder)).is_file()
    assert json.loads((dashboards / "orchestrator.json").read_text())["panels"]
