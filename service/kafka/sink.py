"""The forecast and dead-letter sink on kafka-python: one producer, batched, keyed by stream.

Sends are asynchronous (the producer batches them for ``linger_ms``). Forecasts with an
explicit partition go into the producer's batches a partition's run at a time
(`service.kafka.appender.RecordAppender`); other records, one ``send`` each. A failed
delivery comes back on the producer's I/O thread, through the run's callback or the
future's errback. What is done with
it (kept, sent again by `flush`, a refused dead letter sent smaller) is
`service.delivery.DeliveringSink`'s, the same for both clients.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from service.config import KafkaSettings
from service.delivery import (
    DeliveringSink,
    OutRecord,
    QueueFull,
    RecordRefused,
    max_request_bytes,
)
from service.kafka.appender import AppendedRun, RecordAppender, runs_by_partition
from service.kafka.security import kafka_python_options

__all__ = ["BATCH_BYTES", "MAX_BLOCK_MS", "KafkaSink", "close_producer"]

log = logging.getLogger(__name__)

MAX_BLOCK_MS = 5000  # longest a send waits for buffer space or metadata
# A batch fills to just under 1 MiB, within a broker's default message.max.bytes
# (1,048,588). Against 256 KiB, draining a backlog of 80,000 readings on the embedded broker
# (bench.longstreams, four paired runs) was 3-15% faster over 4 partitions and 5-30% over
# one: a hot partition's forecasts go out in a quarter of the produce requests, and the
# producer wakes its sender thread once per batch queued behind another.
BATCH_BYTES = 960 * 1024
# why a run's records are sent again: the broker found their batch too large and the
# producer split it into batches whose outcome the appender does not see
_SPLIT = KafkaError("batch split by the producer after MESSAGE_TOO_LARGE; delivery unconfirmed")


def _make_producer(settings: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        client_id=settings.client_id,
        acks="all",
        linger_ms=settings.linger_ms,
        batch_size=BATCH_BYTES,
        max_request_size=max_request_bytes(settings),
        reconnect_backoff_max_ms=int(settings.reconnect_backoff_max * 1000),
        max_block_ms=MAX_BLOCK_MS,
        **kafka_python_options(settings),
    )


class KafkaSink(DeliveringSink):
    """Produces forecasts and dead letters with kafka-python."""

    def __init__(self, settings: KafkaSettings, producer: Any | None = None) -> None:
        """`producer` replaces the kafka-python producer (tests pass one with the same
        ``send``/``flush``/``close`` methods)."""
        super().__init__(settings.output_topic, settings.dead_letter_topic, settings.shadow_topic)
        self._producer = producer if producer is not None else _make_producer(settings)
        self._appender = RecordAppender.attach(self._producer, self._run_failed)
        # a record under this goes by the appender; kafka-python refuses one over
        # max_request_size, which ``send`` reports (the margin covers the batch header)
        self._record_limit = max_request_bytes(settings) - 1024

    def _send_many(
        self,
        topic: str,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        partitions: Sequence[int] | None,
    ) -> None:
        """Records with explicit partitions go to the producer's batches a partition's run
        at a time (`RecordAppender`); others, one ``send`` each."""
        appender = self._appender
        if appender is None or partitions is None or not keys:
            super()._send_many(topic, keys, values, partitions)
            return
        for partition, (run_keys, run_values) in runs_by_partition(
            partitions, keys, values
        ).items():
            largest = max(map(len, run_keys)) + max(map(len, run_values))
            if largest < self._record_limit and appender.knows(topic, partition):
                appender.append(topic, partition, run_keys, run_values)
            else:  # send waits for the topic's metadata, or refuses a record too large
                super()._send_many(topic, run_keys, run_values, [partition] * len(run_keys))

    def _run_failed(self, run: AppendedRun, failed: list[tuple[int, BaseException]]) -> None:
        topic, partition = run.topic, run.partition
        for j, error in failed:
            self._delivery_failed(
                OutRecord(topic, run.keys[j], run.values[j], None, partition), error
            )

    def _produce(self, record: OutRecord) -> None:
        topic, key, value, headers, partition = record
        try:
            future = self._producer.send(
                topic, key=key, value=value, headers=headers, partition=partition
            )
        except KafkaTimeoutError as exc:
            raise QueueFull(str(exc)) from exc
        except KafkaError as exc:  # MessageSizeTooLargeError, for one
            raise RecordRefused(repr(exc)) from exc
        future.add_errback(self._delivery_failed, record)

    def _deliver(self, timeout: float) -> int | None:
        appender = self._appender
        try:
            if appender is None:
                self._producer.flush(timeout=timeout)
            else:
                appender.flush(timeout)
        except KafkaError:
            return None  # kafka-python's flush timed out; it does not say how many are left
        finally:
            for run in appender.unconfirmed() if appender is not None else ():
                self._run_failed(run, [(j, _SPLIT) for j in range(len(run.keys))])
        return 0

    def _retriable(self, error: object) -> bool:
        return bool(getattr(error, "retriable", True))

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is still queued, for up to `timeout` seconds, and close."""
        close_producer(self._producer, timeout, "sink")

    @property
    def producer(self) -> Any:
        """The kafka-python producer."""
        return self._producer


def close_producer(producer: KafkaProducer, timeout: float, role: str) -> None:
    """Close a kafka-python producer, delivering what it holds for up to `timeout` seconds.

    kafka-python's ``close`` raises when that time runs out (a broker gone at shutdown);
    what was left is then logged, not raised, as confluent-kafka's sink and changelog
    writer do: the final checkpoint, which waits for the same deliveries, has already
    failed and set the exit status, and the shutdown goes on to close the other clients.
    """
    try:
        producer.close(timeout=timeout)
    except KafkaError as exc:
        log.warning("producer closed with records undelivered client=%s error=%r", role, exc)
