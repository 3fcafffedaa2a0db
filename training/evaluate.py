"""Scores, baselines, plots and the JSON report.

ARV (average relative variance) is the MSE divided by ONE fixed variance per target: the
variance of the raw target over every row before ``variance_until`` (for the sunspot
benchmark, the 1700-1979 record, as in the literature). The report states which variance
was used. With several targets, ARV is the mean of the per-target ARVs; MAE and RMSE are in
original units, per target, and averaged over targets.

Baselines, scored on the same (step, horizon) cells as the model:
- persistence: every horizon step repeats the last reading;
- AR(p): for each target and horizon step, ``y[t+1+h]`` regressed by least squares on the
  target's last ``p`` values, pooled over streams, fitted on the data the model trained on
  (the train part, plus the validation part for a refitted model).

Skill is ``1 - ARV_model / ARV_baseline`` (positive: the model is better). The next-step
skill per target, ``1 - MAE_model / MAE_baseline`` at horizon step 1, is what the live demo
shows beside persistence; the report states it for each baseline.

A ratio whose denominator is rounding noise is undefined, never a huge number: ARV when a
target is near-constant over the variance rows (`training.data.near_constant`), a skill
when the baseline's ARV or next-step MAE is no bigger than the error a millionth of the
target's magnitude (the larger of its mean's magnitude and its std) would make. An
undefined score is ``null`` in the report and its reason sits in the sibling ``undefined``
map under the score's name (``next_step_mae_skill_<baseline>.<target>`` for per-target
skills); the reason starts with its cause (``constant target: ...``, ``exact baseline:
...``), which the console prints as ``undefined (<cause>)``. The card's metrics leave
undefined scores out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training.data import NEAR_CONSTANT, Dataset, Splits, near_constant, parse_time
from training.models import Forecaster
from training.predict import run_streams

__all__ = [
    "arv",
    "card_metrics",
    "evaluate",
    "fit_ar",
    "format_score",
    "headline",
    "persistence_forecast",
    "plot_forecasts",
    "plot_losses",
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
                keep = m[:, h].copy()
                keep[: order - 1] = False  # a full history only
                rows.append(_lagged(x[:, col].astype(np.float64), order)[keep])
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
) -> dict[str, Any]:
    """The report: per period, the model's and the baselines' scores, overall and per horizon."""
    idx = dataset.target_index
    horizon = streams[0].y.shape[1]
    until = parse_time(variance_until) if variance_until is not None else splits.test_end
    table = dataset.table if until is None else dataset.table[dataset.table["ts"] < until]
    rows = f"every row with ts < {until}" if until is not None else "every row"
    values = table[dataset.targets].to_numpy(np.float64)
    mean, variance = values.mean(axis=0), values.var(axis=0)
    flat = near_constant(mean, np.sqrt(variance))
    constant = _constant_reason(dataset.targets, mean, flat, rows) if flat.any() else None
    # Errors up to this size are rounding; a baseline this good leaves nothing to divide by.
    rounding = NEAR_CONSTANT * np.maximum(np.abs(mean), np.sqrt(variance))
    arv_floor = float(np.mean(rounding**2 / variance)) if constant is None else 0.0

    preds = run_streams(model, [s.x for s in streams])
    # The AR baseline sees the same data as the model: the train part, plus the validation
    # part when the model was refitted on it.
    train_masks = [splits.part(s.target_ts, "train") for s in streams]
    if ar_with_val:
        train_masks = [
            m | splits.part(s.target_ts, "val") for m, s in zip(train_masks, streams, strict=True)
        ]
    coef = fit_ar([s.x for s in streams], [s.y for s in streams], train_masks, idx, ar_order)
    forecasts = {
        "model": preds,
        "persistence": [persistence_forecast(s.x, idx, horizon) for s in streams],
        f"ar{ar_order}": [predict_ar(s.x, coef, idx) for s in streams],
    }

    end = np.inf if splits.test_end is None else splits.test_end
    periods = {"val": (splits.val_start, splits.test_start), "test": (splits.test_start, end)}
    for name, (lo, hi) in (extra_tests or {}).items():
        periods[name] = (parse_time(lo), parse_time(hi))

    report: dict[str, Any] = {
        "variance": {
            "targets": dataset.targets,
            "value": variance.tolist(),
            "rows": rows,
        },
        "ar_order": ar_order,
        "ar_fitted_on": "train+val" if ar_with_val else "train",
        "periods": {},
    }
    for name, (lo, hi) in periods.items():
        masks = [(s.target_ts >= lo) & (s.target_ts < hi) for s in streams]
        if not any(m.any() for m in masks):
            continue
        actual = [scaler.targets.inverse(s.y) for s in streams]
        scores = {}
        for label, fc in forecasts.items():
            raw = [scaler.targets.inverse(p) for p in fc]
            scores[label] = _scores(raw, actual, masks, variance, constant)
        ours = scores["model"]
        for base in ("persistence", f"ar{ar_order}"):
            ours[f"skill_{base}"] = _skill(ours, scores[base], base, arv_floor)
            ours[f"next_step_mae_skill_{base}"] = _next_step_skill(
                ours, scores[base], base, dataset.targets, rounding
            )
        for part in scores.values():  # the reasons after the scores they explain
            if "undefined" in part:
                part["undefined"] = part.pop("undefined")
        report["periods"][name] = {"from": lo, "to": hi if np.isfinite(hi) else None, **scores}
    return report


def _scores(
    preds: list[np.ndarray],
    actuals: list[np.ndarray],
    masks: list[np.ndarray],
    variance: np.ndarray,
    constant: str | None,
) -> dict[str, Any]:
    """ARV, MAE, RMSE overall and per horizon step over the masked cells of every stream;
    ARV is undefined for the reason `constant` when that is given."""
    horizon = preds[0].shape[1]
    per_h: list[dict[str, Any]] = []
    errs_all = []
    for h in range(horizon):
        errs = np.concatenate(
            [(p[m[:, h], h] - a[m[:, h], h]) for p, a, m in zip(preds, actuals, masks, strict=True)]
        )
        errs_all.append(errs)
        per_h.append(_summary(errs, variance, constant))
    out = _summary(np.concatenate(errs_all), variance, constant)
    out["count"] = int(sum(len(e) for e in errs_all))
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


def _next_step_skill(
    model: dict[str, Any],
    base: dict[str, Any],
    name: str,
    targets: list[str],
    rounding: np.ndarray,
) -> dict[str, float | None]:
    """Per target, ``1 - MAE_model / MAE_baseline`` at horizon step 1, or None where the
    baseline's MAE is rounding (the reason in ``model["undefined"]``)."""
    ours, theirs = (
        model["per_horizon"][0]["mae_per_target"],
        base["per_horizon"][0]["mae_per_target"],
    )
    out: dict[str, float | None] = {}
    for t, m, b, r in zip(targets, ours, theirs, rounding, strict=True):
        if b <= r:
            out[t] = None
            _undefined(
                model,
                f"next_step_mae_skill_{name}.{t}",
                f"exact baseline: {name}'s next-step MAE for {t!r} on this period is "
                f"{b:.2g}, at rounding level",
            )
        else:
            out[t] = 1.0 - m / b
    return out


