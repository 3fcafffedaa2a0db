"""The streaming engine: readings in; forecasts, rejects and drops out.

`StreamEngine.process_batch` applies a `ReadingBatch` (readings as columns: ids, timestamps,
a float32 value matrix) to the per-stream state in the `StateStore` and returns a
`ForecastBatch`, with no per-reading Python objects on the way; `process` is the same behind
an adapter for lists of `Reading` objects. Each call runs the step model once per *round*
over every stream with a pending reading. A batch holding several readings of one stream is
split into waves: wave k holds the k-th reading of each stream, so the readings of a stream
are applied in order, one round each, and the result never depends on how readings were
batched.

Per reading, in this order:

1. ``offset <= applied_offset`` of its stream: dropped as already applied (a replay after a
   crash; the state already holds it);
2. values are checked against the card (unknown, missing, non-numeric, non-finite feature
   values, a non-finite timestamp): rejected, or missing and non-finite values imputed with
   the stream's last value when configured;
3. ``ts == last_ts``: dropped as a duplicate; ``ts < last_ts``: dropped as late;
4. a gap of more than ``max_gap_periods`` card periods since ``last_ts`` resets the stream's
   state under the ``reset`` gap policy;
5. the reading is applied and its forecast made, de-normalised with the card's scaler, for
   ``ts + k * period`` (k = 1..horizon), ``warm`` once the stream has seen the card's
   warm-up steps since its state was last (re)initialised.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Literal, NamedTuple

import numpy as np

from service.core.model import StepModel
from service.core.readings import (
    DropReason,
    Forecast,
    ForecastBatch,
    Reading,
    ReadingBatch,
    Reject,
    RejectReason,
)
from service.core.state import StateDType, StateStore
from service.core.values import FeatureValues, Problems
from service.errors import ConfigError, InferenceError
from service.modelcard import ModelCard

__all__ = ["BatchResult", "EngineConfig", "EngineResult", "EngineStats", "StreamEngine"]

# what one round hands back: the batch rows it applied (None: all, in order), their
# forecast values in original units and their warm flags
_Round = tuple[np.ndarray | None, np.ndarray, np.ndarray]


class _RoundBuffers(NamedTuple):
    """What a round of `batch` readings reuses: the model input and the tiled scalers."""

    batch: int
    x: np.ndarray  # [batch, 1, n_features], the model input
    x_rows: np.ndarray  # the same memory as [batch, n_features]
    x_mean: np.ndarray  # [batch, n_features]
    x_std: np.ndarray
    y_shape: tuple[int, ...]  # what the model must return
    values_shape: tuple[int, int, int]  # [batch, horizon, n_targets]
    y_std: np.ndarray  # [batch, horizon, n_targets]
    y_mean: np.ndarray


@dataclass(frozen=True)
class EngineConfig:
    """How the engine treats gaps, bad values, idle streams and capacity."""

    max_gap_periods: float = 10.0
    """A gap longer than this many card periods triggers the gap policy."""
    gap_policy: Literal["reset", "keep"] = "reset"
    impute: Literal["reject", "last"] = "reject"
    """Missing or non-finite feature values: reject the reading, or use the stream's last value."""
    ttl_seconds: float | None = None
    """Streams not seen for this long (wall clock, the `now` given to `process`) expire."""
    max_streams: int | None = None
    """Capacity cap; beyond it the least recently used streams are evicted (at least 1/128 of
    the cap at a time, which amortises the search for them)."""
    state_dtype: StateDType = "float32"
    initial_capacity: int = 1024
    out_of_range: Literal["reject", "clip", "accept"] = "reject"
    """A value beyond the card's training range by more than `out_of_range_margin` training
    standard deviations: reject the reading, clip the value to that bound, or accept it."""
    out_of_range_margin: float = 10.0
    clock_recovery: int = 2
    """Consecutive readings continuing a stream's clock from before a jump ahead of more than
    the gap limit that set the clock back (the jump was a bad timestamp); 0: never."""

    def __post_init__(self) -> None:
        if not self.max_gap_periods > 0:
            raise ConfigError(f"max_gap_periods must be > 0, got {self.max_gap_periods}")
        if self.gap_policy not in ("reset", "keep"):
            raise ConfigError(f"gap_policy must be 'reset' or 'keep', got {self.gap_policy!r}")
        if self.impute not in ("reject", "last"):
            raise ConfigError(f"impute must be 'reject' or 'last', got {self.impute!r}")
        if self.ttl_seconds is not None and not self.ttl_seconds > 0:
            raise ConfigError(f"ttl_seconds must be > 0 or unset, got {self.ttl_seconds}")
        if self.max_streams is not None and self.max_streams < 1:
            raise ConfigError(f"max_streams must be >= 1 or unset, got {self.max_streams}")
        if self.state_dtype not in ("float32", "float16"):
            raise ConfigError(f"state_dtype must be float32 or float16, got {self.state_dtype!r}")
        if self.initial_capacity < 1:
            raise ConfigError(f"initial_capacity must be >= 1, got {self.initial_capacity}")
        if self.out_of_range not in ("reject", "clip", "accept"):
            raise ConfigError(
                f"out_of_range must be 'reject', 'clip' or 'accept', got {self.out_of_range!r}"
            )
        if not self.out_of_range_margin >= 0:
            raise ConfigError(f"out_of_range_margin must be >= 0, got {self.out_of_range_margin}")
        if self.clock_recovery < 0:
            raise ConfigError(f"clock_recovery must be >= 0, got {self.clock_recovery}")


