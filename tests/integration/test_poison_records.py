"""Records that must never stop the service, nor silence a stream, on both clients:

- readings too large to copy whole to the dead-letter topic, just above and far above every
  size limit involved (the service's ``kafka.max_message_bytes``, 1 MiB: kafka-python's and
  librdkafka's default request and fetch sizes and Kafka's default ``message.max.bytes``,
  and the consumers' 50 MiB ``fetch.max.bytes``): dead-lettered as their first bytes, with
  their original size, and the stream goes on;
- one timestamp far ahead of a stream's clock: ahead of the wall clock it is refused; in a
  replay of old readings, the stream recovers once readings continue its clock;
- readings without a key, and a stream's readings arriving on a second partition;
- values far outside the model's training range;
- a mixed batch in which every record ends as exactly one of: a forecast, a dead letter, a
  counted drop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from service.codec import (
    HEADER_REASON,
    HEADER_SOURCE_BYTES,
    HEADER_SOURCE_OFFSET,
    HEADER_TRUNCATED,
)
from service.testing import SENSOR_RANGES
from tests.conftest import KafkaKit
from tests.integration.servicekit import CLIENTS, RunningService, reading, serving

GOOD = {"temp": 21.5, "pressure": 101.2, "vibration": 0.4}
PERIOD = 300.0
DEAD_LETTER_MAX = 262_144  # the default kafka.dead_letter_max_bytes


@pytest.fixture(scope="module", params=CLIENTS)
def served(
    broker: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[RunningService, KafkaKit]]:
    with serving(
        broker,
        Path(tmp_path_factory.mktemp("models")),
        f"poison-{request.param}",
        feature_ranges=SENSOR_RANGES,
        **{"kafka.max_wait_ms": 20, "kafka.client": request.param, "log.drop_interval": 0.01},
    ) as served:
        yield served


def _letters_of(kit: KafkaKit, topic: str, key: bytes, n: int) -> list[object]:
    return [
        r
        for r in kit.consume_until(
            topic, lambda rs: sum(r.key == key for r in rs) >= n, timeout=60.0
        )
        if r.key == key
    ]


def _forecasts_of(kit: KafkaKit, topic: str, sid: str, n: int) -> list[dict[str, object]]:
    records = kit.consume_until(
        topic, lambda rs: sum(r.key == sid.encode() for r in rs) >= n, timeout=60.0
    )
    return [json.loads(r.value) for r in records if r.key == sid.encode()]


# -- 1. records too large to dead-letter whole --------------------------------------------

SIZES = {
    "above-max-message-bytes": 65_536 + 1,
    "above-1MiB": (1 << 20) + 1,
    "5MB": 5_000_000,
    "above-fetch-max-bytes": 52_428_800 + 1,
}


def test_records_too_large_to_copy_whole_are_dead_lettered_cut_and_the_stream_goes_on(
    served: tuple[RunningService, KafkaKit],
) -> None:
    svc, kit = served
    k = svc.settings.kafka
    sid = "big-1"
    producer = KafkaProducer(bootstrap_servers=kit.bootstrap, max_request_size=64 << 20)
    sent: list[bytes] = []
    try:
        for i, size in enumerate(SIZES.values()):
            head = reading(sid, 1_700_000_000.0 + 2 * i * PERIOD, GOOD)[:-1]
            big = head + b', "note": "' + b"x" * (size - len(head) - 13) + b'"}'
            assert len(big) == size
            sent.append(big)
            good = reading(sid, 1_700_000_000.0 + (2 * i + 1) * PERIOD, GOOD)
            producer.send(k.input_topic, key=sid.encode(), value=big, partition=0)
            producer.send(k.input_topic, key=sid.encode(), value=good, partition=0)
        producer.flush()
    finally:
        producer.close()

    letters = _letters_of(kit, k.dead_letter_topic, sid.encode(), len(SIZES))
    assert len(letters) == len(SIZES)
    for letter, original in zip(letters, sent, strict=True):
        headers = dict(letter.headers)  # type: ignore[attr-defined]
        assert headers[HEADER_REASON] == b"oversized"
        value = letter.value  # type: ignore[attr-defined]
        if len(original) + len(sid) <= DEAD_LETTER_MAX:
            assert value == original
        else:
            assert headers[HEADER_TRUNCATED] == b"true"
            assert int(headers[HEADER_SOURCE_BYTES]) == len(original) + len(sid)
            assert 0 < len(value) < DEAD_LETTER_MAX and original.startswith(value)
    forecasts = _forecasts_of(kit, k.output_topic, sid, len(SIZES))
    assert [f["ts"] for f in forecasts] == [
        1_700_000_000.0 + (2 * i + 1) * PERIOD for i in range(len(SIZES))
    ]
    assert svc.metric("sensorcast_dead_letter_truncations_total") >= len(SIZES) - 1
    assert svc.metric("sensorcast_dead_letter_failures_total") == 0
    assert svc.ready()


# -- 2. one bad timestamp ---------------------------------------------------------------


def test_a_reading_hours_ahead_of_the_clock_is_refused_and_its_stream_goes_on(
    served: tuple[RunningService, KafkaKit],
) -> None:
    svc, kit = served
    k = svc.settings.kafka
    sid = "replay-yesterday"
    start = (time.time() // PERIOD) * PERIOD - 86_400.0
    records = [(sid, reading(sid, start + i * PERIOD, GOOD)) for i in range(5)]
    records.append((sid, reading(sid, time.time() + 20 * 3600.0, GOOD)))  # clock fault
    records += [(sid, reading(sid, start + i * PERIOD, GOOD)) for i in range(5, 10)]
    kit.produce(k.input_topic, records, partition=1)
    (letter,) = _letters_of(kit, k.dead_letter_topic, sid.encode(), 1)
    assert dict(letter.headers)[HEADER_REASON] == b"future_timestamp"  # type: ignore[attr-defined]
    forecasts = _forecasts_of(kit, k.output_topic, sid, 10)
    assert [f["ts"] for f in forecasts] == [start + i * PERIOD for i in range(10)]


def test_a_stream_recovers_after_one_timestamp_years_ahead_in_a_replay(
    served: tuple[RunningService, KafkaKit], caplog: pytest.LogCaptureFixture
) -> None:
    svc, kit = served
    k = svc.settings.kafka
    sid = "replay-2023"
    start = 1_700_000_000.0
    jumped = start + 2 * 365 * 86_400.0  # in the past of the wall clock, years ahead of its own
    ts = [start + i * PERIOD for i in range(5)] + [jumped]
    ts += [start + i * PERIOD for i in range(5, 12)]
    before = svc.metric("sensorcast_clock_resets_total")
    late = svc.metric("sensorcast_drops_total", {"reason": "late"})
    with caplog.at_level(logging.INFO, logger="service.drops"):
        kit.produce(k.input_topic, [(sid, reading(sid, t, GOOD)) for t in ts], partition=2)
        forecasts = _forecasts_of(kit, k.output_topic, sid, len(ts) - 1)
    # the reading after the jump continues the old clock and is dropped as late, the next
    # one sets the clock back: every later reading is forecast again
    assert [f["ts"] for f in forecasts] == ts[:6] + ts[7:]
    assert svc.metric("sensorcast_clock_resets_total") == before + 1
    assert svc.metric("sensorcast_drops_total", {"reason": "late"}) == late + 1
    lines = [r.getMessage() for r in caplog.records if "reason=late" in r.getMessage()]
    assert any(f"stream={sid}" in line for line in lines)


# -- 3. a stream's readings on more than one partition ----------------------------------


def test_a_keyless_reading_is_dead_lettered_with_its_own_reason(
    served: tuple[RunningService, KafkaKit],
) -> None:
    svc, kit = served
    k = svc.settings.kafka
    sid = "keyless-1"
    before = svc.metric("sensorcast_rejects_total", {"reason": "missing_key"})
    kit.produce(
        k.input_topic, [(None, reading(sid, 1_700_000_000.0 + i * PERIOD, GOOD)) for i in range(8)]
    )
    letters = kit.consume_until(
        k.dead_letter_topic,
        lambda rs: sum(sid.encode() in (r.value or b"") for r in rs) >= 8,
        timeout=30.0,
    )
    mine = [r for r in letters if sid.encode() in (r.value or b"")]
    assert {dict(r.headers)[HEADER_REASON] for r in mine} == {b"missing_key"}
    assert svc.metric("sensorcast_rejects_total", {"reason": "missing_key"}) == before + 8


def test_a_stream_seen_on_a_second_partition_is_reported_not_applied(
    served: tuple[RunningService, KafkaKit],
) -> None:
    svc, kit = served
    k = svc.settings.kafka
    sid = "split-1"
    ts = [1_700_000_000.0 + i * PERIOD for i in range(5)]
    kit.produce(k.input_topic, [(sid, reading(sid, t, GOOD)) for t in ts[:3]], partition=0)
    _forecasts_of(kit, k.output_topic, sid, 3)
    kit.produce(k.input_topic, [(sid, reading(sid, ts[3], GOOD))], partition=3)
    (letter,) = _letters_of(kit, k.dead_letter_topic, sid.encode(), 1)
    headers = dict(letter.headers)  # type: ignore[attr-defined]
    assert headers[HEADER_REASON] == b"partition_mismatch"
    kit.produce(k.input_topic, [(sid, reading(sid, ts[4], GOOD))], partition=0)
    forecasts = _forecasts_of(kit, k.output_topic, sid, 4)
    assert [f["ts"] for f in forecasts] == ts[:3] + ts[4:]
    assert {f["partition"] for f in forecasts} == {0}


# -- 6. impossible values -----------------------------------------------------------------


@pytest.mark.parametrize("bad", [1037.55, 3.4e38])
def test_an_impossible_value_is_dead_lettered_and_never_enters_the_state(
    served: tuple[RunningService, KafkaKit], bad: float
) -> None:
    svc, kit = served
    k = svc.settings.kafka
    sid = f"range-{bad:g}"
    ts = [1_700_000_000.0 + i * PERIOD for i in range(4)]
    records = [(sid, reading(sid, ts[0], GOOD)), (sid, reading(sid, ts[1], {**GOOD, "temp": bad}))]
    records += [(sid, reading(sid, t, GOOD)) for t in ts[2:]]
    kit.produce(k.input_topic, records, partition=1)
    (letter,) = _letters_of(kit, k.dead_letter_topic, sid.encode(), 1)
    assert dict(letter.headers)[HEADER_REASON] == b"out_of_range"  # type: ignore[attr-defined]
    forecasts = _forecasts_of(kit, k.output_topic, sid, 3)
    assert [f["ts"] for f in forecasts] == [ts[0], *ts[2:]]
    assert all(abs(v) < 1e3 for f in forecasts for v in f["forecast"]["temp"])  # type: ignore[index, union-attr]


# -- every record accounted for ------------------------------------------------------------


def test_every_record_of_a_mixed_batch_ends_as_exactly_one_outcome(
    served: tuple[RunningService, KafkaKit],
) -> None:
    svc, kit = served
    k = svc.settings.kafka
    t0 = 1_700_000_000.0
    records: list[tuple[str | None, bytes | None]] = []
    for s in range(3):
        sid = f"mix-{s}"
        records += [(sid, reading(sid, t0 + i * PERIOD, GOOD)) for i in range(6)]
        records.append((sid, reading(sid, t0 + 2 * PERIOD, GOOD)))  # late
        records.append((sid, reading(sid, t0 + 5 * PERIOD, GOOD)))  # duplicate
    records += [
        ("mix-0", b"{not json"),
        (None, reading("mix-1", t0 + 9 * PERIOD, GOOD)),
        ("mix-2", reading("mix-2", time.time() + 86_400.0, GOOD)),
        ("mix-0", reading("mix-0", t0 + 9 * PERIOD, {**GOOD, "vibration": 3.4e38})),
        ("mix-1", reading("mix-1", t0 + 10 * PERIOD, {**GOOD, "temp": "hot"})),
        ("mix-2", b'{"stream_id": "mix-2", "note": "' + b"x" * 70_000 + b'"}'),
        ("mix-0", None),
    ]
    consumed = svc.metric("sensorcast_readings_consumed_total")
    dead = svc.metric("sensorcast_dead_letters_total")
    drops = sum(
        svc.metric("sensorcast_drops_total", {"reason": r})
        for r in ("late", "duplicate", "already_applied")
    )
    kit.produce(k.input_topic, records, partition=0)
    ids = {f"mix-{s}".encode() for s in range(3)}
    out = kit.consume_until(
        k.output_topic, lambda rs: sum(r.key in ids for r in rs) >= 18, timeout=60.0
    )
    forecasts = {(r.key, json.loads(r.value)["offset"]) for r in out if r.key in ids}

    def settled() -> bool:
        return svc.metric("sensorcast_readings_consumed_total") - consumed >= len(records)

    deadline = time.monotonic() + 30
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    counted_drops = (
        sum(
            svc.metric("sensorcast_drops_total", {"reason": r})
            for r in ("late", "duplicate", "already_applied")
        )
        - drops
    )
    dead_letters = svc.metric("sensorcast_dead_letters_total") - dead
    assert len(forecasts) == 18
    assert counted_drops == 6
    assert dead_letters == 7
    assert len(forecasts) + counted_drops + dead_letters == len(records)
    letters = kit.consume_until(
        k.dead_letter_topic,
        lambda rs: sum(dict(r.headers).get(HEADER_SOURCE_OFFSET) is not None for r in rs) >= 1,
    )
    assert letters
