"""Real-data comparison on La Haute Borne: persistence, statsforecast, LightGBM and a model.

    python -m bench.realdata                      # full run, about 5 min on 2 CPUs
    python -m bench.realdata --quick              # the first week of the test part only
    python -m bench.realdata --model NAME[:VER]   # also score a registry model

The setup is fixed (docs/realdata.md): the built-in ``la-haute-borne`` data, one stream per
turbine cut at its gaps exactly as training cuts it, targets ``P_avg`` (kW) and ``Ot_avg``
(°C), inputs those two plus ``Ws_avg``, ``Ba_avg`` and ``Wa_avg``; train before 2015-07-01,
validation to 2015-10-01, test to 2016-01-01, by target time (UTC); horizon 12 (2 h).

A cell is (reading ``t`` of a segment, step ``h``): the forecast made at ``t`` of the reading
``t + h`` readings later in the same segment. The scored cells are those whose target time is
in the test part and whose actual was observed (not NaN), the cells ``sensorcast evaluate``
scores. MAE is in each target's own units, pooled over the 12 steps, and per step.

Methods, each on those cells:
- persistence: every step repeats the last reading;
- AutoETS and AutoARIMA (statsforecast), per turbine and target, without a season (ETS
  takes none longer than 24; a seasonal ARIMA of period 144 is too slow to fit): fitted once
  on the 4 weeks before the test part, then at every test reading applied, with the fitted
  parameters, to the segment's last 2 days (``forward``), which gives its 12-step forecast;
- LightGBM (`bench.baselines`), one model per target and step on each turbine's own lags and
  rolling statistics, predicting the change from the last reading, early-stopped on the
  validation part;
- with ``--model``: a registry model, scored by `training.pipeline.score_model`, the code
  ``sensorcast evaluate --test-start ... --test-end ...`` runs.

statsforecast and lightgbm are optional (``pip install '.[baselines]'``): without them their
rows are left out with one line saying so. Results are printed and written as JSON, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FEATURES",
    "HORIZON",
    "TARGETS",
    "MethodScores",
    "Segment",
    "actuals",
    "cell_mask",
    "load_segments",
    "main",
    "persistence",
    "score",
]

DATA = "la-haute-borne"
TARGETS = ("P_avg", "Ot_avg")
FEATURES = ("P_avg", "Ot_avg", "Ws_avg", "Ba_avg", "Wa_avg")
HORIZON = 12
VAL_START = "2015-07-01T00:00:00Z"
TEST_START = "2015-10-01T00:00:00Z"
TEST_END = "2016-01-01T00:00:00Z"
_QUICK_DAYS = 7.0


@dataclass(frozen=True)
class Segment:
    """One turbine's readings between two gaps: ``values[t, feature]`` (`FEATURES` order)."""

    stream_id: str
    turbine: str
    ts: np.ndarray
    values: np.ndarray


@dataclass
class MethodScores:
    """A method's MAE per target, pooled over the steps and per step, on the scored cells."""

    method: str
    mae: dict[str, float]
    per_step: dict[str, list[float]]
    cells: dict[str, int]
    seconds: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Forecasts = dict[str, list[np.ndarray]]
"""Per target, per segment: raw forecasts ``[n, HORIZON]`` (NaN where none was made)."""


def cell_mask(ts: np.ndarray, horizon: int, start: float, end: float) -> np.ndarray:
    """``[n, horizon]``: whether cell ``(t, h)`` has a target ``t + 1 + h`` in the segment
    with ``start <= ts < end``."""
    n = len(ts)
    mask = np.zeros((n, horizon), bool)
    for h in range(horizon):
        target = ts[1 + h :]
        mask[: len(target), h] = (target >= start) & (target < end)
    return mask


def actuals(series: np.ndarray, horizon: int) -> np.ndarray:
    """``[n, horizon]``: the reading ``t + 1 + h`` of `series`, NaN past its end."""
    n = len(series)
    out = np.full((n, horizon), np.nan)
    for h in range(horizon):
        out[: max(n - 1 - h, 0), h] = series[1 + h :]
    return out


