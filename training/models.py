"""The forecasting cells, all with the step-model signature of the card contract.

``forward(x[B, T, F], *states) -> (y[B, T, horizon, n_targets], *states_out)``

- ``lstm``: states ``h``, ``c`` as ``[layers, B, hidden]``;
- ``gru`` and ``rnn`` (Elman, tanh): state ``h`` as ``[layers, B, hidden]``;
- ``tdnn``: a time-delay MLP on chosen lags; its state is its lag buffer ``lags`` as
  ``[B, max_lag, F]`` (the last ``max_lag`` inputs, oldest first).

Every cell ends in a direct multi-horizon head: one linear layer predicts all ``horizon``
steps of every target at once, so nothing is fed back and the graph stays one step deep.
With ``skip`` the head also sees the raw inputs (the current reading, or the lag taps of
the tdnn): a linear autoregressive path beside the nonlinear one, which lets the model
extrapolate beyond the range of the bounded hidden units.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

import torch
from torch import Tensor, nn

from service.modelcard import StateSpec
from training.config import CellKind
from training.errors import TrainingConfigError

__all__ = ["KINDS", "Forecaster", "ModelConfig", "build_model"]

# Named in the torch-free config, so the CLI lists them without importing torch.
KINDS: tuple[str, ...] = get_args(CellKind)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a forecaster's architecture."""

    kind: str
    n_features: int
    n_targets: int
    horizon: int
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.0
    lags: tuple[int, ...] = field(default=(1, 2, 3, 6, 12))
    skip: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TrainingConfigError(
                f"unknown cell kind {self.kind!r}; choose one of {', '.join(KINDS)}"
            )
        if min(self.n_features, self.n_targets, self.horizon, self.hidden, self.layers) < 1:
            raise TrainingConfigError(
                "n_features, n_targets, horizon, hidden and layers must all be >= 1"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise TrainingConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.kind == "tdnn" and (not self.lags or min(self.lags) < 1):
            raise TrainingConfigError(f"tdnn lags must be integers >= 1, got {self.lags}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lags"] = list(self.lags)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**{**data, "lags": tuple(data.get("lags", (1, 2, 3, 6, 12)))})


class Forecaster(nn.Module, abc.ABC):
    """Base class: state specs for the card, initial states, and the step signature."""

    config: ModelConfig

    @abc.abstractmethod
    def state_specs(self) -> list[StateSpec]:
        """The card's state tensors, in the step signature's order."""

    def init_states(self, batch: int) -> tuple[Tensor, ...]:
        """Initial states for `batch` streams (zeros: the scaled mean for the lag buffer)."""
        return tuple(
            torch.full(spec.batched_shape(batch), spec.init, dtype=torch.float32)
            for spec in self.state_specs()
        )

    def _with_skip(self, hidden: Tensor, inputs: Tensor) -> Tensor:
        return torch.cat([hidden, inputs], dim=-1) if self.config.skip else hidden

    def _head_output(self, head: nn.Linear, features: Tensor) -> Tensor:
        y: Tensor = head(features)
        return y.reshape(y.shape[0], y.shape[1], self.config.horizon, self.config.n_targets)


class RecurrentForecaster(Forecaster):
    """Stacked LSTM, GRU or Elman RNN with dropout between layers and a linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[config.kind]
        self.rnn = cell(
            input_size=config.n_features,
            hidden_size=config.hidden,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        width = config.hidden + (config.n_features if config.skip else 0)
        self.head = nn.Linear(width, config.horizon * config.n_targets)

    def state_specs(self) -> list[StateSpec]:
        shape = (self.config.layers, self.config.hidden)
        names = ("h", "c") if self.config.kind == "lstm" else ("h",)
        return [StateSpec(name=n, shape=shape, batch_axis=1) for n in names]

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        if self.config.kind == "lstm":
            out, (h, c) = self.rnn(x, (states[0], states[1]))
            return self._head_output(self.head, self._with_skip(out, x)), h, c
        out, h = self.rnn(x, states[0])
        return self._head_output(self.head, self._with_skip(out, x)), h


class TimeDelayForecaster(Forecaster):
    """An MLP over the inputs at chosen lags; lag 1 is the current reading.

    The lag buffer holds the last ``max_lag`` inputs. Each lag is a fixed slice of the
    buffer followed by the new inputs, so the graph needs no gather and stays export-friendly.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.lags = tuple(sorted(set(config.lags)))
        self.max_lag = max(self.lags)
        layers: list[nn.Module] = []
        width = len(self.lags) * config.n_features
        for i in range(config.layers):
            if i > 0 and config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            layers += [nn.Linear(width, config.hidden), nn.Tanh()]
            width = config.hidden
        self.mlp = nn.Sequential(*layers)
        width = config.hidden + (len(self.lags) * config.n_features if config.skip else 0)
        self.head = nn.Linear(width, config.horizon * config.n_targets)

    def state_specs(self) -> list[StateSpec]:
        return [StateSpec(name="lags", shape=(self.max_lag, self.config.n_features), batch_axis=0)]

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        seq = torch.cat([states[0], x], dim=1)  # [B, max_lag + T, F]
        m = self.max_lag
        # Input at step t sits at m + t; lag k is m + t - k + 1.
        taps = [seq[:, m - k + 1 :] if k == 1 else seq[:, m - k + 1 : 1 - k] for k in self.lags]
        inputs = torch.cat(taps, dim=-1)
        hidden = self._with_skip(self.mlp(inputs), inputs)
        return self._head_output(self.head, hidden), seq[:, -m:]


def build_model(config: ModelConfig) -> Forecaster:
    if config.kind == "tdnn":
        return TimeDelayForecaster(config)
    return RecurrentForecaster(config)
