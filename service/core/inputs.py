"""The model's inputs, computed from a reading's raw features and its timestamp.

A card's ``derived`` inputs (`service.modelcard.DerivedInputs`) are computed here and only
here: training builds its input columns with `InputEncoder` from the table's raw features
and timestamps, and the engine builds each round's ``x`` with it from the readings it
applies. So a reading carries only its raw features, and the same reading gives the same
input in both.

- An angle feature in degrees becomes ``sin`` and ``cos`` of it, in its place.
- A calendar phase of ``ts`` (epoch seconds, UTC) is appended as ``sin`` and ``cos`` of
  ``2π · phase``: the time of day, ``(ts mod 86400) / 86400``; the day of the week,
  Monday 00:00 = 0 (1970-01-01 was a Thursday); the day of the year, the phase of
  ``ts`` in a mean Gregorian year of 365.2425 days (smooth across leap years, and within a
  day of the calendar's date).

The phases are computed in float64 from the float64 timestamp, then stored as float32: an
epoch timestamp in float32 would be off by minutes.
"""

from __future__ import annotations

import numpy as np

from service.modelcard import DerivedInputs

__all__ = ["PHASE_PERIODS", "InputEncoder"]

_DAY = 86_400.0

PHASE_PERIODS: dict[str, tuple[float, float]] = {
    "day": (_DAY, 0.0),
    "week": (7 * _DAY, 3 * _DAY),  # the epoch began on a Thursday: Monday is 3 days earlier
    "year": (365.2425 * _DAY, 0.0),
}
"""Each calendar phase's period and the offset added to ``ts`` before taking it modulo the
period (seconds)."""


class InputEncoder:
    """Raw feature values and timestamps to the model's input columns, as a card says."""

    def __init__(self, features: list[str], derived: DerivedInputs) -> None:
        self.features = list(features)
        self.derived = derived
        self.names = derived.input_names(self.features)
        self.identity = derived.empty
        self.needs_ts = bool(derived.calendar)
        # per input column: the feature it copies, or (for an angle's sin, cos) it encodes
        self._copies: list[tuple[int, int]] = []  # (input column, feature column)
        self._angles: list[tuple[int, int]] = []  # (sin column, feature column); cos is next
        column = 0
        for j, name in enumerate(self.features):
            if name in derived.angles:
                self._angles.append((column, j))
                column += 2
            else:
                self._copies.append((column, j))
                column += 1
        self._phases = [(column + 2 * i, PHASE_PERIODS[p]) for i, p in enumerate(derived.calendar)]
        self._copy_in = np.asarray([c for c, _ in self._copies], np.intp)
        self._copy_from = np.asarray([j for _, j in self._copies], np.intp)

    @property
    def n_inputs(self) -> int:
        """How many input columns a reading gives."""
        return len(self.names)

    def encode(
        self, values: np.ndarray, ts: np.ndarray | None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The input columns ``[..., n_inputs]`` (float32) of raw `values` ``[..., n_features]``
        taken at `ts` ``[...]`` (epoch seconds; may be None when no calendar phase is
        derived). Written into `out` when given."""
        if out is None:
            out = np.empty((*values.shape[:-1], self.n_inputs), np.float32)
        if self.identity:
            out[...] = values
            return out
        out[..., self._copy_in] = values[..., self._copy_from]
        for column, j in self._angles:
            radians = np.radians(values[..., j].astype(np.float64))
            out[..., column] = np.sin(radians)
            out[..., column + 1] = np.cos(radians)
        if self._phases:
            if ts is None:
                raise ValueError("calendar inputs need the readings' timestamps")
            seconds = np.asarray(ts, np.float64)
            for column, (period, offset) in self._phases:
                angle = (2 * np.pi / period) * np.mod(seconds + offset, period)
                out[..., column] = np.sin(angle)
                out[..., column + 1] = np.cos(angle)
        return out
