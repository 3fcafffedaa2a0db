from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from service.cli import build_parser, main
from service.registry import Registry
from tests.imports import imported_after
from training.cli import _train_values, register
from training.config import TrainConfig, load_config

TINY = [
    "--streams", "4", "--steps", "160", "--hidden", "6", "--layers", "1", "--horizon", "2",
    "--epochs", "1", "--chunk", "20", "--burn-in", "2", "--no-progress",
]  # fmt: skip


def _fails_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sensorcast: error:")
    assert match in lines[0]


def test_train_help_lists_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--data", "--kind", "--val-start", "--dedupe", "--refit-epochs", "--registry",
        "--skip", "--loss-weights", "--lr-decay",
    ):  # fmt: skip
        assert option in out


def test_the_parser_with_the_trainers_commands_imports_none_of_the_trainers_libraries() -> None:
    # every `sensorcast` command builds this parser, `serve` included: a service's start
    # must not pay for the trainer's imports (pandas alone took half a second)
    listed = build_parser().format_help()
    for command in ("train", "backtest", "serve"):
        assert re.search(rf"^\s+{command}\s", listed, re.MULTILINE), command
    imported = imported_after("from service.cli import build_parser\nbuild_parser()")
    trainers = {"torch", "pandas", "pyarrow", "matplotlib", "statsmodels", "onnxscript"}
    assert not {m for m in imported if m.split(".")[0] in trainers}


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _fails_with_one_line(capsys, ["train", "--data", str(tmp_path / "nope.csv")], "no such file")


def test_bad_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"stream_id": ["a", "a"], "ts": [60.0, 0.0], "v": [1.0, 2.0]}).to_csv(
        path, index=False
    )
    _fails_with_one_line(capsys, ["train", "--data", str(path)], "--sort")
    _fails_with_one_line(
        capsys, ["train", "--data", str(path), "--features", "w"], "missing column"
    )


def test_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _fails_with_one_line(capsys, ["train", "--hidden", "0"], "hidden")
    _fails_with_one_line(capsys, ["train", "--lr-decay", "1.5"], "lr_decay")
    _fails_with_one_line(capsys, ["train", "--val-start", "someday"], "someday")
    _fails_with_one_line(capsys, ["train", "--extra-test", "oops"], "NAME=START,END")
    _fails_with_one_line(capsys, ["train", "--config", str(tmp_path / "none.yaml")], "cannot read")
    _fails_with_one_line(capsys, ["evaluate", str(tmp_path)], "not a model folder")
    _fails_with_one_line(capsys, ["export", str(tmp_path), "--version", "2"], "not a model folder")


def test_argparse_errors_exit_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--kind", "transformer"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "Traceback" not in err


def test_train_evaluate_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("kind: gru\nseed: 3\n")
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                *TINY,
                "--skip",
                "--loss-weights",
                "persistence",
                "--lr-decay",
                "0.5",
                "--name",
                "cli-gru",
                "--registry",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "cli-gru:1" in capsys.readouterr().out
    model_dir = tmp_path / "cli-gru" / "1"
    card = json.loads((model_dir / "card.json").read_text())
    assert card["kind"] == "gru" and card["provenance"]["seed"] == 3
    trained = card["provenance"]["config"]
    assert (trained["skip"], trained["loss_weights"], trained["lr_decay"]) == (
        True,
        "persistence",
        0.5,
    )
    report = json.loads((model_dir / "report.json").read_text())
    assert report["training"]["loss"].startswith("MSE relative to persistence")

    assert main(["evaluate", str(model_dir)]) == 0
    assert "test" in capsys.readouterr().out
    # re-scoring keeps the training run's loss history in the report
    assert json.loads((model_dir / "report.json").read_text())["training"] == report["training"]

    assert main(["export", str(model_dir), "--version", "2", "--registry", str(tmp_path)]) == 0
    assert Registry(tmp_path).versions("cli-gru") == ["1", "2"]
    _fails_with_one_line(
        capsys,
        ["export", str(model_dir), "--version", "2", "--registry", str(tmp_path)],
        "already exists",
    )


def _train_parser() -> argparse.ArgumentParser:
    sub = argparse.ArgumentParser(prog="sensorcast").add_subparsers()
    register(sub)
    return sub.choices["train"]


def test_every_config_field_has_a_flag_with_its_default_and_description() -> None:
    parser = _train_parser()
    # argparse lists a parser's actions only in this private attribute
    flags = {action.dest: action for action in parser._actions}  # noqa: SLF001
    for name, info in TrainConfig.model_fields.items():
        action = flags[name]
        # a flag left out overrides neither the --config file nor the field's default
        assert action.default is argparse.SUPPRESS, name
        assert info.description, name
        assert action.help is not None and info.description.replace("%", "%%") in action.help
        default = info.get_default(call_default_factory=True)
        shown = re.search(r" \(default ([^():]+)\)$", action.help)
        if default is None:  # the description says what happens when it is unset
            assert "(default: " in info.description and shown is None, name
            continue
        if default == {}:
            assert shown is None, name
            continue
        if default == []:  # the description says what an empty default means
            assert "(default: " in info.description and shown is None, name
            continue
        assert shown is not None, (name, action.help)
        # the default the help names, given to the flag, is the field's default
        text = shown.group(1)
        if isinstance(default, bool):
            assert text == ("on" if default else "off"), name
            argv = [action.option_strings[0 if default else 1]]  # --skip, --no-skip
        else:
            argv = [action.option_strings[0], text]
        assert getattr(parser.parse_args(argv), name) == default, (name, argv)


def test_train_flags_override_the_config_file_and_nothing_else(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("kind: gru\nseed: 3\nskip: true\nextra_tests: {old: [1, 2]}\n")
    args = _train_parser().parse_args(
        ["--config", str(config), "--seed", "4", "--no-skip", "--streams", "9", "--lags", "1,4",
         "--extra-test", "a=1,2", "--extra-test", "b=3,4", "--registry", str(tmp_path)]
    )  # fmt: skip
    assert _train_values(args) == {
        "kind": "gru",
        "seed": 4,
        "skip": False,
        "n_streams": 9,
        "lags": [1, 4],
        "extra_tests": {"a": ("1", "2"), "b": ("3", "4")},
    }
    assert load_config(_train_values(_train_parser().parse_args([]))) == TrainConfig()


def test_val_window_flags_become_the_configs_windows() -> None:
    args = _train_parser().parse_args(
        ["--val-window", "2024-01-01,2024-02-01", "--val-window", "5, 6"]
    )
    config = load_config(_train_values(args))
    assert config.val_windows == [("2024-01-01", "2024-02-01"), ("5", "6")]
    assert load_config(_train_values(_train_parser().parse_args([]))).val_windows is None
