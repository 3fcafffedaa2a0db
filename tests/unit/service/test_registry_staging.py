"""A model folder appears whole or not at all; dot-folders are never models; a survey lists
every folder, broken ones with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import RegistryError
from service.registry import Registry
from service.testing import build_onnx_linear, build_onnx_lstm, linear_graph
from tests.unit.service.goldenfixtures import perturb_weight


def _everything(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_dot_folders_are_neither_models_nor_versions(tmp_path) -> None:
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear())
    good = tmp_path / "tiny" / "1"
    # What a crash while staging, or a replaced version, can leave behind.
    for hidden in (tmp_path / "tiny" / ".9.tmp-1a2b3c4d", tmp_path / ".tiny" / "1"):
        hidden.mkdir(parents=True)
        for file in good.iterdir():
            (hidden / file.name).write_bytes(file.read_bytes())
    assert registry.names() == ["tiny"]
    assert registry.versions("tiny") == ["1"]
    assert registry.resolve("tiny").version == "1"
    assert [str(e.ref) for e in registry.survey()] == ["tiny:1"]


def test_a_failure_inside_the_stage_leaves_nothing(tmp_path) -> None:
    registry = Registry(tmp_path)
    with (
        pytest.raises(ValueError, match="year 55840 is out of range"),
        registry.stage("pumps", "1") as folder,
    ):
        assert folder.parent == tmp_path / "pumps" and folder.name.startswith(".1.tmp-")
        (folder / "model.onnx").write_bytes(b"written first")
        raise ValueError("year 55840 is out of range")
    assert _everything(tmp_path) == []
    assert registry.names() == []


def test_a_failure_inside_the_stage_keeps_the_other_versions(tmp_path) -> None:
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear())
    before = _everything(tmp_path)
    with pytest.raises(OSError), registry.stage("tiny", "2") as folder:
        (folder / "card.json").write_text("{}")
        raise OSError("disk full")
    assert _everything(tmp_path) == before


def test_an_existing_version_is_refused_before_anything_is_written(tmp_path) -> None:
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear())
    before = _everything(tmp_path)
    ran = False
    with pytest.raises(RegistryError, match="already exists"), registry.stage("tiny", "1"):
        ran = True
    assert not ran and _everything(tmp_path) == before


def test_overwrite_replaces_the_whole_folder(tmp_path) -> None:
    registry = Registry(tmp_path)
    ref = registry.add(*build_onnx_linear())
    (ref.directory / "forecast.png").write_bytes(b"from the old run")
    registry.add(*build_onnx_linear(description="v2"), overwrite=True)
    assert registry.load("tiny").card.description == "v2"
    assert _everything(tmp_path) == ["tiny", "tiny/1", "tiny/1/card.json", "tiny/1/model.onnx"]


def test_a_failed_overwrite_keeps_the_old_folder(tmp_path) -> None:
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear(description="v1"))
    with pytest.raises(OSError), registry.stage("tiny", "1", overwrite=True) as folder:
        (folder / "model.onnx").write_bytes(b"half")
        raise OSError("disk full")
    assert registry.load("tiny").card.description == "v1"
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")]


def test_survey_lists_every_folder_and_why_the_broken_ones_are(tmp_path) -> None:
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear(name="alpha"))
    registry.add(*build_onnx_linear(name="broken-card"))
    (tmp_path / "broken-card" / "1" / "card.json").write_text("{not json")
    contract = tmp_path / "broken-contract" / "1"
    contract.mkdir(parents=True)
    card, _ = build_onnx_linear(name="broken-contract")
    graph = linear_graph(n_features=5)
    card.embed(graph)
    (contract / "model.onnx").write_bytes(graph.SerializeToString())
    card.write(contract)
    golden_card, proto, _ = build_onnx_lstm(name="broken-golden")
    registry.add(golden_card, proto)
    mutated = perturb_weight(proto, 1.01, "head_w")
    golden_card.embed(mutated)
    (tmp_path / "broken-golden" / "1" / "model.onnx").write_bytes(mutated.SerializeToString())
    no_graph = tmp_path / "no-graph" / "1"
    no_graph.mkdir(parents=True)
    build_onnx_linear(name="no-graph")[0].write(no_graph)
    registry.add(*build_onnx_linear(name="zulu"))

    entries = {str(e.ref): e for e in registry.survey()}
    assert list(entries) == [
        "alpha:1",
        "broken-card:1",
        "broken-contract:1",
        "broken-golden:1",
        "no-graph:1",
        "zulu:1",
    ]
    assert entries["alpha:1"].loaded is not None and entries["zulu:1"].loaded is not None
    problems = {ref: e.problem for ref, e in entries.items() if e.loaded is None}
    assert "invalid model card" in problems["broken-card:1"]
    assert "does not honour the step-model contract" in problems["broken-contract:1"]
    assert "does not reproduce the golden vectors" in problems["broken-golden:1"]
    assert "cannot read the ONNX model" in problems["no-graph:1"]
