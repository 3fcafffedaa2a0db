"""``sensorcast train | evaluate | backtest | export``: the trainer's subcommands.

Registered through the ``sensorcast.commands`` entry point, so every ``sensorcast`` command
(``serve`` too) imports this module: torch, pandas and the rest of the trainer are imported
only inside the handlers, so ``sensorcast --help`` and a service's start stay fast. The
``train`` and ``backtest`` flags, and ``evaluate``'s data flags, are built from the fields
of `TrainConfig` (type, choices, default and help), so they cannot drift from it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from training.config import TrainConfig, load_config
from training.errors import TrainingConfigError
from training.flags import (
    add_config_flags,
    add_field_flag,
    comma_names,
    config_sections,
    parse_period,
    read_config_file,
)

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

_EPILOG_EVALUATE = """\
examples:
  sensorcast evaluate models/sensors-demo/1          (re-score on the card's data and split)
  sensorcast evaluate sensors-demo --data readings.csv --test-start 2024-03-01 --test-end 2024-04-01
  sensorcast evaluate models/pumps --test-start 2024-06-01 --out june.json   (latest version)

MODEL is a model folder (models/NAME/VERSION), a folder of versions (models/NAME: its
latest) or NAME[:VERSION] in --registry. With --data, --test-start or --test-end (or any data
option), the model is scored on that period of that data and its folder is left unchanged:
the table is loaded and checked as training loads it (the card's features and targets, its
repair options unless given here), scaled with the card's scaler and run through the model
rebuilt from checkpoint.pt. ARV divides by the training variance (the card's scaler's, unless
the data is the table the model was trained on); the AR baseline is fitted on this data's
rows before the model's --val-start, and left out when there are none.
"""

_EPILOG_BACKTEST = """\
examples:
  sensorcast backtest --data synthetic --streams 50 --steps 1000 --horizon 12 \\
      --folds 3 --fold-length 1d        (3 one-day test windows at the end of the data)
  sensorcast backtest --data readings.parquet --targets power --cuts 2024-01-01,2024-02-01,2024-03-01
  sensorcast backtest --config run.yaml --folds 4 --fold-length 7d --val-length 14d --out bt.json

Each fold trains a fresh model, with the training options given, on the rows before its cut
only (the scaler, loss weights, validation loss, early stopping and refit never see a later
reading), validates on the last --val-length before the cut, and is scored like a trained
model on its test window after the cut: per target MAE, RMSE, step-1 MAE and
skill against persistence and AR(p), with ARV over the fold's training variance. The table
and --out give each fold's scores and their means over the folds. Durations are seconds or
a number with a unit: 15m, 12h, 7d, 2w, 20y. Split options (--val-start, ...) do not apply;
one in a --config file is ignored with a warning.
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
        help="re-score a trained model on its card's data and split, or score it on any "
        "period of any data",
        description="Score the model and the baselines per target. Without data or period "
        "options: on the data and split recorded in the card, rewriting report.json and "
        "forecast.png in the model folder. With them: on that period of that data, writing "
        "nothing but --out.",
        epilog=_EPILOG_EVALUATE,
        formatter_class=fmt,
    )
    _add_evaluate_options(p)
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser(
        "backtest",
        help="rolling-origin backtest: train on the data before each cut, score the window "
        "after it",
        description="Train one model per fold on the data before the fold's cut and score it "
        "on the test window after the cut; print each fold's per-target scores and their "
        "means, and write them as JSON.",
        epilog=_EPILOG_BACKTEST,
        formatter_class=fmt,
    )
    _add_backtest_options(p)
    p.set_defaults(handler=_cmd_backtest)

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


