"""Operator tools: ``sensorcast replay``, ``sensorcast tail`` and ``sensorcast demo``.

`register` adds the three subcommands; each handler imports its module only when it runs,
so ``sensorcast --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import KafkaSettings

__all__ = ["default_bootstrap", "register"]


def default_bootstrap() -> str:
    """The service's broker setting, else ``$KAFKA_BOOTSTRAP_SERVERS``, else localhost:9092."""
    return (
        os.environ.get("SENSORCAST_KAFKA__BOOTSTRAP_SERVERS")
        or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        or "localhost:9092"
    )


def _kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """The ``kafka`` settings a tool connects with: TLS and SASL from the service's
    ``SENSORCAST_KAFKA__*`` environment, on ``--bootstrap-servers``."""
    from service.config import load_settings

    return load_settings(None, {"kafka.bootstrap_servers": args.bootstrap_servers}).kafka


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _quiet_kafka(args: argparse.Namespace) -> None:
    """kafka-python logs every connection at INFO; a tool shows them only with --verbose."""
    if not getattr(args, "verbose", False):
        logging.getLogger("kafka").setLevel(logging.WARNING)


def _cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.tools.replay import make_producer, replay
    from service.tools.sources import load_source, parse_time

    _quiet_kafka(args)
    table = load_source(
        args.source,
        streams=args.streams,
        steps=args.steps,
        seed=args.seed,
        start_ts=parse_time(args.start_ts) if args.start_ts is not None else None,
        period=args.period,
    )
    producer = make_producer(_kafka_settings(args))
    bar = tqdm(
        total=len(table),
        unit=" readings",
        unit_scale=True,
        file=sys.stderr,
        disable=True if args.quiet else None,  # None: only on a terminal
        mininterval=0.5,
        desc=f"replay {table.name}",
    )
    sent = 0

    def on_sent(n: int) -> None:
        nonlocal sent
        sent += n
        bar.update(n)

    try:
        stats = replay(producer, args.topic, table.readings(), rate=args.rate, on_sent=on_sent)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: {sent} readings sent to {args.topic}", file=sys.stderr)
        return 130
    finally:
        bar.close()
        producer.close()
    print(
        f"replayed {stats.sent} readings of {table.n_streams} streams from {table.name} to "
        f"{args.topic} in {stats.seconds:.2f} s ({stats.per_second:,.0f} readings/s)",
        file=sys.stderr,
    )
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from service.tools.interrupt import stop_on_signals
    from service.tools.tail import ForecastView, follow, format_line, format_table

    _quiet_kafka(args)
    stop = threading.Event()
    shown = 0
    latest: dict[str, ForecastView] = {}
    table_mode = args.table and sys.stdout.isatty()

    def on_forecast(view: ForecastView) -> None:
        nonlocal shown
        shown += 1
        if table_mode:
            latest[view.stream_id] = view
        else:
            print(format_line(view, args.steps), flush=True)
        if args.max is not None and shown >= args.max:
            stop.set()

    last_draw = 0.0

    def redraw() -> None:
        import shutil
        import time

        nonlocal last_draw
        if not table_mode or time.monotonic() - last_draw < 1.0:
            return
        last_draw = time.monotonic()
        size = shutil.get_terminal_size()
        rows = max(3, size.lines - 4)
        lines = [f"{args.topic}: {shown} forecasts, {len(latest)} streams (Ctrl-C to stop)"]
        lines += format_table(latest, rows, args.steps)
        text = "\n".join(line[: size.columns] for line in lines)
        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
        sys.stdout.flush()

    try:
        with stop_on_signals(stop):
            follow(
                _kafka_settings(args),
                args.topic,
                on_forecast,
                from_beginning=args.from_beginning,
                streams=args.stream,
                stop=stop,
                idle_timeout=args.idle_timeout,
                on_idle=redraw,
            )
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # piped into `head`
        sys.stderr.close()
        return 0
    if table_mode:
        last_draw = 0.0
        redraw()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from service.tools.demo import DemoOptions, run_demo

    _quiet_kafka(args)
    return run_demo(
        DemoOptions(
            streams=args.streams,
            rate=args.rate,
            duration=args.duration,
            http_port=args.http_port,
            registry=args.registry,
            model=args.model,
            seed=args.seed,
            rows=args.rows,
            challenger=args.challenger,
        )
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay``, ``tail`` and ``demo``."""
    _add_replay(sub)
    _add_tail(sub)
    _add_demo(sub)


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``replay`` subcommand and its flags."""
    p = sub.add_parser(
        "replay",
        help="publish readings from a CSV/Parquet table or a built-in dataset to the input topic",
        description="Publish readings, keyed by stream id, as JSON to the input topic, in time "
        "order, as fast as possible or at --rate readings per second.",
    )
    p.add_argument(
        "source",
        nargs="?",
        default="synthetic",
        help="a .csv or .parquet long table (stream_id, ts, feature columns), or a built-in: "
        "synthetic (default), sunspots",
    )
    p.add_argument(
        "--bootstrap-servers", default=default_bootstrap(), help="Kafka bootstrap servers"
    )
    p.add_argument(
        "--topic", default="sensor-readings", help="input topic (default: sensor-readings)"
    )
    p.add_argument(
        "--rate", type=_positive_float, help="readings per second (default: as fast as possible)"
    )
    p.add_argument(
        "--streams", type=_positive_int, help="first N streams (synthetic: how many; default 100)"
    )
    p.add_argument(
        "--steps", type=_positive_int, help="first N readings per stream (synthetic: default 288)"
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed (default 0)")
    p.add_argument(
        "--period", type=_positive_float, help="synthetic: seconds between readings (default 300)"
    )
    p.add_argument(
        "--start-ts", help="move the first reading to this time: epoch seconds, ISO-8601 or 'now'"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_replay)


def _add_tail(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tail`` subcommand and its flags."""
    p = sub.add_parser(
        "tail",
        help="print forecasts from the output topic as they arrive",
        description="Print forecasts from the output topic: one line each, or with --table a "
        "refreshing table of the latest forecast per stream. Ctrl-C stops.",
    )
    p.add_argument(
        "--bootstrap-servers", default=default_bootstrap(), help="Kafka bootstrap servers"
    )
    p.add_argument("--topic", default="forecasts", help="output topic (default: forecasts)")
    p.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest forecast, not the newest"
    )
    p.add_argument("--max", type=_positive_int, help="stop after N forecasts")
    p.add_argument("--stream", action="append", help="only this stream (repeat for more)")
    p.add_argument(
        "--steps", type=_positive_int, default=3, help="forecast steps shown per target (default 3)"
    )
    p.add_argument(
        "--table", action="store_true", help="a refreshing table of the latest forecast per stream"
    )
    p.add_argument(
        "--idle-timeout",
        type=_positive_float,
        help="stop after this many seconds without a forecast",
    )
    p.set_defaults(handler=_cmd_tail)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand and its flags."""
    p = sub.add_parser(
        "demo",
        help="broker + service + simulated sensors + live forecasts in the terminal",
        description="Start an embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set), the "
        "service with the sensors-demo model, and a paced replay of simulated sensors; show "
        "forecasts against actuals live. Ctrl-C (or --duration) stops everything.",
    )
    p.add_argument(
        "--streams", type=_positive_int, default=500, help="simulated streams (default 500)"
    )
    p.add_argument(
        "--rate", type=_positive_float, default=2500.0, help="readings per second (default 2500)"
    )
    p.add_argument(
        "--duration", type=_positive_float, help="stop after this many seconds (default: Ctrl-C)"
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="service metrics port (default 8000; 0: any free)",
    )
    p.add_argument("--registry", type=Path, default=None, help="model registry (default: models)")
    p.add_argument("--model", default="sensors-demo", help="model to serve (default: sensors-demo)")
    p.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    p.add_argument(
        "--rows", type=_positive_int, default=12, help="streams shown in the table (default 12)"
    )
    p.add_argument(
        "--challenger",
        metavar="NAME[:VERSION]",
        default=None,
        help="also run this model of the registry in shadow (model.shadow): its forecasts go "
        "to a shadow topic and its live accuracy shows beside the served model's",
    )
    p.set_defaults(handler=_cmd_demo)
