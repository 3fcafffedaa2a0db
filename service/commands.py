"""The ``serve`` and ``settings`` subcommands.

Flags override the environment, which overrides the ``--config`` file, which overrides the
defaults. Named flags cover what is changed most; ``--set SECTION.NAME=VALUE`` reaches
every other setting (see ``sensorcast settings``).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["register"]

# flag dest -> setting
_NAMED_FLAGS: dict[str, tuple[str, str]] = {
    "bootstrap_servers": ("kafka.bootstrap_servers", "Kafka bootstrap servers"),
    "input_topic": ("kafka.input_topic", "topic to consume readings from"),
    "output_topic": ("kafka.output_topic", "topic to produce forecasts to"),
    "dead_letter_topic": ("kafka.dead_letter_topic", "dead-letter topic"),
    "group_id": ("kafka.group_id", "consumer group id"),
    "kafka_client": (
        "kafka.client",
        "Kafka client: kafka-python (default, always installed) or confluent (librdkafka, "
        "several times the throughput; needs pip install 'sensorcast[confluent]')",
    ),
    "registry": ("model.registry", "model registry folder"),
    "http_port": ("http.port", "HTTP port for /metrics, /healthz, /readyz"),
    "log_format": ("log.format", "log format: text or json"),
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from service.errors import ConfigError
    from service.registry import parse_model_spec

    out: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {item!r}: use SECTION.NAME=VALUE, e.g. --set kafka.max_batch=500"
            )
        out[key.strip()] = value
    for dest, (setting, _help) in _NAMED_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            out[setting] = value
    if args.model is not None:
        name, version = parse_model_spec(args.model)
        out["model.name"] = name
        out["model.version"] = version
    return out


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.app import Service
    from service.config import load_settings
    from service.logs import configure_logging

    settings = load_settings(args.config, _overrides(args))
    configure_logging(settings.log.format, "DEBUG" if args.verbose else settings.log.level)
    service = Service(settings)

    signals = 0

    def _stop(signum: int, frame: FrameType | None) -> None:
        # The first signal finishes the batch in hand and checkpoints; a second one is
        # an operator in a hurry: leave now, the records since the last commit are
        # processed again by the next member.
        nonlocal signals
        signals += 1
        if signals > 1:
            raise KeyboardInterrupt
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return service.run()


def _cmd_settings(args: argparse.Namespace) -> int:
    from service.config import load_settings, settings_reference

    if args.effective:
        settings = load_settings(args.config, _overrides(args))
        print(settings.model_dump_json(indent=2))
    else:
        print(settings_reference(), end="")
    return 0


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="settings file (.toml, .yaml or .yml)")
    for dest, (setting, text) in _NAMED_FLAGS.items():
        p.add_argument(f"--{dest.replace('_', '-')}", dest=dest, help=f"{text} ({setting})")
    p.add_argument(
        "--model", help="model to serve, NAME or NAME:VERSION (model.name, model.version)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.NAME=VALUE",
        help="any other setting, e.g. --set kafka.max_batch=500 (repeatable)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``settings`` to the `sensorcast` subcommands."""
    p = sub.add_parser(
        "serve",
        help="consume readings from Kafka and produce forecasts",
        description="Serve a model: consume readings, produce forecasts and dead letters, "
        "expose /metrics, /healthz and /readyz. Precedence: defaults < --config file < "
        "SENSORCAST_* environment < flags.",
    )
    _add_setting_flags(p)
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser("settings", help="print the settings reference (markdown)")
    _add_setting_flags(p)
    p.add_argument(
        "--effective",
        action="store_true",
        help="print the settings that would be used (defaults, file, environment, flags) as JSON",
    )
    p.set_defaults(handler=_cmd_settings)
