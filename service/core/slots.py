"""Which slot holds which stream: the id index, the free list and the growth of the slot axis.

A slot is a stream's index on the slot axis of every per-stream array of a `StateStore`.
Freed slots are handed out again (the last freed first); fresh ones from the high-water mark
up, and when those run out the store grows every array geometrically by `growth` (up to
`max_streams`) with `grown`, into zeroed memory that is only touched when a slot is handed
out, so the slack costs no resident memory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np

from service.errors import StateError

__all__ = ["SlotTable", "grown"]


def grown(array: np.ndarray, new: int, axis: int = 0) -> np.ndarray:
    """`array` with its slot axis (`axis`) grown to `new`, the slots added zeroed."""
    # np.zeros maps untouched pages lazily, so the slack beyond the used slots costs no
    # resident memory until a slot there is handed out (and initialised)
    shape = list(array.shape)
    old = shape[axis]
    shape[axis] = new
    out = np.zeros(shape, array.dtype)
    lead: tuple[Any, ...] = (slice(None),) * axis
    out[(*lead, slice(0, old))] = array
    return out


class SlotTable:
    """The slots of a store's streams and the capacity of its slot axis.

    `index` maps stream id to slot, `ids` slot to stream id (None when free) and `active`
    tells the slots a stream holds. The table only grows through `grow`, which the store
    calls with `capacity_for` when `high_after` says the slots run out.
    """

    def __init__(self, growth: float, max_streams: int | None) -> None:
        self.growth = growth
        self.max_streams = max_streams
        self.capacity = 0
        self.index: dict[str, int] = {}
        # stream id per slot (None when free); an object array, unlike a list, is not
        # traversed by the garbage collector, which matters with a million streams
        self.ids = np.empty(0, object)
        self.active = np.empty(0, np.bool_)
        self.free: list[int] = []
        self.high = 0  # slots below this have been handed out at least once

    def __len__(self) -> int:
        return len(self.index)

    # -- capacity -----------------------------------------------------------------------

    def capacity_for(self, needed: int) -> int:
        """The capacity to grow to for `needed` slots: at least `growth` times the current
        one, never above `max_streams`."""
        new = max(needed, int(self.capacity * self.growth) + 1)
        return new if self.max_streams is None else min(new, self.max_streams)

    def grow(self, new: int) -> None:
        """Grow the slot axis to `new` slots (`new` above `capacity`)."""
        ids = np.full(new, None, object)
        ids[: self.capacity] = self.ids
        self.ids = ids
        self.active = grown(self.active, new)
        self.capacity = new

    def high_after(self, n: int) -> int:
        """The high-water mark once `n` more slots are handed out (free ones first)."""
        return self.high + max(0, n - len(self.free))

    def excess(self, n: int) -> int:
        """How many streams must go before `n` new ones fit under `max_streams` (<= 0: none).

        Raises `StateError` when `n` alone exceeds the cap.
        """
        if self.max_streams is None:
            return 0
        if n > self.max_streams:
            raise StateError(f"{n} new streams in one call exceed max_streams={self.max_streams}")
        return len(self.index) + n - self.max_streams

    # -- lookups (touch nothing) --------------------------------------------------------

    def slots_of(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Slots of `stream_ids`, -1 for unknown ones."""
        n = len(stream_ids)
        return np.fromiter(map(self.index.get, stream_ids, repeat(-1, n)), np.int64, n)

    def lookup(self, stream_ids: Sequence[str]) -> np.ndarray | None:
        """Slots of `stream_ids` if every one is known, else None."""
        n = len(stream_ids)
        try:
            if n > 1:  # itemgetter of one key returns the value, not a tuple
                return np.fromiter(itemgetter(*stream_ids)(self.index), np.int64, n)
            return np.array([self.index[s] for s in stream_ids], np.int64)
        except KeyError:
            return None

    def held(self, stream_ids: Iterable[str]) -> np.ndarray:
        """Slots of those of `stream_ids` that hold state, in order; unknown ids skipped."""
        index = self.index
        return np.asarray([index[s] for s in stream_ids if s in index], np.int64)

    def active_slots(self) -> np.ndarray:
        """Every slot a stream holds, ascending."""
        return np.flatnonzero(self.active[: self.high])

    def ids_at(self, slots: np.ndarray) -> list[str]:
        """The stream ids holding `slots`, free slots left out."""
        ids: list[str | None] = self.ids[slots].tolist()
        return [s for s in ids if s is not None]

    # -- handing out and taking back ----------------------------------------------------

    def assign(self, new_ids: Sequence[str]) -> np.ndarray:
        """Slots for `new_ids` (unknown, distinct): free ones first, then fresh ones from
        the high-water mark, which must fit in `capacity` (see `high_after`)."""
        n = len(new_ids)
        reuse = min(n, len(self.free))
        out = np.empty(n, np.int64)
        for i in range(reuse):
            out[i] = self.free.pop()
        fresh = n - reuse
        if fresh:
            out[reuse:] = np.arange(self.high, self.high + fresh)
            self.high += fresh
        for sid, slot in zip(new_ids, out.tolist(), strict=True):
            self.index[sid] = slot
            self.ids[slot] = sid
        self.active[out] = True
        return out

    def release(self, slots: np.ndarray) -> None:
        """Free `slots`: their streams are forgotten and the slots go on the free list."""
        for slot in slots.tolist():
            sid = self.ids[slot]
            if sid is not None:
                del self.index[sid]
                self.ids[slot] = None
                self.free.append(slot)
        self.active[slots] = False

    # -- memory -------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of the per-slot arrays (ids and active flags), full capacity included."""
        return int(self.ids.nbytes + self.active.nbytes)

    def index_bytes(self) -> int:
        """Bytes of the id index and the free list, the id strings and slot numbers included."""
        total = sys.getsizeof(self.index) + sys.getsizeof(self.free)
        total += sum(sys.getsizeof(k) for k in self.index)
        # slot numbers above the small-int cache are separate int objects
        total += max(0, len(self.index) - 257) * sys.getsizeof(1 << 20)
        return total
