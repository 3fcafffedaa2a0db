"""Tiny training configurations: every test trains in a second or two."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training.config import TrainConfig


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The machine is shared: tiny models train faster on one thread anyway.
    torch.set_num_threads(1)


def tiny_config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "name": "tiny",
        "data": "synthetic",
        "n_streams": 6,
        "n_steps": 240,
        "horizon": 3,
        "hidden": 8,
        "layers": 2,
        "chunk": 24,
        "burn_in": 4,
        "batch_size": 4,
        "max_epochs": 2,
        "patience": 2,
        "lr": 1e-2,
        "device": "cpu",
    }
    values.update(overrides)
    return TrainConfig(**values)
