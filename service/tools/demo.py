"""``sensorcast demo``: the whole pipeline on one machine, live in the terminal.

1. a broker: the embedded one, or ``$KAFKA_BOOTSTRAP_SERVERS``;
2. the topics;
3. ``sensorcast serve`` as a child process (what an operator runs), configured through its
   ``SENSORCAST_*`` environment, awaited on ``/readyz``;
4. a paced replay of simulated sensors (a thread) and a forecast reader (another thread)
   feeding a `Scoreboard` that compares each forecast with the simulated truth;
5. a refreshing table until Ctrl-C, SIGTERM or ``--duration``, under the live accuracy the
   service itself reports on ``/metrics`` (`service.tools.livescore`): MAE and skill against
   persistence per model version and target, the challenger's beside the served model's
   when ``--challenger`` runs one in shadow.

Everything started is registered on one exit stack, so it stops in reverse order whatever
ends the run: replay and reader, then the service (SIGTERM: it flushes and commits), then
the broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from service.config import KafkaSettings, load_settings
from service.embedded import BOOTSTRAP_ENV, EmbeddedBroker
from service.errors import ConfigError, SensorcastError
from service.modelcard import ModelCard
from service.simulate import SimulatedSensors
from service.tools.interrupt import stop_on_signals
from service.tools.livescore import LiveScore
from service.tools.processes import ServeProcess, ServiceExited, pick_http_port
from service.tools.screen import Screen

if TYPE_CHECKING:
    from service.tools.scoreboard import Scoreboard

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger(__name__)

_DAY = 86_400.0
_MAX_DAYS = 7  # simulated days generated; replayed in a loop after that
_READY_TIMEOUT = 90.0
_JOIN_TIMEOUT = 30.0
_PARTITIONS = 4


@dataclass(frozen=True)
class DemoOptions:
    """What `run_demo` runs: `streams` simulated at `rate` readings per second for
    `duration` seconds (None: until Ctrl-C), the service's metrics on `http_port` (0: any
    free), `model` (``NAME`` or ``NAME:VERSION``) from `registry` (None: ./models if there
    is one, else the shipped models), the simulator's `seed`, `rows` streams shown in the
    table, and a `challenger` (``NAME[:VERSION]`` of the same registry) run in shadow.
    """

    streams: int = 500
    rate: float = 2500.0
    duration: float | None = None
    http_port: int = 8000
    registry: Path | None = None
    model: str = "sensors-demo"
    seed: int = 0
    rows: int = 12
    challenger: str | None = None


@dataclass(frozen=True)
class _Topics:
    input: str
    output: str
    dead_letter: str
    group: str
    shadow: str

    @classmethod
    def named(cls, suffix: str) -> _Topics:
        return cls(
            f"sensor-readings{suffix}",
            f"forecasts{suffix}",
            f"sensor-readings{suffix}.dlq",
            f"sensorcast-demo{suffix}",
            f"forecasts{suffix}.shadow",
        )


def _default_registry() -> Path:
    here = Path("models")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "models"


def _kafka_settings(bootstrap: str) -> KafkaSettings:
    """The ``kafka`` settings of the environment (TLS, SASL) on `bootstrap`. When the
    environment holds an invalid setting, plaintext ones: the service then stops on it, and
    the demo shows the service's log, which names it."""
    try:
        return load_settings(None, {"kafka.bootstrap_servers": bootstrap}).kafka
    except ConfigError:
        return KafkaSettings(bootstrap_servers=bootstrap)


