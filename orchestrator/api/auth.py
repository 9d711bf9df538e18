"""Write keys: how sources (and channel systems calling arbitration) authenticate."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from orchestrator.api.deps import ServicesDep
from orchestrator.workspace import WriteKey


class BadCredentials(Exception):
    """The Authorization header is there but cannot be read."""


def header_write_key(request: Request) -> str | None:
    """The write key from HTTP Basic auth (the key is the user name), if given."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, _, _ = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise BadCredentials("malformed Authorization header") from None
    return user


def require_write_key(request: Request, services: ServicesDep) -> WriteKey:
    """A dependency: 401 unless the request carries a known write key."""
    challenge = {"WWW-Authenticate": 'Basic realm="write key"'}
    try:
        key = header_write_key(request)
    except BadCredentials as exc:
        raise HTTPException(401, str(exc), headers=challenge) from None
    source = services.config.source_for(key) if key else None
    if source is None:
        raise HTTPException(401, "unknown or missing write key", headers=challenge)
    return source


SourceDep = Annotated[WriteKey, Depends(require_write_key)]
