"""The reading decoder: every structural problem becomes a reject with its reason; valid
records become readings carrying their source position."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest

from service.codec import (
    MAX_STREAM_ID,
    ReadingDecoder,
    RecordColumns,
    max_future_seconds,
    parse_timestamp,
)
from service.core.readings import ForecastBatch, RejectReason
from service.core.values import FeatureValues
from service.testing import make_card

NOW = 1_800_000_000.0
VALUES = {"temp": 20.5, "load": 0.3}


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    partition: int = 2
    offset: int = 40
    topic: str = "sensor-readings"
    timestamp: int = -1


def _decoder(**kw: float) -> ReadingDecoder:
    return ReadingDecoder(
        max_message_bytes=int(kw.get("max_message_bytes", 1024)),
        max_future_seconds=kw.get("max_future_seconds", 86_400.0),
    )


def _doc(**fields: object) -> bytes:
    doc: dict[str, object] = {"stream_id": "pump-1", "ts": NOW - 60, "values": VALUES}
    doc.update(fields)
    return json.dumps(doc).encode()


def test_valid_records_become_readings_with_their_position() -> None:
    records = [
        Rec(b"pump-1", _doc(), offset=7),
        Rec(b"pump-2", _doc(stream_id="pump-2", values=[1.0, 2.0]), partition=0, offset=8),
        Rec(b"pump-3", _doc(stream_id="pump-3", ts=1_700_000_000), offset=9),
    ]
    out = _decoder().decode(records, received=NOW)
    assert out.rejects == []
    a, b, c = out.readings
    assert (a.stream_id, a.ts, a.values, a.partition, a.offset, a.received) == (
        "pump-1",
        NOW - 60,
        VALUES,
        2,
        7,
        NOW,
    )
    assert (b.stream_id, b.values, b.partition) == ("pump-2", [1.0, 2.0], 0)
    assert c.ts == 1_700_000_000.0 and isinstance(c.ts, float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-11-22T08:00:00Z", datetime(2024, 11, 22, 8, tzinfo=UTC).timestamp()),
        ("2024-11-22T08:00:00+01:00", datetime(2024, 11, 22, 7, tzinfo=UTC).timestamp()),
        ("2024-11-22T08:00:00.250", datetime(2024, 11, 22, 8, tzinfo=UTC).timestamp() + 0.25),
        ("1732262400.5", 1_732_262_400.5),
        (1_732_262_400, 1_732_262_400.0),
        ("yesterday", None),
        ("", None),
        ("nan", None),
        (math.inf, None),
    ],
)
def test_parse_timestamp(text: float | str, expected: float | None) -> None:
    got = parse_timestamp(text)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"pump-1", None, RejectReason.TOMBSTONE),
        (b"pump-1", b"", RejectReason.TOMBSTONE),
        (b"pump-1", b'{"stream_id": "pump-1", ' + b" " * 2000 + b"}", RejectReason.OVERSIZED),
        (b"pump-1", b"{not json", RejectReason.NOT_JSON),
        (b"pump-1", b"\xff\xfe", RejectReason.NOT_JSON),
        (b"pump-1", b'"a string"', RejectReason.NOT_OBJECT),
        (b"pump-1", b"[1, 2]", RejectReason.NOT_OBJECT),
        (
            b"pump-1",
            json.dumps({"ts": NOW, "values": VALUES}).encode(),
            RejectReason.MISSING_STREAM_ID,
        ),
        (b"pump-1", _doc(stream_id=""), RejectReason.MISSING_STREAM_ID),
        (b"pump-1", _doc(stream_id=17), RejectReason.MISSING_STREAM_ID),
        (b"pump-9", _doc(), RejectReason.KEY_MISMATCH),
        (None, _doc(), RejectReason.MISSING_KEY),
        (b"pump-1", _doc(ts="soon"), RejectReason.BAD_TIMESTAMP),
        (b"pump-1", _doc(ts=None), RejectReason.BAD_TIMESTAMP),
        (b"pump-1", _doc(ts=True), RejectReason.BAD_TIMESTAMP),
        (
            b"pump-1",
            json.dumps({"stream_id": "pump-1", "values": VALUES}).encode(),
            RejectReason.BAD_TIMESTAMP,
        ),
        (b"pump-1", _doc(ts=NOW + 2 * 86_400), RejectReason.FUTURE_TIMESTAMP),
        (b"pump-1", _doc(ts="2099-01-01T00:00:00Z"), RejectReason.FUTURE_TIMESTAMP),
        (b"pump-1", _doc(values=3), RejectReason.INVALID),
        (b"pump-1", _doc(values="temp=3"), RejectReason.INVALID),
    ],
)
def test_structural_problems_are_rejected_with_their_reason(
    key: bytes | None, value: bytes | None, reason: RejectReason
) -> None:
    good = Rec(b"pump-2", _doc(stream_id="pump-2"), offset=41)
    out = _decoder().decode([Rec(key, value), good], received=NOW)
    (reject,) = out.rejects
    assert reject.reason is reason
    assert reject.detail
    assert (reject.partition, reject.offset, reject.extra["topic"]) == (2, 40, "sensor-readings")
    assert [r.stream_id for r in out.readings] == ["pump-2"]  # the batch goes on


def test_value_contents_are_left_to_the_engine() -> None:
    """Unknown features, non-numbers and NaN are the engine's to judge against the card."""
    raw = b'{"stream_id": "pump-1", "ts": 1.0, "values": {"temp": NaN, "x": "hot"}}'
    out = _decoder().decode([Rec(b"pump-1", raw)], received=NOW)
    (reading,) = out.readings
    assert math.isnan(reading.values["temp"]) and reading.values["x"] == "hot"


