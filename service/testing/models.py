"""Step models built in code: a numpy Elman model, and an ONNX LSTM with its numpy oracle.

- `ElmanLagModel` is a tiny numpy `StepModel` with two state tensors on different batch axes
  (an Elman ``h`` as ``[1, batch, hidden]`` and a lag buffer as ``[batch, lags, features]``).
- `build_onnx_lstm` builds a stacked LSTM step model with `onnx.helper` (no torch) honouring
  the step-model contract, together with `NumpyLstmModel`, a numpy oracle with the same
  weights; its card carries golden vectors computed by the oracle, as an export's would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.golden import GoldenTensor, GoldenVectors, StepFunction
from service.modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, StateSpec
from service.testing.cards import make_card

__all__ = ["ElmanLagModel", "NumpyLstmModel", "build_onnx_lstm"]

_OPSET = 17


# -- a numpy step model -------------------------------------------------------------------


class ElmanLagModel:
    """An Elman RNN that also sees a buffer of its last `lags` inputs.

    ``h_t = tanh(x_t W + h_{t-1} U + lags_t L + b)``, ``y_t = h_t V + c``. Its states sit on
    different batch axes (``h``: 1, ``lags``: 0), which exercises the state store's layouts.
    """

    def __init__(
        self,
        *,
        hidden: int = 8,
        lags: int = 3,
        features: Sequence[str] = ("temp", "load"),
        targets: Sequence[str] = ("temp",),
        horizon: int = 3,
        period: float = 60.0,
        warmup_steps: int = 2,
        seed: int = 0,
    ) -> None:
        nf, nt = len(features), len(targets)
        self.card = make_card(
            kind="rnn",
            features=features,
            targets=targets,
            horizon=horizon,
            period=period,
            warmup_steps=warmup_steps,
            seed=seed,
            states=[
                StateSpec(name="h", shape=(1, hidden), batch_axis=1, init=0.0),
                StateSpec(name="lags", shape=(lags, nf), batch_axis=0, init=0.0),
            ],
        )
        rng = np.random.default_rng(seed)
        self.w = rng.normal(0, 0.6, (nf, hidden)).astype(np.float32)
        self.u = rng.normal(0, 0.4, (hidden, hidden)).astype(np.float32)
        self.l = rng.normal(0, 0.3, (lags * nf, hidden)).astype(np.float32)
        self.b = rng.normal(0, 0.1, hidden).astype(np.float32)
        self.v = rng.normal(0, 0.5, (hidden, horizon * nt)).astype(np.float32)
        self.c = rng.normal(0, 0.1, horizon * nt).astype(np.float32)
        self.calls = 0

    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run `x` (``[batch, time, n_features]``, scaled) from `states`; count the call."""
        self.calls += 1
        h, lags = np.asarray(states[0])[0], np.asarray(states[1])
        batch, steps, _ = x.shape
        ys = []
        for t in range(steps):
            lags = np.concatenate([lags[:, 1:], x[:, t : t + 1]], axis=1)
            h = np.tanh(x[:, t] @ self.w + h @ self.u + lags.reshape(batch, -1) @ self.l + self.b)
            ys.append(h @ self.v + self.c)
        y = np.stack(ys, axis=1).reshape(batch, steps, self.card.horizon, self.card.n_targets)
        return y.astype(np.float32), [h[None].astype(np.float32), lags.astype(np.float32)]


# -- an ONNX LSTM step model and its numpy oracle -----------------------------------------


@dataclass(frozen=True)
class _LstmWeights:
    w: list[np.ndarray]  # per layer [4H, in], gates in ONNX order i, o, f, c
    r: list[np.ndarray]  # per layer [4H, H]
    b: list[np.ndarray]  # per layer [8H]: input biases then recurrent biases
    head_w: np.ndarray  # [H, horizon * n_targets]
    head_b: np.ndarray  # [horizon * n_targets]


def _sigmoid(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-v))
    return out


