"""Scores, baselines and the JSON report (the plots are `training.plots`).

ARV (average relative variance) is the MSE divided by ONE fixed variance per target. By
default that is the variance of the raw target over the training part (every row with
``ts < val_start``: the rows the scaler was fitted on), so no value of the scored period
shapes the yardstick it is scored by; ``variance_until`` takes every row before a given time
instead (for the sunspot benchmark, the 1700-1979 record, as in the literature). Data that
holds no training rows (a model re-scored on a later file) is scored against the training
variance recorded in the card's scaler. The report says which in ``arv_variance_from``
(``train``, ``scaler`` or ``variance_until``) and ``variance.rows``. With several targets,
ARV is the mean of the per-target ARVs.

Every score counts the (step, horizon) cells of its period whose actual was observed (a
missing actual, NaN, counts for nothing), pooled over the horizon steps and also given per
step (``per_horizon``). MAE and RMSE are in each target's own units, per target
(``mae_per_target``, ``rmse_per_target``); their means over targets (``mae``, ``rmse``)
mix units when the targets differ, so the console shows them per target only.

Baselines, scored on the same (step, horizon) cells as the model:
- persistence: every horizon step repeats the last reading;
- AR(p): for each target and horizon step, ``y[t+1+h]`` regressed by least squares on the
  target's last ``p`` values, pooled over streams, fitted on the data the model trained on
  (the train part, plus the validation part for a refitted model). Data without a training
  part has no AR(p) baseline: its scores and skills are left out.

Skill is ``1 - ARV_model / ARV_baseline`` (positive: the model is better); per target,
``skill_<baseline>_per_target`` is ``1 - MSE_model / MSE_baseline`` over all horizon steps
(the same ratio: the variance cancels). The next-step skill per target,
``1 - MAE_model / MAE_baseline`` at horizon step 1, is what the live demo shows beside
persistence; the report states it for each baseline.

A ratio whose denominator is rounding noise is undefined, never a huge number: ARV when a
target is near-constant over the variance rows (`training.data.near_constant`), a skill
when the baseline's ARV, RMSE or next-step MAE is no bigger than the error a millionth of
the target's magnitude (the larger of its mean's magnitude and its std) would make. An
undefined score is ``null`` in the report and its reason sits in the sibling ``undefined``
map under the score's name (``<score>.<target>`` for per-target skills); the reason starts
with its cause (``constant target: ...``, ``exact baseline: ...``), which the console
prints as ``undefined (<cause>)``. The card's metrics leave undefined scores out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import NEAR_CONSTANT, Dataset, Splits, near_constant, parse_time
from training.errors import TrainingDataError
from training.models import Forecaster
from training.predict import run_streams
from training.summary import format_score, headline, summary_lines

__all__ = [
    "arv",
    "card_metrics",
    "evaluate",
    "fit_ar",
    "format_score",  # re-exported from training.summary for its importers
    "headline",
    "persistence_forecast",
    "predict_ar",
    "summary_lines",
    "write_report",
]

# The card's headline scores per period, besides the AR(p) skill.
_HEADLINE = ("arv", "mae", "rmse", "skill_persistence")


def arv(pred: np.ndarray, actual: np.ndarray, variance: float) -> float:
    """Mean squared error divided by a fixed variance."""
    return float(np.mean((pred - actual) ** 2) / variance)


def persistence_forecast(x: np.ndarray, target_index: list[int], horizon: int) -> np.ndarray:
    """Scaled ``[T, H, n_targets]``: the current target value for every horizon step."""
    return np.repeat(x[:, None, target_index], horizon, axis=1)


def _lagged(series: np.ndarray, order: int) -> np.ndarray:
    """``[T, order + 1]``: an intercept and the last `order` values (zeros before the start)."""
    padded = np.concatenate([np.zeros(order - 1, series.dtype), series])
    cols = [padded[order - 1 - k : len(padded) - k] for k in range(order)]
    return np.column_stack([np.ones(len(series)), *cols])


def fit_ar(
    inputs: list[np.ndarray],
    targets: list[np.ndarray],
    masks: list[np.ndarray],
    target_index: list[int],
    order: int,
) -> np.ndarray:
    """Least-squares AR(order) coefficients ``[n_targets, H, order + 1]`` (intercept first)."""
    horizon = targets[0].shape[1]
    coef = np.zeros((len(target_index), horizon, order + 1))
    for j, col in enumerate(target_index):
        for h in range(horizon):
            rows, ys = [], []
            for x, y, m in zip(inputs, targets, masks, strict=True):
                lagged = _lagged(x[:, col].astype(np.float64), order)
                keep = m[:, h] & np.isfinite(y[:, h, j]) & np.isfinite(lagged).all(axis=1)
                keep[: order - 1] = False  # a full history only
                rows.append(lagged[keep])
                ys.append(y[keep, h, j])
            a, b = np.concatenate(rows), np.concatenate(ys)
            if len(b):
                coef[j, h] = np.linalg.lstsq(a, b, rcond=None)[0]
    return coef


def predict_ar(x: np.ndarray, coef: np.ndarray, target_index: list[int]) -> np.ndarray:
    """Scaled AR forecasts ``[T, H, n_targets]`` for one stream's scaled inputs."""
    order = coef.shape[-1] - 1
    out = np.zeros((len(x), coef.shape[1], len(target_index)), np.float32)
    for j, col in enumerate(target_index):
        out[:, :, j] = _lagged(x[:, col].astype(np.float64), order) @ coef[j].T
    return out


