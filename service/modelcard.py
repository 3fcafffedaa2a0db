"""The model card: THE contract between training and serving.

A step model is one ONNX graph with this signature, whatever its cell:

- input ``x``: float32 ``[batch, time, n_inputs]``, the card's inputs scaled with its scaler;
- one input per state tensor named in ``card.states`` (LSTM: ``h`` and ``c`` as
  ``[layers, batch, hidden]``; GRU and RNN: ``h``; time-delay MLP: ``lags`` as
  ``[batch, max_lag, n_inputs]``);
- output ``y``: float32 ``[batch, time, horizon, n_targets]``, scaled;
- one output ``<state>_out`` per state input, same shape.

The card is written as ``card.json`` beside ``model.onnx`` and into the ONNX
``metadata_props`` under ``sensorcast.card``. The service learns everything about a model
from its card, so any graph honouring the contract can be served.

The card proves its graph: ``golden`` holds golden vectors (`service.golden`), a few input
sequences from the training data, the states they start from, and the forecasts and final
states the reference model (torch, at export) computed for them. Loading runs the graph on
them and refuses a graph that computes something else. A card without them (an older
export, a graph made by hand) is still valid: the registry loads it unchecked, with a warning.
``feature_ranges`` records each feature's observed (min, max) on the training part.
``head`` says what the network's head learned: ``level`` (the targets) or ``delta`` (their
change from the current reading, added back inside the graph); ``y`` means the same either
way, so the service never reads it. A card without it (older exports) is ``level``.

A reading carries the card's ``features``, raw. The model's inputs are those features with
the ``derived`` encodings applied (`DerivedInputs`): angle features (degrees) become their
sine and cosine, and calendar phases computed from the reading's ``ts`` (time of day, day of
week, day of year) are appended as sine and cosine. ``inputs`` names the columns of ``x``;
the feature scaler is over them. `service.core.inputs` computes them, for training and for
serving alike. A card without ``derived`` has inputs equal to its features.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import ModelCardError, ModelContractError
from service.golden import GoldenVectors

__all__ = [
    "CARD_FILE",
    "CARD_METADATA_KEY",
    "INPUT_NAME",
    "MODEL_FILE",
    "OUTPUT_NAME",
    "SCHEMA_VERSION",
    "DerivedInputs",
    "ModelCard",
    "Provenance",
    "Scaler",
    "ScalerSet",
    "StateSpec",
    "model_fingerprint",
    "validate_onnx",
]

SCHEMA_VERSION = 1
INPUT_NAME = "x"
OUTPUT_NAME = "y"
CARD_METADATA_KEY = "sensorcast.card"
CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DerivedInputs(_Frozen):
    """Inputs the model computes from each reading itself, so readings carry only raw
    features: ``angles`` are features in degrees, each replaced by its sine and cosine (350°
    and 10° are 20° apart, not 340); ``calendar`` are phases of ``ts`` (UTC), each appended
    as a sine and cosine."""

    angles: list[str] = Field(default_factory=list)
    calendar: list[Literal["day", "week", "year"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> DerivedInputs:
        for label, names in (("angles", self.angles), ("calendar", list[str](self.calendar))):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"derived {label} repeat {', '.join(dupes)}")
        return self

    @property
    def empty(self) -> bool:
        """Whether the inputs are the features themselves."""
        return not (self.angles or self.calendar)

    def input_names(self, features: list[str]) -> list[str]:
        """The model's input columns for readings of `features`: each feature, or an angle's
        ``<name>_sin`` and ``<name>_cos`` in its place, then ``<phase>_sin`` and
        ``<phase>_cos`` per calendar phase."""
        names: list[str] = []
        for name in features:
            names.extend((f"{name}_sin", f"{name}_cos") if name in self.angles else (name,))
        for phase in self.calendar:
            names.extend((f"{phase}_sin", f"{phase}_cos"))
        return names


class Scaler(_Frozen):
    """Per-column standardisation ``(v - mean) / std``, fitted on training data only."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> Scaler:
        if len(self.mean) != len(self.std):
            raise ValueError(f"scaler has {len(self.mean)} means but {len(self.std)} stds")
        if not all(math.isfinite(v) for v in self.mean):
            raise ValueError("scaler means must be finite")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError("scaler stds must be finite and > 0")
        return self

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale raw values; the last axis is the column axis."""
        return (values - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        """Undo `transform`; the last axis is the column axis."""
        return scaled * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)


class ScalerSet(_Frozen):
    """The scalers of the model's inputs (`features`) and of its outputs (`targets`)."""

    features: Scaler
    targets: Scaler


