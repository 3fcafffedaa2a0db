"""Publish readings to the input topic: keyed by stream id, JSON per DESIGN.md section 3.

`replay` sends as fast as the producer takes them, or paced to a rate: the readings go out
in small bursts (one per 20 ms) so the producer still fills whole batches, and a burst is
held back until the clock says it is due. Delivery errors are counted through the send
futures and raise `ReplayError` at the end, after everything else was flushed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

import pydantic_core

from service.errors import SensorcastError

if TYPE_CHECKING:
    from service.config import KafkaSettings

__all__ = ["ReplayError", "ReplayStats", "encode_reading", "make_producer", "replay"]

log = logging.getLogger(__name__)

_TICK = 0.02  # seconds between paced bursts


class ReplayError(SensorcastError):
    """Readings could not be delivered to the broker; the message says how many and why."""


class Producer(Protocol):
    """What `replay` needs of a producer (kafka-python's `KafkaProducer` fits)."""

    def send(
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        partition: int | None = ...,
    ) -> Any: ...
    def flush(self, timeout: float | None = ...) -> None: ...
    def partitions_for(self, topic: str) -> set[int]: ...


@dataclass(frozen=True)
class ReplayStats:
    """How many readings a replay sent and in how many seconds (monotonic clock)."""

    sent: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Readings sent per second (0 when no time passed)."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def encode_reading(stream_id: str, ts: float, values: dict[str, float] | list[float]) -> bytes:
    """``{"stream_id": ..., "ts": ..., "values": {...}}`` as compact UTF-8 JSON."""
    return pydantic_core.to_json({"stream_id": stream_id, "ts": ts, "values": values})


def make_producer(kafka: KafkaSettings, **overrides: Any) -> Any:
    """A kafka-python producer on `kafka`'s bootstrap servers, TLS and SASL settings, tuned
    for throughput: large batches, a short linger. `overrides` are kafka-python options."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from service.kafka.probe import refusal, tls_preflight, unreachable
    from service.kafka.security import kafka_python_options

    refused = tls_preflight(kafka)
    if refused is not None:
        raise ReplayError(refusal(kafka, refused))
    config: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "client_id": "sensorcast-replay",
        "linger_ms": 10,
        "batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        **kafka_python_options(kafka),
    }
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise ReplayError(unreachable(kafka, exc)) from exc


class _KeyPartitioner:
    """Kafka's default key partitioning (murmur2), computed once per stream id.

    The same partition the producer would pick itself, without hashing every record again.
    """

    def __init__(self, partitions: list[int]) -> None:
        if not partitions:
            raise ReplayError("the topic has no partitions")
        self._partitions = partitions
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        partition = self._cache.get(key)
        if partition is None:
            from kafka.partitioner.default import murmur2

            index = (murmur2(key) & 0x7FFFFFFF) % len(self._partitions)
            partition = self._cache[key] = self._partitions[index]
        return partition


class _Failures:
    def __init__(self) -> None:
        self.count = 0
        self.first: BaseException | None = None

    def __call__(self, exc: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = exc


def replay(
    producer: Producer,
    topic: str,
    readings: Iterable[tuple[str, float, dict[str, float]]],
    *,
    rate: float | None = None,
    stop: threading.Event | None = None,
    on_sent: Callable[[int], None] | None = None,
    flush_timeout: float = 60.0,
) -> ReplayStats:
    """Send every reading (or until `stop` is set) and flush; return how many and how fast.

    `rate` is readings per second (None: as fast as possible). `on_sent(n)` is called after
    each burst of n readings (a progress bar's ``update``).
    """
    if rate is not None and rate <= 0:
        raise ReplayError(f"rate must be positive, got {rate}")
    from kafka.errors import KafkaError

    failures = _Failures()
    burst = max(1, round(rate * _TICK)) if rate else 1000
    partition_of = _partitioner(producer, topic)
    sent = 0
    started = time.monotonic()
    it = iter(readings)
    try:
        while stop is None or not stop.is_set():
            n = _send_burst(producer, topic, islice(it, burst), partition_of, failures)
            if not n:
                break
            sent += n
            if on_sent is not None:
                on_sent(n)
            if rate:
                _pace(started, sent, rate, stop)
    except KafkaError as exc:  # the broker went away: the send buffer filled and timed out
        raise ReplayError(f"sending to {topic} failed after {sent} readings: {exc}") from exc
    finally:
        try:
            producer.flush(timeout=flush_timeout)
        except KafkaError as exc:
            raise ReplayError(f"readings to {topic} not acknowledged in time: {exc}") from exc
    seconds = time.monotonic() - started
    if failures.count:
        raise ReplayError(
            f"{failures.count} of {sent} readings to {topic} were not delivered: {failures.first}"
        )
    log.debug(
        "replay done topic=%s sent=%d seconds=%.2f per_second=%.0f",
        topic,
        sent,
        seconds,
        sent / seconds if seconds else 0.0,
    )
    return ReplayStats(sent, seconds)


def _partitioner(producer: Producer, topic: str) -> _KeyPartitioner:
    """Kafka's key partitioning over the partitions of `topic`."""
    from kafka.errors import KafkaError

    try:
        return _KeyPartitioner(sorted(producer.partitions_for(topic)))
    except KafkaError as exc:
        raise ReplayError(f"cannot find the partitions of topic {topic}: {exc}") from exc


def _send_burst(
    producer: Producer,
    topic: str,
    readings: Iterable[tuple[str, float, dict[str, float]]],
    partition_of: _KeyPartitioner,
    failures: _Failures,
) -> int:
    """Hand `readings` to the producer, keyed by stream id; return how many. A failed
    delivery is counted in `failures` when its future fails."""
    send = producer.send
    n = 0
    for stream_id, ts, values in readings:
        key = stream_id.encode()
        future = send(
            topic,
            value=encode_reading(stream_id, ts, values),
            key=key,
            partition=partition_of(key),
        )
        future.add_errback(failures)
        n += 1
    return n


def _pace(started: float, sent: int, rate: float, stop: threading.Event | None) -> None:
    """Wait until `sent` readings are due at `rate` per second from `started` (monotonic
    seconds); a set `stop` ends the wait early."""
    wait = started + sent / rate - time.monotonic()
    if wait <= 0:
        return
    if stop is not None:
        stop.wait(wait)
    else:
        time.sleep(wait)
