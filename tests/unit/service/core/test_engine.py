from __future__ import annotations

import math

import numpy as np
import pytest

from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel, StepModel
from service.core.readings import DropReason, Reading, RejectReason
from service.errors import ConfigError, InferenceError
from service.testing import (
    ElmanLagModel,
    NumpyLstmModel,
    drive,
    interleave,
    random_batches,
    readings_for,
)

PERIOD = 60.0


def oracle(model: StepModel, values: np.ndarray) -> np.ndarray:
    """Forecasts of one stream fed from the initial state: one model call over the whole series."""
    card = model.card
    x = card.scaler.features.transform(np.asarray(values, np.float64)).astype(np.float32)[None]
    states = [np.full(s.batched_shape(1), s.init, np.float32) for s in card.states]
    y, _ = model.step(x, states)
    return np.asarray(card.scaler.targets.inverse(y[0].astype(np.float64)))


def series(rng: np.random.Generator, steps: int, n_features: int = 2) -> np.ndarray:
    return rng.normal(15.0, 3.0, (steps, n_features))


def one(engine: StreamEngine, reading: Reading, now: float = 0.0) -> np.ndarray:
    result = engine.process([reading], now=now)
    assert len(result.forecasts) == 1, (result.rejects, result.drops)
    return result.forecasts[0].values


# -- forecasts --------------------------------------------------------------------------------


def test_forecasts_equal_the_oracle_and_carry_the_reading_fields(elman: ElmanLagModel) -> None:
    engine = StreamEngine(elman)
    values = series(np.random.default_rng(0), 6)
    readings = readings_for(
        "pump-1", values, features=elman.card.features, start=1000.0, partition=3, first_offset=70
    )
    for r in readings:
        r.received = r.ts + 0.5
    sink = drive(engine, [[r] for r in readings])
    expected = oracle(elman, values)
    assert len(sink.forecasts) == 6
    for t, f in enumerate(sink.forecasts):
        assert f.stream_id == "pump-1" and f.ts == 1000.0 + t * PERIOD
        assert f.horizon_ts == [f.ts + k * PERIOD for k in (1, 2, 3)]
        assert (f.partition, f.offset, f.received) == (3, 70 + t, f.ts + 0.5)
        assert f.warm == (t + 1 >= elman.card.warmup_steps)
        assert f.values.shape == (3, 1)
        np.testing.assert_allclose(f.values, expected[t], rtol=1e-5)


def test_list_values_in_card_order_equal_dict_values(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(1), 4)
    by_name = drive(StreamEngine(elman), [readings_for("s", values, features=elman.card.features)])
    by_order = drive(StreamEngine(elman), [readings_for("s", values)])
    for a, b in zip(by_name.forecasts, by_order.forecasts, strict=True):
        np.testing.assert_array_equal(a.values, b.values)


def test_many_streams_interleaved_in_random_batches_equal_the_oracle(elman: ElmanLagModel) -> None:
    rng = np.random.default_rng(2)
    data = {f"s{i}": series(rng, int(rng.integers(1, 12))) for i in range(40)}
    streams = [readings_for(sid, v, features=elman.card.features) for sid, v in data.items()]
    merged = interleave(streams, rng)
    sink = drive(StreamEngine(elman), random_batches(merged, rng, 25))
    got = sink.by_stream()
    for sid, v in data.items():
        np.testing.assert_allclose(sink.values_of(sid), oracle(elman, v), rtol=1e-5, atol=1e-6)
        assert [f.ts for f in got[sid]] == [t * PERIOD for t in range(len(v))]
    assert sum(len(r.round_sizes) for r in sink.results) >= len(sink.results)


def test_onnx_parity_among_a_thousand_other_streams(
    onnx_lstm: tuple[OnnxStepModel, NumpyLstmModel],
) -> None:
    """The served ONNX model, one test stream hidden among 1,000 others in random micro-batches."""
    model, reference = onnx_lstm
    rng = np.random.default_rng(3)
    test_values = series(rng, 60)
    others = [readings_for(f"other-{i}", series(rng, 3)) for i in range(1000)]
    merged = interleave([readings_for("test", test_values), *others], rng)
    sink = drive(StreamEngine(model), random_batches(merged, rng, 300))
    expected = oracle(reference, test_values)
    got = sink.values_of("test")
    assert np.max(np.abs(got - expected) / np.maximum(np.abs(expected), 1e-3)) <= 1e-4


