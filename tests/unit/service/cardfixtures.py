"""A minimal card and ONNX step model built in code, for the card and registry tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.modelcard import ModelCard

FEATURES = ["temp", "pressure"]
TARGETS = ["temp"]
HORIZON = 3
HIDDEN = 4


def make_card(**overrides: Any) -> ModelCard:
    fields: dict[str, Any] = {
        "name": "tiny",
        "version": "1",
        "kind": "rnn",
        "features": FEATURES,
        "targets": TARGETS,
        "horizon": HORIZON,
        "period": 60.0,
        "scaler": {
            "features": {"mean": [20.0, 1.0], "std": [2.0, 0.5]},
            "targets": {"mean": [20.0], "std": [2.0]},
        },
        "states": [{"name": "h", "shape": [1, HIDDEN], "batch_axis": 1}],
        "warmup_steps": 5,
        "provenance": {
            "data": "test",
            "data_fingerprint": "0" * 64,
            "splits": {"train_end": 100.0},
            "config": {"hidden": HIDDEN},
            "seed": 0,
            "packages": {"numpy": np.__version__},
            "created": "2026-01-01T00:00:00Z",
        },
        "metrics": {"test.arv": 0.5},
        "parity_error": 0.0,
    }
    fields.update(overrides)
    return ModelCard.model_validate(fields)


def make_graph(
    n_features: int = len(FEATURES),
    horizon: int = HORIZON,
    n_targets: int = len(TARGETS),
    state_name: str = "h",
    fixed_batch: bool = False,
) -> onnx.ModelProto:
    """y = reshape(x @ W) and h_out = h + 1: shapes honour the contract; values are simple."""
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
            helper.make_tensor_value_info(state_name, TensorProto.FLOAT, [1, batch, HIDDEN]),
        ],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [batch, "time", horizon, n_targets]
            ),
            helper.make_tensor_value_info(
                f"{state_name}_out", TensorProto.FLOAT, [1, batch, HIDDEN]
            ),
        ],
        [w, tail, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
