"""The binary record of one stream's state, as the changelog stores it.

Layout, little-endian, format 4:

- a 74-byte header: the magic ``b"SCST"``, the format version (u8), the storage dtype (u8:
  0 float32, 1 float16), the tensor count (u16), the last-value count (u16), ``last_ts``
  (f64), steps seen (i64), ``applied_offset`` (i64), the fingerprint of the model that wrote
  the state (16 bytes, `service.modelcard.model_fingerprint`), the feature count (u16), the
  kept readings' capacity K (u16) and how many are kept (u16), the byte length of the
  feature names (u16), the outstanding forecasts' capacity E (u16, 0 when forecasts are not
  scored) and the target count T (u16), the stream's clock before its last jump ahead (f64,
  NaN for none) and how many late readings in a row continued it since (u32; see
  `service.core.checks`, clock recovery);
- the model's feature names, UTF-8, one per line;
- the stream's last K applied readings, oldest first and right-aligned (the kept ones last):
  their timestamps (K f64) and feature values in original units (K x features f32);
- the last raw feature values (float32) when last-value imputation is on;
- every state tensor in card order, in its per-stream shape, C order, at the storage dtype;
- the outstanding forecasts (`service.core.scoring`), oldest first: the times they were made
  at (E f64, NaN for none), the highest step scored (E u8), their readings' target values
  (E x T f32) and the forecasts (E x E x T f32, E = the horizon); then the running one-step
  error scale (T f32).

A format 3 record (the same with a 62-byte header, no clock-jump fields) is read as format
4 with no jump. A record is *foreign* when another model wrote it (another fingerprint), or
when it has the format 1 or 2 of earlier versions (format 2: format 3 without the
outstanding forecasts and their two header fields; format 1: a 34-byte header, then the
tensors and the last values, no kept readings). Its tensors mean nothing to this model:
`decode` leaves them out, keeps its bookkeeping (``applied_offset`` above all) and maps its
kept readings onto this model's features by name, for the engine to re-warm the stream
from them (`StateStore`). Records are encoded and decoded a batch at a time, with numpy,
because a checkpoint writes and a restore reads many thousands of them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from service.errors import StateError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "NO_MODEL",
    "PENDING_REWARM",
    "OutstandingRows",
    "RecordBatch",
    "RecordBuffer",
    "RecordLayout",
    "decode",
    "encode",
]

MAGIC = b"SCST"
FORMAT_VERSION = 4
NO_MODEL = bytes(16)
#: The model of a stream's record whose state is due a re-warm: no model's, whatever layout
#: its (initial) tensors have, so that a restore re-warms it too.
PENDING_REWARM = b"\xff" * 16
_V1 = struct.Struct("<4sBBHHdqq")
_V2 = struct.Struct("<4sBBHHdqq16sHHHH")
_V3 = struct.Struct("<4sBBHHdqq16sHHHHHH")
_HEADER = struct.Struct("<4sBBHHdqq16sHHHHHHdI")
_EARLIER = {1: _V1, 2: _V2, 3: _V3}  # the header of each earlier format; _HEADER for this one
_NO_JUMP = struct.pack("<dI", float("nan"), 0)  # what a format 3 record's header lacks
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
        ("model", "S16"),
        ("n_features", "<u2"),
        ("history", "<u2"),
        ("history_len", "<u2"),
        ("names", "<u2"),
        ("outstanding", "<u2"),
        ("n_targets", "<u2"),
        ("jump_from", "<f8"),
        ("late_run", "<u4"),
    ]
)
_DTYPE_CODES: dict[str, int] = {"float32": 0, "float16": 1}
_CODE_DTYPES = {code: np.dtype(name) for name, code in _DTYPE_CODES.items()}


def _names_block(features: Sequence[str]) -> bytes:
    return "\n".join(features).encode()


@dataclass(frozen=True)
class RecordLayout:
    """What a store writes and expects: floats per tensor, the number of last values, the
    model's fingerprint and features, how many readings a record keeps (K), and the
    outstanding forecasts' capacity (E, the horizon; 0: not scored) and targets (T)."""

    sizes: tuple[int, ...]
    n_last_values: int
    model: bytes = NO_MODEL
    features: tuple[str, ...] = ()
    history: int = 0
    outstanding: int = 0
    n_targets: int = 0

    def record_bytes(self, dtype: np.dtype[np.floating]) -> int:
        """Bytes of one encoded record with tensors at `dtype`, header included."""
        return self.prefix_bytes() + sum(self.sizes) * dtype.itemsize + self.suffix_bytes()

    def suffix_bytes(self) -> int:
        """Bytes after the tensors: the outstanding forecasts and the error scale."""
        e, t = self.outstanding, self.n_targets
        return e * (8 + 1 + 4 * t + 4 * e * t) + 4 * t if e else 0

    def prefix_bytes(self) -> int:
        """Bytes before the tensors."""
        n_features = len(self.features)
        return (
            _HEADER.size
            + len(_names_block(self.features))
            + self.history * (8 + 4 * n_features)
            + 4 * self.n_last_values
        )


