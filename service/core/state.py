"""Per-stream recurrent state in preallocated arrays: `StateStore`.

A round is ``gather(slots)`` -> model -> ``scatter(slots, states)`` with no per-stream Python
work. The store composes one part per concern, each over the same slot axis:

- `service.core.slots`: the id index, the free list and the growth of the slot axis (freed
  slots are reused; arrays grow geometrically by `growth` into zeroed memory that is only
  touched when a slot is handed out, so the slack costs no resident memory);
- `service.core.tensors`: the state tensors, one array per state of the card with the slots
  on its batch axis (gather, scatter, reset);
- `service.core.bookkeeping`: per stream ``last_ts``, the steps seen since the last reset,
  ``applied_offset`` (the source offset of the last applied reading, for exactly-once
  restore), the dirty flag, the last raw values and the clock-jump marks;
- `service.core.recency`: the use tick (LRU cap) and the wall-clock time last seen (TTL): a
  round marks each of its streams with a tick of its own, and reading them back tells
  whether the round names a stream twice (`claim`);
- `service.core.history`: each stream's last K applied readings, kept to re-warm its
  state when the model changes, and which streams are due a re-warm;
- `service.core.scoring`: each stream's outstanding forecasts, scored against the readings
  that follow, and its running one-step error scale (anomaly scores);
- `service.core.staterecords`: dump and load as `service.core.statecodec` records.

Every record names the model that wrote it (`model`, a fingerprint). A record of another
model is *foreign*: its stream keeps its bookkeeping and kept readings, gets initial tensors
and is due a re-warm (`REWARM_FOREIGN_STATE`, or `REWARM_MISSING_HISTORY` when it has no
usable readings); `replace_model` makes every held stream due one (`REWARM_MODEL_CHANGE`).

The store itself keeps their interplay: a new stream takes a slot and fresh state in every
part, a stream let go (dropped, evicted, expired) gives its slot back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.core import statecodec
from service.core.bookkeeping import StreamBook
from service.core.history import History
from service.core.recency import Recency
from service.core.scoring import Outstanding
from service.core.slots import SlotTable
from service.core.staterecords import StateRecords
from service.core.tensors import StateTensors
from service.errors import StateError
from service.modelcard import StateSpec

__all__ = [
    "REWARM_FOREIGN_STATE",
    "REWARM_MISSING_HISTORY",
    "REWARM_MODEL_CHANGE",
    "REWARM_REASONS",
    "StateDType",
    "StateStore",
    "StreamInfo",
]

#: Why a stream's state is re-warmed (`StateStore.rewarm_due`), as metric labels.
REWARM_MODEL_CHANGE, REWARM_FOREIGN_STATE, REWARM_MISSING_HISTORY = 1, 2, 3
REWARM_REASONS = {
    REWARM_MODEL_CHANGE: "model_change",
    REWARM_FOREIGN_STATE: "foreign_state",
    REWARM_MISSING_HISTORY: "missing_history",
}

StateDType = Literal["float32", "float16"]

_DTYPES = ("float32", "float16")


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the store knows about one stream, besides its tensors."""

    last_ts: float
    steps: int
    applied_offset: int
    last_seen: float


def _check_options(
    dtype: str, growth: float, max_streams: int | None, ttl_seconds: float | None
) -> None:
    if dtype not in _DTYPES:
        raise StateError(f"state dtype must be float32 or float16, got {dtype!r}")
    if growth <= 1.0:
        raise StateError(f"growth must be > 1, got {growth}")
    if max_streams is not None and max_streams < 1:
        raise StateError(f"max_streams must be >= 1, got {max_streams}")
    if ttl_seconds is not None and ttl_seconds <= 0:
        raise StateError(f"ttl_seconds must be > 0, got {ttl_seconds}")


