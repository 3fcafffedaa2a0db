"""An in-memory transport: a whole `Service` (poll loop, checkpoints, rebalances, restores)
runs in a unit test with no broker, as Bytewax ships `TestingSource` and `TestingSink`.

`MemoryBroker` holds the topics as lists: the input and the changelog partitioned, the
forecasts and dead letters acknowledged so far, and the group's committed offsets. Its
clients implement the `service.transport` protocols with the semantics the checkpoint relies
on: records are acknowledged only by ``flush``, offsets committed only by ``commit``, and
a rebalance runs the handler's callbacks inside the source's ``poll``, as both Kafka clients
do. Every step a checkpoint takes is written to `MemoryBroker.calls` in order
(``flush forecasts``, ``send states``, ``flush changelog``, ``commit {...}``), and any of
``sink.flush``, ``changelog.send``, ``changelog.flush``, ``commit``, ``restore`` and
``poll`` can be made to fail (`MemoryBroker.failing`).

    broker = MemoryBroker(partitions=2)
    broker.produce(0, b"s1", json.dumps({...}).encode())
    service = Service(settings, transport=MemoryTransport(broker))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from service.codec import RecordColumns
from service.config import KafkaSettings, changelog_topic
from service.delivery import DeadLetterEvent
from service.errors import ChangelogError, SinkError, TransportError
from service.transport import Clients, PartitionRestore, RebalanceHandler

__all__ = [
    "FAILURE_POINTS",
    "MemoryBroker",
    "MemoryChangelogReader",
    "MemoryChangelogWriter",
    "MemorySink",
    "MemorySource",
    "MemoryTransport",
    "Produced",
]

#: What `MemoryBroker.failing` may hold.
FAILURE_POINTS = ("poll", "sink.flush", "changelog.send", "changelog.flush", "commit", "restore")


@dataclass(frozen=True, slots=True)
class Produced:
    """A record the broker acknowledged on an output topic."""

    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class MemoryBroker:
    """Topics, committed offsets and a rebalance schedule, held in memory; thread-safe."""

    def __init__(self, partitions: int = 2, topic: str = "readings") -> None:
        self.topic = topic
        self.partitions = partitions
        self.input: list[list[tuple[bytes | None, bytes | None, int]]] = [
            [] for _ in range(partitions)
        ]
        self.changelog: list[list[tuple[bytes, bytes | None]]] = [[] for _ in range(partitions)]
        self.forecasts: list[Produced] = []
        self.shadow: list[Produced] = []  # a challenger's forecasts
        self.dead_letters: list[Produced] = []
        self.committed: dict[int, int] = {}
        self.calls: list[str] = []  # the checkpoint steps and rebalance callbacks, in order
        self.failing: set[str] = set()  # of FAILURE_POINTS
        self.lock = threading.RLock()
        self._assignments: list[tuple[str, set[int]]] = []  # rebalances for the next poll

    def produce(
        self, partition: int, key: bytes | None, value: bytes | None, ts_ms: int = -1
    ) -> int:
        """Append a record to an input partition; return its offset."""
        with self.lock:
            self.input[partition].append((key, value, ts_ms))
            return len(self.input[partition]) - 1

    def assign(self, partitions: Iterable[int]) -> None:
        """At the next poll, move the member's assignment to exactly `partitions` (revoking
        the others first, as an eager rebalance does)."""
        with self.lock:
            self._assignments.append(("assign", set(partitions)))

    def lose(self, partitions: Iterable[int]) -> None:
        """At the next poll, take `partitions` away without a revoke (a lost session)."""
        with self.lock:
            self._assignments.append(("lose", set(partitions)))

    def fail(self, point: str) -> None:
        """Raise at `point` (one of `FAILURE_POINTS`) until `recover(point)`."""
        if point not in FAILURE_POINTS:
            raise ValueError(f"no failure point {point!r}; one of {FAILURE_POINTS}")
        with self.lock:
            self.failing.add(point)

    def recover(self, point: str) -> None:
        """Let `point` succeed again."""
        with self.lock:
            self.failing.discard(point)

    def note(self, call: str) -> None:
        """Record a step in `calls`."""
        with self.lock:
            self.calls.append(call)

    def take_rebalances(self) -> list[tuple[str, set[int]]]:
        """The rebalances scheduled since the last call."""
        with self.lock:
            taken, self._assignments = self._assignments, []
            return taken

    def changelog_state(self, partition: int) -> dict[str, bytes]:
        """The live states of a changelog partition (last record per key, as compaction)."""
        with self.lock:
            latest: dict[bytes | None, bytes | None] = dict(self.changelog[partition])
        return PartitionRestore.fold(partition, latest, 0, 0.0).states


class MemoryTransport:
    """Opens clients on a `MemoryBroker` (`service.transport.Transport`)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def open(
        self, settings: KafkaSettings, handler: RebalanceHandler, extra_topics: Sequence[str] = ()
    ) -> Clients:
        """The source, sink and changelog clients of `broker`; the whole input assigned at
        the first poll unless a rebalance was scheduled already. (Every topic exists here.)"""
        broker = self.broker
        source = MemorySource(broker, handler, settings.max_batch, settings.max_wait_ms / 1000)
        counts = {settings.input_topic: broker.partitions, settings.output_topic: broker.partitions}
        return Clients(
            source=source,
            sink=MemorySink(broker),
            changelog_writer=MemoryChangelogWriter(broker, changelog_topic(settings)),
            changelog_reader=MemoryChangelogReader(broker, changelog_topic(settings)),
            partitions=counts,
            mirror_partitions=True,
        )


