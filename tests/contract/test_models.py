"""Checks every model in models/ must pass, whoever trained it and however.

Card valid and embedded, graph and card agree, dynamic batch, parity with the trainer's
offline prediction within the error recorded at export, deterministic output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.core.inputs import InputEncoder
from service.modelcard import ModelCard, validate_onnx
from service.registry import LoadedModel, Registry, load_model_dir

ROOT = Path(__file__).resolve().parents[2] / "models"
REGISTRY = Registry(ROOT)
MODELS = [(name, version) for name in REGISTRY.names() for version in REGISTRY.versions(name)]
STEPS = 60


@pytest.fixture(params=MODELS, ids=[f"{n}:{v}" for n, v in MODELS], scope="module")
def loaded(request: pytest.FixtureRequest) -> LoadedModel:
    name, version = request.param
    return load_model_dir(REGISTRY.resolve(name, version))


def _session(loaded: LoadedModel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(loaded.onnx_bytes, options, providers=["CPUExecutionProvider"])


def _inputs(card: ModelCard, batch: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((batch, steps, card.n_inputs)).astype(np.float32)}
    for spec in card.states:
        feeds[spec.name] = (
            spec.init + 0.5 * rng.standard_normal(spec.batched_shape(batch))
        ).astype(np.float32)
    return feeds


def _rows(feeds: dict[str, np.ndarray], card: ModelCard, i: int) -> dict[str, np.ndarray]:
    axes = {"x": 0, **{s.name: s.batch_axis for s in card.states}}
    return {k: np.take(v, [i], axis=axes[k]) for k, v in feeds.items()}


def test_registry_is_not_empty() -> None:
    assert MODELS, f"no models in {ROOT}"


def test_card_is_valid_and_embedded(loaded: LoadedModel) -> None:
    graph = onnx.load_model_from_string(loaded.onnx_bytes)
    onnx.checker.check_model(graph)
    assert ModelCard.from_onnx(graph) == loaded.card == ModelCard.read(loaded.ref.directory)
    assert loaded.card.parity_error is not None and loaded.card.parity_error <= 1e-5
    assert loaded.card.provenance.data_fingerprint


def test_graph_and_card_agree(loaded: LoadedModel) -> None:
    validate_onnx(loaded.card, onnx.load_model_from_string(loaded.onnx_bytes))
    session = _session(loaded)
    assert {i.name for i in session.get_inputs()} == {"x", *(s.name for s in loaded.card.states)}
    out = session.run(None, _inputs(loaded.card, 2, 3, seed=0))
    card = loaded.card
    assert out[0].shape == (2, 3, card.horizon, card.n_targets)
    for spec, state in zip(card.states, out[1:], strict=True):
        assert state.shape == spec.batched_shape(2)


def test_dynamic_batch_rows_equal_single_calls(loaded: LoadedModel) -> None:
    card, session = loaded.card, _session(loaded)
    feeds = _inputs(card, 7, 5, seed=1)
    together = session.run(None, feeds)
    for i in range(7):
        alone = session.run(None, _rows(feeds, card, i))
        np.testing.assert_allclose(together[0][i : i + 1], alone[0], atol=1e-5, rtol=0)
        for spec, t, a in zip(card.states, together[1:], alone[1:], strict=True):
            np.testing.assert_allclose(np.take(t, [i], axis=spec.batch_axis), a, atol=1e-5, rtol=0)


def test_output_is_deterministic(loaded: LoadedModel) -> None:
    feeds = _inputs(loaded.card, 3, 8, seed=2)
    first = _session(loaded).run(None, feeds)
    second = _session(loaded).run(None, feeds)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_parity_with_the_offline_prediction(loaded: LoadedModel) -> None:
    if not (loaded.ref.directory / "checkpoint.pt").is_file():
        pytest.skip("no checkpoint.pt: the model was not made by the trainer")
    pytest.importorskip("torch")
    from training.predict import offline_forecast

    card = loaded.card
    rng = np.random.default_rng(3)
    # readings across each feature's training range, a period apart
    ranges = np.asarray(card.feature_ranges or [(-1.0, 1.0)] * card.n_features)
    series = rng.uniform(ranges[:, 0], ranges[:, 1], (STEPS, card.n_features)).astype(np.float32)
    ts = 1_700_000_000.0 + card.period * np.arange(STEPS)
    offline = card.scaler.targets.transform(offline_forecast(loaded.ref.directory, series, ts))
    session = _session(loaded)
    states = {s.name: np.full(s.batched_shape(1), s.init, np.float32) for s in card.states}
    online = []
    inputs = InputEncoder(card.features, card.derived).encode(series, ts)
    for row in card.scaler.features.transform(inputs).astype(np.float32):
        y, *new = session.run(None, {"x": row[None, None, :], **states})
        states = {s.name: v for s, v in zip(card.states, new, strict=True)}
        online.append(y[0, 0])
    error = float(np.abs(np.asarray(online) - offline).max())
    # Scaled units, like the recorded parity error; allow float32 round-off in the scaler.
    assert error <= 2 * card.parity_error + 1e-5  # type: ignore[operator]
