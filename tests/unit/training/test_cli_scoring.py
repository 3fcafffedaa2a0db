"""`sensorcast evaluate MODEL --data --test-start --test-end` and `sensorcast backtest`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.cli import main

TINY = [
    "--hidden", "6", "--layers", "1", "--horizon", "2", "--epochs", "1", "--chunk", "20",
    "--burn-in", "2", "--ar-order", "2", "--no-progress",
]  # fmt: skip
START = 1_700_000_000  # 2023-11-14T22:13:20Z


def _plant(path: Path, steps: range) -> Path:
    """Two plants read every 10 minutes: power in kW (hundreds) and a temperature in °C."""
    t = np.asarray(steps)
    parts = [
        pd.DataFrame(
            {
                "stream_id": sid,
                "ts": START + 600 * t,
                "kw": 500.0 + 200.0 * np.sin(t / 6.0 + k),
                "degc": 20.0 + 3.0 * np.cos(t / 9.0 + k),
            }
        )
        for k, sid in enumerate(("plant-1", "plant-2"))
    ]
    pd.concat(parts).to_csv(path, index=False)
    return path


def _iso(step: int) -> str:
    return pd.Timestamp(START + 600 * step, unit="s").isoformat()


def _fails_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, lines
    assert lines[0].startswith("sensorcast: error:") and match in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on steps 0-159 of the plants (test part from step 136)."""
    root = tmp_path_factory.mktemp("scoring")
    data = _plant(root / "plant.csv", range(160))
    argv = ["train", "--data", str(data), *TINY, "--name", "plant", "--registry", str(root)]
    assert main(argv) == 0
    return root


def test_evaluate_scores_any_period_of_new_data_and_leaves_the_model_alone(
    capsys: pytest.CaptureFixture[str], trained: Path
) -> None:
    model_dir = trained / "plant" / "1"
    before = (model_dir / "report.json").read_bytes()
    later = _plant(trained / "later.csv", range(160, 260))  # no training rows in it
    out = trained / "later-report.json"
    capsys.readouterr()
    argv = [
        "evaluate", "plant", "--registry", str(trained), "--data", str(later),
        "--test-start", _iso(180), "--test-end", _iso(240), "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"plant:1 on {later}"
    assert lines[1].startswith("test     arv=") and "ARV variance: scaler" in lines[1]
    assert "skill_ar2" not in lines[1]  # no training rows to fit the AR baseline on
    assert [line.split()[0] for line in lines[3:5]] == ["kw", "degc"]
    assert lines[-1] == f"wrote {out}"
    assert (model_dir / "report.json").read_bytes() == before

    report = json.loads(out.read_text())
    assert list(report["periods"]) == ["test"]
    test = report["periods"]["test"]
    assert (test["from"], test["to"]) == (START + 600 * 180, START + 600 * 240)
    # Targets at steps 180..239 of two streams, two horizon steps each.
    assert test["model"]["count_per_target"] == [240, 240]
    assert report["scored"]["same_data_as_training"] is False
    assert report["arv_variance_from"] == "scaler" and report["ar_fitted_on"] is None


def test_evaluate_on_the_training_file_scores_like_training(
    capsys: pytest.CaptureFixture[str], trained: Path
) -> None:
    model_dir = trained / "plant" / "1"
    card = json.loads((model_dir / "card.json").read_text())
    test_start = card["provenance"]["splits"]["test_start"]
    assert main(["evaluate", str(trained / "plant"), "--test-start", str(test_start)]) == 0
    out = capsys.readouterr().out
    assert "ARV variance: train" in out and "skill_ar2=" in out
    # The card's own test part, scored by the override path, gives the training report's.
    trained_report = json.loads((model_dir / "report.json").read_text())
    assert main(["evaluate", str(model_dir), "--test-start", str(test_start), "--out",
                 str(trained / "again.json")]) == 0  # fmt: skip
    again = json.loads((trained / "again.json").read_text())
    assert again["periods"]["test"]["model"] == trained_report["periods"]["test"]["model"]
    assert again["scored"]["same_data_as_training"] is True


def test_evaluate_bad_arguments_give_one_line(
    capsys: pytest.CaptureFixture[str], trained: Path
) -> None:
    reg = ["--registry", str(trained)]
    _fails_with_one_line(capsys, ["evaluate", "nope", *reg], "no model 'nope'")
    _fails_with_one_line(capsys, ["evaluate", "plant", *reg, "--test-start", "someday"], "someday")
    _fails_with_one_line(
        capsys, ["evaluate", "plant", *reg, "--data", str(trained / "none.csv")], "no such file"
    )
    _fails_with_one_line(
        capsys, ["evaluate", "plant", *reg, "--test-start", "2400-01-01"], "no forecast falls in"
    )
    _fails_with_one_line(
        capsys,
        ["evaluate", "plant", *reg, "--test-start", _iso(150), "--test-end", _iso(140)],
        "must start before it ends",
    )
    wrong = trained / "wrong.csv"
    pd.read_csv(_plant(wrong, range(10))).drop(columns="degc").to_csv(wrong, index=False)
    _fails_with_one_line(capsys, ["evaluate", "plant", *reg, "--data", str(wrong)], "degc")


def test_backtest_prints_each_fold_and_the_mean_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = _plant(tmp_path / "plant.csv", range(200))
    out = tmp_path / "bt.json"
    argv = ["backtest", "--data", str(data), *TINY, "--folds", "2", "--fold-length", "3h",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["fold", "test", "window", "target", "cells"]
    assert [line.split()[0] for line in lines[1:7]] == ["1", "degc", "2", "degc", "mean", "degc"]
    assert lines[-1] == f"wrote {out}"
    result = json.loads(out.read_text())
    assert [f["fold"] for f in result["folds"]] == [1, 2]
    assert result["folds"][1]["cut"] - result["folds"][0]["cut"] == 3 * 3600
    assert set(result["mean"]["targets"]) == {"kw", "degc"}


def test_backtest_bad_arguments_give_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = str(_plant(tmp_path / "plant.csv", range(200)))
    _fails_with_one_line(capsys, ["backtest", "--data", data, "--folds", "2"], "--fold-length")
    _fails_with_one_line(
        capsys, ["backtest", "--data", data, "--folds", "2", "--fold-length", "3x"], "'3x'"
    )
    _fails_with_one_line(
        capsys, ["backtest", "--data", data, "--cuts", f"{_iso(150)},{_iso(120)}"], "increase"
    )
    _fails_with_one_line(
        capsys,
        ["backtest", "--data", data, "--folds", "5", "--fold-length", "6h"],
        "nothing to train on",
    )


def test_help_explains_the_new_options() -> None:
    def help_of(command: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", command, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    evaluate = help_of("evaluate")
    for option in ("--data", "--test-start", "--test-end", "--out", "--fill", "--registry"):
        assert option in evaluate
    assert "data and period to score (each left out: the card's)" in evaluate
    assert "(default: fail on one)" not in evaluate  # the card's option applies, not the field's
    backtest = help_of("backtest")
    for option in ("--cuts", "--folds", "--fold-length", "--val-length", "--kind", "--epochs"):
        assert option in backtest
    for option in ("--val-start", "--test-start", "--registry", "--name"):
        assert f"\n  {option}" not in backtest  # a backtest places its own splits
