"""Who is calling, and may they? Every route but the public ones depends on this.

    write key     HTTP Basic, the key as user name: ingestion only (see `tracking`)
    server key    `Authorization: Bearer <secret>`: the scope each route names
    user token    `Authorization: Bearer <JWT>`: that one user's inbox and placements

    401  no credential, or one we do not recognise (unknown key, bad signature, expired)
    403  a valid credential of the wrong kind, a key without the scope, or a user token
         for another user

The security schemes are declared to FastAPI, so the OpenAPI document says what each
operation needs (a server key's required scope is listed in its requirement).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import HTTPException, Request, Security
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.http import HTTPBase
from starlette.requests import HTTPConnection

from orchestrator.access import audit, tokens
from orchestrator.access.credentials import ApiKey, Scope, server_key
from orchestrator.api.deps import ServicesDep
from orchestrator.services import Services
from orchestrator.workspace import WriteKey


class _Scheme(HTTPBase):
    """A security scheme declared for the OpenAPI document; `identify` reads the header
    itself, so one request can be checked against every kind of credential."""

    def __init__(self, name: str, scheme: str, description: str, *, format: str = "") -> None:
        super().__init__(scheme=scheme, scheme_name=name, description=description)
        if format:
            self.model = HTTPBearerModel(bearerFormat=format, description=description)

    async def __call__(self, request: HTTPConnection) -> None:
        return None


WRITE_KEY = _Scheme(
    "writeKey",
    "basic",
    "A source's write key as the user name, no password. Public by design: it can only "
    "send events.",
)
SERVER_KEY = _Scheme(
    "serverKey",
    "bearer",
    "A server API key from orchestrator.yaml `api_keys`. Each operation lists the scope it "
    "needs; `admin` has them all. Never ship one to a browser or an app.",
)
USER_TOKEN = _Scheme(
    "userToken",
    "bearer",
    "A JWT (HS256, `sub` = the user id, `exp` required) minted by your backend with "
    "`user_tokens.secret`: it reads and acts on that user's own inbox and placements.",
    format="JWT",
)

Kind = Literal["write_key", "server_key", "user_token"]
_KIND_NAMES = {"write_key": "a write key", "server_key": "a server API key",
               "user_token": "a user token"}  # fmt: skip


@dataclass(frozen=True)
class Caller:
    """A recognised credential."""

    kind: Kind
    name: str  # the source, the API key's name, or the user a token names
    client: str | None = None
    source: WriteKey | None = None
    key: ApiKey | None = None

    @property
    def actor(self) -> audit.Actor:
        return audit.Actor(self.kind, self.name, self.client)


NO_CREDENTIALS = "this needs credentials: `Authorization: Bearer <API key or user token>`"


class BadCredentials(Exception):
    """The Authorization header is there but names nothing we accept."""


def challenge(kind: str) -> dict[str, str]:
    realm = 'Basic realm="write key"' if kind == "basic" else 'Bearer realm="api"'
    return {"WWW-Authenticate": realm}


def unauthorized(message: str, *, scheme: str = "bearer") -> HTTPException:
    return HTTPException(401, message, headers=challenge(scheme))


def forbidden(message: str) -> HTTPException:
    return HTTPException(403, message)


def basic_user(value: str) -> str:
    """The user name of HTTP Basic credentials (where Segment's clients put the key)."""
    try:
        user, _, _ = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, ValueError):  # not base64 (or not ASCII), not UTF-8
        raise BadCredentials("malformed Authorization header") from None
    return user


def identify(request: Request, services: Services) -> Caller | None:
    """The caller the Authorization header names; None without one.

    Raises BadCredentials when there is a header but it names nothing valid."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    client = request.client.host if request.client else None
    config = services.config
    if scheme.lower() == "basic":
        source = config.source_for(basic_user(value)) if value else None
        if source is None:
            raise BadCredentials("unknown write key")
        return Caller("write_key", source.name, client, source=source)
    if scheme.lower() != "bearer" or not value:
        raise BadCredentials("use `Authorization: Bearer <API key or user token>`")
    if key := server_key(config.api_keys, value):
        return Caller("server_key", key.name, client, key=key)
    if config.user_tokens is not None and value.count(".") == 2:
        try:
            user_id = tokens.verify(config.user_tokens, value, now=services.clock())
        except tokens.InvalidToken as exc:
            raise BadCredentials(str(exc)) from None
        return Caller("user_token", user_id, client)
    raise BadCredentials("unknown API key")


def _known(request: Request, services: Services) -> Caller:
    try:
        caller = identify(request, services)
    except BadCredentials as exc:
        raise unauthorized(str(exc)) from None
    if caller is None:
        raise unauthorized(NO_CREDENTIALS)
    return caller


def _scoped(caller: Caller, scope: Scope) -> Caller:
    if caller.key is None:
        raise forbidden(
            f"this needs a server API key with scope {scope}; "
            f"{_KIND_NAMES[caller.kind]} cannot call it"
        )
    if not caller.key.allows(scope):
        raise forbidden(f"API key {caller.name!r} lacks scope {scope}")
    return caller


async def record_use(services: Services, caller: Caller, action: str, subject: str | None) -> None:
    """Log one use of a credential on personal data in the audit log. Handlers call it
    once the data is read or changed, so a refused request leaves no entry."""
    async with services.engine.begin() as conn:
        await audit.record(conn, caller.actor, action, subject=subject, now=services.clock())


Dependency = Callable[..., Coroutine[Any, Any, Caller]]


def server_key_with(scope: Scope) -> Dependency:
    """A dependency: a server API key with `scope`."""

    async def check(
        request: Request,
        services: ServicesDep,
        # Defaults, not annotations: these close over `scope` (annotations are strings).
        _: Any = Security(SERVER_KEY, scopes=[scope]),
    ) -> Caller:
        return _scoped(_known(request, services), scope)

    return check


def own_user_or_key(scope: Scope) -> Dependency:
    """A dependency for one user's own data (`user_id` in the path): a user token for
    that user, or a server API key with `scope`."""

    async def check(
        request: Request,
        services: ServicesDep,
        _token: Any = Security(USER_TOKEN),
        _key: Any = Security(SERVER_KEY, scopes=[scope]),
    ) -> Caller:
        caller = _known(request, services)
        if caller.kind == "user_token":
            if caller.name != request.path_params.get("user_id"):
                raise forbidden("this user token is for another user")
            if wait := request.app.state.limits.user(caller.name):
                raise HTTPException(429, "too many calls for this user: wait and try again",
                                    headers={"Retry-After": str(wait)})  # fmt: skip
        else:
            _scoped(caller, scope)
        return caller

    return check
