from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from service.modelcard import StateSpec
from training.data import Splits, fit_scaler, load_dataset
from training.evaluate import (
    arv,
    card_metrics,
    evaluate,
    fit_ar,
    headline,
    persistence_forecast,
    predict_ar,
)
from training.models import Forecaster, ModelConfig, build_model
from training.plots import plot_forecasts, plot_losses
from training.train import prepare_streams


class Persistence(Forecaster):
    """Forecasts the current (scaled) reading for every horizon step."""

    def __init__(self, horizon: int) -> None:
        super().__init__()
        self.config = ModelConfig(
            kind="rnn", n_features=1, n_targets=1, horizon=horizon, hidden=1, layers=1
        )

    def state_specs(self) -> list[StateSpec]:
        return [StateSpec(name="h", shape=(1, 1), batch_axis=1)]

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        return x[:, :, None, :].expand(-1, -1, self.config.horizon, -1), states[0]


def test_arv_mae_rmse_by_hand() -> None:
    assert arv(np.array([1.0, 2.0]), np.array([0.0, 0.0]), variance=2.5) == pytest.approx(1.0)


def test_persistence_forecast_repeats_the_last_reading() -> None:
    x = np.array([[1.0, 10.0], [2.0, 20.0]], np.float32)
    out = persistence_forecast(x, [1], horizon=3)
    assert out.shape == (2, 3, 1)
    assert out[:, :, 0].tolist() == [[10.0] * 3, [20.0] * 3]


def test_ar_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    x = np.zeros(n)
    for t in range(2, n):
        x[t] = 0.1 + 0.6 * x[t - 1] - 0.3 * x[t - 2] + 0.01 * rng.standard_normal()
    inputs = [x[:, None].astype(np.float32)]
    targets = [np.concatenate([x[1:], [0.0]])[:, None, None].astype(np.float32)]
    masks = [np.r_[np.ones(n - 1, bool), False][:, None]]
    coef = fit_ar(inputs, targets, masks, [0], order=2)
    np.testing.assert_allclose(coef[0, 0], [0.1, 0.6, -0.3], atol=0.02)
    pred = predict_ar(inputs[0], coef, [0])
    assert pred[10, 0, 0] == pytest.approx(coef[0, 0] @ [1.0, x[10], x[9]], rel=1e-5)


def test_evaluate_scores_against_hand_computed_values(tmp_path: Path) -> None:
    values = np.array([0.0, 1.0, 3.0, 2.0, 4.0, 8.0, 5.0, 7.0, 6.0, 9.0])
    path = tmp_path / "s.csv"
    pd.DataFrame({"stream_id": "a", "ts": np.arange(10.0), "v": values}).to_csv(path, index=False)
    data = load_dataset(str(path))
    splits = Splits(val_start=5.0, test_start=7.0)
    scaler = fit_scaler(data, splits)
    streams = prepare_streams(data.series(), data, scaler, horizon=2)
    report = evaluate(Persistence(2), data, streams, splits, scaler, ar_order=1)

    variance = values[:5].var()  # ARV's variance: the training rows, ts < val_start
    assert report["variance"]["value"] == pytest.approx([variance])
    assert report["arv_variance_from"] == "train"
    test = report["periods"]["test"]
    # Targets at t = 7, 8, 9. Horizon 1 from origins 6, 7, 8; horizon 2 from origins 5, 6, 7.
    e1 = values[[6, 7, 8]] - values[[7, 8, 9]]
    e2 = values[[5, 6, 7]] - values[[7, 8, 9]]
    model = test["model"]
    assert model["per_horizon"][0]["arv"] == pytest.approx(np.mean(e1**2) / variance, rel=1e-5)
    assert model["per_horizon"][1]["arv"] == pytest.approx(np.mean(e2**2) / variance, rel=1e-5)
    both = np.concatenate([e1, e2])
    assert model["arv"] == pytest.approx(np.mean(both**2) / variance, rel=1e-5)
    assert model["mae"] == pytest.approx(np.mean(np.abs(both)), rel=1e-5)
    assert model["rmse"] == pytest.approx(np.sqrt(np.mean(both**2)), rel=1e-5)
    assert model["count"] == 6
    # The model is persistence, so it has no skill over persistence.
    assert test["persistence"]["arv"] == pytest.approx(model["arv"], rel=1e-5)
    assert model["skill_persistence"] == pytest.approx(0.0, abs=1e-5)
    assert model["skill_ar1"] == pytest.approx(1 - model["arv"] / test["ar1"]["arv"], rel=1e-5)
    assert model["next_step_mae_skill_persistence"] == {"v": pytest.approx(0.0, abs=1e-6)}
    mae_ar1 = test["ar1"]["per_horizon"][0]["mae_per_target"][0]
    assert model["next_step_mae_skill_ar1"]["v"] == pytest.approx(
        1 - np.mean(np.abs(e1)) / mae_ar1, rel=1e-5
    )

    metrics = card_metrics(report)
    assert metrics["test.arv"] == model["arv"]
    assert metrics["test.h2.arv"] == model["per_horizon"][1]["arv"]
    assert {"val.arv", "test.skill_persistence", "test.skill_ar1"} <= set(metrics)
    # the one-step RMSE per target, from which the service's anomaly scale starts
    assert metrics["test.h1.rmse.v"] == pytest.approx(float(np.sqrt(np.mean(e1**2))), rel=1e-5)


