"""A store's streams as `service.core.statecodec` records: what a checkpoint writes and a
restore reads, a batch of streams at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core import statecodec
from service.core.bookkeeping import StreamBook
from service.core.tensors import StateTensors

__all__ = ["StateRecords"]


class StateRecords:
    """Encodes slots of `tensors` and `book` into records, and applies decoded ones."""

    def __init__(self, tensors: StateTensors, book: StreamBook) -> None:
        self._tensors = tensors
        self._book = book
        self.layout = statecodec.RecordLayout(
            tuple(spec.size for spec in tensors.specs), book.n_last_values
        )
        self._buffer: statecodec.RecordBuffer | None = None  # what `dump` encodes in

    def dump(self, slots: np.ndarray) -> list[bytes]:
        """One record per slot (held ones), in order."""
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = statecodec.RecordBuffer(
                self._tensors.dtype, self._tensors.record_rows(), self._book.n_last_values
            )
        book = self._book
        records: list[bytes] = []
        for start in range(0, len(slots), buffer.CHUNK):
            chunk = slots[start : start + buffer.CHUNK]
            n = buffer.fill(
                book.last_ts[chunk],
                book.steps[chunk],
                book.applied[chunk],
                book.last_values[chunk] if book.n_last_values else None,
            )
            self._tensors.take_rows(chunk, buffer.tensors)
            records += buffer.records(n)
        return records

    def decode(self, ids: Sequence[str], blobs: Sequence[bytes]) -> statecodec.RecordBatch:
        """Check and decode one record per id; raises `StateError` for the first bad one."""
        return statecodec.decode(ids, blobs, self.layout)

    def load(self, slots: np.ndarray, batch: statecodec.RecordBatch) -> None:
        """Write decoded records to `slots` (one row of `batch` each): tensors and bookkeeping."""
        self._tensors.put_rows(slots, batch.tensors)
        self._book.load(slots, batch)