class StateSpec(_Frozen):
    """One recurrent state tensor: its ONNX input name and its shape for a single stream.

    ``shape`` leaves out the batch axis; ``batch_axis`` says where the graph puts it
    (1 for ``[layers, batch, hidden]``, 0 for ``[batch, max_lag, n_features]``).
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    shape: tuple[int, ...]
    batch_axis: int = Field(ge=0)
    init: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> StateSpec:
        if any(d <= 0 for d in self.shape):
            raise ValueError(f"state {self.name!r}: every dimension must be > 0, got {self.shape}")
        if self.batch_axis > len(self.shape):
            raise ValueError(
                f"state {self.name!r}: batch_axis {self.batch_axis} is past rank {len(self.shape) + 1}"
            )
        return self

    @property
    def output_name(self) -> str:
        """The name of the graph output holding the state after a step: ``<name>_out``."""
        return f"{self.name}_out"

    def batched_shape(self, batch: int) -> tuple[int, ...]:
        """The tensor's shape for `batch` streams: `shape` with the batch axis put in."""
        dims = list(self.shape)
        dims.insert(self.batch_axis, batch)
        return tuple(dims)

    @property
    def size(self) -> int:
        """Number of float elements one stream's tensor holds."""
        return int(np.prod(self.shape, dtype=np.int64))


class Provenance(_Frozen):
    """How the model was made: enough to rebuild it."""

    data: str
    data_fingerprint: str
    splits: dict[str, Any]
    config: dict[str, Any]
    seed: int
    packages: dict[str, str]
    created: str