@dataclass
class OutstandingRows:
    """Records' outstanding forecasts as rows (`service.core.scoring.OutstandingRows.ordered`):
    made ``[n, E]``, done ``[n, E]``, base ``[n, E, T]``, values ``[n, E, E, T]``, scale
    ``[n, T]``."""

    made: np.ndarray
    done: np.ndarray
    base: np.ndarray
    values: np.ndarray
    scale: np.ndarray

    @classmethod
    def empty(cls, n: int, e: int, t: int) -> OutstandingRows:
        """`n` rows of nothing outstanding."""
        return cls(
            np.full((n, e), np.nan),
            np.zeros((n, e), np.int8),
            np.zeros((n, e, t), np.float32),
            np.zeros((n, e, e, t), np.float32),
            np.zeros((n, t), np.float32),
        )

    def rows(self, rows: slice | np.ndarray) -> OutstandingRows:
        """The rows `rows`."""
        return OutstandingRows(
            self.made[rows], self.done[rows], self.base[rows], self.values[rows], self.scale[rows]
        )


@dataclass
class RecordBatch:
    """Records as rows: `tensors[k]` is ``[n, sizes[k]]`` at `dtype`; `history_ts` is ``[n,
    K]`` and `history_values` ``[n, K, features]``, right-aligned, `history_len` kept each.

    Decoded records also say which rows are `foreign` (another model's: their tensors rows
    are zeros) and which of those have no usable kept readings (`unusable`: format 1, or a
    feature of this model missing from them).

    `jump_from` and `late_run` are the streams' clock-jump marks (NaN and 0: none; None: none
    for any row)."""

    dtype: np.dtype[np.floating]
    last_ts: np.ndarray
    steps: np.ndarray
    applied: np.ndarray
    tensors: list[np.ndarray]
    last_values: np.ndarray | None
    history_ts: np.ndarray | None = None
    history_values: np.ndarray | None = None
    history_len: np.ndarray | None = None
    outstanding: OutstandingRows | None = None
    foreign: np.ndarray = field(default_factory=lambda: np.zeros(0, np.bool_))
    unusable: np.ndarray = field(default_factory=lambda: np.zeros(0, np.bool_))
    jump_from: np.ndarray | None = None
    late_run: np.ndarray | None = None