def evaluate(
    model: Forecaster,
    dataset: Dataset,
    streams: list[Any],
    splits: Splits,
    scaler: Any,
    *,
    extra_tests: dict[str, tuple[Any, Any]] | None = None,
    variance_until: Any = None,
    ar_order: int = 12,
    ar_with_val: bool = False,
    variance_from_scaler: bool = False,
) -> dict[str, Any]:
    """The report: per period, the model's and the baselines' scores, overall, per target
    and per horizon step.

    `extra_tests` names more periods, each a start and an end (None: the end of the data).
    `variance_from_scaler` takes ARV's training variance from the scaler instead of this
    data's training rows: for data other than the model was trained on.
    """
    idx = dataset.target_index
    horizon = streams[0].y.shape[1]
    var = _arv_variance(dataset, splits, scaler, variance_until, from_scaler=variance_from_scaler)
    # Errors up to this size are rounding; a baseline this good leaves nothing to divide by.
    rounding = NEAR_CONSTANT * np.maximum(np.abs(var.mean), np.sqrt(var.value))
    arv_floor = float(np.mean(rounding**2 / var.value)) if var.constant is None else 0.0
    forecasts, ar_fitted_on = _forecasts(
        model, streams, splits, horizon, idx, ar_order, ar_with_val
    )
    raw = {label: [scaler.targets.inverse(p) for p in fc] for label, fc in forecasts.items()}
    actual = [scaler.targets.inverse(s.y) for s in streams]

    end = np.inf if splits.test_end is None else splits.test_end
    periods = {"val": (splits.val_start, splits.test_start), "test": (splits.test_start, end)}
    for name, (lo, hi) in (extra_tests or {}).items():
        periods[name] = (parse_time(lo), np.inf if hi is None else parse_time(hi))

    report: dict[str, Any] = {
        "targets": dataset.targets,
        "variance": {"targets": dataset.targets, "value": var.value.tolist(), "rows": var.rows},
        "arv_variance_from": var.source,
        "ar_order": ar_order,
        "ar_fitted_on": ar_fitted_on,
        "periods": {},
    }
    for name, (lo, hi) in periods.items():
        masks = [(s.target_ts >= lo) & (s.target_ts < hi) for s in streams]
        if not any(m.any() for m in masks):
            continue
        scores = {label: _scores(fc, actual, masks, var) for label, fc in raw.items()}
        ours = scores["model"]
        for base in (b for b in scores if b != "model"):
            ours[f"skill_{base}"] = _skill(ours, scores[base], base, arv_floor)
            ours[f"skill_{base}_per_target"] = _target_skills(
                ours,
                f"skill_{base}_per_target",
                (ours["rmse_per_target"], scores[base]["rmse_per_target"]),
                f"{base}'s RMSE",
                dataset.targets,
                rounding,
                squared=True,
            )
            ours[f"next_step_mae_skill_{base}"] = _target_skills(
                ours,
                f"next_step_mae_skill_{base}",
                (
                    ours["per_horizon"][0]["mae_per_target"],
                    scores[base]["per_horizon"][0]["mae_per_target"],
                ),
                f"{base}'s next-step MAE",
                dataset.targets,
                rounding,
                squared=False,
            )
        for part in scores.values():  # the reasons after the scores they explain
            if "undefined" in part:
                part["undefined"] = part.pop("undefined")
        report["periods"][name] = {"from": lo, "to": hi if np.isfinite(hi) else None, **scores}
    return report


