from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from kafka.partitioner.default import murmur2

from service.tools.replay import ReplayError, encode_reading, replay


class _Future:
    def __init__(self, fail: BaseException | None) -> None:
        self._fail = fail

    def add_errback(self, fn: Any) -> None:
        if self._fail is not None:
            fn(self._fail)


class ListProducer:
    """Records what a `KafkaProducer` would send."""

    def __init__(self, partitions: int = 4, fail_every: int = 0) -> None:
        self.records: list[tuple[str, bytes, bytes, int]] = []
        self.flushed = 0
        self._partitions = partitions
        self._fail_every = fail_every

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self._partitions))

    def send(self, topic: str, value: bytes, key: bytes, partition: int) -> _Future:
        self.records.append((topic, key, value, partition))
        n = len(self.records)
        fail = self._fail_every and n % self._fail_every == 0
        return _Future(RuntimeError("broker said no") if fail else None)

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1


def _readings(n: int, streams: int = 7) -> list[tuple[str, float, dict[str, float]]]:
    return [(f"pump-{i % streams}", 1000.0 + i, {"temp": i * 0.5, "load": -1.0}) for i in range(n)]


def test_encode_reading_is_the_documented_json() -> None:
    raw = encode_reading("pump-17", 1732262400.0, {"temp": 71.2, "vibration": 0.03})
    assert json.loads(raw) == {
        "stream_id": "pump-17",
        "ts": 1732262400.0,
        "values": {"temp": 71.2, "vibration": 0.03},
    }
    assert b" " not in raw  # compact
    assert json.loads(encode_reading('s-é"x', 1.0, [1.0, 2.0]))["stream_id"] == 's-é"x'


def test_every_reading_is_sent_keyed_and_partitioned_like_kafka() -> None:
    producer = ListProducer(partitions=4)
    readings = _readings(2500)
    stats = replay(producer, "in", readings)
    assert stats.sent == 2500 and producer.flushed == 1
    assert [r[0] for r in producer.records] == ["in"] * 2500
    for (sid, ts, values), (_, key, value, partition) in zip(
        readings, producer.records, strict=True
    ):
        assert key == sid.encode()
        assert json.loads(value) == {"stream_id": sid, "ts": ts, "values": values}
        assert partition == (murmur2(key) & 0x7FFFFFFF) % 4


def test_rate_paces_the_sends() -> None:
    producer = ListProducer()
    started = time.monotonic()
    stats = replay(producer, "in", _readings(300), rate=1000.0)
    elapsed = time.monotonic() - started
    # bursts of 20 every 20 ms: the last burst is due at (300 - 20) / 1000 s
    assert elapsed >= 0.28
    assert elapsed < 2.0
    assert stats.sent == 300 and 150 < stats.per_second <= 1100


def test_stop_event_ends_the_replay_early() -> None:
    producer = ListProducer()
    stop = threading.Event()
    sent: list[int] = []

    def on_sent(n: int) -> None:
        sent.append(n)
        if sum(sent) >= 100:
            stop.set()

    stats = replay(producer, "in", _readings(10_000), rate=5000.0, stop=stop, on_sent=on_sent)
    assert stats.sent == sum(sent) == len(producer.records)
    assert 100 <= stats.sent < 200
    assert producer.flushed == 1


def test_delivery_failures_raise_after_flushing() -> None:
    producer = ListProducer(fail_every=10)
    with pytest.raises(
        ReplayError, match="10 of 100 readings to in were not delivered: broker said no"
    ):
        replay(producer, "in", _readings(100))
    assert producer.flushed == 1


def test_rate_must_be_positive() -> None:
    with pytest.raises(ReplayError, match="rate must be positive"):
        replay(ListProducer(), "in", _readings(1), rate=0.0)