class StateStore:
    """Slots of state for any number of streams; see the module docstring.

    `n_last_values` > 0 also keeps each stream's last raw feature values (for last-value
    imputation); they are part of the dumped state. `history` > 0 keeps each stream's last
    that many applied readings of `features` (to re-warm it for another model); `model` is
    the fingerprint its records carry. `outstanding`, when given, keeps each stream's
    outstanding forecasts for scoring (`service.core.scoring`; its slot axis is the store's).
    `max_streams` caps the number of
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
        history: int = 0,
        features: Sequence[str] = (),
        model: bytes = statecodec.NO_MODEL,
        outstanding: Outstanding | None = None,
    ) -> None:
        _check_options(dtype, growth, max_streams, ttl_seconds)
        if history and not features:
            raise StateError("keeping readings (history > 0) needs the features' names")
        self.specs = list(specs)
        self.dtype = np.dtype(dtype)
        self.n_last_values = n_last_values
        self.growth = growth
        self.max_streams = max_streams
        self.ttl_seconds = ttl_seconds
        self._slots = SlotTable(growth, max_streams)
        self._tensors = StateTensors(self.specs, self.dtype)
        self._book = StreamBook(n_last_values)
        self._recency = Recency(max_streams, ttl_seconds)
        self._history = History(history, len(features))
        self.scoring = outstanding or Outstanding(1, 1, 1.0, enabled=False)
        self._records = StateRecords(
            self._tensors, self._book, self._history, self.scoring, self._layout(model, features)
        )
        self._grow(max(1, capacity if max_streams is None else min(capacity, max_streams)))

    def _grow(self, needed: int) -> None:
        """Grow every part's slot axis to hold `needed` slots (by `growth` at least)."""
        new = self._slots.capacity_for(needed)
        if new <= self._slots.capacity:
            return
        self._slots.grow(new)
        self._tensors.grow(new)
        self._book.grow(new)
        self._recency.grow(new)
        self._history.grow(new)
        self.scoring.grow(new)

    def _layout(self, model: bytes, features: Sequence[str]) -> statecodec.RecordLayout:
        return statecodec.RecordLayout(
            tuple(spec.size for spec in self.specs),
            self.n_last_values,
            model,
            tuple(features) if self._history.k else (),
            self._history.k,
            self.scoring.horizon,
            self.scoring.n_targets if self.scoring.enabled else 0,
        )

    # -- size ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slots.index)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._slots.index

    @property
    def capacity(self) -> int:
        """Slots allocated now, held or free; `ensure` grows it by `growth` (up to `max_streams`)."""
        return self._slots.capacity

    @property
    def raw_state_bytes_per_stream(self) -> int:
        """Bytes of one stream's state tensors at the storage dtype and of its kept readings:
        the floor to compare with."""
        return (
            self._tensors.bytes_per_stream
            + self._history.bytes_per_stream
            + self.scoring.bytes_per_stream
        )

    @property
    def history(self) -> int:
        """How many applied readings each stream keeps."""
        return self._history.k

    @property
    def keeps_values(self) -> bool:
        """Whether `advance` needs the applied readings' values (last values, kept readings)."""
        return bool(self.n_last_values or self._history.k)

    @property
    def state_bytes(self) -> int:
        """Bytes the store keeps resident: its arrays up to the highest slot ever handed out,
        the id index and the ids.

        Capacity beyond that slot is allocated (see `allocated_bytes`) but its pages are
        never touched until used, so the operating system does not back them.
        """
        used = self._slots.high / self._slots.capacity
        return int(self._array_bytes() * used) + self._slots.index_bytes()

    @property
    def allocated_bytes(self) -> int:
        """Bytes of address space the store holds, the full capacity of every array included."""
        return self._array_bytes() + self._slots.index_bytes()

    def _array_bytes(self) -> int:
        parts = (self._tensors.nbytes, self._book.nbytes, self._slots.nbytes, self._history.nbytes)
        return sum(parts) + self._recency.last_seen.nbytes + self.scoring.nbytes

    # -- slots --------------------------------------------------------------------------

    def slot_of(self, stream_id: str) -> int | None:
        """The slot of `stream_id`, or None when it holds no state; touches nothing."""
        return self._slots.index.get(stream_id)

    def slots_of(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Slots of `stream_ids`, -1 for unknown ones; touches nothing."""
        return self._slots.slots_of(stream_ids)

    def lookup(self, stream_ids: Sequence[str]) -> np.ndarray | None:
        """Slots of `stream_ids` if every one is known, else None; touches nothing.

        The engine's common case: one pass of dict lookups, no sentinel for unknown ids.
        """
        return self._slots.lookup(stream_ids)

    def claim(self, slots: np.ndarray) -> np.ndarray | None:
        """Mark `slots` (known streams) as used by a new round; their bookkeeping rows if
        they are distinct, else None.

        Each slot is marked with a tick of its own, and reading the ticks back tells
        whether a slot came twice (a later mark overwrote an earlier one): the distinct
        check costs the LRU bookkeeping two more array operations, and no set of ids. The
        rows (a copy, with fields ``last_ts``, ``applied``, ``steps``) can be handed to
        `advance` for the same slots.
        """
        return self._book.claim(slots, self._recency.round_ticks(len(slots)))

    def ids(self) -> list[str]:
        """The id of every stream holding state."""
        return list(self._slots.index)

    def ensure(
        self, stream_ids: Sequence[str], *, now: float = 0.0, slots: np.ndarray | None = None
    ) -> np.ndarray:
        """Slots for `stream_ids` (distinct), creating fresh state for new streams.

        Marks them all as just used; new streams count as seen at `now`. With a capacity
        cap, the least recently used streams outside `stream_ids` are evicted to make room
        (see `drain_evicted`). `slots`, when given, is `slots_of(stream_ids)` computed since
        the last change to the store (it is updated in place).
        """
        tick = self._recency.round_tick()
        if slots is None:
            slots = self._slots.slots_of(stream_ids)
        unknown = slots < 0
        if unknown.any():
            new_pos = np.flatnonzero(unknown)
            # protect the known ones from eviction below
            self._book.last_used[slots[~unknown]] = tick
            slots[new_pos] = self._allocate([stream_ids[i] for i in new_pos.tolist()], now)
        self._book.last_used[slots] = tick  # after _allocate: a growth replaces the array
        return slots

    def _allocate(self, new_ids: list[str], now: float) -> np.ndarray:
        """Slots with fresh state for `new_ids`, evicting and growing as needed."""
        excess = self._slots.excess(len(new_ids))
        if excess > 0:
            self._evict_lru(excess)
        high = self._slots.high_after(len(new_ids))
        if high > self._slots.capacity:
            self._grow(high)
        out = self._slots.assign(new_ids)
        self._tensors.reset(out)
        self._book.start(out, self._recency.tick)
        self._history.start(out)
        self.scoring.clear(out)
        self._recency.seen(out, now)
        return out

    def _evict_lru(self, needed: int) -> None:
        """Evict at least `needed` least recently used streams not in use in this call."""
        victims = self._recency.lru_victims(
            self._slots.active_slots(), self._book.last_used, needed
        )
        self._recency.evicted.extend(self._slots.ids_at(victims))
        self._release(victims)

    def _release(self, slots: np.ndarray) -> None:
        self._slots.release(slots)
        self._book.dirty[slots] = False
        self._history.unmark(slots)

    def drain_evicted(self) -> list[str]:
        """Ids evicted by the capacity cap since the last call."""
        out, self._recency.evicted = self._recency.evicted, []
        return out

    def drop(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams (unknown ids are ignored); their slots become free."""
        self._release(self._slots.held(stream_ids))

    def expire(self, now: float) -> list[str]:
        """Drop streams not seen for `ttl_seconds` before `now`; return their ids.

        Cheap when nothing can have expired yet: the oldest `last_seen` is remembered.
        """
        if not self._recency.due(now):
            return []
        victims = self._recency.expired(self._slots.active_slots(), now)
        ids = self._slots.ids_at(victims)
        self._release(victims)
        return ids

    # -- tensors ------------------------------------------------------------------------

    def gather(self, slots: np.ndarray, *, reuse: bool = False) -> list[np.ndarray]:
        """The state tensors of `slots`, batched in slot order, as float32.

        New arrays, unless `reuse`: then they are views of buffers the store keeps and
        the next ``gather(..., reuse=True)`` overwrites (for a round, whose states only live
        until the model returns). Reusing saves allocating, and the operating system
        mapping and zeroing, the round's state memory each time (~0.5 ms per 1,024 LSTM
        streams of 1 KiB).
        """
        return self._tensors.gather(slots, reuse=reuse)

    def scatter(self, slots: np.ndarray, states: Sequence[np.ndarray]) -> None:
        """Write batched `states` (as returned by the model) back to `slots`."""
        self._tensors.scatter(slots, states)

    def reset(self, slots: np.ndarray) -> None:
        """Put `slots` back to their initial state (steps seen back to 0)."""
        self._tensors.reset(slots)
        self._book.steps[slots] = 0

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
        they are updated and written back whole. `values` (raw, ``[n, features]``) are
        needed when the store `keeps_values`.
        """
        steps = self._book.advance(
            slots, ts, offsets, values, offsets_increase=offsets_increase, rows=rows
        )
        self._recency.seen(slots, now)
        if values is not None and self._history.k:
            self._history.push(slots, ts, values)
        return steps

    def advance_runs(
        self,
        slots: np.ndarray,
        counts: np.ndarray,
        ts: np.ndarray,
        offsets: np.ndarray,
        now: float,
        values: np.ndarray | None = None,
    ) -> np.ndarray:
        """Record that `counts[i]` readings were applied to slot i (distinct slots) in a row:
        `ts`, `offsets` (each above the last, the first above the slot's applied offset)
        and `values` (raw, needed when the store `keeps_values`) slot-major, each slot's in
        order. Returns the slots' steps seen before the first of them."""
        last = np.cumsum(counts) - 1
        steps = self._book.advance(
            slots,
            ts[last],
            offsets[last],
            None if values is None else values[last],
            offsets_increase=True,
            rows=None,
            count=counts,
        )
        self._recency.seen(slots, now)
        if values is not None and self._history.k:
            self._history.push_runs(slots, counts, ts, values)
        before: np.ndarray = steps - counts
        return before

    def note_jumps(self, slots: np.ndarray, before: np.ndarray) -> None:
        """The readings just applied to `slots` moved their clocks ahead by more than the
        gap limit, from `before`: remembered until their next applied reading, for
        `continue_jumped_clock`. Written with the state (`dump_many`)."""
        self._book.note_jumps(slots, before)

    def continue_jumped_clock(self, slots: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Late readings `ts` of `slots` (distinct): each that continues its stream's clock
        from before its last jump (later than the clock, or than the last such reading)
        extends the stream's run and becomes its clock's new mark. Returns each slot's run,
        0 for a reading that does not continue it."""
        return self._book.continue_jumped_clock(slots, ts)

    # -- per-stream metadata (vectorised reads for the engine) --------------------------

    def last_ts_at(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's last applied reading time, float64 epoch seconds."""
        return np.asarray(self._book.last_ts[slots])

    def steps_at(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's readings applied since its state was last reset, int64."""
        return np.asarray(self._book.steps[slots])

    def applied_offset_at(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's source offset of its last applied reading, int64 (-1: none yet)."""
        return np.asarray(self._book.applied[slots])

    def last_values_at(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's last raw feature values, float32 ``[n, n_last_values]`` (NaN: never seen)."""
        return np.asarray(self._book.last_values[slots])

    def info(self, stream_id: str) -> StreamInfo | None:
        """What the store keeps about `stream_id` besides its tensors, or None when it holds none."""
        slot = self._slots.index.get(stream_id)
        if slot is None:
            return None
        book = self._book
        return StreamInfo(
            float(book.last_ts[slot]),
            int(book.steps[slot]),
            int(book.applied[slot]),
            float(self._recency.last_seen[slot]),
        )

    def states_of(self, stream_id: str) -> list[np.ndarray] | None:
        """One stream's state tensors (per-stream shape, float32 copies), or None."""
        slot = self._slots.index.get(stream_id)
        return None if slot is None else self._tensors.states_of(slot)

    # -- checkpoints --------------------------------------------------------------------

    def dirty_ids(self) -> set[str]:
        """Streams changed since they were last cleared."""
        return set(self._slots.ids_at(np.flatnonzero(self._book.dirty)))

    def clear_dirty(self, stream_ids: Iterable[str]) -> None:
        """Mark streams unchanged since their state was written; streams no longer held are
        skipped."""
        self._book.dirty[self._slots.held(stream_ids)] = False

    def mark_dirty(self, stream_ids: Iterable[str]) -> None:
        """Mark streams changed again (a write of their state was not acknowledged);
        streams no longer held are skipped."""
        self._book.dirty[self._slots.held(stream_ids)] = True

    def dump(self, stream_id: str) -> bytes:
        """One stream's state as a compact binary record (see `service.core.statecodec`)."""
        return self.dump_many([stream_id])[0]

    def load(self, stream_id: str, data: bytes, *, now: float = 0.0) -> None:
        """Restore one stream from its record, replacing any state it has."""
        self.load_many([(stream_id, data)], now=now)

    def dump_many(self, stream_ids: Sequence[str]) -> list[bytes]:
        """Records of many streams at once (vectorised; what a checkpoint writes)."""
        slots = self._slots.slots_of(stream_ids)
        if (slots < 0).any():
            missing = [s for s, k in zip(stream_ids, slots.tolist(), strict=True) if k < 0]
            raise StateError(f"no state for streams {missing[:5]}")
        return self._records.dump(slots)

    def load_many(self, records: Sequence[tuple[str, bytes]], *, now: float = 0.0) -> None:
        """Restore many streams at once (vectorised; what a restore reads).

        Later records of a stream replace earlier ones, as when a changelog is read to its
        end. Every record is checked before any is applied.
        """
        latest = dict(records)
        if not latest:
            return
        ids = list(latest)
        batch = self._records.decode(ids, list(latest.values()))
        slots = self.ensure(ids, now=now)
        self._history.unmark(slots)
        foreign = self._records.load(slots, batch)
        self._recency.seen(slots, now)
        if foreign.any():
            started = batch.steps > 0
            self._history.mark(slots[foreign & started & ~batch.unusable], REWARM_FOREIGN_STATE)
            self._history.mark(slots[foreign & started & batch.unusable], REWARM_MISSING_HISTORY)

    # -- model changes and re-warms -------------------------------------------------------

    @property
    def model(self) -> bytes:
        """The fingerprint of the model whose states the store holds."""
        return self._records.layout.model

    @property
    def layout(self) -> statecodec.RecordLayout:
        """The layout of the records the store writes."""
        return self._records.layout

    def replace_model(
        self,
        specs: Sequence[StateSpec],
        *,
        model: bytes,
        features: Sequence[str],
        history: int,
        outstanding: Outstanding | None = None,
    ) -> None:
        """Hold another model's states from now on: tensors of `specs`, initial for every
        stream, each held stream that applied a reading due a re-warm (`rewarm_due`) from
        its kept readings, mapped onto `features` by name (a stream whose readings lack one
        is due a reset instead); `history` readings kept from now on; the old model's
        outstanding forecasts dropped (`outstanding` keeps the new model's). Bookkeeping
        (applied offsets, last timestamps, dirty flags) is kept."""
        held = self._slots.active_slots()
        old = self._records.layout.features
        columns = (
            None if tuple(features) == old else [old.index(f) if f in old else -1 for f in features]
        )
        self.specs = list(specs)
        self._tensors = StateTensors(self.specs, self.dtype)
        self._tensors.grow(self._slots.capacity)
        self._tensors.reset(held)
        lacking = self._history.resize(history, columns, held)
        self.scoring = outstanding or Outstanding(1, 1, 1.0, enabled=False)
        self.scoring.grow(self._slots.capacity)
        self.scoring.clear(held)
        self._records = StateRecords(
            self._tensors, self._book, self._history, self.scoring, self._layout(model, features)
        )
        started = held[self._book.steps[held] > 0]
        self._history.unmark(held)
        self._history.mark(started, REWARM_MODEL_CHANGE)
        self._history.mark(np.intersect1d(started, lacking), REWARM_MISSING_HISTORY)

    @property
    def rewarms_pending(self) -> bool:
        """Whether any held stream is due a re-warm."""
        return self._history.n_due > 0

    def rewarm_due(self, slots: np.ndarray) -> np.ndarray:
        """Why each of `slots` is due a re-warm (`REWARM_REASONS`), 0 where it is not."""
        return np.asarray(self._history.due[slots])

    def kept_readings(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kept readings of `slots`: timestamps ``[n, K]`` and raw values ``[n, K,
        features]``, oldest first and right-aligned, and how many are kept."""
        return self._history.ordered(slots)

    def rewarmed(self, slots: np.ndarray, steps: np.ndarray) -> None:
        """`slots` (distinct) were re-warmed over `steps` readings each: no longer due, and
        changed (their state is written at the next checkpoint)."""
        self._history.unmark(slots)
        self._book.steps[slots] = steps
        self._book.dirty[slots] = True
