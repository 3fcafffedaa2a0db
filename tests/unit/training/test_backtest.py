"""Rolling-origin folds: placement, scores per fold and their means, and no look-ahead."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from training.backtest import (
    Fold,
    backtest,
    backtest_lines,
    parse_duration,
    place_folds,
    train_fold,
    truncate,
)
from training.data import Dataset, load_dataset
from training.errors import TrainingConfigError
from training.train import train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_dataset("synthetic", n_streams=4, n_steps=240)


def test_durations() -> None:
    assert parse_duration("3600") == 3600.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("15m") == 900.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration("7d") == 7 * 86_400.0
    assert parse_duration("2W") == 14 * 86_400.0
    assert parse_duration("1y") == pytest.approx(365.2425 * 86_400.0)
    for bad in ("", "7 days", "-1d", "0h", "d"):
        with pytest.raises(TrainingConfigError, match="duration"):
            parse_duration(bad)


def test_folds_at_the_end_of_the_data_back_to_back(data: Dataset) -> None:
    ts = data.table["ts"]
    end = float(ts.max()) + data.period
    folds = place_folds(data, folds=3, fold_length=3600.0 * 2)
    assert [f.end for f in folds] == [end - 2 * 7200.0, end - 7200.0, end]
    assert [f.cut for f in folds] == [end - 3 * 7200.0, end - 2 * 7200.0, end - 7200.0]
    assert all(f.val_start == f.cut - 7200.0 for f in folds)  # validation: one fold length
    assert folds[-1].end > ts.max()  # the last reading is tested


def test_given_cuts_test_up_to_the_next_cut(data: Dataset) -> None:
    ts = np.sort(data.table["ts"].unique())
    cuts = [str(ts[150]), str(ts[200])]
    folds = place_folds(data, cuts=cuts, val_length=1800.0)
    assert folds == [
        Fold(cut=ts[150], end=ts[200], val_start=ts[150] - 1800.0),
        Fold(cut=ts[200], end=ts[-1] + data.period, val_start=ts[200] - 1800.0),
    ]
    short = place_folds(data, cuts=cuts, fold_length=600.0)
    assert [f.end for f in short] == [ts[150] + 600.0, ts[200] + 600.0]


def test_bad_fold_placements_say_what_to_change(data: Dataset) -> None:
    ts = np.sort(data.table["ts"].unique())
    with pytest.raises(TrainingConfigError, match="--cuts must increase"):
        place_folds(data, cuts=[str(ts[200]), str(ts[150])])
    with pytest.raises(TrainingConfigError, match="give --cuts, or --folds with --fold-length"):
        place_folds(data, folds=2)
    with pytest.raises(TrainingConfigError, match="nothing to train on"):
        place_folds(data, folds=3, fold_length=86_400.0)
    with pytest.raises(TrainingConfigError, match="no readings in its test window"):
        place_folds(data, cuts=[str(ts[-1] + 10 * data.period)], fold_length=600.0)


@pytest.mark.parametrize("poison", [np.nan, 1e30])
def test_a_fold_never_sees_data_after_its_cut(data: Dataset, poison: float) -> None:
    # Every reading from the cut on is replaced (NaN, or absurdly large): a fold that let
    # any of it reach the scaler, the loss weights, the validation loss or the refit would
    # train differently from one trained on the data cut off there.
    ts = np.sort(data.table["ts"].unique())
    fold = Fold(cut=float(ts[180]), end=float(ts[220]), val_start=float(ts[150]))
    table = data.table.copy()
    table.loc[table["ts"] >= fold.cut, data.features] = poison
    poisoned = dataclasses.replace(data, table=table)
    config = tiny_config(max_epochs=3, patience=3, loss_weights="persistence", refit_epochs=1)

    folded = train_fold(config, poisoned, fold)
    cut_off = data.table[data.table["ts"] < fold.cut].reset_index(drop=True)
    reference = train(
        config.model_copy(update={"val_start": fold.val_start, "test_start": fold.cut}),
        dataset=dataclasses.replace(data, table=cut_off),
        progress=False,
    )

    assert folded.scaler == reference.scaler
    assert folded.history == reference.history  # the validation loss of every epoch
    assert folded.refit_history == reference.refit_history
    assert folded.best_epoch == reference.best_epoch
    np.testing.assert_array_equal(folded.loss_weights, reference.loss_weights)
    for model, other in ((folded.model, reference.model),):
        ours, theirs = model.state_dict(), other.state_dict()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    assert all(np.isfinite(h["val_loss"]) for h in folded.history)


def test_truncate_keeps_the_rows_before_the_cut(data: Dataset) -> None:
    cut = float(np.median(data.table["ts"]))
    seen = truncate(data, cut)
    assert (seen.table["ts"] < cut).all()
    assert len(seen.table) == int((data.table["ts"] < cut).sum())
    assert seen.fingerprint != data.fingerprint


def test_backtest_scores_each_fold_and_averages_them(data: Dataset) -> None:
    config = tiny_config(n_streams=4, max_epochs=2, ar_order=2)
    folds = place_folds(data, folds=2, fold_length=3600.0 * 3)
    result = backtest(config, data, folds)

    assert [f["cut"] for f in result["folds"]] == [f.cut for f in folds]
    first, second = result["folds"]
    for entry, fold in zip(result["folds"], folds, strict=True):
        test = entry["report"]["periods"]["test"]
        assert (test["from"], test["to"]) == (fold.cut, fold.end)
        assert entry["report"]["arv_variance_from"] == "train"
        assert entry["report"]["ar_fitted_on"] == "train"
        assert set(entry["targets"]) == set(data.targets)
        assert entry["targets"]["temp"]["mae"] == test["model"]["mae_per_target"][0]
    mean = result["mean"]
    assert mean["folds"] == 2
    for target in data.targets:
        for key in ("mae", "rmse", "mae_h1", "skill_persistence", "skill_ar2"):
            pair = [first["targets"][target][key], second["targets"][target][key]]
            assert mean["targets"][target][key] == pytest.approx(np.mean(pair))
    assert mean["arv"] == pytest.approx((first["arv"] + second["arv"]) / 2)

    lines = backtest_lines(result)
    assert lines[0].split()[:5] == ["fold", "test", "window", "target", "cells"]
    assert len(lines) == 1 + 3 * len(data.targets) + 1
    assert lines[-1].startswith("mean over folds, all targets: arv=")
    assert lines[-1 - len(data.targets)].startswith("mean  over 2 folds")