def encode(batch: RecordBatch, layout: RecordLayout | None = None) -> list[bytes]:
    """One record per row of `batch` (each tensor's rows are one row of the record)."""
    n_values = 0 if batch.last_values is None else batch.last_values.shape[1]
    if layout is None:
        layout = RecordLayout(tuple(t.shape[1] for t in batch.tensors), n_values)
    widths = [t.shape[1] * batch.dtype.itemsize for t in batch.tensors]
    buffer = RecordBuffer(batch.dtype, [(1, w) for w in widths], layout, len(batch.last_ts))
    records: list[bytes] = []
    for start in range(0, len(batch.last_ts), buffer.capacity):
        rows = slice(start, start + buffer.capacity)

        def part(a: np.ndarray | None, rows: slice = rows) -> np.ndarray | None:
            return None if a is None else a[rows]

        n = buffer.fill(
            batch.last_ts[rows],
            batch.steps[rows],
            batch.applied[rows],
            part(batch.last_values),
            part(batch.history_ts),
            part(batch.history_values),
            part(batch.history_len),
            outstanding=None if batch.outstanding is None else batch.outstanding.rows(rows),
            jump_from=part(batch.jump_from),
            late_run=part(batch.late_run),
        )
        for tensor, out, width in zip(batch.tensors, buffer.tensors, widths, strict=True):
            rows_as_items = np.ascontiguousarray(tensor[rows], batch.dtype).view((np.void, width))
            out[:n, 0] = rows_as_items[:, 0]
        records += buffer.records(n)
    return records


class RecordBuffer:
    """Records written in place, `CHUNK` streams at a time, into a buffer kept from call to
    call: what a checkpoint encodes with (`StateStore.dump_many`).

    The caller fills the bookkeeping and kept readings with `fill` and each tensor's rows in
    `tensors`, then takes the records with `records`. Fresh arrays the size of a checkpoint
    cost page faults on every call; the buffer stays at one chunk however many streams a
    checkpoint writes, and is no larger than the records it is made for (``capacity``):
    a full chunk of a few-KB records is tens of MB, whose first writes cost a
    checkpoint of a thousand streams 70-110 ms of page faults.
    """

    CHUNK = 8192

    def __init__(
        self,
        dtype: np.dtype[np.floating],
        rows: Sequence[tuple[int, int]],
        layout: RecordLayout,
        capacity: int | None = None,
    ) -> None:
        """`rows`: each state tensor's (rows per stream, bytes per row), in card order;
        `capacity`: records a chunk holds (at most, and by default, `CHUNK`)."""
        self.capacity = cap = self.CHUNK if capacity is None else max(1, min(capacity, self.CHUNK))
        self.size = (
            layout.prefix_bytes() + sum(n * width for n, width in rows) + layout.suffix_bytes()
        )
        self._buf = np.zeros((cap, self.size), np.uint8)
        buf, size = self._buf, self.size
        self.header = np.ndarray((cap,), _HEADER_DTYPE, buf, 0, (size,))
        header, names = self.header, _names_block(layout.features)
        header["magic"] = MAGIC
        header["version"] = FORMAT_VERSION
        header["dtype"] = _DTYPE_CODES[dtype.name]
        header["n_tensors"] = len(rows)
        header["n_values"] = layout.n_last_values
        header["model"] = self.model = layout.model
        header["n_features"] = len(layout.features)
        header["history"] = layout.history
        header["names"] = len(names)
        header["outstanding"] = e = layout.outstanding
        header["n_targets"] = t = layout.n_targets if e else 0
        pos = _HEADER.size
        if names:
            buf[:, pos : pos + len(names)] = np.frombuffer(names, np.uint8)
        pos += len(names)
        k, f = layout.history, len(layout.features)
        self.history_ts = np.ndarray((cap, k), np.float64, buf, pos, (size, 8))
        pos += 8 * k
        self.history_values = np.ndarray((cap, k, f), np.float32, buf, pos, (size, 4 * f, 4))
        pos += 4 * k * f
        self.values = np.ndarray((cap, layout.n_last_values), np.float32, buf, pos, (size, 4))
        pos += 4 * layout.n_last_values
        self.tensors: list[np.ndarray] = []  # [capacity, rows] of whole rows (void items)
        for n, width in rows:
            row = np.dtype((np.void, width))
            self.tensors.append(np.ndarray((cap, n), row, buf, pos, (size, width)))
            pos += n * width
        self.outstanding = _views(buf, cap, size, pos, e, t)

    def fill(
        self,
        last_ts: np.ndarray,
        steps: np.ndarray,
        applied: np.ndarray,
        last_values: np.ndarray | None,
        history_ts: np.ndarray | None = None,
        history_values: np.ndarray | None = None,
        history_len: np.ndarray | None = None,
        pending: np.ndarray | None = None,
        outstanding: OutstandingRows | None = None,
        jump_from: np.ndarray | None = None,
        late_run: np.ndarray | None = None,
    ) -> int:
        """Write the bookkeeping, last values, kept readings, outstanding forecasts and
        clock-jump marks (none when not given) of the next chunk's records; return how many
        records it holds (at most `capacity`). Rows `pending` a re-warm name no model
        (`PENDING_REWARM`)."""
        n = len(last_ts)
        header = self.header[:n]
        header["model"] = self.model
        if pending is not None and pending.any():
            header["model"] = np.where(pending, PENDING_REWARM, self.model)
        header["last_ts"] = last_ts
        header["steps"] = steps
        header["applied"] = applied
        header["jump_from"] = np.nan if jump_from is None else jump_from
        header["late_run"] = 0 if late_run is None else late_run
        if last_values is not None and self.values.shape[1]:
            self.values[:n] = last_values
        if history_len is not None and history_ts is not None and history_values is not None:
            header["history_len"] = history_len
            self.history_ts[:n] = history_ts
            self.history_values[:n] = history_values
        if outstanding is not None and self.outstanding is not None:
            mine = self.outstanding
            mine.made[:n] = outstanding.made
            mine.done[:n] = outstanding.done
            mine.base[:n] = outstanding.base
            mine.values[:n] = outstanding.values
            mine.scale[:n] = outstanding.scale
        return n

    def records(self, n: int) -> list[bytes]:
        """The first `n` records, each as its own bytes."""
        records: list[bytes] = np.ndarray((n,), np.dtype((np.void, self.size)), self._buf).tolist()
        return records


