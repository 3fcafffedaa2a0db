"""The training configuration: saved in every card's provenance so a model can be rebuilt."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.errors import TrainingConfigError
from training.models import KINDS, ModelConfig

__all__ = ["TrainConfig", "load_config"]


class TrainConfig(BaseModel):
    """Data, split, architecture and optimiser settings of one training run.

    Split boundaries are epoch seconds or ISO-8601 strings; a forecast belongs to the part
    its *target* time falls in. When ``val_start`` / ``test_start`` are left out they are
    placed at 70% and 85% of the time range and recorded in the card.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # model identity
    name: str = "model"
    version: str = "1"
    # data
    data: str = "synthetic"
    features: list[str] | None = None
    targets: list[str] | None = None
    sort: bool = False
    dedupe: str | None = None
    fill: str | None = None
    ts_unit: Literal["s", "ms", "us", "ns", "auto"] = Field(
        default="s",
        description="unit of a numeric ts column (auto: detect it); the model works in seconds",
    )
    n_streams: int = Field(default=200, ge=1)
    n_steps: int = Field(default=2000, ge=2)
    data_seed: int = 0
    # split
    val_start: str | float | None = None
    test_start: str | float | None = None
    test_end: str | float | None = None
    extra_tests: dict[str, tuple[str | float, str | float]] = Field(default_factory=dict)
    variance_until: str | float | None = None
    # model
    kind: str = "lstm"
    horizon: int = Field(default=1, ge=1)
    hidden: int = Field(default=64, ge=1)
    layers: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lags: list[int] = Field(default_factory=lambda: [1, 2, 3, 6, 12])
    skip: bool = Field(default=False, description="a linear path from the inputs to the head")
    # optimisation
    chunk: int = Field(default=32, ge=1, description="truncated BPTT length in steps")
    burn_in: int = Field(
        default=10, ge=0, description="first steps of each stream left out of the loss"
    )
    batch_size: int = Field(default=32, ge=1, description="streams carried side by side")
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    clip_norm: float = Field(default=1.0, gt=0)
    loss_weights: Literal["equal", "persistence"] = Field(
        default="equal",
        description="equal: plain MSE in scaled units; persistence: each horizon step and "
        "target's squared error divided by persistence's mean squared error there on the "
        "training part, so the loss is the model's MSE relative to persistence",
    )
    lr_decay: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="multiply the learning rate by this after every epoch that does not "
        "improve the validation loss (1: constant)",
    )
    max_epochs: int = Field(default=50, ge=1)
    patience: int = Field(default=8, ge=1)
    refit_epochs: int = Field(
        default=0,
        ge=0,
        description="after early stopping, retrain on train+val for this many epochs",
    )
    seed: int = 0
    ar_order: int = Field(default=12, ge=1, description="order of the AR baseline")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "tdnn" and (not self.lags or min(self.lags) < 1):
            raise ValueError(f"lags must be integers >= 1, got {self.lags}")
        return self

    def model_config_for(self, n_features: int, n_targets: int) -> ModelConfig:
        return ModelConfig(
            kind=self.kind,
            n_features=n_features,
            n_targets=n_targets,
            horizon=self.horizon,
            hidden=self.hidden,
            layers=self.layers,
            dropout=self.dropout,
            lags=tuple(self.lags),
            skip=self.skip,
        )


def load_config(values: dict[str, Any]) -> TrainConfig:
    """Build a config, turning validation errors into one `TrainingConfigError` line."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise TrainingConfigError(f"bad training option {where}: {err['msg']}") from exc
