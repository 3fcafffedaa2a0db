"""Per-stream recurrent state in preallocated arrays.

Each state tensor of the card lives in one array whose batch axis is the slot axis (an
LSTM's ``h`` as ``[layers, slots, hidden]``), so a round is ``gather(slots)`` -> model ->
``scatter(slots, states)`` with no per-stream Python work and no transposes. (A slot-major
block, one contiguous row per stream, was measured too: no faster at a million streams and
slower below; see docs/benchmarks.md.) A dict maps stream id to slot; freed slots are reused
and the arrays grow geometrically by `growth`, into zeroed memory that is only touched when
a slot is handed out, so the slack costs no resident memory.
Beside the tensors the store keeps, per stream, ``last_ts``, the steps seen since the last
reset, ``applied_offset`` (the source offset of the last applied reading, for exactly-once
restore), the wall-clock time it was last seen (TTL) and a use tick (LRU cap): a round marks
each of its streams with a tick of its own, and reading them back tells whether the round
names a stream twice (`claim`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from service.core import statecodec
from service.errors import StateError
from service.modelcard import StateSpec

__all__ = ["StateDType", "StateStore", "StreamInfo"]

StateDType = Literal["float32", "float16"]

_DTYPES = ("float32", "float16")
# every float16 bit pattern's float32 value (256 KiB)
_FLOAT16_TO_32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
_NO_OFFSET = -1
# what every round reads and writes per stream, in one 32-byte row: one cache line to fetch
# per stream instead of four (~70 us per round of 1,024 at a million streams)
_BOOKKEEPING = np.dtype(
    [("last_ts", np.float64), ("applied", np.int64), ("steps", np.int64), ("last_used", np.int64)]
)


def _slot_view(tensor: np.ndarray, spec: StateSpec) -> np.ndarray:
    """`tensor` seen as ``[before, slots, after]``: everything around the batch axis flattened."""
    before = int(np.prod(tensor.shape[: spec.batch_axis], dtype=np.int64))
    return tensor.reshape(before, tensor.shape[spec.batch_axis], -1)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the store knows about one stream, besides its tensors."""

    last_ts: float
    steps: int
    applied_offset: int
    last_seen: float


