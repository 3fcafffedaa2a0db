"""The columnar path: `StreamEngine.process_batch` on `ReadingBatch` columns.

The oracle is the object path fed one reading at a time (`process([reading])`), which the
rest of the engine tests check against numpy references.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.engine import EngineConfig, StreamEngine
from service.core.readings import (
    DropReason,
    ForecastBatch,
    Reading,
    ReadingBatch,
    RejectReason,
)
from service.core.values import FeatureValues
from service.testing import ElmanLagModel

MODEL = ElmanLagModel(hidden=6, lags=2, horizon=2, warmup_steps=2, seed=7)
PERIOD = MODEL.card.period
FEATURES = list(MODEL.card.features)

_EVENTS = st.sampled_from(
    ["next", "next", "next", "next", "gap", "dup", "late", "nan", "replay", "bad_ts", "text"]
)


@st.composite
def _readings(draw: st.DrawFn) -> list[Reading]:
    """Readings of a few streams, each stream's in order, interleaved at random; offsets
    follow the merged order (one partition), a replayed reading keeps its old offset."""
    streams: list[list[tuple[float, list[object], str]]] = []
    for _ in range(draw(st.integers(1, 5))):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        ts, events = 0.0, []
        for event in draw(st.lists(_EVENTS, min_size=1, max_size=10)):
            values: list[object] = rng.normal(15, 3, len(FEATURES)).tolist()
            if event == "dup" and events:
                events.append((events[-1][0], values, event))
                continue
            if event == "late" and events:
                events.append((events[-1][0] - PERIOD / 2, values, event))
                continue
            if event == "replay" and events:
                events.append((events[-1][0] + 1.0, values, event))
                continue
            ts += PERIOD * (30 if event == "gap" else 1)
            if event == "nan":
                values[1] = math.nan
            elif event == "text":
                values[0] = "1.5"
            events.append((math.inf if event == "bad_ts" else ts, values, event))
        streams.append(events)
    order = draw(st.permutations([k for k, s in enumerate(streams) for _ in s]))
    cursors = [0] * len(streams)
    out: list[Reading] = []
    last_offset: dict[int, int] = {}
    for k in order:
        ts, values, event = streams[k][cursors[k]]
        cursors[k] += 1
        offset = last_offset.get(k, -1) if event == "replay" else len(out)
        if event != "replay":
            last_offset[k] = offset
        out.append(Reading(f"s{k}", ts, values, 0, offset, received=float(len(out))))
    return out


def _columns(engine: StreamEngine, readings: list[Reading]) -> ReadingBatch:
    """The readings as a decoder would hand them over: values checked into a float32 matrix."""
    values, problems = FeatureValues(FEATURES, impute=engine.config.impute == "last").matrix(
        [r.values for r in readings]
    )
    return ReadingBatch.of(
        [r.stream_id for r in readings],
        [r.ts for r in readings],
        values,
        partitions=[r.partition for r in readings],
        offsets=[r.offset for r in readings],
        received=[r.received for r in readings],
        problems=problems,
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    readings=_readings(),
    cuts=st.lists(st.integers(1, 12), min_size=1, max_size=40),
    impute=st.sampled_from(["reject", "last"]),
    gap_policy=st.sampled_from(["reset", "keep"]),
)
def test_process_batch_equals_the_object_path_one_reading_at_a_time(
    readings: list[Reading], cuts: list[int], impute: str, gap_policy: str
) -> None:
    config = EngineConfig(max_gap_periods=10, impute=impute, gap_policy=gap_policy)  # type: ignore[arg-type]
    reference = StreamEngine(MODEL, config)
    expected = [reference.process([r], now=0.0) for r in readings]

    engine = StreamEngine(MODEL, config)
    start, k = 0, 0
    while start < len(readings):
        size = cuts[k % len(cuts)]
        k += 1
        part = readings[start : start + size]
        batch = _columns(engine, part)
        result = engine.process_batch(batch, now=0.0)
        forecasts = result.forecasts
        assert isinstance(forecasts, ForecastBatch)
        assert forecasts.values.dtype == np.float32
        rejected = dict(zip(result.reject_rows, result.rejects, strict=True))
        dropped = dict(result.drops)
        assert len(dropped) == len(result.drops)
        fc = 0
        for row, r in enumerate(part):
            want = expected[start + row]
            if want.forecasts:
                f = want.forecasts[0]
                assert row not in rejected and row not in dropped
                assert forecasts.stream_ids[fc] == f.stream_id
                assert forecasts.ts[fc] == f.ts
                assert forecasts.horizon_ts()[fc].tolist() == f.horizon_ts
                assert bool(forecasts.warm[fc]) == f.warm
                assert (forecasts.partitions[fc], forecasts.offsets[fc]) == (0, r.offset)
                assert forecasts.received[fc] == r.received
                np.testing.assert_allclose(forecasts.values[fc], f.values, rtol=1e-6, atol=1e-6)
                fc += 1
            elif want.rejects:
                reject = rejected[row]
                assert reject.reason == want.rejects[0].reason
                assert reject.detail  # its wording may depend on the rest of the batch
                assert (reject.partition, reject.offset) == (0, r.offset)
                assert reject.reading is None
            else:
                assert dropped[row] == want.drops[0][1]
        assert fc == len(forecasts)
        start += size

    assert sorted(engine.store.ids()) == sorted(reference.store.ids())
    for sid in reference.store.ids():
        assert engine.store.info(sid) == reference.store.info(sid)
        for a, b in zip(
            engine.store.states_of(sid) or [], reference.store.states_of(sid) or [], strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert engine.stats.forecasts == reference.stats.forecasts
    assert engine.stats.rejects == reference.stats.rejects
    assert engine.stats.drops == reference.stats.drops


def test_forecasts_come_back_in_row_order_across_rounds() -> None:
    engine = StreamEngine(MODEL)
    batch = ReadingBatch.of(
        ["a", "a", "b", "a"], [0.0, 60.0, 0.0, 120.0], np.ones((4, 2)), offsets=[0, 1, 2, 3]
    )
    result = engine.process_batch(batch, now=0.0)
    assert result.round_sizes == [2, 2]  # a and b new, then a's next two as one sequence
    assert result.forecasts.stream_ids == ["a", "a", "b", "a"]
    assert result.forecasts.offsets.tolist() == [0, 1, 2, 3]
    assert result.forecasts.values.shape == (4, MODEL.card.horizon, MODEL.card.n_targets)


def test_nan_values_without_imputation_are_rejected_as_missing() -> None:
    batch = ReadingBatch.of(["a", "b"], [0.0, 0.0], [[1.0, math.nan], [1.0, 2.0]])
    result = StreamEngine(MODEL).process_batch(batch, now=0.0)
    assert result.forecasts.stream_ids == ["b"]
    assert result.reject_rows == [0]
    assert result.rejects[0].reason == RejectReason.MISSING_FEATURE
    assert "load" in result.rejects[0].detail or FEATURES[1] in result.rejects[0].detail


def test_nan_values_are_imputed_from_the_stream_when_configured() -> None:
    engine = StreamEngine(MODEL, EngineConfig(impute="last"))
    engine.process_batch(ReadingBatch.of(["a"], [0.0], [[1.0, 2.0]]), now=0.0)
    imputed = engine.process_batch(ReadingBatch.of(["a"], [60.0], [[3.0, math.nan]]), now=0.0)
    full = StreamEngine(MODEL, EngineConfig(impute="last"))
    full.process_batch(ReadingBatch.of(["a"], [0.0], [[1.0, 2.0]]), now=0.0)
    given_ = full.process_batch(ReadingBatch.of(["a"], [60.0], [[3.0, 2.0]]), now=0.0)
    np.testing.assert_array_equal(imputed.forecasts.values, given_.forecasts.values)


def test_a_row_with_a_problem_is_rejected_with_it_unless_already_applied() -> None:
    engine = StreamEngine(MODEL)
    engine.process_batch(ReadingBatch.of(["a"], [0.0], [[1.0, 2.0]], offsets=5), now=0.0)
    problem = (RejectReason.NON_NUMERIC, "feature temp is str '1.5', not a number")
    batch = ReadingBatch.of(
        ["a", "b"],
        [60.0, 0.0],
        [[math.nan, 2.0], [math.nan, 2.0]],
        offsets=[4, 9],
        problems={0: problem, 1: problem},
    )
    result = engine.process_batch(batch, now=0.0)
    assert result.drops == [(0, DropReason.ALREADY_APPLIED)]
    assert result.reject_rows == [1]
    assert (result.rejects[0].reason, result.rejects[0].detail) == problem
    assert (result.rejects[0].partition, result.rejects[0].offset) == (-1, 9)
    assert len(result.forecasts) == 0


def test_a_clean_batch_of_known_streams_is_one_round_sharing_the_batch_columns() -> None:
    engine = StreamEngine(MODEL)
    ids = ["a", "b", "c"]
    engine.process_batch(ReadingBatch.of(ids, 0.0, np.ones((3, 2)), offsets=[0, 1, 2]), now=0.0)
    batch = ReadingBatch.of(ids[::-1], 60.0, np.ones((3, 2)), offsets=[3, 4, 5])
    result = engine.process_batch(batch, now=0.0)
    assert result.round_sizes == [3] and result.drops == [] and result.rejects == []
    assert result.forecasts.stream_ids is batch.stream_ids and result.forecasts.ts is batch.ts
    assert all(info is not None and info.steps == 2 for info in map(engine.store.info, ids))
    assert engine.stats.readings == engine.stats.forecasts == 6 and engine.stats.rounds == 2


def test_streams_expired_before_a_clean_round_are_counted() -> None:
    engine = StreamEngine(MODEL, EngineConfig(ttl_seconds=100.0))
    first = ReadingBatch.of(["a", "b"], 0.0, np.ones((2, 2)), offsets=[0, 1])
    engine.process_batch(first, now=0.0)
    engine.process_batch(ReadingBatch.of(["a"], 60.0, np.ones((1, 2)), offsets=2), now=100.0)
    result = engine.process_batch(
        ReadingBatch.of(["a"], 120.0, np.ones((1, 2)), offsets=3), now=150.0
    )
    assert result.expired == ["b"] and result.round_sizes == [1]
    assert engine.stats.expired == 1 and engine.stats.forecasts == 4


@pytest.mark.parametrize(
    ("stream", "ts", "offset", "value"),
    [
        ("c", 30.0, 9, 1.0),  # late
        ("c", 0.0, 9, 1.0),  # duplicate timestamp
        ("c", 60.0, 2, 1.0),  # offset already applied
        ("c", 60.0 * 30, 9, 1.0),  # gap: the state is reset
        ("c", 60.0, 9, math.nan),  # missing value
        ("c", math.inf, 9, 1.0),  # bad timestamp
        ("d", 60.0, 9, 1.0),  # a new stream
        ("a", 120.0, 9, 1.0),  # a second reading of a stream
    ],
)
def test_one_irregular_reading_in_a_batch_of_known_streams(
    stream: str, ts: float, offset: int, value: float
) -> None:
    """Whatever sends a batch off the one-round path, the result equals the object path's
    one reading at a time, and no reading is applied twice."""
    first = [Reading(s, 0.0, [1.0, 2.0], 0, k) for k, s in enumerate(["a", "b", "c"])]
    then = [
        Reading("a", 60.0, [1.0, 2.0], 0, 3),
        Reading("b", 60.0, [1.0, 2.0], 0, 4),
        Reading(stream, ts, [1.0, value], 0, offset),
    ]
    reference = StreamEngine(MODEL)
    for r in first + then:
        reference.process([r], now=0.0)
    engine = StreamEngine(MODEL)
    engine.process_batch(_columns(engine, first), now=0.0)
    result = engine.process_batch(_columns(engine, then), now=0.0)
    assert len(result.forecasts) + len(result.rejects) + len(result.drops) == 3
    assert sorted(engine.store.ids()) == sorted(reference.store.ids())
    for sid in reference.store.ids():
        assert engine.store.info(sid) == reference.store.info(sid)
        for a, b in zip(
            engine.store.states_of(sid) or [], reference.store.states_of(sid) or [], strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert engine.stats.drops == reference.stats.drops
    assert engine.stats.rejects == reference.stats.rejects
    assert engine.stats.resets == reference.stats.resets


def test_an_empty_batch() -> None:
    batch = ReadingBatch.of([], [], np.empty((0, 2)))
    result = StreamEngine(MODEL).process_batch(batch, now=0.0)
    assert len(result.forecasts) == 0
    assert result.forecasts.values.shape == (0, MODEL.card.horizon, MODEL.card.n_targets)
    assert result.round_sizes == [] and result.rejects == [] and result.drops == []


def test_a_wave_larger_than_the_capacity_cap_runs_in_chunks() -> None:
    engine = StreamEngine(MODEL, EngineConfig(max_streams=3))
    batch = ReadingBatch.of([f"s{i}" for i in range(7)], 0.0, np.ones((7, 2)))
    result = engine.process_batch(batch, now=0.0)
    assert result.round_sizes == [3, 3, 1]
    assert result.forecasts.stream_ids == [f"s{i}" for i in range(7)]
    assert len(engine.store) == 3


# -- the value types ----------------------------------------------------------------------


def test_reading_batch_of_broadcasts_scalars_and_checks_the_value_shape() -> None:
    batch = ReadingBatch.of(["a", "b"], 5.0, [[1, 2], [3, 4]], partitions=2, received=[1.0, 2.0])
    assert batch.ts.dtype == np.float64 and batch.ts.tolist() == [5.0, 5.0]
    assert batch.values.dtype == np.float32
    assert batch.partitions.dtype == np.int32 and batch.partitions.tolist() == [2, 2]
    assert batch.offsets.tolist() == [-1, -1]
    assert batch.reading(1) == Reading("b", 5.0, [3.0, 4.0], 2, -1, 2.0)
    with pytest.raises(ValueError, match="values must be"):
        ReadingBatch.of(["a"], 0.0, [1.0, 2.0])


def test_forecast_batch_horizon_and_objects() -> None:
    fb = ForecastBatch(
        ["a", "b"],
        np.array([0.0, 100.0]),
        np.arange(8, dtype=np.float32).reshape(2, 2, 2),
        np.array([True, False]),
        np.array([1, 2], np.int32),
        np.array([10, 20]),
        np.array([0.5, 0.6]),
        period=60.0,
    )
    assert fb.horizon_ts().tolist() == [[60.0, 120.0], [160.0, 220.0]]
    objects = fb.forecasts()
    assert [(f.stream_id, f.ts, f.horizon_ts, f.warm) for f in objects] == [
        ("a", 0.0, [60.0, 120.0], True),
        ("b", 100.0, [160.0, 220.0], False),
    ]
    assert (objects[1].partition, objects[1].offset, objects[1].received) == (2, 20, 0.6)
    np.testing.assert_array_equal(objects[1].values, fb.values[1])
