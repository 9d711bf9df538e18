"""Every row of every table of the schema that names an id: the erasure tests' witness.

Tables and columns come from the database catalogue, not from our table definitions,
so a table added by a migration is scanned without anyone listing it here.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def tables(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
                "ORDER BY table_name"
            )
        )
        return [name for (name,) in found]


async def naming(engine: AsyncEngine, ids: Iterable[str]) -> dict[str, int]:
    """`table.column` -> rows whose value, as text, contains any of the ids (every column
    but binary ones: text, jsonb, arrays and the rest are read as their text)."""
    ids = list(ids)
    async with engine.connect() as conn:
        columns = (
            await conn.execute(
                text(
                    "SELECT c.table_name, c.column_name FROM information_schema.columns c "
                    "JOIN information_schema.tables t USING (table_schema, table_name) "
                    "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
                    "AND c.data_type <> 'bytea' ORDER BY 1, 2"
                )
            )
        ).all()
        assert columns, "the catalogue lists no columns"
        found = {}
        for table, column in columns:
            hits = await conn.scalar(
                text(
                    f'SELECT count(*) FROM "{table}" AS t WHERE EXISTS '
                    f"(SELECT 1 FROM unnest(CAST(:ids AS text[])) AS needle(value) "
                    f'WHERE strpos(t."{column}"::text, needle.value) > 0)'
                ),
                {"ids": ids},
            )
            if hits:
                found[f"{table}.{column}"] = int(hits)
    return found
