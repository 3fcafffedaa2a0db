"""A failed run leaves nothing behind: the model folder (graph, card, checkpoint, report,
plots) appears whole, or not at all, whichever step of the writing fails."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from service.cli import main
from service.modelcard import ModelCard
from service.registry import Registry, write_model
from training import pipeline
from training.pipeline import evaluate_model, export_model, train_and_export
from training.train import TrainResult, train

from .conftest import tiny_config

CONFIG = tiny_config(kind="rnn", name="atomic", hidden=4, layers=1)


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    torch.set_num_threads(1)
    return train(CONFIG, progress=False)


@pytest.fixture(autouse=True)
def _train_once(trained: TrainResult, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run exports the same trained model: these tests are about the writing."""
    monkeypatch.setattr(pipeline, "train", lambda config, progress=True: trained)


staged: list[list[str]] = []  # what the staging folder held at each injected failure


def _fail(*args: Any, **kwargs: Any) -> None:
    staged.extend(sorted(p.name for p in d.iterdir()) for d in Path.cwd().glob("*/.*.tmp-*"))
    raise ValueError("year 55840 is out of range")


# Every step that writes into the model folder, in the order the run takes them.
STEPS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "model.onnx": lambda mp: mp.setattr(Path, "write_bytes", _fail),
    "card.json": lambda mp: mp.setattr(ModelCard, "write", _fail),
    "checkpoint.pt": lambda mp: mp.setattr("training.export.torch.save", _fail),
    "report.json": lambda mp: mp.setattr(pipeline, "write_report", _fail),
    "loss.png": lambda mp: mp.setattr(pipeline, "plot_losses", _fail),
    "forecast.png": lambda mp: mp.setattr(pipeline, "plot_forecasts", _fail),
    "rename": lambda mp: mp.setattr("service.registry._publish", _fail),
}


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in root.rglob("*")
    }


def _listed(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["models", "--registry", str(root)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failure_at_any_step_leaves_nothing(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    staged.clear()
    STEPS[step](monkeypatch)
    with pytest.raises(ValueError, match="year 55840"):
        train_and_export(CONFIG, Path("."), progress=False)
    monkeypatch.undo()
    # The failure came while the folder was being assembled, with what came before it in it.
    written = list(STEPS)[: list(STEPS).index(step)]
    assert staged == [sorted(written)]
    assert _tree(tmp_path) == {}  # no model folder, no staging folder, no empty name folder
    assert "no models in" in _listed(tmp_path, capsys)


def test_a_run_that_succeeds_writes_every_file_at_once(tmp_path: Path) -> None:
    ref = train_and_export(CONFIG, tmp_path, progress=False)
    files = {"model.onnx", "card.json", "checkpoint.pt", "report.json", "loss.png", "forecast.png"}
    assert {p.name for p in ref.directory.iterdir()} == files
    assert [p.name for p in (tmp_path / "atomic").iterdir()] == ["1"]
    Registry(tmp_path).load("atomic")


def _previous_run(root: Path) -> Path:
    """A model folder the next run would replace, with files that run would write differently."""
    ref = train_and_export(CONFIG, root, progress=False)
    card = ModelCard.read(ref.directory)
    write_model(
        card.model_copy(update={"description": "the previous run"}),
        onnx.load(ref.onnx_path),
        ref.directory,
    )
    report = json.loads((ref.directory / "report.json").read_text())
    (ref.directory / "report.json").write_text(json.dumps(report | {"run": "previous"}))
    return ref.directory


@pytest.mark.parametrize("step", ["card.json", "checkpoint.pt", "forecast.png", "rename"])
def test_a_failed_overwrite_keeps_the_model_it_would_replace(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _previous_run(tmp_path)
    before = _tree(tmp_path)
    STEPS[step](monkeypatch)
    with pytest.raises(ValueError, match="year 55840"):
        train_and_export(CONFIG, tmp_path, overwrite=True, progress=False)
    monkeypatch.undo()
    assert _tree(tmp_path) == before
    assert _listed(tmp_path, capsys).startswith("atomic:1")
    assert Registry(tmp_path).load("atomic").card.description == "the previous run"


def test_a_failed_evaluate_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _previous_run(tmp_path)
    before = _tree(tmp_path)
    monkeypatch.setattr(pipeline, "plot_forecasts", _fail)
    with pytest.raises(ValueError, match="year 55840"):
        evaluate_model(directory)
    assert _tree(tmp_path) == before
    monkeypatch.undo()
    evaluate_model(directory)  # and one that succeeds replaces the report
    assert "run" not in json.loads((directory / "report.json").read_text())
    assert not [p for p in (tmp_path / "atomic").iterdir() if p.name.startswith(".")]


def test_a_failed_export_leaves_no_new_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = train_and_export(CONFIG, tmp_path, progress=False)
    before = _tree(tmp_path)
    monkeypatch.setattr("training.pipeline.shutil.copy2", _fail)  # copying the run's files
    with pytest.raises(ValueError, match="year 55840"):
        export_model(ref.directory, tmp_path, name=None, version="2")
    assert _tree(tmp_path) == before
    assert Registry(tmp_path).versions("atomic") == ["1"]
