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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training.data import Dataset, Splits, parse_time
from training.models import Forecaster
from training.predict import run_streams

__all__ = [
    "arv",
    "card_metrics",
    "evaluate",
    "fit_ar",
    "persistence_forecast",
    "plot_forecasts",
    "plot_losses",
    "predict_ar",
    "write_report",
]


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
    variance = table[dataset.targets].to_numpy(np.float64).var(axis=0)
    variance = np.where(variance > 0, variance, 1.0)

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
            "rows": f"every row with ts < {until}" if until is not None else "every row",
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
            scores[label] = _scores(raw, actual, masks, variance)
        for base in ("persistence", f"ar{ar_order}"):
            scores["model"][f"skill_{base}"] = 1.0 - scores["model"]["arv"] / max(
                scores[base]["arv"], 1e-12
            )
            scores["model"][f"next_step_mae_skill_{base}"] = _next_step_skill(
                scores["model"], scores[base], dataset.targets
            )
        report["periods"][name] = {"from": lo, "to": hi if np.isfinite(hi) else None, **scores}
    return report


def _scores(
    preds: list[np.ndarray],
    actuals: list[np.ndarray],
    masks: list[np.ndarray],
    variance: np.ndarray,
) -> dict[str, Any]:
    """ARV, MAE, RMSE overall and per horizon step over the masked cells of every stream."""
    horizon = preds[0].shape[1]
    per_h: list[dict[str, float]] = []
    errs_all = []
    for h in range(horizon):
        errs = np.concatenate(
            [(p[m[:, h], h] - a[m[:, h], h]) for p, a, m in zip(preds, actuals, masks, strict=True)]
        )
        errs_all.append(errs)
        per_h.append(_summary(errs, variance))
    out = _summary(np.concatenate(errs_all), variance)
    out["count"] = int(sum(len(e) for e in errs_all))
    out["per_horizon"] = per_h
    return out


def _next_step_skill(
    model: dict[str, Any], base: dict[str, Any], targets: list[str]
) -> dict[str, float]:
    """Per target, ``1 - MAE_model / MAE_baseline`` at horizon step 1."""
    ours, theirs = (
        model["per_horizon"][0]["mae_per_target"],
        base["per_horizon"][0]["mae_per_target"],
    )
    return {t: 1.0 - m / max(b, 1e-12) for t, m, b in zip(targets, ours, theirs, strict=True)}


def _summary(errs: np.ndarray, variance: np.ndarray) -> dict[str, Any]:
    mse = np.mean(errs**2, axis=0)
    mae = np.mean(np.abs(errs), axis=0)
    return {
        "arv": float(np.mean(mse / variance)),
        "mae": float(np.mean(mae)),
        "rmse": float(np.mean(np.sqrt(mse))),
        "mae_per_target": mae.tolist(),
        "rmse_per_target": np.sqrt(mse).tolist(),
    }


def card_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers for the card: ``<period>.<metric>`` and ``<period>.h<k>.arv``."""
    out: dict[str, float] = {}
    for period, scores in report["periods"].items():
        model = scores["model"]
        for key in ("arv", "mae", "rmse", "skill_persistence", f"skill_ar{report['ar_order']}"):
            out[f"{period}.{key}"] = float(model[key])
        for h, step in enumerate(model["per_horizon"], start=1):
            out[f"{period}.h{h}.arv"] = float(step["arv"])
    return out


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
