from __future__ import annotations

import struct

import numpy as np
import pytest

from service.core import statecodec
from service.core.statecodec import RecordBatch, RecordLayout
from service.errors import StateError

LAYOUT = RecordLayout(sizes=(6, 4), n_last_values=2)


def _batch(dtype: str, n: int = 3) -> RecordBatch:
    rng = np.random.default_rng(0)
    return RecordBatch(
        np.dtype(dtype),
        np.arange(n, dtype=np.float64) * 60.0,
        np.arange(n, dtype=np.int64) + 5,
        np.arange(n, dtype=np.int64) + 100,
        [rng.normal(size=(n, 6)).astype(dtype), rng.normal(size=(n, 4)).astype(dtype)],
        rng.normal(size=(n, 2)).astype(np.float32),
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(dtype: str) -> None:
    batch = _batch(dtype)
    records = statecodec.encode(batch)
    assert len(records) == 3
    assert all(len(r) == LAYOUT.record_bytes(np.dtype(dtype)) for r in records)
    back = statecodec.decode(["a", "b", "c"], records, LAYOUT)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.last_ts, batch.last_ts)
    np.testing.assert_array_equal(back.steps, batch.steps)
    np.testing.assert_array_equal(back.applied, batch.applied)
    for a, b in zip(back.tensors, batch.tensors, strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.last_values is not None and batch.last_values is not None
    np.testing.assert_array_equal(back.last_values, batch.last_values)


def test_the_header_is_the_documented_little_endian_layout() -> None:
    layout = RecordLayout(sizes=(6, 4), n_last_values=2, model=b"M" * 16)
    record = statecodec.encode(_batch("float32"), layout)[1]
    fields = struct.unpack_from("<4sBBHHdqq16sHHHHHHdI", record)
    magic, version, code, n_tensors, n_values, last_ts, steps, applied = fields[:8]
    assert (magic, version, code, n_tensors, n_values) == (b"SCST", 4, 0, 2, 2)
    assert (last_ts, steps, applied) == (60.0, 6, 101)
    # model; features, kept readings, names; outstanding forecasts, targets
    assert fields[8:15] == (b"M" * 16, 0, 0, 0, 0, 0, 0)
    # no clock jump: NaN, no late readings counted
    assert np.isnan(fields[15]) and fields[16] == 0
    assert len(record) == 74 + 2 * 4 + (6 + 4) * 4
    first = np.frombuffer(record, np.float32, 6, 74 + 2 * 4)
    np.testing.assert_array_equal(first, _batch("float32").tensors[0][1])


def test_outstanding_forecasts_round_trip_after_the_tensors() -> None:
    n, e, t = 3, 4, 2
    rng = np.random.default_rng(5)
    batch = _batch("float32", n)
    rows = statecodec.OutstandingRows(
        np.where(rng.random((n, e)) < 0.3, np.nan, rng.uniform(0, 1e9, (n, e))),
        rng.integers(0, e + 1, (n, e)).astype(np.int8),
        rng.normal(size=(n, e, t)).astype(np.float32),
        rng.normal(size=(n, e, e, t)).astype(np.float32),
        rng.uniform(0.1, 2, (n, t)).astype(np.float32),
    )
    batch.outstanding = rows
    layout = RecordLayout((6, 4), 2, b"M" * 16, outstanding=e, n_targets=t)
    records = statecodec.encode(batch, layout)
    assert len(records[0]) == 74 + 2 * 4 + (6 + 4) * 4 + e * (8 + 1 + 4 * t + 4 * e * t) + 4 * t
    tail = e * (8 + 1 + 4 * t + 4 * e * t) + 4 * t
    assert np.frombuffer(
        records[1], np.float64, e, len(records[1]) - tail
    ).tolist() == pytest.approx(rows.made[1].tolist(), nan_ok=True)
    back = statecodec.decode(["a", "b", "c"], records, layout)
    assert back.outstanding is not None and not back.foreign.any()
    for got, want in zip(
        (back.outstanding.made, back.outstanding.done, back.outstanding.base),
        (rows.made, rows.done, rows.base),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(back.outstanding.values, rows.values)
    np.testing.assert_array_equal(back.outstanding.scale, rows.scale)
    np.testing.assert_array_equal(back.tensors[1], batch.tensors[1])
    # the same model without scoring reads them as another layout's: foreign, re-warmed
    unscored = RecordLayout((6, 4), 2, b"M" * 16)
    assert statecodec.decode(["a"], records[:1], unscored).foreign.all()


def test_clock_jump_marks_round_trip_in_the_header() -> None:
    batch = _batch("float32")
    batch.jump_from = np.array([np.nan, 1_764_650_000.0, 1_764_650_060.0])
    batch.late_run = np.array([0, 0, 1])
    layout = RecordLayout((6, 4), 2, b"M" * 16)
    records = statecodec.encode(batch, layout)
    assert struct.unpack_from("<dI", records[2], 62) == (1_764_650_060.0, 1)
    back = statecodec.decode(["a", "b", "c"], records, layout)
    assert not back.foreign.any()
    assert back.jump_from is not None and back.late_run is not None
    np.testing.assert_array_equal(back.jump_from, batch.jump_from)
    assert back.late_run.tolist() == [0, 0, 1]


def test_a_format_3_record_is_this_models_own_with_no_clock_jump() -> None:
    """What the version before wrote: the 62-byte header without the clock-jump marks. A
    restore after an upgrade keeps such a stream's state (no re-warm)."""
    layout = RecordLayout((6, 4), 2, b"M" * 16)
    batch = _batch("float32")
    batch.jump_from = np.full(3, 1_764_650_000.0)
    batch.late_run = np.ones(3, np.int64)
    now = statecodec.encode(batch, layout)[1]
    then = now[:4] + b"\x03" + now[5:62] + now[74:]  # format 3: no marks
    back = statecodec.decode(["b"], [then], layout)
    assert back.foreign.tolist() == [False]
    assert (back.last_ts.tolist(), back.steps.tolist(), back.applied.tolist()) == (
        [60.0],
        [6],
        [101],
    )
    np.testing.assert_array_equal(back.tensors[0][0], batch.tensors[0][1])
    assert back.last_values is not None and batch.last_values is not None
    np.testing.assert_array_equal(back.last_values[0], batch.last_values[1])
    assert back.jump_from is not None and np.isnan(back.jump_from).all()
    assert back.late_run is not None and back.late_run.tolist() == [0]


def test_a_format_2_record_is_foreign_with_its_kept_readings_usable() -> None:
    """What an earlier version wrote: the 58-byte header, no outstanding forecasts."""
    k = 2
    layout = RecordLayout((6, 4), 2, b"M" * 16, ("temp", "load"), k)
    names = b"temp\nload"
    header = struct.pack(
        "<4sBBHHdqq16sHHHH", b"SCST", 2, 0, 2, 2, 60.0, 6, 101, b"M" * 16, 2, k, 2, len(names)
    )
    kept = np.array([0.0, 60.0]).tobytes() + np.array([[1, 2], [3, 4]], np.float32).tobytes()
    record = header + names + kept + np.zeros(2 + 10, np.float32).tobytes()
    back = statecodec.decode(["a"], [record], layout)
    assert back.foreign.tolist() == [True] and back.unusable.tolist() == [False]
    assert back.applied.tolist() == [101] and back.last_ts.tolist() == [60.0]
    assert back.history_values is not None
    np.testing.assert_array_equal(back.history_values[0], [[1, 2], [3, 4]])


def test_kept_readings_round_trip_and_map_onto_another_models_features() -> None:
    n, k = 3, 4
    rng = np.random.default_rng(1)
    batch = _batch("float32", n)
    batch.history_ts = np.arange(n * k, dtype=np.float64).reshape(n, k)
    batch.history_values = rng.normal(size=(n, k, 3)).astype(np.float32)
    batch.history_len = np.array([0, 2, 4])
    mine = RecordLayout((6, 4), 2, b"A" * 16, ("temp", "load", "rpm"), k)
    records = statecodec.encode(batch, mine)
    back = statecodec.decode(["a", "b", "c"], records, mine)
    assert not back.foreign.any()
    assert back.history_len is not None and back.history_values is not None
    np.testing.assert_array_equal(back.history_values, batch.history_values)
    # another model with two of the features, in another order, keeping 2 readings
    theirs = RecordLayout((5,), 0, b"B" * 16, ("rpm", "temp"), 2)
    other = statecodec.decode(["a", "b", "c"], records, theirs)
    # a applied readings but kept none: nothing to re-warm it from
    assert other.foreign.all() and other.unusable.tolist() == [True, False, False]
    assert other.history_len is not None and other.history_values is not None
    assert other.history_len.tolist() == [0, 2, 2]
    np.testing.assert_array_equal(other.history_values[2], batch.history_values[2, 2:][:, [2, 0]])
    np.testing.assert_array_equal(other.tensors[0], np.zeros((3, 5), np.float32))
    assert other.applied.tolist() == batch.applied.tolist()
    # a model needing a feature the records lack cannot re-warm from them
    lacking = RecordLayout((5,), 0, b"B" * 16, ("temp", "humidity"), 2)
    assert statecodec.decode(["c"], records[2:], lacking).unusable.tolist() == [True]


def test_mixed_storage_dtypes_decode_as_float32() -> None:
    wide, narrow = statecodec.encode(_batch("float32")), statecodec.encode(_batch("float16"))
    back = statecodec.decode(["a", "b"], [wide[0], narrow[1]], LAYOUT)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.tensors[0][0], _batch("float32").tensors[0][0])
    np.testing.assert_array_equal(back.tensors[0][1], _batch("float16").tensors[0][1])


def test_bad_records_name_the_stream() -> None:
    good = statecodec.encode(_batch("float32"))[0]
    with pytest.raises(StateError, match=r"'b'.*too short"):
        statecodec.decode(["a", "b"], [good, good[:20]], LAYOUT)
    with pytest.raises(StateError, match=r"'a'.*dtype code 7"):
        statecodec.decode(["a"], [good[:5] + b"\x07" + good[6:]], LAYOUT)
    # the same model's record with other settings is foreign, not an error
    assert statecodec.decode(["a"], [good], RecordLayout((6, 4), 0)).foreign.tolist() == [True]
    with pytest.raises(StateError, match="expected"):
        statecodec.decode(["a"], [good], RecordLayout(sizes=(6, 5), n_last_values=2))
