"""`${NAME}` and `${NAME:-default}` in orchestrator.yaml, as a shell reads them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.sources import InvalidSource
from orchestrator.workspace import load_config
from tests.support.workspace import write_workspace
from workflows.spec import ChannelName

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "retail"


def _config_with(tmp_path: Path, url: str) -> Path:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", journeys={})
    config = root / "orchestrator.yaml"
    config.write_text(config.read_text().replace("url: http://127.0.0.1:9/email", f"url: {url}"))
    return root


@pytest.mark.parametrize(
    ("url", "environment", "expected"),
    [
        ("${SINK:-http://127.0.0.1:8750}/email", {}, "http://127.0.0.1:8750/email"),
        ("${SINK:-http://127.0.0.1:8750}/email", {"SINK": ""}, "http://127.0.0.1:8750/email"),
        ("${SINK:-http://127.0.0.1:8750}/email", {"SINK": "http://h:1"}, "http://h:1/email"),
        ("${SINK:-}http://127.0.0.1:9/email", {}, "http://127.0.0.1:9/email"),
        ("${SINK}/email", {"SINK": "http://h:1"}, "http://h:1/email"),
        ("${SCHEME:-http}://${HOST:-127.0.0.1}:9/email", {"HOST": "h"}, "http://h:9/email"),
    ],
)
def test_a_reference_takes_the_variable_or_its_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    environment: dict[str, str],
    expected: str,
) -> None:
    for name in ("SINK", "SCHEME", "HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = load_config(_config_with(tmp_path, url))
    assert config.channels[ChannelName.email].url == expected


def test_a_reference_without_a_default_must_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SINK", raising=False)
    with pytest.raises(InvalidSource, match="environment variable SINK is not set"):
        load_config(_config_with(tmp_path, "${SINK}/email"))


def test_the_example_follows_the_sink_and_api_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "retail"
    shutil.copytree(EXAMPLE, root)
    monkeypatch.delenv("ORCHESTRATOR_SINK_URL", raising=False)
    monkeypatch.delenv("ORCHESTRATOR_PUBLIC_URL", raising=False)
    config = load_config(root)
    assert {str(e.url) for e in config.channels.values()} == {
        f"http://127.0.0.1:8750/{name}" for name in ("email", "push", "in_app", "web")
    }
    assert config.links.base_url == "http://127.0.0.1:8000"
    monkeypatch.setenv("ORCHESTRATOR_SINK_URL", "http://127.0.0.1:9001")
    monkeypatch.setenv("ORCHESTRATOR_PUBLIC_URL", "https://shop.example.com")
    config = load_config(root)
    assert {str(e.url) for e in config.channels.values()} == {
        f"http://127.0.0.1:9001/{name}" for name in ("email", "push", "in_app", "web")
    }
    assert config.links.base_url == "https://shop.example.com"