@dataclass
class EngineResult:
    """What one `process` call did. `round_sizes`/`round_seconds` have one entry per model call."""

    forecasts: list[Forecast] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    drops: list[tuple[Reading, DropReason]] = field(default_factory=list)
    round_sizes: list[int] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    resets: int = 0
    gaps: int = 0
    """Readings that came after a gap longer than ``max_gap_periods`` (reset or not)."""
    clock_resets: int = 0
    """Streams whose clock was set back by `EngineConfig.clock_recovery` (state reset)."""
    evicted: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


@dataclass
class BatchResult:
    """What one `process_batch` call did; rejects and drops name rows of the batch.

    `reject_rows[i]` is the row of `rejects[i]`; `drops` holds ``(row, reason)`` pairs.
    """

    forecasts: ForecastBatch
    rejects: list[Reject] = field(default_factory=list)
    reject_rows: list[int] = field(default_factory=list)
    drops: list[tuple[int, DropReason]] = field(default_factory=list)
    round_sizes: list[int] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    resets: int = 0
    gaps: int = 0
    """Readings that came after a gap longer than ``max_gap_periods`` (reset or not)."""
    clock_resets: int = 0
    """Streams whose clock was set back by `EngineConfig.clock_recovery` (state reset)."""
    evicted: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


@dataclass
class EngineStats:
    """Cumulative counters since the engine started (for metrics)."""

    readings: int = 0
    forecasts: int = 0
    rejects: dict[RejectReason, int] = field(default_factory=dict)
    drops: dict[DropReason, int] = field(default_factory=dict)
    resets: int = 0
    gaps: int = 0
    clock_resets: int = 0
    evicted: int = 0
    expired: int = 0
    rounds: int = 0
    model_seconds: float = 0.0

    def add(self, result: EngineResult | BatchResult, readings: int) -> None:
        """Count one call's `result`, which applied `readings` readings."""
        self.readings += readings
        self.forecasts += len(result.forecasts)
        for reject in result.rejects:
            self.rejects[reject.reason] = self.rejects.get(reject.reason, 0) + 1
        for _, reason in result.drops:
            self.drops[reason] = self.drops.get(reason, 0) + 1
        self.resets += result.resets
        self.gaps += result.gaps
        self.clock_resets += result.clock_resets
        self.evicted += len(result.evicted)
        self.expired += len(result.expired)
        self.rounds += len(result.round_sizes)
        self.model_seconds += sum(result.round_seconds)


