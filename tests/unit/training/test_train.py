from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch

from training import train as train_module
from training.config import load_config, load_saved_config
from training.data import Splits, fit_scaler, load_dataset
from training.errors import TrainingConfigError, TrainingDataError
from training.train import (
    cell_loss,
    load_data,
    make_batches,
    make_chunks,
    masked_mse,
    persistence_weights,
    prepare_streams,
    resolve_device,
    resolve_splits,
    train,
)

from .conftest import tiny_config


def test_tiny_run_learns_and_restores_the_best_epoch() -> None:
    result = train(tiny_config(max_epochs=6, patience=6), progress=False)
    losses = [h["train_loss"] for h in result.history]
    vals = [h["val_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert min(vals) < vals[0]
    assert result.best_epoch == int(np.argmin(vals)) + 1
    assert all(math.isfinite(h["grad_norm"]) for h in result.history)
    assert not result.model.training


def test_same_seed_same_weights() -> None:
    a = train(tiny_config(), progress=False).model.state_dict()
    b = train(tiny_config(), progress=False).model.state_dict()
    c = train(tiny_config(seed=1), progress=False).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_stops_after_patience() -> None:
    result = train(tiny_config(max_epochs=30, patience=1, lr=0.3), progress=False)
    assert len(result.history) < 30
    assert len(result.history) == result.best_epoch + 1


def test_refit_trains_a_fresh_model_on_train_and_validation() -> None:
    result = train(tiny_config(refit_epochs=2), progress=False)
    assert len(result.refit_history) == 2
    assert result.early_stopped is not None and result.early_stopped is not result.model
    plain = train(tiny_config(), progress=False)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            result.model.state_dict().values(), plain.model.state_dict().values(), strict=True
        )
    )


def test_targets_are_the_next_horizon_steps() -> None:
    data = load_dataset("synthetic", n_streams=2, n_steps=30, targets=["temp"])
    splits = Splits(val_start=data.table["ts"].max(), test_start=data.table["ts"].max())
    scaler = fit_scaler(data, splits)
    [s, _] = prepare_streams(data.series(), data, scaler, horizon=3)
    n = len(s.x)
    assert s.y.shape == (n, 3, 1)
    for h in range(3):
        np.testing.assert_array_equal(s.y[: n - 1 - h, h, 0], s.x[1 + h :, 0])
        np.testing.assert_array_equal(s.target_ts[: n - 1 - h, h], s.ts[1 + h :])
        assert np.isinf(s.target_ts[n - 1 - h :, h]).all()


def test_loss_mask_leaves_out_burn_in_and_other_parts() -> None:
    data = load_dataset("synthetic", n_streams=1, n_steps=40, targets=["temp"])
    ts = data.series()[0].ts
    splits = Splits(val_start=ts[20], test_start=ts[30])
    [s] = prepare_streams(data.series(), data, fit_scaler(data, splits), horizon=2)
    mask = s.loss_mask(splits, "train", burn_in=5)
    assert not mask[:5].any()
    assert (s.target_ts[mask] < ts[20]).all()
    assert mask[5:19, 0].all() and not mask[19:, 0].any()
    assert mask[5:18, 1].all() and not mask[18:, 1].any()


def test_batches_carry_one_stream_per_slot_padded_at_the_end() -> None:
    data = load_dataset("synthetic", n_streams=3, n_steps=25)
    splits = Splits(val_start=1e12, test_start=1e12)
    streams = prepare_streams(data.series(), data, fit_scaler(data, splits), horizon=1)
    masks = [np.ones(s.y.shape[:2], bool) for s in streams]
    masks[1][10:] = False  # stream 1 ends its training part early
    [batch] = list(make_batches(streams, masks, batch_size=8, rng=np.random.default_rng(0)))
    assert batch.x.shape[0] == 3
    rows = {tuple(batch.x[i, 0].tolist()): i for i in range(3)}
    for s, m in zip(streams, masks, strict=True):
        slot = rows[tuple(s.x[0].tolist())]
        n = int(m.any(axis=1).sum())
        np.testing.assert_array_equal(batch.x[slot, :n].numpy(), s.x[:n])
        assert not batch.mask[slot, n:].any()


