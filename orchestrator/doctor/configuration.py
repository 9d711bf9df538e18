"""What the doctor checks without a network: the settings, the workspace and its secrets."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from orchestrator.doctor.report import Finding, fail, ok, skip, warn
from orchestrator.settings import Settings
from orchestrator.sources import InvalidSource, Problem, load
from orchestrator.workspace import (
    CONFIG_FILE,
    Workspace,
    WorkspaceConfig,
    published_secrets,
    secrets_of,
)

# At most this many problems are listed under a check; the command that owns them
# (`orchestrator journeys validate`) lists them all.
MAX_DETAILS = 20
# ${NAME} without a default: a value that must come from the environment.
_REQUIRED_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Words people write where a secret should be, before they have one.
_PLACEHOLDER_WORDS = ("changeme", "change_me", "change-me", "placeholder", "replace", "todo",
                      "your_", "your-", "dummy", "example", "xxxxxx", "secret_here")  # fmt: skip


@dataclass
class Loaded:
    """The workspace as far as it loaded, for the checks after it."""

    workspace: Workspace | None = None


def check_settings() -> tuple[Finding, Settings | None]:
    """ORCHESTRATOR_* parse into settings (pydantic-settings reads the environment)."""
    from orchestrator.cli_settings import settings_problems
    from orchestrator.logs.formats import log_format

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = settings_problems(exc)
        return fail(
            "settings",
            f"ORCHESTRATOR_* do not parse: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            "correct the variables named (see README, Production)",
            tuple(problems[1:]),
        ), None
    try:
        log_format()  # read by the processes themselves, not by Settings
    except ValueError as exc:
        return fail("settings", str(exc), "set it to text or json (see README, Production)"), None
    return ok(
        "settings",
        f"ORCHESTRATOR_* parse: {settings.environment}, task queue '{settings.task_queue}', "
        f"Temporal {settings.temporal_address} namespace '{settings.temporal_namespace}'",
    ), settings


def check_workspace(settings: Settings) -> tuple[Finding, Loaded]:
    """orchestrator.yaml, the policy, templates, traits and segments load, and every
    journey validates as `journeys deploy` would validate it."""
    from orchestrator.validation import check_workspace as validate_journeys
    from orchestrator.workspace import load_workspace

    root = settings.workspace
    if not (root / CONFIG_FILE).is_file():
        return fail(
            "workspace",
            f"{root / CONFIG_FILE} does not exist",
            "point ORCHESTRATOR_WORKSPACE at the directory holding orchestrator.yaml",
        ), Loaded()
    try:
        workspace = load_workspace(root)
    except InvalidSource as exc:
        return _invalid(root, exc.problems), Loaded()
    checked, problems = validate_journeys(workspace)
    if problems:
        return _invalid(root, problems), Loaded(workspace)
    return ok(
        "workspace",
        f"{root}: {len(checked)} journey(s) and {len(workspace.templates)} template(s) valid",
    ), Loaded(workspace)


def _invalid(root: Any, problems: list[Problem]) -> Finding:
    shown = tuple(str(p) for p in problems[:MAX_DETAILS])
    more = len(problems) - len(shown)
    return fail(
        "workspace",
        f"{root}: {len(problems)} problem(s), the first {shown[0]}",
        "correct them (`orchestrator journeys validate` lists the journeys' problems)",
        shown[1:] + ((f"... and {more} more",) if more else ()),
    )


def check_secrets(settings: Settings, loaded: Loaded) -> Finding:
    """Every secret orchestrator.yaml names is set, is no placeholder and, in production,
    is none of the example's published ones; the features in use have theirs."""
    unset = list(_unset_references(settings))
    if unset:
        first, *rest = unset
        return fail(
            "secrets",
            f"{len(unset)} value(s) of {CONFIG_FILE} come from unset environment variables: "
            f"{first}",
            "set the variables in the environment of every API and worker process",
            tuple(rest),
        )
    workspace = loaded.workspace
    if workspace is None:
        return skip("secrets", "the workspace does not load")
    config = workspace.config
    placeholders = sorted(where for where, value in secrets_of(config).items()
                          if _placeholder(value))  # fmt: skip
    if placeholders:
        return fail(
            "secrets",
            f"{', '.join(placeholders)} look like placeholders, not secrets",
            "generate random ones (e.g. `openssl rand -base64 32`, with `whsec_` in front "
            "for signing secrets)",
        )
    published = published_secrets(config)
    if published and settings.environment == "production":
        return fail(
            "secrets",
            f"{', '.join(published)} are the example's published secrets "
            "(`orchestrator api` and `worker` refuse to serve)",
            "set your own, as ${ENV} references",
        )
    notes = _missing_features(config)
    if published:
        return warn(
            "secrets",
            f"{', '.join(published)} are the example's published secrets",
            "fine for development; production refuses them",
            tuple(notes),
        )
    if notes:
        return warn("secrets", notes[0], "", tuple(notes[1:]))
    return ok("secrets", f"{len(secrets_of(config))} secret(s) set, none a placeholder")


def _unset_references(settings: Settings) -> Iterator[str]:
    """Each `${NAME}` (without a default) of orchestrator.yaml whose variable is unset
    or empty, at its `file:line:col`."""
    try:
        source = load(settings.workspace / CONFIG_FILE, display=CONFIG_FILE)
    except InvalidSource:
        return  # the workspace check says why it does not read
    for loc, value in _strings(source.data, []):
        for name in _REQUIRED_REF.findall(value):
            if not os.environ.get(name):
                state = "empty" if name in os.environ else "not set"
                yield str(source.problem(loc, f"${{{name}}} is {state}"))


def _strings(value: Any, loc: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, [*loc, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, [*loc, index])
    elif isinstance(value, str):
        yield loc, value


def _placeholder(secret: str) -> bool:
    """A value someone wrote by hand: a placeholder word, or too few distinct symbols
    (a signing secret's key bytes, or the characters of any other secret)."""
    lowered = secret.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        return True
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            return True
        return len(set(key)) < 8
    return len(set(secret)) < 8


def _missing_features(config: WorkspaceConfig) -> list[str]:
    """Secrets whose absence leaves a configured feature closed (not an error)."""
    notes = []
    pulled = [name.value for name in config.channels if name.value in ("in_app", "web")]
    if pulled and config.user_tokens is None:
        notes.append(
            f"{' and '.join(pulled)} messages are stored but user_tokens.secret is not set: "
            "apps cannot read their inbox or placements (server API keys still can)"
        )
    if not config.api_keys:
        notes.append("no api_keys: arbitration, per-user reads and reports are closed to all")
    return notes
