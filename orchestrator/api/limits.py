"""Rate limits on what anyone can call: a write key is public, and a user token is in
the hands of whoever uses the app.

    per source       every request with the key (`rate_limit` on the source)
    per client       a public key's requests from one address (`client_rate_limit`),
                     so one sender cannot spend the budget every visitor shares
    per user token   one user's inbox and placement calls (`user_tokens.rate_limit`)

Token buckets in each API process; beyond one, the answer is 429 with `Retry-After`
(Segment's libraries wait and send again). Buckets for clients and users are kept for
the most recently seen `MAX_TRACKED` of each.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from channels.delivery import RateLimit
from orchestrator.access.credentials import RateLimitConfig
from orchestrator.workspace import WorkspaceConfig, WriteKey

MAX_TRACKED = 100_000


class _Buckets:
    """Token buckets by key, the least recently used forgotten past `MAX_TRACKED`."""

    def __init__(self, limit: RateLimitConfig) -> None:
        self.limit = limit
        self._buckets: OrderedDict[str, RateLimit] = OrderedDict()

    def wait(self, key: str) -> float:
        bucket = self._buckets.pop(key, None) or RateLimit(self.limit.per_second,
                                                             self.limit.burst)  # fmt: skip
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return bucket.take()


class Limits:
    def __init__(self, config: WorkspaceConfig) -> None:
        self._sources = {s.name: _Buckets(s.rate_limit) for s in config.sources}
        self._clients = {s.name: _Buckets(s.client_rate_limit) for s in config.sources
                         if not s.server_side}  # fmt: skip
        tokens = config.user_tokens
        self._users = _Buckets(tokens.rate_limit) if tokens is not None else None

    def source(self, source: WriteKey, client: str | None) -> int | None:
        """None when a request with this key (from this client) may go ahead, else whole
        seconds to wait."""
        clients = self._clients.get(source.name)
        if clients is not None and client is not None and (wait := clients.wait(client)):
            return _seconds(wait)
        return _seconds(self._sources[source.name].wait(source.name))

    def user(self, user_id: str) -> int | None:
        """The same, for a call with a user token for `user_id`."""
        return _seconds(self._users.wait(user_id)) if self._users is not None else None


def _seconds(wait: float) -> int | None:
    return None if wait == 0 else max(1, math.ceil(wait))
