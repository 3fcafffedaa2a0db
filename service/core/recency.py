"""Which streams a store lets go: the least recently used under a cap, the idle ones after a TTL.

LRU: every round marks its streams with ticks above all earlier rounds' (`round_tick`, one
for all of them, or `round_ticks`, one each, so that reading them back tells whether the
round named a slot twice); streams marked before the round's first tick are not in use in
it and may be evicted. The ticks are kept in the store's bookkeeping rows
(`StreamBook.last_used`), beside what a round reads anyway; this class keeps the clock and
picks the victims.

TTL: the wall-clock time each slot was last seen, and a bound below which nothing can
have expired yet, so that `due` is cheap.
"""

from __future__ import annotations

import numpy as np

from service.core.slots import grown
from service.errors import StateError

__all__ = ["Recency"]


class Recency:
    """The LRU clock, last-seen times and expiry bound of a store, and its evicted ids.

    `max_streams` is the store's cap (it sets how many streams an eviction takes at once),
    `ttl_seconds` how long a stream may go unseen (None: forever).
    """

    def __init__(self, max_streams: int | None, ttl_seconds: float | None) -> None:
        self.max_streams = max_streams
        self.ttl_seconds = ttl_seconds
        # every round marks its streams with ticks above all earlier rounds'; streams
        # marked before `round_first` are not in use in the current round
        self.tick = 0
        self.round_first = 1
        self.last_seen = np.empty(0, np.float64)
        # no active stream has been seen before next_expiry - ttl_seconds
        self.next_expiry = float("inf")
        self.evicted: list[str] = []  # ids evicted since the store's last `drain_evicted`

    def grow(self, new: int) -> None:
        """Grow the slot axis to `new` slots."""
        self.last_seen = grown(self.last_seen, new)

    # -- LRU ----------------------------------------------------------------------------

    def round_tick(self) -> int:
        """Start a round whose streams all share one new tick; returns it."""
        self.tick += 1
        self.round_first = self.tick
        return self.tick

    def round_ticks(self, n: int) -> np.ndarray:
        """Start a round of `n` streams with a new tick each; returns them, int64 ascending."""
        first = self.tick + 1
        self.tick += n
        self.round_first = first
        return np.arange(first, first + n, dtype=np.int64)

    def lru_victims(self, active: np.ndarray, last_used: np.ndarray, needed: int) -> np.ndarray:
        """At least `needed` of the `active` slots, the least recently used by their
        `last_used` ticks, none in use in the current round.

        Finding them scans every slot, so at least 1/128 of the cap goes at once: with a
        million streams a scan costs ~15 ms and is then paid once per ~8,000 new streams.
        Raises `StateError` when fewer than `needed` are out of use.
        """
        used = last_used[active]
        evictable: np.ndarray = active[used < self.round_first]
        if len(evictable) < needed:
            raise StateError("cannot evict a stream that is in use in this round")
        used = last_used[evictable]
        count = min(len(evictable), max(needed, (self.max_streams or 0) // 128))
        if count < len(evictable):
            evictable = evictable[np.argpartition(used, count - 1)[:count]]
        return evictable

    # -- TTL ----------------------------------------------------------------------------

    def seen(self, slots: np.ndarray, now: float) -> None:
        """Mark `slots` as seen at `now` (wall-clock seconds)."""
        self.last_seen[slots] = now
        if self.ttl_seconds is not None:
            self.next_expiry = min(self.next_expiry, now + self.ttl_seconds)

    def due(self, now: float) -> bool:
        """Whether some stream may have expired by `now`; False without a TTL."""
        return not (self.ttl_seconds is None or now < self.next_expiry)

    def expired(self, active: np.ndarray, now: float) -> np.ndarray:
        """Those of the `active` slots not seen for `ttl_seconds` before `now` (the store
        releases them); the expiry bound moves to the oldest of the others."""
        ttl = self.ttl_seconds
        if ttl is None:
            return active[:0]
        seen = self.last_seen[active]
        old = seen < now - ttl
        remaining = seen[~old]
        self.next_expiry = float(remaining.min()) + ttl if len(remaining) else float("inf")
        victims: np.ndarray = active[old]
        return victims