def test_size_limit_is_inclusive() -> None:
    value = _doc()
    out = _decoder(max_message_bytes=len(value)).decode([Rec(b"pump-1", value)], received=NOW)
    assert len(out.readings) == 1
    out = _decoder(max_message_bytes=len(value) - 1).decode([Rec(b"pump-1", value)], received=NOW)
    assert out.rejects[0].reason is RejectReason.OVERSIZED


# -- the columnar path ------------------------------------------------------------------------


def test_decode_columns_matches_decode_and_reads_values_in_card_order() -> None:
    features = FeatureValues(["temp", "load"])
    records = [
        Rec(b"pump-1", _doc(), offset=7),
        Rec(b"pump-2", _doc(stream_id="pump-2", values=[1.0, 2.0]), partition=0, offset=8),
        Rec(b"pump-3", b"{not json", offset=9),
        Rec(b"pump-4", _doc(stream_id="pump-4", values={"temp": "hot", "load": 1}), offset=10),
        Rec(b"pump-5", _doc(stream_id="pump-5", values={"load": 4.0, "temp": 3}), offset=11),
    ]
    objects = _decoder().decode(records, received=NOW)
    out = _decoder().decode_columns(records, received=NOW, values=features)
    batch = out.batch
    assert [(r.reason, r.offset) for r in out.rejects] == [(RejectReason.NOT_JSON, 9)]
    assert [(r.reason, r.offset) for r in out.rejects] == [
        (r.reason, r.offset) for r in objects.rejects
    ]
    assert batch.stream_ids == [r.stream_id for r in objects.readings]
    assert batch.ts.tolist() == [r.ts for r in objects.readings]
    assert batch.offsets.tolist() == [7, 8, 10, 11]
    assert batch.partitions.tolist() == [2, 0, 2, 2]
    assert batch.received.tolist() == [NOW] * 4
    assert batch.values.dtype == np.float32
    np.testing.assert_array_equal(
        batch.values[[0, 1, 3]], np.array([[20.5, 0.3], [1.0, 2.0], [3.0, 4.0]], np.float32)
    )
    assert list(batch.problems) == [2]
    assert batch.problems[2][0] is RejectReason.NON_NUMERIC


def test_a_batch_held_as_columns_decodes_as_its_records_do() -> None:
    records = [
        Rec(b"pump-1", _doc(), offset=7),
        Rec(b"pump-2", None, partition=1, offset=3),
        Rec(b"pump-9", _doc(stream_id="pump-3"), partition=0, offset=8),
        Rec(b"pump-4", _doc(stream_id="pump-4"), partition=1, offset=4),
    ]
    columns = RecordColumns(
        "sensor-readings",
        [r.key for r in records],
        [r.value for r in records],
        [r.partition for r in records],
        [r.offset for r in records],
        [r.timestamp for r in records],
    )
    features = FeatureValues(["temp", "load"])
    want = _decoder().decode_columns(records, received=NOW, values=features)
    got = _decoder().decode_columns(columns, received=NOW, values=features)
    assert [(r.reason, r.partition, r.offset, r.extra) for r in got.rejects] == [
        (r.reason, r.partition, r.offset, r.extra) for r in want.rejects
    ]
    assert [r.reason for r in got.rejects] == [RejectReason.TOMBSTONE, RejectReason.KEY_MISMATCH]
    assert got.batch.stream_ids == want.batch.stream_ids == ["pump-1", "pump-4"]
    assert got.batch.partitions.tolist() == [2, 1] and got.batch.offsets.tolist() == [7, 4]


def test_decode_columns_leaves_missing_values_as_nan_when_imputing() -> None:
    records = [Rec(b"pump-1", _doc(values={"temp": 1.0}))]
    imputing = _decoder().decode_columns(
        records, received=NOW, values=FeatureValues(["temp", "load"], impute=True)
    )
    assert imputing.batch.problems == {}
    assert imputing.batch.values[0, 0] == 1.0 and math.isnan(imputing.batch.values[0, 1])
    strict = _decoder().decode_columns(
        records, received=NOW, values=FeatureValues(["temp", "load"])
    )
    assert strict.batch.problems[0][0] is RejectReason.MISSING_FEATURE


def test_decode_columns_of_nothing_valid() -> None:
    out = _decoder().decode_columns(
        [Rec(b"k", None)], received=NOW, values=FeatureValues(["temp", "load"])
    )
    assert len(out.batch) == 0 and out.batch.values.shape == (0, 2)
    assert [r.reason for r in out.rejects] == [RejectReason.TOMBSTONE]


