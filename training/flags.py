"""`TrainConfig`'s fields as argparse flags, for every command that takes training options.

A flag's type or choices come from its field's annotation, its help from the field's
description and its default from the field's default, so flags cannot drift from the
config. A flag left out is absent from the parsed arguments (SUPPRESS): it overrides neither
a ``--config`` file nor the field's default.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import yaml

from training.config import TrainConfig
from training.errors import TrainingConfigError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

__all__ = [
    "add_config_flags",
    "add_field_flag",
    "comma_names",
    "config_sections",
    "parse_period",
    "read_config_file",
]

# Where each TrainConfig field's flag is listed in ``sensorcast train --help``, in order. A
# flag's type, choices, default and help all come from its field; a field missing here
# still gets its flag, under "other".
_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": (
        "data", "features", "targets", "sort", "dedupe", "fill", "ts_unit", "gaps",
        "max_gap_periods", "n_streams", "n_steps", "data_seed",
    ),
    "split and scoring": (
        "val_start", "test_start", "test_end", "extra_tests", "variance_until", "val_windows",
        "ar_order",
    ),
    "model": (
        "kind", "horizon", "hidden", "layers", "dropout", "lags", "skip", "head", "angles",
        "calendar",
    ),
    "optimisation": (
        "chunk", "burn_in", "batch_size", "lr", "weight_decay", "clip_norm", "loss",
        "huber_delta", "loss_weights",
        "lr_decay", "max_epochs", "patience", "refit_epochs", "seed", "device",
    ),
    "output": ("name", "version"),
}  # fmt: skip
# Flags not spelled after their field.
_FLAG_NAMES = {
    "n_streams": "--streams",
    "n_steps": "--steps",
    "max_epochs": "--epochs",
    "extra_tests": "--extra-test",
    "val_windows": "--val-window",
}


def config_sections() -> dict[str, tuple[str, ...]]:
    """`_SECTIONS` of the fields `TrainConfig` has, plus an "other" section for the rest."""
    fields = TrainConfig.model_fields
    sections = {title: tuple(n for n in names if n in fields) for title, names in _SECTIONS.items()}
    listed = {name for names in sections.values() for name in names}
    others = tuple(name for name in fields if name not in listed)
    return {**sections, **({"other": others} if others else {})}


def add_config_flags(
    p: argparse.ArgumentParser, sections: dict[str, tuple[str, ...]]
) -> dict[str, argparse._ArgumentGroup]:
    """One argument group per section with the flags of its fields; ``--config`` first."""
    fields = TrainConfig.model_fields
    groups = {title: p.add_argument_group(title) for title in sections}
    next(iter(groups.values())).add_argument(
        "--config", type=Path, help="YAML or JSON file of training options (flags override)"
    )
    for title, names in sections.items():
        for name in names:
            add_field_flag(groups[title], name, fields[name])
    return groups


def add_field_flag(
    group: argparse._ArgumentGroup, name: str, info: FieldInfo, *, default: str | None = None
) -> None:
    """The flag of TrainConfig field `name`: its type or choices from the annotation, its
    help from the description, and the field's default named in the help (or `default`,
    which says where the value comes from when the flag is left out, replacing any default
    the description names; "" says nothing).

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
    elif get_origin(hint) is list and get_origin(get_args(hint)[0]) is tuple:
        kwargs.update(action="append", type=_window, metavar="START,END")
        help_text += " (repeatable)"
    elif get_origin(hint) is list:
        kwargs["type"] = _ints if get_args(hint) == (int,) else comma_names
        kwargs["metavar"] = f"{name.removesuffix('s').upper()},..."
    elif get_origin(hint) is dict:
        kwargs.update(action="append", metavar="NAME=START,END")  # read by parse_period
        help_text += " (repeatable)"
    # anything else (str, or str | float for times) is passed on as text for TrainConfig
    field_default = info.get_default(call_default_factory=True)
    if default is not None:
        help_text = re.sub(r" \(default: [^)]*\)$", "", help_text)
        help_text += f" (default: {default})" if default else ""
    elif field_default not in (None, {}, []):
        help_text += f" (default {_shown(field_default)})"
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


def read_config_file(path: Path) -> dict[str, Any]:
    """The options of a YAML or JSON ``--config`` file; `TrainingConfigError` when it is
    unreadable or holds no mapping."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainingConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise TrainingConfigError(f"{path}: not valid YAML or JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{path}: the config file must hold a mapping of options")
    return data


def parse_period(text: str) -> tuple[str, tuple[str, str]]:
    """``--extra-test NAME=START,END`` -> ``(NAME, (START, END))``."""
    name, _, span = text.partition("=")
    start, _, end = span.partition(",")
    if not name or not start or not end:
        raise TrainingConfigError(f"--extra-test {text!r}: use NAME=START,END")
    return name, (start, end)


def _window(text: str) -> tuple[str, str]:
    start, _, end = text.partition(",")
    if not start.strip() or not end.strip():
        raise argparse.ArgumentTypeError(f"expected START,END, got {text!r}")
    return start.strip(), end.strip()


def comma_names(text: str) -> list[str]:
    """``a, b,c`` -> ``["a", "b", "c"]`` (an argparse type)."""
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
