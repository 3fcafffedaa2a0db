"""A store's state tensors: one preallocated array per state of the card, slots on its batch axis.

Each state tensor lives in one array whose batch axis is the slot axis (an LSTM's ``h`` as
``[layers, slots, hidden]``), so a round is ``gather(slots)`` -> model -> ``scatter(slots,
states)`` with no per-stream Python work and no transposes. (A slot-major block, one
contiguous row per stream, was measured too: no faster at a million streams and slower
below; see docs/benchmarks.md.) Tensors are stored at float32 or float16 and handed out as
float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.core.slots import grown
from service.modelcard import StateSpec

__all__ = ["StateTensors"]

# every float16 bit pattern's float32 value (256 KiB)
_FLOAT16_TO_32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def _slot_view(tensor: np.ndarray, spec: StateSpec) -> np.ndarray:
    """`tensor` seen as ``[before, slots, after]``: everything around the batch axis flattened."""
    before = int(np.prod(tensor.shape[: spec.batch_axis], dtype=np.int64))
    return tensor.reshape(before, tensor.shape[spec.batch_axis], -1)


class StateTensors:
    """The state tensors of every slot, for `specs` at the storage `dtype`.

    `tensors` are the arrays in their batched shapes; `views` the same as ``[before, slots,
    after]``; `rows` the same as ``[before, slots]`` of opaque rows (one stream's `after`
    values as one item of dtype ``row_types[i]``), what whole rows are moved as.
    """

    def __init__(self, specs: list[StateSpec], dtype: np.dtype[Any]) -> None:
        self.specs = specs
        self.dtype = dtype
        self.half = dtype == np.float16
        self.tensors: list[np.ndarray] = [np.empty(spec.batched_shape(0), dtype) for spec in specs]
        # rows are moved one leading index at a time, which numpy does ~30x faster than
        # `tensor[:, slots]` on a large array
        self.views: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.row_types: list[np.dtype[Any]] = []
        # each tensor's batched shape with -1 for the batch
        self._batched = [
            (*spec.shape[: spec.batch_axis], -1, *spec.shape[spec.batch_axis :]) for spec in specs
        ]
        # index prefix that puts a slot index on each tensor's batch axis
        self._lead: list[tuple[Any, ...]] = [(slice(None),) * spec.batch_axis for spec in specs]
        self._sizes = [spec.size for spec in specs]
        self._gather_buffers = [np.empty(0, np.float32) for _ in specs]
        self._round_cache: tuple[int, list[np.ndarray], list[np.ndarray]] | None = None

    def grow(self, new: int) -> None:
        """Grow the slot axis to `new` slots."""
        pairs = zip(self.tensors, self.specs, strict=True)
        self.tensors = [grown(t, new, spec.batch_axis) for t, spec in pairs]
        self.views = [_slot_view(t, s) for t, s in zip(self.tensors, self.specs, strict=True)]
        self.row_types = [np.dtype((np.void, v.shape[2] * v.itemsize)) for v in self.views]
        self.rows = [
            v.view(np.uint8).reshape(v.shape[0], new, -1).view(row)[:, :, 0]
            for v, row in zip(self.views, self.row_types, strict=True)
        ]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors, full capacity included."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def bytes_per_stream(self) -> int:
        """Bytes of one stream's tensors at the storage dtype."""
        return sum(self._sizes) * self.dtype.itemsize

    # -- a round ------------------------------------------------------------------------

    def gather(self, slots: np.ndarray, *, reuse: bool = False) -> list[np.ndarray]:
        """The tensors of `slots`, batched, float32; see `StateStore.gather`."""
        batch = len(slots)
        if reuse:
            out, targets = self._round_buffers(batch)
        else:
            out = [np.empty(self._shape_of(i, batch), np.float32) for i in range(len(self.specs))]
            targets = [self._as_rows(o, i, batch) for i, o in enumerate(out)]
        for i, target in enumerate(targets):
            if self.half:
                # a table lookup widens float16 about twice as fast as numpy's astype
                bits = self.views[i].take(slots, axis=1).view(np.uint16)
                _FLOAT16_TO_32.take(bits, out=target, mode="clip")
            else:
                # whole rows as opaque items (~20% faster than rows of floats); with the
                # default mode numpy would take into a temporary and copy
                self.rows[i].take(slots, axis=1, out=target, mode="clip")
        return out

    def _as_rows(self, batched: np.ndarray, i: int, batch: int) -> np.ndarray:
        """A float32 batch of tensor `i` as `gather` writes it: float32 ``[before, batch,
        after]`` for float16 storage, else ``[before, batch]`` rows like `rows`."""
        view = self.views[i]
        if self.half:
            return batched.reshape(view.shape[0], batch, view.shape[2])
        return batched.reshape(-1).view(self.row_types[i]).reshape(view.shape[0], batch)

    def _shape_of(self, i: int, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == -1 else d for d in self._batched[i])

    def _round_buffers(self, batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Buffers for `batch` streams' tensors (batched, and as `gather` writes them),
        carved from kept flat arrays that grow as needed; the last batch size's are cached."""
        if self._round_cache is not None and self._round_cache[0] == batch:
            return self._round_cache[1], self._round_cache[2]
        out, targets = [], []
        for i in range(len(self.views)):
            size = batch * self._sizes[i]
            flat = self._gather_buffers[i]
            if len(flat) < size:
                flat = self._gather_buffers[i] = np.empty(max(size, 2 * len(flat)), np.float32)
            out.append(flat[:size].reshape(self._shape_of(i, batch)))
            targets.append(self._as_rows(flat[:size], i, batch))
        self._round_cache = (batch, out, targets)
        return out, targets

    def scatter(self, slots: np.ndarray, states: Sequence[np.ndarray]) -> None:
        """Write batched `states` (as returned by the model) back to `slots`."""
        batch = len(slots)
        for rows_of, row, state in zip(self.rows, self.row_types, states, strict=True):
            if state.dtype != self.dtype or not state.flags.c_contiguous:
                state = np.ascontiguousarray(state, self.dtype)
            rows = state.reshape(-1).view(row)  # [before * batch] opaque rows
            # one `put` per leading index, of whole rows as opaque items: much faster than
            # `view[:, slots] = rows` on large arrays, ~40% faster than moving rows of
            # floats, and `put` without bounds checks (mode="clip") ~25% faster than an
            # indexed assignment
            for i in range(rows_of.shape[0]):
                rows_of[i].put(slots, rows[i * batch : (i + 1) * batch], mode="clip")

    def reset(self, slots: np.ndarray) -> None:
        """Put the tensors of `slots` back to each spec's initial value."""
        for view, spec in zip(self.views, self.specs, strict=True):
            for i in range(view.shape[0]):
                view[i][slots] = spec.init

    # -- one stream, and records --------------------------------------------------------

    def states_of(self, slot: int) -> list[np.ndarray]:
        """The tensors of one slot in their per-stream shapes, as float32 copies."""
        return [
            np.array(t[(*lead, slot)], np.float32)
            for t, lead in zip(self.tensors, self._lead, strict=True)
        ]

    def record_rows(self) -> list[tuple[int, int]]:
        """Each tensor's rows per stream and bytes per row, as a record lays them out."""
        return [(v.shape[0], v.shape[2] * v.itemsize) for v in self.views]

    def take_rows(self, slots: np.ndarray, outs: Sequence[np.ndarray]) -> None:
        """Copy the rows of `slots` into `outs`, one ``[>= len(slots), rows]`` array of row
        items per tensor (`statecodec.RecordBuffer.tensors`)."""
        n = len(slots)
        for held, out in zip(self.rows, outs, strict=True):
            for i in range(held.shape[0]):
                np.take(held[i], slots, out=out[:n, i], mode="clip")

    def put_rows(self, slots: np.ndarray, tensors: Sequence[np.ndarray]) -> None:
        """Write decoded records' tensors, one ``[len(slots), size]`` array each, to `slots`."""
        n = len(slots)
        for view, rows in zip(self.views, tensors, strict=True):
            batched = rows.reshape(n, view.shape[0], view.shape[2]).transpose(1, 0, 2)
            for i in range(view.shape[0]):
                view[i][slots] = batched[i]
