"""A small model written into a registry folder, for tests that run the whole service.

`add_sensor_lstm` builds an LSTM over the simulator's features (`service.simulate`) with
`build_onnx_lstm`, adds it to the registry at a folder and returns a `RegisteredLstm`: the
folder, the card and the numpy oracle that says what the service should forecast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.modelcard import ModelCard
from service.registry import Registry
from service.simulate import DEFAULT_PERIOD, SENSOR_FEATURES
from service.testing.models import NumpyLstmModel, build_onnx_lstm

__all__ = ["SENSOR_RANGES", "RegisteredLstm", "add_sensor_lstm"]

#: Training ranges (min, max) of the simulator's features, in `SENSOR_FEATURES` order, for a
#: card that records them.
SENSOR_RANGES: list[tuple[float, float]] = [(5.0, 40.0), (95.0, 108.0), (0.0, 2.0)]


@dataclass(frozen=True)
class RegisteredLstm:
    """An LSTM step model in the registry at `registry`, its card and its numpy oracle."""

    registry: Path
    card: ModelCard
    oracle: NumpyLstmModel

    def expected(self, rows: np.ndarray) -> np.ndarray:
        """Forecasts in original units ``[T, horizon, n_targets]`` for one stream's raw
        feature rows ``[T, n_features]``, stepping from the initial state."""
        card = self.card
        x = card.scaler.features.transform(rows.astype(np.float64))[None]  # [1, T, F]
        states = [np.full(s.batched_shape(1), s.init, np.float32) for s in card.states]
        y, _ = self.oracle.step(x.astype(np.float32), states)
        return np.asarray(card.scaler.targets.inverse(y[0].astype(np.float64)))


def add_sensor_lstm(
    root: Path,
    *,
    name: str = "lstm-it",
    version: str = "1",
    seed: int = 0,
    horizon: int = 3,
    hidden: int = 8,
    warmup_steps: int = 2,
    period: float = DEFAULT_PERIOD,
    feature_ranges: Sequence[tuple[float, float]] | None = None,
) -> RegisteredLstm:
    """Add a 2-layer LSTM forecasting ``temp`` from `SENSOR_FEATURES` to the registry at
    `root` (created if missing), as `version` of `name`, its weights drawn with `seed`
    (another seed: a retrained model of the same shapes).

    `period` is in seconds (the simulator's by default); the card records `feature_ranges`
    as the features' training ranges when given (`SENSOR_RANGES` fits the simulator).
    Raises `RegistryError` when that version is already there.
    """
    card, model, oracle = build_onnx_lstm(
        features=SENSOR_FEATURES,
        targets=("temp",),
        horizon=horizon,
        period=period,
        hidden=hidden,
        warmup_steps=warmup_steps,
        name=name,
        version=version,
        seed=seed,
        feature_ranges=feature_ranges,
    )
    Registry(root).add(card, model)
    return RegisteredLstm(root, card, oracle)