def _create_topics(kafka: KafkaSettings, topics: _Topics) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    from service.kafka.probe import refusal, tls_preflight, unreachable
    from service.kafka.security import kafka_python_options

    bootstrap = kafka.bootstrap_servers
    names = [topics.input, topics.output, topics.dead_letter, topics.shadow]
    refused = tls_preflight(kafka)
    if refused is not None:
        raise SensorcastError(refusal(kafka, refused))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            client_id="sensorcast-demo",
            **kafka_python_options(kafka),
        )
    except KafkaError as exc:
        raise SensorcastError(unreachable(kafka, exc)) from exc
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(n, _PARTITIONS, 1) for n in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    except KafkaError as exc:
        raise SensorcastError(f"cannot create the demo topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()


def _service_env(
    bootstrap: str,
    topics: _Topics,
    registry: Path,
    card: ModelCard,
    port: int,
    challenger: str | None,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SENSORCAST_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "SENSORCAST_KAFKA__INPUT_TOPIC": topics.input,
            "SENSORCAST_KAFKA__OUTPUT_TOPIC": topics.output,
            "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": topics.dead_letter,
            "SENSORCAST_KAFKA__GROUP_ID": topics.group,
            "SENSORCAST_KAFKA__PARTITIONS": str(_PARTITIONS),
            # a group joins in about half its session timeout on the embedded broker
            "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "SENSORCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "SENSORCAST_MODEL__REGISTRY": str(registry),
            "SENSORCAST_MODEL__NAME": card.name,
            "SENSORCAST_MODEL__VERSION": card.version,
            "SENSORCAST_HTTP__HOST": "127.0.0.1",
            "SENSORCAST_HTTP__PORT": str(port),
            "SENSORCAST_KAFKA__SHADOW_TOPIC": topics.shadow,
            # scores reach /metrics when their checkpoint is acknowledged: every second, so
            # the live accuracy moves while one watches
            "SENSORCAST_KAFKA__COMMIT_INTERVAL": "1",
        }
    )
    if challenger is not None:
        env["SENSORCAST_MODEL__SHADOW"] = challenger
    return env


