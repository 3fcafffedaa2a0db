"""Many records into one partition of a kafka-python producer, in one pass.

`KafkaProducer.send` does a record's work one record at a time: it checks the arguments,
looks up the topic's metadata, picks the partition, estimates the size, takes the
partition's lock, encodes the record with a varint per field, and makes a future (with a
lock of its own) that the I/O thread resolves on the acknowledgement. For a micro-batch of
forecasts that is most of the service's time on kafka-python. `RecordAppender` writes a
run of records bound for one partition into the producer's own batches under one lock
acquisition: the records are encoded exactly as kafka-python's `DefaultRecordBatchBuilder`
encodes them (record format v2, no headers), and each batch they land in reports its
outcome once, to one callback, instead of once per record. Everything after the append is
the producer's: linger, the sender thread, retries, idempotent sequence numbers, CRCs,
compression, `flush`.

This reaches into kafka-python's accumulator. `RecordAppender.attach` checks that the
producer has the parts it uses and returns None otherwise (another kafka-python version, a
test double), so callers fall back to ``send``; a test asserts that the installed
kafka-python takes the fast path.

A batch that the broker refuses as too large is split by the producer and sent again as
new batches that this module does not see; the records of such a batch are reported by
`RecordAppender.unconfirmed`, to be sent again (at least once). The split pairs the i-th
record of a batch with the i-th entry of the batch's record futures, so each appended record
holds a place there (`_NoFuture`), and records that ``send`` adds to the same batch keep
their own futures. Nothing answers the split batch itself, so `RecordAppender.flush` waits
for the producer in slices: a flush that met a split does not wait out its whole timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, TypeVar

from kafka import TopicPartition
from kafka.errors import IllegalStateError, KafkaError
from kafka.producer.producer_batch import ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint

__all__ = ["AppendedRun", "RecordAppender", "runs_by_partition"]


def _varint(n: int) -> bytes:
    """`n` as Kafka's zig-zag varint."""
    out = bytearray()
    encode_varint(n, out.append)
    return bytes(out)


_SMALL = 1 << 14
_VARINTS = [_varint(n) for n in range(_SMALL)]  # lengths and offset deltas are nearly all small
_NULL = _varint(-1)  # the length of a missing key or value
_NO_HEADERS = b"\x00"
_ATTRIBUTES = b"\x00"


_FLUSH_SLICE = 0.5  # seconds: the longest one producer flush call may wait on a split batch


class _NoFuture:
    """An appended record's place among its batch's record futures; a split moves it to
    the new batch (``rebind``), where it waits for nothing."""

    __slots__ = ()

    def rebind(self, new_produce_future: object, new_batch_index: int) -> None:
        """Nothing: the appender learns of the split from `RecordAppender.unconfirmed`."""


_NO_FUTURE = _NoFuture()


def _vi(n: int) -> bytes:
    return _VARINTS[n] if 0 <= n < _SMALL else _varint(n)


V = TypeVar("V", bound=bytes | None)


def runs_by_partition(
    partitions: Sequence[int], keys: Sequence[bytes], values: Sequence[V]
) -> dict[int, tuple[list[bytes], list[V]]]:
    """The records split into one run per partition, each in its records' order."""
    runs: dict[int, tuple[list[bytes], list[V]]] = {}
    for partition, key, value in zip(partitions, keys, values, strict=True):
        run = runs.get(partition)
        if run is None:
            run = runs[partition] = ([], [])
        run[0].append(key)
        run[1].append(value)
    return runs


@dataclass(frozen=True, slots=True)
class AppendedRun:
    """Records ``[start, stop)`` of one `RecordAppender.append` call, all in one batch."""

    topic: str
    partition: int
    keys: Sequence[bytes | None]
    values: Sequence[bytes | None]
    batch: ProducerBatch
    first_index: int  # the first record's index within the batch


# Called from the producer's I/O thread with a run and, per failed record, its position in
# the run and the error.
RunFailed = Callable[[AppendedRun, list[tuple[int, BaseException]]], None]


def _supported(producer: Any) -> bool:
    """Whether `producer` has the kafka-python internals the appender uses."""
    accumulator = getattr(producer, "_accumulator", None)
    config = getattr(accumulator, "config", None)
    if accumulator is None or not isinstance(config, dict):
        return False
    needed = ("_batches", "_tp_lock", "_incomplete", "_appends_in_progress", "_closed")
    if not all(hasattr(accumulator, name) for name in needed):
        return False
    if config.get("message_version") != 2:
        return False
    if not (hasattr(producer, "_sender") and hasattr(producer, "_metadata")):
        return False
    manager = getattr(producer, "_transaction_manager", None)
    if manager is not None and manager.is_transactional():
        return False  # a transaction must learn each partition it writes to
    probe = MemoryRecordsBuilder(2, 0, 1024)
    builder = getattr(probe, "_builder", None)
    fields = ("_buffer", "_first_timestamp", "_max_timestamp", "_num_records", "_last_offset")
    return all(hasattr(builder, name) for name in fields) and hasattr(probe, "_next_offset")