# The options that place splits: a backtest places its own folds, and exports no model.
_BACKTEST_SPLITS = (
    "val_start", "test_start", "test_end", "extra_tests", "variance_until", "val_windows",
)  # fmt: skip
_NOT_IN_BACKTEST = (*_BACKTEST_SPLITS, "name", "version")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    groups = add_config_flags(p, config_sections())
    g = groups["output"]
    g.add_argument(
        "--registry", type=Path, default=Path("models"), help="registry folder (default: models)"
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing name/version")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="a model folder (models/NAME/VERSION), a folder of versions (models/NAME: the "
        "latest) or NAME[:VERSION] in --registry; it needs card.json and checkpoint.pt",
    )
    p.add_argument(
        "--registry", type=Path, default=Path("models"), help="registry folder (default: models)"
    )
    p.add_argument("--out", type=Path, help="also write the report as JSON to this file")
    g = p.add_argument_group("data and period to score (each left out: the card's)")
    fields = TrainConfig.model_fields
    for name in _evaluate_data_options():
        add_field_flag(g, name, fields[name], default="")
    g.add_argument(
        "--test-start",
        help="first target time scored, epoch seconds or ISO-8601 (default: the card's test start)",
    )
    g.add_argument(
        "--test-end",
        help="end (exclusive) of the scored period (default: the card's test end; with "
        "--test-start, the end of the data)",
    )


def _add_backtest_options(p: argparse.ArgumentParser) -> None:
    sections = {
        title: tuple(n for n in names if n not in _NOT_IN_BACKTEST)
        for title, names in config_sections().items()
    }
    add_config_flags(p, {title: names for title, names in sections.items() if names})
    g = p.add_argument_group("folds")
    g.add_argument(
        "--cuts",
        type=comma_names,
        metavar="TIME,...",
        help="fold cuts, increasing, epoch seconds or ISO-8601; each fold tests up to the next "
        "cut (the last to the end of the data) unless --fold-length is given",
    )
    g.add_argument("--folds", type=int, help="number of folds placed at the end of the data")
    g.add_argument(
        "--fold-length",
        metavar="DURATION",
        help="length of each test window: 3600, 15m, 12h, 7d, 2w or 20y (needed with --folds)",
    )
    g.add_argument(
        "--val-length",
        metavar="DURATION",
        help="validation part: this much before each cut (default: the fold's test length)",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=Path("backtest.json"),
        help="JSON file of every fold's scores and their means (default: backtest.json)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate_data_options() -> tuple[str, ...]:
    """The data options `evaluate` takes: the data section but the card's columns."""
    return tuple(n for n in config_sections()["data"] if n not in ("features", "targets"))


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    """Training options: the ``--config`` file's, overridden by the flags given."""
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    for key, value in vars(args).items():
        if key in TrainConfig.model_fields:
            values[key] = dict(map(parse_period, value)) if key == "extra_tests" else value
    return values


def _cmd_train(args: argparse.Namespace) -> int:
    from training.evaluate import headline, summary_lines
    from training.pipeline import REPORT_FILE, train_and_export

    config = load_config(_train_values(args))
    ref = train_and_export(
        config, args.registry, overwrite=args.overwrite, progress=not args.no_progress
    )
    report = json.loads((ref.directory / REPORT_FILE).read_text())
    print(f"{ref} -> {ref.directory}  {headline(report)}")
    for line in summary_lines(report):
        print(line)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import summary_lines, write_report
    from training.pipeline import evaluate_model, score_model

    model_dir = _resolve_model(args.model, args.registry)
    data_options = {k: v for k, v in vars(args).items() if k in _evaluate_data_options()}
    if data_options or args.test_start is not None or args.test_end is not None:
        report = score_model(
            model_dir,
            data_options=data_options,
            test_start=args.test_start,
            test_end=args.test_end,
        )
        scored = report["scored"]
        print(f"{scored['model']} on {scored['data']}")
    else:
        report = evaluate_model(model_dir)
        print(f"{model_dir}: re-scored on the data and split of its card")
    for line in summary_lines(report):
        print(line)
    if args.out:
        write_report(report, args.out)
        print(f"wrote {args.out}")
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from training.backtest import backtest, backtest_lines, parse_duration, place_folds
    from training.evaluate import write_report
    from training.summary import when
    from training.train import load_data

    values = _train_values(args)
    ignored = [key for key in _BACKTEST_SPLITS if key in values]
    for key in ignored:
        del values[key]
    if ignored:
        log.warning("backtest places its own splits: ignoring %s", ", ".join(ignored))
    config = load_config(values)
    dataset = load_data(config)
    folds = place_folds(
        dataset,
        cuts=args.cuts,
        folds=args.folds,
        fold_length=parse_duration(args.fold_length) if args.fold_length else None,
        val_length=parse_duration(args.val_length) if args.val_length else None,
    )
    log.info("backtest: %d folds, cuts %s", len(folds), ", ".join(when(f.cut) for f in folds))
    result = backtest(config, dataset, folds, progress=not args.no_progress)
    write_report(result, args.out)
    for line in backtest_lines(result):
        print(line)
    print(f"wrote {args.out}")
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


def _resolve_model(spec: str, registry: Path) -> Path:
    """The folder of the model `spec` names: a model folder, a folder of versions (its
    latest), or ``NAME[:VERSION]`` in `registry`."""
    from service.registry import Registry

    path = Path(spec)
    if (path / "card.json").is_file():
        return _model_dir(path)
    if path.is_dir() and Registry(path.parent).versions(path.name):
        return _model_dir(Registry(path.parent).resolve(path.name).directory)
    if not path.exists() and "/" not in spec:
        return _model_dir(Registry(registry).resolve_spec(spec).directory)
    return _model_dir(path)


def _model_dir(path: Path) -> Path:
    if not (path / "card.json").is_file() or not (path / "checkpoint.pt").is_file():
        raise TrainingConfigError(f"{path}: not a model folder (needs card.json and checkpoint.pt)")
    return path