@pytest.mark.parametrize(
    ("sequences", "sizes"),
    [(False, [2, 1, 1]), (True, [2, 2])],
    ids=["round-by-round", "sequences"],
)
def test_several_readings_of_a_stream_in_one_batch_apply_in_order(
    elman: ElmanLagModel, sequences: bool, sizes: list[int]
) -> None:
    """Round by round, wave k holds each stream's k-th reading; with sequences, the new
    streams' first readings take one round and a's next two one call on the time axis."""
    rng = np.random.default_rng(4)
    a, b = series(rng, 3), series(rng, 1)
    batch = [*readings_for("a", a)[:2], readings_for("b", b)[0], readings_for("a", a)[2]]
    engine = StreamEngine(elman, EngineConfig(sequences=sequences))
    result = engine.process(batch, now=0.0)
    assert result.round_sizes == sizes
    assert len(result.round_seconds) == len(sizes)
    assert [(f.stream_id, f.ts) for f in result.forecasts] == [
        ("a", 0.0),
        ("a", 60.0),
        ("b", 0.0),
        ("a", 120.0),
    ]
    assert elman.calls == len(sizes)
    np.testing.assert_allclose(result.forecasts[3].values, oracle(elman, a)[2], rtol=1e-5)


def test_an_empty_batch_does_nothing(elman: ElmanLagModel) -> None:
    result = StreamEngine(elman).process([], now=0.0)
    assert result.forecasts == [] and result.round_sizes == [] and elman.calls == 0


# -- drops ------------------------------------------------------------------------------------


def _states(engine: StreamEngine, sid: str) -> list[np.ndarray]:
    states = engine.store.states_of(sid)
    assert states is not None
    return states


