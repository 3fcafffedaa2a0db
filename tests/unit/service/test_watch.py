"""The model watcher: a newer version is loaded and verified; a broken one is refused,
counted, not retried while its files stay the same, and taken once they are fixed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service.config import ModelSettings
from service.core.engine import StreamEngine
from service.core.model import OnnxStepModel
from service.metrics import ServiceMetrics
from service.registry import Registry
from service.testing import add_sensor_lstm
from service.watch import ModelWatcher


def _watcher(root: Path, metrics: ServiceMetrics) -> ModelWatcher:
    settings = ModelSettings(registry=root, name="lstm-it", watch_interval=30.0)
    engine = StreamEngine(OnnxStepModel.from_loaded(Registry(root).load("lstm-it", "1")))
    watcher = ModelWatcher.serving(settings, engine, metrics)
    assert watcher is not None
    watcher.stop()  # looked at by hand below
    return watcher


def _failed(metrics: ServiceMetrics) -> float:
    value = metrics.registry.get_sample_value("sensorcast_model_swaps_total", {"outcome": "failed"})
    return value or 0.0


def test_a_newer_version_is_loaded_verified_and_handed_over_once(tmp_path: Path) -> None:
    add_sensor_lstm(tmp_path)
    metrics = ServiceMetrics()
    watcher = _watcher(tmp_path, metrics)
    assert watcher.look() is None  # version 1 is the served one
    add_sensor_lstm(tmp_path, version="2", seed=5)
    ready = watcher.look()
    assert ready is not None and ready.model.card.version == "2"
    assert watcher.take() is ready and watcher.take() is None
    assert watcher.look() is None  # now served


def test_a_broken_version_is_refused_until_its_files_change(tmp_path: Path) -> None:
    add_sensor_lstm(tmp_path)
    metrics = ServiceMetrics()
    watcher = _watcher(tmp_path, metrics)
    good = add_sensor_lstm(tmp_path / "elsewhere", version="2", seed=5)
    folder = tmp_path / "lstm-it" / "2"
    folder.mkdir()
    shutil.copy(good.registry / "lstm-it" / "2" / "card.json", folder / "card.json")
    (folder / "model.onnx").write_bytes(b"half copied")
    assert watcher.look() is None
    assert _failed(metrics) == 1
    assert watcher.look() is None and _failed(metrics) == 1  # the same files: not tried again
    shutil.copy(good.registry / "lstm-it" / "2" / "model.onnx", folder / "model.onnx")
    stat = (folder / "model.onnx").stat()
    os.utime(folder / "model.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    ready = watcher.look()
    assert ready is not None and ready.model.card.version == "2"
    assert _failed(metrics) == 1


@pytest.mark.parametrize(("version", "interval"), [("1", 30.0), ("latest", 0.0)])
def test_a_pinned_version_or_a_zero_interval_watches_nothing(version: str, interval: float) -> None:
    assert not ModelWatcher.wanted(ModelSettings(version=version, watch_interval=interval))