class RecordAppender:
    """Appends runs of records to one kafka-python producer's batches; see the module."""

    def __init__(self, producer: Any, on_failed: RunFailed) -> None:
        """Use `attach`, which checks the producer first."""
        self._producer = producer
        self._accumulator = producer._accumulator
        config = self._accumulator.config
        self._compression = config["compression_attrs"]
        self._batch_bytes = int(config["batch_size"])
        self._on_failed = on_failed
        self._lock = threading.Lock()
        self._open: dict[int, AppendedRun] = {}  # runs whose batch is not yet answered

    @classmethod
    def attach(cls, producer: Any, on_failed: RunFailed) -> RecordAppender | None:
        """An appender for `producer`, or None when it lacks the parts the appender uses."""
        return cls(producer, on_failed) if _supported(producer) else None

    def knows(self, topic: str, partition: int) -> bool:
        """Whether the producer's metadata has `partition` of `topic` (else use ``send``,
        which waits for it)."""
        partitions = self._producer._metadata.partitions_for_topic(topic)
        return partitions is not None and partition in partitions

    def append(
        self,
        topic: str,
        partition: int,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue ``keys[i], values[i]`` to `partition` of `topic`, in order, as records
        without headers, stamped `timestamp_ms` (None: now). The caller checks `knows`
        first and keeps each record within the producer's ``max_request_size``.

        Raises kafka-python's `IllegalStateError` once the producer is closed, as ``send``
        does."""
        accumulator = self._accumulator
        if accumulator._closed:
            raise IllegalStateError("the producer is closed")
        tp = TopicPartition(topic, partition)
        now = time.monotonic()
        timestamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        wake = False
        i, n = 0, len(keys)
        accumulator._appends_in_progress.increment()
        try:
            with accumulator._tp_lock(tp):
                queue = accumulator._batches[tp]
                batch = queue[-1] if queue else None
                while i < n:
                    if batch is None or batch.records._closed:
                        if accumulator._closed:  # closed meanwhile: no batch nobody sends
                            raise IllegalStateError("the producer is closed")
                        records = MemoryRecordsBuilder(2, self._compression, self._batch_bytes)
                        batch = ProducerBatch(tp, records, now=now)
                        queue.append(batch)
                        accumulator._incomplete.add(batch)
                        wake = True
                    start = i
                    first_index = batch.records._next_offset
                    i = self._fill(batch, keys, values, i, timestamp, now)
                    if i > start:
                        run = AppendedRun(
                            topic, partition, keys[start:i], values[start:i], batch, first_index
                        )
                        self._watch(run)
                    if i < n:
                        batch = None  # full: the rest goes to a new batch
                full = batch is None or batch.records.is_full()
                wake = wake or full or len(queue) > 1
        finally:
            accumulator._appends_in_progress.decrement()
        if wake:
            self._producer._sender.wakeup()

    @staticmethod
    def _fill(
        batch: ProducerBatch,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        i: int,
        timestamp: int,
        now: float,
    ) -> int:
        """Encode records from `i` on into `batch` until it is full; return the next `i`.
        The bytes are those of `DefaultRecordBatchBuilder.append` (record format v2)."""
        records = batch.records
        builder = records._builder
        first_timestamp = builder._first_timestamp
        delta = _vi(0 if first_timestamp is None else timestamp - first_timestamp)
        offset = records._next_offset
        room = builder._batch_size - len(builder._buffer)
        first = builder._num_records == 0
        largest = batch.max_record_size
        parts: list[bytes] = []
        n = len(keys)
        start = i
        while i < n:
            key, value = keys[i], values[i]
            body = b"".join(
                (
                    _ATTRIBUTES,
                    delta,
                    _vi(offset),
                    _NULL if key is None else _vi(len(key)),
                    b"" if key is None else key,
                    _NULL if value is None else _vi(len(value)),
                    b"" if value is None else value,
                    _NO_HEADERS,
                )
            )
            record = _vi(len(body)) + body
            size = len(record)
            if size > room and not (first and i == start):
                break
            room -= size
            parts.append(record)
            largest = max(largest, size)
            offset += 1
            i += 1
        if i == start:
            return i
        if first_timestamp is None:
            builder._first_timestamp = builder._max_timestamp = timestamp
        elif builder._max_timestamp < timestamp:
            builder._max_timestamp = timestamp
        builder._buffer += b"".join(parts)
        batch._record_futures.extend(repeat(_NO_FUTURE, i - start))
        builder._num_records += i - start
        builder._last_offset = offset - 1
        records._next_offset = offset
        batch.max_record_size = largest
        batch.last_append = now
        return i

    def _watch(self, run: AppendedRun) -> None:
        key = id(run)
        with self._lock:
            self._open[key] = run
        run.batch.produce_future.add_both(self._answered, key)

    def _answered(self, key: int, outcome: Any) -> None:
        """The batch of run `key` is answered (on the I/O thread): `outcome` is the
        producer's ``(base_offset, timestamp, record_error)``, or an exception."""
        with self._lock:
            run = self._open.pop(key, None)
        if run is None:
            return
        if isinstance(outcome, BaseException):
            failed = [(j, outcome) for j in range(len(run.keys))]
        else:
            record_error = outcome[2]
            if record_error is None:
                return
            failed = [(j, record_error(run.first_index + j)) for j in range(len(run.keys))]
        self._on_failed(run, failed)

    def flush(self, timeout: float) -> None:
        """The producer's ``flush``, in calls of at most half a second until everything is
        answered or `timeout` seconds have passed (then the producer's `KafkaError` is
        raised): a call that waits on a batch the producer split would otherwise wait for
        all of `timeout`. Afterwards, `unconfirmed` names any split runs."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                self._producer.flush(timeout=max(0.0, min(_FLUSH_SLICE, left)))
                return
            except KafkaError:
                if time.monotonic() >= deadline:
                    raise

    def unconfirmed(self) -> list[AppendedRun]:
        """Runs whose batch left the producer without an answer: it was split (the broker
        found it too large) and its records went out in batches this appender does not
        watch. Their delivery is unknown; send them again. Each is returned once."""
        incomplete = set(self._accumulator._incomplete.all())
        with self._lock:
            gone = [
                key
                for key, run in self._open.items()
                if not run.batch.produce_future.is_done and run.batch not in incomplete
            ]
            return [self._open.pop(key) for key in gone]
