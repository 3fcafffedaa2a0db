"""The confluent-kafka source with a stand-in consumer: a poll as columns (errors left out,
offsets remembered), pause and resume by partition number, the revoke checkpoint committed
synchronously inside the callback, and commit errors as Sensorcast's."""

from __future__ import annotations

from typing import Any

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition  # noqa: E402

from service.config import KafkaSettings  # noqa: E402
from service.errors import GroupChangingError, TransportError  # noqa: E402
from service.kafka.codec import RecordColumns  # noqa: E402
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


class Handler:
    def __init__(self, calls: list[str], flush_ok: bool = True) -> None:
        self.calls, self.flush_ok = calls, flush_ok

    def partitions_assigned(self, partitions: set[int]) -> None:
        self.calls.append(f"assigned {sorted(partitions)}")

    def flush_before_revoke(self, partitions: set[int]) -> bool:
        self.calls.append(f"flush {sorted(partitions)}")
        return self.flush_ok

    def partitions_revoked(self, partitions: set[int], *, lost: bool) -> None:
        self.calls.append(f"{'lost' if lost else 'revoked'} {sorted(partitions)}")


def _source(flush_ok: bool = True) -> tuple[ConfluentSource, FakeConsumer]:
    made: list[FakeConsumer] = []

    def build(config: dict[str, Any]) -> FakeConsumer:
        made.append(FakeConsumer(config))
        return made[0]

    calls: list[str] = []
    settings = KafkaSettings(input_topic=TOPIC, group_id="g")
    source = ConfluentSource(settings, Handler(calls, flush_ok), build)
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


def test_poll_returns_columns_without_errors_and_remembers_offsets() -> None:
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
    assert source.pending_commit() == {0: 7, 1: 10}
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


def test_revoke_flushes_then_commits_synchronously_then_hands_over() -> None:
    source, consumer = _source()
    _assign(consumer, [0, 1])
    consumer.batches = [[_message(0, 4), _message(1, 8)]]
    source.poll()
    consumer.calls.clear()
    consumer.callbacks["on_revoke"](consumer, [TopicPartition(TOPIC, 1)])
    assert consumer.calls == ["flush [1]", "commit [(1, 9)]", "revoked [1]"]
    assert source.assignment() == {0}
    assert source.pending_commit() == {0: 5}


def test_no_commit_on_revoke_when_the_flush_failed_and_none_for_lost_partitions() -> None:
    source, consumer = _source(flush_ok=False)
    _assign(consumer, [0, 1])
    consumer.batches = [[_message(0, 4), _message(1, 8)]]
    source.poll()
    consumer.calls.clear()
    consumer.callbacks["on_revoke"](consumer, [TopicPartition(TOPIC, 0)])
    consumer.callbacks["on_lost"](consumer, [TopicPartition(TOPIC, 1)])
    assert consumer.calls == ["flush [0]", "revoked [0]", "lost [1]"]
    assert consumer.committed_offsets == {}


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
    consumer.batches = [[_message(0, 4)]]
    source.poll()
    consumer.commit_error = KafkaError(code)
    with pytest.raises(error):
        source.commit(1000)
    assert source.pending_commit() == {0: 5}  # not committed
    consumer.commit_error = None
    assert source.commit(1000) == {0: 5}
    assert source.pending_commit() == {}


def test_committing_earlier_positions_commits_only_those_still_assigned_and_never_backwards() -> (
    None
):
    source, consumer = _source()
    _assign(consumer, [0, 1])
    consumer.batches = [[_message(0, 4), _message(1, 8)]]
    source.poll()
    noted = source.positions()
    assert noted == {0: 5, 1: 9}
    consumer.batches = [[_message(0, 5), _message(0, 6)]]
    source.poll()  # processed after the positions were noted
    consumer.calls.clear()
    assert source.commit(1000, offsets=noted) == {0: 5, 1: 9}
    assert consumer.calls == ["commit [(0, 5), (1, 9)]"]
    assert source.pending_commit() == {0: 7}  # what came after is still to commit
    consumer.callbacks["on_revoke"](consumer, [TopicPartition(TOPIC, 1)])
    consumer.calls.clear()
    source.commit(1000, offsets={0: 3, 1: 12})  # 1 is gone; 0 never goes back to 3
    assert consumer.calls == ["commit [(0, 5)]"]
