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
    record = statecodec.encode(_batch("float32"))[1]
    magic, version, code, n_tensors, n_values, last_ts, steps, applied = struct.unpack_from(
        "<4sBBHHdqq", record
    )
    assert (magic, version, code, n_tensors, n_values) == (b"SCST", 1, 0, 2, 2)
    assert (last_ts, steps, applied) == (60.0, 6, 101)
    assert len(record) == 34 + (6 + 4) * 4 + 2 * 4
    first = np.frombuffer(record, np.float32, 6, 34)
    np.testing.assert_array_equal(first, _batch("float32").tensors[0][1])


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
    with pytest.raises(StateError, match="this model keeps 2 and 0"):
        statecodec.decode(["a"], [good], RecordLayout(sizes=(6, 4), n_last_values=0))
    with pytest.raises(StateError, match="expected"):
        statecodec.decode(["a"], [good], RecordLayout(sizes=(6, 5), n_last_values=2))