class ModelCard(_Frozen):
    """Everything the service needs to know about a step model."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=_NAME)
    version: str = Field(pattern=_NAME)
    kind: str
    head: Literal["level", "delta"] = "level"
    description: str = ""
    features: list[str] = Field(min_length=1)
    derived: DerivedInputs = Field(default_factory=DerivedInputs)
    targets: list[str] = Field(min_length=1)
    horizon: int = Field(ge=1)
    period: float = Field(gt=0, description="seconds between consecutive readings")
    scaler: ScalerSet
    states: list[StateSpec]
    warmup_steps: int = Field(ge=0)
    provenance: Provenance
    metrics: dict[str, float] = Field(default_factory=dict)
    parity_error: float | None = None
    golden: GoldenVectors | None = None
    feature_ranges: list[tuple[float, float]] | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"card schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})"
            )
        for label, names in (("features", self.features), ("targets", self.targets)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {label}: {', '.join(dupes)}")
        self._check_derived()
        if len(self.scaler.features.mean) != self.n_inputs:
            raise ValueError(
                f"feature scaler has {len(self.scaler.features.mean)} columns for "
                f"{self.n_inputs} inputs ({', '.join(self.inputs)})"
            )
        if len(self.scaler.targets.mean) != len(self.targets):
            raise ValueError(
                f"target scaler has {len(self.scaler.targets.mean)} columns for {len(self.targets)} targets"
            )
        state_names = [s.name for s in self.states]
        if len(set(state_names)) != len(state_names):
            raise ValueError(f"duplicate state names: {state_names}")
        if INPUT_NAME in state_names:
            raise ValueError(f"a state may not be named {INPUT_NAME!r}")
        if self.feature_ranges is not None:
            self._check_feature_ranges(self.feature_ranges)
        if self.golden is not None:
            self._check_golden(self.golden)
        return self

    def _check_derived(self) -> None:
        derived = self.derived
        unknown = [a for a in derived.angles if a not in self.features]
        if unknown:
            raise ValueError(f"derived angles {', '.join(unknown)} are not features")
        angular = [t for t in self.targets if t in derived.angles]
        if angular:
            raise ValueError(
                f"target(s) {', '.join(angular)} are angles: a forecast of an angle as a "
                "number is not meaningful across 0/360"
            )
        inputs = self.inputs
        clash = sorted({n for n in inputs if inputs.count(n) > 1})
        if clash:
            raise ValueError(f"input(s) {', '.join(clash)} both a feature and derived")

    def _check_feature_ranges(self, ranges: list[tuple[float, float]]) -> None:
        if len(ranges) != self.n_features:
            raise ValueError(
                f"feature_ranges has {len(ranges)} entries for {self.n_features} features"
            )
        for name, (lo, hi) in zip(self.features, ranges, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(
                    f"feature_ranges for {name!r} must be finite with min <= max, got ({lo}, {hi})"
                )

    def _check_golden(self, golden: GoldenVectors) -> None:
        batch = golden.batch
        steps = golden.x.shape[1] if len(golden.x.shape) > 1 else 0
        want = {
            "golden.x": ((batch, steps, self.n_features), golden.x.shape),
            "golden.y": ((batch, steps, self.horizon, self.n_targets), golden.y.shape),
        }
        if golden.ts is not None:
            want["golden.ts"] = ((batch, steps), golden.ts.shape)
        elif self.derived.calendar:
            raise ValueError(
                "golden vectors need their readings' ts: the card derives inputs from it"
            )
        if len(golden.states) != len(self.states) or len(golden.states_out) != len(self.states):
            raise ValueError(
                f"golden vectors hold {len(golden.states)} initial and {len(golden.states_out)} "
                f"final states for {len(self.states)} card states"
            )
        for i, spec in enumerate(self.states):
            want[f"golden.states[{spec.name}]"] = (
                spec.batched_shape(batch),
                golden.states[i].shape,
            )
            want[f"golden.states_out[{spec.name}]"] = (
                spec.batched_shape(batch),
                golden.states_out[i].shape,
            )
        for label, (expected, got) in want.items():
            if tuple(got) != tuple(expected):
                raise ValueError(f"{label} has shape {tuple(got)}, the card implies {expected}")

    @property
    def n_features(self) -> int:
        """How many features a reading carries."""
        return len(self.features)

    @property
    def inputs(self) -> list[str]:
        """The model's input columns (the last axis of ``x``): the features with the
        ``derived`` encodings applied."""
        return self.derived.input_names(self.features)

    @property
    def n_inputs(self) -> int:
        """How many columns the model's input ``x`` has."""
        return len(self.inputs)

    @property
    def n_targets(self) -> int:
        """How many targets a forecast carries."""
        return len(self.targets)

    @property
    def ref(self) -> str:
        """``name:version``, as the registry and the logs name the model."""
        return f"{self.name}:{self.version}"

    # -- serialisation ------------------------------------------------------------------

    def to_json(self) -> str:
        """The card as ``card.json`` holds it (indented JSON)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "card") -> ModelCard:
        """A card from its JSON; `ModelCardError` naming `source` when it is not a valid card."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ModelCardError(f"{source}: invalid model card: {_first_error(exc)}") from exc

    def write(self, directory: Path) -> Path:
        """Write ``card.json`` into `directory` and return its path."""
        path = Path(directory) / CARD_FILE
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """Read a card from ``card.json`` (or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / CARD_FILE
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ModelCardError(f"{path}: cannot read model card ({exc.strerror})") from exc
        return cls.from_json(text, source=str(path))

    def embed(self, model: onnx.ModelProto) -> None:
        """Store the card in the graph's ``metadata_props`` (replacing an older one)."""
        keep = [p for p in model.metadata_props if p.key != CARD_METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(keep)
        entry = model.metadata_props.add()
        entry.key = CARD_METADATA_KEY
        entry.value = self.model_dump_json()

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, *, source: str = "model.onnx") -> ModelCard:
        """The card `embed` stored in the graph's metadata; `ModelCardError` when there is
        none or it is not a valid card."""
        for prop in model.metadata_props:
            if prop.key == CARD_METADATA_KEY:
                return cls.from_json(prop.value, source=f"{source} metadata")
        raise ModelCardError(f"{source}: no {CARD_METADATA_KEY!r} entry in the ONNX metadata")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "card"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


