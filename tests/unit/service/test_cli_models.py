"""`sensorcast models`: one broken model does not hide the rest."""

from __future__ import annotations

import pytest

from service.cli import main
from service.registry import Registry
from service.testing import build_onnx_linear, build_onnx_lstm
from tests.unit.service.goldenfixtures import perturb_weight


def test_lists_every_model_marks_the_broken_ones_and_fails_at_the_end(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(tmp_path)
    registry.add(*build_onnx_linear(name="alpha"))
    registry.add(*build_onnx_linear(name="broken-card"))
    (tmp_path / "broken-card" / "1" / "card.json").write_text("{not json")
    card, proto, _ = build_onnx_lstm(name="broken-golden")
    registry.add(card, proto)
    mutated = perturb_weight(proto, 1.01, "head_w")
    card.embed(mutated)
    (tmp_path / "broken-golden" / "1" / "model.onnx").write_bytes(mutated.SerializeToString())
    good, good_proto, _ = build_onnx_lstm(name="checked")
    registry.add(good, good_proto)
    registry.add(*build_onnx_linear(name="zulu"))

    assert main(["models", "--registry", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "alpha:1",
        "broken-card:1",
        "broken-golden:1",
        "checked:1",
        "zulu:1",
    ]
    by_ref = {line.split()[0]: line for line in lines}
    assert "BROKEN" in by_ref["broken-card:1"] and "invalid model card" in by_ref["broken-card:1"]
    assert "BROKEN" in by_ref["broken-golden:1"]
    assert "does not reproduce the golden vectors" in by_ref["broken-golden:1"]
    for ref in ("alpha:1", "checked:1", "zulu:1"):
        assert "BROKEN" not in by_ref[ref] and "horizon=" in by_ref[ref]
    assert "no golden vectors: unchecked" in by_ref["alpha:1"]
    assert "unchecked" not in by_ref["checked:1"]
    assert captured.err.strip().endswith(f"2 of 5 models in {tmp_path} are broken")


def test_a_healthy_registry_exits_zero(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    card, proto, _ = build_onnx_lstm()
    Registry(tmp_path).add(card, proto)
    assert main(["models", "--registry", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("lstm-test:1")
    assert main(["models", "--registry", str(tmp_path / "empty")]) == 0
    assert "no models in" in capsys.readouterr().out
