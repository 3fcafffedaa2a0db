"""The confluent-kafka source with a stand-in consumer: a poll as columns (errors left out),
pause and resume by partition number, the revoke's offsets committed synchronously inside
the callback, a commit of nothing as a round trip, and commit errors as Sensorcast's. Which
offsets are committed is `service.offsets`' business (tests/unit/service/test_offsets.py)."""

from __future__ import annotations

from typing import Any

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition  # noqa: E402

from service.codec import RecordColumns  # noqa: E402
from service.config import KafkaSettings  # noqa: E402
from service.errors import GroupChangingError, TransportError  # noqa: E402
from service.kafka.confluent.source import ConfluentSource  # noqa: E402

TOPIC = "readings"


class FakeConsumer:
    """The calls `ConfluentSource` makes, recorded; `batches` are what polls return."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.calls: list[str] = []
        self.batches: list[list[Message]] = []
        self.commit_error: KafkaError | None = None
        self.committed_offsets: dict[int, int] = {}
        self.callbacks: dict[str, Any] = {}

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        return self.batches.pop(0) if self.batches else []

    def poll(self, timeout: float) -> Message | None:
        return None

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(f"assign {sorted(tp.partition for tp in partitions)}")

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(f"pause {[tp.partition for tp in partitions]}")

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(f"resume {[tp.partition for tp in partitions]}")

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        if self.commit_error is not None:
            raise KafkaException(self.commit_error)
        self.calls.append(f"commit {[(tp.partition, tp.offset) for tp in offsets]}")
        self.committed_offsets.update({tp.partition: tp.offset for tp in offsets})
        return offsets

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.commit_error is not None:
            raise KafkaException(self.commit_error)
        self.calls.append(f"committed {[tp.partition for tp in partitions]}")
        return partitions


class Handler:
    """Returns `to_commit` on a revoke (empty: its checkpoint failed)."""

    def __init__(self, calls: list[str], to_commit: dict[int, int]) -> None:
        self.calls, self.to_commit = calls, to_commit

    def partitions_assigned(self, partitions: set[int]) -> None:
        self.calls.append(f"assigned {sorted(partitions)}")

    def partitions_revoked(self, partitions: set[int]) -> dict[int, int]:
        self.calls.append(f"revoked {sorted(partitions)}")
        return {p: o for p, o in self.to_commit.items() if p in partitions}

    def partitions_lost(self, partitions: set[int]) -> None:
        self.calls.append(f"lost {sorted(partitions)}")


def _source(
    to_commit: dict[int, int] | None = None, **settings: Any
) -> tuple[ConfluentSource, FakeConsumer]:
    made: list[FakeConsumer] = []

    def build(config: dict[str, Any]) -> FakeConsumer:
        made.append(FakeConsumer(config))
        return made[0]

    calls: list[str] = []
    kafka = KafkaSettings(input_topic=TOPIC, group_id="g", **settings)
    source = ConfluentSource(kafka, Handler(calls, to_commit or {}), build)
    consumer = made[0]
    consumer.calls = calls  # one log of the consumer's and the handler's calls
    return source, consumer


def _message(partition: int, offset: int, value: bytes = b"{}", **kw: Any) -> Message:
    return Message(topic=TOPIC, partition=partition, offset=offset, key=b"k", value=value, **kw)


def _assign(consumer: FakeConsumer, partitions: list[int]) -> None:
    consumer.callbacks["on_assign"](consumer, [TopicPartition(TOPIC, p) for p in partitions])


def test_manual_commits_only() -> None:
    _, consumer = _source()
    assert consumer.config["enable.auto.commit"] is False
    assert consumer.config["group.id"] == "g"


def test_a_fetch_that_found_records_is_followed_by_the_fetch_pause() -> None:
    """librdkafka fetches ahead on its own thread: with nothing more than one record queued
    allowed, it waits ``kafka.fetch_pause_ms`` after each fetch that found some."""
    _, consumer = _source(fetch_pause_ms=20)
    assert consumer.config["queued.min.messages"] == 1
    assert consumer.config["fetch.queue.backoff.ms"] == 20
    _, unpaced = _source(fetch_pause_ms=0)
    assert "queued.min.messages" not in unpaced.config
    assert "fetch.queue.backoff.ms" not in unpaced.config


def test_poll_returns_columns_without_errors() -> None:
    source, consumer = _source()
    _assign(consumer, [0, 1])
    eof = KafkaError(KafkaError._PARTITION_EOF)
    consumer.batches = [
        [
            _message(0, 5, timestamp=(confluent_kafka.TIMESTAMP_CREATE_TIME, 1_700_000_000_123)),
            _message(1, 9, b"x"),
            _message(1, 3, error=eof),
            _message(
                0, 6, timestamp=(confluent_kafka.TIMESTAMP_LOG_APPEND_TIME, 1_700_000_001_000)
            ),
        ]
    ]
    records = source.poll()
    assert isinstance(records, RecordColumns)
    assert (records.partitions, records.offsets, records.values) == (
        [0, 1, 0],
        [5, 9, 6],
        [b"{}", b"x", b"{}"],
    )
    # milliseconds whichever clock stamped them; -1 where the record carries none
    assert records.timestamps == [1_700_000_000_123, -1, 1_700_000_001_000]
    assert (records[1].topic, records[1].partition, records[1].offset) == (TOPIC, 1, 9)
    assert len(source.poll()) == 0


def test_pause_and_resume_by_partition_number() -> None:
    source, consumer = _source()
    _assign(consumer, [0, 1, 2])
    source.pause([2, 0, 7])  # 7 is not assigned
    assert source.paused() == {0, 2}
    source.resume({2})
    assert source.paused() == {0}
    assert consumer.calls[-2:] == ["pause [0, 2]", "resume [2]"]


def test_assignment_is_made_before_the_handler_runs_so_it_can_pause() -> None:
    source, consumer = _source()
    _assign(consumer, [3, 1])
    assert consumer.calls == ["assign [1, 3]", "resume [3, 1]", "assigned [1, 3]"]
    assert source.assignment() == {1, 3}


def test_a_revoke_commits_what_the_handler_returns_synchronously_in_the_callback() -> None:
    source, consumer = _source(to_commit={1: 9})
    _assign(consumer, [0, 1])
    consumer.calls.clear()
    consumer.callbacks["on_revoke"](consumer, [TopicPartition(TOPIC, 1)])
    assert consumer.calls == ["revoked [1]", "commit [(1, 9)]"]
    assert source.assignment() == {0}


def test_no_commit_on_revoke_when_its_checkpoint_failed_and_none_for_lost_partitions() -> None:
    source, consumer = _source(to_commit={})
    _assign(consumer, [0, 1])
    source.pause([0, 1])
    consumer.calls.clear()
    consumer.callbacks["on_revoke"](consumer, [TopicPartition(TOPIC, 0)])
    consumer.callbacks["on_lost"](consumer, [TopicPartition(TOPIC, 1)])
    assert consumer.calls == ["revoked [0]", "lost [1]"]
    assert consumer.committed_offsets == {}
    assert source.assignment() == set() and source.paused() == set()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (KafkaError.REBALANCE_IN_PROGRESS, GroupChangingError),
        (KafkaError.ILLEGAL_GENERATION, GroupChangingError),
        (KafkaError._TRANSPORT, TransportError),
    ],
)
def test_commit_errors_become_sensorcast_errors(code: int, error: type[Exception]) -> None:
    source, consumer = _source()
    _assign(consumer, [0])
    consumer.commit_error = KafkaError(code)
    with pytest.raises(error):
        source.commit({0: 5}, 1.0)
    with pytest.raises(error):
        source.commit({}, 1.0)  # the round trip fails alike
    assert consumer.committed_offsets == {}
    consumer.commit_error = None
    source.commit({0: 5}, 1.0)
    assert consumer.committed_offsets == {0: 5}


def test_committing_nothing_is_a_round_trip_to_the_coordinator() -> None:
    source, consumer = _source()
    source.commit({}, 1.0)
    assert consumer.calls == []  # nothing assigned: nothing to ask
    _assign(consumer, [1, 0])
    consumer.calls.clear()
    source.commit({}, 1.0)
    assert consumer.calls == ["committed [0, 1]"]