@dataclass(frozen=True)
class _Variance:
    """ARV's divisor per target, where it comes from, and why ARV is undefined (or None)."""

    source: str  # train, scaler or variance_until
    rows: str
    mean: np.ndarray
    value: np.ndarray
    constant: str | None


def _arv_variance(
    dataset: Dataset, splits: Splits, scaler: Any, variance_until: Any, *, from_scaler: bool
) -> _Variance:
    """The variance of each raw target over the training rows, or over the rows before
    `variance_until` when that is given."""
    ts = dataset.table["ts"]
    if variance_until is not None:
        until = parse_time(variance_until)
        source, rows, keep = "variance_until", f"every row with ts < {until}", ts < until
    else:
        source = "train"
        rows, keep = f"every training row (ts < {splits.val_start})", ts < splits.val_start
    values = dataset.table.loc[keep, dataset.targets].to_numpy(np.float64)
    if source == "train" and (from_scaler or len(values) < 2):
        return _scaler_variance(dataset.targets, scaler)
    if len(values) < 2:
        raise TrainingDataError(f"variance_until={until}: fewer than 2 rows before it")
    mean, variance = np.nanmean(values, axis=0), np.nanvar(values, axis=0)
    flat = near_constant(mean, np.sqrt(variance))
    constant = _constant_reason(dataset.targets, mean, flat, rows) if flat.any() else None
    return _Variance(source, rows, mean, variance, constant)


def _scaler_variance(targets: list[str], scaler: Any) -> _Variance:
    """The training variance the scaler recorded (`fit_scaler` uses the same rows and the
    same population variance). It records std 1 for a near-constant column: that target's
    variance is unknown, so ARV is undefined."""
    mean = np.asarray(scaler.targets.mean, np.float64)
    std = np.asarray(scaler.targets.std, np.float64)
    rows = "the model's training rows, as recorded in its scaler"
    flat = std == 1.0
    constant = _constant_reason(targets, mean, flat, rows) if flat.any() else None
    return _Variance("scaler", rows, mean, std**2, constant)


def _forecasts(
    model: Forecaster,
    streams: list[Any],
    splits: Splits,
    horizon: int,
    idx: list[int],
    ar_order: int,
    ar_with_val: bool,
) -> tuple[dict[str, list[np.ndarray]], str | None]:
    """Scaled forecasts of the model and the baselines for every stream, and what the AR(p)
    baseline was fitted on (None when there was nothing to fit it on: no AR baseline)."""
    forecasts = {
        "model": run_streams(model, [s.x for s in streams]),
        "persistence": [persistence_forecast(s.x, idx, horizon) for s in streams],
    }
    # The AR baseline sees the same data as the model: the train part, plus the validation
    # part when the model was refitted on it.
    fit_masks = [splits.part(s.target_ts, "train") for s in streams]
    if ar_with_val:
        fit_masks = [
            m | splits.part(s.target_ts, "val") for m, s in zip(fit_masks, streams, strict=True)
        ]
    if not any(m.any() for m in fit_masks):
        return forecasts, None
    coef = fit_ar([s.x for s in streams], [s.y for s in streams], fit_masks, idx, ar_order)
    forecasts[f"ar{ar_order}"] = [predict_ar(s.x, coef, idx) for s in streams]
    return forecasts, "train+val" if ar_with_val else "train"


def _scores(
    preds: list[np.ndarray], actuals: list[np.ndarray], masks: list[np.ndarray], var: _Variance
) -> dict[str, Any]:
    """ARV, MAE, RMSE over the masked cells of every stream whose actual was observed:
    pooled over the horizon steps, and per horizon step; ARV is undefined when
    ``var.constant`` says why."""
    horizon = preds[0].shape[1]
    per_h: list[dict[str, Any]] = []
    errs_all, seen_all = [], []
    for h in range(horizon):
        cells = [
            (p[m[:, h], h], a[m[:, h], h]) for p, a, m in zip(preds, actuals, masks, strict=True)
        ]
        errs = np.concatenate([p - a for p, a in cells]).astype(np.float64)
        seen = np.concatenate([np.isfinite(a) for _, a in cells])
        errs_all.append(errs)
        seen_all.append(seen)
        per_h.append(_summary(errs, seen, var))
    seen = np.concatenate(seen_all)
    out = _summary(np.concatenate(errs_all), seen, var)
    out["count"] = int(seen.any(axis=1).sum())
    out["count_per_target"] = seen.sum(axis=0).tolist()
    out["per_horizon"] = per_h
    return out