@pytest.mark.parametrize(
    ("ts", "reason"),
    [(120.0, DropReason.DUPLICATE), (60.0, DropReason.LATE), (0.0, DropReason.LATE)],
)
def test_duplicate_and_late_readings_are_dropped_without_touching_state(
    elman: ElmanLagModel, ts: float, reason: DropReason
) -> None:
    values = series(np.random.default_rng(5), 4)
    rs = readings_for("s", values, first_offset=-1)
    engine = StreamEngine(elman)
    drive(engine, [rs[:3]])
    before = _states(engine, "s")
    bad = Reading("s", ts, list(values[0]))
    result = engine.process([bad], now=0.0)
    assert result.drops == [(bad, reason)] and result.forecasts == []
    for a, b in zip(before, _states(engine, "s"), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(one(engine, rs[3]), oracle(elman, values)[3], rtol=1e-5)
    assert engine.stats.drops == {reason: 1}


def test_a_duplicate_inside_one_batch_is_dropped(elman: ElmanLagModel) -> None:
    rs = readings_for("s", series(np.random.default_rng(6), 2), first_offset=-1)
    result = StreamEngine(elman).process([rs[0], rs[0], rs[1]], now=0.0)
    assert [f.ts for f in result.forecasts] == [0.0, 60.0]
    assert result.drops == [(rs[0], DropReason.DUPLICATE)]


def test_already_applied_offsets_are_dropped_for_exactly_once_replay(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(7), 5)
    rs = readings_for("s", values, first_offset=100)
    engine = StreamEngine(elman)
    drive(engine, [rs[:3]])
    info = engine.store.info("s")
    assert info is not None and info.applied_offset == 102
    # a replay from offset 101 (after a crash): 101 and 102 are already in the state
    replay = [Reading("s", 9e9, list(values[0]), 0, 101), rs[2], rs[3], rs[4]]
    result = engine.process(replay, now=0.0)
    assert result.drops == [
        (replay[0], DropReason.ALREADY_APPLIED),
        (rs[2], DropReason.ALREADY_APPLIED),
    ]
    np.testing.assert_allclose(
        np.stack([f.values for f in result.forecasts]), oracle(elman, values)[3:], rtol=1e-5
    )


def test_readings_without_offsets_are_never_taken_as_applied(elman: ElmanLagModel) -> None:
    rs = readings_for("s", series(np.random.default_rng(8), 3), first_offset=-1)
    sink = drive(StreamEngine(elman), [rs])
    assert len(sink.forecasts) == 3 and sink.drops == []


# -- gaps -------------------------------------------------------------------------------------


def _gap_readings(values: np.ndarray, gap_periods: float) -> list[Reading]:
    rs = readings_for("s", values, first_offset=-1)
    for r in rs[3:]:
        r.ts += gap_periods * PERIOD
    return rs


def test_a_long_gap_resets_the_state(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(9), 6)
    engine = StreamEngine(elman, EngineConfig(max_gap_periods=10))
    sink = drive(engine, [_gap_readings(values, 10.5)])
    np.testing.assert_allclose(sink.values_of("s")[:3], oracle(elman, values[:3]), rtol=1e-5)
    np.testing.assert_allclose(sink.values_of("s")[3:], oracle(elman, values[3:]), rtol=1e-5)
    assert [f.warm for f in sink.forecasts] == [False, True, True, False, True, True]
    assert sum(r.resets for r in sink.results) == 1
    assert sum(r.gaps for r in sink.results) == 1
    assert engine.stats.resets == 1 and engine.stats.gaps == 1


def test_a_gap_within_the_limit_keeps_the_state(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(10), 6)
    engine = StreamEngine(elman, EngineConfig(max_gap_periods=10))
    sink = drive(engine, [_gap_readings(values, 9.0)])  # 10 periods since the last reading
    np.testing.assert_allclose(sink.values_of("s"), oracle(elman, values), rtol=1e-5)
    assert engine.stats.resets == 0 and engine.stats.gaps == 0


def test_the_keep_policy_counts_the_gap_but_keeps_the_state(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(11), 6)
    engine = StreamEngine(elman, EngineConfig(max_gap_periods=2, gap_policy="keep"))
    sink = drive(engine, [_gap_readings(values, 50.0)])
    np.testing.assert_allclose(sink.values_of("s"), oracle(elman, values), rtol=1e-5)
    assert engine.stats.resets == 0 and engine.stats.gaps == 1
    assert all(f.warm for f in sink.forecasts[1:])


# -- rejects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"temp": 1.0, "load": 2.0, "extra": 3.0}, RejectReason.UNKNOWN_FEATURE),
        ({"temp": 1.0}, RejectReason.MISSING_FEATURE),
        ({"temp": "1.5", "load": 2.0}, RejectReason.NON_NUMERIC),
        ({"temp": True, "load": 2.0}, RejectReason.NON_NUMERIC),
        ({"temp": None, "load": 2.0}, RejectReason.NON_NUMERIC),
        ({"temp": {"v": 1}, "load": 2.0}, RejectReason.NON_NUMERIC),
        ({"temp": [1.0], "load": 2.0}, RejectReason.NON_NUMERIC),
        ({"temp": math.nan, "load": 2.0}, RejectReason.NON_FINITE),
        ({"temp": 1.0, "load": -math.inf}, RejectReason.NON_FINITE),
        ({"temp": 10**400, "load": 2.0}, RejectReason.NON_FINITE),
        ([1.0], RejectReason.MISSING_FEATURE),
        ([1.0, 2.0, 3.0], RejectReason.UNKNOWN_FEATURE),
        ([1.0, "x"], RejectReason.NON_NUMERIC),
        ([1.0, math.inf], RejectReason.NON_FINITE),
        ("temp=1", RejectReason.INVALID),
        (None, RejectReason.INVALID),
    ],
)
def test_bad_values_are_rejected_and_the_rest_of_the_batch_goes_on(
    elman: ElmanLagModel, values: object, reason: RejectReason
) -> None:
    engine = StreamEngine(elman)
    good = readings_for("good", [[1.0, 2.0]], first_offset=5)[0]
    bad = Reading("bad", 0.0, values, partition=2, offset=9)  # type: ignore[arg-type]
    result = engine.process([bad, good], now=0.0)
    assert [f.stream_id for f in result.forecasts] == ["good"]
    assert len(result.rejects) == 1
    reject = result.rejects[0]
    assert reject.reason == reason, reject.detail
    assert (reject.reading, reject.partition, reject.offset) == (bad, 2, 9)
    assert reject.detail
    assert "bad" not in engine.store
    assert engine.stats.rejects == {reason: 1}


def test_a_non_finite_timestamp_is_rejected(elman: ElmanLagModel) -> None:
    result = StreamEngine(elman).process([Reading("s", math.nan, [1.0, 2.0])], now=0.0)
    assert [r.reason for r in result.rejects] == [RejectReason.BAD_TIMESTAMP]


def test_numpy_scalars_are_numbers(elman: ElmanLagModel) -> None:
    result = StreamEngine(elman).process(
        [Reading("s", 0.0, {"temp": np.float32(1.5), "load": np.int64(2)})], now=0.0
    )
    assert len(result.forecasts) == 1 and result.rejects == []


