"""policy.yaml as a marketer edits it: every problem at its position, schema, simulation."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from orchestrator.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "retail"
runner = CliRunner()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "retail"
    shutil.copytree(EXAMPLE, root)
    return root


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            "caps:\n  - {name: a, max: 1, window: 1d, chanel: push}\n",
            "policy.yaml:2:35: caps.0.chanel: unknown key",
        ),
        (
            "caps:\n  - {name: a, max: 1, window: daily}\n",
            "policy.yaml:2:31: caps.0.window: 'daily' is not a duration",
        ),
        (
            "caps:\n  - {name: a, max: -1, window: 1d}\n",
            "policy.yaml:2:20: caps.0.max: Input should be greater than or equal to 0",
        ),
        (
            "quiet_hours:\n  - {start: '25:00', end: '08:00'}\n",
            "policy.yaml:2:13: quiet_hours.0.start: '25:00' is not a time of day",
        ),
        (
            "rules:\n  - name: r\n    when: usr.tier == 'gold'\n    then: suppress\n",
            "policy.yaml:3:11: rules.0.when: unknown name usr: conditions can use user, message",
        ),
        (
            "rules:\n  - name: r\n    when: user.tier ==\n    then: suppress\n",
            "policy.yaml:3:11: rules.0.when: expression does not parse",
        ),
        (
            "rules:\n  - name: r\n    when: user.vip\n    then: {reroute: fax}\n",
            "policy.yaml:4:21: rules.0.then.reroute: Input should be 'email'",
        ),
        (
            "rules:\n  - name: r\n    when: user.vip\n    then: drop\n",
            "policy.yaml:4:11: rules.0.then: Input should be 'suppress' or 'exempt_from_caps'",
        ),
        (
            "rules:\n  - name: r\n    when: user.vip\n    then: {remove: true}\n",
            "policy.yaml:4:5: rules.0.then: then: suppress, exempt_from_caps, {reroute: <channel>}",
        ),
        (
            "reachability: {email: email, sms: phone}\n",
            "policy.yaml:1:1: reachability: unknown key(s) sms: use email, push",
        ),
        (
            "conflicts:\n  windows: {transactional: 5m}\n",
            "policy.yaml:2:3: conflicts.windows: transactional messages are never held",
        ),
        (
            "caps:\n  - {name: a, max: 1, window: 1d}\n  - {name: a, max: 2, window: 2d}\n",
            "policy.yaml:1:1: caps: names must be unique: a",
        ),
    ],
)
def test_policy_problems_are_reported_at_their_position(
    workspace: Path, policy: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workspace / "policy.yaml").write_text(policy)
    monkeypatch.chdir(workspace)
    result = runner.invoke(app, ["policy", "validate", "--workspace", "."])
    assert result.exit_code == 1
    assert result.stdout.startswith(expected), result.stdout
    # the same problems stop journeys from validating and deploying
    journeys = runner.invoke(app, ["journeys", "validate", "journeys"])
    assert journeys.exit_code == 1
    assert journeys.stdout.startswith(expected.split(":")[0])


def test_the_example_policy_is_valid_and_matches_its_schema(workspace: Path) -> None:
    result = runner.invoke(app, ["policy", "validate", "--workspace", str(workspace)])
    assert result.exit_code == 0
    schema = json.loads(runner.invoke(app, ["policy", "schema"]).stdout)
    jsonschema.validate(YAML(typ="safe").load((workspace / "policy.yaml").read_text()), schema)


def test_simulation_of_the_example_traffic(workspace: Path) -> None:
    result = runner.invoke(app, ["policy", "simulate", str(workspace / "traffic.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("ada" in line and "win_back" in line and "lost to cart_abandonment" in line
               for line in lines)  # fmt: skip
    assert any("linus" in line and "no_discount_during_active_reward" in line for line in lines)
    assert any("grace" in line and "send on email" in line for line in lines)  # gold rule
    assert any("2026-11-27 08:00  grace" in line and "send on push" in line for line in lines)
    assert "7 requests: 4 sent, 3 suppressed" in result.stderr


def test_simulating_a_policy_change(workspace: Path, tmp_path: Path) -> None:
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text(
        textwrap.dedent("""
        caps: []
        conflicts: {windows: {promotional: 0}}
    """)
    )
    result = runner.invoke(app, ["policy", "simulate", str(workspace / "traffic.yaml"),
                                 "--policy", str(relaxed)])  # fmt: skip
    assert result.exit_code == 0, result.output
    # no caps, no windows and no CRM rules: only ada's email unsubscribe still counts,
    # and her cart reminder goes out by push instead
    assert "7 requests: 7 sent, 0 suppressed" in result.stderr


def test_bad_traffic_files_are_reported(workspace: Path, tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.yaml"
    traffic.write_text("requests:\n  - {at: soon, user: ada, channels: [email]}\n")
    result = runner.invoke(app, ["policy", "simulate", str(traffic), "--workspace",
                                 str(workspace)])  # fmt: skip
    assert result.exit_code == 1
    assert "traffic.yaml:2:10: requests.0.at: Input should be a valid datetime" in result.stdout
    assert "requests.0.category: missing required key 'category'" in result.stdout