class MemorySource:
    """The input topic in a one-member group: polls, pauses, commits, rebalances."""

    def __init__(
        self, broker: MemoryBroker, handler: RebalanceHandler, max_batch: int, max_wait: float
    ) -> None:
        self.topic = broker.topic
        self._max_wait = max_wait
        self._broker = broker
        self._handler = handler
        self._max_batch = max_batch
        self._assigned: set[int] = set()
        self._paused: set[int] = set()
        self._position: dict[int, int] = {}
        self._joined = False

    def poll(self) -> RecordColumns:
        """Up to ``max_batch`` records of the assigned, unpaused partitions; rebalances
        scheduled on the broker run their callbacks first."""
        broker = self._broker
        rebalances = broker.take_rebalances()
        if not self._joined:
            self._joined = True
            if not rebalances:
                rebalances = [("assign", set(range(broker.partitions)))]
        for kind, partitions in rebalances:
            if kind == "lose":
                self._lose(partitions & self._assigned)
            else:
                self._rebalance(partitions)
        if "poll" in broker.failing:
            raise TransportError("poll failed: the memory broker is failing polls")
        columns = RecordColumns(self.topic, [], [], [], [], [])
        with broker.lock:
            for p in sorted(self._assigned - self._paused):
                start = self._position[p]
                taken = broker.input[p][start : start + self._max_batch - len(columns.keys)]
                for i, (key, value, ts) in enumerate(taken):
                    columns.keys.append(key)
                    columns.values.append(value)
                    columns.partitions.append(p)
                    columns.offsets.append(start + i)
                    columns.timestamps.append(ts)
                self._position[p] = start + len(taken)
        if not columns.keys:
            time.sleep(self._max_wait)  # as a poll waits for records, not to spin the loop
        return columns

    def _rebalance(self, owned: set[int]) -> None:
        """An eager rebalance: the whole assignment revoked, then `owned` assigned."""
        self._revoke_all(1.0)
        self._assigned = set(owned)
        self._paused = set()
        with self._broker.lock:
            self._position = {p: self._broker.committed.get(p, 0) for p in owned}
        self._broker.note(f"assigned {sorted(owned)}")
        self._handler.partitions_assigned(set(owned))

    def _lose(self, partitions: set[int]) -> None:
        self._broker.note(f"lost {sorted(partitions)}")
        self._handler.partitions_lost(partitions)
        self._assigned -= partitions
        self._paused -= partitions

    def assignment(self) -> set[int]:
        """The partitions assigned to this member."""
        return set(self._assigned)

    def pause(self, partitions: Iterable[int]) -> None:
        """Stop returning records of these partitions until `resume`."""
        self._paused |= set(partitions) & self._assigned

    def resume(self, partitions: Iterable[int]) -> None:
        """Return records of these partitions again."""
        self._paused -= set(partitions)

    def paused(self) -> set[int]:
        """The paused partitions."""
        return set(self._paused)

    def commit(self, offsets: Mapping[int, int], timeout: float) -> None:
        """Commit `offsets`; `TransportError` while ``commit`` is failing."""
        broker = self._broker
        broker.note(f"commit {dict(sorted(offsets.items()))}")
        if "commit" in broker.failing:
            raise TransportError("commit failed: the memory broker is failing commits")
        with broker.lock:
            broker.committed.update(offsets)

    def lag(self, positions: Mapping[int, int]) -> dict[int, int]:
        """Records after the next offset to process, per assigned partition."""
        with self._broker.lock:
            return {
                p: len(self._broker.input[p]) - positions.get(p, self._position.get(p, 0))
                for p in self._assigned
            }

    def close(self, timeout: float = 5.0) -> None:
        """Leave the group: the revoke callback runs for the whole assignment."""
        self._revoke_all(timeout)

    def _revoke_all(self, timeout: float) -> None:
        """The revoke callback for the whole assignment, then the offsets it returns
        committed, as a client does before it lets the partitions go."""
        revoked = set(self._assigned)
        if not revoked:
            return
        self._broker.note(f"revoked {sorted(revoked)}")
        offsets = self._handler.partitions_revoked(revoked)
        self._assigned = set()
        self._paused = set()
        if offsets:
            self.commit(offsets, timeout)


