"""`PUT /v1/catalog/items`: load or update catalogue items from a backend."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, field_validator

from orchestrator.api.auth import Caller, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.catalog import CatalogItem, load_items

router = APIRouter(tags=["ranking"], route_class=GuardedRoute)


class CatalogBatch(BaseModel):
    items: list[CatalogItem] = Field(min_length=1, max_length=5000)

    @field_validator("items")
    @classmethod
    def _distinct(cls, items: list[CatalogItem]) -> list[CatalogItem]:
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.id in first:
                raise ValueError(f"items[{i}] repeats the id of items[{first[item.id]}]")
            first[item.id] = i
        return items


class Loaded(BaseModel):
    loaded: int


@router.put(
    "/v1/catalog/items",
    response_model=Loaded,
    responses={
        400: {"description": "An item is invalid (`field` names it); nothing changed."},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with scope `catalog:write`"},
        413: {"description": "The body is too large; nothing changed."},
    },
)
async def put_items(
    body: CatalogBatch,
    services: ServicesDep,
    caller: Annotated[Caller, Depends(server_key_with("catalog:write"))],
) -> Loaded:
    """Insert or update items (by `id`), all or nothing; ranked content sees them within
    the catalogue's refresh interval. The write is in the audit log."""
    loaded = await load_items(services.engine, body.items, actor=caller.actor, now=services.clock())
    return Loaded(loaded=loaded)
