"""The marketer's command line: validate, schema, graph, deploy, list."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.support.db import rows

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "retail"
runner = CliRunner()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "retail"
    shutil.copytree(EXAMPLE, root)
    return root


def test_validate_accepts_the_example(workspace: Path) -> None:
    result = runner.invoke(app, ["journeys", "validate", str(workspace / "journeys")])
    assert result.exit_code == 0, result.output
    assert "4 journey file(s) valid" in result.stderr


def test_validate_prints_every_problem_with_its_position(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = workspace / "journeys" / "cart_abandonment.yaml"
    path.write_text(
        path.read_text()
        .replace("template: cart_reminder", "template: cart_remindr")
        .replace("timeout: 1d", "timeout: tomorrow")
    )
    monkeypatch.chdir(workspace)
    result = runner.invoke(app, ["journeys", "validate", "journeys/cart_abandonment.yaml"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines == [
        "journeys/cart_abandonment.yaml:51:16: steps.wait_again.wait_for.timeout: "
        "'tomorrow' is not a duration: use a number and a unit, like 30m, 2h, 3d, 1w or 1d12h",
    ]
    path.write_text(path.read_text().replace("timeout: tomorrow", "timeout: 1d"))
    result = runner.invoke(app, ["journeys", "validate", "journeys/cart_abandonment.yaml"])
    assert result.exit_code == 1
    assert result.stdout.startswith(
        "journeys/cart_abandonment.yaml:40:17: "
        "steps.reminder.send.template: unknown template 'cart_remindr'"
    )


def test_validate_without_paths_checks_the_workspace(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_WORKSPACE", raising=False)
    monkeypatch.chdir(workspace / "journeys")  # the workspace at or above the directory
    result = runner.invoke(app, ["journeys", "validate"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "4 journey file(s) valid in ..\n"
    path = workspace / "journeys" / "win_back.yaml"
    path.write_text(path.read_text().replace("timeout: 14d", "timeout: fortnight"))
    result = runner.invoke(app, ["journeys", "validate"])
    assert result.exit_code == 1
    assert result.stdout.startswith("win_back.yaml:")
    assert "'fortnight' is not a duration" in result.stdout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # in no workspace: the one dev runs, the example
    result = runner.invoke(app, ["journeys", "validate"])
    assert result.exit_code == 0, result.output
    assert result.stderr.endswith("4 journey file(s) valid in " + os.path.relpath(EXAMPLE) + "\n")
    monkeypatch.setenv("ORCHESTRATOR_WORKSPACE", str(workspace))  # or the one it names
    result = runner.invoke(app, ["journeys", "validate"])
    assert result.exit_code == 1
    assert "'fortnight' is not a duration" in result.stdout
    policy = runner.invoke(app, ["policy", "validate"])  # policy validate agrees
    assert policy.exit_code == 0
    assert policy.stderr == os.path.relpath(workspace / "policy.yaml") + " is valid\n"


def test_validate_outside_a_workspace(tmp_path: Path) -> None:
    stray = tmp_path / "stray.yaml"
    stray.write_text("journey: x\n")
    result = runner.invoke(app, ["journeys", "validate", str(stray)])
    assert result.exit_code == 2
    assert "no orchestrator.yaml" in result.stderr


def test_the_schema_checks_journey_files_in_editors(workspace: Path) -> None:
    result = runner.invoke(app, ["journeys", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    yaml = YAML(typ="safe")
    for path in (workspace / "journeys").glob("*.yaml"):
        jsonschema.validate(yaml.load(path.read_text()), schema)
    bad = yaml.load((workspace / "journeys" / "welcome_series.yaml").read_text())
    bad["steps"]["welcome"]["retries"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    for kind in ("template", "workspace"):
        other = runner.invoke(app, ["journeys", "schema", "--kind", kind])
        assert other.exit_code == 0
        assert json.loads(other.stdout)["type"] == "object"
    # orchestrator.yaml, `${ENV}` references included, checks against its schema
    config_schema = json.loads(
        runner.invoke(app, ["journeys", "schema", "--kind", "workspace"]).stdout
    )
    config = yaml.load((workspace / "orchestrator.yaml").read_text())
    jsonschema.validate(config, config_schema)
    config["api_keys"][0]["secret"] = "short"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, config_schema)
    config["api_keys"][0]["secret"] = "${CRM_BACKEND_KEY}"
    jsonschema.validate(config, config_schema)
    # the example templates check too, and every default is valid against its own schema
    # (durations as `30d`-style text, not ISO 8601)
    template_schema = json.loads(
        runner.invoke(app, ["journeys", "schema", "--kind", "template"]).stdout
    )
    for path in (workspace / "templates").glob("*.yaml"):
        jsonschema.validate(yaml.load(path.read_text()), template_schema)
    for section in template_schema["$defs"].values():
        for name, field in section["properties"].items():
            if "default" in field and "pattern" in field:
                assert re.match(field["pattern"], field["default"]), (name, field["default"])


def test_graph_prints_mermaid_and_writes_svg(workspace: Path, tmp_path: Path) -> None:
    svg = tmp_path / "cart.svg"
    result = runner.invoke(
        app,
        [
            "journeys",
            "graph",
            str(workspace / "journeys" / "cart_abandonment.yaml"),
            "--svg",
            str(svg),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("flowchart TD\n")
    assert 'wait_for_purchase -->|"timeout"| reminder' in result.stdout
    tree = ET.fromstring(svg.read_text())
    texts = {t.text for t in tree.iter("{http://www.w3.org/2000/svg}text")}
    assert {"wait_for_purchase", "reminder", "big_cart", "free_shipping", "done"} <= texts
    broken = workspace / "journeys" / "broken.yaml"
    broken.write_text("journey: broken\nsteps: {}\n")
    result = runner.invoke(app, ["journeys", "graph", str(broken)])
    assert result.exit_code == 1
    assert "missing required key 'name'" in result.stdout


async def test_deploy_versions_only_what_changed(
    workspace: Path, engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    monkeypatch.setenv("ORCHESTRATOR_WORKSPACE", str(workspace))

    def deploy() -> list[tuple[str, ...]]:
        result = runner.invoke(app, ["journeys", "deploy"])
        assert result.exit_code == 0, result.output
        return [tuple(line.split()) for line in result.stdout.splitlines()]

    assert sorted(await asyncio.to_thread(deploy)) == [
        ("cart_abandonment", "v1", "new"),
        ("traits+segments", "v1", "new"),
        ("weekly_newsletter", "v1", "new"),
        ("welcome_series", "v1", "new"),
        ("win_back", "v1", "new"),
    ]
    assert sorted(await asyncio.to_thread(deploy)) == [
        ("cart_abandonment", "v1", "unchanged"),
        ("traits+segments", "v1", "unchanged"),
        ("weekly_newsletter", "v1", "unchanged"),
        ("welcome_series", "v1", "unchanged"),
        ("win_back", "v1", "unchanged"),
    ]
    # a template edit is a new version of every journey that sends it
    template = workspace / "templates" / "win_back_note.yaml"
    template.write_text(template.read_text().replace("We miss you", "We really miss you"))
    (workspace / "journeys" / "cart_abandonment.yaml").unlink()
    assert sorted(await asyncio.to_thread(deploy)) == [
        ("cart_abandonment", "v1", "retired"),
        ("traits+segments", "v1", "unchanged"),
        ("weekly_newsletter", "v1", "unchanged"),
        ("welcome_series", "v1", "unchanged"),
        ("win_back", "v2", "updated"),
    ]
    stored = await rows(
        engine,
        "SELECT journey_key, version, source_file FROM journey_versions "
        "ORDER BY journey_key, version",
    )
    assert [(r["journey_key"], r["version"]) for r in stored] == [
        ("cart_abandonment", 1),
        ("weekly_newsletter", 1),
        ("welcome_series", 1),
        ("win_back", 1),
        ("win_back", 2),
    ]
    assert stored[-1]["source_file"] == "journeys/win_back.yaml"

    # an invalid workspace deploys nothing at all
    (workspace / "journeys" / "welcome_series.yaml").write_text(
        (workspace / "journeys" / "welcome_series.yaml")
        .read_text()
        .replace("wait: 1d", "wait: 1 day")
    )
    template.write_text(template.read_text().replace("really", "truly"))
    result = await asyncio.to_thread(runner.invoke, app, ["journeys", "deploy"])
    assert result.exit_code == 1
    assert "journeys/welcome_series.yaml:" in result.stdout
    assert "nothing was deployed" in result.stderr
    assert len(await rows(engine, "SELECT 1 FROM journey_versions")) == 5

    listed = await asyncio.to_thread(runner.invoke, app, ["journeys", "list"])
    assert listed.exit_code == 0
    assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [
        ["cart_abandonment", "v1", "retired"],
        ["weekly_newsletter", "v1", "active"],
        ["welcome_series", "v1", "active"],
        ["win_back", "v2", "active"],
    ]


async def test_deploy_dry_run_shows_who_moves_where_and_stores_nothing(
    workspace: Path, engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    monkeypatch.setenv("ORCHESTRATOR_WORKSPACE", str(workspace))
    first = await asyncio.to_thread(runner.invoke, app, ["journeys", "deploy"])
    assert first.exit_code == 0, first.output
    journey = workspace / "journeys" / "win_back.yaml"
    journey.write_text(
        journey.read_text()
        .replace(
            "start: pick_offer\n",
            "start: pick_offer\nmigrate:\n  from: [1]\n  steps: {tell_crm: wait_response}\n",
        )
        .replace("  tell_crm:\n", "  crm:\n")
        .replace("next: tell_crm", "next: crm")
    )
    result = await asyncio.to_thread(runner.invoke, app, ["journeys", "deploy", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["win_back", "v2", "updated"] in lines
    assert ["win_back", "v2", "takes", "in", "the", "users", "of", "v1"] in lines
    assert ["v1", "tell_crm", "0", "user(s)", "->", "wait_response"] in lines
    assert ["v1", "pick_offer", "0", "user(s)", "->", "pick_offer"] in lines
    assert "dry run: nothing was deployed" in result.stderr
    [row] = await rows(
        engine, "SELECT count(*) AS n FROM journey_versions WHERE journey_key = 'win_back'"
    )
    assert row["n"] == 1
    # a map that leaves a step without a target is refused at its position
    journey.write_text(journey.read_text().replace("  steps: {tell_crm: wait_response}\n", ""))
    refused = await asyncio.to_thread(runner.invoke, app, ["journeys", "deploy", "--dry-run"])
    assert refused.exit_code == 1
    assert "journeys/win_back.yaml:" in refused.stdout
    assert "step 'tell_crm' of v1 has no target" in refused.stdout
