"""Train a forecaster with stateful truncated BPTT, exactly as the service will run it.

The service keeps one recurrent state per stream and feeds it one reading at a time, from
the stream's first reading on. Training does the same, in chunks: each batch slot carries
one stream through time, the state is handed from chunk to chunk (detached, so gradients
stop at the chunk boundary) and starts from zero at the stream's first step. The first
``burn_in`` steps are left out of the loss because the state has not warmed up yet; the
card's ``warmup_steps`` tells the service the same thing.

The loss is the mean squared error in scaled units. Scaled by each feature's overall spread,
a target whose reading-to-reading changes are small (a slowly moving temperature with
measurement noise) contributes almost nothing next to a noisy one, and the first horizon
step next to the twelfth; ``loss_weights="persistence"`` divides each (horizon step,
target) cell by persistence's mean squared error there, so every cell counts by how much
the model improves on repeating the last reading.

Early stopping watches the validation loss: over the validation part by default, or the
mean of the losses over each of ``val_windows`` (each window's own mean, so a short window
counts as much as a long one); targets inside a window are then left out of the training
loss wherever the window lies.

Training runs on ``config.device`` (a GPU when there is one, by default); the trained model
comes back on the cpu, where evaluation and export run.

Read `train` top to bottom: data, split, scaler, model, the epoch loop, early stopping.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from training.config import TrainConfig
from training.data import (
    Dataset,
    Series,
    Splits,
    fit_scaler,
    load_dataset,
    near_constant_columns,
    parse_time,
)
from training.errors import TrainingConfigError, TrainingDataError
from training.models import Forecaster, build_model
from training.predict import run_streams

__all__ = [
    "StreamArrays",
    "TrainResult",
    "cell_loss",
    "load_data",
    "make_batches",
    "make_chunks",
    "masked_loss",
    "masked_mse",
    "persistence_weights",
    "prepare_streams",
    "resolve_device",
    "resolve_splits",
    "resolve_val_windows",
    "run_epoch",
    "train",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamArrays:
    """One stream, scaled: inputs ``x[T, F]``, targets ``y[T, H, n_targets]`` with the
    timestamp of each target ``target_ts[T, H]`` (+inf past the end of the stream)."""

    stream_id: str
    ts: np.ndarray
    x: np.ndarray
    y: np.ndarray
    target_ts: np.ndarray

    def loss_mask(self, splits: Splits, part: str, burn_in: int) -> np.ndarray:
        """Which (step, horizon) targets count towards `part`'s loss."""
        mask = splits.part(self.target_ts, part)
        mask[:burn_in] = False
        return mask

    def window_mask(self, start: float, end: float, burn_in: int) -> np.ndarray:
        """Which (step, horizon) targets fall in ``[start, end)``, burn-in left out."""
        mask = (self.target_ts >= start) & (self.target_ts < end)
        mask[:burn_in] = False
        return mask


@dataclass
class TrainResult:
    config: TrainConfig
    dataset: Dataset
    splits: Splits
    scaler: Any
    model: Forecaster
    streams: list[StreamArrays]
    loss_weights: np.ndarray | None = None  # [horizon, n_targets], None for a plain MSE
    history: list[dict[str, float]] = field(default_factory=list)
    refit_history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    early_stopped: Forecaster | None = None  # the model before the refit, when there is one