def test_variance_until_and_extra_periods(tmp_path: Path) -> None:
    values = np.arange(20.0) % 7
    path = tmp_path / "s.csv"
    pd.DataFrame({"stream_id": "a", "ts": np.arange(20.0), "v": values}).to_csv(path, index=False)
    data = load_dataset(str(path))
    splits = Splits(val_start=8.0, test_start=12.0, test_end=15.0)
    scaler = fit_scaler(data, splits)
    streams = prepare_streams(data.series(), data, scaler, horizon=1)
    report = evaluate(
        Persistence(1),
        data,
        streams,
        splits,
        scaler,
        extra_tests={"late": (15.0, 20.0)},
        variance_until=10.0,
        ar_order=2,
    )
    assert report["variance"]["value"] == pytest.approx([values[:10].var()])
    assert report["periods"]["late"]["model"]["count"] == 5
    assert report["periods"]["test"]["model"]["count"] == 3


def test_plots_are_written(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.9},
    ]
    loss = plot_losses(history, tmp_path / "loss.png", refit=[{"epoch": 1, "train_loss": 0.7}])
    ts = np.arange(50.0)
    fc = plot_forecasts(
        ts,
        np.sin(ts)[:, None],
        np.sin(ts)[:, None, None].repeat(2, 1),
        {"test": (40.0, None)},
        tmp_path / "f.png",
        title="t",
    )
    for path in (loss, fc):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- undefined scores -----------------------------------------------------------------------------


def _untrained_lstm(n_features: int, horizon: int) -> Forecaster:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            kind="lstm", n_features=n_features, n_targets=1, horizon=horizon, hidden=4, layers=1
        )
    )
    return model.eval()


