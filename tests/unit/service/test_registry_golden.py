"""The registry runs a card's golden vectors: at `add` and at every load."""

from __future__ import annotations

import logging

import onnx
import pytest

from service.errors import ModelContractError
from service.modelcard import ModelCard
from service.registry import Registry, load_model_dir
from service.testing import build_onnx_linear, build_onnx_lstm
from tests.unit.service.goldenfixtures import perturb_weight


def _write_by_hand(registry: Registry, card: ModelCard, proto: onnx.ModelProto) -> None:
    """What a copy, a hand edit or a buggy exporter leaves: files `add` would have refused."""
    directory = registry.root / card.name / card.version
    directory.mkdir(parents=True)
    card.embed(proto)
    onnx.save_model(proto, directory / "model.onnx")
    card.write(directory)


def test_a_graph_that_reproduces_its_golden_vectors_loads(tmp_path) -> None:
    card, proto, _ = build_onnx_lstm()
    registry = Registry(tmp_path)
    registry.add(card, proto)
    loaded = registry.load(card.name)
    assert loaded.card == card
    assert loaded.golden_error is not None and loaded.golden_error <= 1e-5


def test_altered_weights_are_refused_at_load_with_one_line(tmp_path) -> None:
    card, proto, _ = build_onnx_lstm()
    registry = Registry(tmp_path)
    _write_by_hand(registry, card, perturb_weight(proto, 1.01, "head_w"))
    with pytest.raises(ModelContractError) as refused:
        registry.load(card.name)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("lstm-test:1: the graph does not reproduce the golden vectors")
    assert "max abs error 0.00" in message and "tolerance 0.0001" in message
    assert "re-export" in message


def test_add_refuses_a_graph_that_does_not_reproduce_its_golden_vectors(tmp_path) -> None:
    card, proto, _ = build_onnx_lstm()
    registry = Registry(tmp_path)
    with pytest.raises(ModelContractError, match="golden vectors"):
        registry.add(card, perturb_weight(proto, 1.01, "head_w"))
    assert list(tmp_path.iterdir()) == []


def test_a_graph_of_another_model_with_the_same_signature_is_refused(tmp_path) -> None:
    card, _, _ = build_onnx_lstm(seed=0)
    _, other, _ = build_onnx_lstm(seed=1)  # same shapes, other weights
    registry = Registry(tmp_path)
    _write_by_hand(registry, card, other)
    with pytest.raises(ModelContractError, match="golden vectors"):
        load_model_dir(registry.resolve(card.name))


def test_a_scaler_edited_in_both_cards_is_refused(tmp_path) -> None:
    card, proto, _ = build_onnx_lstm()
    data = card.model_dump()
    data["scaler"]["features"]["mean"] = [m + 0.5 for m in data["scaler"]["features"]["mean"]]
    registry = Registry(tmp_path)
    _write_by_hand(registry, ModelCard.model_validate(data), proto)
    with pytest.raises(ModelContractError, match="golden vectors"):
        registry.load(card.name)


def test_a_card_without_golden_vectors_loads_unchecked_with_a_warning(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear())
    with caplog.at_level(logging.WARNING, logger="service.registry"):
        loaded = registry.load("tiny")
    assert loaded.golden_error is None
    assert [r.getMessage() for r in caplog.records] == [
        "model=tiny:1 has no golden vectors in its card: the graph is served unchecked; "
        "re-export it with `sensorcast export` to add them"
    ]
