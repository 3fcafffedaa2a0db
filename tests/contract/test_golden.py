"""The card proves its graph: every shipped model carries golden vectors and feature ranges,
and a graph that computes something other than what its card was exported with is refused.

The mutated copies are built in a temporary registry at test time, from the shipped files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.errors import ModelCardError, ModelContractError
from service.modelcard import ModelCard
from service.registry import LoadedModel, Registry, load_model_dir

ROOT = Path(__file__).resolve().parents[2] / "models"
REGISTRY = Registry(ROOT)
MODELS = [(name, version) for name in REGISTRY.names() for version in REGISTRY.versions(name)]


@pytest.fixture(params=MODELS, ids=[f"{n}:{v}" for n, v in MODELS], scope="module")
def loaded(request: pytest.FixtureRequest) -> LoadedModel:
    name, version = request.param
    return load_model_dir(REGISTRY.resolve(name, version))


def test_every_shipped_model_proves_its_graph(loaded: LoadedModel) -> None:
    card = loaded.card
    assert card.golden is not None, f"{card.ref}: re-export it to add golden vectors"
    assert loaded.golden_error is not None and loaded.golden_error <= card.golden.tolerance
    assert card.golden.tolerance >= 1e-4
    assert card.golden.x.shape[0] >= 2 and card.golden.x.shape[1] >= 8
    assert card.golden.reference.startswith("torch")


def test_every_shipped_model_records_its_feature_ranges(loaded: LoadedModel) -> None:
    card = loaded.card
    assert card.feature_ranges is not None and len(card.feature_ranges) == card.n_features
    # The golden inputs come from the training part, so they lie inside the recorded ranges.
    x = card.golden.x.array() if card.golden else np.empty((0, 0, card.n_features))
    for k, (lo, hi) in enumerate(card.feature_ranges):
        assert lo <= x[..., k].min() and x[..., k].max() <= hi


# -- mutated copies of sunspots-gru:1 -------------------------------------------------------------


def _copy(tmp_path: Path, name: str) -> tuple[Path, ModelCard, onnx.ModelProto]:
    directory = tmp_path / name / "1"
    shutil.copytree(ROOT / name / "1", directory)
    return directory, ModelCard.read(directory), onnx.load(directory / "model.onnx")


def _save(directory: Path, card: ModelCard, graph: onnx.ModelProto) -> None:
    """Card embedded and card.json written together: only the golden vectors can tell."""
    card.embed(graph)
    onnx.save_model(graph, directory / "model.onnx")
    card.write(directory)


def _refused(tmp_path: Path, name: str) -> str:
    with pytest.raises(ModelContractError) as refused:
        Registry(tmp_path).load(name)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{name}:1: the graph does not reproduce the golden vectors")
    assert "tolerance 0.0001" in message and "re-export" in message
    return message


@pytest.fixture
def needs_gru() -> None:
    if "sunspots-gru" not in REGISTRY.names():
        pytest.skip("sunspots-gru is not in the shipped registry")


@pytest.mark.usefixtures("needs_gru")
def test_a_gru_with_linear_before_reset_flipped_is_refused(tmp_path: Path) -> None:
    directory, card, graph = _copy(tmp_path, "sunspots-gru")
    flipped = 0
    for node in graph.graph.node:
        for attr in node.attribute:
            if node.op_type == "GRU" and attr.name == "linear_before_reset":
                attr.i, flipped = 0, flipped + 1
    assert flipped == 1
    _save(directory, card, graph)
    message = _refused(tmp_path, "sunspots-gru")
    assert float(message.split("max abs error ")[1].split(",")[0]) > 0.1


@pytest.mark.usefixtures("needs_gru")
def test_a_perturbed_weight_is_refused(tmp_path: Path) -> None:
    directory, card, graph = _copy(tmp_path, "sunspots-gru")
    gru = next(n for n in graph.graph.node if n.op_type == "GRU")
    weight = next(i for i in graph.graph.initializer if i.name == gru.input[1])  # W
    values = numpy_helper.to_array(weight).copy()
    values.flat[int(np.argmax(np.abs(values)))] *= 1.01
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    _save(directory, card, graph)
    _refused(tmp_path, "sunspots-gru")


@pytest.mark.usefixtures("needs_gru")
def test_another_models_graph_of_the_same_signature_is_refused(tmp_path: Path) -> None:
    directory, card, _ = _copy(tmp_path, "sunspots-gru")
    if "sunspots-rnn" not in REGISTRY.names():
        pytest.skip("sunspots-rnn is not in the shipped registry")
    other = onnx.load(ROOT / "sunspots-rnn" / "1" / "model.onnx")
    assert ModelCard.from_onnx(other).states == card.states  # the same inputs and outputs
    # A plain file swap is caught by the embedded card...
    shutil.copy(ROOT / "sunspots-rnn" / "1" / "model.onnx", directory / "model.onnx")
    with pytest.raises(ModelCardError, match="differ"):
        Registry(tmp_path).load("sunspots-gru")
    # ...and a swap with this card embedded (an exporter that saved the wrong graph) by the
    # golden vectors.
    _save(directory, card, other)
    _refused(tmp_path, "sunspots-gru")


@pytest.mark.usefixtures("needs_gru")
@pytest.mark.parametrize(
    ("part", "field", "factor"),
    [("features", "std", 1.01), ("features", "mean", 1.01), ("targets", "mean", 1.01)],
)
def test_an_edited_scaler_is_refused(tmp_path: Path, part: str, field: str, factor: float) -> None:
    directory, card, graph = _copy(tmp_path, "sunspots-gru")
    data = card.model_dump()
    data["scaler"][part][field] = [v * factor for v in data["scaler"][part][field]]
    edited = ModelCard.model_validate(data)
    # card.json alone: it no longer matches the card embedded in the graph.
    edited.write(directory)
    with pytest.raises(ModelCardError, match="differ"):
        Registry(tmp_path).load("sunspots-gru")
    # Both cards edited alike: the golden vectors were computed with the trained scaler.
    _save(directory, edited, graph)
    _refused(tmp_path, "sunspots-gru")


@pytest.mark.usefixtures("needs_gru")
def test_the_unmodified_copy_loads(tmp_path: Path) -> None:
    directory, card, graph = _copy(tmp_path, "sunspots-gru")
    _save(directory, card, graph)
    assert Registry(tmp_path).load("sunspots-gru").card == card
