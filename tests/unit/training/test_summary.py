"""The console text of a report: per-target MAE and RMSE, never averaged over units."""

from __future__ import annotations

from typing import Any

from training.summary import headline, summary_lines, target_scores, when


def _report() -> dict[str, Any]:
    """A two-target report as `training.evaluate.evaluate` writes it (test period only)."""
    model = {
        "arv": 0.25,
        "mae": 50.5,
        "rmse": 60.5,
        "mae_per_target": [100.0, 1.0],
        "rmse_per_target": [120.0, 1.0],
        "count": 30,
        "count_per_target": [30, 28],
        "per_horizon": [{"arv": 0.2, "mae_per_target": [80.0, 0.5]}],
        "skill_persistence": 0.4,
        "skill_persistence_per_target": {"kw": 0.5, "degc": None},
        "next_step_mae_skill_persistence": {"kw": 0.2, "degc": None},
        "skill_ar12": 0.1,
        "skill_ar12_per_target": {"kw": 0.15, "degc": -0.05},
        "next_step_mae_skill_ar12": {"kw": 0.1, "degc": 0.0},
        "undefined": {
            "skill_persistence_per_target.degc": "exact baseline: persistence's RMSE ...",
            "next_step_mae_skill_persistence.degc": "exact baseline: persistence's MAE ...",
        },
    }
    period = {"from": 1_700_000_000.0, "to": None, "model": model, "persistence": {}, "ar12": {}}
    return {
        "targets": ["kw", "degc"],
        "variance": {"targets": ["kw", "degc"], "value": [1e4, 4.0], "rows": "..."},
        "arv_variance_from": "train",
        "ar_order": 12,
        "periods": {"test": period},
    }


def test_target_scores_gather_each_targets_row() -> None:
    rows = target_scores(_report(), "test")
    assert rows["kw"] == {
        "count": 30,
        "mae": 100.0,
        "rmse": 120.0,
        "mae_h1": 80.0,
        "skill_persistence": 0.5,
        "skill_ar12": 0.15,
        "next_step_mae_skill_persistence": 0.2,
    }
    assert rows["degc"]["skill_persistence"] is None
    assert rows["degc"]["undefined"]["skill_persistence"].startswith("exact baseline")


def test_headline_names_each_targets_mae_and_never_their_mean() -> None:
    line = headline(_report())
    assert "test.mae[kw]=100, test.mae[degc]=1," in line
    assert "test.rmse[kw]=120, test.rmse[degc]=1," in line
    assert "50.5" not in line and "60.5" not in line  # the unit-mixing means
    assert line.startswith("test.arv=0.25,") and line.endswith("test.skill_ar12=0.1")


def test_summary_is_a_table_of_targets_with_the_undefined_cells_explained() -> None:
    lines = summary_lines(_report())
    assert lines[0].startswith("test     arv=0.2500 skill_persistence=0.400 skill_ar12=0.100")
    assert f"({when(1_700_000_000.0)} to the end; 30 cells; ARV variance: train)" in lines[0]
    header, kw, degc, note = lines[1:]
    assert header.split() == [
        "target", "cells", "MAE", "RMSE", "MAE", "h1", "skill/persistence", "skill/ar12",
        "MAE", "h1", "skill/persistence",
    ]  # fmt: skip
    assert kw.split() == ["kw", "30", "100", "120", "80", "+0.500", "+0.150", "+0.200"]
    assert degc.split() == ["degc", "28", "1", "1", "0.5", "n/a", "-0.050", "n/a"]
    assert note.split(": ", 1)[1] == (
        "degc skill/persistence (exact baseline), degc MAE h1 skill/persistence (exact baseline)"
    )
    # every column lines up under its heading
    assert len({len(header), len(kw), len(degc)}) == 1


def test_when_shows_dates_without_a_midnight_time() -> None:
    assert when(-7_857_648_000.0) == "1721-01-01"
    assert when(1_700_000_000.0) == "2023-11-14T22:13:20Z"
