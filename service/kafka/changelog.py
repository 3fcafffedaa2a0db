"""The state changelog on kafka-python: `ChangelogWriter` and `ChangelogReader`.

The changelog's layout, and the bookkeeping both clients share (bytes sent, failed
deliveries, reading to the end), are `service.changelog`'s; these are the adapters. The
writer sends a checkpoint's records with a producer of its own and flushes them; the reader
reads partitions from the beginning to their end with a plain consumer (no group, manual
`assign`).

"The end" is the high watermark that fetch responses report, not ``end_offsets()``: the
embedded broker answers ListOffsets(latest) with the start of the last batch plus one, which
falls short of the log end, while the high watermark is right on it and on Apache Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from service.changelog import ChangelogRead, ChangelogReading, ChangelogWriting
from service.config import KafkaSettings, changelog_topic
from service.errors import ChangelogError
from service.kafka.appender import AppendedRun, RecordAppender, runs_by_partition
from service.kafka.records import install as install_plain_records
from service.kafka.security import kafka_python_options
from service.kafka.sink import MAX_BLOCK_MS, close_producer
from service.transport import PartitionRestore

__all__ = ["ChangelogReader", "ChangelogWriter", "PartitionRestore"]

log = logging.getLogger(__name__)

_POLL_MS = 200
_FETCH_BYTES = 32 * 1024 * 1024


def _client_options(settings: KafkaSettings, role: str) -> dict[str, Any]:
    """Bootstrap servers, client id (``<client_id>-<role>``), reconnect backoff, TLS and SASL."""
    return {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": f"{settings.client_id}-{role}",
        "reconnect_backoff_max_ms": int(settings.reconnect_backoff_max * 1000),
        **kafka_python_options(settings),
    }


class ChangelogWriter(ChangelogWriting):
    """Produces state records and tombstones to explicit partitions."""

    def __init__(self, settings: KafkaSettings, producer: Any | None = None) -> None:
        """`producer` replaces the kafka-python producer (tests pass one with the same
        ``send``/``flush``/``close`` methods)."""
        super().__init__(changelog_topic(settings))
        self._producer = (
            producer
            if producer is not None
            else KafkaProducer(
                **_client_options(settings, "changelog"),
                acks="all",
                linger_ms=settings.linger_ms,
                batch_size=1024 * 1024,
                max_request_size=8 * 1024 * 1024,
                # as the sink: a send waits at most 5 s for metadata or buffer space, not
                # kafka-python's 60 s, so an outage fails the checkpoint instead of holding
                # the poll loop (and a SIGTERM) for a minute
                max_block_ms=MAX_BLOCK_MS,
            )
        )
        self._appender = RecordAppender.attach(self._producer, self._run_failed)

    def _produce_all(
        self, partitions: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes | None]
    ) -> None:
        appender, topic = self._appender, self.topic
        try:
            for partition, (run_keys, run_values) in runs_by_partition(
                partitions, keys, values
            ).items():
                if appender is not None and appender.knows(topic, partition):
                    appender.append(topic, partition, run_keys, run_values)
                else:  # send waits for the topic's metadata
                    self._send_each(partition, run_keys, run_values)
        except KafkaError as exc:  # no metadata: the broker is unreachable
            raise ChangelogError(f"cannot send to changelog {topic}: {exc!r}") from exc

    def _send_each(
        self, partition: int, keys: Sequence[bytes], values: Sequence[bytes | None]
    ) -> None:
        send, topic, failed = self._producer.send, self.topic, self._delivery_failed
        for key, value in zip(keys, values, strict=True):
            send(topic, key=key, value=value, partition=partition).add_errback(failed)

    def _run_failed(self, run: AppendedRun, failed: list[tuple[int, BaseException]]) -> None:
        for _, error in failed:
            self._delivery_failed(error)

    def _deliver(self, timeout: float) -> None:
        appender = self._appender
        try:
            if appender is None:
                self._producer.flush(timeout=timeout)
            else:
                appender.flush(timeout)
        except KafkaError as exc:
            raise ChangelogError(
                f"changelog records not acknowledged within {timeout:g} s (broker unreachable?)"
            ) from exc
        finally:
            for run in appender.unconfirmed() if appender is not None else ():
                self._delivery_failed(
                    f"{len(run.keys)} records in a batch the producer split after the broker "
                    "found it too large; delivery unconfirmed"
                )

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is still queued, for up to `timeout` seconds, and close."""
        close_producer(self._producer, timeout, "changelog")


class ChangelogReader(ChangelogReading):
    """Reads changelog partitions to their end with its own group-less consumer."""

    def __init__(self, settings: KafkaSettings, consumer: Any | None = None) -> None:
        """`consumer` replaces the kafka-python consumer (tests pass one with the same
        ``assign``/``seek_to_beginning``/``poll``/``highwater``/``position`` methods)."""
        super().__init__(changelog_topic(settings))
        if consumer is None:
            consumer = KafkaConsumer(
                **_client_options(settings, "restore"),
                group_id=None,
                enable_auto_commit=False,
                max_partition_fetch_bytes=_FETCH_BYTES,
                fetch_max_bytes=_FETCH_BYTES,
                receive_buffer_bytes=4 * 1024 * 1024,
                fetch_max_wait_ms=_POLL_MS,
            )
            install_plain_records(consumer)
        self._consumer = consumer

    def _read_to_end(self, read: ChangelogRead) -> None:
        consumer = self._consumer
        tps = {p: TopicPartition(self.topic, p) for p in read.partitions}
        try:
            consumer.assign(list(tps.values()))
            consumer.seek_to_beginning(*tps.values())
            while read.pending:
                read.check_deadline()
                fetched = consumer.poll(timeout_ms=_POLL_MS, max_records=1_000_000)
                for tp, records in fetched.items():
                    read.add_all(tp.partition, [(r.key, r.value) for r in records])
                for p in sorted(read.pending):
                    high = consumer.highwater(tps[p])
                    if high is not None and consumer.position(tps[p]) >= high:
                        read.reached_end(p)
        except KafkaError as exc:
            raise ChangelogError(f"cannot read changelog {self.topic}: {exc!r}") from exc
        finally:
            consumer.assign([])

    def close(self) -> None:
        """Close the consumer (it belongs to no group: nothing to commit)."""
        self._consumer.close(autocommit=False)