def _views(buf: np.ndarray, n: int, size: int, pos: int, e: int, t: int) -> OutstandingRows | None:
    """The outstanding-forecast fields of `n` records of `size` bytes in `buf`, from `pos`."""
    if not e:
        return None
    made = np.ndarray((n, e), np.float64, buf, pos, (size, 8))
    pos += 8 * e
    done = np.ndarray((n, e), np.int8, buf, pos, (size, 1))
    pos += e
    base = np.ndarray((n, e, t), np.float32, buf, pos, (size, 4 * t, 4))
    pos += 4 * e * t
    values = np.ndarray((n, e, e, t), np.float32, buf, pos, (size, 4 * e * t, 4 * t, 4))
    pos += 4 * e * e * t
    scale = np.ndarray((n, t), np.float32, buf, pos, (size, 4))
    return OutstandingRows(made, done, base, values, scale)


@dataclass(frozen=True)
class _Header:
    version: int
    dtype: np.dtype[np.floating]
    n_tensors: int
    n_values: int
    last_ts: float
    steps: int
    applied: int
    model: bytes = NO_MODEL
    n_features: int = 0
    history: int = 0
    history_len: int = 0
    names: int = 0
    outstanding: int = 0
    n_targets: int = 0
    jump_from: float = float("nan")
    late_run: int = 0

    @property
    def size(self) -> int:
        """Bytes of this version's header."""
        return _EARLIER.get(self.version, _HEADER).size


