"""`sensorcast train` on tables that used to end in a traceback or in nonsense scores:
timestamps in milliseconds, a constant target."""

from __future__ import annotations

import json
import logging
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


def _boilers(path: Path, *, ts_factor: int = 1) -> Path:
    """Two boilers read every 5 minutes for 10 hours from 2023-11-14T22:13:20Z: a moving
    temperature and a setpoint nobody touched (14.62 throughout)."""
    n = 120
    seconds = 1_700_000_000 + 300 * np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(7)
    parts = [
        pd.DataFrame(
            {
                "stream_id": sid,
                "ts": seconds * ts_factor,
                "temp": 60.0 + 4.0 * np.sin(np.arange(n) / 8.0 + k) + rng.normal(0, 0.2, n),
                "setpoint": 14.62,
            }
        )
        for k, sid in enumerate(("boiler-1", "boiler-2"))
    ]
    pd.concat(parts).to_csv(path, index=False)
    return path


def test_millisecond_stamps_are_refused_in_one_line(tmp_path: Path) -> None:
    data = _boilers(tmp_path / "boilers.csv", ts_factor=1000)
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", "--data", str(data), *TINY,
         "--registry", str(tmp_path / "models")],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("sensorcast: error: ")
    assert "looks like epoch milliseconds" in line and "--ts-unit ms" in line
    assert not (tmp_path / "models").exists()  # no half-made model left behind


def test_millisecond_stamps_train_with_ts_unit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = _boilers(tmp_path / "boilers.csv", ts_factor=1000)
    argv = ["train", "--data", str(data), "--targets", "temp", "--ts-unit", "ms", *TINY]
    assert main([*argv, "--name", "boilers", "--registry", str(tmp_path)]) == 0
    model_dir = tmp_path / "boilers" / "1"
    card = json.loads((model_dir / "card.json").read_text())
    assert card["period"] == 300.0
    assert card["provenance"]["config"]["ts_unit"] == "ms"
    val_start = card["provenance"]["splits"]["val_start"]
    assert 1_700_000_000 < val_start < 1_700_000_000 + 120 * 300  # a boundary in seconds
    assert (model_dir / "forecast.png").stat().st_size > 0
    capsys.readouterr()
    # Re-scoring rebuilds the data from the card's config, milliseconds included.
    assert main(["evaluate", str(model_dir)]) == 0
    assert "test" in capsys.readouterr().out


def test_constant_target_warns_and_reports_undefined_scores(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    data = _boilers(tmp_path / "boilers.csv")
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--data", str(data), "--targets", "setpoint", *TINY,
                     "--name", "setpoint", "--registry", str(tmp_path)]) == 0  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "target 'setpoint' is constant on the training part (14.62 in every row): nothing to "
        "learn, and scores dividing by its variance may be undefined"
    ]
    out = capsys.readouterr().out
    assert "test.arv=undefined (constant target)" in out
    assert "test.skill_persistence=undefined (constant target)" in out

    model_dir = tmp_path / "setpoint" / "1"
    model = json.loads((model_dir / "report.json").read_text())["periods"]["test"]["model"]
    assert model["arv"] is None and model["skill_persistence"] is None
    assert model["undefined"]["arv"].startswith("constant target: 'setpoint' is 14.62")
    metrics = json.loads((model_dir / "card.json").read_text())["metrics"]
    assert "test.arv" not in metrics and "test.mae" in metrics
    assert max(abs(v) for v in metrics.values()) < 1e6

    assert main(["evaluate", str(model_dir)]) == 0
    assert "arv=undefined (constant target)" in capsys.readouterr().out
