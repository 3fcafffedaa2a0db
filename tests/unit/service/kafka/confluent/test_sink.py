"""The confluent-kafka sink: forecasts keyed by stream, dead letters with headers, delivery
reports for failures only, failed records sent again by flush, a full queue waited out, and
a flush that times out as a SinkError."""

from __future__ import annotations

from typing import Any

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, KafkaException, Message  # noqa: E402

from service.config import KafkaSettings  # noqa: E402
from service.errors import SinkError  # noqa: E402
from service.kafka.confluent.sink import ConfluentSink  # noqa: E402


class FakeProducer:
    """confluent-kafka's `Producer` as the sink uses it: `produce` queues, `flush` (and
    `poll`) deliver the queue, reporting the first `fail_first` records as failed through the
    config's ``on_delivery``; `stuck` leaves everything unacknowledged; the first `full_first`
    produce calls find the queue full."""

    def __init__(
        self, config: dict[str, Any], fail_first: int = 0, stuck: bool = False, full_first: int = 0
    ) -> None:
        self.config = config
        self.sent: list[dict[str, Any]] = []
        self.acked: list[dict[str, Any]] = []
        self._queue: list[dict[str, Any]] = []
        self._fail, self._stuck, self._full = fail_first, stuck, full_first

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if self._full > 0:
            self._full -= 1
            raise BufferError("Local: Queue full")
        record = {"topic": topic, "key": key, "value": value, "partition": partition}
        record["headers"] = headers
        self.sent.append(record)
        self._queue.append(record)

    def _deliver(self) -> None:
        queue, self._queue = self._queue, []
        for r in queue:
            if self._fail > 0:
                self._fail -= 1
                message = Message(
                    topic=r["topic"],
                    partition=r["partition"],
                    key=r["key"],
                    value=r["value"],
                    headers=r["headers"],
                )
                self.config["on_delivery"](KafkaError(KafkaError._MSG_TIMED_OUT), message)
            else:
                self.acked.append(r)

    def poll(self, timeout: float = 0.0) -> int:
        if not self._stuck:
            self._deliver()
        return 0

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        return len(self._queue)


def _sink(**fake: Any) -> tuple[ConfluentSink, FakeProducer]:
    made: list[FakeProducer] = []

    def build(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config, **fake))
        return made[0]

    sink = ConfluentSink(KafkaSettings(output_topic="out", dead_letter_topic="dlq"), build)
    return sink, made[0]


def test_forecasts_and_dead_letters_with_failure_only_delivery_reports() -> None:
    sink, producer = _sink()
    assert producer.config["delivery.report.only.error"] is True
    assert producer.config["acks"] == "all"
    sink.send_forecast("pump-1", b"{}", 3)
    sink.send_forecast("pump-2", b"{}")
    sink.send_dead_letter(b"k", b"raw", [("sensorcast.error.reason", b"not_json")])
    sink.send_dead_letter(None, None, [])
    sink.flush(1.0)
    assert [(r["topic"], r["key"], r["partition"]) for r in producer.acked] == [
        ("out", b"pump-1", 3),
        ("out", b"pump-2", -1),  # any partition: the key's hash
        ("dlq", b"k", -1),
        ("dlq", None, -1),
    ]
    assert producer.acked[2]["headers"] == [("sensorcast.error.reason", b"not_json")]
    assert producer.acked[3]["value"] == b""  # a record needs a key or a value


def test_flush_sends_failed_records_again() -> None:
    sink, producer = _sink(fail_first=2)
    for i in range(3):
        sink.send_forecast(f"s{i}", f"v{i}".encode(), i)
    sink.send_dead_letter(b"bad", b"raw", [("h", b"1")])
    sink.flush(5.0)
    assert len(producer.sent) == 6  # two sent again
    assert sorted((r["key"], r["value"], r["partition"]) for r in producer.acked) == [
        (b"bad", b"raw", -1),
        (b"s0", b"v0", 0),
        (b"s1", b"v1", 1),
        (b"s2", b"v2", 2),
    ]
    resent = producer.sent[4:]
    assert [(r["key"], r["partition"]) for r in resent] == [(b"s0", 0), (b"s1", 1)]


