from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.engine import StreamEngine
from service.core.model import OnnxStepModel
from service.modelcard import validate_onnx
from service.registry import Registry
from service.simulate import SENSOR_FEATURES
from service.testing import (
    SENSOR_RANGES,
    ElmanLagModel,
    ListSink,
    add_sensor_lstm,
    build_onnx_lstm,
    drive,
    interleave,
    make_card,
    random_batches,
    readings_for,
)


def test_make_card_builds_a_valid_card_with_a_real_scaler() -> None:
    card = make_card(features=("a", "b", "c"), targets=("a", "b"), horizon=5)
    assert card.n_features == 3 and card.n_targets == 2 and card.horizon == 5
    assert card.scaler.features.std != [1.0, 1.0, 1.0]


@pytest.mark.parametrize("layers", [1, 3])
def test_build_onnx_lstm_honours_the_contract(layers: int) -> None:
    card, model, oracle = build_onnx_lstm(hidden=5, layers=layers, horizon=2)
    validate_onnx(card, model)
    assert [s.name for s in card.states] == ["h", "c"]
    assert card.states[0].shape == (layers, 5) and card.states[0].batch_axis == 1
    assert oracle.card is card


def test_add_sensor_lstm_registers_a_model_whose_forecasts_its_oracle_expects(
    tmp_path: Path,
) -> None:
    model = add_sensor_lstm(tmp_path, feature_ranges=SENSOR_RANGES)
    loaded = Registry(tmp_path).load(model.card.name)
    assert loaded.card == model.card and loaded.card.feature_ranges == SENSOR_RANGES
    low, high = np.asarray(SENSOR_RANGES).T
    rows = np.random.default_rng(3).uniform(low, high, (6, len(SENSOR_FEATURES)))
    readings = readings_for("s", rows, features=SENSOR_FEATURES, period=model.card.period)
    sink = drive(StreamEngine(OnnxStepModel.from_loaded(loaded)), [readings])
    np.testing.assert_allclose(sink.values_of("s"), model.expected(rows), rtol=1e-4, atol=1e-6)


def test_the_elman_model_steps_a_sequence_like_single_steps() -> None:
    model = ElmanLagModel(hidden=4, lags=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 2)).astype(np.float32)
    states = [np.zeros(s.batched_shape(3), np.float32) for s in model.card.states]
    y_seq, final = model.step(x, states)
    ys = []
    for t in range(5):
        y, states = model.step(x[:, t : t + 1], states)
        ys.append(y)
    np.testing.assert_allclose(np.concatenate(ys, axis=1), y_seq, rtol=1e-6)
    for a, b in zip(states, final, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert model.calls == 6


def test_readings_for_spaces_timestamps_and_counts_offsets() -> None:
    rs = readings_for(
        "p",
        [[1.0, 2.0], [3.0, 4.0]],
        features=("a", "b"),
        start=10.0,
        period=5.0,
        partition=2,
        first_offset=7,
    )
    assert [(r.ts, r.offset, r.partition) for r in rs] == [(10.0, 7, 2), (15.0, 8, 2)]
    assert rs[1].values == {"a": 3.0, "b": 4.0}
    plain = readings_for("p", [[1.0, 2.0]], first_offset=-1)
    assert plain[0].values == [1.0, 2.0] and plain[0].offset == -1


def test_interleave_keeps_each_streams_order_and_loses_nothing() -> None:
    rng = np.random.default_rng(1)
    streams = [readings_for(f"s{k}", np.zeros((n, 2))) for k, n in enumerate([5, 1, 9])]
    merged = interleave(streams, rng)
    assert len(merged) == 15
    for k, rs in enumerate(streams):
        assert [r for r in merged if r.stream_id == f"s{k}"] == rs
    assert merged != [r for rs in streams for r in rs]


def test_random_batches_cut_without_reordering() -> None:
    rng = np.random.default_rng(2)
    rs = readings_for("s", np.zeros((50, 2)))
    batches = random_batches(rs, rng, 7)
    assert [r for b in batches for r in b] == rs
    assert all(1 <= len(b) <= 7 for b in batches)
    assert len({len(b) for b in batches}) > 1


def test_drive_collects_everything_into_a_list_sink() -> None:
    model = ElmanLagModel()
    rs = readings_for("s", np.ones((3, 2)), first_offset=-1)
    sink = drive(StreamEngine(model), [rs[:2], [rs[1], rs[2]]])
    assert isinstance(sink, ListSink)
    assert len(sink.results) == 2 and len(sink.forecasts) == 3 and len(sink.drops) == 1
    assert list(sink.by_stream()) == ["s"]
    assert sink.values_of("s").shape == (3, 3, 1)
