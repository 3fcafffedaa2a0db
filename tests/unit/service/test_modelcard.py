from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from service.errors import ModelCardError, ModelContractError
from service.modelcard import CARD_METADATA_KEY, ModelCard, StateSpec, validate_onnx
from service.testing import build_onnx_linear, linear_graph


def test_card_round_trips_through_json_and_file(tmp_path):
    card, _ = build_onnx_linear()
    assert ModelCard.from_json(card.to_json()) == card
    card.write(tmp_path)
    assert ModelCard.read(tmp_path) == card
    assert ModelCard.read(tmp_path / "card.json") == card


def test_card_round_trips_through_onnx_metadata():
    card, model = build_onnx_linear()
    card.embed(model)
    card.embed(model)  # embedding again replaces, never duplicates
    assert [p.key for p in model.metadata_props].count(CARD_METADATA_KEY) == 1
    reloaded = onnx.load_model_from_string(model.SerializeToString())
    assert ModelCard.from_onnx(reloaded) == card


def test_onnx_without_card_is_a_clear_error():
    with pytest.raises(ModelCardError, match=r"no 'sensorcast\.card' entry"):
        ModelCard.from_onnx(linear_graph(), source="m.onnx")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"features": ["a", "a"]}, "duplicate features: a"),
        ({"horizon": 0}, "horizon"),
        ({"period": -1.0}, "period"),
        ({"name": "bad name"}, "name"),
        (
            {
                "scaler": {
                    "features": {"mean": [0.0], "std": [1.0]},
                    "targets": {"mean": [0.0], "std": [1.0]},
                }
            },
            "feature scaler has 1 columns for 2 inputs",
        ),
        (
            {
                "scaler": {
                    "features": {"mean": [0.0, 0.0], "std": [1.0, 0.0]},
                    "targets": {"mean": [0.0], "std": [1.0]},
                }
            },
            "stds must be finite and > 0",
        ),
        ({"states": [{"name": "x", "shape": [1], "batch_axis": 0}]}, "may not be named 'x'"),
        ({"states": [{"name": "h", "shape": [0, 4], "batch_axis": 1}]}, "must be > 0"),
        ({"schema_version": 99}, "schema_version 99"),
    ],
)
def test_invalid_cards_are_rejected_with_the_reason(overrides, message):
    bad = build_onnx_linear()[0].model_dump(mode="json") | overrides
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_json(json.dumps(bad))


def test_unreadable_card_file_names_the_path(tmp_path):
    with pytest.raises(ModelCardError, match="cannot read model card"):
        ModelCard.read(tmp_path / "missing.json")
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ModelCardError, match=str(tmp_path)):
        ModelCard.read(tmp_path)


def test_state_spec_inserts_the_batch_axis():
    spec = StateSpec(name="h", shape=(2, 64), batch_axis=1)
    assert spec.batched_shape(7) == (2, 7, 64)
    assert spec.output_name == "h_out"
    assert spec.size == 128
    lags = StateSpec(name="lags", shape=(12, 3), batch_axis=0)
    assert lags.batched_shape(5) == (5, 12, 3)


def test_scaler_inverse_undoes_transform():
    scaler = build_onnx_linear()[0].scaler.features
    raw = np.array([[21.0, 1.5], [18.0, 0.25]], np.float32)
    np.testing.assert_allclose(scaler.inverse(scaler.transform(raw)), raw, rtol=1e-6)
    np.testing.assert_allclose(scaler.transform(raw)[0], [0.5, 1.0])


def test_a_conforming_graph_validates():
    validate_onnx(*build_onnx_linear())


@pytest.mark.parametrize(
    ("graph_kwargs", "message"),
    [
        ({"n_features": 3}, "input 'x' axis 2 is 3, the card says 2"),
        ({"horizon": 5}, "output 'y' axis 2 is 5, the card says 3"),
        ({"state_name": "c"}, "graph inputs are"),
        ({"fixed_batch": True}, "axis 0 is fixed at 1; it must be dynamic"),
    ],
)
def test_contract_violations_are_named(graph_kwargs, message):
    with pytest.raises(ModelContractError, match=message):
        validate_onnx(build_onnx_linear()[0], linear_graph(**graph_kwargs))


def test_state_rank_mismatch_is_named():
    card, graph = build_onnx_linear()
    flat = StateSpec(name="h", shape=(4,), batch_axis=0)  # [batch, 4]: the graph's h is 3-d
    card = ModelCard.model_validate(card.model_dump() | {"states": [flat]})
    with pytest.raises(ModelContractError, match="state input 'h' has rank 3, the card implies 2"):
        validate_onnx(card, graph)
