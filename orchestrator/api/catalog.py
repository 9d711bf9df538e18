"""`PUT /v1/catalog/items`: load or update catalogue items from a backend."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from orchestrator.api.auth import SourceDep
from orchestrator.api.deps import ServicesDep
from orchestrator.catalog import CatalogItem, load_items

router = APIRouter(tags=["ranking"])


class CatalogBatch(BaseModel):
    items: list[CatalogItem] = Field(min_length=1, max_length=5000)


class Loaded(BaseModel):
    loaded: int


@router.put(
    "/v1/catalog/items",
    response_model=Loaded,
    responses={400: {"description": "An item is invalid (`field` names it); nothing changed."}},
)
async def put_items(body: CatalogBatch, services: ServicesDep, _source: SourceDep) -> Loaded:
    """Insert or update items (by `id`), all or nothing; ranked content sees them within
    the catalogue's refresh interval."""
    return Loaded(loaded=await load_items(services.engine, body.items))
