"""``sensorcast train | evaluate | export``: the trainer's subcommands.

Registered through the ``sensorcast.commands`` entry point; torch is imported only inside
the handlers, so ``sensorcast --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from training.errors import TrainingConfigError

__all__ = ["register"]

log = logging.getLogger(__name__)

_EPILOG_TRAIN = """\
examples:
  sensorcast train --data synthetic --streams 300 --steps 2000 --kind lstm --horizon 12 --skip \\
      --chunk 64 --burn-in 36 --loss-weights persistence --lr-decay 0.5 --epochs 40 --patience 6 \\
      --name sensors-demo     (reproduces the shipped sensors-demo:1)
  sensorcast train --data readings.parquet --features temp,vibration --targets temp --sort --dedupe last
  sensorcast train --config run.yaml --seed 3     (flags override the file)

A table has columns stream_id, ts (epoch seconds or ISO-8601; --ts-unit for ms, us or ns)
and one column per feature.
Split boundaries are epoch seconds or ISO-8601; a forecast belongs to the part its target
time falls in: train < --val-start <= validation < --test-start <= test < --test-end.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "train",
        help="train a forecaster, score it, export it as an ONNX step model into the registry",
        description="Train with stateful truncated BPTT, evaluate against persistence and AR(p), "
        "export to ONNX with parity checks, and write models/<name>/<version>/.",
        epilog=_EPILOG_TRAIN,
        formatter_class=fmt,
    )
    _add_train_options(p)
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="re-score a trained model on the data and split recorded in its card",
        description="Rebuild the data and split from the model's card, score the model and the "
        "baselines, and rewrite report.json and forecast.png in the model folder.",
    )
    p.add_argument(
        "model_dir", type=Path, help="a model folder holding card.json and checkpoint.pt"
    )
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="re-export a trained checkpoint as an ONNX step model (parity-checked)",
        description="Export checkpoint.pt from a model folder again, with the GRU and parity "
        "checks, under a new version and optionally a new name.",
    )
    p.add_argument(
        "model_dir", type=Path, help="a model folder holding card.json and checkpoint.pt"
    )
    p.add_argument("--version", required=True, help="version of the exported model")
    p.add_argument("--name", help="name of the exported model (default: the card's)")
    p.add_argument(
        "--registry", type=Path, default=Path("models"), help="registry folder (default: models)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing name/version")
    p.set_defaults(handler=_cmd_export)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--config", type=Path, help="YAML or JSON file of training options (flags override)"
    )
    g.add_argument(
        "--data", help="CSV or Parquet file, or a built-in: sunspots, synthetic (default)"
    )
    g.add_argument("--features", type=_names, help="comma-separated feature columns (default: all)")
    g.add_argument(
        "--targets", type=_names, help="comma-separated target columns (default: the features)"
    )
    g.add_argument(
        "--sort",
        action="store_true",
        default=None,
        help="sort unsorted timestamps instead of failing",
    )
    g.add_argument(
        "--dedupe", choices=["first", "last"], help="keep one row per duplicate timestamp"
    )
    g.add_argument(
        "--fill", choices=["ffill"], help="fill missing values from the previous reading"
    )
    g.add_argument(
        "--ts-unit",
        choices=["s", "ms", "us", "ns", "auto"],
        help="unit of a numeric ts column, converted to seconds (auto: detect it; default s, "
        "which refuses ms, us or ns); split boundaries stay in seconds",
    )
    g.add_argument(
        "--streams", dest="n_streams", type=int, help="synthetic: number of streams (default 200)"
    )
    g.add_argument(
        "--steps", dest="n_steps", type=int, help="synthetic: readings per stream (default 2000)"
    )
    g.add_argument("--data-seed", type=int, help="synthetic: simulator seed (default 0)")

    g = p.add_argument_group("split and scoring")
    g.add_argument(
        "--val-start", help="first target time of the validation part (default: 70%% of the range)"
    )
    g.add_argument(
        "--test-start", help="first target time of the test part (default: 85%% of the range)"
    )
    g.add_argument(
        "--test-end", help="end (exclusive) of the test part (default: the end of the data)"
    )
    g.add_argument(
        "--extra-test",
        action="append",
        metavar="NAME=START,END",
        help="another scored period, e.g. test2=1956-01-01,1980-01-01 (repeatable)",
    )
    g.add_argument(
        "--variance-until",
        help="ARV divides by the target variance of rows before this time (default: --test-end)",
    )
    g.add_argument("--ar-order", type=int, help="order p of the AR(p) baseline (default 12)")

    g = p.add_argument_group("model")
    g.add_argument("--kind", choices=["lstm", "gru", "rnn", "tdnn"], help="cell (default lstm)")
    g.add_argument("--horizon", type=int, help="forecast steps ahead (default 1)")
    g.add_argument("--hidden", type=int, help="hidden units per layer (default 64)")
    g.add_argument("--layers", type=int, help="stacked layers (default 2)")
    g.add_argument("--dropout", type=float, help="dropout between layers (default 0)")
    g.add_argument(
        "--lags",
        type=_ints,
        help="tdnn lags, comma-separated; 1 = current reading (default 1,2,3,6,12)",
    )
    g.add_argument(
        "--skip",
        action="store_true",
        default=None,
        help="a linear path from the inputs (the current reading, or the tdnn's lag taps) to the head",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--chunk", type=int, help="truncated BPTT length in steps (default 32)")
    g.add_argument(
        "--burn-in",
        type=int,
        help="first steps of each stream left out of the loss; the card's warm-up (default 10)",
    )
    g.add_argument("--batch-size", type=int, help="streams carried side by side (default 32)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 3e-3)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    g.add_argument("--clip-norm", type=float, help="gradient clipping by global norm (default 1.0)")
    g.add_argument(
        "--loss-weights",
        choices=["equal", "persistence"],
        help="equal: MSE in scaled units (default); persistence: each horizon step and target "
        "weighted by 1 / persistence's MSE there on the training part",
    )
    g.add_argument(
        "--lr-decay",
        type=float,
        help="multiply the learning rate by this after every epoch without a better "
        "validation loss (default 1: constant)",
    )
    g.add_argument("--epochs", dest="max_epochs", type=int, help="maximum epochs (default 50)")
    g.add_argument("--patience", type=int, help="early stopping patience in epochs (default 8)")
    g.add_argument(
        "--refit-epochs",
        type=int,
        help="after early stopping, train a fresh model on train+validation for this many epochs (default 0: off)",
    )
    g.add_argument("--seed", type=int, help="torch and sampling seed (default 0)")

    g = p.add_argument_group("output")
    g.add_argument("--name", help="model name in the registry (default: model)")
    g.add_argument("--version", help="model version (default 1)")
    g.add_argument(
        "--registry", type=Path, default=Path("models"), help="registry folder (default: models)"
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing name/version")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


_NOT_CONFIG = {"config", "registry", "overwrite", "no_progress", "handler", "verbose", "extra_test"}


def _cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.evaluate import headline
    from training.pipeline import REPORT_FILE, train_and_export

    values: dict[str, Any] = _read_config_file(args.config) if args.config else {}
    for key, value in vars(args).items():
        if key not in _NOT_CONFIG and value is not None:
            values[key] = value
    if args.extra_test:
        values["extra_tests"] = dict(_period(text) for text in args.extra_test)
    config = load_config(values)
    ref = train_and_export(
        config, args.registry, overwrite=args.overwrite, progress=not args.no_progress
    )
    scores = headline(json.loads((ref.directory / REPORT_FILE).read_text()))
    print(f"{ref} -> {ref.directory}  {scores}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import summary_lines
    from training.pipeline import evaluate_model

    report = evaluate_model(_model_dir(args.model_dir))
    for line in summary_lines(report):
        print(line)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from training.pipeline import export_model

    ref = export_model(
        _model_dir(args.model_dir),
        args.registry,
        name=args.name,
        version=args.version,
        overwrite=args.overwrite,
    )
    print(f"{ref} -> {ref.directory}")
    return 0


# -- argument parsing helpers -----------------------------------------------------------------


def _model_dir(path: Path) -> Path:
    if not (path / "card.json").is_file() or not (path / "checkpoint.pt").is_file():
        raise TrainingConfigError(f"{path}: not a model folder (needs card.json and checkpoint.pt)")
    return path


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainingConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise TrainingConfigError(f"{path}: not valid YAML or JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{path}: the config file must hold a mapping of options")
    return data


def _period(text: str) -> tuple[str, tuple[str, str]]:
    name, _, span = text.partition("=")
    start, _, end = span.partition(",")
    if not name or not start or not end:
        raise TrainingConfigError(f"--extra-test {text!r}: use NAME=START,END")
    return name, (start, end)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated column names")
    return names


def _ints(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
