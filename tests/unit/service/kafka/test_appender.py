"""`RecordAppender` against kafka-python's own accumulator (no broker): the batches it
fills are byte for byte those ``send`` fills, every record of a failed batch is reported
with its own error, and a batch the producer splits is reported once, unconfirmed."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import kafka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer, TopicPartition
from kafka.errors import IllegalStateError, KafkaError
from kafka.producer.record_accumulator import RecordAccumulator
from kafka.record.memory_records import MemoryRecords

from service.kafka.appender import AppendedRun, RecordAppender

TOPIC = "forecasts"
TS = 1_764_650_000_000


class _Sender:
    def __init__(self) -> None:
        self.wakeups = 0

    def wakeup(self) -> None:
        self.wakeups += 1


def _producer(batch_size: int) -> Any:
    """What the appender uses of a KafkaProducer: its accumulator and sender thread."""
    return SimpleNamespace(
        _accumulator=RecordAccumulator(batch_size=batch_size),
        _sender=_Sender(),
        _transaction_manager=None,
    )


def _batches(accumulator: RecordAccumulator, partition: int) -> list[bytes]:
    """The partition's queued batches as the bytes the producer would send."""
    out = []
    for batch in accumulator._batches[TopicPartition(TOPIC, partition)]:
        batch.records.close()
        out.append(bytes(batch.records.buffer()))
    return out


def _read(buffers: list[bytes]) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.key, r.value) for b in buffers for batch in MemoryRecords(b) for r in batch]