def train(
    config: TrainConfig, *, dataset: Dataset | None = None, progress: bool = True
) -> TrainResult:
    """Train on `dataset`, or on the data `config` names when that is None."""
    # Fixed seeds: the same config on the same data gives the same weights.
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)  # before the data: a missing GPU fails fast

    dataset = dataset or load_data(config)
    splits = resolve_splits(config, dataset)
    # The scaler sees the train part only, so no later value leaks into training.
    scaler = fit_scaler(dataset, splits)
    # A constant column teaches nothing, and a constant target leaves the scores that divide
    # by its variance undefined: say so now rather than in a puzzling report.
    for column, values in near_constant_columns(dataset, splits).items():
        if column in dataset.targets:
            log.warning(
                "target %r is constant on the training part (%s): nothing to learn, and "
                "scores dividing by its variance may be undefined",
                column,
                values,
            )
        else:
            log.warning(
                "feature %r is constant on the training part (%s): it carries no information",
                column,
                values,
            )
    streams = prepare_streams(dataset.series(), dataset, scaler, config.horizon)
    # One set of masks per validation window; a target in a window never trains the model.
    windows = [
        [s.window_mask(lo, hi, config.burn_in) for s in streams]
        for lo, hi in resolve_val_windows(config, splits)
    ]
    val_masks = [np.logical_or.reduce(masks) for masks in zip(*windows, strict=True)]
    train_masks = [
        s.loss_mask(splits, "train", config.burn_in) & ~v
        for s, v in zip(streams, val_masks, strict=True)
    ]
    if config.val_windows is not None and not all(any(m.any() for m in w) for w in windows):
        raise TrainingDataError("a validation window holds no targets: widen or move it")
    if not any(m.any() for m in train_masks):
        raise TrainingDataError("no training targets: move val_start later or lower burn_in")
    weights = (
        persistence_weights(
            streams, train_masks, dataset.target_index, config.loss, config.huber_delta
        )
        if config.loss_weights == "persistence"
        else None
    )

    model = build_model(config.model_config_for(dataset.inputs, dataset.targets, scaler))
    model.to(device)
    log.info("training on %s", device)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    result = TrainResult(config, dataset, splits, scaler, model, streams, weights)
    best_loss, best_state, stale = math.inf, copy.deepcopy(model.state_dict()), 0

    bar = tqdm(range(1, config.max_epochs + 1), desc=f"train {config.kind}", disable=not progress)
    for epoch in bar:
        lr = optimiser.param_groups[0]["lr"]
        train_loss, grad_norm = run_epoch(
            model, optimiser, streams, train_masks, config, rng, weights
        )
        window_losses = [
            evaluate_loss(model, streams, masks, weights, config.loss, config.huber_delta)
            for masks in windows
        ]
        val_loss = float(np.mean(window_losses))
        result.history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "grad_norm": grad_norm,
                "lr": lr,
            }
        )
        if len(windows) > 1:  # each window's loss too, to see which one drives the choice
            result.history[-1].update(
                {f"val_loss_{i}": loss for i, loss in enumerate(window_losses, start=1)}
            )
        bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        log.info(
            "epoch=%d train_loss=%.5f val_loss=%.5f grad_norm=%.3f lr=%.3g",
            epoch,
            train_loss,
            val_loss,
            grad_norm,
            lr,
        )

        # Early stopping on the validation loss (the training loss when there is no
        # validation part); the best weights are restored below.
        watched = train_loss if math.isnan(val_loss) else val_loss
        if watched < best_loss - 1e-7:
            best_loss, stale, result.best_epoch = watched, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            # A plateau at this step size: smaller steps settle into the minimum that
            # larger ones keep jumping across (the noise a model must not chase is small).
            for group in optimiser.param_groups:
                group["lr"] *= config.lr_decay
            if stale >= config.patience:
                log.info(
                    "early stop at epoch %d; best epoch %d loss=%.5f",
                    epoch,
                    result.best_epoch,
                    best_loss,
                )
                break
    model.load_state_dict(best_state)

    # Optional refit: the validation part has done its job (choosing the stopping point
    # and reporting an honest score); a fresh model from the same seed now trains on
    # train + validation for a fixed number of epochs. The test part stays unseen. With no
    # validation left to pick an epoch, the learning rate anneals to zero (cosine), so the
    # final weights settle instead of stopping at a random point of a noisy trajectory.
    if config.refit_epochs:
        model.eval()
        result.early_stopped = model
        torch.manual_seed(config.seed)
        model = build_model(model.config).to(device)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.refit_epochs)
        masks = [t | v for t, v in zip(train_masks, val_masks, strict=True)]
        for epoch in tqdm(range(1, config.refit_epochs + 1), desc="refit", disable=not progress):
            train_loss, grad_norm = run_epoch(
                model, optimiser, streams, masks, config, rng, weights
            )
            schedule.step()
            result.refit_history.append(
                {"epoch": epoch, "train_loss": train_loss, "grad_norm": grad_norm}
            )
        log.info(
            "refit on train+val for %d epochs: train_loss=%.5f", config.refit_epochs, train_loss
        )
        result.model = model
        result.early_stopped.cpu()
    # Evaluation and export run on the cpu, whatever trained the model.
    model.cpu()
    model.eval()
    return result


