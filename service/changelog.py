"""The state changelog above the Kafka clients: what is the same whichever writes or reads it.

The changelog is one compacted topic holding the latest state of every stream. Records are
keyed by stream id (UTF-8) and hold `StateStore.dump` bytes; an evicted or expired stream
gets a tombstone (no value). A stream's records go to the changelog partition with the
number of the input partition its readings come from, set explicitly rather than by the
producer's key hash, so that restoring input partition p means reading changelog partition p
only, however the input is keyed.

`ChangelogWriting` sends a checkpoint's records and confirms their delivery: the adapters
(`service.kafka.changelog.ChangelogWriter`,
`service.kafka.confluent.changelog.ConfluentChangelogWriter`) implement `_produce_all` and
`_deliver` and report failed deliveries with `_delivery_failed`. `ChangelogReading` restores
partitions: each is read from its beginning until the client says it is at its end, keeping
the last record per key, as compaction would, within a timeout (`ChangelogRead`); the
adapters implement `_read_to_end`, which fetches and feeds the `ChangelogRead`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from service.errors import ChangelogError
from service.transport import PartitionRestore

__all__ = ["ChangelogRead", "ChangelogReading", "ChangelogWriting"]


class ChangelogWriting(ABC):
    """A `StateWriter` on any client: bytes counted, failed deliveries kept for `flush`."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._errors: list[object] = []

    @abstractmethod
    def _produce_all(
        self, partitions: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes | None]
    ) -> None:
        """Queue one record per (partition, key, value) to `topic`; `ChangelogError` when
        one cannot be queued (the queue stayed full, or the broker is unreachable)."""

    @abstractmethod
    def _deliver(self, timeout: float) -> None:
        """Block until every queued record is delivered or failed; `ChangelogError` when
        time ran out first."""

    def _delivery_failed(self, error: object) -> None:
        """A record's delivery failed with `error` (called on any thread)."""
        self._errors.append(error)

    def send(
        self,
        partitions: Sequence[int],
        keys: Sequence[str],
        values: Sequence[bytes | None],
    ) -> int:
        """Send one record per stream (a None value is a tombstone); return the bytes sent.

        Delivery is confirmed by `flush`.
        """
        self._produce_all(partitions, [key.encode() for key in keys], values)
        return sum(map(len, keys)) + sum(len(value) for value in values if value is not None)

    def flush(self, timeout: float) -> None:
        """Block until every record sent is acknowledged; `ChangelogError` when one failed or
        time ran out (the caller writes the same streams again at its next checkpoint)."""
        self._deliver(timeout)
        if self._errors:
            first, n = self._errors[0], len(self._errors)
            self._errors = []
            raise ChangelogError(f"{n} changelog records failed delivery; first error: {first}")


class ChangelogRead:
    """One read of changelog partitions from their beginning to their end, fed by a reader.

    The clock starts when it is made: `check_deadline` raises once `timeout` seconds have
    passed with partitions still `pending`.
    """

    def __init__(self, topic: str, partitions: Iterable[int], timeout: float) -> None:
        self.topic = topic
        #: The partitions read, in increasing order.
        self.partitions = sorted(set(partitions))
        #: The partitions not read to their end yet.
        self.pending = set(self.partitions)
        self._timeout = timeout
        self._started = time.monotonic()
        self._deadline = self._started + timeout
        self._latest: dict[int, dict[bytes | None, bytes | None]] = {p: {} for p in self.partitions}
        self._counts = dict.fromkeys(self.partitions, 0)
        self._seconds: dict[int, float] = {}

    def add(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """One record of `partition`, read after those added before it."""
        self._latest[partition][key] = value
        self._counts[partition] += 1

    def add_all(self, partition: int, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
        """Records of `partition` as (key, value), in offset order, read after those added
        before them."""
        self._latest[partition].update(records)
        self._counts[partition] += len(records)

    def reached_end(self, partition: int) -> None:
        """`partition` is read to its end: it is no longer pending (said again, nothing)."""
        if partition in self.pending:
            self.pending.discard(partition)
            self._seconds[partition] = time.monotonic() - self._started

    def check_deadline(self, last_error: str = "") -> None:
        """`ChangelogError` naming the pending partitions (and `last_error`, the client's
        last retried error, when there is one) once the timeout has passed."""
        if time.monotonic() > self._deadline:
            raise ChangelogError(
                f"changelog {self.topic} partitions {sorted(self.pending)} not read to their "
                f"end within {self._timeout:g} s" + (f" ({last_error})" if last_error else "")
            )

    def restores(self) -> list[PartitionRestore]:
        """The restore of every partition, in partition order, once none is pending."""
        return [
            PartitionRestore.fold(p, self._latest[p], self._counts[p], self._seconds[p])
            for p in self.partitions
        ]


class ChangelogReading(ABC):
    """A `StateReader` on any client: the partitions asked for, read to their end."""

    def __init__(self, topic: str) -> None:
        self.topic = topic

    @abstractmethod
    def _read_to_end(self, read: ChangelogRead) -> None:
        """Fetch `read.partitions` from their beginning, feeding `read` and telling it when
        each is at its end, until none is pending; call `read.check_deadline` between
        fetches. Raises `ChangelogError` (the client's errors converted)."""

    def read(self, partitions: Iterable[int], timeout: float) -> list[PartitionRestore]:
        """Every partition in `partitions` read from its beginning to its end.

        Raises `ChangelogError` when that takes longer than `timeout` seconds.
        """
        read = ChangelogRead(self.topic, partitions, timeout)
        if read.partitions:
            self._read_to_end(read)
        return read.restores()
