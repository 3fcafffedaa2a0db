"""A model change never continues another model's state: the stream is re-warmed from its
kept readings. Oracle: the new model run offline from its initial state over the stream's
last K readings (K = the new card's warm-up steps) and then the new reading.

Over 1,000 streams whose readings come interleaved in random micro-batches, for a restart
on a new version (the records restored by another engine) and for a hot swap
(`StreamEngine.replace_model`), with the same state shapes and with another cell type.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel, StepModel
from service.core.readings import Reading
from service.core.state import REWARM_MISSING_HISTORY
from service.modelcard import ModelCard
from service.testing import (
    ElmanLagModel,
    ListSink,
    build_onnx_lstm,
    drive,
    interleave,
    random_batches,
    readings_for,
)

STREAMS = 1000
STEPS = 7  # readings each stream applies before the change (more than K = 5)
WARMUP = 5
FEATURES = ("temp", "load")


def _lstm(seed: int, hidden: int = 6) -> tuple[OnnxStepModel, StepModel]:
    card, proto, oracle = build_onnx_lstm(
        hidden=hidden, features=FEATURES, warmup_steps=WARMUP, seed=seed, version=str(seed)
    )
    return OnnxStepModel(card, proto.SerializeToString()), oracle


def _series(rng: np.random.Generator, n: int) -> np.ndarray:
    """Readings near the cards' feature means (10, 20), in the training range."""
    return np.column_stack([10 + rng.normal(0, 2, n), 20 + rng.normal(0, 3, n)])


def _readings(values: dict[str, np.ndarray], start: int) -> list[list[Reading]]:
    return [
        readings_for(sid, v[start:], start=60.0 * start, first_offset=start)
        for sid, v in values.items()
    ]


def _feed(engine: StreamEngine, streams: list[list[Reading]], seed: int) -> ListSink:
    rng = np.random.default_rng(seed)
    return drive(engine, random_batches(interleave(streams, rng), rng, 300))


def _offline(oracle: StepModel, card: ModelCard, rows: np.ndarray) -> np.ndarray:
    """The forecast of the last of `rows` (raw ``[T, features]``), from the initial state."""
    x = card.scaler.features.transform(rows.astype(np.float64))[None].astype(np.float32)
    states = [np.full(s.batched_shape(1), s.init, np.float32) for s in card.states]
    y, _ = oracle.step(x, states)
    return np.asarray(card.scaler.targets.inverse(y[0, -1].astype(np.float64)))


def _check_first_forecasts(
    sink: ListSink, values: dict[str, np.ndarray], oracle: StepModel, card: ModelCard, k: int
) -> None:
    first = {}
    for f in sink.forecasts:
        first.setdefault(f.stream_id, f)
    assert set(first) == set(values)
    for sid, rows in values.items():
        want = _offline(oracle, card, rows[STEPS - k : STEPS + 1])
        got = first[sid].values
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=sid)
        assert first[sid].warm == (k + 1 >= card.warmup_steps)


@pytest.fixture(scope="module")
def values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {f"s{i:04d}": _series(rng, STEPS + 1) for i in range(STREAMS)}


def _served_then(values: dict[str, np.ndarray], model: StepModel) -> StreamEngine:
    engine = StreamEngine(model)
    _feed(engine, _readings({s: v[:STEPS] for s, v in values.items()}, 0), seed=4)
    return engine


@pytest.mark.parametrize("cell", ["lstm", "elman"])
def test_a_restart_on_a_new_version_rewarms_every_stream_from_its_kept_readings(
    cell: str, values: dict[str, np.ndarray]
) -> None:
    old, _ = _lstm(seed=1)
    before = _served_then(values, old)
    records = list(zip(before.store.ids(), before.store.dump_many(before.store.ids()), strict=True))
    new, oracle = _lstm(seed=2) if cell == "lstm" else (ElmanLagModel(warmup_steps=WARMUP),) * 2
    after = StreamEngine(new)
    after.store.load_many(records)  # the restore, on the new version
    sink = _feed(after, _readings(values, STEPS), seed=5)
    _check_first_forecasts(sink, values, oracle, new.card, WARMUP)
    rewarms = sum((r.rewarms.get("foreign_state", 0) for r in sink.results), 0)
    assert rewarms == STREAMS
    # re-warmed streams are the new model's now: written at the next checkpoint, and a
    # restore of them continues them
    assert after.store.dirty_ids() == set(values)
    again = StreamEngine(new)
    again.store.load_many(list(zip(values, after.store.dump_many(list(values)), strict=True)))
    assert not again.store.rewarms_pending