def persistence(segments: Sequence[Segment], targets: Sequence[str] = TARGETS) -> Forecasts:
    """Every step repeats the last observed reading of the segment (NaN before the first)."""
    out: Forecasts = {t: [] for t in targets}
    for s in segments:
        last = _carried(s.values)
        for t in targets:
            out[t].append(np.repeat(last[:, [FEATURES.index(t)]], HORIZON, axis=1))
    return out


def _carried(values: np.ndarray) -> np.ndarray:
    """`values` with each NaN replaced by the last value before it in its column."""
    seen = np.where(np.isfinite(values), np.arange(len(values))[:, None], -1)
    last = np.maximum.accumulate(seen, axis=0)
    picked = np.take_along_axis(values, np.maximum(last, 0), axis=0)
    return np.where(last >= 0, picked, np.nan)


def score(
    method: str,
    forecasts: Forecasts,
    segments: Sequence[Segment],
    masks: Sequence[np.ndarray],
    seconds: float,
) -> MethodScores:
    """MAE over the cells in `masks` whose actual was observed; a missing forecast on such a
    cell is counted in ``extra["missing"]`` and left out (a method should make none)."""
    mae: dict[str, float] = {}
    per_step: dict[str, list[float]] = {}
    cells: dict[str, int] = {}
    missing: dict[str, int] = {}
    for target, preds in forecasts.items():
        col = FEATURES.index(target)
        errs: list[list[np.ndarray]] = [[] for _ in range(HORIZON)]
        lost = 0
        for seg, pred, mask in zip(segments, preds, masks, strict=True):
            actual = actuals(seg.values[:, col], HORIZON)
            scored = mask & np.isfinite(actual)
            lost += int((scored & ~np.isfinite(pred)).sum())
            scored &= np.isfinite(pred)
            for h in range(HORIZON):
                errs[h].append(np.abs(pred[scored[:, h], h] - actual[scored[:, h], h]))
        steps = [np.concatenate(e) for e in errs]
        pooled = np.concatenate(steps)
        mae[target] = float(pooled.mean()) if len(pooled) else float("nan")
        per_step[target] = [float(e.mean()) if len(e) else float("nan") for e in steps]
        cells[target] = len(pooled)
        missing[target] = lost
    extra = {"missing": missing} if any(missing.values()) else {}
    return MethodScores(method, mae, per_step, cells, seconds, extra=extra)


def load_segments() -> list[Segment]:
    """The built-in table's turbines, cut at gaps as training cuts them (float64 values)."""
    from training.data import load_dataset

    dataset = load_dataset(DATA, features=list(FEATURES), targets=list(TARGETS))
    out = []
    for sid, rows in dataset.table.groupby("stream_id", sort=True):
        out.append(
            Segment(
                str(sid),
                str(sid).split("#")[0],
                rows["ts"].to_numpy(np.float64),
                rows[list(FEATURES)].to_numpy(np.float64),
            )
        )
    return out


def _sensorcast(
    name: str, registry: Path, start: float, end: float
) -> tuple[MethodScores | None, str]:
    """The registry model `name` scored by `score_model` on ``[start, end)``, or why not."""
    from service.errors import SensorcastError
    from service.modelcard import ModelCard
    from service.registry import Registry
    from training.pipeline import score_model

    try:
        ref = Registry(registry).resolve_spec(name)
        card = ModelCard.read(ref.directory)
    except SensorcastError as exc:
        return None, str(exc)
    if card.horizon != HORIZON or not set(TARGETS) <= set(card.targets):
        return (
            None,
            f"{card.ref}: horizon {card.horizon}, targets {card.targets}; needs {HORIZON}, {list(TARGETS)}",
        )
    started = time.perf_counter()
    report = score_model(ref.directory, data_options={"data": DATA}, test_start=start, test_end=end)
    seconds = time.perf_counter() - started
    scores = report["periods"]["test"]
    out: dict[str, MethodScores] = {}
    for label in ("model", "persistence"):
        part = scores[label]
        pick = [card.targets.index(t) for t in TARGETS]
        out[label] = MethodScores(
            card.ref if label == "model" else "persistence (score_model)",
            {t: float(part["mae_per_target"][i]) for t, i in zip(TARGETS, pick, strict=True)},
            {
                t: [float(s["mae_per_target"][i]) for s in part["per_horizon"]]
                for t, i in zip(TARGETS, pick, strict=True)
            },
            {t: int(part["count_per_target"][i]) for t, i in zip(TARGETS, pick, strict=True)},
            seconds,
        )
    model = out["model"]
    model.extra["persistence_on_its_cells"] = out["persistence"].mae
    return model, ""


