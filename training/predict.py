"""Offline forecasts: run a model over whole series from the initial state, in one pass.

`offline_forecast` is the oracle the service's parity tests compare against: the torch
model rebuilt from ``checkpoint.pt`` and the card, fed one stream's raw series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.core.inputs import InputEncoder
from service.modelcard import ModelCard
from training.errors import TrainingDataError
from training.models import Forecaster, ModelConfig, build_model

__all__ = ["CHECKPOINT_FILE", "load_checkpoint", "offline_forecast", "run_streams"]

CHECKPOINT_FILE = "checkpoint.pt"


def run_streams(
    model: Forecaster, inputs: list[np.ndarray], batch_size: int = 64
) -> list[np.ndarray]:
    """Scaled forecasts ``[T, horizon, n_targets]`` for each scaled input ``[T, n_features]``.

    Streams are padded at the end to share a batch; padding comes after every real step,
    so it cannot change a real step's forecast. Runs on the device the model is on.
    """
    was_training = model.training
    device = model.device
    model.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            group = inputs[start : start + batch_size]
            longest = max(len(x) for x in group)
            batch = np.zeros((len(group), longest, group[0].shape[-1]), np.float32)
            for i, x in enumerate(group):
                batch[i, : len(x)] = x
            states = model.init_states(len(group), device=device)
            y = model(torch.from_numpy(batch).to(device), *states)[0].cpu().numpy()
            out.extend(y[i, : len(x)] for i, x in enumerate(group))
    model.train(was_training)
    return out


def load_checkpoint(model_dir: Path) -> tuple[Forecaster, dict[str, Any]]:
    """Rebuild the torch model saved by the exporter; returns it (in eval mode) and the checkpoint."""
    path = Path(model_dir) / CHECKPOINT_FILE
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise TrainingDataError(f"{path}: cannot load the checkpoint ({exc})") from exc
    model = build_model(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, checkpoint


def offline_forecast(
    model_dir: Path, series: np.ndarray, ts: np.ndarray | None = None
) -> np.ndarray:
    """De-normalised forecasts ``[T, horizon, n_targets]`` for one stream's raw readings
    ``[T, n_features]`` taken at `ts` ``[T]`` (epoch seconds; needed when the card derives
    calendar inputs)."""
    card = ModelCard.read(Path(model_dir))
    series = np.asarray(series, np.float32)
    if series.ndim != 2 or series.shape[1] != card.n_features:
        raise TrainingDataError(
            f"series must be [T, {card.n_features}] ({', '.join(card.features)}), got {series.shape}"
        )
    encoder = InputEncoder(card.features, card.derived)
    if encoder.needs_ts and (ts is None or np.shape(ts) != (len(series),)):
        raise TrainingDataError(f"{card.ref} derives calendar inputs: give the {len(series)} ts")
    model, _ = load_checkpoint(Path(model_dir))
    scaled = card.scaler.features.transform(encoder.encode(series, ts)).astype(np.float32)
    y = run_streams(model, [scaled])[0]
    return np.asarray(card.scaler.targets.inverse(y), np.float32)
