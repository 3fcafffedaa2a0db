"""The `sensorcast` command.

Subcommands come from the ``sensorcast.commands`` entry-point group: each entry is a
``register(subparsers)`` function. The service registers its own; the trainer registers
``train``, ``evaluate`` and ``export`` when it is installed, without the service ever
importing it. Handlers import their heavy dependencies only when they run, so ``--help`` is
instant. A `SensorcastError` ends the command with one clear line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from service import __version__
from service.errors import SensorcastError

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int | None]


def _cmd_models(args: argparse.Namespace) -> int:
    from service.registry import Registry

    registry = Registry(args.registry)
    entries = registry.survey()
    if not entries:
        print(f"no models in {registry.root}")
        return 0
    broken = 0
    for entry in entries:
        if entry.loaded is None:
            broken += 1
            print(f"{entry.ref!s:28} BROKEN {entry.problem}")
            continue
        card = entry.loaded.card
        # Headline test scores over all horizon steps; the card holds the breakdown.
        keys = ("test.arv", "test.mae", "test.skill_persistence")
        test = "  ".join(f"{k}={card.metrics[k]:.4g}" for k in keys if k in card.metrics)
        unchecked = "  (no golden vectors: unchecked)" if entry.loaded.golden_error is None else ""
        print(
            f"{card.ref:28} {card.kind:5} features={len(card.features):<3} "
            f"horizon={card.horizon:<3} warmup={card.warmup_steps:<4} {test}{unchecked}"
        )
    if broken:
        print(
            f"sensorcast: {broken} of {len(entries)} models in {registry.root} are broken",
            file=sys.stderr,
        )
        return 1
    return 0


def _register_builtin(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list the models in the registry with their headline metrics")
    p.add_argument(
        "--registry", type=Path, default=Path("models"), help="registry folder (default: models)"
    )
    p.set_defaults(handler=_cmd_models)
    from service import commands, tools

    commands.register(sub)
    tools.register(sub)


def build_parser() -> argparse.ArgumentParser:
    """The `sensorcast` parser: built-in commands plus those registered through the
    ``sensorcast.commands`` entry points (one that fails to import is left out and logged).
    """
    parser = argparse.ArgumentParser(
        prog="sensorcast",
        description="Live recurrent forecasts for sensor streams: train, export, serve, replay, tail.",
    )
    parser.add_argument("--version", action="version", version=f"sensorcast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _register_builtin(sub)
    for ep in sorted(entry_points(group="sensorcast.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # an extra that is not installed (e.g. no torch)
            logging.getLogger(__name__).debug("commands %s unavailable: %s", ep.name, exc)
            continue
        except Exception as exc:  # a broken plugin must not take the other commands down
            logging.getLogger(__name__).warning("commands %s failed to load: %r", ep.name, exc)
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (2 with one ``sensorcast: error:`` line on
    stderr for a `SensorcastError` or no command, 130 on Ctrl-C).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except SensorcastError as exc:
        print(f"sensorcast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
