"""Reports as JSON, for a server API key with `reports:read`:

    GET /v1/reports/workspace                                   the global control group
    GET /v1/reports/journeys/{key}                              funnel, holdout, attribution
    GET /v1/reports/journeys/{key}/experiments/{experiment}     one experiment

The same functions make the CLI's and the report pages' numbers (`service`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path

from orchestrator.api.auth import Caller, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.reports import design, service

router = APIRouter(
    tags=["reports"],
    route_class=GuardedRoute,
    responses={
        400: {"description": "A parameter is invalid; `field` names it"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with scope `reports:read`"},
        404: {"description": "No such journey or experiment"},
    },
)
Reader = Annotated[Caller, Depends(server_key_with("reports:read"))]


@router.get("/v1/reports/workspace", response_model=service.WorkspaceReport)
async def workspace(services: ServicesDep, _caller: Reader) -> Any:
    """The global control group against everyone else, and each journey's headline."""
    async with services.engine.connect() as conn:
        return await service.workspace_report(
            conn, global_control=services.config.global_control, now=services.clock()
        )


@router.get("/v1/reports/journeys/{key}", response_model=service.JourneyReport)
async def journey(services: ServicesDep, _caller: Reader, key: str = Path(max_length=200)) -> Any:
    """A journey's funnel in journey order, its holdout and experiments, and the
    conversions its messages preceded, by channel."""
    async with services.engine.connect() as conn:
        try:
            return await service.journey_report(conn, journey=key, now=services.clock())
        except design.UnknownReport as exc:
            raise HTTPException(404, str(exc)) from None


@router.get(
    "/v1/reports/journeys/{key}/experiments/{experiment}",
    response_model=service.ExperimentResult,
)
async def experiment(
    services: ServicesDep,
    _caller: Reader,
    key: str = Path(max_length=200),
    experiment: str = Path(max_length=200),
) -> Any:
    """An experiment, template test or the holdout (`holdout`) of a journey: arms with
    intervals, lift, the sample-ratio check, power, and each day's standing."""
    async with services.engine.connect() as conn:
        try:
            return await service.experiment(
                conn, journey=key, key=experiment, now=services.clock(),
                global_control=services.config.global_control,
            )  # fmt: skip
        except design.UnknownReport as exc:
            raise HTTPException(404, str(exc)) from None
