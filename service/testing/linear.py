"""The smallest step model honouring the contract, for the card and registry tests.

`build_onnx_linear` returns its card and graph as an export would leave them, without golden
vectors (so the registry loads it unchecked); `linear_graph` builds the graph alone, with
arguments that break the contract one way at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.modelcard import ModelCard, Provenance, Scaler, ScalerSet, StateSpec
from service.testing.cards import make_card

__all__ = ["build_onnx_linear", "linear_graph"]

_FEATURES = ("temp", "pressure")
_TARGETS = ("temp",)
_HORIZON = 3
_HIDDEN = 4
_OPSET = 17


def build_onnx_linear(
    *,
    name: str = "tiny",
    version: str = "1",
    description: str = "",
    feature_ranges: Sequence[tuple[float, float]] | None = None,
) -> tuple[ModelCard, onnx.ModelProto]:
    """A linear step model over ``temp`` and ``pressure``: its card and `linear_graph()`.

    The card forecasts ``temp`` 3 steps of 60 s ahead from one state ``h`` of
    ``[1, batch, 4]``, and carries what an export records (metrics, parity error, provenance)
    but no golden vectors; `feature_ranges` are the features' training (min, max) when given.
    """
    card = make_card(
        name=name,
        version=version,
        description=description,
        features=_FEATURES,
        targets=_TARGETS,
        horizon=_HORIZON,
        period=60.0,
        scaler=ScalerSet(
            features=Scaler(mean=[20.0, 1.0], std=[2.0, 0.5]),
            targets=Scaler(mean=[20.0], std=[2.0]),
        ),
        states=[StateSpec(name="h", shape=(1, _HIDDEN), batch_axis=1)],
        warmup_steps=5,
        provenance=Provenance(
            data="test",
            data_fingerprint="0" * 64,
            splits={"train_end": 100.0},
            config={"hidden": _HIDDEN},
            seed=0,
            packages={"numpy": np.__version__},
            created="2026-01-01T00:00:00Z",
        ),
        metrics={"test.arv": 0.5},
        parity_error=0.0,
        feature_ranges=feature_ranges,
    )
    return card, linear_graph()


def linear_graph(
    *,
    n_features: int = len(_FEATURES),
    horizon: int = _HORIZON,
    n_targets: int = len(_TARGETS),
    state_name: str = "h",
    fixed_batch: bool = False,
) -> onnx.ModelProto:
    """``y = reshape(x @ W)`` and ``<state>_out = <state> + 1``, the state ``[1, batch, 4]``.

    With the defaults it honours `build_onnx_linear`'s card; each argument changed breaks
    the contract one way (another width, horizon or state name, or a batch fixed at 1).
    The values are simple: ``W`` is ``arange`` reshaped to ``[n_features, horizon * n_targets]``.
    """
    batch: int | str = 1 if fixed_batch else "batch"
    w = numpy_helper.from_array(
        np.arange(n_features * horizon * n_targets, dtype=np.float32).reshape(
            n_features, horizon * n_targets
        ),
        "W",
    )
    tail = numpy_helper.from_array(np.array([horizon, n_targets], np.int64), "tail")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Shape", ["x"], ["xs"], start=0, end=2),
        helper.make_node("Concat", ["xs", "tail"], ["yshape"], axis=0),
        helper.make_node("Reshape", ["xw", "yshape"], ["y"]),
        helper.make_node("Add", [state_name, "one"], [f"{state_name}_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, "time", n_features]),
            helper.make_tensor_value_info(state_name, TensorProto.FLOAT, [1, batch, _HIDDEN]),
        ],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [batch, "time", horizon, n_targets]
            ),
            helper.make_tensor_value_info(
                f"{state_name}_out", TensorProto.FLOAT, [1, batch, _HIDDEN]
            ),
        ],
        [w, tail, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