def test_chunks_cover_the_sequence_in_order() -> None:
    data = load_dataset("synthetic", n_streams=1, n_steps=50)
    splits = Splits(val_start=1e12, test_start=1e12)
    streams = prepare_streams(data.series(), data, fit_scaler(data, splits), horizon=1)
    [batch] = list(
        make_batches(streams, [np.ones((len(streams[0].x), 1), bool)], 1, np.random.default_rng(0))
    )
    chunks = list(make_chunks(batch, chunk=16, first=5))
    assert [c[0].shape[1] for c in chunks][:2] == [5, 16]
    torch.testing.assert_close(torch.cat([c[0] for c in chunks], dim=1), batch.x)


def test_masked_mse_ignores_masked_cells() -> None:
    pred = torch.tensor([[[[1.0], [2.0]], [[3.0], [4.0]]]])  # [1, 2, 2, 1]
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[True, False], [False, True]]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 16) / 2)


def test_masked_mse_weights_each_horizon_step_and_target() -> None:
    pred = torch.ones(1, 2, 2, 2)  # [B, T, horizon, targets]
    target = torch.zeros_like(pred)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    weights = torch.tensor([[4.0, 0.0], [1.0, 1.0]])
    assert masked_mse(pred, target, mask, weights).item() == pytest.approx(6 / 4)


def test_persistence_weights_score_persistence_at_one_in_every_cell() -> None:
    data = load_dataset("synthetic", n_streams=3, n_steps=120)
    splits = Splits(val_start=data.table["ts"].max(), test_start=data.table["ts"].max())
    streams = prepare_streams(data.series(), data, fit_scaler(data, splits), horizon=4)
    masks = [s.loss_mask(splits, "train", burn_in=5) for s in streams]
    weights = persistence_weights(streams, masks, data.target_index)
    assert weights.shape == (4, 3)
    # Persistence's error grows with the horizon, so the first step weighs the most.
    assert (weights[0] > weights[-1]).all()
    [batch] = make_batches(streams, masks, batch_size=3, rng=np.random.default_rng(0))
    persistence = batch.x[:, :, None, data.target_index].expand(-1, -1, 4, -1)
    loss = masked_mse(
        persistence, batch.y, batch.mask, torch.from_numpy(weights.astype(np.float32))
    )
    assert loss.item() == pytest.approx(1.0, rel=1e-4)


def test_persistence_weighted_run_records_its_weights() -> None:
    result = train(tiny_config(loss_weights="persistence"), progress=False)
    assert result.loss_weights is not None and result.loss_weights.shape == (3, 3)
    assert train(tiny_config(), progress=False).loss_weights is None


def test_learning_rate_decays_after_each_epoch_without_improvement() -> None:
    result = train(tiny_config(max_epochs=8, patience=8, lr_decay=0.5), progress=False)
    history = result.history
    assert history[0]["lr"] == pytest.approx(1e-2)
    best = math.inf
    for before, after in itertools.pairwise(history):
        improved = before["val_loss"] < best - 1e-7
        best = min(best, before["val_loss"])
        assert after["lr"] == pytest.approx(before["lr"] * (1.0 if improved else 0.5))
    constant = train(tiny_config(max_epochs=3, patience=3), progress=False)
    assert {h["lr"] for h in constant.history} == {1e-2}


def test_default_split_and_explicit_boundaries() -> None:
    data = load_dataset("synthetic", n_streams=1, n_steps=101)
    lo, hi = data.table["ts"].min(), data.table["ts"].max()
    splits = resolve_splits(tiny_config(), data)
    assert splits.val_start == pytest.approx(lo + 0.7 * (hi - lo))
    assert splits.test_start == pytest.approx(lo + 0.85 * (hi - lo))
    explicit = resolve_splits(
        tiny_config(val_start="1970-01-02", test_start=200000.0, test_end=300000), data
    )
    assert (explicit.val_start, explicit.test_start, explicit.test_end) == (
        86400.0,
        200000.0,
        300000.0,
    )


def test_no_training_targets_is_an_error() -> None:
    with pytest.raises(TrainingDataError, match="no training targets"):
        train(tiny_config(burn_in=100_000), progress=False)


# -- validation windows -------------------------------------------------------------------------


