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

The head forecasts either the targets themselves (``head="level"``) or their change from the
current reading (``head="delta"``): then ``y[b, t, k, j]`` is the current value of target
``j``, read from the input and carried from the feature scale into the target scale, plus the
head's output. The carry is two constants per target baked into the module, so the exported
graph computes the sum and ``y`` keeps the contract's units; with a zero change the model is
persistence. A network starts near zero output, so a delta model starts as persistence
instead of as the mean.
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

import torch
from torch import Tensor, nn

from service.modelcard import ScalerSet, StateSpec
from training.config import CellKind, HeadKind
from training.errors import TrainingConfigError

__all__ = ["HEADS", "KINDS", "Forecaster", "ModelConfig", "build_model", "last_value_map"]

# Named in the torch-free config, so the CLI lists them without importing torch.
KINDS: tuple[str, ...] = get_args(CellKind)
HEADS: tuple[str, ...] = get_args(HeadKind)


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
    head: HeadKind = "level"
    # head "delta": per target, the index of the feature holding its current value, and the
    # scale and shift taking that feature's scaled value to the target's scaled value
    # (`last_value_map`).
    last_value: tuple[tuple[int, float, float], ...] = ()

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
        if self.head not in HEADS:
            raise TrainingConfigError(
                f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}"
            )
        wanted = self.n_targets if self.head == "delta" else 0
        if len(self.last_value) != wanted:
            raise TrainingConfigError(
                f"head {self.head!r} needs {wanted} last-value entries, got {len(self.last_value)}"
            )
        if any(not 0 <= i < self.n_features for i, _, _ in self.last_value):
            raise TrainingConfigError(f"last-value feature index out of range: {self.last_value}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lags"] = list(self.lags)
        out["last_value"] = [list(entry) for entry in self.last_value]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(
            **{
                **data,
                "lags": tuple(data.get("lags", (1, 2, 3, 6, 12))),
                "last_value": tuple(
                    (int(i), float(a), float(b)) for i, a, b in data.get("last_value", ())
                ),
            }
        )


def last_value_map(
    features: list[str], targets: list[str], scaler: ScalerSet
) -> tuple[tuple[int, float, float], ...]:
    """Per target: the feature holding its current value, and the scale and shift taking
    that feature's scaled value to the target's scaled value,
    ``((v_f * std_f + mean_f) - mean_t) / std_t = v_f * scale + shift``.

    Raises `TrainingConfigError` when a target is not a feature: it has no current value.
    """
    out = []
    for j, name in enumerate(targets):
        if name not in features:
            raise TrainingConfigError(
                f"head 'delta' needs each target's current value, but target {name!r} is not "
                "a feature; add it to --features or use --head level"
            )
        i = features.index(name)
        mean_f, std_f = scaler.features.mean[i], scaler.features.std[i]
        mean_t, std_t = scaler.targets.mean[j], scaler.targets.std[j]
        out.append((i, std_f / std_t, (mean_f - mean_t) / std_t))
    return tuple(out)


class Forecaster(nn.Module, abc.ABC):
    """Base class: state specs for the card, initial states, and the step signature."""

    config: ModelConfig

    def _set_config(self, config: ModelConfig) -> None:
        """Keep `config`, with the delta head's constants as buffers (empty for a level head)."""
        self.config = config
        # Constants of the delta head, not weights: derived from the config, so they stay out
        # of the state dict, and exported into the graph as initialisers.
        entries = config.last_value
        self.last_index: Tensor
        self.last_scale: Tensor
        self.last_shift: Tensor
        for name, values, dtype in (
            ("last_index", [i for i, _, _ in entries], torch.long),
            ("last_scale", [a for _, a, _ in entries], torch.float32),
            ("last_shift", [b for _, _, b in entries], torch.float32),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the cpu for a model without any)."""
        first = next(itertools.chain(self.parameters(), self.buffers()), None)
        return torch.device("cpu") if first is None else first.device

    @abc.abstractmethod
    def state_specs(self) -> list[StateSpec]:
        """The card's state tensors, in the step signature's order."""

    def init_states(
        self, batch: int, device: torch.device | str | None = None
    ) -> tuple[Tensor, ...]:
        """Initial states for `batch` streams (zeros: the scaled mean for the lag buffer)."""
        return tuple(
            torch.full(spec.batched_shape(batch), spec.init, dtype=torch.float32, device=device)
            for spec in self.state_specs()
        )

    def _with_skip(self, hidden: Tensor, inputs: Tensor) -> Tensor:
        return torch.cat([hidden, inputs], dim=-1) if self.config.skip else hidden

    def _head_output(self, head: nn.Linear, features: Tensor, x: Tensor) -> Tensor:
        """The head's forecasts ``[B, T, horizon, n_targets]``; with the delta head, added
        to each target's current value in `x` (the inputs ``[B, T, F]``), in target scale."""
        y: Tensor = head(features)
        y = y.reshape(y.shape[0], y.shape[1], self.config.horizon, self.config.n_targets)
        if self.config.head == "delta":
            last = x[..., self.last_index] * self.last_scale + self.last_shift
            y = y + last.unsqueeze(2)
        return y


class RecurrentForecaster(Forecaster):
    """Stacked LSTM, GRU or Elman RNN with dropout between layers and a linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._set_config(config)
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
            return self._head_output(self.head, self._with_skip(out, x), x), h, c
        out, h = self.rnn(x, states[0])
        return self._head_output(self.head, self._with_skip(out, x), x), h


class TimeDelayForecaster(Forecaster):
    """An MLP over the inputs at chosen lags; lag 1 is the current reading.

    The lag buffer holds the last ``max_lag`` inputs. Each lag is a fixed slice of the
    buffer followed by the new inputs, so the graph needs no gather and stays export-friendly.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._set_config(config)
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
        return self._head_output(self.head, hidden, x), seq[:, -m:]


def build_model(config: ModelConfig) -> Forecaster:
    if config.kind == "tdnn":
        return TimeDelayForecaster(config)
    return RecurrentForecaster(config)
