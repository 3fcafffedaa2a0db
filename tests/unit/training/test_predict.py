"""End to end per cell kind: train -> export -> Registry.load -> onnxruntime, against the
trainer's offline prediction; and no forecast depends on a later reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.registry import LoadedModel, Registry
from service.simulate import simulate
from training.errors import TrainingDataError
from training.models import KINDS
from training.pipeline import train_and_export
from training.predict import offline_forecast

from .conftest import tiny_config


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for kind in KINDS:
        train_and_export(
            tiny_config(kind=kind, name=f"tiny-{kind}", lags=[1, 2, 4]), root, progress=False
        )
    return root


def _step_through_onnx(loaded: LoadedModel, series: np.ndarray) -> np.ndarray:
    """What the service does: one reading at a time, state carried, de-normalised."""
    card = loaded.card
    session = ort.InferenceSession(loaded.onnx_bytes)
    states = {s.name: np.full(s.batched_shape(1), s.init, np.float32) for s in card.states}
    out = []
    for row in card.scaler.features.transform(series).astype(np.float32):
        y, *new = session.run(None, {"x": row[None, None, :], **states})
        states = {s.name: v for s, v in zip(card.states, new, strict=True)}
        out.append(card.scaler.targets.inverse(y[0, 0]))
    return np.asarray(out)


@pytest.mark.parametrize("kind", KINDS)
def test_served_model_matches_the_offline_prediction(registry: Path, kind: str) -> None:
    loaded = Registry(registry).load(f"tiny-{kind}")
    series = simulate(9, 120, seed=5).values[8]
    offline = offline_forecast(loaded.ref.directory, series)
    online = _step_through_onnx(loaded, series)
    assert offline.shape == online.shape == (120, 3, 3)
    scale = np.asarray(loaded.card.scaler.targets.std)
    assert (
        np.abs(online - offline).max()
        <= 10 * (loaded.card.parity_error or 1e-6) * scale.max() + 1e-4
    )


@pytest.mark.parametrize("kind", KINDS)
def test_no_forecast_depends_on_a_later_reading(registry: Path, kind: str) -> None:
    directory = Registry(registry).resolve(f"tiny-{kind}").directory
    series = simulate(1, 80, seed=2).values[0]
    changed = series.copy()
    changed[50:] *= 1.5
    a, b = offline_forecast(directory, series), offline_forecast(directory, changed)
    np.testing.assert_array_equal(a[:50], b[:50])
    assert not np.allclose(a[50:], b[50:])


def test_offline_forecast_checks_the_series_shape(registry: Path) -> None:
    directory = Registry(registry).resolve("tiny-lstm").directory
    with pytest.raises(TrainingDataError, match=r"\[T, 3\]"):
        offline_forecast(directory, np.zeros((10, 2)))
