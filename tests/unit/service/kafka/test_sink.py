"""The sink: forecasts keyed by stream, dead letters with headers, and a flush that sends
failed records again until everything is acknowledged (or time runs out)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from kafka.future import Future

from service.config import KafkaSettings
from service.errors import SinkError
from service.kafka.appender import RecordAppender
from service.kafka.sink import KafkaSink, close_producer


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


class SizeLimitedProducer(FakeProducer):
    """A producer whose own limit refuses large records at `send` (kafka-python raises
    MessageSizeTooLargeError there) and a broker that refuses smaller ones on delivery."""

    def __init__(self, producer_limit: int, broker_limit: int) -> None:
        super().__init__()
        self.producer_limit, self.broker_limit = producer_limit, broker_limit

    def send(self, topic: str, **record: Any) -> Future:
        size = len(record.get("value") or b"") + len(record.get("key") or b"")
        if size > self.producer_limit:
            raise MessageSizeTooLargeError(f"{size} bytes is larger than max_request_size")
        return super().send(topic, **record)

    def flush(self, timeout: float | None = None) -> None:
        pending, self._pending = self._pending, []
        for future, entry in pending:
            if len(entry.get("value") or b"") > self.broker_limit:
                future.failure(MessageSizeTooLargeError("the broker refused it"))
            else:
                self.acked.append(entry)
                future.success(None)


HEADERS = [("sensorcast.error.reason", b"oversized"), ("sensorcast.source.offset", b"7")]


@pytest.mark.parametrize(
    ("producer_limit", "broker_limit", "kept"),
    [
        (1 << 20, 1 << 30, 5_000_000 // 16),  # refused at send whole, taken at 1/16
        (1 << 30, 100_000, 5_000_000 // 16 // 16),  # refused on delivery, twice
        (1 << 30, 10, 0),  # only the headers fit
    ],
)
def test_a_refused_dead_letter_is_sent_smaller_and_never_raises(
    producer_limit: int, broker_limit: int, kept: int
) -> None:
    producer = SizeLimitedProducer(producer_limit, broker_limit)
    sink = _sink(producer)
    sink.send_dead_letter(b"pump-1", b"v" * 5_000_000, HEADERS)
    sink.send_forecast("pump-2", b"{}")
    sink.flush(2.0)
    letters = [r for r in producer.acked if r["topic"] == "dlq"]
    assert len(letters) == 1 and len(letters[0]["value"]) == kept
    headers = dict(letters[0]["headers"])
    assert headers["sensorcast.dead_letter.truncated"] == b"true"
    assert headers["sensorcast.source.bytes"] == str(5_000_006).encode()
    assert headers["sensorcast.source.offset"] == b"7"
    events = sink.take_dead_letter_events()
    assert events and {e.outcome for e in events} == {"shrunk"}
    assert [r["key"] for r in producer.acked if r["topic"] == "out"] == [b"pump-2"]


def test_a_dead_letter_refused_even_empty_is_given_up_and_reported() -> None:
    class Refusing(FakeProducer):
        def flush(self, timeout: float | None = None) -> None:
            pending, self._pending = self._pending, []
            for future, entry in pending:
                if entry["topic"] == "dlq":
                    future.failure(TopicAuthorizationFailedError("no write access"))
                else:
                    self.acked.append(entry)
                    future.success(None)

    producer = Refusing()
    sink = _sink(producer)
    sink.send_dead_letter(b"pump-1", b"v" * 5000, HEADERS)
    sink.send_forecast("pump-2", b"{}")
    sink.flush(2.0)  # no SinkError: the forecasts are acknowledged, the letter given up
    outcomes = [e.outcome for e in sink.take_dead_letter_events()]
    assert outcomes == ["shrunk", "shrunk", "lost"]  # 5,000 bytes, then 312, then none
    assert sink.take_dead_letter_events() == []


def test_a_forecast_refused_is_still_sent_again() -> None:
    producer = FakeProducer(fail_first=1)
    sink = _sink(producer)
    sink.send_forecast("pump-2", b"{}")
    sink.flush(2.0)
    assert [r["key"] for r in producer.acked] == [b"pump-2"]
    assert sink.take_dead_letter_events() == []


def test_a_dead_letter_refused_on_its_resend_is_sent_smaller_not_retried_forever() -> None:
    class LeaderMovesThenLimitShrinks(FakeProducer):
        """The first delivery fails with a retriable error; by the resend the producer's
        limit has dropped below the record (a reconfigured client, a smaller batch)."""

        def __init__(self) -> None:
            super().__init__(fail_first=1)
            self.limit = 1 << 30

        def send(self, topic: str, **record: Any) -> Future:
            if len(record.get("value") or b"") > self.limit:
                raise MessageSizeTooLargeError("over max_request_size")
            future = super().send(topic, **record)
            self.limit = 100_000
            return future

    producer = LeaderMovesThenLimitShrinks()
    sink = _sink(producer)
    sink.send_dead_letter(b"pump-1", b"v" * 500_000, HEADERS)
    sink.flush(2.0)
    (letter,) = producer.acked
    assert len(letter["value"]) == 500_000 // 16
    assert [e.outcome for e in sink.take_dead_letter_events()] == ["shrunk"]


def test_closing_with_records_no_broker_took_logs_them_and_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker gone at shutdown: kafka-python's ``close`` raises when its time runs out;
    the sink's close says so in a warning and returns, so the shutdown closes the rest."""
    producer = KafkaProducer(bootstrap_servers="127.0.0.1:9", api_version=(2, 8))
    appender = RecordAppender.attach(producer, lambda run, failed: None)
    assert appender is not None
    appender.append("forecasts", 0, [b"pump-1"], [b'{"stream_id":"pump-1"}'])
    with pytest.raises(KafkaTimeoutError):
        producer.flush(timeout=0.2)  # what kafka-python's close does first
    close_producer(producer, 0.2, "sink")
    assert any(
        "records undelivered client=sink" in r.getMessage() and r.levelname == "WARNING"
        for r in caplog.records
    )