_maybe_bytes = st.one_of(st.none(), st.binary(max_size=300))
_runs = st.lists(
    st.lists(st.tuples(st.binary(min_size=1, max_size=40), _maybe_bytes), max_size=30),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(runs=_runs, batch_size=st.sampled_from([200, 1024, 16384]))
def test_batches_are_those_send_fills_byte_for_byte(
    runs: list[list[tuple[bytes, bytes | None]]], batch_size: int
) -> None:
    failures: list[Any] = []
    fast = _producer(batch_size)
    appender = RecordAppender(fast, lambda run, failed: failures.append(failed))
    plain = RecordAccumulator(batch_size=batch_size)
    tp = TopicPartition(TOPIC, 0)
    for i, run in enumerate(runs):
        keys = [k for k, _ in run]
        values = [v for _, v in run]
        appender.append(TOPIC, 0, keys, values, timestamp_ms=TS + 7 * i)
        for key, value in run:
            plain.append(tp, TS + 7 * i, key, value, [])
    assert _batches(fast._accumulator, 0) == _batches(plain, 0)
    assert _read(_batches(fast._accumulator, 0)) == [rec for run in runs for rec in run]
    assert failures == []


def test_the_installed_kafka_python_takes_the_fast_path() -> None:
    # a producer that knows its broker's version needs no broker to be built
    producer = KafkaProducer(bootstrap_servers="127.0.0.1:9", api_version=(2, 8))
    try:
        appender = RecordAppender.attach(producer, lambda run, failed: None)
        assert appender is not None, f"kafka-python {kafka.__version__}: no fast path"
    finally:
        producer.close(timeout=0)


def test_a_test_double_gets_no_appender() -> None:
    double = SimpleNamespace(send=lambda *a, **k: None, flush=lambda **k: None)
    assert RecordAppender.attach(double, lambda run, failed: None) is None


def test_every_record_of_a_failed_batch_is_reported_with_its_own_error() -> None:
    reported: list[tuple[list[bytes | None], list[tuple[int, BaseException]]]] = []

    def failed(run: AppendedRun, errors: list[tuple[int, BaseException]]) -> None:
        reported.append(([run.keys[j] for j, _ in errors], errors))

    producer = _producer(16384)
    appender = RecordAppender(producer, failed)
    appender.append(TOPIC, 2, [b"a", b"b"], [b"1", b"2"])
    appender.append(TOPIC, 2, [b"c", b"d", b"e"], [b"3", b"4", None])  # same batch
    (batch,) = producer._accumulator._batches[TopicPartition(TOPIC, 2)]
    errors = {i: KafkaError(f"record {i}") for i in range(5)}
    batch.done(top_level_exception=KafkaError("batch"), record_exceptions_fn=errors.__getitem__)

    assert [keys for keys, _ in reported] == [[b"a", b"b"], [b"c", b"d", b"e"]]
    assert [[str(e) for _, e in errs] for _, errs in reported] == [
        ["KafkaError: record 0", "KafkaError: record 1"],
        ["KafkaError: record 2", "KafkaError: record 3", "KafkaError: record 4"],
    ]
    assert appender.unconfirmed() == []


def test_an_acknowledged_batch_reports_nothing() -> None:
    reported: list[Any] = []
    producer = _producer(16384)
    appender = RecordAppender(producer, lambda run, failed: reported.append(failed))
    appender.append(TOPIC, 0, [b"a"], [b"1"])
    (batch,) = producer._accumulator._batches[TopicPartition(TOPIC, 0)]
    producer._accumulator._batches[TopicPartition(TOPIC, 0)].clear()
    producer._accumulator.deallocate(batch)
    batch.complete(42, -1)
    assert reported == []
    assert appender.unconfirmed() == []


def test_a_split_batch_is_unconfirmed_once_and_its_records_go_out_again() -> None:
    producer = _producer(16384)
    accumulator = producer._accumulator
    appender = RecordAppender(producer, lambda run, failed: None)
    keys = [b"s%d" % i for i in range(10)]
    values = [b"v%d" % i for i in range(10)]
    appender.append(TOPIC, 1, keys, values)
    # what the sender does when the broker answers MESSAGE_TOO_LARGE
    queue = accumulator._batches[TopicPartition(TOPIC, 1)]
    batch = queue.popleft()
    batch.records.close()
    accumulator.split_and_reenqueue(batch)
    accumulator.deallocate(batch)
    assert not batch.is_done

    (run,) = appender.unconfirmed()
    assert (list(run.keys), list(run.values)) == (keys, values)
    assert appender.unconfirmed() == []
    assert _read(_batches(accumulator, 1)) == list(zip(keys, values, strict=True))


def test_runs_past_a_full_batch_start_new_ones_and_wake_the_sender() -> None:
    producer = _producer(200)
    appender = RecordAppender(producer, lambda run, failed: None)
    appender.append(TOPIC, 0, [b"k"] * 20, [b"x" * 30] * 20)
    queue = producer._accumulator._batches[TopicPartition(TOPIC, 0)]
    assert len(queue) > 1
    assert producer._sender.wakeups == 1
    assert _read(_batches(producer._accumulator, 0)) == [(b"k", b"x" * 30)] * 20


def test_a_closed_producer_refuses_as_send_does() -> None:
    producer = _producer(1024)
    producer._accumulator.close()
    appender = RecordAppender(producer, lambda run, failed: None)
    with pytest.raises(IllegalStateError):
        appender.append(TOPIC, 0, [b"k"], [b"v"])


def _flushing_producer(batch_size: int) -> Any:
    """`_producer` with ``flush`` as KafkaProducer's: wait for every incomplete batch."""
    producer = _producer(batch_size)
    accumulator = producer._accumulator

    def flush(timeout: float | None = None) -> None:
        accumulator.begin_flush()
        accumulator.await_flush_completion(timeout=timeout)

    producer.flush = flush
    return producer


def test_a_flush_that_meets_a_split_batch_does_not_wait_out_its_timeout() -> None:
    producer = _flushing_producer(16384)
    accumulator = producer._accumulator
    appender = RecordAppender(producer, lambda run, failed: None)
    appender.append(TOPIC, 0, [b"k%d" % i for i in range(4)], [b"v"] * 4)
    queue = accumulator._batches[TopicPartition(TOPIC, 0)]
    batch = queue.popleft()
    batch.records.close()

    def sender() -> None:  # the broker answers MESSAGE_TOO_LARGE; the halves go through
        time.sleep(0.2)
        accumulator.split_and_reenqueue(batch)
        accumulator.deallocate(batch)
        while queue:
            half = queue.popleft()
            half.complete(0, -1)
            accumulator.deallocate(half)

    thread = threading.Thread(target=sender)
    thread.start()
    started = time.monotonic()
    appender.flush(30.0)
    thread.join()
    assert time.monotonic() - started < 5.0
    assert [list(run.keys) for run in appender.unconfirmed()] == [[b"k0", b"k1", b"k2", b"k3"]]


def test_records_sent_after_appended_ones_keep_their_own_outcome_through_a_split() -> None:
    producer = _producer(16384)
    accumulator = producer._accumulator
    tp = TopicPartition(TOPIC, 0)
    appender = RecordAppender(producer, lambda run, failed: None)
    appender.append(TOPIC, 0, [b"a0", b"a1"], [b"v", b"v"])
    sent = [accumulator.append(tp, TS, key, b"v", [])[0] for key in (b"s0", b"s1")]
    batch = accumulator._batches[tp].popleft()
    batch.records.close()
    accumulator.split_and_reenqueue(batch)
    accumulator.deallocate(batch)
    first, second = accumulator._batches[tp]
    first.complete(100, -1)  # a0, a1
    second.complete_exceptionally(KafkaError("refused"), lambda i: KafkaError("refused"))
    assert [future.failed() for future in sent] == [True, True]
