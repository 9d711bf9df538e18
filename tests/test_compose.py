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
