"""One consumer-group member's checkpoint and partition parts, wired as `service.app.Service`
wires them, on the in-memory broker, for the checkpoint, lifecycle and fault-injection tests.

The source, sink and changelog reader are the memory clients of `service.testing.transport`;
the changelog writer is the real kafka-python `ChangelogWriter` over a `RecordingProducer`,
whose sends can be slowed down or refused as a real producer's are. Every step lands in
`MemoryBroker.calls`: ``flush forecasts``, ``send states``, ``flush changelog``,
``commit {...}``, ``assigned [...]``, ``revoked [...]``, ``lost [...]``, ``restore [...]``.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
from kafka.errors import KafkaTimeoutError

from service.checkpoint import Checkpointer
from service.config import KafkaSettings
from service.core.engine import StreamEngine
from service.core.model import OnnxStepModel
from service.faults import Crashes, CrashPoint
from service.http import Readiness
from service.kafka.changelog import ChangelogWriter
from service.lifecycle import PartitionLifecycle
from service.metrics import ServiceMetrics
from service.offsets import Commit, Offsets
from service.partitions import PartitionStreams
from service.testing import build_onnx_lstm
from service.testing.transport import (
    MemoryBroker,
    MemoryChangelogReader,
    MemorySink,
    MemorySource,
)
from service.transport import Sink, StateWriter
from tests.unit.service.kafka.test_changelog import FakeProducer

TOPIC = "readings"


class RecordingProducer(FakeProducer):
    """A kafka-python producer stand-in whose sends and flushes are noted on the broker."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__()
        self.broker = broker
        self.refuse = False  # raise from send, as kafka-python does when its buffer stays full
        self.delay = 0.0  # seconds each send takes

    def send(self, topic: str, *, key: bytes, value: bytes | None, partition: int) -> Any:
        if self.refuse:
            raise KafkaTimeoutError("buffer full")
        if self.delay:
            time.sleep(self.delay)
        calls = self.broker.calls
        if not calls or calls[-1] != "send states":
            self.broker.note("send states")
        return super().send(topic, key=key, value=value, partition=partition)

    def flush(self, timeout: float) -> None:
        self.broker.note("flush changelog")
        super().flush(timeout)


@functools.cache
def _model() -> OnnxStepModel:
    card, proto, _ = build_onnx_lstm(hidden=4, features=("temp", "load"))
    return OnnxStepModel(card, proto.SerializeToString())