def test_one_window_over_the_validation_part_is_the_default() -> None:
    config = tiny_config(max_epochs=3, patience=3)
    splits = resolve_splits(config, load_data(config))
    plain = train(config, progress=False)
    window = [(splits.val_start, splits.test_start)]
    windowed = train(config.model_copy(update={"val_windows": window}), progress=False)
    assert windowed.history == plain.history
    ours, theirs = plain.model.state_dict(), windowed.model.state_dict()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def test_several_windows_pick_the_best_epoch_by_their_mean_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tiny_config(max_epochs=4, patience=4)
    data = load_data(config)
    splits = resolve_splits(config, data)
    ts = np.sort(data.table["ts"].unique())
    windows = [(float(ts[60]), float(ts[90])), (splits.val_start, splits.test_start)]
    trained_on: list[tuple[list[train_module.StreamArrays], list[np.ndarray]]] = []
    run_epoch = train_module.run_epoch

    def spy(model: Any, optimiser: Any, streams: Any, masks: Any, *rest: Any) -> Any:
        trained_on.append((streams, masks))
        return run_epoch(model, optimiser, streams, masks, *rest)

    monkeypatch.setattr(train_module, "run_epoch", spy)
    result = train(config.model_copy(update={"val_windows": windows}), progress=False)

    vals = [h["val_loss"] for h in result.history]
    for h in result.history:
        assert h["val_loss"] == pytest.approx((h["val_loss_1"] + h["val_loss_2"]) / 2)
    assert result.best_epoch == int(np.argmin(vals)) + 1
    # No target inside a window is a training target, wherever the window lies.
    streams, masks = trained_on[0]
    for s, m in zip(streams, masks, strict=True):
        for lo, hi in windows:
            assert not ((s.target_ts >= lo) & (s.target_ts < hi) & m).any()
    assert any(m.any() for m in masks)


def test_a_window_must_end_before_the_test_part_and_hold_targets() -> None:
    config = tiny_config()
    splits = resolve_splits(config, load_data(config))
    late = [(splits.val_start, splits.test_start + 1.0)]
    with pytest.raises(TrainingDataError, match="need start < end <= test_start"):
        train(config.model_copy(update={"val_windows": late}), progress=False)
    empty = [(0.0, 10.0)]
    with pytest.raises(TrainingDataError, match="holds no targets"):
        train(config.model_copy(update={"val_windows": empty}), progress=False)


# -- device -----------------------------------------------------------------------------------


def test_cuda_without_a_gpu_fails_with_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainingConfigError, match=r"--device cuda: .* no CUDA device") as caught:
        train(tiny_config(device="cuda"), progress=False)
    assert "\n" not in str(caught.value)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_when_torch_sees_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_the_trained_model_comes_back_on_the_cpu() -> None:
    result = train(tiny_config(max_epochs=1, refit_epochs=1), progress=False)
    for model in (result.model, result.early_stopped):
        assert model is not None
        assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cpu"}


# -- head -------------------------------------------------------------------------------------


def test_new_runs_train_a_delta_head_and_saved_configs_without_one_a_level_head() -> None:
    assert load_config({}).head == "delta"
    assert train(tiny_config(max_epochs=1), progress=False).model.config.head == "delta"
    assert load_saved_config({}).head == "level"
    assert load_saved_config({"head": "delta"}).head == "delta"


def test_cell_losses_on_tensors_and_arrays() -> None:
    err = np.array([-3.0, -0.5, 0.0, 0.25, 2.0])
    np.testing.assert_allclose(cell_loss(err, "mse"), err**2)
    np.testing.assert_allclose(cell_loss(err, "mae"), np.abs(err))
    # Huber at delta 1: e^2 / 2 within, |e| - 1/2 beyond, continuous at the edge
    np.testing.assert_allclose(cell_loss(err, "huber", 1.0), [2.5, 0.125, 0.0, 0.03125, 1.5])
    tensor = cell_loss(torch.tensor(err), "huber", 1.0)
    np.testing.assert_allclose(tensor.numpy(), cell_loss(err, "huber", 1.0))
    with pytest.raises(TrainingConfigError, match="unknown loss"):
        cell_loss(err, "quantile")


def test_persistence_weights_follow_the_loss() -> None:
    """With --loss mae each weight is 1 / persistence's mean absolute error there."""
    data = load_dataset("synthetic", n_streams=3, n_steps=80, seed=2)
    splits = Splits(data.table["ts"].quantile(0.7), data.table["ts"].quantile(0.85))
    streams = prepare_streams(data.series(), data, fit_scaler(data, splits), horizon=2)
    masks = [s.loss_mask(splits, "train", 0) for s in streams]
    weights = persistence_weights(streams, masks, data.target_index, "mae")
    for step in range(2):
        errors = np.concatenate(
            [
                np.abs(s.y[:, step] - s.x[:, data.target_index])[m[:, step]]
                for s, m in zip(streams, masks, strict=True)
            ]
        )  # persistence's absolute errors at this step, [cells, targets]
        np.testing.assert_allclose(weights[step], 1.0 / errors.mean(axis=0), rtol=1e-6)