@pytest.mark.parametrize("cell", ["lstm", "elman"])
def test_a_hot_swap_rewarms_each_stream_on_its_next_reading(
    cell: str, values: dict[str, np.ndarray]
) -> None:
    old, _ = _lstm(seed=1)
    engine = _served_then(values, old)
    applied = {s: engine.store.info(s) for s in values}
    new, oracle = (
        _lstm(seed=2, hidden=5) if cell == "lstm" else (ElmanLagModel(warmup_steps=WARMUP),) * 2
    )
    engine.replace_model(new)
    # nothing is lost: the streams keep their bookkeeping
    for sid, info in applied.items():
        now = engine.store.info(sid)
        assert now is not None and info is not None
        assert (now.last_ts, now.applied_offset) == (info.last_ts, info.applied_offset)
    sink = _feed(engine, _readings(values, STEPS), seed=6)
    _check_first_forecasts(sink, values, oracle, new.card, WARMUP)
    assert sum((r.rewarms.get("model_change", 0) for r in sink.results), 0) == STREAMS
    assert not engine.store.rewarms_pending


def test_fewer_kept_readings_than_the_warm_up_rewarm_over_those_and_say_not_warm() -> None:
    old, _ = _lstm(seed=1)
    rng = np.random.default_rng(8)
    values = {"a": _series(rng, 3)}  # 2 applied, then the change
    engine = StreamEngine(old)
    drive(engine, [readings_for("a", values["a"][:2])])
    new, oracle = _lstm(seed=2)
    engine.replace_model(new)
    sink = drive(engine, [readings_for("a", values["a"][2:], start=120.0, first_offset=2)])
    (forecast,) = sink.forecasts
    want = _offline(oracle, new.card, values["a"])
    got = forecast.values
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert forecast.warm is False  # 3 readings seen of the 5 the card asks


def test_kept_readings_lacking_a_feature_of_the_new_model_reset_the_stream() -> None:
    old, _ = _lstm(seed=1)
    engine = StreamEngine(old)
    rng = np.random.default_rng(9)
    drive(engine, [readings_for("a", _series(rng, 4))])
    card, proto, oracle = build_onnx_lstm(
        hidden=4, features=("temp", "humidity"), warmup_steps=WARMUP, seed=3
    )
    engine.replace_model(OnnxStepModel(card, proto.SerializeToString()))
    assert engine.store.rewarm_due(engine.store.slots_of(["a"])).tolist() == [
        REWARM_MISSING_HISTORY
    ]
    row = np.array([[11.0, 19.0]])
    sink = drive(
        engine, [readings_for("a", row, features=("temp", "humidity"), start=240.0, first_offset=4)]
    )
    (forecast,) = sink.forecasts
    got = forecast.values
    np.testing.assert_allclose(got, _offline(oracle, card, row), rtol=1e-4, atol=1e-5)
    assert sink.results[0].rewarms == {"missing_history": 1}


def test_each_stream_keeps_its_last_readings_in_the_state_bytes() -> None:
    old, _ = _lstm(seed=1)
    with_history = StreamEngine(old).store
    without = StreamEngine(old, EngineConfig(history=0)).store
    kept = WARMUP * (8 + 4 * len(FEATURES))
    assert with_history.raw_state_bytes_per_stream == without.raw_state_bytes_per_stream + kept


def test_a_stream_checkpointed_before_its_rewarm_is_rewarmed_after_a_restore(
    values: dict[str, np.ndarray],
) -> None:
    """A stream changed and not yet written when the model is swapped: its record, written
    before its next reading, names no model, so a restore re-warms it as the swap would."""
    old, _ = _lstm(seed=1)
    engine = _served_then(values, old)
    assert engine.store.dirty_ids() == set(values)  # nothing written since the readings
    new, oracle = _lstm(seed=2, hidden=5)
    engine.replace_model(new)
    records = list(zip(values, engine.store.dump_many(list(values)), strict=True))
    restarted = StreamEngine(new)
    restarted.store.load_many(records)
    sink = _feed(restarted, _readings(values, STEPS), seed=7)
    _check_first_forecasts(sink, values, oracle, new.card, WARMUP)
    assert sum((r.rewarms.get("foreign_state", 0) for r in sink.results), 0) == STREAMS
