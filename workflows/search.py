"""Search attributes that make every user's journey findable in the Temporal UI.

They must be registered on the server before any workflow sets them. Values are
identifiers only: search attributes are stored unencrypted.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

JOURNEY_KEY = SearchAttributeKey.for_keyword("JourneyKey")
JOURNEY_VERSION = SearchAttributeKey.for_int("JourneyVersion")
USER_ID = SearchAttributeKey.for_keyword("UserId")
JOURNEY_STEP = SearchAttributeKey.for_keyword("JourneyStep")
JOURNEY_STATUS = SearchAttributeKey.for_keyword("JourneyStatus")
JOURNEY_INSTANCE = SearchAttributeKey.for_keyword("JourneyInstance")

ALL = (JOURNEY_KEY, JOURNEY_VERSION, USER_ID, JOURNEY_STEP, JOURNEY_STATUS, JOURNEY_INSTANCE)


def workflow_id(journey_key: str, user_id: str, instance: str = "") -> str:
    """One workflow per (journey, user), or per (journey, user, key) for a keyed journey.

    The key's own `%` and `:` are escaped, so the last `:` always starts it: user `a:b`
    with key `c` and user `a` with key `b:c` are two workflows."""
    base = f"journey:{journey_key}:{user_id}"
    if not instance:
        return base
    return f"{base}:{instance.replace('%', '%25').replace(':', '%3A')}"