def _header(stream_id: str, data: bytes) -> _Header:
    """The header of one record, checked for what any version must hold."""
    if len(data) < _V1.size:
        raise StateError(f"state record for {stream_id!r} is {len(data)} bytes, too short")
    magic, version = data[:4], data[4]
    if magic != MAGIC or version not in (*_EARLIER, FORMAT_VERSION):
        raise StateError(
            f"state record for {stream_id!r} has format {magic!r} v{version}, "
            f"expected {MAGIC!r} v1 to v{FORMAT_VERSION}"
        )
    form = _EARLIER.get(version, _HEADER)
    if len(data) < form.size:
        raise StateError(f"state record for {stream_id!r} is {len(data)} bytes, too short")
    fields = form.unpack_from(data)
    code = fields[2]
    if code not in _CODE_DTYPES:
        raise StateError(f"state record for {stream_id!r} has unknown dtype code {code}")
    return _Header(version, _CODE_DTYPES[code], *fields[3:])


def _is_own(stream_id: str, data: bytes, header: _Header, layout: RecordLayout) -> bool:
    """Whether the record was written by `layout`'s model with this layout (then it must be
    whole); a record of the same model written with other settings (kept readings, last
    values) is treated as foreign."""
    if header.version != FORMAT_VERSION or header.model != layout.model:
        return False
    if (
        header.n_tensors != len(layout.sizes)
        or header.n_values != layout.n_last_values
        or header.history != layout.history
        or header.n_features != len(layout.features)
        or header.outstanding != layout.outstanding
    ):
        return False
    expected = layout.record_bytes(header.dtype)
    if len(data) != expected:
        raise StateError(
            f"state record for {stream_id!r} is {len(data)} bytes, expected {expected} "
            "for this model's state shapes"
        )
    return True


def decode(ids: Sequence[str], blobs: Sequence[bytes], layout: RecordLayout) -> RecordBatch:
    """Validate and decode records (one per id); raises `StateError` for the first record
    that is malformed (too short, of an unknown format, or of this model but not whole)."""
    blobs = [_upgraded(blob) for blob in blobs]
    headers = [_header(sid, blob) for sid, blob in zip(ids, blobs, strict=True)]
    own = np.array(
        [_is_own(sid, blob, h, layout) for sid, blob, h in zip(ids, blobs, headers, strict=True)],
        np.bool_,
    )
    dtypes = {h.dtype for h, mine in zip(headers, own.tolist(), strict=True) if mine}
    dtype = np.dtype(np.float32) if len(dtypes) != 1 else dtypes.pop()
    out = _empty(len(blobs), layout, dtype)
    out.foreign = ~own
    mine = np.flatnonzero(own)
    by_dtype: dict[np.dtype[np.floating], list[int]] = {}
    for i in mine.tolist():
        by_dtype.setdefault(headers[i].dtype, []).append(i)
    for stored, rows in by_dtype.items():
        _decode_own(out, np.array(rows), [blobs[i] for i in rows], layout, stored)
    for i in np.flatnonzero(~own).tolist():
        _decode_foreign(out, i, ids[i], blobs[i], headers[i], layout)
    return out


def _upgraded(blob: bytes) -> bytes:
    """A format 3 record as format 4, with no clock jump; any other as it is."""
    if len(blob) < _V3.size or blob[:4] != MAGIC or blob[4] != 3:
        return blob
    return b"".join(
        (blob[:4], bytes((FORMAT_VERSION,)), blob[5 : _V3.size], _NO_JUMP, blob[_V3.size :])
    )


def _empty(n: int, layout: RecordLayout, dtype: np.dtype[np.floating]) -> RecordBatch:
    k, f, e = layout.history, len(layout.features), layout.outstanding
    outstanding = OutstandingRows.empty(n, e, layout.n_targets) if e else None
    return RecordBatch(
        dtype,
        np.zeros(n, np.float64),
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
        [np.zeros((n, size), dtype) for size in layout.sizes],
        np.full((n, layout.n_last_values), np.nan, np.float32) if layout.n_last_values else None,
        np.zeros((n, k), np.float64),
        np.zeros((n, k, f), np.float32),
        np.zeros(n, np.int64),
        outstanding,
        np.zeros(n, np.bool_),
        np.zeros(n, np.bool_),
        np.full(n, np.nan),
        np.zeros(n, np.int64),
    )