def _print_tables(rows: Sequence[MethodScores]) -> None:
    print(
        f"\n{'method':<28} {'P_avg MAE kW':>13} {'Ot_avg MAE °C':>14} {'Ot_avg step-1':>14} {'seconds':>8}"
    )
    for r in rows:
        print(
            f"{r.method:<28} {r.mae['P_avg']:>13.1f} {r.mae['Ot_avg']:>14.3f} "
            f"{r.per_step['Ot_avg'][0]:>14.3f} {r.seconds:>8.0f}"
        )
    for target, fmt in (("P_avg", "{:>6.1f}"), ("Ot_avg", "{:>6.3f}")):
        print(f"\n{target} MAE per step (10 min each)")
        print(f"{'method':<28} " + " ".join(f"{h:>6}" for h in range(1, HORIZON + 1)))
        for r in rows:
            print(f"{r.method:<28} " + " ".join(fmt.format(v) for v in r.per_step[target]))


def _run(
    label: str, make: Callable[[], Forecasts], segments: list[Segment], masks: list[np.ndarray]
) -> MethodScores:
    started = time.perf_counter()
    forecasts = make()
    scores = score(label, forecasts, segments, masks, time.perf_counter() - started)
    print(f"{label}: {scores.seconds:.0f} s", flush=True)
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.realdata",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    parser.add_argument("--quick", action="store_true", help="score the first week of test only")
    parser.add_argument("--model", help="also score this registry model (NAME or NAME:VERSION)")
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/realdata.json"),
        help="JSON results (default: runs/realdata.json)",
    )
    args = parser.parse_args(argv)

    from training.errors import TrainingDataError
    from training.timestamps import parse_time

    try:
        segments = load_segments()
    except TrainingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    val_start, start = parse_time(VAL_START), parse_time(TEST_START)
    end = start + _QUICK_DAYS * 86400 if args.quick else parse_time(TEST_END)
    masks = [cell_mask(s.ts, HORIZON, start, end) for s in segments]
    print(
        f"{DATA}: {len(segments)} segments of {len({s.turbine for s in segments})} turbines; "
        f"{sum(int(m.sum()) for m in masks):,} test cells per target, targets by time in "
        f"[{TEST_START}, {TEST_END if not args.quick else f'+{_QUICK_DAYS:g} days'})",
        flush=True,
    )
    rows = [_run("persistence", lambda: persistence(segments), segments, masks)]
    try:
        from bench import baselines
    except ImportError as exc:
        missing = (exc.name or "statsforecast or lightgbm").split(".")[0]
        print(f"baseline rows skipped: {missing} is not installed; pip install '.[baselines]'")
    else:
        for kind in ("AutoETS", "AutoARIMA"):
            fit = partial(baselines.statsforecast_forecasts, segments, masks, kind, start)
            rows.append(_run(kind, fit, segments, masks))
        rounds = 100 if args.quick else 1000
        fit = partial(baselines.lightgbm_forecasts, segments, masks, val_start, start, rounds)
        rows.append(_run("LightGBM (change)", fit, segments, masks))
    if args.model:
        model, why = _sensorcast(args.model, args.registry, start, end)
        if model is None:
            print(f"sensorcast row skipped: {why}")
        else:
            rows.append(model)
    _print_tables(rows)
    result = {
        "data": DATA,
        "setup": {
            "targets": TARGETS,
            "features": FEATURES,
            "horizon": HORIZON,
            "val_start": VAL_START,
            "test_start": TEST_START,
            "test_end": TEST_END if not args.quick else end,
            "quick": args.quick,
        },
        "methods": [asdict(r) for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
