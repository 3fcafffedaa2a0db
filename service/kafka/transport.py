"""What the service needs of a Kafka client, whichever library implements it.

Two implementations sit behind these protocols, chosen by ``kafka.client``: kafka-python
(`service.kafka.source`, `.sink`, `.changelog`) and confluent-kafka
(`service.kafka.confluent`). Both raise only Sensorcast errors: `TransportError` (and
`GroupChangingError` for a commit refused by a rebalance) from the source, `SinkError` from
the sink, `ChangelogError` from the changelog writer and reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.delivery import DeadLetterEvent
from service.kafka.codec import RawRecord

__all__ = [
    "PartitionRestore",
    "RebalanceHandler",
    "Sink",
    "Source",
    "StateReader",
    "StateWriter",
]


class RebalanceHandler(Protocol):
    """What the service does when the group hands partitions out or takes them back.

    Both clients run these while the poll loop waits in `Source.poll` or `Source.close`
    (kafka-python on its I/O thread, confluent-kafka on the calling thread); they must not
    call the source's blocking methods.
    """

    def partitions_assigned(self, partitions: set[int]) -> None:
        """Partitions were assigned; their records follow in later polls."""

    def flush_before_revoke(self, partitions: set[int]) -> bool:
        """Checkpoint step 1 for partitions about to be revoked: flush the producer.

        True when everything sent is acknowledged, so their offsets may be committed.
        """

    def partitions_revoked(self, partitions: set[int], *, lost: bool) -> None:
        """The partitions are gone (after their offsets were committed, unless `lost`)."""


class Source(Protocol):
    """The input topic, consumed in a consumer group; offsets committed only by `commit`."""

    topic: str

    def poll(self) -> Sequence[RawRecord]:
        """One micro-batch: up to ``kafka.max_batch`` records, waiting ``kafka.max_wait_ms``."""
        ...

    def assignment(self) -> set[int]: ...

    def pause(self, partitions: Iterable[int]) -> None:
        """Stop fetching these partitions until `resume` (their position is kept)."""

    def resume(self, partitions: Iterable[int]) -> None: ...

    def paused(self) -> set[int]: ...

    def pending_commit(self) -> dict[int, int]:
        """Partitions whose processed position is past their last commit."""
        ...

    def positions(self) -> dict[int, int]:
        """The next offset to process, per partition with records processed (a snapshot)."""
        ...

    def commit(
        self, timeout_ms: int | None = None, offsets: dict[int, int] | None = None
    ) -> dict[int, int]:
        """Commit the processed positions, or `offsets` (an earlier `positions()`, for the
        partitions still assigned); return the partitions whose offset moved."""
        ...

    def lag(self) -> dict[int, int]:
        """High watermark minus the next offset, per assigned partition where known."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Leave the group (running the revoke callback) and close."""


class Sink(Protocol):
    """Forecasts and dead letters; `flush` returns once everything sent is acknowledged."""

    def send_forecast(self, stream_id: str, value: bytes, partition: int | None = None) -> None: ...

    def send_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Send a dead letter. Never raises for the record itself: one the producer or the
        broker refuses for good is sent again smaller, then given up, each step reported by
        `take_dead_letter_events`."""

    def take_dead_letter_events(self) -> list[DeadLetterEvent]:
        """Dead letters refused for good since the last call (sent smaller, or lost)."""
        ...

    def flush(self, timeout: float) -> None:
        """Raises `SinkError` when not everything is acknowledged within `timeout` seconds."""

    def close(self, timeout: float = 5.0) -> None: ...


class StateWriter(Protocol):
    """Writes state records and tombstones to explicit changelog partitions."""

    topic: str

    def send(
        self, partitions: Sequence[int], keys: Sequence[str], values: Sequence[bytes | None]
    ) -> int:
        """Send one record per stream (None: a tombstone); return the bytes sent."""
        ...

    def flush(self, timeout: float) -> None:
        """Raises `ChangelogError` when a record failed or time ran out."""

    def close(self, timeout: float = 5.0) -> None: ...


@dataclass
class PartitionRestore:
    """One changelog partition read to its end: the live records, last one per key."""

    partition: int
    states: dict[str, bytes] = field(default_factory=dict)
    tombstones: int = 0
    records: int = 0
    seconds: float = 0.0

    @classmethod
    def fold(
        cls,
        partition: int,
        latest: dict[bytes | None, bytes | None],
        records: int,
        seconds: float,
    ) -> PartitionRestore:
        """The restore of one partition from the last record read per key (`latest`, as a
        reader collects them): keyless records are not the service's and are skipped, and a
        key whose last record is a tombstone has no state."""
        restored = cls(partition, records=records, seconds=seconds)
        states = restored.states
        for key, value in latest.items():
            if key is None:
                continue  # not written by this service
            if value is None:
                restored.tombstones += 1
            else:
                states[key.decode()] = value
        return restored


class StateReader(Protocol):
    """Reads changelog partitions from their beginning to their end, last record per key."""

    topic: str

    def read(self, partitions: Iterable[int], timeout: float) -> list[PartitionRestore]:
        """Raises `ChangelogError` when that takes longer than `timeout` seconds."""
        ...

    def close(self) -> None: ...
