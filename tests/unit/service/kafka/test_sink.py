"""The sink: forecasts keyed by stream, dead letters with headers, and a flush that sends
failed records again until everything is acknowledged (or time runs out)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, NotLeaderForPartitionError
from kafka.future import Future

from service.config import KafkaSettings
from service.errors import SinkError
from service.kafka.sink import KafkaSink


class FakeProducer:
    """Records sends; the first `fail_first` deliveries fail when flushed, and the first
    `full_first` sends find the buffer full."""

    def __init__(
        self, fail_first: int = 0, flush_times_out: bool = False, full_first: int = 0
    ) -> None:
        self.sent: list[dict[str, Any]] = []
        self.acked: list[dict[str, Any]] = []
        self._pending: list[tuple[Future, dict[str, Any]]] = []
        self._fail = fail_first
        self._flush_times_out = flush_times_out
        self._full = full_first

    def send(self, topic: str, **record: Any) -> Future:
        if self._full > 0:
            self._full -= 1
            raise KafkaTimeoutError("buffer full")
        future = Future()
        entry = {"topic": topic, **record}
        self.sent.append(entry)
        self._pending.append((future, entry))
        return future

    def flush(self, timeout: float | None = None) -> None:
        if self._flush_times_out:
            raise KafkaTimeoutError("flush timed out")
        pending, self._pending = self._pending, []
        for future, entry in pending:
            if self._fail > 0:
                self._fail -= 1
                future.failure(NotLeaderForPartitionError("leader moved"))
            else:
                self.acked.append(entry)
                future.success(None)

    def close(self, timeout: float | None = None) -> None:
        pass


def _sink(producer: FakeProducer) -> KafkaSink:
    return KafkaSink(KafkaSettings(output_topic="out", dead_letter_topic="dlq"), producer=producer)


def test_forecasts_and_dead_letters() -> None:
    producer = FakeProducer()
    sink = _sink(producer)
    sink.send_forecast("pump-1", b"{}", 3)
    sink.send_forecast("pump-2", b"{}")
    sink.send_dead_letter(b"k", b"raw", [("sensorcast.error.reason", b"not_json")])
    sink.send_dead_letter(None, None, [])
    sink.flush(1.0)
    assert [(r["topic"], r["key"], r["partition"]) for r in producer.acked] == [
        ("out", b"pump-1", 3),
        ("out", b"pump-2", None),
        ("dlq", b"k", None),
        ("dlq", None, None),
    ]
    assert producer.acked[2]["headers"] == [("sensorcast.error.reason", b"not_json")]
    assert producer.acked[3]["value"] == b""  # a record needs a key or a value


def test_flush_sends_failed_records_again() -> None:
    producer = FakeProducer(fail_first=2)
    sink = _sink(producer)
    for i in range(3):
        sink.send_forecast(f"s{i}", f"v{i}".encode(), i)
    sink.flush(5.0)
    assert len(producer.sent) == 5  # two sent again
    assert sorted((r["key"], r["value"], r["partition"]) for r in producer.acked) == [
        (b"s0", b"v0", 0),
        (b"s1", b"v1", 1),
        (b"s2", b"v2", 2),
    ]


def test_flush_timeout_is_a_sink_error() -> None:
    sink = _sink(FakeProducer(flush_times_out=True))
    sink.send_forecast("s", b"v")
    with pytest.raises(SinkError, match="not acknowledged"):
        sink.flush(0.1)


def test_flush_gives_up_when_deliveries_keep_failing() -> None:
    sink = _sink(FakeProducer(fail_first=10**6))
    sink.send_forecast("s", b"v")
    with pytest.raises(SinkError, match="failed delivery"):
        sink.flush(0.2)


def test_a_send_refused_for_a_full_buffer_is_kept_for_the_flush() -> None:
    producer = FakeProducer(full_first=1)
    sink = _sink(producer)
    sink.send_forecast("a", b"1", 0)
    sink.send_forecast("b", b"2", 1)
    sink.flush(5.0)
    assert sorted((r["key"], r["value"]) for r in producer.acked) == [(b"a", b"1"), (b"b", b"2")]