def test_a_rejected_reading_leaves_the_stream_state_alone(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(12), 3)
    rs = readings_for("s", values, first_offset=-1)
    engine = StreamEngine(elman)
    bad = Reading("s", 30.0, [1.0, math.nan])
    sink = drive(engine, [[rs[0], bad], rs[1:]])
    assert len(sink.rejects) == 1
    np.testing.assert_allclose(sink.values_of("s"), oracle(elman, values), rtol=1e-5)


# -- imputation -------------------------------------------------------------------------------


def test_last_value_imputation_fills_missing_and_non_finite_values(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(13), 5)
    engine = StreamEngine(elman, EngineConfig(impute="last"))
    rs = readings_for("s", values, features=elman.card.features, first_offset=-1)
    del rs[2].values["load"]  # type: ignore[union-attr]
    rs[3].values["temp"] = math.nan  # type: ignore[index]
    rs[4].values["temp"] = math.inf  # type: ignore[index]
    sink = drive(engine, [rs[:3], rs[3:]])
    filled = values.copy()
    filled[2, 1] = values[1, 1]
    filled[3, 0] = values[2, 0]
    filled[4, 0] = values[2, 0]
    assert sink.rejects == []
    np.testing.assert_allclose(sink.values_of("s"), oracle(elman, filled), rtol=1e-5)


def test_imputation_within_one_batch_uses_the_previous_reading(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(14), 2)
    rs = readings_for("s", values, first_offset=-1)
    rs[1].values[0] = math.nan  # type: ignore[index]
    sink = drive(StreamEngine(elman, EngineConfig(impute="last")), [rs])
    filled = values.copy()
    filled[1, 0] = values[0, 0]
    np.testing.assert_allclose(sink.values_of("s"), oracle(elman, filled), rtol=1e-5)


def test_imputation_needs_an_earlier_value(elman: ElmanLagModel) -> None:
    engine = StreamEngine(elman, EngineConfig(impute="last"))
    result = engine.process([Reading("s", 0.0, {"temp": 1.0})], now=0.0)
    assert [r.reason for r in result.rejects] == [RejectReason.MISSING_FEATURE]
    assert "load" in result.rejects[0].detail
    # non-numeric values are never imputed
    result = engine.process([Reading("s", 0.0, {"temp": 1.0, "load": "?"})], now=0.0)
    assert [r.reason for r in result.rejects] == [RejectReason.NON_NUMERIC]


# -- idle streams and capacity ----------------------------------------------------------------


def test_idle_streams_expire_after_the_ttl(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(15), 4)
    engine = StreamEngine(elman, EngineConfig(ttl_seconds=300.0))
    a = readings_for("a", values, first_offset=-1)
    b = readings_for("b", values, first_offset=-1)
    engine.process([a[0], b[0]], now=1000.0)
    engine.process([a[1]], now=1200.0)
    result = engine.process([a[2]], now=1350.0)
    assert result.expired == ["b"] and "b" not in engine.store and "a" in engine.store
    assert engine.stats.expired == 1
    np.testing.assert_allclose(
        one(engine, b[1], now=1360.0), oracle(elman, values[1:2])[0], rtol=1e-5
    )


def test_the_capacity_cap_evicts_the_least_recently_used(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(16), 3)
    engine = StreamEngine(elman, EngineConfig(max_streams=2))
    rs = {sid: readings_for(sid, values, first_offset=-1) for sid in "abc"}
    engine.process([rs["a"][0], rs["b"][0]], now=0.0)
    engine.process([rs["a"][1]], now=0.0)
    result = engine.process([rs["c"][0]], now=0.0)
    assert result.evicted == ["b"] and engine.stats.evicted == 1
    assert set(engine.store.ids()) == {"a", "c"}
    np.testing.assert_allclose(one(engine, rs["a"][2]), oracle(elman, values)[2], rtol=1e-5)


def test_a_batch_wider_than_the_cap_is_processed_in_chunks(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(17), 1)
    engine = StreamEngine(elman, EngineConfig(max_streams=3))
    batch = [readings_for(f"s{i}", values)[0] for i in range(7)]
    result = engine.process(batch, now=0.0)
    assert result.round_sizes == [3, 3, 1]
    assert len(result.forecasts) == 7 and len(result.evicted) == 4
    assert len(engine.store) == 3


# -- storage options --------------------------------------------------------------------------


