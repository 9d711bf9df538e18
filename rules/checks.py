"""A check a decision made, and how the checks of CRM and loyalty rules are named."""

from __future__ import annotations

from dataclasses import dataclass

# How the checks of CRM and loyalty rules are named, and what one that did not apply says:
# `Decision.reason` reads them back from stored decisions, which keep only the checks.
RULE = "rule "
NOT_APPLIED = "does not apply"


@dataclass(frozen=True, slots=True)
class Check:
    rule: str
    passed: bool
    detail: str