class StreamEngine:
    """Applies readings to per-stream recurrent state and makes forecasts; see the module doc."""

    def __init__(
        self, model: StepModel, config: EngineConfig | None = None, store: StateStore | None = None
    ) -> None:
        self.model = model
        self.card: ModelCard = model.card
        self.config = config = config or EngineConfig()
        card = self.card
        self.store = (
            store
            if store is not None
            else StateStore(
                card.states,
                dtype=config.state_dtype,
                n_last_values=card.n_features if config.impute == "last" else 0,
                capacity=config.initial_capacity,
                max_streams=config.max_streams,
                ttl_seconds=config.ttl_seconds,
            )
        )
        if self.store.specs != list(card.states):
            raise ConfigError("the state store's tensors do not match the model card's states")
        if config.impute == "last" and self.store.n_last_values != card.n_features:
            raise ConfigError("last-value imputation needs a store that keeps the last values")
        self.stats = EngineStats()
        self._features = list(card.features)
        self._values = FeatureValues(card.features, impute=config.impute == "last")
        self._x_mean = np.asarray(card.scaler.features.mean, np.float32)
        self._x_std = np.asarray(card.scaler.features.std, np.float32)
        # tiled over the horizon, so de-normalising runs over rows of horizon * n_targets
        # values rather than an inner loop of n_targets (~10x faster with 3 targets)
        self._y_mean = np.tile(np.asarray(card.scaler.targets.mean, np.float32), card.horizon)
        self._y_std = np.tile(np.asarray(card.scaler.targets.std, np.float32), card.horizon)
        self._x_flat = np.empty((0, card.n_features), np.float32)
        self._horizon_offsets = np.arange(1, card.horizon + 1, dtype=np.float64) * card.period
        self._max_gap = config.max_gap_periods * card.period
        self._bounds = self._value_bounds()
        # a placeholder until a call's forecasts are known
        self._no_forecasts = ForecastBatch.empty(card.horizon, card.n_targets, card.period)
        self._y_shape = (card.horizon, card.n_targets)
        self._buffers = self._round_buffers(0)

    # -- public -------------------------------------------------------------------------

    @property
    def values(self) -> FeatureValues:
        """How this engine reads feature values (its card's features; imputing or not), for a
        decoder that builds `ReadingBatch` values."""
        return self._values

    def process_batch(self, batch: ReadingBatch, *, now: float | None = None) -> BatchResult:
        """Apply a columnar batch (any mix of streams, each stream's in order); see the module doc.

        The hot path: no per-reading Python objects, one model call per round. Forecasts
        come back in the batch's row order (sharing the batch's columns when every row
        made one); `BatchResult.reject_rows` and the drops name rows of `batch`. `now` is the wall-clock time used for TTL expiry and last-seen
        bookkeeping (``time.time()`` when not given). If the model fails (`InferenceError`),
        rounds already run in this call stay applied; their readings are dropped as already
        applied (or duplicates) if the batch is processed again.
        """
        now = time.time() if now is None else now
        store = self.store
        expired = store.expire(now)
        if self._bounds is not None and len(batch.ts):
            self._check_ranges(batch)
        ids = batch.stream_ids
        n, cap = len(ids), store.max_streams
        fits = n > 0 and (cap is None or n <= cap)
        known = store.lookup(ids)  # None when some stream is new
        if known is not None:
            slots = known
            rows = store.claim(slots) if fits else None
            distinct = rows is not None
            if rows is not None:
                clean = self._clean_round(batch, slots, rows, now)
                if clean is not None:
                    clean.expired = expired
                    self.stats.add(clean, n)
                    return clean
        else:
            slots = store.slots_of(ids)
            distinct = fits and self._distinct(ids, slots)
        # the general path: rejects, drops, gaps, new streams, several readings of a stream
        result = BatchResult(self._no_forecasts)
        result.expired = expired
        waves: list[np.ndarray | None] = [None] if distinct else list(self._waves(ids))
        rounds: list[_Round] = []
        rejects: list[tuple[int, Reject]] = []
        drops: list[tuple[int, DropReason]] = []
        for idx in waves:
            done = self._apply(batch, idx, now, result, rejects, drops, slots)
            if done is not None:
                rounds.append(done)
        card = self.card
        result.forecasts = (
            self._forecasts(batch, rounds)
            if rounds
            else ForecastBatch.empty(card.horizon, card.n_targets, card.period)
        )
        if len(waves) > 1:
            rejects.sort(key=itemgetter(0))
            drops.sort(key=itemgetter(0))
        result.reject_rows = [i for i, _ in rejects]
        result.rejects = [r for _, r in rejects]
        result.drops = drops
        result.evicted = store.drain_evicted()
        self.stats.add(result, n)
        return result

    def _clean_round(
        self, batch: ReadingBatch, slots: np.ndarray, rows: np.ndarray, now: float
    ) -> BatchResult | None:
        """The common case as one round: `slots` are the batch's known, distinct streams
        (`rows` their bookkeeping, from `StateStore.claim`), and
        every reading is newer than its stream's last one by at most the gap limit, has an
        offset above its stream's applied one and only finite values. None, with nothing
        changed, when the batch is not that.

        Tells so with a handful of reductions (NaN, in a timestamp or a value, fails every
        comparison); the forecasts share the batch's columns.
        """
        store = self.store
        ts, offsets, x_raw = batch.ts, batch.offsets, batch.values
        if batch.problems:
            return None
        since = ts - rows["last_ts"]
        if not (since.min() > 0 and since.max() <= self._max_gap):
            return None
        if not (offsets > rows["applied"]).all():
            return None
        lowest = x_raw.min()
        if lowest != lowest:  # NaN: a missing or non-finite value
            return None
        values, warm, seconds = self._step(slots, ts, offsets, x_raw, now, rows)
        return BatchResult(
            ForecastBatch(
                batch.stream_ids,
                ts,
                values,
                warm,
                batch.partitions,
                offsets,
                batch.received,
                self.card.period,
            ),
            round_sizes=[len(slots)],
            round_seconds=[seconds],
            evicted=store.drain_evicted(),
        )

    def process(self, readings: Sequence[Reading], *, now: float | None = None) -> EngineResult:
        """Apply `readings` as objects: `process_batch` behind an adapter (tests and tools).

        Values are checked with `FeatureValues.matrix`; forecasts come back as `Forecast`
        objects and rejects and drops carry their `Reading`.
        """
        batch = self.batch_of(readings)
        done = self.process_batch(batch, now=now)
        result = EngineResult(
            forecasts=done.forecasts.forecasts(),
            round_sizes=done.round_sizes,
            round_seconds=done.round_seconds,
            resets=done.resets,
            gaps=done.gaps,
            clock_resets=done.clock_resets,
            evicted=done.evicted,
            expired=done.expired,
        )
        for row, reject in zip(done.reject_rows, done.rejects, strict=True):
            reject.reading = readings[row]
        result.rejects = done.rejects
        result.drops = [(readings[row], reason) for row, reason in done.drops]
        return result

    def batch_of(self, readings: Sequence[Reading]) -> ReadingBatch:
        """`readings` as a `ReadingBatch`, their values checked against the card."""
        values, problems = self._values.matrix([r.values for r in readings])
        return ReadingBatch(
            [r.stream_id for r in readings],
            np.array([r.ts for r in readings], np.float64),
            values,
            np.array([r.partition for r in readings], np.int32),
            np.array([r.offset for r in readings], np.int64),
            np.array([r.received for r in readings], np.float64),
            problems,
        )

    # -- batching -----------------------------------------------------------------------

    def _waves(self, ids: list[str]) -> Iterator[np.ndarray]:
        """Index arrays into the batch: wave k holds each stream's k-th reading, in order.

        A wave with more streams than the capacity cap is cut into chunks that fit.
        """
        n = len(ids)
        if n == 0:
            return
        if len(set(ids)) == n:
            waves: list[np.ndarray] = [np.arange(n)]
        else:
            # rank of each row among its stream's rows, by a stable sort on stream codes
            codes: dict[str, int] = {}
            code = np.fromiter((codes.setdefault(s, len(codes)) for s in ids), np.int64, n)
            by_stream = np.argsort(code, kind="stable")
            sorted_codes = code[by_stream]
            starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
            counts = np.diff(np.r_[starts, n])
            occurrence = np.empty(n, np.int64)
            occurrence[by_stream] = np.arange(n) - np.repeat(starts, counts)
            order = np.argsort(occurrence, kind="stable")
            sizes = np.bincount(occurrence)
            waves = np.split(order, np.cumsum(sizes)[:-1])
        cap = self.store.max_streams
        for wave in waves:
            if cap is None or len(wave) <= cap:
                yield wave
            else:
                yield from (wave[i : i + cap] for i in range(0, len(wave), cap))

    def _distinct(self, ids: list[str], slots: np.ndarray) -> bool:
        """Whether `ids` (with their `slots`, -1 when unknown) name distinct streams.

        Known streams are told apart by `StateStore.claim`; only unknown ids go through a set
        (a set of 1,024 ids costs ~20 us).
        """
        known = slots >= 0
        if self.store.claim(slots[known]) is None:
            return False
        new = [ids[i] for i in np.flatnonzero(~known).tolist()]
        return len(set(new)) == len(new)

    def _forecasts(self, batch: ReadingBatch, rounds: list[_Round]) -> ForecastBatch:
        """The rounds' forecasts as one batch in row order."""
        if len(rounds) == 1:
            rows, values, warm = rounds[0]
        else:
            rows = np.concatenate([r[0] for r in rounds])
            order = np.argsort(rows, kind="stable")
            rows = rows[order]
            values = np.concatenate([r[1] for r in rounds])[order]
            warm = np.concatenate([r[2] for r in rounds])[order]
        if rows is None:  # every row of the batch, in order
            return ForecastBatch(
                batch.stream_ids,
                batch.ts,
                values,
                warm,
                batch.partitions,
                batch.offsets,
                batch.received,
                self.card.period,
            )
        ids = batch.stream_ids
        return ForecastBatch(
            [ids[i] for i in rows.tolist()],
            batch.ts[rows],
            values,
            warm,
            batch.partitions[rows],
            batch.offsets[rows],
            batch.received[rows],
            self.card.period,
        )

    # -- one wave: distinct streams, one model call -------------------------------------

    def _apply(
        self,
        batch: ReadingBatch,
        idx: np.ndarray | None,
        now: float,
        result: BatchResult,
        rejects: list[tuple[int, Reject]],
        drops: list[tuple[int, DropReason]],
        batch_slots: np.ndarray,
    ) -> _Round | None:
        """One round over the rows `idx` of `batch` (all of them, in order, when None);
        `batch_slots` are the batch's slots as looked up before its first round.

        Returns the applied rows (None for all), their forecast values and warm flags.
        """
        store = self.store
        if idx is None:
            ids = batch.stream_ids
            ts, offsets, x_raw = batch.ts, batch.offsets, batch.values
            problems = dict(batch.problems)
        else:
            all_ids = batch.stream_ids
            ids = [all_ids[i] for i in idx.tolist()]
            ts, offsets, x_raw = batch.ts[idx], batch.offsets[idx], batch.values[idx]
            problems = {}
            if batch.problems:
                problems = {
                    j: batch.problems[i] for j, i in enumerate(idx.tolist()) if i in batch.problems
                }
        rows = idx

        # a stream new in an earlier round of this batch has a slot now
        slots = batch_slots if idx is None else store.slots_of(ids)
        if len(slots) == 0 or slots.min() >= 0:
            last_ts, applied = store.last_ts_at(slots), store.applied_offset_at(slots)
        else:
            known = slots >= 0
            safe = np.where(known, slots, 0)
            last_ts = np.where(known, store.last_ts_at(safe), -np.inf)
            applied = np.where(known, store.applied_offset_at(safe), -1)

        # the common case, in a few array operations: every reading is newer than its
        # stream's last one (so its timestamp is not NaN), finite, and has a new offset
        fresh = ts > last_ts
        fresh &= ts < np.inf
        fresh &= offsets > applied
        if np.isnan(x_raw).any():
            x_raw = self._missing(x_raw, slots, problems)
        if problems or not fresh.all():
            # 1. already applied; 2. bad values and timestamps; 3. duplicate or late
            already = (offsets >= 0) & (offsets <= applied)
            rejected = ~np.isfinite(ts)
            if problems:
                rejected[list(problems)] = True
            rejected &= ~already
            duplicate = (ts == last_ts) & ~already & ~rejected
            late = (ts < last_ts) & ~already & ~rejected
            recover = self._clock_recovery(slots, ts, late)
            self._report(batch, idx, already, rejected, duplicate, late, problems, rejects, drops)
            acc = np.flatnonzero(~(already | rejected | duplicate | late))
            if len(acc) == 0:
                return None
            ids = [ids[i] for i in acc.tolist()]
            ts, offsets, x_raw = ts[acc], offsets[acc], x_raw[acc]
            last_ts, slots = last_ts[acc], slots[acc]
            rows = acc if idx is None else idx[acc]
            if recover is not None:
                # the jump ahead was a bad timestamp: start the stream over from here
                recover = recover[acc]
                store.reset(slots[recover])
                last_ts[recover] = -np.inf
                result.clock_resets += int(np.count_nonzero(recover))

        # 4. gaps (a stream without an applied reading has last_ts -inf: no gap)
        gap = ts - last_ts > self._max_gap
        n_gaps = int(np.count_nonzero(gap))
        if n_gaps:
            gap &= last_ts > -np.inf
            n_gaps = int(np.count_nonzero(gap))
        result.gaps += n_gaps
        slots = store.ensure(ids, now=now, slots=slots)
        if n_gaps and self.config.gap_policy == "reset":
            store.reset(slots[gap])
            result.resets += n_gaps

        # 5. one model call over the wave
        values, warm, seconds = self._step(slots, ts, offsets, x_raw, now)
        if n_gaps and self.config.clock_recovery:
            # remember where the clock was: readings continuing from there may yet show
            # that this jump was a bad timestamp
            store.note_jumps(slots[gap], last_ts[gap])
        result.round_sizes.append(len(slots))
        result.round_seconds.append(seconds)
        return rows, values, warm

    def _step(
        self,
        slots: np.ndarray,
        ts: np.ndarray,
        offsets: np.ndarray,
        x_raw: np.ndarray,
        now: float,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Apply one reading to each of `slots` (distinct, ready): gather, scale, one model
        call, scatter, bookkeeping. `rows`, the slots' bookkeeping from `StateStore.claim`,
        come with every offset known to be new. Returns the forecasts in original units,
        the warm flags and the model call's seconds."""
        store = self.store
        n = len(slots)
        buffers = self._buffers if self._buffers.batch == n else self._round_buffers(n)
        states = store.gather(slots, reuse=True)
        x_rows = np.subtract(x_raw, buffers.x_mean, out=buffers.x_rows)
        x_rows /= buffers.x_std
        started = time.perf_counter()
        y, new_states = self.model.step(buffers.x, states)
        seconds = time.perf_counter() - started
        if y.shape != buffers.y_shape:
            raise InferenceError(
                f"{self.card.ref}: the model returned y of shape {y.shape}, expected "
                f"{buffers.y_shape}"
            )
        store.scatter(slots, new_states)
        steps = store.advance(
            slots,
            ts,
            offsets,
            now,
            x_raw if store.n_last_values else None,
            offsets_increase=rows is not None,
            rows=rows,
        )
        warm = steps >= self.card.warmup_steps
        # de-normalised in place: y is the model's fresh output (see `StepModel`), and a new
        # array of this size would be mapped and zeroed by the OS on every round
        if y.dtype != np.float32 or not y.flags.writeable:
            y = y.astype(np.float32)
        values = y.reshape(buffers.values_shape)
        values *= buffers.y_std
        values += buffers.y_mean
        return values, warm, seconds

    def _round_buffers(self, batch: int) -> _RoundBuffers:
        """The model input and the scalers tiled for `batch` readings (the last size's are
        kept)."""
        card = self.card
        if len(self._x_flat) < batch:
            # the model input, in memory kept from round to round (the model reads it only
            # during the call): fresh memory each round costs the model call ~2% at batch
            # 256, in cache misses
            self._x_flat = np.empty(
                (max(batch, 2 * len(self._x_flat)), card.n_features), np.float32
            )
        rows = self._x_flat[:batch]
        horizon, targets = self._y_shape
        # tiled per batch: one flat multiply-add is several times faster than a broadcast
        # over short rows of n_targets
        self._buffers = _RoundBuffers(
            batch,
            rows[:, None, :],
            rows,
            np.tile(self._x_mean, (batch, 1)),
            np.tile(self._x_std, (batch, 1)),
            (batch, 1, horizon, targets),
            (batch, horizon, targets),
            np.tile(self._y_std, batch).reshape(batch, horizon, targets),
            np.tile(self._y_mean, batch).reshape(batch, horizon, targets),
        )
        return self._buffers

    def _report(
        self,
        batch: ReadingBatch,
        idx: np.ndarray | None,
        already: np.ndarray,
        rejected: np.ndarray,
        duplicate: np.ndarray,
        late: np.ndarray,
        problems: Problems,
        rejects: list[tuple[int, Reject]],
        drops: list[tuple[int, DropReason]],
    ) -> None:
        """Turn the masks of one wave into rejects and drops by batch row (the rare path).

        A rejected row without a value problem is rejected for its timestamp.
        """
        rows = np.arange(len(already)) if idx is None else idx
        for reason, mask in (
            (DropReason.ALREADY_APPLIED, already),
            (DropReason.DUPLICATE, duplicate),
            (DropReason.LATE, late),
        ):
            drops.extend((i, reason) for i in rows[mask].tolist())
        for i in np.flatnonzero(rejected).tolist():
            row = int(rows[i])
            ts = float(batch.ts[row])
            why, detail = problems.get(
                i, (RejectReason.BAD_TIMESTAMP, f"timestamp {ts!r} is not finite")
            )
            partition, offset = int(batch.partitions[row]), int(batch.offsets[row])
            rejects.append((row, Reject(why, detail, None, partition=partition, offset=offset)))

    # -- clock faults and impossible values ----------------------------------------------

    def _clock_recovery(
        self, slots: np.ndarray, ts: np.ndarray, late: np.ndarray
    ) -> np.ndarray | None:
        """Late readings that continue their stream's clock from before its last jump ahead
        (`StateStore.note_jumps`): counted, and once `EngineConfig.clock_recovery` of them
        came in a row, taken out of `late` (in place) and marked in the returned mask: the
        jump was a bad timestamp, and they apply to a fresh state. None when no row is."""
        if not self.config.clock_recovery or not late.any():
            return None
        rows = np.flatnonzero(late & (slots >= 0))
        if len(rows) == 0:
            return None
        run = self.store.continue_jumped_clock(slots[rows], ts[rows])
        due = run >= self.config.clock_recovery
        if not due.any():
            return None
        recover = np.zeros(len(late), np.bool_)
        recover[rows[due]] = True
        late &= ~recover
        return recover

    def _value_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The lowest and highest value accepted per feature: the card's training range
        widened by `out_of_range_margin` training standard deviations (None: no check)."""
        ranges = self.card.feature_ranges
        if ranges is None or self.config.out_of_range == "accept":
            return None
        span = np.asarray(ranges, np.float64)
        margin = self.config.out_of_range_margin * np.asarray(
            self.card.scaler.features.std, np.float64
        )
        return (span[:, 0] - margin).astype(np.float32), (span[:, 1] + margin).astype(np.float32)

    def _check_ranges(self, batch: ReadingBatch) -> None:
        """Values beyond the bounds: the row becomes a problem (``out_of_range``), or the
        value is clipped in place. NaN (missing) values pass; they are imputed or rejected
        on their own."""
        assert self._bounds is not None
        low, high = self._bounds
        x = batch.values
        outside = (x < low) | (x > high)
        if not outside.any():
            return
        if self.config.out_of_range == "clip":
            np.clip(x, low, high, out=x)
            return
        for row in np.flatnonzero(outside.any(axis=1)).tolist():
            if row in batch.problems:
                continue
            bad = np.flatnonzero(outside[row]).tolist()
            ranges = self.card.feature_ranges or []
            batch.problems[row] = (
                RejectReason.OUT_OF_RANGE,
                "; ".join(
                    f"{self._features[j]}={float(x[row, j]):.6g} is outside "
                    f"[{float(low[j]):.6g}, {float(high[j]):.6g}] (training range "
                    f"{ranges[j][0]:.6g}..{ranges[j][1]:.6g} widened by "
                    f"{self.config.out_of_range_margin:g} std)"
                    for j in bad
                ),
            )

    # -- missing values -----------------------------------------------------------------

    def _missing(self, x_raw: np.ndarray, slots: np.ndarray, problems: Problems) -> np.ndarray:
        """Rows with NaN (missing or non-finite) values: filled with the stream's last values
        under last-value imputation, otherwise problems.

        A row still lacking a value (a new stream, or a feature never seen) is a problem.
        """
        if self.config.impute == "last":
            known = slots >= 0
            missing = np.isnan(x_raw)
            safe = np.where(known, slots, 0)
            previous = np.where(known[:, None], self.store.last_values_at(safe), np.nan)
            x_raw = np.where(missing, previous, x_raw)
        for i in np.flatnonzero(np.isnan(x_raw).any(axis=1)).tolist():
            if i not in problems:
                lacking = [f for f, v in zip(self._features, x_raw[i], strict=True) if v != v]
                problems[i] = (
                    RejectReason.MISSING_FEATURE,
                    f"no value for {', '.join(lacking)}"
                    + (" and no earlier value to impute" if self.config.impute == "last" else ""),
                )
        return x_raw