def _summary(errs: np.ndarray, variance: np.ndarray, constant: str | None) -> dict[str, Any]:
    mse = np.mean(errs**2, axis=0)
    mae = np.mean(np.abs(errs), axis=0)
    out: dict[str, Any] = {
        "arv": None if constant else float(np.mean(mse / variance)),
        "mae": float(np.mean(mae)),
        "rmse": float(np.mean(np.sqrt(mse))),
        "mae_per_target": mae.tolist(),
        "rmse_per_target": np.sqrt(mse).tolist(),
    }
    if constant:
        _undefined(out, "arv", constant)
    return out


def _undefined(scores: dict[str, Any], key: str, reason: str) -> None:
    scores.setdefault("undefined", {})[key] = reason


def card_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers for the card: ``<period>.<metric>`` and ``<period>.h<k>.arv``.

    Undefined scores (null in the report) are left out.
    """
    out: dict[str, float] = {}
    for period, scores in report["periods"].items():
        model = scores["model"]
        for key in (*_HEADLINE, f"skill_ar{report['ar_order']}"):
            if model[key] is not None:
                out[f"{period}.{key}"] = float(model[key])
        for h, step in enumerate(model["per_horizon"], start=1):
            if step["arv"] is not None:
                out[f"{period}.h{h}.arv"] = float(step["arv"])
    return out


def format_score(scores: dict[str, Any], key: str, spec: str) -> str:
    """``scores[key]`` for the console (``key`` may be ``<name>.<target>``): the number in
    format `spec`, or ``undefined (<cause>)``."""
    name, _, target = key.partition(".")
    value = scores[name][target] if target else scores[name]
    if value is not None:
        return format(value, spec)
    reason = scores.get("undefined", {}).get(key, "")
    return f"undefined ({reason.partition(':')[0]})" if reason else "undefined"


def headline(report: dict[str, Any]) -> str:
    """One line of the model's headline scores: ``<period>.<score>=<value>, ...``."""
    keys = (*_HEADLINE, f"skill_ar{report['ar_order']}")
    return ", ".join(
        f"{period}.{key}={format_score(scores['model'], key, '.4g')}"
        for period, scores in report["periods"].items()
        for key in keys
    )


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Two console lines per period: the model's scores, then its next-step MAE skill."""
    ar = f"skill_ar{report['ar_order']}"
    lines = []
    for period, scores in report["periods"].items():
        model = scores["model"]
        lines.append(
            f"{period:8} arv={format_score(model, 'arv', '.4f')} "
            f"mae={format_score(model, 'mae', '.4g')} rmse={format_score(model, 'rmse', '.4g')} "
            f"skill_persistence={format_score(model, 'skill_persistence', '.3f')} "
            f"{ar}={format_score(model, ar, '.3f')}"
        )
        skill = "next_step_mae_skill_persistence"
        lines.append(
            f"{'':8} next-step MAE skill vs persistence: "
            + " ".join(f"{t}={format_score(model, f'{skill}.{t}', '+.3f')}" for t in model[skill])
        )
    return lines


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def plot_losses(
    history: list[dict[str, float]],
    path: Path,
    *,
    refit: list[dict[str, float]] | None = None,
    ylabel: str = "MSE (scaled)",
) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    if refit:
        ax.plot(
            [h["epoch"] for h in refit], [h["train_loss"] for h in refit], label="refit (train+val)"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("loss curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_forecasts(
    ts: np.ndarray,
    actual: np.ndarray,
    forecast: np.ndarray,
    periods: dict[str, tuple[float, float | None]],
    path: Path,
    *,
    title: str,
    last_steps: int | None = None,
) -> Path:
    """One stream: the actual first target and the model's first and last horizon steps,
    each drawn at the time it forecasts; evaluation periods shaded."""
    horizon = forecast.shape[1]
    n = len(ts) if last_steps is None else min(last_steps, len(ts))
    lo = len(ts) - n
    when = _dates(ts)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(when[lo:], actual[lo:, 0], color="black", lw=1.2, label="actual")
    for h in sorted({0, horizon - 1}):
        ax.plot(
            when[lo + 1 + h :],
            forecast[lo : len(ts) - 1 - h, h, 0],
            lw=1,
            label=f"forecast +{h + 1}",
        )
    for i, (name, (start, end)) in enumerate(periods.items()):
        right = ts[-1] if end is None else min(end, ts[-1])
        if start < right and start >= ts[lo]:
            span = _dates(np.array([start, right]))
            ax.axvspan(span[0], span[1], alpha=0.12, color=f"C{i + 2}", label=name)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _dates(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds as datetime64, so the time axis reads as dates."""
    return np.asarray(np.round(ts), dtype=np.int64).astype("datetime64[s]")
