"""Which input partition each stream lives on, and which streams leave when partitions move.

The rebalance callbacks run on the Kafka client's I/O thread; they only queue events here
(`assigned`, `revoked`, `lost`). The poll loop calls `take_moves()` after each poll and drops
the returned streams from the state store, so the store is only ever touched by one thread
and never while a batch is half applied.

Lost partitions' streams leave at once: another member may already be applying their
readings. Revoked partitions' streams leave at the next assignment unless they come back in
it, as every partition does in an eager rebalance that leaves this member's share unchanged.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from service.core.readings import Reading

__all__ = ["Moves", "PartitionStreams"]


@dataclass
class Moves:
    """What the queued rebalance events amount to."""

    partitions: set[int] = field(default_factory=set)  # no longer ours
    stream_ids: list[str] = field(default_factory=list)  # their streams, to drop
    assigned: bool = False  # an assignment completed


class PartitionStreams:
    """Each stream's input partition, and the rebalance events not yet applied."""

    def __init__(self) -> None:
        self._partition_of: dict[str, int] = {}
        self._revoked: set[int] = set()
        self._events: queue.SimpleQueue[tuple[str, frozenset[int]]] = queue.SimpleQueue()

    def __len__(self) -> int:
        return len(self._partition_of)

    @property
    def partition_of(self) -> Mapping[str, int]:
        """Each noted stream's input partition (a live, read-only view for the decoder's
        partition check)."""
        return MappingProxyType(self._partition_of)

    # -- poll-loop side ------------------------------------------------------------------

    def note(self, readings: Sequence[Reading]) -> None:
        """Remember the partition of each reading's stream."""
        partition_of = self._partition_of
        for reading in readings:
            partition_of[reading.stream_id] = reading.partition

    def note_columns(self, stream_ids: Iterable[str], partitions: Iterable[int]) -> None:
        """Remember the partition of each stream (a `ReadingBatch`'s columns)."""
        self._partition_of.update(zip(stream_ids, partitions, strict=True))

    def note_restored(self, stream_ids: Iterable[str], partition: int) -> None:
        """Streams restored from the changelog of `partition`."""
        partition_of = self._partition_of
        for sid in stream_ids:
            partition_of[sid] = partition

    def partitions_of(self, stream_ids: Iterable[str]) -> list[int]:
        """The input partition of each stream, -1 for a stream never noted."""
        get = self._partition_of.get
        return [get(sid, -1) for sid in stream_ids]

    def forget(self, stream_ids: Iterable[str]) -> None:
        """Streams the engine dropped by itself (TTL, capacity)."""
        for sid in stream_ids:
            self._partition_of.pop(sid, None)

    def take_moves(self) -> Moves:
        """Apply the queued events; return the partitions and streams that left."""
        moves = Moves()
        gone: set[int] = set()
        while not self._events.empty():
            event, partitions = self._events.get_nowait()
            if event == "lost":
                gone |= partitions
            elif event == "revoked":
                self._revoked |= partitions
            else:
                moves.assigned = True
                gone |= self._revoked - partitions
                self._revoked = set()
        if gone:
            moves.partitions = gone
            moves.stream_ids = [s for s, p in self._partition_of.items() if p in gone]
            self.forget(moves.stream_ids)
        return moves

    # -- rebalance-callback side (any thread) --------------------------------------------

    def assigned(self, owned: Iterable[int]) -> None:
        """The member now owns exactly `owned`."""
        self._events.put(("assigned", frozenset(owned)))

    def revoked(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their streams leave at the next assignment unless kept."""
        self._events.put(("revoked", frozenset(partitions)))

    def lost(self, partitions: Iterable[int]) -> None:
        """Partitions lost: their streams leave at once."""
        self._events.put(("lost", frozenset(partitions)))