def test_float16_state_stays_close_to_float32(elman: ElmanLagModel) -> None:
    values = series(np.random.default_rng(18), 30)
    full = drive(StreamEngine(elman), [readings_for("s", values)])
    half_engine = StreamEngine(elman, EngineConfig(state_dtype="float16"))
    half = drive(half_engine, [readings_for("s", values)])
    np.testing.assert_allclose(half.values_of("s"), full.values_of("s"), atol=0.05)
    assert not np.array_equal(half.values_of("s"), full.values_of("s"))
    # the state tensors halve (the kept readings and outstanding forecasts stay as they are)
    only = {"history": 0, "score_forecasts": False}
    half_tensors = StreamEngine(elman, EngineConfig(state_dtype="float16", **only))
    full_tensors = StreamEngine(elman, EngineConfig(**only))
    assert (
        half_tensors.store.raw_state_bytes_per_stream * 2
        == full_tensors.store.raw_state_bytes_per_stream
    )


def test_dumped_state_restores_into_a_fresh_engine(elman: ElmanLagModel) -> None:
    rng = np.random.default_rng(19)
    data = {f"s{i}": series(rng, 8) for i in range(5)}
    streams = {sid: readings_for(sid, v, first_offset=0) for sid, v in data.items()}
    first = StreamEngine(elman, EngineConfig(impute="last"))
    drive(first, [[r for rs in streams.values() for r in rs[:4]]])
    restored = StreamEngine(elman, EngineConfig(impute="last"))
    for sid in first.store.dirty_ids():
        restored.store.load(sid, first.store.dump(sid))
    # replaying from an earlier offset applies nothing twice
    replay = [r for rs in streams.values() for r in rs[2:]]
    a = drive(first, [[r for r in replay if r.offset >= 4]])
    b = drive(restored, [replay])
    assert len(b.drops) == 2 * len(data)
    for sid, v in data.items():
        np.testing.assert_allclose(b.values_of(sid), a.values_of(sid), rtol=1e-6)
        np.testing.assert_allclose(b.values_of(sid), oracle(elman, v)[4:], rtol=1e-5)


# -- configuration and errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_gap_periods": 0},
        {"gap_policy": "skip"},
        {"impute": "mean"},
        {"ttl_seconds": 0},
        {"max_streams": 0},
        {"state_dtype": "float64"},
    ],
)
def test_invalid_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        EngineConfig(**kwargs)  # type: ignore[arg-type]


def test_a_model_returning_the_wrong_shape_is_an_inference_error(elman: ElmanLagModel) -> None:
    class Broken:
        card = elman.card

        def step(
            self, x: np.ndarray, states: list[np.ndarray]
        ) -> tuple[np.ndarray, list[np.ndarray]]:
            y, new = elman.step(x, states)
            return y[:, :, :1], new

    with pytest.raises(InferenceError, match="shape"):
        StreamEngine(Broken()).process([Reading("s", 0.0, [1.0, 2.0])], now=0.0)


def test_stats_accumulate_across_calls(elman: ElmanLagModel) -> None:
    engine = StreamEngine(elman)
    rs = readings_for("s", series(np.random.default_rng(20), 3), first_offset=-1)
    engine.process(rs[:2], now=0.0)
    engine.process([rs[1], rs[2], Reading("t", 0.0, [1.0])], now=0.0)
    stats = engine.stats
    assert (stats.readings, stats.forecasts, stats.rounds) == (5, 3, 3)
    assert stats.drops == {DropReason.DUPLICATE: 1}
    assert stats.rejects == {RejectReason.MISSING_FEATURE: 1}
    assert stats.model_seconds > 0


def test_an_engine_can_use_a_store_it_is_given(elman: ElmanLagModel) -> None:
    from service.core.state import StateStore

    store = StateStore(elman.card.states, max_streams=2)
    engine = StreamEngine(elman, store=store)
    assert engine.store is store  # an empty store is still the one to use
    batch = [readings_for(f"s{i}", [[1.0, 2.0]])[0] for i in range(5)]
    result = engine.process(batch, now=0.0)
    assert result.round_sizes == [2, 2, 1]  # the store's cap decides the chunks
    assert len(store) == 2


def test_a_store_for_other_states_is_refused(elman: ElmanLagModel) -> None:
    from service.core.state import StateStore
    from service.modelcard import StateSpec

    with pytest.raises(ConfigError, match="state store"):
        StreamEngine(elman, store=StateStore([StateSpec(name="h", shape=(1, 8), batch_axis=1)]))
    with pytest.raises(ConfigError, match="imputation"):
        StreamEngine(elman, EngineConfig(impute="last"), StateStore(elman.card.states))