def run_epoch(
    model: Forecaster,
    optimiser: torch.optim.Optimizer,
    streams: list[StreamArrays],
    masks: list[np.ndarray],
    config: TrainConfig,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> tuple[float, float]:
    """One pass over every stream in chunks; returns the mean loss and mean gradient norm."""
    model.train()
    device = model.device
    cell_weights = (
        None if weights is None else torch.from_numpy(weights.astype(np.float32)).to(device)
    )
    losses, norms = [], []
    for batch in make_batches(streams, masks, config.batch_size, rng):
        batch = batch.to(device)
        states = model.init_states(batch.x.shape[0], device=device)
        # A random first-chunk length moves the chunk boundaries every epoch.
        first = int(rng.integers(1, config.chunk + 1))
        for x, y, mask in make_chunks(batch, config.chunk, first):
            pred, *states = model(x, *states)
            states = tuple(s.detach() for s in states)  # truncate BPTT at the chunk edge
            if not mask.any():
                continue
            loss = masked_loss(pred, y, mask, cell_weights, config.loss, config.huber_delta)
            optimiser.zero_grad()
            loss.backward()
            # Clipping by global norm keeps one bad chunk (a fault spike) from blowing up.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimiser.step()
            losses.append(loss.item())
            norms.append(float(norm))
    if not losses:
        return math.nan, math.nan
    return float(np.mean(losses)), float(np.mean(norms))


# -- helpers, in the order `train` uses them ------------------------------------------------------


def load_data(config: TrainConfig) -> Dataset:
    """The table `config` names, loaded and checked with its data options (also how
    re-scoring and the backtest load data, so they see it as training did)."""
    return load_dataset(
        config.data,
        features=config.features,
        targets=config.targets,
        sort=config.sort,
        dedupe=config.dedupe,
        fill=config.fill,
        ts_unit=config.ts_unit,
        gaps=config.gaps,
        max_gap_periods=config.max_gap_periods,
        n_streams=config.n_streams,
        n_steps=config.n_steps,
        seed=config.data_seed,
        derived=config.derived_inputs(),
    )


def resolve_device(name: str) -> torch.device:
    """The torch device `name` (a `TrainConfig.device`) trains on: ``auto`` is cuda when
    torch sees a GPU, else the cpu. `TrainingConfigError` for cuda without one."""
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise TrainingConfigError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device; "
            "use --device cpu or auto"
        )
    return torch.device("cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu")


def resolve_splits(config: TrainConfig, dataset: Dataset) -> Splits:
    """The configured boundaries, or 70% / 85% of the time range when left out."""
    ts = dataset.table["ts"].to_numpy()
    lo, hi = float(ts.min()), float(ts.max())
    val_start = (
        parse_time(config.val_start) if config.val_start is not None else lo + 0.70 * (hi - lo)
    )
    test_start = (
        parse_time(config.test_start) if config.test_start is not None else lo + 0.85 * (hi - lo)
    )
    test_end = parse_time(config.test_end) if config.test_end is not None else None
    return Splits(val_start, test_start, test_end)


def resolve_val_windows(config: TrainConfig, splits: Splits) -> list[tuple[float, float]]:
    """The validation windows in epoch seconds: `config.val_windows`, or the validation
    part. A window must end by the test part's start, so the test part stays unseen."""
    if config.val_windows is None:
        return [(splits.val_start, splits.test_start)]
    windows = []
    for start, end in config.val_windows:
        lo, hi = parse_time(start), parse_time(end)
        if not lo < hi <= splits.test_start:
            raise TrainingDataError(
                f"validation window {start},{end}: need start < end <= test_start "
                f"({splits.test_start})"
            )
        windows.append((lo, hi))
    return windows


def prepare_streams(
    series: list[Series], dataset: Dataset, scaler: Any, horizon: int
) -> list[StreamArrays]:
    """Scale each stream's inputs and line up its direct multi-horizon targets:
    y[t, h] = target[t + 1 + h]."""
    out = []
    idx = dataset.target_index
    for s in series:
        x = scaler.features.transform(s.inputs).astype(np.float32)
        n = len(x)
        y = np.zeros((n, horizon, len(idx)), np.float32)
        target_ts = np.full((n, horizon), np.inf)
        for h in range(horizon):
            ahead = n - 1 - h
            if ahead <= 0:
                continue
            y[:ahead, h] = x[1 + h :, idx]
            target_ts[:ahead, h] = s.ts[1 + h :]
        out.append(StreamArrays(s.stream_id, s.ts, x, y, target_ts))
    return out


