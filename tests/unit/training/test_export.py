from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.core.engine import StreamEngine
from service.core.model import OnnxStepModel
from service.modelcard import ModelCard, validate_onnx
from service.registry import Registry
from service.testing import drive, interleave, random_batches, readings_for
from training.errors import ExportError
from training.export import PARITY_TOLERANCE, check_gru_nodes, export_onnx, parity_error
from training.models import KINDS, ModelConfig, build_model
from training.pipeline import train_and_export
from training.predict import CHECKPOINT_FILE, offline_forecast
from training.train import load_data

from .conftest import tiny_config


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        ModelConfig(kind=kind, n_features=3, n_targets=2, horizon=4, hidden=6, layers=2, skip=True)
    ).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_exported_graph_matches_torch_at_any_batch_and_length(kind: str) -> None:
    model = _model(kind)
    graph = export_onnx(model)
    session = ort.InferenceSession(graph.SerializeToString())
    specs = model.state_specs()
    for batch, steps in ((1, 1), (7, 13)):
        x = np.random.default_rng(batch).standard_normal((batch, steps, 3)).astype(np.float32)
        states = model.init_states(batch)
        got = session.run(
            None, {"x": x, **{s.name: t.numpy() for s, t in zip(specs, states, strict=True)}}
        )
        with torch.no_grad():
            want = model(torch.from_numpy(x), *states)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)
    assert parity_error(model, graph) <= 1e-5


def test_gru_nodes_compute_torch_reset_gates() -> None:
    graph = export_onnx(_model("gru"))
    assert check_gru_nodes(graph) == 2
    node = next(n for n in graph.graph.node if n.op_type == "GRU")
    for attr in node.attribute:
        if attr.name == "linear_before_reset":
            attr.i = 0
    with pytest.raises(ExportError, match="linear_before_reset=0"):
        check_gru_nodes(graph)
    assert check_gru_nodes(export_onnx(_model("lstm"))) == 0


def test_parity_check_rejects_a_graph_that_differs() -> None:
    model = _model("rnn")
    graph = export_onnx(model)
    with torch.no_grad():
        model.head.bias += 1e-3  # torch now differs from the exported graph
    with pytest.raises(ExportError, match="differs from torch"):
        parity_error(model, graph)


def test_train_and_export_writes_a_valid_model_folder(tmp_path: Path) -> None:
    ref = train_and_export(tiny_config(kind="gru", name="tiny-gru"), tmp_path, progress=False)
    assert ref.directory == tmp_path / "tiny-gru" / "1"
    for name in (
        "model.onnx",
        "card.json",
        CHECKPOINT_FILE,
        "report.json",
        "loss.png",
        "forecast.png",
    ):
        assert (ref.directory / name).is_file(), name
    loaded = Registry(tmp_path).load("tiny-gru")
    card = loaded.card
    graph = onnx.load_model_from_string(loaded.onnx_bytes)
    assert ModelCard.from_onnx(graph) == card == ModelCard.read(ref.directory)
    validate_onnx(card, graph)
    assert card.kind == "gru" and card.horizon == 3
    assert card.features == ["temp", "pressure", "vibration"]
    assert card.period == 300.0
    assert card.warmup_steps == 4
    assert card.parity_error is not None and card.parity_error <= 1e-5
    assert card.provenance.config["hidden"] == 8
    assert len(card.provenance.data_fingerprint) == 64
    assert {"val_start", "test_start"} <= set(card.provenance.splits)
    assert "torch" in card.provenance.packages
    assert "test.arv" in card.metrics and "test.skill_persistence" in card.metrics
    check_gru_nodes(graph)


def test_refit_model_reports_the_honest_validation_score(tmp_path: Path) -> None:
    ref = train_and_export(
        tiny_config(kind="rnn", name="tiny-refit", refit_epochs=1), tmp_path, progress=False
    )
    report = json.loads((ref.directory / "report.json").read_text())
    assert report["periods"]["val"] == report["before_refit"]["val"] | {
        "note": report["periods"]["val"]["note"]
    }
    card = ModelCard.read(ref.directory)
    assert card.metrics["val.arv"] == report["before_refit"]["val"]["model"]["arv"]
    assert card.metrics["test.arv"] == report["periods"]["test"]["model"]["arv"]
    assert len(report["training"]["refit_history"]) == 1


# -- the delta head ---------------------------------------------------------------------------

REGISTRY = Path(__file__).resolve().parents[3] / "models"


@pytest.mark.parametrize("kind", KINDS)
def test_delta_model_exports_within_the_parity_tolerance(kind: str) -> None:
    torch.manual_seed(0)
    # Two targets read from features 2 and 0, each carried into a target scale of its own.
    last_value = ((2, 0.5, -0.5), (0, 8.0, -16.0))
    model = build_model(
        ModelConfig(
            kind=kind, n_features=3, n_targets=2, horizon=4, hidden=6, head="delta",
            last_value=last_value,
        )
    ).eval()  # fmt: skip
    graph = export_onnx(model)
    assert parity_error(model, graph) <= PARITY_TOLERANCE
    # The carry is in the graph: without it onnxruntime would differ from torch above.
    level = build_model(
        ModelConfig(**{**model.config.to_dict(), "head": "level", "last_value": []})
    )
    level.load_state_dict(model.state_dict())
    with pytest.raises(ExportError, match="differs from torch"):
        parity_error(level.eval(), graph)


@pytest.fixture(scope="module")
def delta_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    train_and_export(
        tiny_config(kind="lstm", name="tiny-delta", head="delta"), root, progress=False
    )
    return root


def test_the_engine_serves_a_delta_model_as_torch_forecasts(delta_registry: Path) -> None:
    loaded = Registry(delta_registry).load("tiny-delta")
    card = loaded.card
    # Readings of the training part (the engine refuses readings far outside its range).
    streams = [s.values[:90] for s in load_data(tiny_config()).series()]
    series = streams[0]
    expected = offline_forecast(loaded.ref.directory, series)  # torch, from checkpoint.pt
    rng = np.random.default_rng(0)
    others = [readings_for(f"other-{i}", v[: 10 * i]) for i, v in enumerate(streams[1:], 1)]
    merged = interleave([readings_for("test", series, features=card.features), *others], rng)
    sink = drive(StreamEngine(OnnxStepModel.from_loaded(loaded)), random_batches(merged, rng, 16))
    got = sink.values_of("test")
    assert sink.rejects == [] and got.shape == expected.shape == (90, 3, 3)
    scale = np.asarray(card.scaler.targets.std)
    assert np.abs(got - expected).max() <= 10 * (card.parity_error or 1e-6) * scale.max() + 1e-4


def test_a_delta_card_round_trips_and_an_old_card_reads_as_level(delta_registry: Path) -> None:
    loaded = Registry(delta_registry).load("tiny-delta")
    card = loaded.card
    assert card.head == "delta" and card.provenance.config["head"] == "delta"
    assert json.loads(card.to_json())["head"] == "delta"
    assert ModelCard.from_json(card.to_json()) == card
    assert ModelCard.from_onnx(onnx.load_model_from_string(loaded.onnx_bytes)) == card
    old = json.loads((REGISTRY / "sensors-demo" / "1" / "card.json").read_text())
    assert "head" not in old
    assert ModelCard.from_json(json.dumps(old)).head == "level"
    without = json.loads(card.to_json())
    del without["head"]
    assert ModelCard.from_json(json.dumps(without)) == card.model_copy(update={"head": "level"})
