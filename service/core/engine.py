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
5. the stream's outstanding forecasts are scored against the reading and the reading gets
   its anomaly score (`service.core.scoring`; the sums come back in `BatchResult.scores`);
6. the reading is applied and its forecast made, de-normalised with the card's scaler, for
   ``ts + k * period`` (k = 1..horizon), ``warm`` once the stream has seen the card's
   warm-up steps since its state was last (re)initialised; a warm forecast is kept to be
   scored.

Before any of that, a stream whose state another model wrote (`StateStore`: a restore of
another model's record, or `replace_model`) is re-warmed: the model runs from its initial
state over the stream's last kept readings, as many as the card's warm-up steps, one model
call per step across every such stream of the batch (`RoundRunner.rewarm`); nothing of the
re-warm is published. Its reading then counts as the next of those steps.

`StreamEngine` sequences the parts, each in a module of its own: `engineconfig` (the
`EngineConfig`), `checks` (steps 1 to 4 and the gap policy), `waves` (cutting a batch into
rounds and joining their forecasts), `rounds` (one model call over a wave: step 5),
`results` (what a call hands back) and `objects` (the adapter for `Reading` objects).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import itemgetter

import numpy as np

from service.core.checks import ReadingChecks
from service.core.engineconfig import EngineConfig
from service.core.model import StepModel, fingerprint_of
from service.core.objects import batch_of, result_of
from service.core.readings import DropReason, ForecastBatch, Reading, ReadingBatch, Reject
from service.core.results import BatchResult, EngineResult, EngineStats
from service.core.rounds import RoundRunner
from service.core.runs import RunPlan, ranks
from service.core.scoring import Outstanding, ScoreSums, one_step_variance
from service.core.state import REWARM_MISSING_HISTORY, REWARM_REASONS, StateStore
from service.core.values import FeatureValues
from service.core.waves import Round, Wave, in_row_order, is_one_wave, waves
from service.errors import ConfigError
from service.modelcard import ModelCard

__all__ = ["BatchResult", "EngineConfig", "EngineResult", "EngineStats", "StreamEngine"]


class StreamEngine:
    """Applies readings to per-stream recurrent state and makes forecasts; see the module doc."""

    def __init__(
        self, model: StepModel, config: EngineConfig | None = None, store: StateStore | None = None
    ) -> None:
        self.model = model
        self.card: ModelCard = model.card
        self.fingerprint = fingerprint_of(model)
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
                history=self._history(card),
                features=card.features,
                model=self.fingerprint,
                outstanding=self._outstanding(card),
            )
        )
        self.stats = EngineStats()
        self._use(model)

    def _outstanding(self, card: ModelCard) -> Outstanding | None:
        """What keeps `card`'s forecasts to be scored: None when they are not scored
        (`score_forecasts` off, or a target the readings do not carry)."""
        config = self.config
        if not config.score_forecasts or any(t not in card.features for t in card.targets):
            return None
        return Outstanding(
            card.horizon,
            card.n_targets,
            card.period,
            seed=one_step_variance(card),
            threshold=config.anomaly_threshold,
        )

    def _history(self, card: ModelCard) -> int:
        """Readings each stream keeps: ``history`` when set, else the card's warm-up steps."""
        history = self.config.history
        return card.warmup_steps if history is None else history

    def _use(self, model: StepModel) -> None:
        """Serve `model` (whose card matches the store's states) from now on."""
        card, config = model.card, self.config
        if self.store.specs != list(card.states):
            raise ConfigError("the state store's tensors do not match the model card's states")
        if config.impute == "last" and self.store.n_last_values != card.n_features:
            raise ConfigError("last-value imputation needs a store that keeps the last values")
        self._values = FeatureValues(card.features, impute=config.impute == "last")
        self._checks = ReadingChecks(card, config)
        self._rounds = RoundRunner(model, replace_anomalies=config.anomaly_policy == "replace")
        self._sequences = config.sequences and config.anomaly_policy == "apply"
        # a placeholder until a call's forecasts are known
        self._no_forecasts = ForecastBatch.empty(card.horizon, card.n_targets, card.period)

    def check_replacement(self, model: StepModel) -> None:
        """Raises `ConfigError` when this engine cannot serve `model` in place of its own."""
        if self.config.impute == "last" and model.card.n_features != self.card.n_features:
            raise ConfigError(
                f"{model.card.ref} has {model.card.n_features} features and "
                f"{self.card.ref} {self.card.n_features}: last-value imputation "
                "(engine.impute=last) keeps as many last values as the served model's features"
            )

    def replace_model(self, model: StepModel) -> None:
        """Serve `model` from now on, in place of the current one (a hot swap).

        Every held stream keeps its bookkeeping and kept readings; its state is re-warmed
        by `model` before its next reading (see the module doc). Raises `ConfigError` when
        `model` needs last values the store does not keep, or `model`'s card keeps no
        warm-up steps and none were asked.
        """
        self.check_replacement(model)
        card = model.card
        self.store.replace_model(
            card.states,
            model=fingerprint_of(model),
            features=card.features,
            history=max(self._history(card), self.store.history),
            outstanding=self._outstanding(card),
        )
        self.model, self.card, self.fingerprint = model, card, fingerprint_of(model)
        self._use(model)

    @property
    def values(self) -> FeatureValues:
        """How this engine reads feature values (its card's features; imputing or not), for a
        decoder that builds `ReadingBatch` values."""
        return self._values

    # -- columns: the hot path ----------------------------------------------------------

    def process_batch(self, batch: ReadingBatch, *, now: float | None = None) -> BatchResult:
        """Apply a columnar batch (any mix of streams, each stream's in order); see the module doc.

        The hot path: no per-reading Python objects, one model call per round. Forecasts
        come back in the batch's row order (sharing the batch's columns when every row
        made one); `BatchResult.reject_rows` and the drops name rows of `batch`. `now` is the
        wall-clock time used for TTL expiry and last-seen bookkeeping (``time.time()`` when
        not given). If the model fails (`InferenceError`), rounds already run in this call
        stay applied; their readings are dropped as already applied (or duplicates) if the
        batch is processed again.
        """
        now = time.time() if now is None else now
        store = self.store
        expired = store.expire(now)
        self._checks.check_ranges(batch)
        ids = batch.stream_ids
        n, cap = len(ids), store.max_streams
        fits = n > 0 and (cap is None or n <= cap)
        known = store.lookup(ids)  # None when some stream is new
        rewarms = self._rewarm(ids, known) if store.rewarms_pending else None
        card = self.card
        sums = ScoreSums(card.horizon, card.n_targets) if store.scoring.enabled else None
        if known is not None:
            slots = known
            rows = store.claim(slots) if fits else None
            one_wave = rows is not None
            if rows is not None and self._checks.clean(batch, rows):
                result = self._clean_round(batch, slots, rows, now, sums)
            else:
                result = self._rounds_of(batch, slots, one_wave, now, sums)
        else:
            slots = store.slots_of(ids)
            one_wave = fits and is_one_wave(ids, slots, store)
            result = self._rounds_of(batch, slots, one_wave, now, sums)
        result.scores = sums
        result.expired = expired
        if rewarms is not None:
            result.rewarms, result.rewarm_seconds = rewarms
        self.stats.add(result, n)
        return result

    def _rewarm(
        self, ids: Sequence[str], known: np.ndarray | None
    ) -> tuple[dict[str, int], float] | None:
        """Re-warm the streams of `ids` that are due one (see the module doc); how many,
        by reason, and the model calls' seconds."""
        store = self.store
        slots = known if known is not None else store.slots_of(ids)
        slots = np.unique(slots[slots >= 0])
        reasons = store.rewarm_due(slots)
        due = reasons > 0
        if not due.any():
            return None
        slots, reasons = slots[due], reasons[due]
        ts, values, kept = store.kept_readings(slots)
        n = np.minimum(kept, self.card.warmup_steps)
        n[reasons == REWARM_MISSING_HISTORY] = 0
        seconds = self._rounds.rewarm(store, slots, ts, values, n)
        store.rewarmed(slots, n)
        counts = np.bincount(reasons, minlength=len(REWARM_REASONS) + 1)
        return {REWARM_REASONS[r]: int(counts[r]) for r in REWARM_REASONS if counts[r]}, seconds

    def _clean_round(
        self,
        batch: ReadingBatch,
        slots: np.ndarray,
        rows: np.ndarray,
        now: float,
        sums: ScoreSums | None,
    ) -> BatchResult:
        """The common case as one round: `batch` passed `ReadingChecks.clean`, `slots` are
        its streams' and `rows` their bookkeeping, from `StateStore.claim`. The forecasts
        share the batch's columns."""
        ts, offsets = batch.ts, batch.offsets
        out = self._rounds.run(
            self.store,
            slots,
            ts,
            offsets,
            batch.values,
            now,
            rows,
            partitions=batch.partitions,
            sums=sums,
        )
        anomaly = out.anomaly
        return BatchResult(
            ForecastBatch(
                batch.stream_ids,
                ts,
                out.values,
                out.warm,
                batch.partitions,
                offsets,
                batch.received,
                self.card.period,
                None if anomaly is None else anomaly.score,
                None if anomaly is None else anomaly.over,
            ),
            round_sizes=[len(slots)],
            round_seconds=[out.seconds],
            evicted=self.store.drain_evicted(),
        )

    def _rounds_of(
        self,
        batch: ReadingBatch,
        slots: np.ndarray,
        one_wave: bool,
        now: float,
        sums: ScoreSums | None,
    ) -> BatchResult:
        """The general path: rejects, drops, gaps, new streams, several readings of a stream.

        `slots` are the batch's as looked up (-1 for new streams); `one_wave` says its
        streams are distinct and fit the capacity cap, so that it is one round.
        """
        result = BatchResult(self._no_forecasts)
        rounds: list[Round] = []
        rejects: list[tuple[int, Reject]] = []
        drops: list[tuple[int, DropReason]] = []
        if one_wave:
            done = self._apply(batch, None, now, result, rejects, drops, slots, sums)
            rounds = [] if done is None else [done]
        elif not self._runs_of(batch, slots, now, result, rounds, rejects, drops, sums):
            for idx in waves(batch.stream_ids, self.store.max_streams):
                done = self._apply(batch, idx, now, result, rejects, drops, slots, sums)
                if done is not None:
                    rounds.append(done)
        card = self.card
        result.forecasts = (
            in_row_order(batch, rounds, card.period)
            if rounds
            else ForecastBatch.empty(card.horizon, card.n_targets, card.period)
        )
        if not one_wave:
            rejects.sort(key=itemgetter(0))
            drops.sort(key=itemgetter(0))
        result.reject_rows = [i for i, _ in rejects]
        result.rejects = [r for _, r in rejects]
        result.drops = drops
        result.evicted = self.store.drain_evicted()
        return result

    def _runs_of(
        self,
        batch: ReadingBatch,
        batch_slots: np.ndarray,
        now: float,
        result: BatchResult,
        rounds: list[Round],
        rejects: list[tuple[int, Reject]],
        drops: list[tuple[int, DropReason]],
        sums: ScoreSums | None,
    ) -> bool:
        """Apply `batch`, whose streams have several readings, as runs (`service.core.runs`):
        turn by turn, each stream's next run in sequences on the time axis, then each
        stream's next incident in one general round. False, having done nothing, when runs
        are off or could change what happens: under the ``replace`` anomaly policy, or when
        the batch's new streams would make the capacity cap evict. `batch_slots` are the
        batch's slots as looked up (-1 for new streams)."""
        if not self._sequences:
            return False
        if not len(batch_slots):
            return True
        store = self.store
        plan = RunPlan(batch, self._checks.max_gap, batch_slots)
        slots = store.slots_of(plan.ids)
        cap = store.max_streams
        if cap is not None and len(store) + int(np.count_nonzero(slots < 0)) > cap:
            return False
        rounds += plan.apply(
            slots,
            store,
            drops,
            run=lambda streams, at, lengths: self._apply_runs(
                batch, plan, streams, at, lengths, now, result, sums
            ),
            incident=lambda rows: self._apply(
                batch, rows, now, result, rejects, drops, batch_slots, sums
            ),
        )
        return True

    def _apply_runs(
        self,
        batch: ReadingBatch,
        plan: RunPlan,
        streams: np.ndarray,
        at: np.ndarray,
        lengths: np.ndarray,
        now: float,
        result: BatchResult,
        sums: ScoreSums | None,
    ) -> Round:
        """The runs of `plan`'s `streams` (known), `lengths[i]` readings from position
        `at[i]`, as sequences; returns the applied rows, their forecasts, warm flags and
        anomaly scores."""
        positions = np.repeat(at, lengths) + ranks(lengths)
        rows = plan.rows[positions]
        store = self.store
        slots = store.ensure([plan.ids[s] for s in streams.tolist()], now=now)
        out = self._rounds.run_runs(
            store,
            slots,
            lengths,
            plan.ts[positions],
            plan.offsets[positions],
            batch.values[rows],
            now,
            partitions=batch.partitions[rows],
            sums=sums,
        )
        result.round_sizes.extend(out.sizes)
        result.round_seconds.extend(out.seconds)
        return rows, out.values, out.warm, out.anomaly

    def _apply(
        self,
        batch: ReadingBatch,
        idx: np.ndarray | None,
        now: float,
        result: BatchResult,
        rejects: list[tuple[int, Reject]],
        drops: list[tuple[int, DropReason]],
        batch_slots: np.ndarray,
        sums: ScoreSums | None,
    ) -> Round | None:
        """One round over the rows `idx` of `batch` (all of them, in order, when None);
        `batch_slots` are the batch's slots as looked up before its first round.

        Returns the applied rows (None for all), their forecast values and warm flags.
        """
        store, checks = self.store, self._checks
        wave = Wave.of(batch, idx, store, batch_slots)
        # the common case, in a few array operations: every reading is newer than its
        # stream's last one (so its timestamp is not NaN), finite, and has a new offset
        fresh = wave.ts > wave.last_ts
        fresh &= wave.ts < np.inf
        fresh &= wave.offsets > wave.applied
        missing = np.isnan(wave.x)
        if missing.any():
            checks.fill_missing(wave, store)
        if wave.problems or not fresh.all():
            # 1. already applied; 2. bad values and timestamps; 3. duplicate or late
            result.clock_resets += checks.screen(batch, wave, store, rejects, drops)
            if not len(wave):
                return None

        # 4. gaps, and the gap policy
        gap, n_gaps = checks.gaps(wave)
        result.gaps += n_gaps
        slots = store.ensure(wave.ids, now=now, slots=wave.slots)
        if n_gaps:
            result.resets += checks.apply_gap_policy(store, slots, gap)

        # 5. and 6. scoring, and one model call over the wave
        observed = None
        if sums is not None and missing.any():  # imputed values are not observations
            read = batch.values if wave.rows is None else batch.values[wave.rows]
            observed = ~np.isnan(read[:, self._rounds.targets])
        partitions = batch.partitions if wave.rows is None else batch.partitions[wave.rows]
        out = self._rounds.run(
            store,
            slots,
            wave.ts,
            wave.offsets,
            wave.x,
            now,
            partitions=partitions,
            observed=observed,
            sums=sums,
        )
        if n_gaps:
            checks.remember_jumps(store, slots, gap, wave.last_ts)
        result.round_sizes.append(len(slots))
        result.round_seconds.append(out.seconds)
        return wave.rows, out.values, out.warm, out.anomaly

    # -- objects: tests and tools -------------------------------------------------------

    def process(self, readings: Sequence[Reading], *, now: float | None = None) -> EngineResult:
        """Apply `readings` as objects: `process_batch` behind an adapter (tests and tools).

        Values are checked with `FeatureValues.matrix`; forecasts come back as `Forecast`
        objects and rejects and drops carry their `Reading` (see `service.core.objects`).
        """
        return result_of(self.process_batch(self.batch_of(readings), now=now), readings)

    def batch_of(self, readings: Sequence[Reading]) -> ReadingBatch:
        """`readings` as a `ReadingBatch`, their values checked against the card."""
        return batch_of(readings, self._values)