def _scores(tree: Any) -> Iterator[float]:
    """Every number in a report's periods but their boundaries (epoch seconds)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in ("from", "to"):
                yield from _scores(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _scores(value)
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield float(tree)


def test_constant_target_leaves_arv_and_skills_undefined_with_the_reason(tmp_path: Path) -> None:
    n = 60
    path = tmp_path / "press.csv"
    pd.DataFrame(
        {
            "stream_id": "press-7",
            "ts": 1_700_000_000 + 60 * np.arange(n),
            "temp": 60.0 + 4.0 * np.sin(np.arange(n) / 5.0),
            "setpoint": 14.62,
        }
    ).to_csv(path, index=False)
    data = load_dataset(str(path), targets=["setpoint"])
    splits = Splits(val_start=1_700_000_000 + 60 * 36, test_start=1_700_000_000 + 60 * 48)
    scaler = fit_scaler(data, splits)
    streams = prepare_streams(data.series(), data, scaler, horizon=2)
    report = evaluate(_untrained_lstm(2, 2), data, streams, splits, scaler, ar_order=1)

    test = report["periods"]["test"]
    model = test["model"]
    constant = (
        "constant target: 'setpoint' is 14.62 in every training row (ts < 1700002160); "
        "ARV divides by the variance"
    )
    for scores in (model, test["persistence"], test["ar1"], *model["per_horizon"]):
        assert scores["arv"] is None
        assert scores["undefined"]["arv"] == constant
    assert model["skill_persistence"] is None and model["skill_ar1"] is None
    assert model["undefined"]["skill_persistence"] == constant
    assert model["next_step_mae_skill_persistence"] == {"setpoint": None}
    assert model["undefined"]["next_step_mae_skill_persistence.setpoint"].startswith(
        "exact baseline: persistence's next-step MAE for 'setpoint'"
    )
    assert model["mae"] > 0.0  # an untrained model misses: the MAE is defined all the same
    assert max(abs(v) for v in _scores(report["periods"])) < 1e6

    metrics = card_metrics(report)
    assert {"test.mae", "test.rmse", "val.mae"} <= set(metrics)
    assert not [k for k in metrics if "arv" in k or "skill" in k]
    line = headline(report)
    assert "test.arv=undefined (constant target)" in line
    assert "test.skill_persistence=undefined (constant target)" in line
    assert f"test.mae={model['mae']:.4g}" in line


def test_skill_is_undefined_where_the_baseline_is_exact(tmp_path: Path) -> None:
    # A valve that modulates, then stays shut through the test part: persistence is exact
    # there, so nothing divides by its error; the AR(1) baseline still misses and is scored.
    n = 60
    position = np.where(np.arange(n) < 44, 40.0 + 30.0 * np.sin(np.arange(n) / 3.0), 5.0)
    path = tmp_path / "valve.csv"
    pd.DataFrame(
        {"stream_id": "valve-3", "ts": 1_700_000_000 + 60 * np.arange(n), "position": position}
    ).to_csv(path, index=False)
    data = load_dataset(str(path))
    splits = Splits(val_start=1_700_000_000 + 60 * 30, test_start=1_700_000_000 + 60 * 46)
    scaler = fit_scaler(data, splits)
    streams = prepare_streams(data.series(), data, scaler, horizon=1)
    report = evaluate(_untrained_lstm(1, 1), data, streams, splits, scaler, ar_order=1)

    test = report["periods"]["test"]
    model = test["model"]
    assert test["persistence"]["arv"] == 0.0
    assert model["arv"] > 0.0
    assert model["skill_persistence"] is None
    assert model["undefined"]["skill_persistence"].startswith(
        "exact baseline: persistence's ARV on this period is 0"
    )
    assert model["next_step_mae_skill_persistence"] == {"position": None}
    assert model["skill_ar1"] == pytest.approx(1 - model["arv"] / test["ar1"]["arv"])
    assert "skill_ar1" not in model["undefined"]
    assert max(abs(v) for v in _scores(report["periods"])) < 1e6
    assert "test.skill_persistence" not in card_metrics(report)
    assert "test.skill_persistence=undefined (exact baseline)" in headline(report)


# -- the variance ARV divides by ----------------------------------------------------------------


def _calm_then_wild(tmp_path: Path) -> tuple[Any, Splits]:
    """A series whose test rows swing a hundred times wider than its training rows."""
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(10.0, 1.0, 60), rng.normal(10.0, 100.0, 40)])
    path = tmp_path / "s.csv"
    pd.DataFrame({"stream_id": "a", "ts": np.arange(100.0), "v": values}).to_csv(path, index=False)
    return load_dataset(str(path)), Splits(val_start=50.0, test_start=60.0)


def test_arv_divides_by_the_training_rows_variance_by_default(tmp_path: Path) -> None:
    data, splits = _calm_then_wild(tmp_path)
    scaler = fit_scaler(data, splits)
    streams = prepare_streams(data.series(), data, scaler, horizon=1)
    report = evaluate(Persistence(1), data, streams, splits, scaler, ar_order=1)

    values = data.table["v"].to_numpy()
    train_variance = values[:50].var()
    assert values.var() > 100 * train_variance  # the test rows would dominate
    assert report["arv_variance_from"] == "train"
    assert report["variance"]["value"] == pytest.approx([train_variance])
    assert report["variance"]["rows"] == "every training row (ts < 50.0)"
    test = report["periods"]["test"]["model"]
    assert test["arv"] == pytest.approx(test["rmse"] ** 2 / train_variance, rel=1e-6)
    # The same variance the scaler recorded, so scoring against it gives the same ARV.
    from_scaler = evaluate(
        Persistence(1), data, streams, splits, scaler, ar_order=1, variance_from_scaler=True
    )
    assert from_scaler["arv_variance_from"] == "scaler"
    assert from_scaler["variance"]["value"] == pytest.approx([train_variance])
    until = evaluate(Persistence(1), data, streams, splits, scaler, variance_until=100.0)
    assert until["arv_variance_from"] == "variance_until"
    assert until["variance"]["value"] == pytest.approx([values.var()])


def test_data_without_training_rows_scores_against_the_scaler_and_no_ar(tmp_path: Path) -> None:
    data, splits = _calm_then_wild(tmp_path)
    scaler = fit_scaler(data, splits)
    later = Splits(val_start=-10.0, test_start=60.0)  # nothing before val_start
    streams = prepare_streams(data.series(), data, scaler, horizon=1)
    report = evaluate(Persistence(1), data, streams, later, scaler, ar_order=3)

    assert report["arv_variance_from"] == "scaler"
    assert report["variance"]["value"] == pytest.approx([scaler.targets.std[0] ** 2])
    assert report["ar_fitted_on"] is None
    test = report["periods"]["test"]
    assert set(test) == {"from", "to", "model", "persistence"}
    assert "skill_ar3" not in test["model"] and "test.skill_ar3" not in card_metrics(report)
    assert "skill_ar3" not in headline(report)


# -- per-target scores ----------------------------------------------------------------------------


def _two_units(tmp_path: Path) -> tuple[Any, Splits]:
    """Power in kW (hundreds) and a temperature in °C (tens), one stream."""
    n = 80
    t = np.arange(n)
    rng = np.random.default_rng(2)
    path = tmp_path / "plant.csv"
    pd.DataFrame(
        {
            "stream_id": "plant",
            "ts": 600.0 * t,
            "kw": 500.0 + 200.0 * np.sin(t / 6.0) + rng.normal(0, 20.0, n),
            "degc": 20.0 + 3.0 * np.cos(t / 9.0) + rng.normal(0, 0.1, n),
        }
    ).to_csv(path, index=False)
    return load_dataset(str(path)), Splits(val_start=600.0 * 50, test_start=600.0 * 64)


class Halfway(Forecaster):
    """Forecasts the current reading times 0.9 (scaled) for both targets at every step."""

    def __init__(self, horizon: int) -> None:
        super().__init__()
        self.config = ModelConfig(
            kind="rnn", n_features=2, n_targets=2, horizon=horizon, hidden=1, layers=1
        )

    def state_specs(self) -> list[StateSpec]:
        return [StateSpec(name="h", shape=(1, 1), batch_axis=1)]

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        return 0.9 * x[:, :, None, :].expand(-1, -1, self.config.horizon, -1), states[0]


def test_per_target_scores_pool_the_horizon_steps_in_each_targets_units(tmp_path: Path) -> None:
    data, splits = _two_units(tmp_path)
    scaler = fit_scaler(data, splits)
    streams = prepare_streams(data.series(), data, scaler, horizon=2)
    report = evaluate(Halfway(2), data, streams, splits, scaler, ar_order=2)
    model = report["periods"]["test"]["model"]
    persistence = report["periods"]["test"]["persistence"]

    raw = data.table[["kw", "degc"]].to_numpy()
    x = scaler.features.transform(raw.astype(np.float32))
    forecast = np.asarray(scaler.targets.inverse(0.9 * x))  # the same for both steps
    # Test targets: rows 64..79; step h forecasts row t from origin t - 1 - h.
    rows = np.arange(64, 80)
    errs = np.concatenate([forecast[rows - 1] - raw[rows], forecast[rows - 2] - raw[rows]])
    base = np.concatenate([raw[rows - 1] - raw[rows], raw[rows - 2] - raw[rows]])
    assert model["count_per_target"] == [32, 32]
    np.testing.assert_allclose(model["mae_per_target"], np.abs(errs).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(model["rmse_per_target"], np.sqrt((errs**2).mean(axis=0)), rtol=1e-5)
    np.testing.assert_allclose(
        model["per_horizon"][0]["mae_per_target"], np.abs(errs[:16]).mean(axis=0), rtol=1e-5
    )
    skill = 1 - (errs**2).mean(axis=0) / (base**2).mean(axis=0)
    assert model["skill_persistence_per_target"] == {
        "kw": pytest.approx(skill[0], rel=1e-4),
        "degc": pytest.approx(skill[1], rel=1e-4),
    }
    ar = report["periods"]["test"]["ar2"]["rmse_per_target"]
    assert model["skill_ar2_per_target"]["degc"] == pytest.approx(
        1 - (model["rmse_per_target"][1] / ar[1]) ** 2
    )
    assert persistence["rmse_per_target"][0] > 10 * persistence["rmse_per_target"][1]


def test_cells_without_an_observed_actual_count_for_nothing(tmp_path: Path) -> None:
    data, splits = _two_units(tmp_path)
    scaler = fit_scaler(data, splits)
    streams = prepare_streams(data.series(), data, scaler, horizon=1)
    full = evaluate(Halfway(1), data, streams, splits, scaler, ar_order=1)
    streams[0].y[70, 0, 1] = np.nan  # degc at row 71 was not observed
    gappy = evaluate(Halfway(1), data, streams, splits, scaler, ar_order=1)

    before, after = full["periods"]["test"]["model"], gappy["periods"]["test"]["model"]
    assert before["count_per_target"] == [16, 16]
    assert after["count_per_target"] == [16, 15]
    assert after["count"] == 16  # the cell still holds an observed kw
    assert after["mae_per_target"][0] == before["mae_per_target"][0]
    raw = data.table["degc"].to_numpy()
    forecast = np.asarray(scaler.targets.inverse(0.9 * streams[0].x))[:, 1]
    kept = [r for r in range(64, 80) if r != 71]
    err = forecast[np.array(kept) - 1] - raw[kept]
    assert after["mae_per_target"][1] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert np.isfinite(after["arv"]) and np.isfinite(after["skill_persistence"])