class MemorySink:
    """Forecasts and dead letters, acknowledged by `flush`."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._unacknowledged: list[tuple[str, Produced]] = []

    def send_forecasts(
        self,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None = None,
    ) -> None:
        """Queue forecasts."""
        self._queue("forecast", stream_ids, values, partitions)

    def send_shadows(
        self,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None = None,
    ) -> None:
        """Queue a challenger's forecasts."""
        self._queue("shadow", stream_ids, values, partitions)

    def _queue(
        self,
        kind: str,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None,
    ) -> None:
        targets: Sequence[int | None] = [None] * len(values) if partitions is None else partitions
        for stream_id, value, partition in zip(stream_ids, values, targets, strict=True):
            self._unacknowledged.append((kind, Produced(stream_id.encode(), value, partition)))

    def send_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Queue a dead letter."""
        self._unacknowledged.append(("dead letter", Produced(key, value, None, list(headers))))

    def take_dead_letter_events(self) -> list[DeadLetterEvent]:
        """None: the memory broker refuses no dead letter."""
        return []

    def deliver(self, timeout: float) -> None:
        """Nothing: the memory broker acknowledges records only at `flush` (a real broker
        may acknowledge them before, which no checkpoint step relies on)."""

    def flush(self, timeout: float) -> None:
        """Acknowledge everything queued; `SinkError` while ``sink.flush`` is failing (the
        records stay queued, as a producer keeps them)."""
        broker = self._broker
        broker.note("flush forecasts")
        if "sink.flush" in broker.failing:
            raise SinkError("forecasts not acknowledged: the memory broker is failing flushes")
        with broker.lock:
            topics = {"forecast": broker.forecasts, "shadow": broker.shadow}
            for kind, record in self._unacknowledged:
                topics.get(kind, broker.dead_letters).append(record)
        self._unacknowledged = []

    def close(self, timeout: float = 5.0) -> None:
        """Nothing to release."""


class MemoryChangelogWriter:
    """State records and tombstones, acknowledged by `flush`."""

    def __init__(self, broker: MemoryBroker, topic: str) -> None:
        self.topic = topic
        self._broker = broker
        self._unacknowledged: list[tuple[int, bytes, bytes | None]] = []

    def send(
        self, partitions: Sequence[int], keys: Sequence[str], values: Sequence[bytes | None]
    ) -> int:
        """Queue one record per stream; `ChangelogError` while ``changelog.send`` is failing."""
        broker = self._broker
        if not broker.calls or broker.calls[-1] != "send states":
            broker.note("send states")
        if "changelog.send" in broker.failing:
            raise ChangelogError("cannot send to the changelog: the memory broker is failing sends")
        size = 0
        for partition, key, value in zip(partitions, keys, values, strict=True):
            self._unacknowledged.append((partition, key.encode(), value))
            size += len(key) + (len(value) if value is not None else 0)
        return size

    def flush(self, timeout: float) -> None:
        """Acknowledge what was sent; `ChangelogError` while ``changelog.flush`` is failing
        (the records are lost then, as a producer's are when their delivery times out)."""
        broker = self._broker
        broker.note("flush changelog")
        sent, self._unacknowledged = self._unacknowledged, []
        if "changelog.flush" in broker.failing:
            raise ChangelogError(f"{len(sent)} changelog records failed delivery (memory broker)")
        with broker.lock:
            for partition, key, value in sent:
                broker.changelog[partition].append((key, value))

    def close(self, timeout: float = 5.0) -> None:
        """Nothing to release."""


class MemoryChangelogReader:
    """Reads changelog partitions to their end, last record per key."""

    def __init__(self, broker: MemoryBroker, topic: str) -> None:
        self.topic = topic
        self._broker = broker

    def read(self, partitions: Iterable[int], timeout: float) -> list[PartitionRestore]:
        """Every partition folded; `ChangelogError` while ``restore`` is failing."""
        broker = self._broker
        parts = sorted(set(partitions))
        broker.note(f"restore {parts}")
        if "restore" in broker.failing:
            raise ChangelogError("cannot read the changelog: the memory broker is failing reads")
        with broker.lock:
            logs = {p: list(broker.changelog[p]) for p in parts}
        out = []
        for p in parts:
            latest: dict[bytes | None, bytes | None] = dict(logs[p])
            out.append(PartitionRestore.fold(p, latest, len(logs[p]), 0.0))
        return out

    def close(self) -> None:
        """Nothing to release."""