def _decode_own(
    out: RecordBatch,
    rows: np.ndarray,
    blobs: list[bytes],
    layout: RecordLayout,
    dtype: np.dtype[np.floating],
) -> None:
    """Records of this model, vectorised, into `rows` of `out`."""
    n = len(blobs)
    buf = np.frombuffer(b"".join(blobs), np.uint8).reshape(n, layout.record_bytes(dtype))
    header = np.ascontiguousarray(buf[:, : _HEADER.size]).view(_HEADER_DTYPE).reshape(n)
    out.last_ts[rows] = header["last_ts"]
    out.steps[rows] = header["steps"]
    out.applied[rows] = header["applied"]
    assert out.jump_from is not None and out.late_run is not None
    out.jump_from[rows] = header["jump_from"]
    out.late_run[rows] = header["late_run"]
    k, f = layout.history, len(layout.features)
    pos = _HEADER.size + len(_names_block(layout.features))
    assert out.history_ts is not None and out.history_values is not None
    assert out.history_len is not None
    out.history_len[rows] = header["history_len"]
    out.history_ts[rows] = np.ascontiguousarray(buf[:, pos : pos + 8 * k]).view(np.float64)
    pos += 8 * k
    width = 4 * k * f
    values = np.ascontiguousarray(buf[:, pos : pos + width]).view(np.float32)
    out.history_values[rows] = values.reshape(n, k, f)
    pos += width
    if out.last_values is not None:
        width = 4 * layout.n_last_values
        out.last_values[rows] = np.ascontiguousarray(buf[:, pos : pos + width]).view(np.float32)
        pos += width
    for size, tensor in zip(layout.sizes, out.tensors, strict=True):
        width = size * dtype.itemsize
        tensor[rows] = np.ascontiguousarray(buf[:, pos : pos + width]).view(dtype)
        pos += width
    got = _views(
        np.ascontiguousarray(buf), n, buf.shape[1], pos, layout.outstanding, layout.n_targets
    )
    if got is not None and out.outstanding is not None:
        mine = out.outstanding
        mine.made[rows], mine.done[rows], mine.base[rows] = got.made, got.done, got.base
        mine.values[rows], mine.scale[rows] = got.values, got.scale


def _decode_foreign(
    out: RecordBatch, row: int, stream_id: str, data: bytes, header: _Header, layout: RecordLayout
) -> None:
    """Another model's record into `row` of `out`: its bookkeeping, and its kept readings
    mapped onto this model's features (`unusable` when it has none or lacks a feature)."""
    out.last_ts[row] = header.last_ts
    out.steps[row] = header.steps
    out.applied[row] = header.applied
    assert out.jump_from is not None and out.late_run is not None
    out.jump_from[row] = header.jump_from
    out.late_run[row] = header.late_run
    if header.version == 1 or header.history_len == 0 or layout.history == 0:
        # nothing to re-warm from: unusable unless the stream never applied a reading
        out.unusable[row] = header.steps > 0
        return
    pos = header.size
    names = data[pos : pos + header.names].decode("utf-8", "replace").split("\n")
    pos += header.names
    k, f = header.history, header.n_features
    if len(data) < pos + k * (8 + 4 * f) or len(names) != f:
        raise StateError(f"state record for {stream_id!r} is malformed (its kept readings)")
    columns = [names.index(name) if name in names else -1 for name in layout.features]
    if -1 in columns:
        out.unusable[row] = True
        return
    ts = np.frombuffer(data, np.float64, k, pos)
    values = np.frombuffer(data, np.float32, k * f, pos + 8 * k).reshape(k, f)[:, columns]
    keep = min(header.history_len, layout.history)
    assert out.history_ts is not None and out.history_values is not None
    assert out.history_len is not None
    out.history_ts[row, layout.history - keep :] = ts[k - keep :]
    out.history_values[row, layout.history - keep :] = values[k - keep :]
    out.history_len[row] = keep