class StateStore:
    """Slots of state for any number of streams; see the module docstring.

    `n_last_values` > 0 also keeps each stream's last raw feature values (for last-value
    imputation); they are part of the dumped state. `max_streams` caps the number of
    streams: `ensure` evicts the least recently used ones to make room, and the evicted ids
    are collected until `drain_evicted`. `ttl_seconds` makes `expire` drop streams not seen
    for that long.
    """

    def __init__(
        self,
        specs: Sequence[StateSpec],
        *,
        dtype: StateDType = "float32",
        n_last_values: int = 0,
        capacity: int = 1024,
        growth: float = 1.25,
        max_streams: int | None = None,
        ttl_seconds: float | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise StateError(f"state dtype must be float32 or float16, got {dtype!r}")
        if growth <= 1.0:
            raise StateError(f"growth must be > 1, got {growth}")
        if max_streams is not None and max_streams < 1:
            raise StateError(f"max_streams must be >= 1, got {max_streams}")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise StateError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        self.specs = list(specs)
        self.dtype = np.dtype(dtype)
        self.n_last_values = n_last_values
        self.growth = growth
        self.max_streams = max_streams
        self.ttl_seconds = ttl_seconds
        self._layout = statecodec.RecordLayout(
            tuple(spec.size for spec in self.specs), n_last_values
        )
        capacity = max(1, capacity if max_streams is None else min(capacity, max_streams))
        self._capacity = 0
        self._tensors: list[np.ndarray] = [
            np.empty(spec.batched_shape(0), self.dtype) for spec in self.specs
        ]
        # each tensor seen as [before, slots, after]: rows are moved one leading index at a
        # time, which numpy does ~30x faster than `tensor[:, slots]` on a large array
        self._views: list[np.ndarray] = []
        # each tensor's batched shape with -1 for the batch
        self._batched = [
            (*spec.shape[: spec.batch_axis], -1, *spec.shape[spec.batch_axis :])
            for spec in self.specs
        ]
        self._half = self.dtype == np.float16
        # index prefix that puts a slot index on each tensor's batch axis
        self._lead: list[tuple[Any, ...]] = [
            (slice(None),) * spec.batch_axis for spec in self.specs
        ]
        self._book = np.empty(0, _BOOKKEEPING)
        self._field_views()
        self._last_seen = np.empty(0, np.float64)
        self._dirty = np.empty(0, np.bool_)
        self._active = np.empty(0, np.bool_)
        self._last_values = np.empty((0, n_last_values), np.float32)
        # a stream's clock before its last jump ahead (NaN: none since its last reading), and
        # how many late readings in a row continued from there (see `continue_jumped_clock`)
        self._jump_from = np.empty(0, np.float64)
        self._late_run = np.empty(0, np.int64)
        self._jumps = False  # whether any jump was ever noted (else nothing to clear)
        self._index: dict[str, int] = {}
        self._records: statecodec.RecordBuffer | None = None  # what dump_many encodes in
        # stream id per slot (None when free); an object array, unlike a list, is not
        # traversed by the garbage collector, which matters with a million streams
        self._ids = np.empty(0, object)
        self._free: list[int] = []
        self._high = 0  # slots below this have been handed out at least once
        # LRU ticks: every round marks its streams with ticks above all earlier rounds';
        # streams marked before `_round_first` are not in use in the current round
        self._tick = 0
        self._round_first = 1
        # no active stream has been seen before _next_expiry - ttl_seconds
        self._next_expiry = float("inf")
        self._evicted: list[str] = []
        self._sizes = [spec.size for spec in self.specs]
        self._gather_buffers = [np.empty(0, np.float32) for _ in self.specs]
        self._round_cache: tuple[int, list[np.ndarray], list[np.ndarray]] | None = None
        # each tensor as [before, slots] of opaque rows (one stream's `after` values), and
        # the rows' dtype; for `scatter`
        self._rows: list[np.ndarray] = []
        self._row_types: list[np.dtype[Any]] = []
        self._grow(capacity)

    # -- size ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._index

    @property
    def capacity(self) -> int:
        """Slots allocated now, held or free; `ensure` grows it by `growth` (up to `max_streams`)."""
        return self._capacity

    @property
    def raw_state_bytes_per_stream(self) -> int:
        """Bytes of one stream's state tensors at the storage dtype: the floor to compare with."""
        return sum(spec.size for spec in self.specs) * self.dtype.itemsize

    @property
    def state_bytes(self) -> int:
        """Bytes the store keeps resident: its arrays up to the highest slot ever handed out,
        the id index and the ids.

        Capacity beyond that slot is allocated (see `allocated_bytes`) but its pages are
        never touched until used, so the operating system does not back them.
        """
        used = self._high / self._capacity
        return int(self._array_bytes() * used) + self._index_bytes()

    @property
    def allocated_bytes(self) -> int:
        """Bytes of address space the store holds, the full capacity of every array included."""
        return self._array_bytes() + self._index_bytes()

    def _array_bytes(self) -> int:
        arrays = [
            *self._tensors,
            self._book,
            self._last_seen,
            self._dirty,
            self._active,
            self._last_values,
            self._jump_from,
            self._late_run,
            self._ids,
        ]
        return sum(a.nbytes for a in arrays)

    def _index_bytes(self) -> int:
        total = sys.getsizeof(self._index) + sys.getsizeof(self._free)
        total += sum(sys.getsizeof(k) for k in self._index)
        # slot numbers above the small-int cache are separate int objects
        total += max(0, len(self._index) - 257) * sys.getsizeof(1 << 20)
        return total

    def _field_views(self) -> None:
        """The bookkeeping rows' fields as arrays of their own (views, one per field)."""
        self._last_ts = self._book["last_ts"]
        self._applied = self._book["applied"]
        self._steps = self._book["steps"]
        self._last_used = self._book["last_used"]

    def _grow(self, needed: int) -> None:
        new = max(needed, int(self._capacity * self.growth) + 1)
        if self.max_streams is not None:
            new = min(new, self.max_streams)
        if new <= self._capacity:
            return
        old = self._capacity

        def grown(a: np.ndarray, axis: int) -> np.ndarray:
            # np.zeros maps untouched pages lazily, so the slack beyond the used slots costs
            # no resident memory until a slot there is handed out (and initialised) by
            # `_allocate`
            shape = list(a.shape)
            shape[axis] = new
            out = np.zeros(shape, a.dtype)
            lead: tuple[Any, ...] = (slice(None),) * axis
            out[(*lead, slice(0, old))] = a
            return out

        self._tensors = [
            grown(t, spec.batch_axis) for t, spec in zip(self._tensors, self.specs, strict=True)
        ]
        self._views = [
            _slot_view(t, spec) for t, spec in zip(self._tensors, self.specs, strict=True)
        ]
        self._row_types = [np.dtype((np.void, v.shape[2] * v.itemsize)) for v in self._views]
        self._rows = [
            v.view(np.uint8).reshape(v.shape[0], new, -1).view(row)[:, :, 0]
            for v, row in zip(self._views, self._row_types, strict=True)
        ]
        self._book = grown(self._book, 0)
        self._field_views()
        self._last_seen = grown(self._last_seen, 0)
        self._dirty = grown(self._dirty, 0)
        self._active = grown(self._active, 0)
        self._last_values = grown(self._last_values, 0)
        self._jump_from = grown(self._jump_from, 0)
        self._late_run = grown(self._late_run, 0)
        ids = np.full(new, None, object)
        ids[:old] = self._ids
        self._ids = ids
        self._capacity = new

    # -- slots --------------------------------------------------------------------------

    def slot_of(self, stream_id: str) -> int | None:
        """The slot of `stream_id`, or None when it holds no state; touches nothing."""
        return self._index.get(stream_id)

    def slots_of(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Slots of `stream_ids`, -1 for unknown ones; touches nothing."""
        n = len(stream_ids)
        return np.fromiter(map(self._index.get, stream_ids, repeat(-1, n)), np.int64, n)

    def lookup(self, stream_ids: Sequence[str]) -> np.ndarray | None:
        """Slots of `stream_ids` if every one is known, else None; touches nothing.

        The engine's common case: one pass of dict lookups, no sentinel for unknown ids.
        """
        n = len(stream_ids)
        try:
            if n > 1:  # itemgetter of one key returns the value, not a tuple
                return np.fromiter(itemgetter(*stream_ids)(self._index), np.int64, n)
            return np.array([self._index[s] for s in stream_ids], np.int64)
        except KeyError:
            return None

    def claim(self, slots: np.ndarray) -> np.ndarray | None:
        """Mark `slots` (known streams) as used by a new round; their bookkeeping rows if
        they are distinct, else None.

        Each slot is marked with a tick of its own, and reading the ticks back tells
        whether a slot came twice (a later mark overwrote an earlier one): the distinct
        check costs the LRU bookkeeping two more array operations, and no set of ids. The
        rows (a copy, with fields ``last_ts``, ``applied``, ``steps``) can be handed to
        `advance` for the same slots.
        """
        n = len(slots)
        first = self._tick + 1
        self._tick += n
        self._round_first = first
        ticks = np.arange(first, first + n, dtype=np.int64)
        self._last_used[slots] = ticks
        rows = self._book.take(slots)
        return rows if (rows["last_used"] == ticks).all() else None

    def ids(self) -> list[str]:
        """The id of every stream holding state."""
        return list(self._index)

    def ensure(
        self, stream_ids: Sequence[str], *, now: float = 0.0, slots: np.ndarray | None = None
    ) -> np.ndarray:
        """Slots for `stream_ids` (distinct), creating fresh state for new streams.

        Marks them all as just used; new streams count as seen at `now`. With a capacity
        cap, the least recently used streams outside `stream_ids` are evicted to make room
        (see `drain_evicted`). `slots`, when given, is `slots_of(stream_ids)` computed since
        the last change to the store (it is updated in place).
        """
        self._tick += 1
        self._round_first = self._tick
        if slots is None:
            slots = self.slots_of(stream_ids)
        unknown = slots < 0
        if unknown.any():
            new_pos = np.flatnonzero(unknown)
            known = slots[~unknown]
            self._last_used[known] = self._tick  # protect them from eviction below
            slots[new_pos] = self._allocate([stream_ids[i] for i in new_pos.tolist()], now)
        self._last_used[slots] = self._tick
        return slots

    def _allocate(self, new_ids: list[str], now: float) -> np.ndarray:
        n = len(new_ids)
        if self.max_streams is not None:
            if n > self.max_streams:
                raise StateError(
                    f"{n} new streams in one call exceed max_streams={self.max_streams}"
                )
            excess = len(self._index) + n - self.max_streams
            if excess > 0:
                self._evict_lru(excess)
        reuse = min(n, len(self._free))
        out = np.empty(n, np.int64)
        for i in range(reuse):
            out[i] = self._free.pop()
        fresh = n - reuse
        if fresh:
            if self._high + fresh > self._capacity:
                self._grow(self._high + fresh)
            out[reuse:] = np.arange(self._high, self._high + fresh)
            self._high += fresh
        for sid, slot in zip(new_ids, out.tolist(), strict=True):
            self._index[sid] = slot
            self._ids[slot] = sid
        self._reset_tensors(out)
        self._last_ts[out] = -np.inf
        self._steps[out] = 0
        self._applied[out] = _NO_OFFSET
        self._dirty[out] = False
        self._active[out] = True
        self._last_values[out] = np.nan
        self._jump_from[out] = np.nan
        self._late_run[out] = 0
        self._last_used[out] = self._tick
        self._mark_seen(out, now)
        return out

    def _mark_seen(self, slots: np.ndarray, now: float) -> None:
        self._last_seen[slots] = now
        if self.ttl_seconds is not None:
            self._next_expiry = min(self._next_expiry, now + self.ttl_seconds)

    def _reset_tensors(self, slots: np.ndarray) -> None:
        for view, spec in zip(self._views, self.specs, strict=True):
            for i in range(view.shape[0]):
                view[i][slots] = spec.init

    def _evict_lru(self, needed: int) -> None:
        """Evict at least `needed` least recently used streams not in use in this call.

        Finding them scans every slot, so at least 1/128 of the cap goes at once: with a
        million streams a scan costs ~15 ms and is then paid once per ~8,000 new streams.
        """
        active = np.flatnonzero(self._active[: self._high])
        used = self._last_used[active]
        evictable = active[used < self._round_first]
        if len(evictable) < needed:
            raise StateError("cannot evict a stream that is in use in this round")
        used = self._last_used[evictable]
        count = min(len(evictable), max(needed, (self.max_streams or 0) // 128))
        if count < len(evictable):
            victims = evictable[np.argpartition(used, count - 1)[:count]]
        else:
            victims = evictable
        ids: list[str | None] = self._ids[victims].tolist()
        self._evicted.extend(i for i in ids if i is not None)
        self._release(victims)

    def _release(self, slots: np.ndarray) -> None:
        for slot in slots.tolist():
            sid = self._ids[slot]
            if sid is not None:
                del self._index[sid]
                self._ids[slot] = None
                self._free.append(slot)
        self._dirty[slots] = False
        self._active[slots] = False

    def drain_evicted(self) -> list[str]:
        """Ids evicted by the capacity cap since the last call."""
        out, self._evicted = self._evicted, []
        return out

    def drop(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams (unknown ids are ignored); their slots become free."""
        slots = [self._index[s] for s in stream_ids if s in self._index]
        self._release(np.asarray(slots, np.int64))

    def expire(self, now: float) -> list[str]:
        """Drop streams not seen for `ttl_seconds` before `now`; return their ids.

        Cheap when nothing can have expired yet: the oldest `last_seen` is remembered.
        """
        if self.ttl_seconds is None or now < self._next_expiry:
            return []
        active = np.flatnonzero(self._active[: self._high])
        seen = self._last_seen[active]
        cutoff = now - self.ttl_seconds
        old = seen < cutoff
        victims = active[old]
        ids: list[str | None] = self._ids[victims].tolist()
        self._release(victims)
        remaining = seen[~old]
        self._next_expiry = (
            float(remaining.min()) + self.ttl_seconds if len(remaining) else float("inf")
        )
        return [i for i in ids if i is not None]

    # -- tensors ------------------------------------------------------------------------

    def gather(self, slots: np.ndarray, *, reuse: bool = False) -> list[np.ndarray]:
        """The state tensors of `slots`, batched in slot order, as float32.

        New arrays, unless `reuse`: then they are views of buffers the store keeps and
        the next ``gather(..., reuse=True)`` overwrites (for a round, whose states only live
        until the model returns). Reusing saves allocating, and the operating system
        mapping and zeroing, the round's state memory each time (~0.5 ms per 1,024 LSTM
        streams of 1 KiB).
        """
        batch = len(slots)
        if reuse:
            out, targets = self._round_buffers(batch)
        else:
            out = [np.empty(self._shape_of(i, batch), np.float32) for i in range(len(self.specs))]
            targets = [self._as_rows(o, i, batch) for i, o in enumerate(out)]
        for i, target in enumerate(targets):
            if self._half:
                # a table lookup widens float16 about twice as fast as numpy's astype
                bits = self._views[i].take(slots, axis=1).view(np.uint16)
                _FLOAT16_TO_32.take(bits, out=target, mode="clip")
            else:
                # whole rows as opaque items (~20% faster than rows of floats); with the
                # default mode numpy would take into a temporary and copy
                self._rows[i].take(slots, axis=1, out=target, mode="clip")
        return out

    def _as_rows(self, batched: np.ndarray, i: int, batch: int) -> np.ndarray:
        """A float32 batch of tensor `i` as `gather` writes it: float32 ``[before, batch,
        after]`` for float16 storage, else ``[before, batch]`` rows like `_rows`."""
        view = self._views[i]
        if self._half:
            return batched.reshape(view.shape[0], batch, view.shape[2])
        return batched.reshape(-1).view(self._row_types[i]).reshape(view.shape[0], batch)

    def _shape_of(self, i: int, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == -1 else d for d in self._batched[i])

    def _round_buffers(self, batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Buffers for `batch` streams' tensors (batched, and as [before, batch, after]),
        carved from kept flat arrays that grow as needed; the last batch size's are cached."""
        if self._round_cache is not None and self._round_cache[0] == batch:
            return self._round_cache[1], self._round_cache[2]
        out, targets = [], []
        for i in range(len(self._views)):
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
        for rows_of, row, state in zip(self._rows, self._row_types, states, strict=True):
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
        """Put `slots` back to their initial state (steps seen back to 0)."""
        self._reset_tensors(slots)
        self._steps[slots] = 0

    def advance(
        self,
        slots: np.ndarray,
        ts: np.ndarray,
        offsets: np.ndarray,
        now: float,
        values: np.ndarray | None = None,
        *,
        offsets_increase: bool = False,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Record that one reading per slot was applied: last_ts, steps, applied_offset.

        Returns the slots' steps seen, this reading included. `offsets_increase` says every
        offset is known to be above its slot's applied offset (it then replaces it as is).
        `rows` are the slots' bookkeeping rows from `claim`, with nothing changed since:
        they are updated and written back whole.
        """
        if rows is None:
            rows = self._book.take(slots)
        rows["last_ts"] = ts
        steps = rows["steps"]
        steps += 1
        applied = rows["applied"]
        if offsets_increase:
            applied[...] = offsets
        else:
            np.maximum(applied, offsets, out=applied)
        self._book.put(slots, rows, mode="clip")
        self._dirty[slots] = True
        if values is not None and self.n_last_values:
            self._last_values[slots] = values
        if self._jumps:
            self._jump_from[slots] = np.nan
        self._mark_seen(slots, now)
        return steps

    def note_jumps(self, slots: np.ndarray, before: np.ndarray) -> None:
        """The readings just applied to `slots` moved their clocks ahead by more than the
        gap limit, from `before`: remembered until their next applied reading, for
        `continue_jumped_clock`. Kept in memory only, not in the changelog record."""
        self._jumps = True
        self._jump_from[slots] = before
        self._late_run[slots] = 0

    def continue_jumped_clock(self, slots: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Late readings `ts` of `slots` (distinct): each that continues its stream's clock
        from before its last jump (later than the clock, or than the last such reading)
        extends the stream's run and becomes its clock's new mark. Returns each slot's run,
        0 for a reading that does not continue it."""
        mark = self._jump_from[slots]
        continues = ts > mark  # NaN (no jump) fails
        if not continues.any():
            return np.zeros(len(slots), np.int64)
        on = slots[continues]
        self._late_run[on] += 1
        self._jump_from[on] = ts[continues]
        return np.where(continues, self._late_run[slots], 0)

    # -- per-stream metadata (vectorised reads for the engine) --------------------------

    def last_ts_at(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's last applied reading time, float64 epoch seconds."""
        return np.asarray(self._last_ts[slots])

    def steps_at(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's readings applied since its state was last reset, int64."""
        return np.asarray(self._steps[slots])

    def applied_offset_at(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's source offset of its last applied reading, int64 (-1: none yet)."""
        return np.asarray(self._applied[slots])

    def last_values_at(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's last raw feature values, float32 ``[n, n_last_values]`` (NaN: never seen)."""
        return np.asarray(self._last_values[slots])

    def info(self, stream_id: str) -> StreamInfo | None:
        """What the store keeps about `stream_id` besides its tensors, or None when it holds none."""
        slot = self._index.get(stream_id)
        if slot is None:
            return None
        return StreamInfo(
            float(self._last_ts[slot]),
            int(self._steps[slot]),
            int(self._applied[slot]),
            float(self._last_seen[slot]),
        )

    def states_of(self, stream_id: str) -> list[np.ndarray] | None:
        """One stream's state tensors (per-stream shape, float32 copies), or None."""
        slot = self._index.get(stream_id)
        if slot is None:
            return None
        return [
            np.array(t[(*lead, slot)], np.float32)
            for t, lead in zip(self._tensors, self._lead, strict=True)
        ]

    # -- checkpoints --------------------------------------------------------------------

    def dirty_ids(self) -> set[str]:
        """Streams changed since they were last cleared."""
        ids: list[str | None] = self._ids[np.flatnonzero(self._dirty)].tolist()
        return {s for s in ids if s is not None}

    def clear_dirty(self, stream_ids: Iterable[str]) -> None:
        """Mark streams unchanged since their state was written; streams no longer held are
        skipped."""
        slots = [self._index[s] for s in stream_ids if s in self._index]
        self._dirty[np.asarray(slots, np.int64)] = False

    def mark_dirty(self, stream_ids: Iterable[str]) -> None:
        """Mark streams changed again (a write of their state was not acknowledged);
        streams no longer held are skipped."""
        slots = [self._index[s] for s in stream_ids if s in self._index]
        self._dirty[np.asarray(slots, np.int64)] = True

    def dump(self, stream_id: str) -> bytes:
        """One stream's state as a compact binary record (see `service.core.statecodec`)."""
        return self.dump_many([stream_id])[0]

    def load(self, stream_id: str, data: bytes, *, now: float = 0.0) -> None:
        """Restore one stream from its record, replacing any state it has."""
        self.load_many([(stream_id, data)], now=now)

    def dump_many(self, stream_ids: Sequence[str]) -> list[bytes]:
        """Records of many streams at once (vectorised; what a checkpoint writes)."""
        slots = self.slots_of(stream_ids)
        if (slots < 0).any():
            missing = [s for s, k in zip(stream_ids, slots.tolist(), strict=True) if k < 0]
            raise StateError(f"no state for streams {missing[:5]}")
        buffer = self._records
        if buffer is None:
            rows = [(v.shape[0], v.shape[2] * v.itemsize) for v in self._views]
            buffer = self._records = statecodec.RecordBuffer(self.dtype, rows, self.n_last_values)
        records: list[bytes] = []
        for start in range(0, len(slots), buffer.CHUNK):
            chunk = slots[start : start + buffer.CHUNK]
            n = buffer.fill(
                self._last_ts[chunk],
                self._steps[chunk],
                self._applied[chunk],
                self._last_values[chunk] if self.n_last_values else None,
            )
            for held, out in zip(self._rows, buffer.tensors, strict=True):
                for i in range(held.shape[0]):
                    np.take(held[i], chunk, out=out[:n, i], mode="clip")
            records += buffer.records(n)
        return records

    def load_many(self, records: Sequence[tuple[str, bytes]], *, now: float = 0.0) -> None:
        """Restore many streams at once (vectorised; what a restore reads).

        Later records of a stream replace earlier ones, as when a changelog is read to its
        end. Every record is checked before any is applied.
        """
        latest = dict(records)
        if not latest:
            return
        ids = list(latest)
        batch = statecodec.decode(ids, list(latest.values()), self._layout)
        slots = self.ensure(ids, now=now)
        n = len(ids)
        for view, rows in zip(self._views, batch.tensors, strict=True):
            batched = rows.reshape(n, view.shape[0], view.shape[2]).transpose(1, 0, 2)
            for i in range(view.shape[0]):
                view[i][slots] = batched[i]
        if batch.last_values is not None:
            self._last_values[slots] = batch.last_values
        self._last_ts[slots] = batch.last_ts
        self._steps[slots] = batch.steps
        self._applied[slots] = batch.applied
        self._jump_from[slots] = np.nan
        self._late_run[slots] = 0
        self._dirty[slots] = False
        self._mark_seen(slots, now)
