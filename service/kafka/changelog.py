"""The state changelog: one compacted topic holding the latest state of every stream.

Records are keyed by stream id (UTF-8) and hold `StateStore.dump` bytes; an evicted or
expired stream gets a tombstone (no value). A stream's records go to the changelog partition
with the number of the input partition its readings come from, set explicitly rather than by
the producer's key hash, so that restoring input partition p means reading changelog
partition p only, however the input is keyed.

`ChangelogWriter` sends a checkpoint's records and flushes them; `ChangelogReader` reads
partitions from the beginning to their end with a plain consumer (no group, manual
`assign`), keeping the last record per key, as compaction would.

"The end" is the high watermark that fetch responses report, not ``end_offsets()``: the
embedded broker answers ListOffsets(latest) with the start of the last batch plus one, which
falls short of the log end, while the high watermark is right on it and on Apache Kafka.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from service.config import KafkaSettings
from service.errors import ChangelogError
from service.kafka.sink import MAX_BLOCK_MS
from service.kafka.transport import PartitionRestore

__all__ = ["ChangelogReader", "ChangelogWriter", "PartitionRestore", "changelog_topic"]

log = logging.getLogger(__name__)

_POLL_MS = 200
_FETCH_BYTES = 32 * 1024 * 1024


def changelog_topic(settings: KafkaSettings) -> str:
    """The configured changelog topic, ``<group>.state`` by default."""
    return settings.changelog_topic or f"{settings.group_id}.state"


class ChangelogWriter:
    """Produces state records and tombstones to explicit partitions."""

    def __init__(self, settings: KafkaSettings, producer: Any | None = None) -> None:
        """`producer` replaces the kafka-python producer (tests pass one with the same
        ``send``/``flush``/``close`` methods)."""
        self.topic = changelog_topic(settings)
        self._producer = (
            producer
            if producer is not None
            else KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers.split(","),
                client_id=f"{settings.client_id}-changelog",
                acks="all",
                linger_ms=settings.linger_ms,
                batch_size=1024 * 1024,
                max_request_size=8 * 1024 * 1024,
                reconnect_backoff_max_ms=int(settings.reconnect_backoff_max * 1000),
                # as the sink: a send waits at most 5 s for metadata or buffer space, not
                # kafka-python's 60 s, so an outage fails the checkpoint instead of holding
                # the poll loop (and a SIGTERM) for a minute
                max_block_ms=MAX_BLOCK_MS,
            )
        )
        self._errors: list[BaseException] = []

    def send(
        self,
        partitions: Sequence[int],
        keys: Sequence[str],
        values: Sequence[bytes | None],
    ) -> int:
        """Send one record per stream (a None value is a tombstone); return the bytes sent.

        Delivery is confirmed by `flush`.
        """
        send, topic, on_error = self._producer.send, self.topic, self._errors.append
        size = 0
        try:
            for partition, key, value in zip(partitions, keys, values, strict=True):
                future = send(topic, key=key.encode(), value=value, partition=partition)
                future.add_errback(on_error)
                size += len(key) + (len(value) if value is not None else 0)
        except KafkaError as exc:  # the buffer stayed full, or no metadata: broker unreachable
            raise ChangelogError(f"cannot send to changelog {topic}: {exc!r}") from exc
        return size

    def flush(self, timeout: float) -> None:
        """Block until every record sent is acknowledged; `ChangelogError` when one failed or
        time ran out (the caller writes the same streams again at its next checkpoint)."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise ChangelogError(
                f"changelog records not acknowledged within {timeout:g} s (broker unreachable?)"
            ) from exc
        if self._errors:
            first, n = self._errors[0], len(self._errors)
            self._errors = []
            raise ChangelogError(f"{n} changelog records failed delivery; first error: {first}")

    def close(self, timeout: float = 5.0) -> None:
        self._producer.close(timeout=timeout)


class ChangelogReader:
    """Reads changelog partitions to their end with its own group-less consumer."""

    def __init__(self, settings: KafkaSettings, consumer: Any | None = None) -> None:
        self.topic = changelog_topic(settings)
        self._consumer = (
            consumer
            if consumer is not None
            else KafkaConsumer(
                bootstrap_servers=settings.bootstrap_servers.split(","),
                client_id=f"{settings.client_id}-restore",
                group_id=None,
                enable_auto_commit=False,
                max_partition_fetch_bytes=_FETCH_BYTES,
                fetch_max_bytes=_FETCH_BYTES,
                receive_buffer_bytes=4 * 1024 * 1024,
                fetch_max_wait_ms=_POLL_MS,
                reconnect_backoff_max_ms=int(settings.reconnect_backoff_max * 1000),
            )
        )

    def read(self, partitions: Iterable[int], timeout: float) -> list[PartitionRestore]:
        """Every partition in `partitions` read from its beginning to its end.

        Raises `ChangelogError` when that takes longer than `timeout` seconds.
        """
        parts = sorted(set(partitions))
        if not parts:
            return []
        started = time.monotonic()
        deadline = started + timeout
        consumer = self._consumer
        tps = [TopicPartition(self.topic, p) for p in parts]
        latest: dict[int, dict[bytes | None, bytes | None]] = {p: {} for p in parts}
        counts = dict.fromkeys(parts, 0)
        done: dict[int, float] = {}
        try:
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            pending = list(tps)
            while pending:
                if time.monotonic() > deadline:
                    raise ChangelogError(
                        f"changelog {self.topic} partitions "
                        f"{sorted(tp.partition for tp in pending)} not read to their end "
                        f"within {timeout:g} s"
                    )
                fetched = consumer.poll(timeout_ms=_POLL_MS, max_records=1_000_000)
                for tp, records in fetched.items():
                    counts[tp.partition] += len(records)
                    latest[tp.partition].update((r.key, r.value) for r in records)
                still = []
                for tp in pending:
                    high = consumer.highwater(tp)
                    if high is not None and consumer.position(tp) >= high:
                        done[tp.partition] = time.monotonic() - started
                    else:
                        still.append(tp)
                pending = still
        except KafkaError as exc:
            raise ChangelogError(f"cannot read changelog {self.topic}: {exc!r}") from exc
        finally:
            consumer.assign([])
        return [PartitionRestore.fold(p, latest[p], counts[p], done[p]) for p in parts]

    def close(self) -> None:
        self._consumer.close(autocommit=False)