class NumpyLstmModel:
    """The numpy oracle of `build_onnx_lstm`'s graph (same weights, same contract)."""

    def __init__(self, card: ModelCard, weights: _LstmWeights) -> None:
        self.card = card
        self.weights = weights

    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run `x` (``[batch, time, n_features]``, scaled) from `states` (``h``, ``c``)."""
        wts = self.weights
        h = np.array(states[0], np.float64)
        c = np.array(states[1], np.float64)
        batch, steps, _ = x.shape
        hidden = h.shape[2]
        layer_in = x.astype(np.float64)
        for layer in range(h.shape[0]):
            outs = []
            hl, cl = h[layer], c[layer]
            for t in range(steps):
                gates = (
                    layer_in[:, t] @ wts.w[layer].T
                    + hl @ wts.r[layer].T
                    + wts.b[layer][: 4 * hidden]
                    + wts.b[layer][4 * hidden :]
                )
                i, o, f, g = np.split(gates, 4, axis=1)
                cl = _sigmoid(f) * cl + _sigmoid(i) * np.tanh(g)
                hl = _sigmoid(o) * np.tanh(cl)
                outs.append(hl)
            h[layer], c[layer] = hl, cl
            layer_in = np.stack(outs, axis=1)
        y = layer_in @ wts.head_w + wts.head_b
        y = y.reshape(batch, steps, self.card.horizon, self.card.n_targets)
        return y.astype(np.float32), [h.astype(np.float32), c.astype(np.float32)]


def build_onnx_lstm(
    *,
    hidden: int = 16,
    layers: int = 2,
    features: Sequence[str] = ("temp", "load"),
    targets: Sequence[str] = ("temp",),
    horizon: int = 3,
    period: float = 60.0,
    warmup_steps: int = 2,
    name: str = "lstm-test",
    version: str = "1",
    seed: int = 0,
    feature_ranges: Sequence[tuple[float, float]] | None = None,
) -> tuple[ModelCard, onnx.ModelProto, NumpyLstmModel]:
    """A stacked-LSTM step model (card embedded) and its numpy oracle.

    States ``h`` and ``c`` are ``[layers, batch, hidden]``; batch and time are dynamic. The
    card carries golden vectors computed by the oracle (``reference="numpy oracle"``) where
    an exported card carries those computed by torch, and `feature_ranges` (each feature's
    training (min, max), in card order) when given.
    """
    nf, nt = len(features), len(targets)
    card = make_card(
        name=name,
        version=version,
        kind="lstm",
        features=features,
        targets=targets,
        horizon=horizon,
        period=period,
        warmup_steps=warmup_steps,
        seed=seed,
        feature_ranges=feature_ranges,
        states=[
            StateSpec(name="h", shape=(layers, hidden), batch_axis=1, init=0.0),
            StateSpec(name="c", shape=(layers, hidden), batch_axis=1, init=0.0),
        ],
    )
    weights = _lstm_weights(np.random.default_rng(seed), hidden, layers, nf, horizon * nt)
    nodes, init = _lstm_nodes(weights, hidden, horizon, nt)
    model = _step_model(f"{name}-step", nodes, init, nf, layers, hidden, horizon, nt)
    golden = _oracle_golden(card, NumpyLstmModel(card, weights).step)
    card = ModelCard.model_validate(card.model_dump() | {"golden": golden.model_dump()})
    card.embed(model)
    return card, model, NumpyLstmModel(card, weights)


def _lstm_weights(
    rng: np.random.Generator, hidden: int, layers: int, n_features: int, n_out: int
) -> _LstmWeights:
    """Random weights of `layers` LSTM layers of `hidden` units and a linear head to `n_out`
    outputs, drawn from `rng` in a fixed order (every layer's ``W``, then ``R``, then ``B``,
    then the head)."""
    scale = 1.0 / np.sqrt(hidden)
    return _LstmWeights(
        w=[
            rng.uniform(-scale, scale, (4 * hidden, hidden if k else n_features)).astype(np.float32)
            for k in range(layers)
        ],
        r=[
            rng.uniform(-scale, scale, (4 * hidden, hidden)).astype(np.float32)
            for _ in range(layers)
        ],
        b=[rng.uniform(-scale, scale, 8 * hidden).astype(np.float32) for _ in range(layers)],
        head_w=rng.normal(0, scale, (hidden, n_out)).astype(np.float32),
        head_b=rng.normal(0, 0.1, n_out).astype(np.float32),
    )


def _lstm_nodes(
    weights: _LstmWeights, hidden: int, horizon: int, n_targets: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The step graph's nodes and initializers: the input to time-major and the states split
    per layer, one LSTM node per layer, then the states joined and the linear head."""
    layers = len(weights.w)
    init = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.ones(layers, np.int64), "ones"),
        numpy_helper.from_array(np.array([0, 0, horizon, n_targets], np.int64), "y_shape"),
        numpy_helper.from_array(weights.head_w, "head_w"),
        numpy_helper.from_array(weights.head_b, "head_b"),
    ]
    nodes = [
        helper.make_node("Transpose", [INPUT_NAME], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node("Split", ["h", "ones"], [f"h{k}" for k in range(layers)], axis=0),
        helper.make_node("Split", ["c", "ones"], [f"c{k}" for k in range(layers)], axis=0),
    ]
    layer_in = "x_tbf"
    for k in range(layers):
        layer_nodes, layer_init = _lstm_layer(weights, k, hidden, layer_in)
        nodes += layer_nodes
        init += layer_init
        layer_in = f"out{k}"
    nodes += [
        helper.make_node("Concat", [f"Yh{k}" for k in range(layers)], ["h_out"], axis=0),
        helper.make_node("Concat", [f"Yc{k}" for k in range(layers)], ["c_out"], axis=0),
        helper.make_node("Transpose", [layer_in], ["out_bth"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["out_bth", "head_w"], ["head_mm"]),
        helper.make_node("Add", ["head_mm", "head_b"], ["head"]),
        helper.make_node("Reshape", ["head", "y_shape"], [OUTPUT_NAME]),
    ]
    return nodes, init


def _lstm_layer(
    weights: _LstmWeights, k: int, hidden: int, layer_in: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Layer `k`: its weights ``W{k}``, ``R{k}``, ``B{k}``, and an LSTM node over `layer_in`
    from states ``h{k}``, ``c{k}`` whose sequence output, without its direction axis, is
    ``out{k}``."""
    init = [
        numpy_helper.from_array(weights.w[k][None], f"W{k}"),
        numpy_helper.from_array(weights.r[k][None], f"R{k}"),
        numpy_helper.from_array(weights.b[k][None], f"B{k}"),
    ]
    nodes = [
        helper.make_node(
            "LSTM",
            [layer_in, f"W{k}", f"R{k}", f"B{k}", "", f"h{k}", f"c{k}"],
            [f"Y{k}", f"Yh{k}", f"Yc{k}"],
            hidden_size=hidden,
        ),
        helper.make_node("Squeeze", [f"Y{k}", "axis1"], [f"out{k}"]),
    ]
    return nodes, init


def _step_model(
    graph_name: str,
    nodes: list[onnx.NodeProto],
    init: list[onnx.TensorProto],
    n_features: int,
    layers: int,
    hidden: int,
    horizon: int,
    n_targets: int,
) -> onnx.ModelProto:
    """The checked ONNX model of the step contract: inputs ``x``, ``h``, ``c`` and outputs
    ``y``, ``h_out``, ``c_out``, with batch and time dynamic."""
    state_type: list[str | int | None] = [layers, "batch", hidden]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["batch", "time", n_features]
            ),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, state_type),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, state_type),
        ],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["batch", "time", horizon, n_targets]
            ),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, state_type),
            helper.make_tensor_value_info("c_out", TensorProto.FLOAT, state_type),
        ],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _oracle_golden(
    card: ModelCard, step: StepFunction, *, batch: int = 2, steps: int = 6
) -> GoldenVectors:
    """Golden vectors with `step` as the reference: raw readings around the scaler's mean;
    row 0 starts from the card's initial state, the others from a random one (as a stream
    that has seen readings before)."""
    rng = np.random.default_rng(0)
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
        tolerance=1e-4,
        reference="numpy oracle",
    )
