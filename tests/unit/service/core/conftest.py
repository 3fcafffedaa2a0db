"""Fixtures for the engine core tests: tiny models built in code."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.model import OnnxStepModel
from service.registry import Registry
from service.testing import ElmanLagModel, NumpyLstmModel, build_onnx_lstm


@pytest.fixture
def elman() -> ElmanLagModel:
    return ElmanLagModel(hidden=8, lags=3, horizon=3, warmup_steps=2, seed=1)


@pytest.fixture(scope="module")
def onnx_lstm(tmp_path_factory: pytest.TempPathFactory) -> tuple[OnnxStepModel, NumpyLstmModel]:
    """The onnx.helper LSTM served by onnxruntime, loaded through the registry, and its oracle."""
    card, proto, oracle = build_onnx_lstm(hidden=16, layers=2, horizon=4, seed=3)
    root: Path = tmp_path_factory.mktemp("registry")
    registry = Registry(root)
    registry.add(card, proto)
    return OnnxStepModel.from_loaded(registry.load(card.name)), oracle
