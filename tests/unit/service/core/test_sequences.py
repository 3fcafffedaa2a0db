"""Readings applied as sequences on the model's time axis equal the round-by-round path.

The oracle is the same engine with `EngineConfig.sequences` off: one round per reading of
the busiest stream. Both get the same micro-batches of simulated sensor readings (the
served model's features, in its training range) with every kind of incident mixed in:
readings faster than the card's period (so forecasts are scored by several readings),
gaps, duplicates, late readings, replays of applied offsets, missing and out-of-range
values, bad timestamps, new streams mid-batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.engine import BatchResult, EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import ReadingBatch
from service.registry import Registry
from service.simulate import simulate

MODELS = Path(__file__).resolve().parents[4] / "models"
SERVED = Registry(MODELS).load("sensors-demo")
# warm after 4 readings, not 36, so that short streams make forecasts to score
MODEL = OnnxStepModel(SERVED.card.model_copy(update={"warmup_steps": 4}), SERVED.onnx_bytes)
PERIOD = MODEL.card.period

_EVENTS = st.sampled_from(
    ["next"] * 12 + ["fast", "fast", "gap", "dup", "late", "nan", "replay", "bad_ts", "hot"]
)


@st.composite
def _stream_events(draw: st.DrawFn) -> list[str]:
    """A stream's readings: incidents at random, or a steady stretch (one reading a period,
    where scoring takes its fast path) with a few after it."""
    events = draw(st.lists(_EVENTS, min_size=1, max_size=80))
    if draw(st.booleans()):
        events = ["next"] * draw(st.integers(16, 60)) + events[:8]
    return events


@st.composite
def _batches(draw: st.DrawFn) -> list[ReadingBatch]:
    """Micro-batches of a few streams' readings, each stream's in order, interleaved at
    random; offsets follow the merged order (one partition, or two), a replay repeats an
    applied reading's offset."""
    n_streams = draw(st.integers(1, 6))
    sim = simulate(n_streams, 80, seed=draw(st.integers(0, 2**16)), gaps=False)
    streams: list[list[tuple[float, np.ndarray, str]]] = []
    for s in range(n_streams):
        ts, events = float(sim.ts[0]), []
        for k, event in enumerate(draw(_stream_events())):
            values = sim.values[s, k].astype(np.float64)
            if event in ("dup", "late", "replay") and events:
                shift = {"dup": 0.0, "late": -PERIOD / 3, "replay": 1.0}[event]
                events.append((events[-1][0] + shift, values, event))
                continue
            ts += PERIOD * {"gap": 30.0, "fast": 0.4}.get(event, 1.0)
            if event == "nan":
                values = values.copy()
                values[1] = math.nan
            elif event == "hot":
                values = values.copy()
                values[0] = 900.0  # far outside the training range
            events.append((math.inf if event == "bad_ts" else ts, values, event))
        streams.append(events)
    order = draw(st.permutations([k for k, s in enumerate(streams) for _ in s]))
    two_partitions = draw(st.booleans())
    cursors = [0] * n_streams
    rows: list[tuple[str, float, np.ndarray, int, int]] = []
    applied: dict[int, int] = {}
    for k in order:
        ts, values, event = streams[k][cursors[k]]
        cursors[k] += 1
        offset = applied.get(k, -1) if event == "replay" else len(rows)
        if event != "replay":
            applied[k] = offset
        rows.append((f"s{k}", ts, values, k % 2 if two_partitions else 0, offset))
    cuts = draw(st.lists(st.integers(1, 160), min_size=1, max_size=20))
    batches, start = [], 0
    for size in cuts * (len(rows) // max(sum(cuts), 1) + 1):
        if start >= len(rows):
            break
        chunk = rows[start : start + size]
        start += size
        batches.append(
            ReadingBatch.of(
                [r[0] for r in chunk],
                [r[1] for r in chunk],
                np.array([r[2] for r in chunk], np.float32),
                partitions=[r[3] for r in chunk],
                offsets=[r[4] for r in chunk],
                received=[float(r[4]) for r in chunk],
            )
        )
    return batches


def _copy(batch: ReadingBatch) -> ReadingBatch:
    """Another batch of the same readings (the engine may clip values and add problems)."""
    return ReadingBatch.of(
        list(batch.stream_ids),
        batch.ts.copy(),
        batch.values.copy(),
        partitions=batch.partitions.copy(),
        offsets=batch.offsets.copy(),
        received=batch.received.copy(),
    )


def _assert_same_result(got: BatchResult, want: BatchResult) -> None:
    f, w = got.forecasts, want.forecasts
    assert f.stream_ids == w.stream_ids
    np.testing.assert_array_equal(f.offsets, w.offsets)
    np.testing.assert_array_equal(f.warm, w.warm)
    np.testing.assert_allclose(f.values, w.values, rtol=1e-5, atol=1e-5)
    if w.anomaly is None:
        assert f.anomaly is None
    else:
        assert f.anomaly is not None and f.anomalous is not None
        np.testing.assert_allclose(f.anomaly, w.anomaly, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(f.anomalous, w.anomalous)
    assert got.reject_rows == want.reject_rows
    assert [(r.reason, r.detail) for r in got.rejects] == [
        (r.reason, r.detail) for r in want.rejects
    ]
    assert got.drops == want.drops
    assert (got.resets, got.gaps, got.clock_resets) == (want.resets, want.gaps, want.clock_resets)
    assert sum(got.round_sizes) == sum(want.round_sizes)
    if want.scores is None:
        assert got.scores is None
    else:
        assert got.scores is not None
        assert set(got.scores.tables) == set(want.scores.tables)
        for p, table in want.scores.tables.items():
            np.testing.assert_allclose(got.scores.tables[p], table, rtol=1e-9, atol=1e-9)
        assert {p: a.tolist() for p, a in got.scores.anomalies.items()} == {
            p: a.tolist() for p, a in want.scores.anomalies.items()
        }


def _assert_same_store(got: StreamEngine, want: StreamEngine) -> None:
    """The same streams with the same state records, byte for byte: tensors, bookkeeping,
    kept readings, outstanding forecasts and running scales (a record must not depend on
    how the readings were batched, or a restore would not equal an uninterrupted run)."""
    ids = sorted(want.store.ids())
    assert sorted(got.store.ids()) == ids
    for sid in ids:
        assert got.store.info(sid) == want.store.info(sid)
    assert got.store.dump_many(ids) == want.store.dump_many(ids)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=_batches(),
    impute=st.sampled_from(["reject", "last"]),
    gap_policy=st.sampled_from(["reset", "keep"]),
    clock_recovery=st.sampled_from([0, 2]),
    out_of_range=st.sampled_from(["reject", "clip"]),
)
def test_sequences_equal_round_by_round(
    batches: list[ReadingBatch],
    impute: str,
    gap_policy: str,
    clock_recovery: int,
    out_of_range: str,
) -> None:
    def engine(sequences: bool) -> StreamEngine:
        config = EngineConfig(
            impute=impute,  # type: ignore[arg-type]
            gap_policy=gap_policy,  # type: ignore[arg-type]
            clock_recovery=clock_recovery,
            out_of_range=out_of_range,  # type: ignore[arg-type]
            sequences=sequences,
        )
        return StreamEngine(MODEL, config)

    runs, rounds = engine(True), engine(False)
    for i, batch in enumerate(batches):
        got = runs.process_batch(_copy(batch), now=float(i))
        want = rounds.process_batch(_copy(batch), now=float(i))
        _assert_same_result(got, want)
    _assert_same_store(runs, rounds)
    assert runs.stats.forecasts == rounds.stats.forecasts
    assert runs.stats.rejects == rounds.stats.rejects
    assert runs.stats.drops == rounds.stats.drops


def _clean(n_streams: int, n_steps: int, seed: int = 0) -> ReadingBatch:
    """`n_steps` readings of each of `n_streams` simulated streams, interleaved by time."""
    sim = simulate(n_streams, n_steps, seed=seed, gaps=False, faults=False)
    ids = [sim.stream_ids[s] for _ in range(n_steps) for s in range(n_streams)]
    return ReadingBatch.of(
        ids,
        np.repeat(sim.ts, n_streams),
        sim.values.transpose(1, 0, 2).reshape(-1, 3),
        offsets=np.arange(len(ids)),
    )


def _rows(
    batch: ReadingBatch, rows: slice | list[int], values: np.ndarray | None = None
) -> ReadingBatch:
    """The readings `rows` of `batch` (with other `values` when given), as a batch."""
    index = np.arange(len(batch.ts))[rows]
    return ReadingBatch.of(
        [batch.stream_ids[i] for i in index.tolist()],
        batch.ts[index],
        batch.values[index] if values is None else values,
        offsets=batch.offsets[index],
    )


class _Counting:
    """A step model that counts its calls and the time axis it is given."""

    def __init__(self, model: OnnxStepModel) -> None:
        self.card, self.model, self.shapes = model.card, model, []

    def step(self, x: np.ndarray, states: list[np.ndarray]):  # type: ignore[no-untyped-def]
        self.shapes.append(x.shape[:2])
        return self.model.step(x, states)


def test_a_few_long_streams_take_one_model_call_per_distinct_run_length() -> None:
    model = _Counting(MODEL)
    engine = StreamEngine(model)  # type: ignore[arg-type]
    engine.process_batch(_clean(4, 1), now=0.0)  # new streams: one round
    batch = _clean(4, 501)
    first = _rows(batch, slice(4, None))  # the next 500 readings of each, as one micro-batch
    model.shapes.clear()
    result = engine.process_batch(first, now=0.0)
    assert model.shapes == [(4, 500)]
    assert result.round_sizes == [2000]
    assert len(result.forecasts) == 2000


def test_runs_of_different_lengths_are_packed_longest_first() -> None:
    model = _Counting(MODEL)
    engine = StreamEngine(model)  # type: ignore[arg-type]
    batch = _clean(3, 9)
    engine.process_batch(_rows(batch, slice(3)), now=0.0)
    # stream 0 gets 6 more readings, stream 1 gets 3, stream 2 gets 6
    keep = [i for i in range(3, 27) if (i % 3 != 1 or i < 12) and i < 21]
    model.shapes.clear()
    engine.process_batch(_rows(batch, keep), now=0.0)
    assert model.shapes == [(3, 3), (2, 3)]


def test_a_reject_in_a_long_run_costs_one_round_not_one_per_reading() -> None:
    model = _Counting(MODEL)
    engine = StreamEngine(model)  # type: ignore[arg-type]
    engine.process_batch(_clean(2, 1), now=0.0)
    batch = _clean(2, 201)
    values = batch.values[2:].copy()
    values[100, 2] = math.nan  # stream 0's 51st reading
    model.shapes.clear()
    result = engine.process_batch(_rows(batch, slice(2, None), values), now=0.0)
    assert result.reject_rows == [100]
    # both streams' runs up to the reject, then the reject's round (no model call), then
    # stream 0's rest and stream 1's rest
    assert model.shapes == [(2, 50), (1, 150), (1, 149)]


@pytest.mark.parametrize("policy", ["replace"])
def test_the_replace_policy_applies_round_by_round(policy: str) -> None:
    model = _Counting(MODEL)
    engine = StreamEngine(model, EngineConfig(anomaly_policy=policy))  # type: ignore[arg-type]
    engine.process_batch(_clean(2, 1), now=0.0)
    batch = _clean(2, 5)
    model.shapes.clear()
    engine.process_batch(_rows(batch, slice(2, None)), now=0.0)
    assert model.shapes == [(2, 1)] * 4


@pytest.mark.parametrize("name", Registry(MODELS).names())
def test_every_shipped_model_gives_the_same_records_on_the_time_axis(name: str) -> None:
    """Each architecture's graph (LSTM, GRU, RNN, time-delay MLP, derived inputs) loops over
    time as it steps: the same forecasts and the same state records either way."""
    model = OnnxStepModel.from_loaded(Registry(MODELS).load(name))
    card = model.card
    rng = np.random.default_rng(5)
    low, high = np.asarray(card.feature_ranges, np.float64).T
    streams, steps = 3, 40
    values = rng.uniform(low, high, (steps, streams, card.n_features)).astype(np.float32)
    ids = [f"s{s}" for _ in range(steps) for s in range(streams)]
    ts = np.repeat(1_700_000_000.0 + card.period * np.arange(steps), streams)
    results = []
    for sequences in (True, False):
        engine = StreamEngine(model, EngineConfig(sequences=sequences))
        out = [
            engine.process_batch(
                ReadingBatch.of(
                    ids[i : i + 30],
                    ts[i : i + 30],
                    values.reshape(-1, card.n_features)[i : i + 30],
                    offsets=np.arange(i, min(i + 30, len(ids))),
                ),
                now=0.0,
            )
            for i in range(0, len(ids), 30)
        ]
        results.append((out, engine))
    (runs, by_runs), (rounds, by_rounds) = results
    for got, want in zip(runs, rounds, strict=True):
        _assert_same_result(got, want)
    _assert_same_store(by_runs, by_rounds)


def test_a_rewarm_runs_each_streams_kept_readings_as_one_sequence() -> None:
    """After a model change, streams with 2, 3 and 10 applied readings (4 kept at most) are
    re-warmed over 2, 3 and 4 readings: packed, one call per distinct length; then their
    next readings take one round. The re-warmed states equal a fresh engine's after the
    same readings."""
    model = _Counting(MODEL)
    engine = StreamEngine(model)  # type: ignore[arg-type]
    batch = _clean(3, 11)
    counts = {0: 2, 1: 3, 2: 10}
    rows = [i for i in range(33) if i // 3 < counts[i % 3]]
    engine.process_batch(_rows(batch, rows), now=0.0)
    model = _Counting(MODEL)  # the same graph as another model: every state is re-warmed
    engine.replace_model(model)  # type: ignore[arg-type]
    following = [3 * counts[s] + s for s in range(3)]  # each stream's next reading
    result = engine.process_batch(_rows(batch, following), now=0.0)
    assert result.rewarms == {"model_change": 3}
    assert model.shapes == [(3, 2), (2, 1), (1, 1), (3, 1)]
    # the oracle: each stream's last kept readings and the next one, from the initial state
    for s in range(3):
        kept = [3 * k + s for k in range(max(0, counts[s] - 4), counts[s])] + [following[s]]
        fresh = StreamEngine(MODEL, EngineConfig(sequences=False))
        for i in kept:
            fresh.process_batch(_rows(batch, [i]), now=0.0)
        sid = batch.stream_ids[s]
        for a, b in zip(
            engine.store.states_of(sid) or [], fresh.store.states_of(sid) or [], strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
