"""Report pages for a browser: the workspace, a journey and an experiment, as HTML.

    GET /reports/                                          the global control group,
                                                           and every journey
    GET /reports/journeys/{key}                            funnel, holdout, experiments,
                                                           attribution by channel
    GET /reports/journeys/{key}/experiments/{experiment}   the sample-ratio check first,
                                                           arms, lift, power, the timeline

The numbers are `service`'s, the JSON API's and the CLI's. Someone typing a URL cannot
send a bearer token, so these pages also take HTTP Basic with a server API key (scope
`reports:read`) as the password and any user name: without a credential, or with a
wrong one, they answer 401 with a Basic challenge and the browser asks for it. Charts
are inline SVG (`charts` computes them): the pages run no script and load nothing else,
and their Content-Security-Policy allows nothing but their own stylesheet. Refusals
(401, 403, 404) are a page for a browser (one that accepts text/html), else the API's
JSON `error`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Path, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security.http import HTTPBase
from markupsafe import Markup
from starlette.requests import HTTPConnection

from orchestrator.access.credentials import Scope, server_key
from orchestrator.api.auth import SERVER_KEY, BadCredentials, Caller, identify
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute, Handler
from orchestrator.reports import charts, design, formats, service
from orchestrator.reports.power import POWER
from orchestrator.reports.views import KINDS, experiment_view
from orchestrator.services import Services

SCOPE: Scope = "reports:read"
CHALLENGE = {"WWW-Authenticate": 'Basic realm="reports", charset="UTF-8"'}
NO_CREDENTIALS = (
    "this needs a server API key with scope reports:read: as the HTTP Basic password "
    "(any user name), or as `Authorization: Bearer <key>`"
)


class _Declared(HTTPBase):
    """Declares HTTP Basic for the OpenAPI document; `reader` reads the header itself."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


REPORT_KEY = _Declared(
    scheme="basic",
    scheme_name="reportKey",
    description="For the report pages in a browser: a server API key with scope "
    "`reports:read` as the HTTP Basic password (any user name).",
)


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def reader(request: Request, services: Services) -> Caller:
    """The caller, if they may read reports: a server API key with `reports:read`, sent
    as the Basic password or as the bearer. Raises Refused (401 or 403) otherwise."""
    scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
    password = _basic_password(value.strip()) if scheme.lower() == "basic" else ""
    if password:
        key = server_key(services.config.api_keys, password)
        if key is None:
            raise Refused(401, "unknown API key")
        client = request.client.host if request.client else None
        caller = Caller("server_key", key.name, client, key=key)
    else:
        # A bearer key or user token; Basic without a password is a write key
        try:
            found = identify(request, services)
        except BadCredentials as exc:
            hint = "; the password must be a server API key" if scheme.lower() == "basic" else ""
            raise Refused(401, f"{exc}{hint}") from None
        if found is None:
            raise Refused(401, NO_CREDENTIALS)
        caller = found
    if caller.key is None:
        kind = "a write key" if caller.kind == "write_key" else "a user token"
        raise Refused(403, f"reports need a server API key with scope {SCOPE}, not {kind}")
    if not caller.key.allows(SCOPE):
        raise Refused(403, f"API key {caller.name!r} lacks scope {SCOPE}")
    return caller


def _basic_password(value: str) -> str:
    try:
        _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        raise Refused(401, "malformed Authorization header") from None
    return password


async def _read_reports(
    request: Request,
    services: ServicesDep,
    _basic: Any = Security(REPORT_KEY, scopes=[SCOPE]),
    _bearer: Any = Security(SERVER_KEY, scopes=[SCOPE]),
) -> Caller:
    try:
        return reader(request, services)
    except Refused as exc:  # `PageRoute` answered already; this is in case it did not
        challenge = CHALLENGE if exc.status == 401 else None
        raise HTTPException(exc.status, exc.message, challenge) from None


Reader = Annotated[Caller, Depends(_read_reports)]


class PageRoute(GuardedRoute):
    """`GuardedRoute` with the reports' own credential check first: HTTP Basic here
    carries a server API key as its password, not a write key as its user name."""

    credentials_first = False

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            try:
                reader(request, request.app.state.services)
            except Refused as exc:
                return refusal(request, exc.status, exc.message)
            return await handler(request)

        return checked


