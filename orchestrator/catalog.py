"""The item catalogue in Postgres: loading it, and serving it (with popularity) from memory.

Load a CSV or JSON-lines file with `orchestrator catalog load FILE`: columns `id`,
`name` (required), `url`, `image`, `price`, `category`, `description`, `available`;
any other column is kept in `attributes`. Loading the same id again updates it.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.ranking import ScoredItem
from orchestrator.access import audit
from orchestrator.routing import Clock, utc_now
from orchestrator.tables import catalog_items

log = logging.getLogger(__name__)

_COLUMNS = ("id", "name", "url", "image", "price", "category", "description", "available")


class CatalogItem(BaseModel):
    """One item; anything beyond the named fields goes in `attributes`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=1000)
    url: str | None = None
    image: str | None = None
    price: float | None = Field(default=None, ge=0)
    category: str | None = None
    description: str | None = None
    available: bool = True
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url", "image", "price", "category", "description", mode="before")
    @classmethod
    def _blank_is_missing(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("url", "image")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        # These end up as links and images in messages: nothing but the web.
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


def template_item(item: Mapping[str, Any] | CatalogItem) -> dict[str, Any]:
    """An item as templates see it: its columns, then its attributes beside them."""
    row = item.model_dump() if isinstance(item, CatalogItem) else item
    keys = ("id", "name", "url", "image", "price", "category", "description")
    return {**{key: row[key] for key in keys}, **row["attributes"]}


class CatalogFileError(Exception):
    """A catalogue file could not be read; the message names the line."""


def read_items(path: Path) -> list[CatalogItem]:
    """Every item in a CSV or JSON-lines file; raise CatalogFileError at the first bad line."""
    if not path.is_file():
        raise CatalogFileError(f"{path}: no such file")
    items: list[CatalogItem] = []
    with path.open(newline="", encoding="utf-8") as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            rows: list[tuple[int, Any]] = []
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise CatalogFileError(f"{path}:{number}: not JSON: {exc.msg}") from None
        else:
            rows = list(enumerate(csv.DictReader(handle), start=2))
    seen: set[str] = set()
    for number, row in rows:
        if not isinstance(row, dict):
            raise CatalogFileError(f"{path}:{number}: each line must be an object")
        known = {k: v for k, v in row.items() if k in _COLUMNS}
        extra = {k: v for k, v in row.items() if k not in _COLUMNS and k != "attributes"}
        attributes = {**(row.get("attributes") or {}), **extra}
        try:
            item = CatalogItem.model_validate({**known, "attributes": attributes})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise CatalogFileError(f"{path}:{number}: {field}: {err['msg']}") from None
        if item.id in seen:
            raise CatalogFileError(f"{path}:{number}: item {item.id!r} appears twice")
        seen.add(item.id)
        items.append(item)
    return items


async def load_items(
    engine: AsyncEngine,
    items: Sequence[CatalogItem],
    *,
    actor: audit.Actor | None = None,
    now: datetime | None = None,
) -> int:
    """Insert or update the items, all in one transaction, and say who did in the audit
    log (the person at the command line unless `actor` says otherwise)."""
    if not items:
        return 0
    rows = [item.model_dump() for item in items]
    async with engine.begin() as conn:
        await audit.record(
            conn,
            actor or audit.command_line(),
            "catalog.write",
            details={"items": len(rows), "first_id": rows[0]["id"]},
            now=now or datetime.now(UTC),
        )
        for start in range(0, len(rows), 1000):
            stmt = insert(catalog_items).values(rows[start : start + 1000])
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[catalog_items.c.id],
                    set_={
                        **{c: stmt.excluded[c] for c in (*_COLUMNS[1:], "attributes")},
                        "updated_at": func.now(),
                    },
                )
            )
    return len(rows)


# Purchase lines: one row per product of each purchase event (Segment's ecommerce
# spec, `properties.products[].product_id`); `e` is the event, `product` the line.
PURCHASE_LINES = """
    events AS e, jsonb_array_elements(
        CASE WHEN jsonb_typeof(e.properties -> 'products') = 'array'
             THEN e.properties -> 'products' ELSE '[]'::jsonb END) AS product
"""
_POPULARITY = text(
    f"""
    SELECT product ->> 'product_id' AS item_id, count(DISTINCT e.user_id) AS n
    FROM {PURCHASE_LINES}
    WHERE e.event = ANY(:events) AND e.type = 'track' AND e.timestamp >= :since
    GROUP BY 1
    """
)
_HISTORY = text(
    f"""
    SELECT product ->> 'product_id' AS item, max(e.timestamp) AS at
    FROM {PURCHASE_LINES}
    WHERE e.user_id = :user_id AND e.event = ANY(:events)
    GROUP BY 1
    """
)


async def purchase_history(
    engine: AsyncEngine, user_id: str, events: Sequence[str]
) -> dict[str, datetime]:
    """What a user has bought, each item with when they last bought it."""
    async with engine.connect() as conn:
        rows = await conn.execute(_HISTORY, {"user_id": user_id, "events": list(events)})
        return {item: at for item, at in rows.all() if item}


class CatalogCache:
    """The `Catalog` channels use: items and popularity held in memory, refreshed from
    Postgres in the background every `refresh_every` (the first use waits for a load)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        events: Sequence[str],
        window: timedelta,
        refresh_every: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self.engine, self.events, self.window = engine, list(events), window
        self.refresh_every, self.clock = refresh_every.total_seconds(), clock
        self._items: dict[str, dict[str, Any]] = {}
        self._popular: list[ScoredItem] = []
        self._loaded_at: float | None = None
        self._first_load = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        """Load on first use (once, however many callers wait); afterwards refresh in
        the background when stale, serving the previous load meanwhile."""
        if self._loaded_at is None:
            async with self._first_load:
                if self._loaded_at is None:
                    await self.refresh()
        elif time.monotonic() - self._loaded_at > self.refresh_every and not self._refreshing:
            self._refreshing = asyncio.create_task(self._refresh_quietly())

    async def refresh(self) -> None:
        since: datetime = self.clock() - self.window
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(catalog_items))).mappings().all()
            counts: dict[str, int] = dict(
                (await conn.execute(_POPULARITY, {"events": self.events, "since": since})).all()
            )
        items = {row["id"]: template_item(dict(row)) for row in rows if row["available"]}
        # Most bought first; items nobody bought yet follow in a stable order.
        ranked = sorted(items, key=lambda item_id: (-counts.get(item_id, 0), item_id))
        top = max(counts.values(), default=0) or 1
        self._items = items
        self._popular = [ScoredItem(item_id=i, score=counts.get(i, 0) / top) for i in ranked]
        self._loaded_at = time.monotonic()

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception:
            log.exception("refreshing the catalogue failed; serving the previous one")
        finally:
            self._refreshing = None

    def describe(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        return [self._items[i] for i in item_ids if i in self._items]

    def popular(self, k: int, exclude: Collection[str]) -> list[ScoredItem]:
        chosen: list[ScoredItem] = []
        for item in self._popular:
            if item.item_id not in exclude:
                chosen.append(item)
                if len(chosen) == k:
                    break
        return chosen

    async def purchased(self, user_id: str) -> set[str]:
        return set(await purchase_history(self.engine, user_id, self.events))
