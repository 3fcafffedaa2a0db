"""Golden vectors for the models built in code: the numpy oracle plays the trainer's torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from service.modelcard import GoldenTensor, GoldenVectors, ModelCard, StepFunction
from service.testing import NumpyLstmModel, build_onnx_lstm


def golden_for(
    card: ModelCard,
    step: StepFunction,
    *,
    batch: int = 2,
    steps: int = 6,
    seed: int = 0,
    tolerance: float = 1e-4,
) -> GoldenVectors:
    """Raw readings around the scaler's mean; row 0 starts from the card's initial state,
    the others from a random one (as a stream that has seen readings before)."""
    rng = np.random.default_rng(seed)
    scaled = rng.standard_normal((batch, steps, card.n_features)).astype(np.float32)
    x = np.asarray(card.scaler.features.inverse(scaled), np.float32)
    states = []
    for spec in card.states:
        state = np.full(spec.batched_shape(batch), spec.init, np.float32)
        rows = [slice(None)] * state.ndim
        rows[spec.batch_axis] = slice(1, None)
        state[tuple(rows)] += 0.3 * rng.standard_normal(state[tuple(rows)].shape).astype(np.float32)
        states.append(state)
    y, out = step(np.asarray(card.scaler.features.transform(x), np.float32), states)
    mean = np.asarray(card.scaler.targets.mean, np.float64)
    std = np.asarray(card.scaler.targets.std, np.float64)
    return GoldenVectors(
        x=GoldenTensor.of(x),
        states=[GoldenTensor.of(s) for s in states],
        y=GoldenTensor.of(np.asarray(y, np.float64) * std + mean),
        states_out=[GoldenTensor.of(np.asarray(s, np.float32)) for s in out],
        tolerance=tolerance,
        reference="numpy oracle",
    )


def lstm_with_golden(**kwargs: Any) -> tuple[ModelCard, onnx.ModelProto, NumpyLstmModel]:
    """`build_onnx_lstm` with golden vectors from its oracle in the card."""
    card, proto, oracle = build_onnx_lstm(**kwargs)
    golden = golden_for(card, oracle.step)
    card = ModelCard.model_validate(card.model_dump() | {"golden": golden.model_dump()})
    card.embed(proto)
    return card, proto, oracle


def perturb_weight(
    proto: onnx.ModelProto, factor: float = 1.01, name: str | None = None
) -> onnx.ModelProto:
    """A copy with the largest-magnitude entry of initializer `name` (default: the largest
    initializer) scaled by `factor`."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = list(out.graph.initializer)
    if name is None:
        init = max(inits, key=lambda t: numpy_helper.to_array(t).size)
    else:
        init = next(t for t in inits if t.name == name)
    values = numpy_helper.to_array(init).copy()
    values.flat[int(np.argmax(np.abs(values)))] *= factor
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    return out
