"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator.services import Services


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain function dependency in its thread pool, a thread hop
    # on every request for a dictionary lookup.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