_ERROR = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {"error": {"type": "string"}},
            "required": ["error"],
        }
    },
    "text/html": {"schema": {"type": "string"}},
}
router = APIRouter(
    tags=["report pages"],
    route_class=PageRoute,
    default_response_class=HTMLResponse,
    responses={
        400: {"description": "A parameter is invalid; `field` names it"},
        401: {
            "description": "No credential, or an unknown one (with a Basic challenge, so a "
            "browser asks); HTML for browsers, else JSON",
            "content": _ERROR,
        },
        403: {"description": "Not a server API key with scope `reports:read`", "content": _ERROR},
        404: {"description": "No such journey or experiment", "content": _ERROR},
    },
)


@router.get(
    "/reports",
    summary="To the workspace's report page",
    responses={308: {"description": "Redirects to `/reports/`"}},
)
async def index_without_slash(_caller: Reader) -> Response:
    """`/reports/`, for an address typed without its slash."""
    return RedirectResponse("/reports/", status_code=308)


@router.get("/reports/", summary="Report page: the workspace")
async def index(request: Request, services: ServicesDep, _caller: Reader) -> Response:
    """The global control group's result, as incremental conversions and revenue, and
    every journey, linking to its page."""
    async with services.engine.connect() as conn:
        report = await service.workspace_report(
            conn, global_control=services.config.global_control, now=services.clock()
        )
    control = experiment_view(report.global_control) if report.global_control else None
    return page("index.html", report=report, control=control)


@router.get("/reports/journeys/{key}", summary="Report page: a journey")
async def journey(
    request: Request, services: ServicesDep, _caller: Reader, key: str = Path(max_length=200)
) -> Response:
    """The funnel in journey order, the holdout, each experiment and attribution."""
    async with services.engine.connect() as conn:
        try:
            report = await service.journey_report(conn, journey=key, now=services.clock())
        except design.UnknownReport as exc:
            return refusal(request, 404, str(exc))
    widest = max((s.users for s in report.funnel), default=0)
    return page(
        "journey.html",
        report=report,
        funnel=[(s, s.users / widest if widest else 0.0) for s in report.funnel],
        holdout=experiment_view(report.holdout) if report.holdout else None,
        experiments=[experiment_view(e) for e in report.experiments],
    )


@router.get(
    "/reports/journeys/{key}/experiments/{experiment}", summary="Report page: an experiment"
)
async def experiment(
    request: Request,
    services: ServicesDep,
    _caller: Reader,
    key: str = Path(max_length=200),
    experiment: str = Path(max_length=200),
) -> Response:
    """The sample-ratio check, each arm with its interval, lift with fixed and always-valid
    intervals, power, and the cumulative rates over time; a bandit's estimates instead."""
    async with services.engine.connect() as conn:
        try:
            result = await service.experiment(
                conn, journey=key, key=experiment, now=services.clock(),
                global_control=services.config.global_control,
            )  # fmt: skip
        except design.UnknownReport as exc:
            return refusal(request, 404, str(exc))
    return page("experiment.html", result=result, view=experiment_view(result))


# ---- rendering --------------------------------------------------------------------------


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("orchestrator.reports", "templates"),
        autoescape=True,  # journey names and arms are whatever someone typed
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    f = formats
    env.filters.update(rate=f.rate, points=f.points, relative=f.relative, p_value=f.p_value,
                       amount=f.amount, signed_amount=f.signed_amount,
                       path=lambda v: quote(str(v), safe=""))  # fmt: skip
    env.filters["format_as"] = lambda value, name: env.filters[name](value)
    env.tests["interval"] = f.has_interval
    env.globals.update(
        MISSING=f.MISSING, POWER=POWER, BAR_WIDTH=charts.BAR_WIDTH, zip=zip, KINDS=KINDS
    )
    return env


@functools.cache
def _stylesheet() -> tuple[str, str]:
    """The pages' CSS and its hash for the Content-Security-Policy."""
    css = (resources.files("orchestrator.reports") / "static" / "report.css").read_text("utf-8")
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return css, f"'sha256-{digest}'"


def _headers() -> dict[str, str]:
    _, style = _stylesheet()
    return {
        "Content-Security-Policy": f"default-src 'none'; style-src {style}; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        "Cache-Control": "no-store",  # business numbers, behind a credential
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


def page(template: str, *, status: int = 200, **context: Any) -> Response:
    css, _ = _stylesheet()
    html = _environment().get_template(template).render(css=Markup(css), **context)
    return HTMLResponse(html, status_code=status, headers=_headers())


def refusal(request: Request, status: int, message: str) -> Response:
    """An error page for a browser, else the API's JSON; 401 with the Basic challenge."""
    challenge = CHALLENGE if status == 401 else {}
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": message}, status_code=status, headers=challenge)
    response = page("refused.html", status=status, status_code=status, message=message)
    response.headers.update(challenge)
    return response
