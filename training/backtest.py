"""Rolling-origin backtest: for each cut, train on the data before it, test on the window after.

A fold is a cut and a test window ``[cut, end)``. Its model trains on a copy of the table cut
off at the cut (`truncate`), so no reading at or after the cut can reach the scaler, the
loss weights, the validation loss, early stopping or the refit; the validation part is the
last ``val_length`` before the cut. The fold's model is then scored as training scores a
model (`training.evaluate`) on the test window of the data up to ``end``: each stream runs
from its first reading, so forecasts in the window start from the state its earlier readings
built, as the service's would. ARV's variance and the AR baseline come from the fold's own
training part.

Cuts are either given, each fold testing up to the next cut (the last to the end of the
data) unless ``fold_length`` says otherwise, or placed at the end of the data: ``folds``
windows of ``fold_length`` back to back, the last ending one period after the last reading.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.config import TrainConfig
from training.data import Dataset, Splits
from training.errors import TrainingConfigError, TrainingDataError
from training.evaluate import evaluate
from training.summary import baselines, format_cell, target_scores, when
from training.timestamps import SECONDS_PER_YEAR, parse_time
from training.train import TrainResult, prepare_streams, train

__all__ = [
    "Fold",
    "backtest",
    "backtest_lines",
    "mean_over_folds",
    "parse_duration",
    "place_folds",
    "score_fold",
    "train_fold",
    "truncate",
]

log = logging.getLogger(__name__)

_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION_UNITS["y"] = SECONDS_PER_YEAR


@dataclass(frozen=True)
class Fold:
    """One fold, in epoch seconds: training sees rows before `cut`, validation targets are
    in ``[val_start, cut)``, test targets in ``[cut, end)``."""

    cut: float
    end: float
    val_start: float


def parse_duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` or ``20y`` (mean
    Gregorian years); `TrainingConfigError` for anything else or a length <= 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]?)\s*", text.lower())
    if match is None or match.group(2) not in _DURATION_UNITS:
        raise TrainingConfigError(
            f"duration {text!r}: use seconds or a number with a unit, e.g. 15m, 12h, 7d, 2w, 20y"
        )
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise TrainingConfigError(f"duration {text!r} must be longer than zero")
    return seconds


def place_folds(
    dataset: Dataset,
    *,
    cuts: list[str] | None = None,
    folds: int | None = None,
    fold_length: float | None = None,
    val_length: float | None = None,
) -> list[Fold]:
    """The folds: at `cuts` (epoch seconds or ISO-8601, increasing), or `folds` windows of
    `fold_length` seconds ending one period after the last reading. Validation takes the
    `val_length` seconds before each cut (default: the fold's test window length).
    `TrainingConfigError` when a fold would have no training rows or no test readings."""
    ts = dataset.table["ts"].to_numpy()
    first, end_of_data = float(ts.min()), float(ts.max()) + dataset.period
    if cuts and folds is None:
        times = [parse_time(c) for c in cuts]
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise TrainingConfigError(f"--cuts must increase, got {','.join(cuts)}")
        ends = [t + fold_length for t in times] if fold_length else [*times[1:], end_of_data]
    elif folds is not None and fold_length is not None and not cuts:
        times = [end_of_data - k * fold_length for k in range(folds, 0, -1)]
        ends = [t + fold_length for t in times]
    else:
        raise TrainingConfigError("give --cuts, or --folds with --fold-length (not both)")
    out = []
    for i, (cut, end) in enumerate(zip(times, ends, strict=True), start=1):
        val_start = cut - (val_length or end - cut)
        if val_start <= first:
            raise TrainingConfigError(
                f"fold {i} (cut {when(cut)}): its validation part would start at "
                f"{when(val_start)}, at or before the first reading ({when(first)}), leaving "
                "nothing to train on; cut later, or use fewer folds or a shorter --val-length"
            )
        if not ((ts >= cut) & (ts < end)).any():
            raise TrainingConfigError(
                f"fold {i}: no readings in its test window {when(cut)} to {when(end)} "
                f"(the data ends at {when(float(ts.max()))})"
            )
        out.append(Fold(cut, end, val_start))
    return out


def truncate(dataset: Dataset, cut: float) -> Dataset:
    """The rows of `dataset` before `cut`: all a fold may learn from."""
    table = dataset.table[dataset.table["ts"] < cut].reset_index(drop=True)
    return dataclasses.replace(dataset, table=table, fingerprint=f"{dataset.fingerprint}:ts<{cut}")


def train_fold(
    config: TrainConfig, dataset: Dataset, fold: Fold, *, progress: bool = False
) -> TrainResult:
    """Train `config` on the rows of `dataset` before the fold's cut, validating on the last
    part before it."""
    fold_config = config.model_copy(
        update={"val_start": fold.val_start, "test_start": fold.cut, "test_end": None}
    )
    return train(fold_config, dataset=truncate(dataset, fold.cut), progress=progress)


def score_fold(result: TrainResult, dataset: Dataset, fold: Fold) -> dict[str, Any]:
    """The report (`training.evaluate.evaluate`) of a fold's model on the data up to the end
    of its test window: periods ``val`` (in-sample after a refit, and marked so) and ``test``."""
    config = result.config
    seen = truncate(dataset, fold.end)
    streams = prepare_streams(seen.series(), seen, result.scaler, config.horizon)
    report = evaluate(
        result.model,
        seen,
        streams,
        Splits(fold.val_start, fold.cut, fold.end),
        result.scaler,
        ar_order=config.ar_order,
        ar_with_val=config.refit_epochs > 0,
    )
    if config.refit_epochs and "val" in report["periods"]:
        report["periods"]["val"]["note"] = "in-sample: the model was refitted on train+val"
    return report


def backtest(
    config: TrainConfig, dataset: Dataset, folds: list[Fold], *, progress: bool = False
) -> dict[str, Any]:
    """Train and score every fold; the JSON-ready result with each fold's per-target test
    scores and their means over the folds."""
    entries = []
    for i, fold in enumerate(folds, start=1):
        log.info("fold %d of %d: cut %s, test to %s", i, len(folds), when(fold.cut), when(fold.end))
        try:
            result = train_fold(config, dataset, fold, progress=progress)
            report = score_fold(result, dataset, fold)
        except TrainingDataError as exc:
            raise TrainingDataError(f"fold {i} (cut {when(fold.cut)}): {exc}") from exc
        model = report["periods"]["test"]["model"]
        entries.append(
            {
                "fold": i,
                "cut": fold.cut,
                "test_end": fold.end,
                "val_start": fold.val_start,
                "best_epoch": result.best_epoch,
                "epochs": len(result.history),
                "val_loss": result.history[result.best_epoch - 1]["val_loss"]
                if result.best_epoch
                else None,
                **{k: model[k] for k in _overall_keys(report)},
                "targets": target_scores(report, "test"),
                "report": report,
            }
        )
    return {
        "data": dataset.source,
        "fingerprint": dataset.fingerprint,
        "targets": dataset.targets,
        "config": config.model_dump(mode="json"),
        "folds": entries,
        "mean": mean_over_folds(entries),
    }


def mean_over_folds(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Each score's mean over the folds where it is defined, overall and per target; a
    score undefined in some folds names how many it is averaged over in ``defined_folds``."""
    targets: dict[str, dict[str, Any]] = {}
    for target in entries[0]["targets"]:
        rows = [e["targets"][target] for e in entries]
        keys = [k for k in rows[0] if k not in ("count", "undefined")]
        targets[target] = _means(rows, keys)
    overall = _means(entries, [k for k in entries[0] if k.startswith(("arv", "skill_"))])
    return {"folds": len(entries), **overall, "targets": targets}


def backtest_lines(result: dict[str, Any]) -> list[str]:
    """The console table: each fold's test window and per-target test scores, then their
    means over the folds, then the unit-free means over all targets."""
    bases = baselines(result["folds"][0]["report"]["periods"]["test"])
    keys = ["mae", "rmse", "mae_h1", *(f"skill_{b}" for b in bases)]
    heads = ["MAE", "RMSE", "MAE h1", *(f"skill/{b}" for b in bases)]
    spans = [f"{when(f['cut'])} to {when(f['test_end'])}" for f in result["folds"]]
    labels = [f"{f['fold']:>4}  {s}" for f, s in zip(result["folds"], spans, strict=True)]
    mean = result["mean"]
    labels.append(f"mean  over {mean['folds']} folds")
    label_width = max(len(label) for label in labels)
    target_width = max(8, *(len(t) for t in result["targets"]))
    widths = [max(9, len(h)) for h in heads]
    lines = [
        f"{'fold  test window':{label_width}}  {'target':{target_width}}  {'cells':>7}"
        + "".join(f"  {h:>{w}}" for h, w in zip(heads, widths, strict=True))
    ]
    rows = [*(entry["targets"] for entry in result["folds"]), mean["targets"]]
    for label, per_target in zip(labels, rows, strict=True):
        for target, row in per_target.items():
            cells = "".join(
                f"  {format_cell(row[k], k.startswith('skill')):>{w}}"
                for k, w in zip(keys, widths, strict=True)
            )
            count = row.get("count", "")
            lines.append(f"{label:{label_width}}  {target:{target_width}}  {count:>7}{cells}")
            label = ""
    overall = " ".join(
        f"{k}={format_cell(v, k.startswith('skill'))}"
        for k, v in mean.items()
        if k.startswith(("arv", "skill_"))
    )
    lines.append(f"mean over folds, all targets: {overall}")
    return lines


def _overall_keys(report: dict[str, Any]) -> list[str]:
    test = report["periods"]["test"]
    return ["arv", *(f"skill_{b}" for b in baselines(test))]


def _means(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    defined: dict[str, int] = {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
        if len(values) < len(rows):
            defined[key] = len(values)
    if defined:
        out["defined_folds"] = defined
    return out
