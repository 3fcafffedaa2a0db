"""The card's golden vectors and feature ranges: schema, validation and `max_error`."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from service.errors import ModelCardError
from service.golden import GoldenTensor
from service.modelcard import ModelCard
from service.testing import build_onnx_linear, build_onnx_lstm

Step = tuple[np.ndarray, list[np.ndarray]]


def _card_json(card: ModelCard, **overrides: object) -> str:
    return json.dumps(card.model_dump(mode="json") | overrides)


# -- feature ranges ---------------------------------------------------------------------------


def test_feature_ranges_round_trip_in_card_order() -> None:
    card, _ = build_onnx_linear(feature_ranges=[(15.5, 24.0), (0.25, 1.75)])
    assert ModelCard.from_json(card.to_json()).feature_ranges == [(15.5, 24.0), (0.25, 1.75)]
    assert build_onnx_linear()[0].feature_ranges is None  # optional: older cards have none


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ([[15.5, 24.0]], "feature_ranges has 1 entries for 2 features"),
        ([[15.5, 24.0], [0.25, 1.75], [0.0, 1.0]], "feature_ranges has 3 entries for 2 features"),
        (
            [[15.5, 24.0], [1.75, 0.25]],
            "feature_ranges for 'pressure' must be finite with min <= max",
        ),
        ([[-math.inf, 24.0], [0.25, 1.75]], "feature_ranges for 'temp' must be finite"),
        ([[15.5, 24.0], [0.25, math.nan]], "feature_ranges for 'pressure' must be finite"),
        ([[15.5], [0.25, 1.75]], "feature_ranges"),
    ],
)
def test_invalid_feature_ranges_are_rejected(ranges: list[list[float]], message: str) -> None:
    card, _ = build_onnx_linear()
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_json(_card_json(card, feature_ranges=ranges))


def test_a_constant_feature_has_an_empty_range() -> None:
    card, _ = build_onnx_linear(feature_ranges=[(20.0, 20.0), (1.0, 1.0)])
    assert card.feature_ranges == [(20.0, 20.0), (1.0, 1.0)]


# -- golden tensors -------------------------------------------------------------------------


def test_golden_tensor_keeps_float32_bit_for_bit_and_float64_exactly() -> None:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    f64 = rng.standard_normal((5, 1)) * 1e5 + 1013.25
    for array in (f32, f64):
        tensor = GoldenTensor.model_validate_json(GoldenTensor.of(array).model_dump_json())
        back = tensor.array()
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
        back[0] = 0.0  # the caller's own copy
    assert GoldenTensor.of(f32).dtype == "float32" and GoldenTensor.of(f64).dtype == "float64"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shape": [2, 2], "dtype": "float32", "data": "not base64!"}, "not base64"),
        (
            {"shape": [2, 2], "dtype": "float64", "data": base64.b64encode(b"\0" * 16).decode()},
            r"holds 16 bytes, shape \(2, 2\) needs 32",
        ),
        (
            {
                "shape": [1],
                "dtype": "float32",
                "data": base64.b64encode(np.array([np.nan], "<f4").tobytes()).decode(),
            },
            "finite",
        ),
        ({"shape": [], "dtype": "float32", "data": ""}, "at least 1"),
        ({"shape": [2], "dtype": "int8", "data": "AAA="}, "dtype"),
    ],
)
def test_invalid_golden_tensors_are_rejected(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GoldenTensor.model_validate(fields)


# -- golden vectors in the card ---------------------------------------------------------------


def _zeros(*shape: int) -> dict[str, Any]:
    return GoldenTensor.of(np.zeros(shape, np.float32)).model_dump()


def test_card_with_golden_vectors_round_trips_through_json_and_onnx() -> None:
    card, proto, _ = build_onnx_lstm()
    assert card.golden is not None
    assert ModelCard.from_json(card.to_json()) == card
    assert ModelCard.from_onnx(proto) == card


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda g: g | {"x": _zeros(2, 6, 5)},
            r"golden\.x has shape \(2, 6, 5\), the card implies \(2, 6, 2\)",
        ),
        (lambda g: g | {"y": _zeros(2, 6, 3)}, r"golden\.y has shape"),
        (
            lambda g: g | {"states": g["states"][:1]},
            "1 initial and 2 final states for 2 card states",
        ),
        (
            lambda g: g | {"states_out": [_zeros(2, 3, 16), g["states_out"][1]]},
            r"golden\.states_out\[h\] has shape \(2, 3, 16\), the card implies \(2, 2, 16\)",
        ),
        (lambda g: g | {"tolerance": 0.0}, "tolerance"),
    ],
)
def test_golden_vectors_that_do_not_fit_the_card_are_rejected(
    edit: Callable[[dict[str, Any]], dict[str, Any]], message: str
) -> None:
    card, _, _ = build_onnx_lstm()
    data = card.model_dump(mode="json")
    data["golden"] = edit(data["golden"])
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_json(json.dumps(data))


def test_max_error_is_round_off_for_the_reference_and_large_for_anything_else() -> None:
    card, _, oracle = build_onnx_lstm()
    golden = card.golden
    assert golden is not None
    assert golden.max_error(card.scaler, oracle.step) < 1e-6

    def shifted(x: np.ndarray, states: Sequence[np.ndarray]) -> Step:
        y, out = oracle.step(x, states)
        return y + 0.01, out

    assert golden.max_error(card.scaler, shifted) == pytest.approx(0.01, rel=1e-3)

    def nan_state(x: np.ndarray, states: Sequence[np.ndarray]) -> Step:
        y, out = oracle.step(x, states)
        out[1][...] = np.nan
        return y, out

    assert golden.max_error(card.scaler, nan_state) == math.inf

    def first_step_only(x: np.ndarray, states: Sequence[np.ndarray]) -> Step:
        y, out = oracle.step(x[:, :1], states)
        return y, out

    assert golden.max_error(card.scaler, first_step_only) == math.inf


def test_max_error_runs_the_sequence_whole_and_one_reading_at_a_time() -> None:
    card, _, oracle = build_onnx_lstm()
    golden = card.golden
    assert golden is not None
    calls: list[int] = []

    def counting(x: np.ndarray, states: Sequence[np.ndarray]) -> Step:
        calls.append(x.shape[1])
        return oracle.step(x, states)

    golden.max_error(card.scaler, counting)
    assert calls == [golden.x.shape[1], *([1] * golden.x.shape[1])]

    def forgets_state_between_calls(x: np.ndarray, states: Sequence[np.ndarray]) -> Step:
        zeros = [np.zeros_like(s) for s in states]
        return oracle.step(x, zeros if x.shape[1] == 1 else states)

    assert golden.max_error(card.scaler, forgets_state_between_calls) > 1e-2


def test_max_error_sees_a_scaler_that_is_not_the_trained_one() -> None:
    card, _, oracle = build_onnx_lstm()
    golden = card.golden
    assert golden is not None
    data = card.model_dump()
    data["scaler"]["features"]["std"] = [s * 1.01 for s in data["scaler"]["features"]["std"]]
    edited_features = ModelCard.model_validate(data)
    assert golden.max_error(edited_features.scaler, oracle.step) > 1e-3
    data = card.model_dump()
    data["scaler"]["targets"]["mean"] = [m + 0.05 for m in data["scaler"]["targets"]["mean"]]
    edited_targets = ModelCard.model_validate(data)
    assert golden.max_error(edited_targets.scaler, oracle.step) > 1e-3
