"""``sensorcast demo``: the whole pipeline on one machine, live in the terminal.

1. a broker: the embedded one, or ``$KAFKA_BOOTSTRAP_SERVERS``;
2. the topics;
3. ``sensorcast serve`` as a child process (what an operator runs), configured through its
   ``SENSORCAST_*`` environment, waited for on ``/readyz``;
4. a paced replay of simulated sensors (a thread), and a forecast reader (another thread)
   feeding a `Scoreboard` that compares each forecast with the simulated truth;
5. a refreshing table until Ctrl-C or ``--duration``; then everything stops in reverse
   order (replay, service with SIGTERM, reader, broker) and a summary is printed.

Children are started in their own session (Ctrl-C reaches only the demo, which stops them
in order) and are told to die with it should the demo itself be killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from service.embedded import BOOTSTRAP_ENV, EmbeddedBroker, die_with_parent
from service.errors import SensorcastError

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger(__name__)

_DAY = 86_400.0
_WEEK_STEPS_MAX = 7  # days of simulated readings replayed before looping
_READY_TIMEOUT = 90.0
_STOP_TIMEOUT = 30.0


class DemoError(SensorcastError):
    """The demo could not start; the message ends with the log of the part that failed."""


@dataclass(frozen=True)
class DemoOptions:
    streams: int = 500
    rate: float = 2500.0
    duration: float | None = None
    http_port: int = 8000
    registry: Path | None = None
    model: str = "sensors-demo"
    seed: int = 0
    rows: int = 12


def _default_registry() -> Path:
    here = Path("models")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "models"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_http_port(wanted: int) -> int:
    if wanted and _port_free(wanted):
        return wanted
    from service.embedded import free_port

    return free_port()


def _tail(path: Path, n_bytes: int = 3000) -> str:
    try:
        data = path.read_bytes()[-n_bytes:]
    except OSError:
        return "(no log)"
    return data.decode("utf-8", "replace").strip() or "(empty log)"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class _Service:
    """`sensorcast serve` as a child process, its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, http_port: int) -> None:
        self.log_path = log_path
        self.http_port = http_port
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def wait_ready(self, timeout: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        while _get(url) != 200:
            if self.proc.poll() is not None:
                raise DemoError(
                    f"the service exited with status {self.proc.returncode}; "
                    f"its log ({self.log_path}) ends with:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the service was not ready within {timeout:.0f} s; "
                    f"its log ({self.log_path}) ends with:\n{_tail(self.log_path)}"
                )
            if stop.wait(0.2):
                return

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("service did not stop within %.0f s; killing it", timeout)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sensorcast-demo")
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    except KafkaError as exc:
        raise DemoError(f"cannot create the demo topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()


class _Screen:
    """A refreshing table on a terminal; periodic plain lines otherwise (logs, tests)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last_plain = 0.0

    def show(self, header: list[str], body: list[str], status: str) -> None:
        if self.tty:
            size = shutil.get_terminal_size()
            lines = [*header, status, "", *body][: max(1, size.lines - 1)]
            text = "\n".join(line[: size.columns] for line in lines)
            self.out.write("\x1b[H\x1b[2J" + text + "\n")
            self.out.flush()
        elif time.monotonic() - self._last_plain >= 5.0:
            self._last_plain = time.monotonic()
            print(status, file=self.out, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _looped(
    sim: Any, span: float, stop: threading.Event
) -> Iterator[tuple[str, float, dict[str, float]]]:
    """The simulated readings, again and again, each pass `span` seconds later."""
    for n in count():
        shift = n * span
        for sid, ts, values in sim.readings():
            yield sid, ts + shift, values
        if stop.is_set():
            return


def _redirect_logging(path: Path) -> list[logging.Handler]:
    """Send log lines to a file while the table owns the terminal; return the old handlers."""
    root = logging.getLogger()
    old = list(root.handlers)
    for handler in old:
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    return old


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo until Ctrl-C, SIGTERM or `options.duration`; return the exit status."""
    from service.registry import Registry, load_model_dir, parse_model_spec
    from service.simulate import simulate
    from service.tools.replay import make_producer, replay
    from service.tools.scoreboard import Scoreboard
    from service.tools.tail import follow

    screen = _Screen(out or sys.stdout)
    registry = (options.registry or _default_registry()).resolve()
    name, version = parse_model_spec(options.model)
    card = load_model_dir(Registry(registry).resolve(name, version)).card
    workdir = Path(tempfile.mkdtemp(prefix="sensorcast-demo-"))
    old_handlers = _redirect_logging(workdir / "demo.log")

    stop = threading.Event()
    interrupts = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        stop.set()
        if interrupts > 1:  # a second Ctrl-C: stop waiting politely
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker: EmbeddedBroker | None = None
    service: _Service | None = None
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    status = 0
    started = time.monotonic()
    try:
        external = os.environ.get(BOOTSTRAP_ENV, "").strip()
        if external:
            bootstrap, where = external, f"{external} (from {BOOTSTRAP_ENV})"
            suffix = "-" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")  # a fresh run each time
        else:
            screen.message("starting the embedded broker ...")
            broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
            bootstrap, where, suffix = broker.bootstrap, f"{broker.bootstrap} (embedded)", ""
        topics = {
            "input": f"sensor-readings{suffix}",
            "output": f"forecasts{suffix}",
            "dlq": f"sensor-readings{suffix}.dlq",
        }
        _create_topics(bootstrap, list(topics.values()), partitions=4)

        http_port = _pick_http_port(options.http_port)
        env = dict(os.environ)
        env.update(
            {
                "SENSORCAST_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "SENSORCAST_KAFKA__INPUT_TOPIC": topics["input"],
                "SENSORCAST_KAFKA__OUTPUT_TOPIC": topics["output"],
                "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": topics["dlq"],
                "SENSORCAST_KAFKA__GROUP_ID": f"sensorcast-demo{suffix}",
                "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
                "SENSORCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
                "SENSORCAST_MODEL__REGISTRY": str(registry),
                "SENSORCAST_MODEL__NAME": card.name,
                "SENSORCAST_MODEL__VERSION": card.version,
                "SENSORCAST_HTTP__HOST": "127.0.0.1",
                "SENSORCAST_HTTP__PORT": str(http_port),
            }
        )
        screen.message(f"starting the service with {card.ref} ...")
        service = _Service(env, workdir / "service.log", http_port)
        service.wait_ready(_READY_TIMEOUT, stop)
        if stop.is_set():  # Ctrl-C while the service was starting
            raise KeyboardInterrupt

        # Whole simulated days, enough for the run (up to a week), looped after that.
        steps_per_day = max(1, round(_DAY / card.period))
        needed = options.rate * (options.duration or _WEEK_STEPS_MAX * _DAY) / options.streams
        days = min(_WEEK_STEPS_MAX, max(1, -(-int(needed) // steps_per_day)))
        n_steps = days * steps_per_day
        start_ts = (datetime.now(UTC).timestamp() // _DAY - 365) * _DAY  # midnight, a year ago
        sim = simulate(
            options.streams, n_steps, seed=options.seed, start_ts=start_ts, period=card.period
        )
        span = n_steps * card.period
        shown = sim.stream_ids[: options.rows]
        board = Scoreboard(sim, list(card.targets), shown, span)

        producer = make_producer(bootstrap)

        def run_replay() -> None:
            try:
                replay(
                    producer,
                    topics["input"],
                    _looped(sim, span, stop),
                    rate=options.rate,
                    stop=stop,
                    on_sent=board.on_sent,
                )
            except BaseException as exc:
                errors.append(exc)
                stop.set()
            finally:
                producer.close()

        def run_reader() -> None:
            try:
                follow(
                    bootstrap, topics["output"], board.on_forecast, from_beginning=True, stop=stop
                )
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        threads = [
            threading.Thread(target=run_reader, name="demo-forecasts", daemon=True),
            threading.Thread(target=run_replay, name="demo-replay", daemon=True),
        ]
        for t in threads:
            t.start()

        header = [
            f"Sensorcast demo: {card.ref} ({card.kind}, horizon {card.horizon} x {card.period:g} s, "
            f"warm-up {card.warmup_steps} steps)  {options.streams} streams at {options.rate:,.0f} readings/s",
            f"metrics http://127.0.0.1:{http_port}/metrics   broker {where}   logs {workdir}",
        ]
        deadline = started + options.duration if options.duration else None
        while not stop.is_set():
            if service.proc.poll() is not None:
                raise DemoError(
                    f"the service exited with status {service.proc.returncode}; "
                    f"its log ({service.log_path}) ends with:\n{_tail(service.log_path)}"
                )
            status_line = board.status_line() + f"   up {time.monotonic() - started:.0f} s"
            screen.show(
                [*header, *board.accuracy_lines()],
                board.table(shutil.get_terminal_size().columns),
                status_line,
            )
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
        stop.set()
        if errors:
            raise errors[0]
        summary = [] if screen.tty else ["", *board.table(100), ""]  # a terminal shows it already
        summary += [board.status_line(), *board.accuracy_lines()]
        screen.message("\n".join(summary))
    except DemoError as exc:
        screen.message(f"sensorcast demo: {exc}")
        status = 1
    except KeyboardInterrupt:
        status = 0
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=_STOP_TIMEOUT)
        if service is not None:
            code = service.stop()
            if code not in (0, None) and status == 0:
                screen.message(f"the service exited with status {code}; log: {service.log_path}")
                status = 1
        if broker is not None:
            broker.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in old_handlers:
            root.addHandler(h)
    screen.message(f"demo stopped after {time.monotonic() - started:.0f} s; logs in {workdir}")
    return status
