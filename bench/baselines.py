"""The statsforecast and LightGBM forecasters of `bench.realdata` (needs ``.[baselines]``).

Both return raw forecasts ``[n, horizon]`` per target and segment, made at every reading
that has a scored cell (NaN elsewhere). Importing this module raises ImportError when
statsforecast or lightgbm is missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from statsforecast.models import AutoARIMA, AutoETS

from bench.realdata import FEATURES, HORIZON, TARGETS, Segment, actuals, cell_mask

__all__ = ["lightgbm_forecasts", "statsforecast_forecasts"]

FIT_READINGS = 4 * 7 * 144
"""statsforecast fits on each turbine's last 4 weeks of readings before the test part."""
WINDOW = 2 * 144
"""...and forecasts from each reading by filtering the segment's last 2 days with the fitted
parameters (`forward`): enough for the low-order models AutoETS and AutoARIMA pick here."""
_MIN_WINDOW = 24  # fewer readings since a gap: the forecast is the last reading
_LAGS = (1, 2, 3, 6, 12, 36, 144)
_ROLLING = (6, 36, 144)
TRAIN_STRIDE = 4
"""LightGBM trains on every 4th training origin: neighbours 10 minutes apart add little."""


def statsforecast_forecasts(
    segments: Sequence[Segment], masks: Sequence[np.ndarray], kind: str, test_start: float
) -> dict[str, list[np.ndarray]]:
    """AutoETS or AutoARIMA (`kind`) per turbine and target, no season, fitted once and
    applied at every reading that has a scored cell; two turbine-target jobs at a time."""
    jobs = [
        (kind, target, [(s, m) for s, m in zip(segments, masks, strict=True) if s.turbine == t])
        for t in sorted({s.turbine for s in segments})
        for target in TARGETS
    ]
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        done = list(pool.map(_statsforecast_job, jobs, [test_start] * len(jobs)))
    out: dict[str, list[np.ndarray]] = {t: [] for t in TARGETS}
    by_id = {
        (target, seg.stream_id): pred
        for (_, target, pairs), preds in zip(jobs, done, strict=True)
        for (seg, _), pred in zip(pairs, preds, strict=True)
    }
    for target in TARGETS:
        out[target] = [by_id[target, s.stream_id] for s in segments]
    return out


def _statsforecast_job(
    job: tuple[str, str, list[tuple[Segment, np.ndarray]]], test_start: float
) -> list[np.ndarray]:
    kind, target, pairs = job
    col = FEATURES.index(target)
    history = np.concatenate([s.values[s.ts < test_start, col] for s, _ in pairs])
    model: Any = (AutoETS if kind == "AutoETS" else AutoARIMA)(season_length=1)
    model = model.fit(history[-FIT_READINGS:])
    preds = []
    for seg, mask in pairs:
        y = seg.values[:, col]
        pred = np.full((len(y), HORIZON), np.nan)
        for t in np.nonzero(mask.any(axis=1))[0].tolist():
            window = y[max(0, t + 1 - WINDOW) : t + 1]
            if len(window) < _MIN_WINDOW:
                pred[t] = y[t]
                continue
            pred[t] = model.forward(y=window, h=HORIZON)["mean"]
        preds.append(pred)
    return preds


def _features(seg: Segment) -> np.ndarray:
    """``[n, k]`` at each reading: every input's value, its change over each of `_LAGS`
    readings, and its last `_ROLLING` readings' mean (less the value) and std."""
    frame = pd.DataFrame(seg.values, columns=list(FEATURES))
    cols: list[pd.Series] = []
    for name in FEATURES:
        v = frame[name]
        cols.append(v)
        cols += [v - v.shift(k) for k in _LAGS]
        for w in _ROLLING:
            roll = v.rolling(w, min_periods=1)
            cols += [roll.mean() - v, roll.std()]
    return np.column_stack([c.to_numpy(np.float64) for c in cols]).astype(np.float32)


def lightgbm_forecasts(
    segments: Sequence[Segment],
    masks: Sequence[np.ndarray],
    val_start: float,
    test_start: float,
    max_rounds: int = 1000,
) -> dict[str, list[np.ndarray]]:
    """One LightGBM model per target and step, pooled over turbines, predicting the change
    from the last reading; trained on the cells whose target is in the train part, stopped
    early on the validation part's MAE."""
    feats = [_features(s) for s in segments]
    train = [cell_mask(s.ts, HORIZON, -np.inf, val_start) for s in segments]
    for m in train:
        m[np.arange(len(m)) % TRAIN_STRIDE != 0] = False
    val = [cell_mask(s.ts, HORIZON, val_start, test_start) for s in segments]
    params = {
        "objective": "l1",
        "learning_rate": 0.1,
        "num_leaves": 31,
        "max_bin": 63,
        "min_data_in_leaf": 200,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.5,
        "bagging_freq": 1,
        "num_threads": min(2, os.cpu_count() or 1),
        "verbosity": -1,
        "seed": 0,
    }
    out: dict[str, list[np.ndarray]] = {}
    for target in TARGETS:
        col = FEATURES.index(target)
        change = [actuals(s.values[:, col], HORIZON) - s.values[:, [col]] for s in segments]
        preds = [np.full((len(s.ts), HORIZON), np.nan) for s in segments]
        for h in range(HORIZON):
            x_train, y_train = _rows(feats, change, train, h)
            x_val, y_val = _rows(feats, change, val, h)
            booster = lgb.train(
                params,
                lgb.Dataset(x_train, y_train),
                num_boost_round=max_rounds,
                valid_sets=[lgb.Dataset(x_val, y_val)],
                callbacks=[lgb.early_stopping(30, verbose=False)],
            )
            for seg, f, m, p in zip(segments, feats, masks, preds, strict=True):
                at = m[:, h]
                if at.any():
                    p[at, h] = seg.values[at, col] + booster.predict(
                        f[at], num_iteration=booster.best_iteration
                    )
        out[target] = preds
    return out


def _rows(
    feats: list[np.ndarray], change: list[np.ndarray], parts: list[np.ndarray], h: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features and step-`h` changes of the cells in `parts` with an observed actual."""
    keep = [p[:, h] & np.isfinite(c[:, h]) for p, c in zip(parts, change, strict=True)]
    x = np.concatenate([f[k] for f, k in zip(feats, keep, strict=True)])
    return x, np.concatenate([c[k, h] for c, k in zip(change, keep, strict=True)])
