"""Export writes golden vectors and feature ranges into the card; re-export adds them to an
older model in place without touching its weights, metrics or run files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.modelcard import ModelCard, Scaler, ScalerSet
from service.registry import Registry, write_model
from training.data import Series, Splits, load_dataset
from training.errors import ExportError
from training.export import GOLDEN_FLOOR, export_onnx, golden_vectors
from training.models import ModelConfig, build_model
from training.pipeline import export_model, train_and_export
from training.predict import load_checkpoint
from training.train import resolve_splits

from .conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("registry")
    train_and_export(tiny_config(kind="gru", name="tiny-gru"), root, progress=False)
    return root


def _window_start(part: np.ndarray, row: np.ndarray) -> int:
    starts = [
        i for i in range(len(part) - len(row) + 1) if np.array_equal(part[i : i + len(row)], row)
    ]
    assert starts, "the golden row is not a window of the stream's training readings"
    return starts[0]


def test_the_card_carries_golden_vectors_from_the_training_part(trained: Path) -> None:
    loaded = Registry(trained).load("tiny-gru")
    card, golden = loaded.card, loaded.card.golden
    assert golden is not None and golden.reference.startswith("torch")
    assert golden.x.shape == (3, 16, card.n_features)
    assert golden.y.shape == (3, 16, card.horizon, card.n_targets)
    assert golden.tolerance >= GOLDEN_FLOOR
    assert loaded.golden_error is not None and loaded.golden_error <= golden.tolerance

    config = tiny_config(kind="gru", name="tiny-gru")
    dataset = load_dataset("synthetic", n_streams=6, n_steps=240, seed=config.data_seed)
    splits = resolve_splits(config, dataset)
    parts = [s.values[splits.part(s.ts, "train")] for s in dataset.series()]
    x = golden.x.array()
    # Row 0: the first readings of the first stream; row 2 ends where the training part ends.
    np.testing.assert_array_equal(x[0], parts[0][:16])
    np.testing.assert_array_equal(x[2], parts[2][-16:])
    assert 0 < _window_start(parts[1], x[1]) < len(parts[1]) - 16  # from the middle
    states = [s.array() for s in golden.states]
    assert not np.any(np.take(states[0], 0, axis=1))  # row 0 starts cold
    assert np.any(np.take(states[0], 1, axis=1))  # the others from a warmed state

    # The expected values are torch's: the checkpoint reproduces them.
    model, _ = load_checkpoint(trained / "tiny-gru" / "1")
    scaled = card.scaler.features.transform(x).astype(np.float32)
    with torch.no_grad():
        y, *out = model(torch.from_numpy(scaled), *(torch.from_numpy(s) for s in states))
    std, mean = np.asarray(card.scaler.targets.std), np.asarray(card.scaler.targets.mean)
    want = y.numpy().astype(np.float64) * std + mean  # in original units, in float64
    np.testing.assert_allclose(golden.y.array(), want, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(golden.states_out[0].array(), out[0].numpy())


def test_the_card_records_each_features_training_range(trained: Path) -> None:
    card = Registry(trained).load("tiny-gru").card
    config = tiny_config(kind="gru", name="tiny-gru")
    dataset = load_dataset("synthetic", n_streams=6, n_steps=240, seed=config.data_seed)
    splits = resolve_splits(config, dataset)
    table = dataset.table
    train = table[table["ts"] < splits.val_start][dataset.features].to_numpy(np.float64)
    whole = table[dataset.features].to_numpy(np.float64)
    assert card.feature_ranges == [
        (float(lo), float(hi)) for lo, hi in zip(train.min(0), train.max(0), strict=True)
    ]
    assert card.feature_ranges != [
        (float(lo), float(hi)) for lo, hi in zip(whole.min(0), whole.max(0), strict=True)
    ]


def test_export_refuses_a_graph_that_differs_from_torch_on_training_readings() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="rnn", n_features=2, n_targets=1, horizon=2, hidden=4))
    graph = export_onnx(model)
    with torch.no_grad():
        model.head.bias += 1e-3  # torch now differs from the exported graph
    rng = np.random.default_rng(0)
    values = rng.normal(10, 2, (40, 2)).astype(np.float32)
    series = [Series("a", np.arange(40.0), values, values)]
    scaler = ScalerSet(
        features=Scaler(mean=[10.0, 10.0], std=[2.0, 2.0]), targets=Scaler(mean=[10.0], std=[2.0])
    )
    with pytest.raises(ExportError, match="on readings of the training data"):
        golden_vectors(model, graph, scaler, series, Splits(30.0, 35.0))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_re_export_in_place_adds_golden_vectors_and_changes_nothing_else(tmp_path: Path) -> None:
    train_and_export(tiny_config(kind="lstm", name="older"), tmp_path, progress=False)
    directory = tmp_path / "older" / "1"
    # An export from before golden vectors: the same files, the card without them.
    card = ModelCard.read(directory)
    older = ModelCard.model_validate(card.model_dump() | {"golden": None, "feature_ranges": None})
    old_graph = onnx.load(directory / "model.onnx")
    write_model(older, old_graph, directory)
    before = {p.name: _digest(p) for p in directory.iterdir()}

    ref = export_model(directory, tmp_path, name=None, version="1", overwrite=True)

    assert ref.directory == directory
    after = {p.name: _digest(p) for p in directory.iterdir()}
    assert set(after) == set(before)
    for name in ("checkpoint.pt", "report.json", "loss.png", "forecast.png"):
        assert after[name] == before[name], name
    new = Registry(tmp_path).load("older")
    assert new.card.golden is not None and new.card.feature_ranges == card.feature_ranges
    assert new.card.model_dump(exclude={"golden", "feature_ranges"}) == older.model_dump(
        exclude={"golden", "feature_ranges"}
    )
    assert [p.name for p in (tmp_path / "older").iterdir()] == ["1"]

    old = ort.InferenceSession(old_graph.SerializeToString(), providers=["CPUExecutionProvider"])
    now = ort.InferenceSession(new.onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((5, 30, card.n_features)).astype(np.float32)}
    for spec in card.states:
        feeds[spec.name] = rng.standard_normal(spec.batched_shape(5)).astype(np.float32)
    for a, b in zip(old.run(None, feeds), now.run(None, feeds), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