def _simulation(options: DemoOptions, period: float) -> SimulatedSensors:
    """Whole simulated days, enough for the run (at most a week), from midnight a year ago.

    Starting in the past keeps every timestamp behind the wall clock, which the service
    requires, for as long as the demo can loop.
    """
    from service.simulate import simulate

    steps_per_day = max(1, round(_DAY / period))
    seconds = options.duration or _MAX_DAYS * _DAY
    needed = int(options.rate * seconds / options.streams) + 1
    days = min(_MAX_DAYS, -(-needed // steps_per_day))
    start_ts = (datetime.now(UTC).timestamp() // _DAY - 365) * _DAY
    return simulate(
        options.streams, days * steps_per_day, seed=options.seed, start_ts=start_ts, period=period
    )


def _looped(sim: SimulatedSensors, span: float) -> Iterator[tuple[str, float, dict[str, float]]]:
    """The simulated readings again and again, each pass `span` seconds later."""
    for n in count():
        for sid, ts, values in sim.readings():
            yield sid, ts + n * span, values


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Log lines go to a file while the table owns the terminal."""
    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for h in saved:
            root.addHandler(h)


def _thread(
    name: str, target: Callable[[], object], stop: threading.Event, errors: list[BaseException]
) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _broker(stack: contextlib.ExitStack, screen: Screen, workdir: Path) -> tuple[str, str, _Topics]:
    """The broker's bootstrap servers, where it is (for the header) and the demo's topics:
    ``$KAFKA_BOOTSTRAP_SERVERS`` with topics of their own, else an embedded broker on `stack`."""
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        topics = _Topics.named("-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))
        return external, f"{external} (from {BOOTSTRAP_ENV})", topics
    screen.message("starting the embedded broker ...")
    broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "broker.log"))
    return broker.bootstrap, f"{broker.bootstrap} (embedded)", _Topics.named("")


def _start_traffic(
    stack: contextlib.ExitStack,
    options: DemoOptions,
    card: ModelCard,
    kafka: KafkaSettings,
    topics: _Topics,
    stop: threading.Event,
    errors: list[BaseException],
) -> Scoreboard:
    """Start the replay of simulated sensors and the forecast reader, each in a thread that
    `stack` stops and joins; both feed the returned scoreboard. A thread's exception goes to
    `errors` and sets `stop`."""
    from service.tools.replay import make_producer, replay
    from service.tools.scoreboard import Scoreboard
    from service.tools.tail import follow

    sim = _simulation(options, card.period)
    span = sim.values.shape[1] * card.period
    board = Scoreboard(sim, list(card.targets), sim.stream_ids[: options.rows], span)
    producer = make_producer(kafka)
    stack.callback(producer.close)
    reader = partial(
        follow,
        kafka,
        topics.output,
        board.on_forecast,
        from_beginning=True,
        stop=stop,
    )
    sender = partial(
        replay,
        producer,
        topics.input,
        _looped(sim, span),
        rate=options.rate,
        stop=stop,
        on_sent=board.on_sent,
    )
    for name, target in (("demo-forecasts", reader), ("demo-replay", sender)):
        stack.callback(_thread(name, target, stop, errors).join, _JOIN_TIMEOUT)
    stack.callback(stop.set)  # runs first: the threads see it before being joined
    return board


def _show_table(
    screen: Screen,
    header: list[str],
    board: Scoreboard,
    service: ServeProcess,
    live: LiveScore,
    started: float,
    deadline: float,
    stop: threading.Event,
) -> None:
    """Redraw the table about once a second until `stop` is set or the monotonic clock
    passes `deadline`; raises `ServiceExited` when the service has exited."""
    while not stop.is_set() and time.monotonic() < deadline:
        service.check()
        uptime = f"   up {time.monotonic() - started:.0f} s"
        screen.show(
            [*header, *live.lines()],
            board.table(screen.width),
            board.status_line() + uptime,
        )
        stop.wait(min(1.0, max(0.0, deadline - time.monotonic())))


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo until Ctrl-C, SIGTERM or `options.duration`; return the exit status."""
    from service.registry import Registry, load_model_dir, parse_model_spec

    screen = Screen(out or sys.stdout)
    registry = (options.registry or _default_registry()).resolve()
    card = load_model_dir(Registry(registry).resolve(*parse_model_spec(options.model))).card
    workdir = Path(tempfile.mkdtemp(prefix="sensorcast-demo-"))
    started = time.monotonic()
    stop = threading.Event()
    errors: list[BaseException] = []
    service: ServeProcess | None = None
    status = 0
    with _logs_to(workdir / "demo.log"), stop_on_signals(stop):
        try:
            with contextlib.ExitStack() as stack:
                # 1. the broker
                bootstrap, where, topics = _broker(stack, screen, workdir)
                # 2. the topics, with the TLS and SASL settings the service gets from the
                # same SENSORCAST_KAFKA__* environment
                kafka = _kafka_settings(bootstrap)
                _create_topics(kafka, topics)
                # 3. the service
                port = pick_http_port(options.http_port)
                screen.message(f"starting the service with {card.ref} ...")
                env = _service_env(bootstrap, topics, registry, card, port, options.challenger)
                service = stack.enter_context(ServeProcess(env, workdir / "service.log", port))
                service.wait_ready(_READY_TIMEOUT, stop)
                if stop.is_set():  # Ctrl-C while the service was starting
                    raise KeyboardInterrupt
                # 4. traffic: replay in, forecasts out, both scored
                board = _start_traffic(stack, options, card, kafka, topics, stop, errors)
                # 5. the table
                header = [
                    f"Sensorcast demo: {card.ref} ({card.kind}, horizon {card.horizon} x "
                    f"{card.period:g} s, warm-up {card.warmup_steps} steps)  "
                    f"{options.streams} streams at {options.rate:,.0f} readings/s"
                    + (
                        f", challenger {options.challenger} in shadow" if options.challenger else ""
                    ),
                    f"metrics http://127.0.0.1:{port}/metrics   broker {where}   logs {workdir}",
                ]
                deadline = started + options.duration if options.duration else float("inf")
                live = LiveScore(port)
                _show_table(screen, header, board, service, live, started, deadline, stop)
                if errors:
                    raise errors[0]
                summary = [] if screen.tty else ["", *board.table(screen.width), ""]
                screen.message("\n".join([*summary, board.status_line(), *live.lines()]))
        except ServiceExited as exc:
            screen.message(f"sensorcast demo: {exc}")
            status = 1
        except KeyboardInterrupt:
            pass
    if status == 0 and service is not None and service.proc.returncode not in (0, None):
        screen.message(
            f"the service exited with status {service.proc.returncode}; log: {service.log_path}"
        )
        status = 1
    screen.message(f"demo stopped after {time.monotonic() - started:.0f} s; logs in {workdir}")
    return status