class Member:
    """The parts of one member over a `MemoryBroker`; its rebalance callbacks are the
    Service's (`service.app.Service.partitions_*`), run by the memory source's ``poll``."""

    def __init__(
        self, partitions: int = 2, *, crash_at: CrashPoint | None = None, **settings: Any
    ) -> None:
        """`settings` are `KafkaSettings` fields; `crash_at` wraps the sink, the changelog
        writer and the commit in the ``debug.crash_at`` wrappers, as the Service does."""
        self.settings = KafkaSettings(input_topic=TOPIC, max_wait_ms=1, **settings)
        self.broker = MemoryBroker(partitions, topic=TOPIC)
        self.engine = StreamEngine(_model())
        self.metrics = ServiceMetrics()
        self.readiness = Readiness(self.metrics)
        self.source = MemorySource(
            self.broker, self, self.settings.max_batch, self.settings.max_wait_ms / 1000
        )
        self.producer = RecordingProducer(self.broker)
        self.writer = ChangelogWriter(self.settings, producer=self.producer)
        sink: Sink = MemorySink(self.broker)
        writer: StateWriter = self.writer
        commit: Commit = self.source.commit
        if crash_at is not None:
            crashes = Crashes(crash_at)
            sink = crashes.sink(sink)
            writer = crashes.changelog(writer)
            commit = crashes.commit(commit)
        self.offsets = Offsets(TOPIC, commit)
        self.lifecycle = PartitionLifecycle(
            self.settings,
            source=self.source,
            reader=MemoryChangelogReader(self.broker, self.writer.topic),
            store=self.engine.store,
            streams=PartitionStreams(),
            metrics=self.metrics,
            readiness=self.readiness,
        )
        self.checkpointer = Checkpointer(
            self.settings,
            sink=sink,
            changelog=writer,
            offsets=self.offsets,
            store=self.engine.store,
            owners=self.lifecycle,
            metrics=self.metrics,
        )

    # -- the Service's rebalance callbacks ------------------------------------------------

    def partitions_assigned(self, partitions: set[int]) -> None:
        self.lifecycle.assigned()

    def partitions_revoked(self, partitions: set[int]) -> dict[int, int]:
        offsets = self.checkpointer.revoke(partitions)
        self.lifecycle.revoked(partitions, lost=False)
        self.offsets.forget(partitions)
        return offsets

    def partitions_lost(self, partitions: set[int]) -> None:
        self.checkpointer.lost(partitions)
        self.lifecycle.revoked(partitions, lost=True)
        self.offsets.forget(partitions)

    # -- what the group and the loop do ---------------------------------------------------

    def rebalance(self, owned: set[int]) -> None:
        """An eager rebalance to exactly `owned`, in the next poll (the loop has not run
        `apply_moves` after it yet)."""
        self.broker.assign(owned)
        self.source.poll()

    def lose(self, partitions: set[int]) -> None:
        """`partitions` lost (a session timed out), in the next poll."""
        self.broker.lose(partitions)
        self.source.poll()

    def revoke(self, partitions: set[int]) -> dict[int, int]:
        """A revoke of `partitions` only (as a cooperative rebalance does): the revoke
        callback, then the client's commit of the offsets it returned; return them."""
        offsets = self.partitions_revoked(partitions)
        if offsets:
            self.source.commit(offsets, 1.0)
        return offsets

    def apply_moves(self) -> set[int]:
        """The loop after a poll: streams of partitions gone dropped, new ones restored."""
        gone = self.lifecycle.apply_moves()
        self.checkpointer.partitions_gone(gone)
        return gone

    def send_all_slices(self) -> None:
        """The loop's iterations until the begun checkpoint's records are all sent."""
        while self.checkpointer.writing:
            self.checkpointer.send_slice()

    # -- streams --------------------------------------------------------------------------

    def touch(self, ids: list[str], partition: int) -> None:
        """Readings of `ids` applied on `partition` (the store marks them changed)."""
        store = self.engine.store
        slots = store.ensure(ids)
        store.advance(slots, np.full(len(ids), 200.0), np.full(len(ids), 9), now=0.0)
        self.lifecycle.streams.note_columns(ids, [partition] * len(ids))

    def evict(self, ids: list[str]) -> None:
        """The engine dropped `ids` (capacity, TTL) and the Service let them go."""
        self.engine.store.drop(ids)
        self.checkpointer.tombstone(ids)
        self.lifecycle.streams.forget(ids)

    def changelog_records(self, ids: list[str], applied: int) -> list[tuple[bytes, bytes | None]]:
        """Changelog records of `ids` (last reading at ts 100 and offset `applied`), made by
        another member's store."""
        other = StreamEngine(self.engine.model).store
        slots = other.ensure(ids)
        states = [np.full(s.batched_shape(len(ids)), 0.25, np.float32) for s in other.specs]
        other.scatter(slots, states)
        other.advance(slots, np.full(len(ids), 100.0), np.full(len(ids), applied), now=0.0)
        return [(s.encode(), b) for s, b in zip(ids, other.dump_many(ids), strict=True)]

    # -- what to look at ------------------------------------------------------------------

    @property
    def sent(self) -> list[tuple[str, int, bool]]:
        """Every changelog record handed to the producer: key, partition, tombstone."""
        return [(key.decode(), part, value is None) for _, key, value, part in self.producer.sent]

    @property
    def sent_keys(self) -> list[str]:
        return [key.decode() for _, key, _, _ in self.producer.sent]

    @property
    def dirty(self) -> set[str]:
        return self.engine.store.dirty_ids()

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def serving(*partitions: int, count: int = 2, **settings: Any) -> Member:
    """A member of a `count`-partition topic holding `partitions` (empty changelogs),
    restored and running, its broker's call log cleared."""
    member = Member(count, **settings)
    member.rebalance(set(partitions))
    member.apply_moves()
    member.broker.calls.clear()
    return member


def many(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]
