"""A store's streams as `service.core.statecodec` records: what a checkpoint writes and a
restore reads, a batch of streams at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core import statecodec
from service.core.bookkeeping import StreamBook
from service.core.history import History
from service.core.scoring import Outstanding
from service.core.tensors import StateTensors

__all__ = ["StateRecords"]


class StateRecords:
    """Encodes slots of `tensors`, `book`, `history` and `outstanding` into records of
    `layout`, and applies decoded ones."""

    def __init__(
        self,
        tensors: StateTensors,
        book: StreamBook,
        history: History,
        outstanding: Outstanding,
        layout: statecodec.RecordLayout,
    ) -> None:
        self._tensors = tensors
        self._book = book
        self._history = history
        self._outstanding = outstanding
        self.layout = layout
        self._buffer: statecodec.RecordBuffer | None = None  # what `dump` encodes in

    def dump(self, slots: np.ndarray) -> list[bytes]:
        """One record per slot (held ones), in order."""
        buffer = self._buffer
        if buffer is None or buffer.capacity < min(len(slots), buffer.CHUNK):
            # grown in powers of two, up to a chunk: a buffer made for ten streams is not
            # made again for eleven, nor made bigger than the checkpoints that use it
            buffer = self._buffer = statecodec.RecordBuffer(
                self._tensors.dtype,
                self._tensors.record_rows(),
                self.layout,
                1 << max(0, len(slots) - 1).bit_length(),
            )
        book, history = self._book, self._history
        records: list[bytes] = []
        for start in range(0, len(slots), buffer.capacity):
            chunk = slots[start : start + buffer.capacity]
            ts, values, length = history.ordered(chunk) if history.k else (None, None, None)
            n = buffer.fill(
                book.last_ts[chunk],
                book.steps[chunk],
                book.applied[chunk],
                book.last_values[chunk] if book.n_last_values else None,
                ts,
                values,
                length,
                pending=history.due[chunk] > 0 if history.n_due else None,
                outstanding=(
                    statecodec.OutstandingRows(*self._outstanding.ordered(chunk))
                    if self._outstanding.enabled
                    else None
                ),
                **(book.jump_marks(chunk) if book.jumps else {}),
            )
            self._tensors.take_rows(chunk, buffer.tensors)
            records += buffer.records(n)
        return records

    def decode(self, ids: Sequence[str], blobs: Sequence[bytes]) -> statecodec.RecordBatch:
        """Check and decode one record per id; raises `StateError` for the first bad one."""
        return statecodec.decode(ids, blobs, self.layout)

    def load(self, slots: np.ndarray, batch: statecodec.RecordBatch) -> np.ndarray:
        """Write decoded records to `slots` (one row of `batch` each): tensors, bookkeeping
        kept readings and outstanding forecasts. The slots of foreign records get initial
        tensors and nothing outstanding; returns which rows were foreign."""
        own = ~batch.foreign
        if own.all():
            self._tensors.put_rows(slots, batch.tensors)
        else:
            mine = np.flatnonzero(own)
            self._tensors.put_rows(slots[mine], [t[mine] for t in batch.tensors])
            self._tensors.reset(slots[batch.foreign])
        self._book.load(slots, batch)
        if batch.history_len is not None and batch.history_ts is not None:
            assert batch.history_values is not None
            self._history.load(slots, batch.history_ts, batch.history_values, batch.history_len)
        rows = batch.outstanding
        if rows is not None:
            self._outstanding.load(slots, rows.made, rows.done, rows.base, rows.values, rows.scale)
        self._outstanding.clear(slots[batch.foreign])
        return batch.foreign
