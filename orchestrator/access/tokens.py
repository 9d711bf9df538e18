"""User tokens: a JWT (HS256) that names one user, minted by the customer's backend.

An app or web page holding a token for user A may read and act on A's own inbox and
placements, and nothing else. Claims: `sub` is the user id and `exp` the expiry (both
required); a token that lives longer than the workspace's `max_ttl` is refused, so a
leaked token cannot be good for ever.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import jwt

from orchestrator.access.credentials import UserTokens
from rules.durations import format_duration

ALGORITHM = "HS256"
# Clocks of the minting backend and ours may differ a little.
LEEWAY = timedelta(seconds=30)


class InvalidToken(Exception):
    """The token is malformed, wrongly signed, expired or lives too long."""


def mint(config: UserTokens, user_id: str, *, ttl: timedelta, now: datetime) -> str:
    """A token for `user_id`, valid for `ttl` (what the customer's backend does)."""
    if not user_id:
        raise ValueError("a user token needs a user id")
    if ttl <= timedelta(0) or ttl > config.max_ttl:
        raise ValueError(
            f"the lifetime must be positive and at most {format_duration(config.max_ttl)}"
        )
    claims = {"sub": user_id, "iat": int(now.timestamp()), "exp": int((now + ttl).timestamp())}
    return jwt.encode(claims, config.secret, algorithm=ALGORITHM)


def verify(config: UserTokens, token: str, *, now: datetime) -> str:
    """The user id the token names; raise InvalidToken otherwise."""
    claims = None
    for secret in config.secrets():
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                # Expiry is checked below against our clock, with the lifetime cap.
                options={"require": ["sub", "exp"], "verify_exp": False},
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid user token: {exc}") from None
    if claims is None:
        raise InvalidToken("invalid user token: the signature does not match")
    user_id, exp = claims["sub"], claims["exp"]
    if not isinstance(user_id, str) or not user_id or "\x00" in user_id:
        raise InvalidToken("invalid user token: `sub` must name a user")
    finite = isinstance(exp, int) or (isinstance(exp, float) and math.isfinite(exp))
    if isinstance(exp, bool) or not finite:
        raise InvalidToken("invalid user token: `exp` must be a number")
    # Seconds left, kept in range first: a float or timedelta overflows on a silly `exp`.
    left = min(max(exp, 0), 2**40) - now.timestamp()
    if left < -LEEWAY.total_seconds():
        raise InvalidToken("the user token has expired")
    if left > (config.max_ttl + LEEWAY).total_seconds():
        longest = format_duration(config.max_ttl)
        raise InvalidToken(f"the user token lives longer than the allowed {longest}")
    return user_id
