"""``sensorcast train | evaluate | export``: the trainer's subcommands.

Registered through the ``sensorcast.commands`` entry point; torch is imported only inside
the handlers, so ``sensorcast --help`` stays fast. The ``train`` flags are built from the
fields of `TrainConfig` (type, choices, default and help), so they cannot drift from it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import yaml

from training.config import TrainConfig, load_config
from training.errors import TrainingConfigError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

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


# Where each TrainConfig field's flag is listed in ``sensorcast train --help``, in order. A
# flag's type, choices, default and help all come from its field; a field missing here
# still gets its flag, under "other".
_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": (
        "data", "features", "targets", "sort", "dedupe", "fill", "ts_unit", "n_streams",
        "n_steps", "data_seed",
    ),
    "split and scoring": (
        "val_start", "test_start", "test_end", "extra_tests", "variance_until", "ar_order",
    ),
    "model": ("kind", "horizon", "hidden", "layers", "dropout", "lags", "skip"),
    "optimisation": (
        "chunk", "burn_in", "batch_size", "lr", "weight_decay", "clip_norm", "loss_weights",
        "lr_decay", "max_epochs", "patience", "refit_epochs", "seed",
    ),
    "output": ("name", "version"),
}  # fmt: skip
# Flags not spelled after their field.
_FLAG_NAMES = {
    "n_streams": "--streams",
    "n_steps": "--steps",
    "max_epochs": "--epochs",
    "extra_tests": "--extra-test",
}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    fields = TrainConfig.model_fields
    groups = {title: p.add_argument_group(title) for title in _SECTIONS}
    groups["data"].add_argument(
        "--config", type=Path, help="YAML or JSON file of training options (flags override)"
    )
    listed = {name for names in _SECTIONS.values() for name in names}
    others = [name for name in fields if name not in listed]
    sections = [*_SECTIONS.items(), *([("other", tuple(others))] if others else [])]
    for title, names in sections:
        group = groups.get(title) or p.add_argument_group(title)
        for name in names:
            _add_field_flag(group, name, fields[name])
    g = groups["output"]
    g.add_argument(
        "--registry", type=Path, default=Path("models"), help="registry folder (default: models)"
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing name/version")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_field_flag(group: argparse._ArgumentGroup, name: str, info: FieldInfo) -> None:
    """The flag of TrainConfig field `name`: its type or choices from the annotation, its
    help from the description, and the field's default named in the help.

    A flag left out is absent from the parsed arguments (SUPPRESS), so it overrides neither
    the config file nor the field's default.
    """
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    help_text = (info.description or "").replace("%", "%%")  # argparse %-formats help
    hint = _optional_of(info.annotation)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(hint) is Literal:
        kwargs["choices"] = get_args(hint)
    elif hint in (int, float):
        kwargs["type"] = hint
    elif get_origin(hint) is list:
        kwargs["type"] = _ints if get_args(hint) == (int,) else _names
        kwargs["metavar"] = f"{name.removesuffix('s').upper()},..."
    elif get_origin(hint) is dict:
        kwargs.update(action="append", metavar="NAME=START,END")  # read by _train_values
        help_text += " (repeatable)"
    # anything else (str, or str | float for times) is passed on as text for TrainConfig
    default = info.get_default(call_default_factory=True)
    if default is not None and default != {}:
        help_text += f" (default {_shown(default)})"
    group.add_argument(
        _FLAG_NAMES.get(name, "--" + name.replace("_", "-")), help=help_text, **kwargs
    )


def _optional_of(hint: Any) -> Any:
    """``X | None`` -> ``X``; any other annotation as it is."""
    if get_origin(hint) in (Union, UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _shown(default: object) -> str:
    """A default as its flag would take it: ``1,2,3``, ``on``/``off``, ``0.003``."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return ",".join(str(v) for v in default)
    return str(default)


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    """Training options: the ``--config`` file's, overridden by the flags given."""
    values: dict[str, Any] = _read_config_file(args.config) if args.config else {}
    for key, value in vars(args).items():
        if key in TrainConfig.model_fields:
            values[key] = dict(map(_period, value)) if key == "extra_tests" else value
    return values


def _cmd_train(args: argparse.Namespace) -> int:
    from training.evaluate import headline
    from training.pipeline import REPORT_FILE, train_and_export

    config = load_config(_train_values(args))
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