def _constant_reason(targets: list[str], mean: np.ndarray, flat: np.ndarray, rows: str) -> str:
    which = ", ".join(f"{t!r} is {m:.6g}" for t, m, f in zip(targets, mean, flat, strict=True) if f)
    return f"constant target: {which} in {rows}; ARV divides by the variance"


def _skill(model: dict[str, Any], base: dict[str, Any], name: str, floor: float) -> float | None:
    """``1 - ARV_model / ARV_baseline``, or None (the reason in ``model["undefined"]``)."""
    if model["arv"] is None:
        _undefined(model, f"skill_{name}", model["undefined"]["arv"])
        return None
    if base["arv"] <= floor:
        _undefined(
            model,
            f"skill_{name}",
            f"exact baseline: {name}'s ARV on this period is {base['arv']:.2g}, at rounding level",
        )
        return None
    return 1.0 - float(model["arv"]) / float(base["arv"])


def _target_skills(
    model: dict[str, Any],
    key: str,
    errors: tuple[list[float], list[float]],
    what: str,
    targets: list[str],
    rounding: np.ndarray,
    *,
    squared: bool,
) -> dict[str, float | None]:
    """Per target, ``1 - ours / theirs`` for the `errors` pair (the model's, the baseline's;
    of their squares when `squared`), or None where the baseline's error is rounding (the
    reason in ``model["undefined"]`` under ``<key>.<target>``)."""
    out: dict[str, float | None] = {}
    for t, m, b, r in zip(targets, *errors, rounding, strict=True):
        if b <= r:
            out[t] = None
            _undefined(
                model,
                f"{key}.{t}",
                f"exact baseline: {what} for {t!r} on this period is {b:.2g}, at rounding level",
            )
        else:
            ratio = m / b
            out[t] = 1.0 - (ratio**2 if squared else ratio)
    return out


def _summary(errs: np.ndarray, seen: np.ndarray, var: _Variance) -> dict[str, Any]:
    """The scores of errors ``[cells, targets]`` over the cells `seen` (observed actuals)."""
    count = seen.sum(axis=0)
    kept = np.where(seen, errs, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # a target never observed: NaN
        mse = (kept**2).sum(axis=0) / count
        mae = np.abs(kept).sum(axis=0) / count
    out: dict[str, Any] = {
        "arv": None if var.constant else float(np.mean(mse / var.value)),
        "mae": float(np.mean(mae)),
        "rmse": float(np.mean(np.sqrt(mse))),
        "mae_per_target": mae.tolist(),
        "rmse_per_target": np.sqrt(mse).tolist(),
    }
    if var.constant:
        _undefined(out, "arv", var.constant)
    return out


def _undefined(scores: dict[str, Any], key: str, reason: str) -> None:
    scores.setdefault("undefined", {})[key] = reason


def card_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers for the card: ``<period>.<metric>``, ``<period>.h<k>.arv`` and
    each target's one-step RMSE, ``<period>.h1.rmse.<target>``.

    Undefined scores (null in the report) and scores against a baseline the report lacks
    are left out.
    """
    out: dict[str, float] = {}
    for period, scores in report["periods"].items():
        model = scores["model"]
        for key in (*_HEADLINE, f"skill_ar{report['ar_order']}"):
            if model.get(key) is not None:
                out[f"{period}.{key}"] = float(model[key])
        for h, step in enumerate(model["per_horizon"], start=1):
            if step["arv"] is not None:
                out[f"{period}.h{h}.arv"] = float(step["arv"])
        # each target's one-step RMSE: the service's anomaly scale starts from it
        first = model["per_horizon"][0]["rmse_per_target"] if model["per_horizon"] else []
        for target, rmse in zip(report["targets"], first, strict=True):
            if rmse is not None and math.isfinite(rmse):
                out[f"{period}.h1.rmse.{target}"] = float(rmse)
    return out


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path
