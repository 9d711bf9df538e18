"""One check's finding, and how the findings read on a terminal and as JSON."""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warn", "fail", "skip"]

# How each status reads at the start of a line, padded to one width.
_LABELS: dict[Status, str] = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


@dataclass(frozen=True)
class Finding:
    """What one check found: `message` says what is so, `fix` what to do about it, and
    `details` the lines behind it (a workspace's problems at `file:line:col`)."""

    check: str
    status: Status
    message: str
    fix: str = ""
    details: tuple[str, ...] = field(default_factory=tuple)

    def line(self, width: int) -> str:
        fix = f": {self.fix}" if self.fix else ""
        return f"{_LABELS[self.status]:<4}  {self.check:<{width}}  {self.message}{fix}"


def ok(check: str, message: str) -> Finding:
    return Finding(check, "ok", message)


def warn(check: str, message: str, fix: str = "", details: tuple[str, ...] = ()) -> Finding:
    return Finding(check, "warn", message, fix, details)


def fail(check: str, message: str, fix: str = "", details: tuple[str, ...] = ()) -> Finding:
    return Finding(check, "fail", message, fix, details)


def skip(check: str, because: str) -> Finding:
    return Finding(check, "skip", f"not checked: {because}")


def failed(findings: list[Finding]) -> bool:
    return any(f.status == "fail" for f in findings)


def text_lines(findings: list[Finding]) -> list[str]:
    """A line per check (its details indented below it), then a one-line verdict."""
    width = max((len(f.check) for f in findings), default=0)
    lines: list[str] = []
    for finding in findings:
        lines.append(finding.line(width))
        lines.extend(f"{'':<6}{'':<{width}}  {detail}" for detail in finding.details)
    problems = sum(f.status == "fail" for f in findings)
    warnings = sum(f.status == "warn" for f in findings)
    if problems:
        lines.append(f"{problems} problem(s), {warnings} warning(s): fix the FAIL lines first")
    else:
        lines.append(f"no problems, {warnings} warning(s)")
    return lines


def as_json(findings: list[Finding]) -> dict[str, Any]:
    return {
        "ok": not failed(findings),
        "checks": [asdict(f) | {"details": list(f.details)} for f in findings],
    }


def plain_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the innermost cause, with the usual
    errors named as an operator would say them."""
    cause = exc
    while (inner := cause.__cause__ or cause.__context__) is not None:
        cause = inner
    if isinstance(cause, TimeoutError) or isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(cause, OSError) and cause.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[cause.errno]
    if isinstance(cause, OSError) and cause.errno is None and "refused" in str(cause).lower():
        return "connection refused"
    message = " ".join(str(cause).split())
    return message[:200] or type(cause).__name__


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}
