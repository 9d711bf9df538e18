"""`orchestrator journeys test`: the example workspace's tests pass; a wrong expectation
fails at its position with a diff; a broken test file is refused before anything runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.conftest import EXAMPLE

ORCHESTRATOR = str(Path(sys.executable).parent / "orchestrator")


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command, from inside the workspace as its users run it (positions are
    relative to where it runs)."""
    return subprocess.run(
        [ORCHESTRATOR, "journeys", "test", *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False, cwd=cwd,
    )  # fmt: skip


def _workspace(tmp_path: Path, tests: dict[str, str]) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("tests"))
    (root / "tests").mkdir()
    for name, text in tests.items():
        (root / "tests" / name).write_text(text)
    return root


def test_the_example_workspace_tests_every_journey_and_they_pass(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    run = _run("--workspace", EXAMPLE, "--junit-xml", report)
    assert run.returncode == 0, run.stdout + run.stderr
    suites = ET.parse(report).getroot().findall("testsuite")
    tested = {case.get("classname") for suite in suites for case in suite.iter("testcase")}
    journeys = {p.stem for p in (EXAMPLE / "journeys").glob("*.yaml")}
    assert tested == journeys
    assert all(s.get("failures") == "0" and s.get("errors") == "0" for s in suites)
    assert sum(int(s.get("tests", 0)) for s in suites) >= 10
    assert run.stdout.strip().endswith("passed, 0 failed")


WRONG = """\
journey: cart_abandonment
tests:
  - name: expects the reminder too early
    user: {traits: {email: ada@example.com, first_name: Ada}}
    events:
      - {at: 0s, event: Cart Abandoned, properties: {cart_id: c1, cart_value: 80}}
    expect:
      messages:
        - {channel: email, template: cart_reminder, at: 30m, contains: [Ada, "£99.00"]}
      status: exited
  - name: this one holds
    user: {traits: {email: bo@example.com}}
    events:
      - {at: 0s, event: Cart Abandoned, properties: {cart_id: c1, cart_value: 80}}
      - {at: 10m, event: Order Completed}
    expect:
      messages: []
      status: converted
"""


def test_a_wrong_expectation_fails_at_its_position_with_a_diff(tmp_path: Path) -> None:
    root = _workspace(tmp_path, {"cart.yaml": WRONG})
    report = tmp_path / "junit.xml"
    run = _run("--junit-xml", report, cwd=root)
    assert run.returncode == 1
    out = run.stdout
    assert "FAIL cart_abandonment > expects the reminder too early" in out
    assert "ok   cart_abandonment > this one holds" in out
    # the message's line and column, then expected against actual
    assert "tests/cart.yaml:9:11: messages differ (1 expected, 1 happened)" in out
    assert "-email cart_reminder at 30m contains 'Ada' contains '£99.00'" in out
    assert "+email cart_reminder at 1h1m contains 'Ada' lacks '£99.00'" in out
    assert "tests/cart.yaml:10:15: status: expected exited, got completed" in out
    assert out.strip().endswith("1 passed, 1 failed")
    [suite] = ET.parse(report).getroot().findall("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert "tests/cart.yaml:9:11" in (failure.text or "")


BROKEN = """\
journey: cart_abandonment
tests:
  - name: typos
    user: {traits: {email: ada@example.com}}
    events:
      - {at: soon, event: Cart Abandoned}
    expect:
      steps: [wait_for_purchase, remindr]
      colour: blue
  - name: a forced variant the journey does not have
    variants: {nope: a}
    events:
      - {at: 0s, event: Cart Abandoned}
    expect:
      messages: [{template: cart_remindr}]
  - name: a start that has passed
    start: 2020-01-01T10:00:00Z
    events:
      - {at: 0s, event: Cart Abandoned}
    expect: {}
"""


def test_a_broken_test_file_is_refused_with_every_position_and_nothing_runs(
    tmp_path: Path,
) -> None:
    root = _workspace(tmp_path, {"cart.yaml": BROKEN})
    run = _run(cwd=root)
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert any(line.startswith("tests/cart.yaml:6:14: ") and "not a duration" in line
               for line in lines)  # fmt: skip
    assert any(line.startswith("tests/cart.yaml:9:7: ") and "unknown key" in line
               for line in lines)  # fmt: skip
    assert any(line.startswith("tests/cart.yaml:16:5: tests.2: ") and "has passed" in line
               for line in lines)  # fmt: skip
    assert "FAIL" not in run.stdout
    assert " passed, " not in run.stdout  # no summary: nothing ran
    # the steps are checked once the file parses
    fixed = (
        BROKEN.replace("at: soon", "at: 0s")
        .replace("      colour: blue\n", "")
        .replace("2020-01-01T10:00:00Z", "'10:00'")
    )
    (root / "tests" / "cart.yaml").write_text(fixed)
    run = _run(cwd=root)
    assert run.returncode == 1
    assert "tests/cart.yaml:8:34: tests.0.expect.steps.1: no step 'remindr' in " in run.stdout
    assert "tests/cart.yaml:10:22: tests.1.variants.nope: no experiment or template variants" in (
        run.stdout
    )
    assert "tests.1.expect.messages.0.template: cart_abandonment sends no template" in run.stdout


FAILING_TEMPLATE = """\
journey: cart_abandonment
tests:
  - name: a template error shows, though nothing expected it
    user: {traits: {email: ada@example.com}}
    events:
      - {at: 0s, event: Cart Abandoned, properties: {cart_id: c1, cart_value: 80}}
    expect:
      status: completed
"""


def test_a_step_that_fails_fails_the_test(tmp_path: Path) -> None:
    root = _workspace(tmp_path, {"cart.yaml": FAILING_TEMPLATE})
    template = root / "templates" / "cart_reminder.yaml"
    # valid, but it divides by zero for this cart
    broken = "{{ 100 / (event.properties.cart_value - 80) }}"
    template.write_text(template.read_text().replace("Your cart is waiting", broken, 1))
    run = _run(cwd=root)
    assert run.returncode == 1
    assert "failed differ (0 expected, 1 happened)" in run.stdout
    assert "+at step reminder because" in run.stdout
    assert "division by zero" in run.stdout
