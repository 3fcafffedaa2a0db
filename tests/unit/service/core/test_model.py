from __future__ import annotations

import numpy as np
import pytest

from service.core.model import OnnxStepModel, StepModel
from service.errors import InferenceError, ModelContractError
from service.testing import ElmanLagModel, NumpyLstmModel, build_onnx_lstm


def _random_states(model: StepModel, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.normal(0, 0.5, spec.batched_shape(batch)).astype(np.float32)
        for spec in model.card.states
    ]


@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (7, 1), (5, 6)])
def test_onnx_step_matches_the_numpy_oracle(
    onnx_lstm: tuple[OnnxStepModel, NumpyLstmModel], batch: int, steps: int
) -> None:
    model, oracle = onnx_lstm
    rng = np.random.default_rng(batch * 10 + steps)
    x = rng.normal(0, 1, (batch, steps, model.card.n_features)).astype(np.float32)
    states = _random_states(model, batch, rng)
    y, new = model.step(x, states)
    y_ref, new_ref = oracle.step(x, states)
    assert y.shape == (batch, steps, model.card.horizon, model.card.n_targets)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    for got, want, spec in zip(new, new_ref, model.card.states, strict=True):
        assert got.shape == spec.batched_shape(batch)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_stepping_one_at_a_time_equals_a_sequence(
    onnx_lstm: tuple[OnnxStepModel, NumpyLstmModel],
) -> None:
    model, _ = onnx_lstm
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (3, 8, model.card.n_features)).astype(np.float32)
    states = _random_states(model, 3, rng)
    y_seq, final = model.step(x, states)
    ys = []
    for t in range(8):
        y_t, states = model.step(x[:, t : t + 1], states)
        ys.append(y_t)
    np.testing.assert_allclose(np.concatenate(ys, axis=1), y_seq, atol=1e-5)
    for a, b in zip(states, final, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_both_models_satisfy_the_protocol(
    onnx_lstm: tuple[OnnxStepModel, NumpyLstmModel],
) -> None:
    assert isinstance(onnx_lstm[0], StepModel)
    assert isinstance(onnx_lstm[1], StepModel)
    assert isinstance(ElmanLagModel(), StepModel)


def test_session_defaults_suit_a_shared_cpu(
    onnx_lstm: tuple[OnnxStepModel, NumpyLstmModel],
) -> None:
    options = onnx_lstm[0].session_options
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_threads_and_spinning_are_configurable() -> None:
    card, proto, _ = build_onnx_lstm(hidden=4, layers=1)
    model = OnnxStepModel(card, proto.SerializeToString(), intra_op_threads=2, spinning=True)
    options = model.session_options
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(ModelContractError):
        OnnxStepModel(card, proto.SerializeToString(), intra_op_threads=0)


def test_unloadable_bytes_raise_a_contract_error() -> None:
    card, _, _ = build_onnx_lstm(hidden=4, layers=1)
    with pytest.raises(ModelContractError, match="cannot load"):
        OnnxStepModel(card, b"not an onnx graph")


def test_a_bad_batch_raises_an_inference_error(
    onnx_lstm: tuple[OnnxStepModel, NumpyLstmModel],
) -> None:
    model, _ = onnx_lstm
    x = np.zeros((2, 1, model.card.n_features + 1), np.float32)
    states = [np.zeros(s.batched_shape(2), np.float32) for s in model.card.states]
    with pytest.raises(InferenceError, match="inference failed"):
        model.step(x, states)
