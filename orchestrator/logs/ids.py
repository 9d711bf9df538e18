"""The ids the current work is about, bound at its boundaries (an activity, a request)
and read by the JSON log format: contextvars, so concurrent work keeps its own."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})
_bound: ContextVar[Mapping[str, str]] = ContextVar("log_ids", default=_EMPTY)


def current() -> Mapping[str, str]:
    """The ids bound here (outer bindings included)."""
    return _bound.get()


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Bind the given ids (None and "" are left out) for the block, over the outer ones."""
    given = {name: value for name, value in ids.items() if value}
    if not given:
        yield
        return
    token = _bound.set(MappingProxyType({**_bound.get(), **given}))
    try:
        yield
    finally:
        _bound.reset(token)


def bind(**ids: str | None) -> None:
    """Bind ids until the current task ends (each asyncio task has its own copy)."""
    given = {name: value for name, value in ids.items() if value}
    if given:
        _bound.set(MappingProxyType({**_bound.get(), **given}))


def journey_of(workflow_id: str) -> str | None:
    """The journey key in a journey workflow's id (`journey:<key>:<user>[:<instance>]`).
    The user is not taken from it: a user id may hold a `:` as an instance key does."""
    kind, _, rest = workflow_id.partition(":")
    key = rest.partition(":")[0]
    return key if kind == "journey" and key else None
