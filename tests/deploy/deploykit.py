"""What the deployment tests check files against: the repository layout, the service's
settings, metric names and HTTP paths, and a small PromQL scanner.

The deploy files are static text (no Docker or cluster here), so every fact they state about
the service is compared with the service's own definitions instead.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from service.accuracy import ACCURACY_SERIES
from service.config import ENV_NESTED_DELIMITER, ENV_PREFIX, ServiceSettings
from service.metrics import ServiceMetrics

__all__ = [
    "DEPLOY",
    "REPO",
    "exposed_series",
    "load_yaml",
    "load_yaml_docs",
    "metric_families",
    "metric_names",
    "promtool",
    "sensorcast_env",
    "setting_env_names",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# Words PromQL reserves; any other bare identifier not followed by "(" is a metric name.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
     "group_right", "inf", "nan", "start", "end"}
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables such as $instance allowed)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)
    text = re.sub(r"\{[^{}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":  # 1e3, 5m
            continue
        if text[match.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        if match.group(0).lower() in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def metric_families() -> dict[str, set[str]]:
    """Each metric family of the service -> the series names Prometheus stores for it."""
    out: dict[str, set[str]] = {}
    for family in ServiceMetrics().registry.collect():
        name = family.name
        if family.type == "counter":
            out[name] = {f"{name}_total"}
        elif family.type == "histogram":
            out[name] = {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif family.type == "summary":
            out[name] = {name, f"{name}_count", f"{name}_sum"}
        elif family.type == "info":
            out[name] = {f"{name}_info"}
        else:
            out[name] = {name}
    # the accuracy counters, rendered beside the registry (`service.accuracy`)
    out.update({series.removesuffix("_total"): {series} for series in ACCURACY_SERIES})
    return out


def exposed_series() -> set[str]:
    return set().union(*metric_families().values())


def _fields(model: type[BaseModel], prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, (*prefix, name))
        else:
            yield (*prefix, name)


def setting_env_names() -> set[str]:
    """Every SENSORCAST_* variable ServiceSettings reads, derived from the model itself."""
    return {
        ENV_PREFIX + ENV_NESTED_DELIMITER.join(p.upper() for p in path)
        for path in _fields(ServiceSettings, ())
    }


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def promtool() -> str | None:
    return shutil.which("promtool")


def sensorcast_env(env: Mapping[str, Any]) -> dict[str, str]:
    """The SENSORCAST_* entries of an environment mapping, as strings."""
    return {k: str(v) for k, v in env.items() if k.startswith(ENV_PREFIX)}
