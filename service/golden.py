"""Golden vectors: the test vectors with which a model card proves its graph.

At export the trainer picks a few input sequences from the training data and the states
they start from (the card's initial state, or the state a stream reached over earlier
readings), runs the reference model (the torch model that was trained) on them, and writes
inputs, initial states, expected forecasts, expected final states and a tolerance into the
card's ``golden`` field. `Registry.load` (and `Registry.add`) run the ONNX graph on them with
`GoldenVectors.max_error` and refuse a graph that computes something else: a flipped
attribute, an altered weight, another model's graph, or an edited scaler.

Arrays are stored as `GoldenTensor`: shape, dtype and base64 bytes, compact and exact in JSON.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from service.modelcard import ScalerSet

__all__ = ["GoldenTensor", "GoldenVectors", "InputFunction", "StepFunction"]

StepFunction = Callable[[np.ndarray, Sequence[np.ndarray]], tuple[np.ndarray, Sequence[np.ndarray]]]
"""A step model's call: scaled inputs and states in, scaled forecasts and new states out."""

InputFunction = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
"""Raw readings ``[..., n_features]`` and their timestamps ``[...]`` to the model's inputs."""


class GoldenTensor(BaseModel):
    """An array kept compact and exact in JSON: its shape, its dtype, and its values
    (little-endian, C order) in base64. Readings and states are float32; forecasts in
    original units are float64, so they keep their precision whatever the scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[int, ...] = Field(min_length=1)
    dtype: Literal["float32", "float64"] = "float64"
    data: str

    @model_validator(mode="after")
    def _check(self) -> GoldenTensor:
        if any(d < 1 for d in self.shape):
            raise ValueError(f"every dimension must be >= 1, got {self.shape}")
        try:
            raw = base64.b64decode(self.data, validate=True)
        except ValueError as exc:
            raise ValueError(f"data is not base64 ({exc})") from exc
        dtype = np.dtype(self.dtype).newbyteorder("<")
        want = dtype.itemsize * math.prod(self.shape)
        if len(raw) != want:
            raise ValueError(f"data holds {len(raw)} bytes, shape {self.shape} needs {want}")
        if not np.isfinite(np.frombuffer(raw, dtype)).all():
            raise ValueError("values must be finite")
        return self

    @classmethod
    def of(cls, array: np.ndarray) -> GoldenTensor:
        """Float32 arrays stay float32; anything else is stored as float64."""
        dtype: Literal["float32", "float64"] = (
            "float32" if np.asarray(array).dtype == np.float32 else "float64"
        )
        values = np.ascontiguousarray(array, np.dtype(dtype).newbyteorder("<"))
        return cls(
            shape=values.shape,
            dtype=dtype,
            data=base64.b64encode(values.tobytes()).decode("ascii"),
        )

    def array(self) -> np.ndarray:
        """A fresh array in native byte order (writeable, the caller's to keep)."""
        raw = base64.b64decode(self.data)
        dtype = np.dtype(self.dtype)
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(self.shape)


class GoldenVectors(BaseModel):
    """Test vectors written at export: what the graph must compute, as the service runs it.

    ``x`` holds raw readings ``[batch, time, n_features]`` from the training data, in
    original units, and ``ts`` their timestamps ``[batch, time]`` (epoch seconds; kept when
    the card derives inputs from them); ``states`` the state each row starts from (card order, batched on each
    state's batch axis: the card's initial state, or the state reached over the earlier
    readings of the row's stream); ``y`` the forecasts ``[batch, time, horizon, n_targets]``
    in original units and ``states_out`` the states after the last step, both computed by
    the ``reference`` model (the torch model that was trained). ``tolerance`` is the largest
    error `max_error` accepts: forecasts in scaled units (divided by each target's std),
    states as they are.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    x: GoldenTensor
    ts: GoldenTensor | None = None
    states: list[GoldenTensor]
    y: GoldenTensor
    states_out: list[GoldenTensor]
    tolerance: float = Field(gt=0, allow_inf_nan=False)
    reference: str = Field(default="", description="what computed the expected values")

    @property
    def batch(self) -> int:
        """Number of input sequences (rows of ``x``)."""
        return self.x.shape[0]

    def max_error(
        self, scaler: ScalerSet, step: StepFunction, encode: InputFunction | None = None
    ) -> float:
        """Run `step` on the vectors twice, the whole sequence in one call and one reading at
        a time (as the service calls it), and return the largest absolute difference from
        the expected forecasts (scaled units) and states.

        Inputs are encoded with `encode` (the card's `service.core.inputs.InputEncoder`, for a
        card with derived inputs), scaled with `scaler` and forecasts de-normalised with it,
        the card's scaler: a scaler that is not the one the model was trained with shows as
        an error.
        """
        raw = self.x.array().astype(np.float32)
        if encode is not None:
            raw = encode(raw, None if self.ts is None else self.ts.array())
        x = scaler.features.transform(raw).astype(np.float32)
        mean = np.asarray(scaler.targets.mean, np.float64)
        std = np.asarray(scaler.targets.std, np.float64)
        want_y = self.y.array().astype(np.float64)
        want_states = [s.array() for s in self.states_out]

        def error(y: np.ndarray, states: Sequence[np.ndarray]) -> float:
            got = np.asarray(y, np.float64) * std + mean  # de-normalised in float64: exact
            if got.shape != want_y.shape or len(states) != len(want_states):
                return math.inf
            diffs = [np.abs(got - want_y) / std]
            for a, b in zip(states, want_states, strict=True):
                if np.shape(a) != b.shape:
                    return math.inf
                diffs.append(np.abs(np.asarray(a, np.float64) - b))
            if not all(np.isfinite(d).all() for d in diffs):
                return math.inf  # a NaN or infinite output is as wrong as can be
            return max(float(d.max()) for d in diffs)

        def initial() -> list[np.ndarray]:
            return [s.array().astype(np.float32) for s in self.states]

        whole_y, whole_states = step(x, initial())
        worst = error(whole_y, whole_states)
        states: Sequence[np.ndarray] = initial()
        steps_y = []
        for t in range(x.shape[1]):
            y_t, states = step(np.ascontiguousarray(x[:, t : t + 1]), states)
            if np.shape(y_t) != (*want_y.shape[:1], 1, *want_y.shape[2:]):
                return math.inf
            steps_y.append(y_t)
        return max(worst, error(np.concatenate(steps_y, axis=1), states))