# -- contract check -------------------------------------------------------------------------


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """Each dimension as an int (fixed), a str (named dynamic) or None (unknown)."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _check_tensor(
    problems: list[str],
    kind: str,
    value_info: onnx.ValueInfoProto,
    expected: list[int | None],
    dynamic: set[int],
) -> None:
    """`expected` holds a fixed size per axis, or None for an axis that must be dynamic."""
    name = value_info.name
    if value_info.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        problems.append(f"{kind} {name!r} must be float32")
    dims = _dims(value_info)
    if len(dims) != len(expected):
        problems.append(f"{kind} {name!r} has rank {len(dims)}, the card implies {len(expected)}")
        return
    for axis, (got, want) in enumerate(zip(dims, expected, strict=True)):
        if axis in dynamic:
            if isinstance(got, int):
                problems.append(
                    f"{kind} {name!r} axis {axis} is fixed at {got}; it must be dynamic"
                )
        elif isinstance(got, int) and got != want:
            problems.append(f"{kind} {name!r} axis {axis} is {got}, the card says {want}")


def validate_onnx(card: ModelCard, model: onnx.ModelProto) -> None:
    """Check that `model` honours the step-model contract described by `card`.

    Raises `ModelContractError` listing every mismatch: input and output names, float32,
    ranks, fixed sizes, and dynamic batch (and time) axes.
    """
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializers}
    outputs = {o.name: o for o in graph.output}
    problems: list[str] = []

    want_in = [INPUT_NAME, *(s.name for s in card.states)]
    want_out = [OUTPUT_NAME, *(s.output_name for s in card.states)]
    if set(inputs) != set(want_in):
        problems.append(f"graph inputs are {sorted(inputs)}, the card implies {sorted(want_in)}")
    if set(outputs) != set(want_out):
        problems.append(f"graph outputs are {sorted(outputs)}, the card implies {sorted(want_out)}")

    if INPUT_NAME in inputs:
        _check_tensor(problems, "input", inputs[INPUT_NAME], [None, None, card.n_inputs], {0, 1})
    if OUTPUT_NAME in outputs:
        _check_tensor(
            problems,
            "output",
            outputs[OUTPUT_NAME],
            [None, None, card.horizon, card.n_targets],
            {0, 1},
        )
    for spec in card.states:
        expected: list[int | None] = list(spec.shape)
        expected.insert(spec.batch_axis, None)
        if spec.name in inputs:
            _check_tensor(problems, "state input", inputs[spec.name], expected, {spec.batch_axis})
        if spec.output_name in outputs:
            _check_tensor(
                problems, "state output", outputs[spec.output_name], expected, {spec.batch_axis}
            )
    if problems:
        raise ModelContractError(
            f"{card.ref}: the ONNX graph does not honour the step-model contract: "
            + "; ".join(problems)
        )


def model_fingerprint(card: ModelCard, graph: bytes = b"") -> bytes:
    """The identity of a model's states (16 bytes): a hash of its graph (`model.onnx`'s
    bytes, when given) and of the card's features, scaler and state specs. Every state
    record names the model that wrote it with this; a state is only ever continued by the
    model with the same fingerprint."""
    digest = hashlib.sha256(graph)
    digest.update("\n".join(card.features).encode())
    if not card.derived.empty:  # (an empty one leaves older fingerprints as they were)
        digest.update(card.derived.model_dump_json().encode())
    digest.update(card.scaler.model_dump_json().encode())
    for spec in card.states:
        digest.update(spec.model_dump_json().encode())
    if not graph:  # a model built in code: its card (and seed) is all there is
        digest.update(card.to_json().encode())
    return digest.digest()[:16]
