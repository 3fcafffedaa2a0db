from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.errors import ModelCardError, ModelContractError, RegistryError
from service.modelcard import ModelCard
from service.registry import LATEST, Registry, load_model_dir, parse_model_spec, version_key
from service.testing import build_onnx_linear, linear_graph


def test_versions_sort_numerically_and_latest_is_highest(tmp_path):
    registry = Registry(tmp_path)
    for version in ["2", "10", "1.9", "1.10"]:
        registry.add(*build_onnx_linear(version=version))
    assert registry.versions("tiny") == ["1.9", "1.10", "2", "10"]
    assert registry.resolve("tiny").version == "10"
    assert registry.resolve("tiny", "1.10").directory == tmp_path / "tiny" / "1.10"
    assert registry.names() == ["tiny"]


def test_version_key_orders_numbers_before_text():
    assert sorted(["1.0-rc1", "1.0-2", "1.0"], key=version_key) == ["1.0", "1.0-2", "1.0-rc1"]


def test_model_spec_parsing():
    assert parse_model_spec("sensors-demo") == ("sensors-demo", LATEST)
    assert parse_model_spec("sensors-demo:3") == ("sensors-demo", "3")
    with pytest.raises(RegistryError):
        parse_model_spec(":3")


def test_added_model_loads_and_runs(tmp_path):
    registry = Registry(tmp_path)
    card, graph = build_onnx_linear()
    ref = registry.add(card, graph)
    assert ref.card_path.is_file() and ref.onnx_path.is_file()
    loaded = registry.load("tiny")
    assert loaded.card == card
    session = ort.InferenceSession(loaded.onnx_bytes, providers=["CPUExecutionProvider"])
    y, h = session.run(
        None, {"x": np.ones((7, 2, 2), np.float32), "h": np.zeros((1, 7, 4), np.float32)}
    )
    assert y.shape == (7, 2, 3, 1) and h.shape == (1, 7, 4)


def test_adding_twice_needs_overwrite(tmp_path):
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear())
    with pytest.raises(RegistryError, match="already exists"):
        registry.add(*build_onnx_linear())
    registry.add(*build_onnx_linear(description="v2"), overwrite=True)
    assert registry.load("tiny").card.description == "v2"


def test_adding_a_graph_that_breaks_the_contract_writes_nothing(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(ModelContractError):
        registry.add(build_onnx_linear()[0], linear_graph(n_features=5))
    assert registry.names() == []


def test_unknown_model_and_version_list_what_exists(tmp_path):
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear())
    with pytest.raises(RegistryError, match=r"no model 'nope'.*models there: tiny"):
        registry.resolve("nope")
    with pytest.raises(RegistryError, match=r"no version '7'.*versions: 1"):
        registry.resolve("tiny", "7")


def test_card_json_that_disagrees_with_the_embedded_card_is_refused(tmp_path):
    registry = Registry(tmp_path)
    ref = registry.add(*build_onnx_linear())
    build_onnx_linear(description="edited by hand")[0].write(ref.directory)
    with pytest.raises(ModelCardError, match="differ"):
        load_model_dir(ref)


def test_card_in_the_wrong_folder_is_refused(tmp_path):
    registry = Registry(tmp_path)
    ref = registry.add(*build_onnx_linear())
    moved = tmp_path / "tiny" / "2"
    ref.directory.rename(moved)
    with pytest.raises(ModelCardError, match="the card says tiny:1 but the folder is tiny/2"):
        registry.load("tiny", "2")


def test_corrupt_onnx_is_a_clear_error(tmp_path):
    registry = Registry(tmp_path)
    ref = registry.add(*build_onnx_linear())
    ref.onnx_path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelCardError, match=r"cannot read the ONNX model|no 'sensorcast\.card'"):
        registry.load("tiny")


def test_card_survives_onnx_save_and_load(tmp_path):
    registry = Registry(tmp_path)
    ref = registry.add(*build_onnx_linear())
    assert ModelCard.from_onnx(onnx.load(ref.onnx_path)) == build_onnx_linear()[0]
