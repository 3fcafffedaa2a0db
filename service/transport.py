"""What the service needs of a Kafka client, whichever library implements it.

A `Transport` opens the clients: a `Source` (the input topic in a consumer group), a `Sink`
(forecasts and dead letters), a `StateWriter` and a `StateReader` (the changelog). Three
implementations sit behind these protocols: kafka-python (`service.kafka`), confluent-kafka
(`service.kafka.confluent`), both chosen by ``kafka.client`` through
`service.kafka.connect.KafkaTransport`, and an in-memory one for tests
(`service.testing.MemoryTransport`). They are adapters: what is the same for every client
(which offsets to commit, resending failed deliveries, folding a changelog to its last
record per key) lives above them, in `service.offsets`, `service.delivery` and
`PartitionRestore.fold`. They raise only Sensorcast errors: `TransportError` (and
`GroupChangingError` for a commit refused by a rebalance) from the source, `SinkError` from
the sink, `ChangelogError` from the changelog writer and reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.codec import RawRecord
from service.config import KafkaSettings
from service.delivery import DeadLetterEvent

__all__ = [
    "Clients",
    "PartitionRestore",
    "RebalanceHandler",
    "Sink",
    "Source",
    "StateReader",
    "StateWriter",
    "Transport",
]


class RebalanceHandler(Protocol):
    """What the service does when the group hands partitions out or takes them back.

    Both clients run these while the poll loop waits in `Source.poll` or `Source.close`
    (kafka-python on its I/O thread, confluent-kafka on the calling thread); they must not
    call the source's blocking methods.
    """

    def partitions_assigned(self, partitions: set[int]) -> None:
        """Partitions were assigned; their records follow in later polls."""

    def partitions_revoked(self, partitions: set[int]) -> dict[int, int]:
        """Partitions are about to be revoked: run the checkpoint's steps 1 and 2 for them
        and return the offsets to commit (step 3), which the client commits before it lets
        them go; empty when a step failed and nothing may be committed."""
        ...

    def partitions_lost(self, partitions: set[int]) -> None:
        """Partitions were lost: another member may own them already; nothing is committed."""


class Source(Protocol):
    """The input topic, consumed in a consumer group; offsets committed only by `commit`."""

    topic: str

    def poll(self) -> Sequence[RawRecord]:
        """One micro-batch: up to ``kafka.max_batch`` records, waiting ``kafka.max_wait_ms``."""
        ...

    def assignment(self) -> set[int]:
        """The partitions assigned to this member."""
        ...

    def pause(self, partitions: Iterable[int]) -> None:
        """Stop fetching these partitions until `resume` (their position is kept)."""

    def resume(self, partitions: Iterable[int]) -> None:
        """Fetch these partitions again."""

    def paused(self) -> set[int]:
        """The paused partitions."""
        ...

    def commit(self, offsets: Mapping[int, int], timeout: float) -> None:
        """Commit `offsets` (the next offset to process, per partition) synchronously.

        With no offsets, a round trip to the group coordinator all the same, so that a
        checkpoint learns whether the broker is there. Raises `GroupChangingError` when a
        rebalance refuses the commit and `TransportError` when the broker does.
        """

    def lag(self, positions: Mapping[int, int]) -> dict[int, int]:
        """High watermark minus the next offset to process (`positions`, else the client's
        own position), per assigned partition where both are known."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Leave the group (running the revoke callback) and close."""


class Sink(Protocol):
    """Forecasts and dead letters; `flush` returns once everything sent is acknowledged."""

    def send_forecasts(
        self,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None = None,
    ) -> None:
        """Send one forecast per stream, keyed by it, in order, to ``partitions[i]`` (None:
        each by its key's hash)."""

    def send_shadows(
        self,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None = None,
    ) -> None:
        """Send a challenger's forecasts to the shadow topic, as `send_forecasts` does."""

    def send_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Send a dead letter. Never raises for the record itself: one the producer or the
        broker refuses for good is sent again smaller, then given up, each step reported by
        `take_dead_letter_events`."""

    def take_dead_letter_events(self) -> list[DeadLetterEvent]:
        """Dead letters refused for good since the last call (sent smaller, or lost)."""
        ...

    def deliver(self, timeout: float) -> None:
        """Send what is queued now rather than after ``kafka.linger_ms``, and wait up to
        `timeout` seconds for it to be acknowledged. Never raises: what is not acknowledged
        by then, or failed, is `flush`'s."""

    def flush(self, timeout: float) -> None:
        """Raises `SinkError` when not everything is acknowledged within `timeout` seconds."""

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is pending (within `timeout` seconds) and release the client."""


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

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is pending (within `timeout` seconds) and release the client."""


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

    def close(self) -> None:
        """Release the client."""


@dataclass
class Clients:
    """The clients one `Transport.open` returns, connected and subscribed."""

    source: Source
    sink: Sink
    changelog_writer: StateWriter
    changelog_reader: StateReader
    partitions: dict[str, int]  # topic -> partition count
    #: The output topic has the input's partition count: a forecast can go to its
    #: reading's partition number (which also spares the producer hashing every key).
    mirror_partitions: bool


class Transport(Protocol):
    """Opens the clients the service runs on (as httpx's ``Client(transport=...)``)."""

    def open(
        self, settings: KafkaSettings, handler: RebalanceHandler, extra_topics: Sequence[str] = ()
    ) -> Clients:
        """Check the topics (the service's and `extra_topics`) and open the clients, the
        source subscribed with `handler`.

        Raises `TransportError` when the broker cannot be reached (the service retries
        with backoff) and `TopicError` when a topic is missing or unusable.
        """
        ...
