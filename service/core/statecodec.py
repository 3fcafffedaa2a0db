"""The binary record of one stream's state, as the changelog stores it.

Layout, little-endian: the magic ``b"SCST"``, the format version (u8), the storage dtype
(u8: 0 float32, 1 float16), the tensor count (u16), the last-value count (u16), ``last_ts``
(f64), steps seen (i64) and ``applied_offset`` (i64), 34 bytes in all; then every state
tensor in card order, in its per-stream shape, C order, at the storage dtype; then the
stream's last raw feature values (float32) when last-value imputation is on. A 2x64 LSTM's
record is 34 + 2 * 512 = 1,058 bytes.

Records are encoded and decoded a batch at a time, with numpy, because a checkpoint writes
and a restore reads many thousands of them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import StateError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "RecordBatch",
    "RecordBuffer",
    "RecordLayout",
    "decode",
    "encode",
]

MAGIC = b"SCST"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBBHHdqq")
_HEADER_DTYPE = np.dtype(
    [
        ("magic", "S4"),
        ("version", "u1"),
        ("dtype", "u1"),
        ("n_tensors", "<u2"),
        ("n_values", "<u2"),
        ("last_ts", "<f8"),
        ("steps", "<i8"),
        ("applied", "<i8"),
    ]
)
_DTYPE_CODES: dict[str, int] = {"float32": 0, "float16": 1}
_CODE_DTYPES = {code: np.dtype(name) for name, code in _DTYPE_CODES.items()}


@dataclass(frozen=True)
class RecordLayout:
    """What a store expects in a record: floats per tensor and the number of last values."""

    sizes: tuple[int, ...]
    n_last_values: int

    def record_bytes(self, dtype: np.dtype[np.floating]) -> int:
        """Bytes of one encoded record with tensors at `dtype`, header included."""
        return _HEADER.size + sum(self.sizes) * dtype.itemsize + self.n_last_values * 4


@dataclass
class RecordBatch:
    """Decoded records: one row per stream. `tensors[k]` is ``[n, sizes[k]]`` at `dtype`."""

    dtype: np.dtype[np.floating]
    last_ts: np.ndarray
    steps: np.ndarray
    applied: np.ndarray
    tensors: list[np.ndarray]
    last_values: np.ndarray | None


def encode(batch: RecordBatch) -> list[bytes]:
    """One record per row of `batch` (each tensor's rows are one row of the record)."""
    widths = [t.shape[1] * batch.dtype.itemsize for t in batch.tensors]
    n_values = 0 if batch.last_values is None else batch.last_values.shape[1]
    buffer = RecordBuffer(batch.dtype, [(1, w) for w in widths], n_values)
    records: list[bytes] = []
    for start in range(0, len(batch.last_ts), buffer.CHUNK):
        rows = slice(start, start + buffer.CHUNK)
        n = buffer.fill(
            batch.last_ts[rows],
            batch.steps[rows],
            batch.applied[rows],
            None if batch.last_values is None else batch.last_values[rows],
        )
        for tensor, out, width in zip(batch.tensors, buffer.tensors, widths, strict=True):
            rows_as_items = np.ascontiguousarray(tensor[rows], batch.dtype).view((np.void, width))
            out[:n, 0] = rows_as_items[:, 0]
        records += buffer.records(n)
    return records


class RecordBuffer:
    """Records written in place, `CHUNK` streams at a time, into a buffer kept from call to
    call: what a checkpoint encodes with (`StateStore.dump_many`).

    The caller fills the bookkeeping with `fill` and each tensor's rows in `tensors`, then
    takes the records with `records`. Fresh arrays the size
    of a checkpoint cost page faults on every call (10,000 records of 1,058 bytes: 11-63 ms
    through `encode` and temporaries, 8.5 ms in place); the buffer stays at one chunk however
    many streams a checkpoint writes.
    """

    CHUNK = 8192

    def __init__(
        self, dtype: np.dtype[np.floating], rows: Sequence[tuple[int, int]], n_values: int
    ) -> None:
        """`rows`: each state tensor's (rows per stream, bytes per row), in card order."""
        self.size = _HEADER.size + sum(n * width for n, width in rows) + 4 * n_values
        self._buf = np.zeros((self.CHUNK, self.size), np.uint8)
        buf, stride = self._buf, (self.size,)
        self.header = np.ndarray((self.CHUNK,), _HEADER_DTYPE, buf, 0, stride)
        self.header["magic"] = MAGIC
        self.header["version"] = FORMAT_VERSION
        self.header["dtype"] = _DTYPE_CODES[dtype.name]
        self.header["n_tensors"] = len(rows)
        self.header["n_values"] = n_values
        self.tensors: list[np.ndarray] = []  # [CHUNK, rows] of whole rows (void items)
        pos = _HEADER.size
        for n, width in rows:
            row = np.dtype((np.void, width))
            self.tensors.append(np.ndarray((self.CHUNK, n), row, buf, pos, (self.size, width)))
            pos += n * width
        self.values = (
            np.ndarray((self.CHUNK, n_values), np.float32, buf, pos, (self.size, 4))
            if n_values
            else None
        )

    def fill(
        self,
        last_ts: np.ndarray,
        steps: np.ndarray,
        applied: np.ndarray,
        last_values: np.ndarray | None,
    ) -> int:
        """Write the bookkeeping (and last values) of the next chunk's records; return how
        many records it holds (at most `CHUNK`)."""
        n = len(last_ts)
        header = self.header[:n]
        header["last_ts"] = last_ts
        header["steps"] = steps
        header["applied"] = applied
        if self.values is not None and last_values is not None:
            self.values[:n] = last_values
        return n

    def records(self, n: int) -> list[bytes]:
        """The first `n` records, each as its own bytes."""
        records: list[bytes] = np.ndarray((n,), np.dtype((np.void, self.size)), self._buf).tolist()
        return records


def _check(stream_id: str, data: bytes, layout: RecordLayout) -> np.dtype[np.floating]:
    """Validate one record against `layout`; returns its storage dtype."""
    if len(data) < _HEADER.size:
        raise StateError(f"state record for {stream_id!r} is {len(data)} bytes, too short")
    magic, version, code, n_tensors, n_values, *_ = _HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise StateError(
            f"state record for {stream_id!r} has format {magic!r} v{version}, "
            f"expected {MAGIC!r} v{FORMAT_VERSION}"
        )
    if code not in _CODE_DTYPES:
        raise StateError(f"state record for {stream_id!r} has unknown dtype code {code}")
    if n_tensors != len(layout.sizes) or n_values != layout.n_last_values:
        raise StateError(
            f"state record for {stream_id!r} holds {n_tensors} tensors and {n_values} last "
            f"values; this model keeps {len(layout.sizes)} and {layout.n_last_values}"
        )
    stored = _CODE_DTYPES[code]
    expected = layout.record_bytes(stored)
    if len(data) != expected:
        raise StateError(
            f"state record for {stream_id!r} is {len(data)} bytes, expected {expected} "
            "for this model's state shapes"
        )
    return stored


def decode(ids: Sequence[str], blobs: Sequence[bytes], layout: RecordLayout) -> RecordBatch:
    """Validate and decode records (one per id); raises `StateError` for the first bad one."""
    stored = [_check(sid, blob, layout) for sid, blob in zip(ids, blobs, strict=True)]
    if len(set(stored)) > 1:  # float32 and float16 records mixed: decode each, then widen
        parts = [decode([sid], [blob], layout) for sid, blob in zip(ids, blobs, strict=True)]
        return RecordBatch(
            np.dtype(np.float32),
            np.concatenate([p.last_ts for p in parts]),
            np.concatenate([p.steps for p in parts]),
            np.concatenate([p.applied for p in parts]),
            [
                np.concatenate([p.tensors[k].astype(np.float32) for p in parts])
                for k in range(len(layout.sizes))
            ],
            None
            if layout.n_last_values == 0
            else np.concatenate([p.last_values for p in parts if p.last_values is not None]),
        )
    dtype = stored[0] if stored else np.dtype(np.float32)
    n = len(blobs)
    buf = np.frombuffer(b"".join(blobs), np.uint8).reshape(n, layout.record_bytes(dtype))
    header = np.ascontiguousarray(buf[:, : _HEADER.size]).view(_HEADER_DTYPE).reshape(n)
    tensors = []
    pos = _HEADER.size
    for size in layout.sizes:
        width = size * dtype.itemsize
        tensors.append(np.ascontiguousarray(buf[:, pos : pos + width]).view(dtype))
        pos += width
    last_values = None
    if layout.n_last_values:
        width = layout.n_last_values * 4
        last_values = np.ascontiguousarray(buf[:, pos : pos + width]).view(np.float32)
    return RecordBatch(
        dtype,
        header["last_ts"].astype(np.float64),
        header["steps"].astype(np.int64),
        header["applied"].astype(np.int64),
        tensors,
        last_values,
    )
