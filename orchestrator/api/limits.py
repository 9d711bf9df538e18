"""Per-source rate limits on ingestion: a write key is public, so anyone can flood with it.

Each source key has a token bucket in each API process (`rate_limit` on the source in
orchestrator.yaml); beyond it the answer is 429 with `Retry-After`, which Segment's
libraries honour by waiting and sending again.
"""

from __future__ import annotations

import math

from channels.delivery import RateLimit
from orchestrator.workspace import WriteKey


class SourceLimits:
    def __init__(self, sources: list[WriteKey]) -> None:
        self._buckets = {
            s.name: RateLimit(s.rate_limit.per_second, s.rate_limit.burst) for s in sources
        }

    def retry_after(self, source: WriteKey) -> int | None:
        """None when the request may go ahead, else whole seconds to wait."""
        wait = self._buckets[source.name].take()
        return None if wait == 0 else max(1, math.ceil(wait))
