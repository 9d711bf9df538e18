"""Running journeys follow a merge: each workflow that moved is told its new user.

The merge is committed first (with the workflows to tell, `identity_merges`), then the
workflows are signalled; a process that dies in between leaves the merge untold, and
the API's sweeper tells it later. Telling twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.users.identity import mark_told, merge_users, record_merge, resolve, untold
from rules.policy import Policy
from workflows.messages import AdoptInput, IdentifiedSignal


async def tell_merges(
    engine: AsyncEngine,
    client: Client,
    *,
    now: datetime,
    ids: Sequence[int] | None = None,
    before: datetime | None = None,
) -> int:
    """Signal the workflows of untold merges (these, or the oldest made `before`); how
    many merges were told."""
    async with engine.connect() as conn:
        merges = await untold(conn, ids=ids, before=before)
    told = 0
    for merge in merges:
        signal = IdentifiedSignal(user_id=merge.target, merged_from=merge.source)
        for workflow in merge.workflows:
            handle = client.get_workflow_handle(workflow["workflow_id"])
            try:
                await handle.signal(
                    "identified", signal.model_copy(update={"ends": workflow["ends"]})
                )
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:  # not finished in between
                    raise
        async with engine.begin() as conn:
            await mark_told(conn, merge.id, now)
        told += 1
    return told


class IdentityActivities:
    """The journey worker's side: a journey told of a merge moves what a step of it
    wrote under the old id while the merge ran (see `JourneyInterpreter._follow_identity`)."""

    def __init__(self, *, engine: AsyncEngine, client: Client, policy: Policy) -> None:
        self.engine, self.client, self.policy = engine, client, policy

    @activity.defn(name="adopt_user")
    async def adopt_user(self, adopt: AdoptInput) -> str:
        """Returns the user the journey runs for now: the merge's, or whom that user was
        merged into since (merges told late or out of order end up the same)."""
        now = datetime.now(UTC)
        merge_id = None
        async with self.engine.begin() as conn:
            found = await resolve(conn, [adopt.source, adopt.target])
            user = found.get(adopt.target, adopt.target)
            # Unless the old id now counts for someone else (a device changed hands).
            if found.get(adopt.source) == user:
                merged = await merge_users(
                    conn, source=adopt.source, target=user, policy=self.policy, now=now,
                    relink=False,
                )  # fmt: skip
                # A journey entered under the old id while the merge ran: tell it too.
                merge_id = await record_merge(conn, merged, now) if merged.workflows else None
        if merge_id is not None:
            await tell_merges(self.engine, self.client, now=now, ids=[merge_id])
        return user
