"""Comparing what a journey test expected with what happened, as readable failures.

A list expectation (messages, suppressions, deferrals, steps) that does not hold comes
with a diff: the expected items against the actual ones, each actual item written in
the terms of the expected item it is compared with (a time within the tolerance reads
as the expected time), so only what differs shows as `-` and `+` lines.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from orchestrator.journey_tests.cases import (
    ExpectedDecision,
    ExpectedMessage,
    JourneyTest,
    LoadedFile,
)
from orchestrator.journey_tests.harness import Actual, Held, SentMessage
from rules.durations import format_duration


@dataclass(frozen=True)
class Failure:
    where: str  # file:line:col of the expectation
    message: str
    diff: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([f"{self.where}: {self.message}", *(f"    {d}" for d in self.diff)])


def _when(delta: timedelta) -> str:
    return format_duration(delta) if delta > timedelta(0) else "0s"


def _message_line(actual: SentMessage | None, expected: ExpectedMessage | None) -> str:
    """One message, written with the fields the expectation names (all when none)."""
    parts: list[str] = []
    if actual is None:
        assert expected is not None
        parts += [f"{expected.channel.value}" if expected.channel else "",
                  expected.template or ""]  # fmt: skip
        if expected.at is not None:
            parts.append(f"at {_when(expected.at)}")
        parts += [f"contains {f!r}" for f in expected.fragments]
        return " ".join(p for p in parts if p)
    if expected is None or expected.channel is not None:
        parts.append(actual.channel)
    if expected is None or expected.template is not None:
        parts.append(actual.template)
    if expected is None or expected.at is not None:
        shown = actual.at
        if expected and expected.at is not None and abs(actual.at - expected.at) <= expected.within:
            shown = expected.at
        parts.append(f"at {_when(shown)}")
    if expected is not None:
        for fragment in expected.fragments:
            verb = "contains" if fragment in actual.text else "lacks"
            parts.append(f"{verb} {fragment!r}")
    return " ".join(parts)


def _held_line(actual: Held | None, expected: ExpectedDecision | None) -> str:
    if actual is None:
        assert expected is not None
        return " ".join(
            p for p in (f"at step {expected.step}" if expected.step else "",
                        f"because {expected.reason!r}" if expected.reason else "") if p
        )  # fmt: skip
    parts = []
    if expected is None or expected.step is not None:
        parts.append(f"at step {actual.step}")
    if expected is None or expected.reason is not None:
        if expected is not None and expected.reason and expected.reason in actual.reason:
            parts.append(f"because {expected.reason!r}")
        else:
            parts.append(f"because {actual.reason!r}")
    return " ".join(parts)


E = TypeVar("E")
A = TypeVar("A")


def _compare_list(
    what: str,
    expected: Sequence[E],
    actual: Sequence[A],
    line: Callable[[A | None, E | None], str],
) -> tuple[int, list[str]] | None:
    """None if the lists agree; else the first item that differs and a diff of expected
    against actual lines."""
    want = [line(None, e) for e in expected]
    got = [line(a, expected[n] if n < len(expected) else None) for n, a in enumerate(actual)]
    if want == got:
        return None
    first = next((n for n, (w, g) in enumerate(zip(want, got, strict=False)) if w != g), None)
    diff = [
        d
        for d in difflib.unified_diff(want, got, f"expected {what}", f"actual {what}", lineterm="")
        if not d.startswith("@@")
    ]
    return (first if first is not None else min(len(want), len(got))), diff


def compare(loaded: LoadedFile, index: int, test: JourneyTest, actual: Actual) -> list[Failure]:
    """Every expectation of the test that did not hold."""
    expect = test.expect
    failures: list[Failure] = []

    def at(*loc: str | int) -> str:
        return loaded.where("tests", index, "expect", *loc)

    for name in ("entered", "held_out", "status", "converted"):
        want = getattr(expect, name)
        got = getattr(actual, name)
        if want is not None and want != got:
            failures.append(Failure(at(name), f"{name}: expected {want}, got {got}"))
    if expect.end_reason is not None and expect.end_reason not in (actual.end_reason or ""):
        failures.append(
            Failure(
                at("end_reason"),
                f"end_reason: expected words {expect.end_reason!r}, got {actual.end_reason!r}",
            )
        )
    if expect.instances is not None and expect.instances != actual.instances:
        failures.append(
            Failure(
                at("instances"), f"instances: expected {expect.instances}, got {actual.instances}"
            )
        )
    if expect.variants is not None:
        for key, name in expect.variants.items():
            if actual.variants.get(key) != name:
                failures.append(
                    Failure(
                        at("variants", key),
                        f"variants.{key}: expected {name}, got {actual.variants.get(key)}",
                    )
                )
    lists: list[tuple[str, Sequence[Any] | None, Sequence[Any], Callable[..., str]]] = [
        ("messages", expect.messages, actual.messages, _message_line),
        ("suppressed", expect.suppressed, actual.suppressed, _held_line),
        ("deferred", expect.deferred, actual.deferred, _held_line),
        ("failed", expect.failed, actual.failed, _held_line),
        ("steps", expect.steps, actual.steps, lambda a, e: a if a is not None else e),
    ]
    for name, want_list, got_list, line in lists:
        if want_list is None and name == "failed" and got_list:
            want_list = []  # a step that failed (a template error, say) always fails a test
        if want_list is None:
            continue
        differs = _compare_list(name, want_list, got_list, line)
        if differs is not None:
            first, diff = differs
            count = f"{len(want_list)} expected, {len(got_list)} happened"
            place = at(name, first) if first < len(want_list) else at(name)
            failures.append(Failure(place, f"{name} differ ({count})", diff))
    return failures
