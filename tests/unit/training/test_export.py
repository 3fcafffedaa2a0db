from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.modelcard import ModelCard, validate_onnx
from service.registry import Registry
from training.errors import ExportError
from training.export import check_gru_nodes, export_onnx, parity_error
from training.models import KINDS, ModelConfig, build_model
from training.pipeline import train_and_export
from training.predict import CHECKPOINT_FILE

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
