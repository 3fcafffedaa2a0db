"""The training run's plots: the loss curves and one stream's forecasts against its actuals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_forecasts", "plot_losses"]


def plot_losses(
    history: list[dict[str, float]],
    path: Path,
    *,
    refit: list[dict[str, float]] | None = None,
    ylabel: str = "MSE (scaled)",
) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    if refit:
        ax.plot(
            [h["epoch"] for h in refit], [h["train_loss"] for h in refit], label="refit (train+val)"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("loss curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_forecasts(
    ts: np.ndarray,
    actual: np.ndarray,
    forecast: np.ndarray,
    periods: dict[str, tuple[float, float | None]],
    path: Path,
    *,
    title: str,
    last_steps: int | None = None,
) -> Path:
    """One stream: the actual first target and the model's first and last horizon steps,
    each drawn at the time it forecasts; evaluation periods shaded."""
    horizon = forecast.shape[1]
    n = len(ts) if last_steps is None else min(last_steps, len(ts))
    lo = len(ts) - n
    when = _dates(ts)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(when[lo:], actual[lo:, 0], color="black", lw=1.2, label="actual")
    for h in sorted({0, horizon - 1}):
        ax.plot(
            when[lo + 1 + h :],
            forecast[lo : len(ts) - 1 - h, h, 0],
            lw=1,
            label=f"forecast +{h + 1}",
        )
    for i, (name, (start, end)) in enumerate(periods.items()):
        right = ts[-1] if end is None else min(end, ts[-1])
        if start < right and start >= ts[lo]:
            span = _dates(np.array([start, right]))
            ax.axvspan(span[0], span[1], alpha=0.12, color=f"C{i + 2}", label=name)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _dates(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds as datetime64, so the time axis reads as dates."""
    return np.asarray(np.round(ts), dtype=np.int64).astype("datetime64[s]")
