"""A report on the console: one headline line, and per period a table of per-target scores.

MAE and RMSE are in each target's own units (kW, °C), so they are shown per target and never
averaged over targets; ARV and the skills are unit-free, so a period also gets their values
over all targets. Reads a report as `training.evaluate.evaluate` writes it; imports neither
torch nor matplotlib.
"""

from __future__ import annotations

import math
from typing import Any

from training.timestamps import iso_time

__all__ = [
    "baselines",
    "format_cell",
    "format_score",
    "headline",
    "summary_lines",
    "target_scores",
    "when",
]

# The per-target columns of `summary_lines`: the key of `target_scores`, and its heading.
_COLUMNS = (
    ("mae", "MAE"),
    ("rmse", "RMSE"),
    ("mae_h1", "MAE h1"),
    ("skill_persistence", "skill/persistence"),
)


def format_score(scores: dict[str, Any], key: str, spec: str) -> str:
    """``scores[key]`` for the console (``key`` may be ``<name>.<target>``): the number in
    format `spec`, or ``undefined (<cause>)``."""
    name, _, target = key.partition(".")
    value = scores[name][target] if target else scores[name]
    if value is not None:
        return format(value, spec)
    reason = scores.get("undefined", {}).get(key, "")
    return f"undefined ({_cause(reason)})" if reason else "undefined"


def baselines(period: dict[str, Any]) -> list[str]:
    """The baselines a period of the report was scored against (``persistence``, ``ar12``)."""
    return [k for k, v in period.items() if isinstance(v, dict) and k != "model"]


def target_scores(report: dict[str, Any], period: str) -> dict[str, dict[str, Any]]:
    """Per target, the model's scores on `period`: ``count`` (cells with an observed actual),
    ``mae``, ``rmse`` (pooled over the horizon steps), ``mae_h1`` (horizon step 1),
    ``skill_<baseline>`` for each baseline (1 - MSE ratio) and
    ``next_step_mae_skill_persistence``; None for an undefined score, whose cause is under
    ``undefined``."""
    scores = report["periods"][period]
    model = scores["model"]
    reasons = model.get("undefined", {})
    out: dict[str, dict[str, Any]] = {}
    for j, target in enumerate(_targets(report)):
        row: dict[str, Any] = {
            "count": model["count_per_target"][j],
            "mae": model["mae_per_target"][j],
            "rmse": model["rmse_per_target"][j],
            "mae_h1": model["per_horizon"][0]["mae_per_target"][j],
        }
        keys = [f"skill_{b}_per_target" for b in baselines(scores)]
        keys.append("next_step_mae_skill_persistence")
        for key in keys:
            name = key.removesuffix("_per_target")
            row[name] = model[key][target]
            if f"{key}.{target}" in reasons:
                row.setdefault("undefined", {})[name] = reasons[f"{key}.{target}"]
        out[target] = row
    return out


def headline(report: dict[str, Any]) -> str:
    """One line of the model's headline scores, ``<period>.<score>=<value>, ...``: ARV,
    each target's MAE and RMSE (``mae[<target>]`` when there are several: their units
    differ), and the skill against each baseline."""
    targets = _targets(report)
    parts = []
    for period, scores in report["periods"].items():
        model = scores["model"]
        parts.append(f"{period}.arv={format_score(model, 'arv', '.4g')}")
        for key in ("mae", "rmse"):
            values = model[f"{key}_per_target"]
            if len(targets) == 1:
                parts.append(f"{period}.{key}={values[0]:.4g}")
            else:
                parts += [
                    f"{period}.{key}[{t}]={v:.4g}" for t, v in zip(targets, values, strict=True)
                ]
        for base in baselines(scores):
            parts.append(f"{period}.skill_{base}={format_score(model, f'skill_{base}', '.4g')}")
    return ", ".join(parts)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Per period: a line of the unit-free scores over all targets (ARV, skills) with the
    period and the cells scored, then a table of each target's MAE, RMSE, step-1 MAE and
    skills, then the causes of any undefined cell."""
    lines = []
    for period, scores in report["periods"].items():
        model = scores["model"]
        bases = baselines(scores)
        overall = " ".join(
            f"{key}={format_score(model, key, '.4f' if key == 'arv' else '.3f')}"
            for key in ("arv", *(f"skill_{b}" for b in bases))
        )
        span = f"{when(scores['from'])} to {when(scores['to']) if scores['to'] else 'the end'}"
        source = report.get("arv_variance_from", "variance_until")
        lines.append(
            f"{period:8} {overall}  ({span}; {model['count']} cells; ARV variance: {source})"
        )
        lines += _target_table(report, period, bases)
    return lines


def when(ts: float) -> str:
    """Epoch seconds as ISO-8601 UTC: ``1921-01-01`` at midnight, else ``2023-11-14T22:13:20Z``."""
    text = iso_time(ts)
    return text.removesuffix("T00:00:00Z")


def _target_table(report: dict[str, Any], period: str, bases: list[str]) -> list[str]:
    rows = target_scores(report, period)
    columns = [*_COLUMNS, *((f"skill_{b}", f"skill/{b}") for b in bases if b != "persistence")]
    columns.append(("next_step_mae_skill_persistence", "MAE h1 skill/persistence"))
    width = max(6, *(len(t) for t in rows))
    counts = max(5, *(len(str(r["count"])) for r in rows.values()))
    indent = " " * 9
    lines = [
        indent
        + f"{'target':{width}}  {'cells':>{counts}}"
        + "".join(f"  {head:>{max(9, len(head))}}" for _, head in columns)
    ]
    missing = []
    for target, row in rows.items():
        cells = []
        for key, head in columns:
            value = row[key]
            if value is None:
                missing.append(f"{target} {head} ({_cause(row['undefined'][key])})")
            signed = key.startswith(("skill", "next_step"))
            cells.append(f"  {format_cell(value, signed):>{max(9, len(head))}}")
        lines.append(indent + f"{target:{width}}  {row['count']:>{counts}}" + "".join(cells))
    if missing:
        lines.append(indent + "n/a: " + ", ".join(missing))
    return lines


def format_cell(value: float | None, signed: bool) -> str:
    """A table cell: a skill signed to 3 decimals, another score to 4 significant digits,
    ``n/a`` for an undefined one."""
    if value is None:
        return "n/a"
    if signed:
        return f"{value:+.3f}"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _cause(reason: str) -> str:
    return reason.partition(":")[0]


def _targets(report: dict[str, Any]) -> list[str]:
    targets: list[str] = report.get("targets") or report["variance"]["targets"]
    return targets