def test_forecast_ages_count_from_each_record_timestamp() -> None:
    stamp = int(NOW * 1000)
    records = [
        Rec(b"pump-1", _doc(), partition=0, offset=5, timestamp=stamp - 250),
        Rec(b"pump-2", None, partition=0, offset=6, timestamp=stamp - 999_000),  # rejected
        Rec(b"pump-2", _doc(stream_id="pump-2"), partition=1, offset=5, timestamp=stamp - 40),
        Rec(b"pump-3", _doc(stream_id="pump-3"), partition=1, offset=6),  # no timestamp
        Rec(b"pump-4", _doc(stream_id="pump-4"), partition=0, offset=7, timestamp=stamp + 900),
    ]
    decoded = _decoder().decode_columns(
        records, received=NOW, values=FeatureValues(["temp", "load"])
    )
    assert np.isnan(decoded.written[2]) and decoded.written[0] == pytest.approx(NOW - 0.25)

    def forecasts_of(rows: list[int]) -> ForecastBatch:
        batch = decoded.batch
        out = ForecastBatch.empty(1, 1, 60.0)
        out.stream_ids = [batch.stream_ids[r] for r in rows]
        out.partitions, out.offsets = batch.partitions[rows], batch.offsets[rows]
        return out

    # one forecast per reading in order, and a round order that differs from the poll's
    assert decoded.ages(forecasts_of([0, 1, 2, 3]), NOW + 1.0) == pytest.approx(
        [1.25, 1.04, 0.1]  # pump-3 has no timestamp; pump-4's producer clock runs ahead
    )
    assert decoded.ages(forecasts_of([3, 1, 0]), NOW) == pytest.approx([0.0, 0.04, 0.25])
    assert decoded.ages(forecasts_of([]), NOW).size == 0


def test_a_stream_id_longer_than_the_limit_is_invalid() -> None:
    sid = "p" * (MAX_STREAM_ID + 1)
    out = _decoder(max_message_bytes=8192).decode(
        [Rec(sid.encode(), _doc(stream_id=sid))], received=NOW
    )
    assert [r.reason for r in out.rejects] == [RejectReason.INVALID]
    assert str(MAX_STREAM_ID) in out.rejects[0].detail


# -- a stream's readings share one partition ------------------------------------------


def test_a_known_stream_on_another_partition_is_rejected_and_the_rest_decode() -> None:
    seen = {"pump-1": 2, "pump-2": 0}
    decoder = ReadingDecoder(max_message_bytes=8192, max_future_seconds=86_400.0, partition_of=seen)
    records = [
        Rec(b"pump-1", _doc(), partition=2, offset=7),
        Rec(b"pump-1", _doc(ts=NOW - 30), partition=3, offset=50),  # the producer moved it
        Rec(b"pump-2", _doc(stream_id="pump-2"), partition=0, offset=8),
    ]
    out = decoder.decode_columns(records, received=NOW, values=FeatureValues(["temp", "load"]))
    (reject,) = out.rejects
    assert (reject.reason, reject.partition, reject.offset) == (
        RejectReason.PARTITION_MISMATCH,
        3,
        50,
    )
    assert "partition 2" in reject.detail and "partition 3" in reject.detail
    assert out.batch.stream_ids == ["pump-1", "pump-2"]
    assert out.batch.offsets.tolist() == [7, 8]
    assert len(out.written) == 2


def test_a_new_stream_on_two_partitions_in_one_batch_keeps_its_first() -> None:
    records = [
        Rec(b"pump-7", _doc(stream_id="pump-7"), partition=1, offset=3),
        Rec(b"pump-7", _doc(stream_id="pump-7", ts=NOW - 30), partition=2, offset=4),
        Rec(b"pump-7", _doc(stream_id="pump-7", ts=NOW - 20), partition=1, offset=5),
    ]
    out = _decoder().decode(records, received=NOW)
    assert [(r.reason, r.partition, r.offset) for r in out.rejects] == [
        (RejectReason.PARTITION_MISMATCH, 2, 4)
    ]
    assert [(r.partition, r.offset) for r in out.readings] == [(1, 3), (1, 5)]


def test_the_future_limit_defaults_to_minutes_scaled_by_the_period() -> None:
    from service.config import KafkaSettings

    card = make_card(period=300.0)
    assert max_future_seconds(KafkaSettings(), card) == 900.0
    assert max_future_seconds(KafkaSettings(), make_card(period=10.0)) == 300.0
    assert max_future_seconds(KafkaSettings(max_future_seconds=60.0), card) == 60.0
    # 20 hours ahead is a clock fault, not a reading to apply
    decoder = ReadingDecoder(
        max_message_bytes=8192, max_future_seconds=max_future_seconds(KafkaSettings(), card)
    )
    out = decoder.decode([Rec(b"pump-1", _doc(ts=NOW + 20 * 3600))], received=NOW)
    assert [r.reason for r in out.rejects] == [RejectReason.FUTURE_TIMESTAMP]
