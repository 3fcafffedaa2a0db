"""The confluent-kafka changelog adapters against stand-in clients: records produced to
explicit partitions, a partition read until librdkafka's partition-EOF event, a retried
error named when the deadline passes, a fatal one at once."""

from __future__ import annotations

import time
from typing import Any

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, Message  # noqa: E402

from service.config import KafkaSettings  # noqa: E402
from service.errors import ChangelogError  # noqa: E402
from service.kafka.confluent.changelog import (  # noqa: E402
    ConfluentChangelogReader,
    ConfluentChangelogWriter,
)

SETTINGS = KafkaSettings(group_id="grp")


class FakeProducer:
    """Queues what is produced; `flush` reports the first `fail_first` as failed through the
    config's ``on_delivery`` and leaves `left` unacknowledged."""

    def __init__(self, config: dict[str, Any], fail_first: int = 0, left: int = 0) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes | None, bytes | None, int]] = []
        self._fail, self._left = fail_first, left

    def produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int) -> None:
        self.sent.append((topic, value, key, partition))

    def flush(self, timeout: float = -1) -> int:
        for topic, value, key, partition in self.sent[: self._fail]:
            message = Message(topic=topic, partition=partition, key=key, value=value)
            self.config["on_delivery"](KafkaError(KafkaError._MSG_TIMED_OUT), message)
        self._fail = 0
        return self._left


def _writer(**fake: Any) -> tuple[ConfluentChangelogWriter, FakeProducer]:
    made: list[FakeProducer] = []

    def build(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config, **fake))
        return made[0]

    writer = ConfluentChangelogWriter(SETTINGS, producer=build)
    return writer, made[0]


def test_writer_sends_to_the_given_partitions_with_tombstones_and_counts_bytes() -> None:
    writer, producer = _writer()
    assert writer.send([3, 0], ["a", "bb"], [b"12345", None]) == (1 + 5) + 2
    writer.flush(1.0)
    assert producer.sent == [("grp.state", b"12345", b"a", 3), ("grp.state", None, b"bb", 0)]


def test_writer_flush_reports_failed_deliveries_once_and_what_is_left() -> None:
    writer, _ = _writer(fail_first=2)
    writer.send([0, 0, 0], ["a", "b", "c"], [b"1", b"2", b"3"])
    with pytest.raises(ChangelogError, match="2 changelog records failed delivery"):
        writer.flush(1.0)
    writer.flush(1.0)
    stuck, _ = _writer(left=3)
    with pytest.raises(ChangelogError, match="3 changelog records not acknowledged within 2 s"):
        stuck.flush(2.0)


class FakeConsumer:
    """Serves each partition's log in fetches of `fetch` messages, then its partition-EOF
    event; `errors` are served first, one a fetch, each after the consume's timeout."""

    def __init__(
        self,
        config: dict[str, Any],
        logs: dict[int, list[tuple[bytes | None, bytes | None]]],
        fetch: int = 2,
        errors: list[KafkaError] | None = None,
    ) -> None:
        self.logs, self.fetch, self.errors = logs, fetch, list(errors or [])
        self.positions: dict[int, int] = {}
        self.assigned: list[Any] = []

    def assign(self, tps: list[Any]) -> None:
        self.assigned = list(tps)
        self.positions = {tp.partition: 0 for tp in tps}

    def unassign(self) -> None:
        self.assigned = []

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        if self.errors:
            time.sleep(timeout)  # librdkafka retries meanwhile
            return [Message(topic="grp.state", error=self.errors.pop(0))]
        out = []
        for tp in self.assigned:
            p, start = tp.partition, self.positions[tp.partition]
            for offset, (key, value) in enumerate(self.logs[p][start : start + self.fetch]):
                out.append(
                    Message(
                        topic="grp.state", partition=p, offset=start + offset, key=key, value=value
                    )
                )
            self.positions[p] = min(start + self.fetch, len(self.logs[p]))
            if self.positions[p] == len(self.logs[p]):
                eof = KafkaError(KafkaError._PARTITION_EOF)
                out.append(Message(topic="grp.state", partition=p, error=eof))
        return out

    def close(self) -> None:
        pass


def _reader(
    logs: dict[int, list[tuple[bytes | None, bytes | None]]], **fake: Any
) -> tuple[ConfluentChangelogReader, FakeConsumer]:
    made: list[FakeConsumer] = []

    def build(config: dict[str, Any]) -> FakeConsumer:
        made.append(FakeConsumer(config, logs, **fake))
        return made[0]

    reader = ConfluentChangelogReader(SETTINGS, consumer=build)
    return reader, made[0]


def test_reader_keeps_the_last_record_per_key_until_each_partitions_eof() -> None:
    logs = {
        0: [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"b", None)],
        1: [(b"c", None), (b"c", b"4"), (b"d", b"5")],
        2: [],
    }
    reader, consumer = _reader(logs)
    restored = reader.read({2, 0, 1}, timeout=5)
    assert [r.partition for r in restored] == [0, 1, 2]
    assert (restored[0].states, restored[0].records, restored[0].tombstones) == ({"a": b"3"}, 4, 1)
    assert restored[1].states == {"c": b"4", "d": b"5"}
    assert restored[2].states == {} and restored[2].records == 0
    assert consumer.assigned == []  # released for the next restore


def test_reader_times_out_naming_the_last_retried_error() -> None:
    down = KafkaError(KafkaError._TRANSPORT, "broker down")
    reader, _ = _reader({0: [(b"a", b"1")]}, errors=[down] * 1000)
    with pytest.raises(
        ChangelogError, match=r"partitions \[0\] not read to their end within 0.2 s \(_TRANSPORT"
    ):
        reader.read([0], timeout=0.2)


def test_reader_fails_at_once_on_a_fatal_error() -> None:
    fatal = KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "fenced", fatal=True)
    reader, _ = _reader({0: [(b"a", b"1")]}, errors=[fatal])
    with pytest.raises(ChangelogError, match=r"cannot read changelog grp\.state: fenced"):
        reader.read([0], timeout=5)