def test_flush_timeout_is_a_sink_error() -> None:
    sink, _ = _sink(stuck=True)
    sink.send_forecast("s", b"v")
    with pytest.raises(SinkError, match=r"1 records not acknowledged within 0\.1 s"):
        sink.flush(0.1)


def test_flush_gives_up_when_deliveries_keep_failing() -> None:
    sink, _ = _sink(fail_first=10**6)
    sink.send_forecast("s", b"v")
    with pytest.raises(SinkError, match="failed delivery and time ran out"):
        sink.flush(0.2)


def test_a_full_queue_is_waited_out() -> None:
    sink, producer = _sink(full_first=3)
    sink.send_forecast("a", b"1", 0)
    sink.send_forecast("b", b"2", 1)
    sink.flush(5.0)
    assert sorted((r["key"], r["value"]) for r in producer.acked) == [(b"a", b"1"), (b"b", b"2")]


HEADERS = [("sensorcast.error.reason", b"oversized"), ("sensorcast.source.offset", b"7")]


def _limited(producer_limit: int, broker_limit: int) -> tuple[ConfluentSink, FakeProducer]:
    """librdkafka refuses a record above its ``message.max.bytes`` in `produce`
    (MSG_SIZE_TOO_LARGE); the broker refuses smaller ones in the delivery report."""
    made: list[FakeProducer] = []

    class Limited(FakeProducer):
        def produce(self, topic: str, value: bytes | None = None, *args: Any, **kw: Any) -> None:
            if len(value or b"") > producer_limit:
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            super().produce(topic, value, *args, **kw)

        def _deliver(self) -> None:
            queue, self._queue = self._queue, []
            for r in queue:
                if len(r["value"] or b"") > broker_limit:
                    message = Message(
                        topic=r["topic"],
                        partition=r["partition"],
                        key=r["key"],
                        value=r["value"],
                        headers=r["headers"],
                    )
                    error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
                    self.config["on_delivery"](error, message)
                else:
                    self.acked.append(r)

    def build(config: dict[str, Any]) -> FakeProducer:
        made.append(Limited(config))
        return made[0]

    sink = ConfluentSink(KafkaSettings(output_topic="out", dead_letter_topic="dlq"), build)
    return sink, made[0]


@pytest.mark.parametrize(
    ("producer_limit", "broker_limit", "kept"),
    [
        (1_100_000, 1 << 30, 5_000_000 // 16),  # refused in produce whole, taken at 1/16
        (1 << 30, 100_000, 5_000_000 // 16 // 16),  # refused on delivery, twice
        (1 << 30, 10, 0),  # only the headers fit
    ],
)
def test_a_refused_dead_letter_is_sent_smaller_and_never_raises(
    producer_limit: int, broker_limit: int, kept: int
) -> None:
    sink, producer = _limited(producer_limit, broker_limit)
    sink.send_dead_letter(b"pump-1", b"v" * 5_000_000, HEADERS)
    sink.send_forecast("pump-2", b"{}")
    sink.flush(2.0)
    letters = [r for r in producer.acked if r["topic"] == "dlq"]
    assert len(letters) == 1 and len(letters[0]["value"]) == kept
    headers = dict(letters[0]["headers"])
    assert headers["sensorcast.dead_letter.truncated"] == b"true"
    assert headers["sensorcast.source.bytes"] == str(5_000_006).encode()
    assert {e.outcome for e in sink.take_dead_letter_events()} == {"shrunk"}
    assert [r["key"] for r in producer.acked if r["topic"] == "out"] == [b"pump-2"]


def test_a_dead_letter_refused_even_empty_is_given_up_and_reported() -> None:
    sink, producer = _limited(1 << 30, -1)  # the broker refuses every dead letter
    sink.send_dead_letter(b"pump-1", b"v" * 5000, HEADERS)
    sink.flush(2.0)
    assert [e.outcome for e in sink.take_dead_letter_events()] == ["shrunk", "shrunk", "lost"]
    assert producer.acked == []