@dataclass(frozen=True)
class Batch:
    """Streams side by side, padded at the end; padded steps have an all-false mask."""

    x: Tensor
    y: Tensor
    mask: Tensor

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`."""
        return Batch(self.x.to(device), self.y.to(device), self.mask.to(device))


def make_batches(
    streams: list[StreamArrays], masks: list[np.ndarray], batch_size: int, rng: np.random.Generator
) -> Iterator[Batch]:
    """Shuffle the streams into slots; each slot runs one stream up to its last training target."""
    order = rng.permutation(len(streams))
    for start in range(0, len(order), batch_size):
        picked = [i for i in order[start : start + batch_size] if masks[i].any()]
        if not picked:
            continue
        lengths = [int(np.nonzero(masks[i].any(axis=1))[0][-1]) + 1 for i in picked]
        longest = max(lengths)
        s0 = streams[picked[0]]
        x = np.zeros((len(picked), longest, s0.x.shape[1]), np.float32)
        y = np.zeros((len(picked), longest, *s0.y.shape[1:]), np.float32)
        mask = np.zeros((len(picked), longest, s0.y.shape[1]), bool)
        for slot, (i, n) in enumerate(zip(picked, lengths, strict=True)):
            x[slot, :n], y[slot, :n], mask[slot, :n] = (
                streams[i].x[:n],
                streams[i].y[:n],
                masks[i][:n],
            )
        yield Batch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask))


def make_chunks(batch: Batch, chunk: int, first: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Consecutive time slices of `batch`: the first `first` steps, then `chunk` at a time."""
    n = batch.x.shape[1]
    edges = [0, *range(min(first, n), n, chunk), n]
    for a, b in itertools.pairwise(edges):
        if b > a:
            yield batch.x[:, a:b], batch.y[:, a:b], batch.mask[:, a:b]


def persistence_weights(
    streams: list[StreamArrays],
    masks: list[np.ndarray],
    target_index: list[int],
    loss: str = "mse",
    huber_delta: float = 1.0,
) -> np.ndarray:
    """``[horizon, n_targets]``: 1 / persistence's mean `loss` (scaled) per horizon step and
    target over the masked cells, so a weighted loss reads as a fraction of it."""
    horizon, n_targets = streams[0].y.shape[1:]
    total = np.zeros((horizon, n_targets))
    count = np.zeros(horizon)
    for s, m in zip(streams, masks, strict=True):
        # persistence repeats the last reading
        err = cell_loss(s.y - s.x[:, None, target_index], loss, huber_delta)
        total += (err * m[..., None]).sum(axis=0)
        count += m.sum(axis=0)
    mse = total / np.maximum(count, 1)[:, None]
    # A target that never changes would get an infinite weight; leave such cells unweighted.
    return np.where(mse > 1e-12, 1.0 / np.maximum(mse, 1e-12), 1.0)


def cell_loss(err: Any, loss: str = "mse", huber_delta: float = 1.0) -> Any:
    """Each cell's loss from its error (a tensor or an array, scaled units): the squared
    error (mse), the absolute error (mae) or the Huber loss, ``e**2 / 2`` within
    `huber_delta` and ``delta * (|e| - delta / 2)`` beyond (huber)."""
    if loss == "mse":
        return err**2
    a = abs(err)
    if loss == "mae":
        return a
    if loss == "huber":
        lib = torch if isinstance(err, Tensor) else np
        small = lib.minimum(a, lib.full_like(a, huber_delta))
        return small * (a - 0.5 * small)
    raise TrainingConfigError(f"unknown loss {loss!r}; choose mse, mae or huber")


def masked_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    weights: Tensor | None = None,
    loss: str = "mse",
    huber_delta: float = 1.0,
) -> Tensor:
    """Mean `loss` (`cell_loss`) over the (step, horizon) cells the mask keeps, all targets;
    `weights` ``[horizon, n_targets]`` scales each horizon step and target."""
    err: Tensor = cell_loss(pred - target, loss, huber_delta) * mask[..., None]
    if weights is not None:
        err = err * weights
    return err.sum() / (mask.sum() * pred.shape[-1])


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared error over the (step, horizon) cells the mask keeps (`masked_loss`)."""
    return masked_loss(pred, target, mask, weights, "mse")


def evaluate_loss(
    model: Forecaster,
    streams: list[StreamArrays],
    masks: list[np.ndarray],
    weights: np.ndarray | None = None,
    loss: str = "mse",
    huber_delta: float = 1.0,
) -> float:
    """The training loss over the masked cells, running every stream from its first step (no grad)."""
    preds = run_streams(model, [s.x for s in streams])
    total, count = 0.0, 0
    for pred, s, m in zip(preds, streams, masks, strict=True):
        if m.any():
            err = cell_loss(pred - s.y, loss, huber_delta)
            if weights is not None:
                err = err * weights
            total += float(err[m].sum())
            count += int(m.sum()) * pred.shape[-1]
    return total / count if count else math.nan
