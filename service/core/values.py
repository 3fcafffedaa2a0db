"""Checking and converting a batch of readings' feature values against the model card.

A reading's values are a dict keyed by feature name or a list in the card's feature order.
Each value must be a number (``bool``, strings, ``None`` and containers are not numbers, even
``"1.5"``) and finite. With imputation on, a missing or non-finite value comes back as NaN
for the engine to fill with the stream's last value; otherwise the row is a problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from service.core.readings import RejectReason

__all__ = ["FeatureValues", "Problems"]

Problems = dict[int, tuple[RejectReason, str]]
"""Why rows of a batch cannot be applied, by row index."""

# exact types accepted as numbers on the fast path (bool is deliberately absent)
_NUMERIC_TYPES = frozenset(
    {
        float,
        int,
        np.float64,
        np.float32,
        np.float16,
        np.int64,
        np.int32,
        np.int16,
        np.int8,
        np.uint64,
        np.uint32,
        np.uint16,
        np.uint8,
    }
)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


class FeatureValues:
    """Turns the `values` of a batch of readings into a float64 ``[n, n_features]`` array."""

    def __init__(self, features: Sequence[str], *, impute: bool = False) -> None:
        self.impute = impute
        self._features = list(features)
        self._feature_set = frozenset(features)
        self._n_features = len(self._features)
        self._getter: Callable[[Any], tuple[Any, ...]]
        if self._n_features > 1:
            self._getter = itemgetter(*self._features)
        else:
            only = self._features[0]
            self._getter = lambda d: (d[only],)

    def parse(self, values: list[Any]) -> tuple[np.ndarray, Problems]:
        """Raw feature values as float64 ``[n, n_features]`` and the problems by row.

        With last-value imputation, missing and non-finite values come back as NaN for the
        caller to fill. The fast path converts the whole batch at once; any oddity sends the
        batch down the per-row path, which says exactly what is wrong with each row.
        """
        n = len(values)
        nf = self._n_features
        flat: list[Any] | None = None
        kinds = set(map(type, values))
        if (kinds == {dict} or kinds <= {list, tuple}) and set(map(len, values)) == {nf}:
            try:
                rows = map(self._getter, values) if kinds == {dict} else values
                flat = list(chain.from_iterable(rows))
            except KeyError:
                flat = None
        if flat is not None and set(map(type, flat)) <= _NUMERIC_TYPES:
            try:
                x = np.fromiter(flat, np.float64, n * nf).reshape(n, nf)
            except (OverflowError, ValueError, TypeError):
                pass
            else:
                finite = np.isfinite(x)
                if finite.all():
                    return x, {}
                problems: Problems = {}
                if self.impute:
                    x[~finite] = np.nan
                else:
                    for i in np.flatnonzero(~finite.all(axis=1)).tolist():
                        problems[i] = self._non_finite(x[i], finite[i])
                return x, problems
        return self._parse_rows(values)

    def matrix(self, values: list[Any]) -> tuple[np.ndarray, Problems]:
        """Like `parse`, as the float32 ``[n, n_features]`` matrix a `ReadingBatch` holds.

        A finite value beyond float32's range becomes NaN when imputing, and is a
        non-finite problem otherwise.
        """
        x, problems = self.parse(values)
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        if not np.isinf(x32).any():
            return x32, problems
        overflow = np.isinf(x32) & np.isfinite(x)
        if self.impute:
            x32[overflow] = np.nan
        else:
            for i in np.flatnonzero(overflow.any(axis=1)).tolist():
                if i not in problems:
                    problems[i] = self._non_finite(x[i], ~overflow[i], "beyond float32 range")
        return x32, problems

    def _non_finite(
        self, row: np.ndarray, finite: np.ndarray, why: str = "non-finite"
    ) -> tuple[RejectReason, str]:
        bad = [
            f"{f}={v!r}"
            for f, v, ok in zip(self._features, row.tolist(), finite, strict=True)
            if not ok
        ]
        return RejectReason.NON_FINITE, f"{why} value(s): {', '.join(bad)}"

    def _parse_rows(self, values: list[Any]) -> tuple[np.ndarray, Problems]:
        x = np.full((len(values), self._n_features), np.nan)
        problems: Problems = {}
        for i, v in enumerate(values):
            problem = self._parse_row(v, x[i])
            if problem is not None:
                problems[i] = problem
        return x, problems

    def _parse_row(self, values: object, out: np.ndarray) -> tuple[RejectReason, str] | None:
        """Fill `out` (NaN where imputable) or say why the row is rejected."""
        impute = self.impute
        if isinstance(values, dict):
            unknown = [k for k in values if k not in self._feature_set]
            if unknown:
                return (
                    RejectReason.UNKNOWN_FEATURE,
                    f"unknown feature(s) {', '.join(map(repr, unknown[:5]))}; "
                    f"the model takes {', '.join(self._features)}",
                )
            missing = [f for f in self._features if f not in values]
            if missing and not impute:
                return RejectReason.MISSING_FEATURE, f"missing feature(s) {', '.join(missing)}"
            items = [(f, values.get(f)) for f in self._features]
            present = [f not in missing for f in self._features]
        elif isinstance(values, list | tuple):
            if len(values) != self._n_features:
                reason = (
                    RejectReason.MISSING_FEATURE
                    if len(values) < self._n_features
                    else RejectReason.UNKNOWN_FEATURE
                )
                return (
                    reason,
                    f"{len(values)} values for {self._n_features} features "
                    f"({', '.join(self._features)})",
                )
            items = list(zip(self._features, values, strict=True))
            present = [True] * self._n_features
        else:
            return (
                RejectReason.INVALID,
                f"values must be an object keyed by feature name or a list in card order, "
                f"got {type(values).__name__}",
            )
        for j, ((name, value), here) in enumerate(zip(items, present, strict=True)):
            if not here:
                continue  # imputed later
            if not _is_number(value):
                return (
                    RejectReason.NON_NUMERIC,
                    f"feature {name} is {type(value).__name__} {value!r:.40}, not a number",
                )
            try:
                number = float(value)  # type: ignore[arg-type]
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                if not impute:
                    return RejectReason.NON_FINITE, f"feature {name} is {value!r}"
                continue
            out[j] = number
        return None
