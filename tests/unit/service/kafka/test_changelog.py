"""The changelog writer and reader against stand-in clients: explicit partitions,
tombstones, failed deliveries, last record per key, and "the end" taken from the high
watermark, not from ListOffsets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from service.config import KafkaSettings
from service.errors import ChangelogError
from service.kafka.changelog import ChangelogReader, ChangelogWriter
from service.kafka.topics import ensure_topics

SETTINGS = KafkaSettings(group_id="grp")


class _Future:
    def __init__(self, error: BaseException | None) -> None:
        self._error = error

    def add_errback(self, fn: Callable[[BaseException], None]) -> None:
        if self._error is not None:
            fn(self._error)


class FakeProducer:
    def __init__(self, fail_every: int = 0, flush_times_out: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int]] = []
        self.fail_every = fail_every
        self.flush_times_out = flush_times_out

    def send(self, topic: str, *, key: bytes, value: bytes | None, partition: int) -> _Future:
        self.sent.append((topic, key, value, partition))
        failed = self.fail_every and len(self.sent) % self.fail_every == 0
        return _Future(NotLeaderForPartitionError() if failed else None)

    def flush(self, timeout: float) -> None:
        if self.flush_times_out:
            raise KafkaTimeoutError("no ack")

    def close(self, timeout: float) -> None:
        pass


def test_writer_sends_to_the_given_partitions_with_tombstones_and_counts_bytes() -> None:
    producer = FakeProducer()
    writer = ChangelogWriter(SETTINGS, producer=producer)
    size = writer.send([3, 0, 2], ["a", "bb", "c"], [b"12345", None, b"x"])
    writer.flush(1.0)
    assert producer.sent == [
        ("grp.state", b"a", b"12345", 3),
        ("grp.state", b"bb", None, 0),
        ("grp.state", b"c", b"x", 2),
    ]
    assert size == (1 + 5) + 2 + (1 + 1)


def test_writer_flush_reports_failed_deliveries_once() -> None:
    writer = ChangelogWriter(SETTINGS, producer=FakeProducer(fail_every=2))
    writer.send([0, 0, 0, 0], ["a", "b", "c", "d"], [b"1", b"2", b"3", b"4"])
    with pytest.raises(ChangelogError, match="2 changelog records failed delivery"):
        writer.flush(1.0)
    writer.flush(1.0)  # reported once; the caller writes the streams again


def test_writer_flush_timeout_is_a_changelog_error() -> None:
    writer = ChangelogWriter(SETTINGS, producer=FakeProducer(flush_times_out=True))
    writer.send([0], ["a"], [b"1"])
    with pytest.raises(ChangelogError, match="not acknowledged within 2 s"):
        writer.flush(2.0)


@dataclass
class _Record:
    key: bytes | None
    value: bytes | None


class FakeConsumer:
    """Serves each partition's log in fetches of `fetch` records; the high watermark is
    known only after a first fetch and `end_offsets` falls short, like the embedded broker."""

    def __init__(self, logs: dict[int, list[_Record]], fetch: int = 2) -> None:
        self.logs = logs
        self.fetch = fetch
        self.positions: dict[TopicPartition, int] = {}
        self.fetched: set[TopicPartition] = set()
        self.assigned: list[TopicPartition] = []

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: min(1, len(self.logs[tp.partition])) for tp in tps}  # the quirk

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[_Record]]:
        out = {}
        for tp in self.assigned:
            start = self.positions[tp]
            records = self.logs[tp.partition][start : start + self.fetch]
            self.fetched.add(tp)
            if records:
                out[tp] = records
                self.positions[tp] = start + len(records)
        return out

    def highwater(self, tp: TopicPartition) -> int | None:
        return len(self.logs[tp.partition]) if tp in self.fetched else None

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def close(self, autocommit: bool) -> None:
        pass


def test_reader_keeps_the_last_record_per_key_and_drops_tombstoned_streams() -> None:
    logs = {
        0: [_Record(b"a", b"1"), _Record(b"b", b"2"), _Record(b"a", b"3"), _Record(b"b", None)],
        1: [_Record(b"c", None), _Record(b"c", b"4"), _Record(b"d", b"5")],
        2: [],
    }
    consumer: Any = FakeConsumer(logs)
    restored = ChangelogReader(SETTINGS, consumer=consumer).read({2, 0, 1}, timeout=5)
    assert [r.partition for r in restored] == [0, 1, 2]
    assert restored[0].states == {"a": b"3"}
    assert (restored[0].records, restored[0].tombstones) == (4, 1)
    assert restored[1].states == {"c": b"4", "d": b"5"}
    assert restored[1].tombstones == 0
    assert restored[2].states == {} and restored[2].records == 0
    assert consumer.assigned == []  # released for the next restore


def test_reader_reads_past_a_short_end_offset_to_the_high_watermark() -> None:
    logs = {0: [_Record(f"s{i}".encode(), str(i).encode()) for i in range(150)]}
    consumer: Any = FakeConsumer(logs, fetch=100)
    (restored,) = ChangelogReader(SETTINGS, consumer=consumer).read([0], timeout=5)
    assert restored.records == 150 and len(restored.states) == 150


def test_reader_times_out_with_a_changelog_error() -> None:
    class Stuck(FakeConsumer):
        def highwater(self, tp: TopicPartition) -> int | None:
            return None

    consumer: Any = Stuck({0: [_Record(b"a", b"1")]})
    with pytest.raises(ChangelogError, match=r"partitions \[0\] not read to their end"):
        ChangelogReader(SETTINGS, consumer=consumer).read([0], timeout=0.3)


def test_reader_of_no_partitions_reads_nothing() -> None:
    consumer: Any = FakeConsumer({})
    assert ChangelogReader(SETTINGS, consumer=consumer).read([], timeout=1) == []


def test_changelog_topic_is_created_compacted_with_the_inputs_partition_count() -> None:
    created: dict[str, dict[str, Any]] = {}

    class Admin:
        def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
            out = []
            for t in topics:
                if t == "in":
                    out.append({"name": t, "error_code": 0, "partitions": [0, 1, 2]})
                elif t in created:
                    n = created[t]["num_partitions"]
                    out.append({"name": t, "error_code": 0, "partitions": list(range(n))})
                else:
                    out.append({"name": t, "error_code": 3, "partitions": []})
            return out

        def create_topics(self, spec: dict[str, dict[str, Any]], wait_for_metadata: bool) -> None:
            created.update(spec)

    admin: Any = Admin()
    counts = ensure_topics(
        admin,
        input_topic="in",
        derived_topics=["out", "g.state"],
        create=True,
        partitions=8,
        replication_factor=1,
        topic_configs={"g.state": {"cleanup.policy": "compact"}},
    )
    assert counts == {"in": 3, "out": 3, "g.state": 3}
    assert created["g.state"]["configs"] == {"cleanup.policy": "compact"}
    assert "configs" not in created["out"]
