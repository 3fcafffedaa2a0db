"""Which input offsets this member has processed and committed, for every client alike.

The loop notes the next offset to process of every partition it polled records from
(`Offsets.processed`); the checkpoint commits those positions, or a snapshot of them taken
earlier (`Offsets.positions`), and only after their forecasts and states are durable. The
rules live here, once, above the Kafka clients, whose `Source.commit` only sends what it is
given:

- only partitions still held are committed: a revoked or lost partition is forgotten at
  once (`forget`), and its offsets are the revoke's or the next owner's to commit;
- never behind what this member committed already (a revoke may have committed newer ones);
- unchanged offsets are committed again, and with nothing to commit the source still makes
  a round trip to the group coordinator: a checkpoint is how the service learns that the
  broker is there;
- a partition with nothing processed since it was assigned keeps the offset committed
  before (if any): there is nothing new to commit for it.

The rebalance callbacks run while the loop waits inside the source's `poll` or `close`, so
reads take snapshots of the dictionaries rather than iterate them live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

__all__ = ["Commit", "Offsets"]

log = logging.getLogger(__name__)

#: `Source.commit`: commit these offsets within this many seconds (none: a round trip).
Commit = Callable[[Mapping[int, int], float], None]


class Offsets:
    """Processed positions and last commits of the input partitions this member holds."""

    def __init__(self, topic: str, commit: Commit) -> None:
        self.topic = topic
        self._commit = commit
        self._next: dict[int, int] = {}  # partition -> next offset to process
        self._committed: dict[int, int] = {}  # partition -> last offset committed

    def processed(self, next_offsets: Mapping[int, int]) -> None:
        """Records up to these next offsets were handed to the engine."""
        self._next.update(next_offsets)

    def positions(self) -> dict[int, int]:
        """The next offset to process, per partition with records processed (a snapshot)."""
        return dict(self._next)

    def pending_commit(self) -> dict[int, int]:
        """Partitions whose processed position is past their last commit."""
        committed = dict(self._committed)
        return {p: o for p, o in dict(self._next).items() if committed.get(p) != o}

    def commit(self, timeout: float, given: Mapping[int, int] | None = None) -> dict[int, int]:
        """Commit the processed positions, or `given` (an earlier `positions()`), of the
        partitions still held; return the partitions whose offset moved.

        Raises what `Source.commit` raises (`GroupChangingError`, `TransportError`).
        """
        current = dict(self._next)
        committed = dict(self._committed)
        wanted = current if given is None else {p: o for p, o in given.items() if p in current}
        offsets = {p: max(o, committed.get(p, o)) for p, o in wanted.items()}
        self._commit(offsets, timeout)
        self._committed.update(offsets)
        moved = {p: o for p, o in offsets.items() if committed.get(p) != o}
        if moved:
            log.debug("offsets committed topic=%s offsets=%s", self.topic, moved)
        return moved

    def revoked(self, partitions: Iterable[int]) -> dict[int, int]:
        """The processed positions of `partitions`, for the client to commit as they go."""
        parts = set(partitions)
        return {p: o for p, o in dict(self._next).items() if p in parts}

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions no longer held (revoked or lost): their offsets are not ours to commit."""
        for p in partitions:
            self._next.pop(p, None)
            self._committed.pop(p, None)
